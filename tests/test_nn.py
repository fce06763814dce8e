"""Module, Linear, Sequential, activations and Dropout, on every backend of the matrix."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from _helpers import assert_close, to_np

import neural_arch as na
from neural_arch import backend


class Block(na.Module):
    def __init__(self):
        super().__init__()
        self.fc = na.Linear(4, 3)
        self.act = na.Tanh()


class Net(na.Module):
    """Own parameter assigned between children: PyTorch lists own parameters first."""

    def __init__(self):
        super().__init__()
        self.backbone = Block()
        self.scale = na.Parameter(backend.to_backend(np.ones(2), "numpy"))
        self.head = na.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.head(self.backbone.act(self.backbone.fc(x))) * self.scale


def mlp():
    return na.Sequential(
        na.Linear(5, 16), na.Tanh(), na.Linear(16, 16), na.ReLU(), na.Linear(16, 3)
    )


def namespace_name(array) -> str:
    return backend.backend_name(array)


# -- registration and traversal --------------------------------------------------


def test_named_parameters_dotted_names_in_pytorch_order():
    net = Net()
    names = [name for name, _ in net.named_parameters()]
    assert names == ["scale", "backbone.fc.weight", "backbone.fc.bias", "head.weight"]
    params = net.parameters()
    assert isinstance(params, list)
    assert [id(p) for p in params] == [id(p) for _, p in net.named_parameters()]
    assert all(isinstance(p, na.Parameter) for p in params)


def test_sequential_names_and_dict_of_named_parameters():
    model = mlp()
    named = dict(model.named_parameters())
    assert list(named) == [f"{i}.{k}" for i in (0, 2, 4) for k in ("weight", "bias")]
    assert named["2.bias"] is model[2].bias


def test_named_parameters_of_parts_merge_into_one_dict():
    net = Net()
    all_params = {}
    all_params.update(net.backbone.named_parameters())
    all_params.update(net.head.named_parameters(prefix="head"))
    assert list(all_params) == ["fc.weight", "fc.bias", "head.weight"]
    assert all_params["fc.bias"] is net.backbone.fc.bias


def test_shared_parameters_and_modules_are_listed_once():
    shared = na.Linear(3, 3)
    model = na.Sequential(shared, na.ReLU(), shared)
    assert len(model.parameters()) == 2
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert len(list(model.modules())) == 3  # model, shared, ReLU
    # the state dict names a tied parameter under each of its names, as PyTorch does
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_children_and_modules():
    net = Net()
    assert [n for n, _ in net.named_children()] == ["backbone", "head"]
    assert list(net.children()) == [net.backbone, net.head]
    assert list(net.modules()) == [net, net.backbone, net.backbone.fc, net.backbone.act, net.head]


def test_reassignment_replaces_registration():
    net = Net()
    net.head = na.Linear(3, 5)
    assert [n for n, _ in net.named_parameters()][-2:] == ["head.weight", "head.bias"]
    net.head = None
    assert [n for n, _ in net.named_children()] == ["backbone"]
    del net.scale
    assert "scale" not in dict(net.named_parameters())
    with pytest.raises(AttributeError, match="scale"):
        net.scale


def test_plain_attributes_and_parameter_slots():
    lin = na.Linear(2, 2, bias=False)
    assert lin.bias is None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    with pytest.raises(TypeError, match="bias"):
        lin.bias = 3.0
    lin.note = "plain"
    assert lin.note == "plain" and len(lin.parameters()) == 1


def test_assignment_before_init_is_a_clear_error():
    class Broken(na.Module):
        def __init__(self):
            self.fc = na.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\).__init__"):
        Broken()


def test_train_eval_propagate_and_return_self():
    net = Net()
    assert net.training and net.backbone.fc.training
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert net.train() is net
    assert all(m.training for m in net.modules())


def test_zero_grad_sets_none():
    model = mlp()
    for p in model.parameters():
        p.grad = np.ones(tuple(p.data.shape), dtype=np.float32)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_call_runs_forward():
    class Twice(na.Module):
        def forward(self, x, *, k=2):
            return x * k

    assert Twice()(3, k=5) == 15
    with pytest.raises(NotImplementedError, match="Module"):
        na.Module()(1)


def test_deepcopy_gives_independent_parameters():
    model = mlp()
    clone = copy.deepcopy(model)
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]
    for a, b in zip(clone.parameters(), model.parameters(), strict=True):
        assert a is not b
        assert_close(a.data, b.data)


def test_repr_is_pytorch_like():
    model = na.Sequential(na.Linear(5, 16), na.ReLU(), na.Dropout(0.25), na.Softmax(axis=1))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=5, out_features=16, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Dropout(p=0.25)\n"
        "  (3): Softmax(axis=1)\n"
        ")"
    )
    assert "(backbone): Block(\n    (fc): Linear" in repr(Net())


# -- Linear -----------------------------------------------------------------------


def test_linear_init_is_pytorchs_uniform_drawn_from_the_seeded_generator():
    na.manual_seed(123)
    lin = na.Linear(7, 4)
    ref = np.random.default_rng(123)
    bound = 1 / math.sqrt(7)
    w = ref.uniform(-bound, bound, size=(4, 7))
    b = ref.uniform(-bound, bound, size=(4,))
    assert tuple(lin.weight.data.shape) == (4, 7) and tuple(lin.bias.data.shape) == (4,)
    assert lin.weight.data.dtype == np.float32
    np.testing.assert_array_equal(to_np(lin.weight.data), w.astype(np.float32))
    np.testing.assert_array_equal(to_np(lin.bias.data), b.astype(np.float32))


def test_linear_init_statistics():
    na.manual_seed(0)
    w = to_np(na.Linear(400, 300).weight.data).astype(np.float64)
    bound = 1 / math.sqrt(400)
    assert np.abs(w).max() <= bound
    # U(-b, b): mean 0, variance b²/3 (120 000 samples: well inside 2 %)
    assert abs(w.mean()) < 0.01 * bound
    assert w.var() == pytest.approx(bound**2 / 3, rel=0.02)


@pytest.mark.parametrize(
    ("args", "name"),
    [((0, 3), "in_features"), ((3, -1), "out_features"), ((2.0, 3), "in_features"),
     ((True, 3), "in_features"), ((3, None), "out_features")],
)  # fmt: skip
def test_linear_validates_sizes(args, name):
    with pytest.raises(ValueError, match=name):
        na.Linear(*args)


def test_same_seed_same_model_on_every_backend(xp):
    na.manual_seed(7)
    ref = mlp()
    na.set_default_backend(xp)
    na.manual_seed(7)
    model = mlp()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert backend.namespace(p.data) is xp, n
        np.testing.assert_array_equal(to_np(p.data), to_np(q.data))


def test_linear_forward_tensor_and_raw_array(xp):
    na.manual_seed(1)
    lin = na.Linear(3, 2).to(xp, dtype="float64")
    x_np = np.random.default_rng(2).standard_normal((4, 3))
    expected = x_np @ to_np(lin.weight.data).T + to_np(lin.bias.data)
    x = backend.to_backend(x_np, xp)
    for inp in (x, na.Tensor(x)):
        out = lin(inp)
        assert isinstance(out, na.Tensor)
        assert backend.namespace(out.data) is xp
        assert_close(out.data, expected)
    no_bias = na.Linear(3, 2, bias=False).to(xp, dtype="float64")
    assert_close(no_bias(x).data, x_np @ to_np(no_bias.weight.data).T)


def test_linear_backward_gives_gradients_on_the_parameters_backend(xp):
    lin = na.Linear(3, 2).to(xp, dtype="float64")
    x_np = np.random.default_rng(3).standard_normal((5, 3))
    lin(backend.to_backend(x_np, xp)).sum().backward()
    assert backend.namespace(lin.weight.grad) is xp
    assert_close(lin.weight.grad, np.tile(x_np.sum(axis=0), (2, 1)))
    assert_close(lin.bias.grad, np.full(2, 5.0))


# -- Sequential ---------------------------------------------------------------------


def test_sequential_container_protocol():
    layers = [na.Linear(2, 3), na.ReLU(), na.Linear(3, 1)]
    model = na.Sequential(*layers)
    assert len(model) == 3
    assert list(model) == layers
    assert model[0] is layers[0] and model[-1] is layers[2]
    tail = model[1:]
    assert isinstance(tail, na.Sequential) and list(tail) == layers[1:]
    assert [n for n, _ in model.named_children()] == ["0", "1", "2"]
    with pytest.raises(IndexError, match="3"):
        model[3]
    with pytest.raises(TypeError, match="Sequential takes Modules"):
        na.Sequential(na.ReLU(), lambda x: x)


def test_sequential_from_mapping_and_append():
    model = na.Sequential({"enc": na.Linear(2, 3), "act": na.Tanh()})
    model.append(na.Linear(3, 1))
    assert [n for n, _ in model.named_parameters()] == [
        "enc.weight", "enc.bias", "2.weight", "2.bias"
    ]  # fmt: skip


def test_sequential_forward_chains(xp):
    model = mlp().to(xp, dtype="float64")
    x_np = np.random.default_rng(4).standard_normal((6, 5))
    w = [to_np(p.data) for p in model.parameters()]
    h = np.tanh(x_np @ w[0].T + w[1])
    h = np.maximum(h @ w[2].T + w[3], 0)
    expected = h @ w[4].T + w[5]
    assert_close(model(backend.to_backend(x_np, xp)).data, expected)


# -- activations and dropout -----------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "reference"),
    [
        (na.ReLU(), lambda x: np.maximum(x, 0)),
        (na.Tanh(), np.tanh),
        (na.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (na.Softmax(), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
        (na.Softmax(axis=0), lambda x: np.exp(x) / np.exp(x).sum(0, keepdims=True)),
    ],
    ids=["relu", "tanh", "sigmoid", "softmax", "softmax0"],
)
def test_activations(xp, layer, reference):
    x_np = np.random.default_rng(5).standard_normal((3, 4))
    out = layer(backend.to_backend(x_np, xp))
    assert backend.namespace(out.data) is xp
    assert_close(out.data, reference(x_np))


def test_dropout_training_and_eval(xp):
    x_np = np.random.default_rng(6).standard_normal((50, 40)) + 3.0  # no zeros in x
    x = backend.to_backend(x_np, xp)
    drop = na.Dropout(0.25)
    na.manual_seed(11)
    out = to_np(drop(x).data)
    dropped = out == 0
    np.testing.assert_allclose(out[~dropped], x_np[~dropped] / 0.75, rtol=1e-12)
    assert 0.2 < dropped.mean() < 0.3
    # the mask comes from the seeded generator: the same on every backend
    keep = np.random.default_rng(11).random((50, 40)) >= 0.25
    np.testing.assert_array_equal(~dropped, keep)
    assert drop.eval()(x).data is x
    assert na.Dropout(0.0)(x).data is x


def test_dropout_gradient_is_the_mask(xp):
    x = na.Tensor(backend.to_backend(np.ones((4, 5)), xp), requires_grad=True)
    na.manual_seed(2)
    na.Dropout(0.5)(x).sum().backward()
    keep = np.random.default_rng(2).random((4, 5)) >= 0.5
    assert_close(x.grad, keep * 2.0)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "0.5", True])
def test_dropout_validates_p(p):
    with pytest.raises(ValueError, match="p must be"):
        na.Dropout(p)


# -- moving between backends -------------------------------------------------------


def test_to_moves_every_parameter_keeping_identity(xp):
    na.manual_seed(3)
    model = mlp()
    ref = [to_np(p.data).copy() for p in model.parameters()]
    before = model.parameters()
    originals = [p.data for p in before]
    assert model.to(xp) is model
    after = model.parameters()
    assert all(a is b for a, b in zip(after, before, strict=True))
    for p, r in zip(after, ref, strict=True):
        assert backend.namespace(p.data) is xp
        np.testing.assert_array_equal(to_np(p.data), r)
    if backend.backend_name(xp) != "numpy":
        # moving to another library copies: the old arrays are no longer the parameters'
        originals[0][...] = 0
        np.testing.assert_array_equal(to_np(after[0].data), ref[0])
    else:  # moving to where the parameters already are is free, as in PyTorch
        assert all(p.data is d for p, d in zip(after, originals, strict=True))


def test_to_by_name_and_back(other_xp):
    model = mlp()
    ref = [to_np(p.data).copy() for p in model.parameters()]
    model.to(backend.backend_name(other_xp))
    assert all(backend.namespace(p.data) is other_xp for p in model.parameters())
    model.to("numpy")
    for p, r in zip(model.parameters(), ref, strict=True):
        assert isinstance(p.data, np.ndarray)
        np.testing.assert_array_equal(p.data, r)


def test_to_accepts_plain_library_modules(torch):
    model = na.Linear(3, 2)
    model.to(torch, dtype=torch.float64)
    assert isinstance(model.weight.data, torch.Tensor)
    assert model.weight.data.dtype == torch.float64
    model.to(np)
    assert isinstance(model.weight.data, np.ndarray) and model.weight.data.dtype == np.float64
    assert tuple(model(np.ones(3)).data.shape) == (2,)  # a single sample


def test_to_changes_dtype_and_moves_gradients(xp):
    model = mlp()
    first = model.parameters()[0]
    first.grad = np.ones(tuple(first.data.shape), dtype=np.float32)
    model.to(xp, dtype="float64")
    for p in model.parameters():
        assert p.data.dtype == backend.resolve_dtype(xp, "float64")
    assert backend.namespace(first.grad) is xp
    assert first.grad.dtype == backend.resolve_dtype(xp, "float64")
    assert all(p.grad is None for p in model.parameters()[1:])
    model.to(dtype="float32")  # no backend: stay in the parameters' own library
    assert all(backend.namespace(p.data) is xp for p in model.parameters())
    assert first.grad.dtype == backend.resolve_dtype(xp, "float32")


def test_to_rejects_unknown_backend_and_changes_nothing():
    model = mlp()
    data = [p.data for p in model.parameters()]
    with pytest.raises(ValueError, match="backend"):
        model.to("tensorflow")
    assert all(p.data is d for p, d in zip(model.parameters(), data, strict=True))


# -- state dicts ---------------------------------------------------------------------


def test_state_dict_holds_references_in_order(xp):
    model = mlp().to(xp)
    sd = model.state_dict()
    assert list(sd) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert sd[name] is p.data


def test_load_state_dict_across_backends_copies_values(xp):
    na.manual_seed(1)
    source = mlp()  # numpy, float32
    na.manual_seed(2)
    target = mlp().to(xp, dtype="float64")
    params = target.parameters()
    arrays = [p.data for p in params]
    sd = source.state_dict()
    result = target.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for p, arr, (name, value) in zip(target.parameters(), arrays, sd.items(), strict=True):
        assert backend.namespace(p.data) is xp, name
        assert p.data.dtype == backend.resolve_dtype(xp, "float64")
        np.testing.assert_array_equal(to_np(p.data), value.astype(np.float64))
        if xp.__name__ != "jax.numpy":  # mutable backends are written in place
            assert p.data is arr
    assert all(a is b for a, b in zip(target.parameters(), params, strict=True))
    # no aliasing of the input
    sd["0.weight"][...] = 42.0
    assert not np.any(to_np(target[0].weight.data) == 42.0)


def test_load_state_dict_from_another_backend(other_xp):
    na.manual_seed(1)
    source = mlp().to(other_xp)
    target = mlp()
    target.load_state_dict(source.state_dict())
    for p, q in zip(target.parameters(), source.parameters(), strict=True):
        assert isinstance(p.data, np.ndarray)
        np.testing.assert_array_equal(p.data, to_np(q.data))


def test_load_state_dict_accepts_tensors():
    source, target = mlp(), mlp()
    target.load_state_dict(dict(source.named_parameters()))
    for p, q in zip(target.parameters(), source.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def _snapshot(model):
    return [to_np(p.data).copy() for p in model.parameters()]


def _unchanged(model, snapshot):
    return all(
        np.array_equal(to_np(p.data), s) for p, s in zip(model.parameters(), snapshot, strict=True)
    )


def test_load_state_dict_missing_and_unexpected_keys(xp):
    model = mlp().to(xp)
    before = _snapshot(model)
    sd = {k: to_np(v) * 0 for k, v in mlp().state_dict().items()}
    del sd["4.bias"]
    sd["9.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(KeyError, match=r"missing keys \['4.bias'\]") as info:
        model.load_state_dict(sd)
    assert isinstance(info.value, ValueError)
    assert "unexpected keys ['9.weight']" in str(info.value)
    assert _unchanged(model, before)
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["4.bias"]
    assert result.unexpected_keys == ["9.weight"]
    assert np.all(to_np(model[0].weight.data) == 0)
    np.testing.assert_array_equal(to_np(model[4].bias.data), before[-1])


def test_load_state_dict_shape_mismatch_names_parameter_and_shapes(xp):
    model = mlp().to(xp)
    before = _snapshot(model)
    sd = {k: to_np(v) * 0 for k, v in model.state_dict().items()}
    sd["2.weight"] = np.zeros((16, 15), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'2.weight'.*\(16, 15\).*\(16, 16\)"):
        model.load_state_dict(sd, strict=False)
    assert _unchanged(model, before)  # '0.weight' came first and was valid


def test_load_state_dict_rejects_non_mappings():
    with pytest.raises(TypeError, match="mapping"):
        mlp().load_state_dict([("0.weight", np.zeros((16, 5)))])


def test_module_save_load_shortcuts_round_trip_across_backends(xp, tmp_path):
    src = na.Sequential(na.Linear(3, 4), na.Tanh(), na.Linear(4, 2))
    path = tmp_path / "model.safetensors"
    src.save(path)
    dst = na.Sequential(na.Linear(3, 4), na.Tanh(), na.Linear(4, 2)).to(xp)
    result = dst.load(path)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    for (name, a), (_, b) in zip(src.named_parameters(), dst.named_parameters(), strict=True):
        assert backend.namespace(b.data) is xp, name
        np.testing.assert_array_equal(backend.to_numpy(b.data), backend.to_numpy(a.data))
