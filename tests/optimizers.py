"""The optimizers under test, as one table, and the machinery that runs them.

Every check that holds for all optimizers (``tests/test_optimizer_table.py``)
iterates over :data:`TABLE`; the other optimizer tests take their cases from
it where they can.  Adding an optimizer to the library means adding one
:class:`Entry` here: its class, the name of its ``torch.optim`` twin, a grid of
every constructor option, and the hyperparameters it must accept and refuse.

Imported by tests as ``from optimizers import ...`` (pytest puts ``tests/`` on
``sys.path``, as for ``_helpers``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from _helpers import P, to_np
from _references import lion_reference

import neural_arch as na
from neural_arch.backend import backend_name, to_backend
from neural_arch.optim.adadelta import Adadelta
from neural_arch.optim.adafactor import Adafactor
from neural_arch.optim.adagrad import Adagrad
from neural_arch.optim.adamax import Adamax
from neural_arch.optim.asgd import ASGD
from neural_arch.optim.lion import Lion
from neural_arch.optim.nadam import NAdam
from neural_arch.optim.radam import RAdam
from neural_arch.optim.rmsprop import RMSprop
from neural_arch.optim.rprop import Rprop

__all__ = [
    "ATOL",
    "BY_NAME",
    "RTOL",
    "SHAPES",
    "TABLE",
    "TORCH_STEPS",
    "Entry",
    "assert_params_match",
    "assert_same_bits",
    "assert_same_run",
    "assert_state_matches",
    "assert_unchanged",
    "case_id",
    "case_params",
    "cases",
    "covering_cases",
    "covering_params",
    "entry_params",
    "grad_sequence",
    "initial",
    "ours",
    "run_side_by_side",
    "set_grads",
    "snapshot",
    "theirs",
]

Kwargs = Mapping[str, Any]


def _always(kwargs: Kwargs) -> bool:
    return True


@dataclass(frozen=True, eq=False)
class Entry:
    """One optimizer of the library and everything the shared tests need to run it.

    Attributes:
        name: the test id (usually the class name).
        cls: the optimizer class, e.g. ``neural_arch.Adam``.
        torch_name: the attribute of ``torch.optim`` that is the reference;
            with ``reference`` given, only a name for it (not looked up).
        base: keyword arguments given to every run (e.g. ``lr``); every
            constructor option not in ``grid`` must be here or in ``aliases``.
        grid: option -> the values to try; the tests run the full product
            (:func:`cases`), less the combinations ``valid`` refuses.
        valid: whether a combination of grid values is one the constructor
            accepts (e.g. Nesterov needs momentum); checked against the
            constructor itself.
        accepted: ``(kwargs, expected)`` pairs: hyperparameters the optimizer
            must accept (edge values, other spellings) and the values the
            parameter group must then hold.
        invalid: ``(kwargs, exception type, regex)`` triples: hyperparameters
            that must be refused, in the constructor and in
            ``add_param_group``, with a message matching the regex (which names
            the argument).
        aliases: constructor keywords that are other spellings of a grid
            option (Adam's ``beta1``/``beta2`` for ``betas``); exercised by
            ``accepted`` and ``invalid``, not gridded.
        reference: for an optimizer torch.optim lacks (Lion), the reference
            instead: ``reference(torch, params, **kwargs)`` returns an object
            with torch.optim's interface (torch tensors as parameters,
            ``step()``, ``state[param]``, ``param_groups``, ``state_dict()``),
            written in the tests independently of the library.
    """

    name: str
    cls: type
    torch_name: str
    base: Kwargs
    grid: Mapping[str, tuple]
    valid: Callable[[Kwargs], bool] = _always
    accepted: tuple[tuple[Kwargs, Kwargs], ...] = ()
    invalid: tuple[tuple[Kwargs, type[Exception], str], ...] = ()
    aliases: tuple[str, ...] = ()
    reference: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", MappingProxyType(dict(self.base)))
        object.__setattr__(self, "grid", MappingProxyType(dict(self.grid)))

    def make(self, params: Any, **kwargs: Any) -> Any:
        """Our optimizer on ``params`` with ``base`` updated by ``kwargs``."""
        return self.cls(params, **{**self.base, **kwargs})

    def make_torch(self, torch: Any, params: Any, **kwargs: Any) -> Any:
        """The reference: ``reference`` if given, else torch.optim's (``foreach=False``)."""
        if self.reference is not None:
            return self.reference(torch, params, **{**self.base, **kwargs})
        return getattr(torch.optim, self.torch_name)(
            params, foreach=False, **{**self.base, **kwargs}
        )


# --------------------------------------------------------------------- the table

_NAN = float("nan")

_ADAM_GRID = {
    "weight_decay": (0.0, 0.1),
    "amsgrad": (False, True),
    "maximize": (False, True),
    # torch's lerp takes another branch when the weight 1 - beta1 is >= 0.5
    "betas": ((0.9, 0.999), (0.3, 0.6)),
    "eps": (1e-8, 1e-2),
}

_ADAM_ACCEPTED = (
    ({"lr": 0.0}, {"lr": 0.0}),
    ({"lr": 1}, {"lr": 1}),
    ({"eps": 0.0}, {"eps": 0.0}),
    ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
    ({"betas": (0.0, 0.0)}, {"betas": (0.0, 0.0)}),
    ({"betas": (0.999999, 0.999999)}, {"betas": (0.999999, 0.999999)}),
    ({"betas": [0.5, 0.6]}, {"betas": (0.5, 0.6)}),
    ({"beta1": 0.5}, {"betas": (0.5, 0.999)}),
    ({"beta2": 0.6}, {"betas": (0.9, 0.6)}),
    ({"beta1": 0.5, "beta2": 0.6}, {"betas": (0.5, 0.6)}),
    ({"betas": (0.5, 0.6), "beta1": 0.5, "beta2": 0.6}, {"betas": (0.5, 0.6)}),
)

_LR_INVALID = (
    ({"lr": -1e-3}, ValueError, r"Invalid lr: -0\.001"),
    ({"lr": _NAN}, ValueError, r"Invalid lr: nan"),
    ({"lr": "0.1"}, ValueError, r"Invalid lr: '0\.1'"),
    ({"lr": True}, ValueError, r"Invalid lr: True"),
    ({"lr": None}, ValueError, r"Invalid lr: None"),
    ({"lr": float("inf")}, ValueError, r"Invalid lr: inf"),
)

_ADAM_INVALID = (
    *_LR_INVALID,
    ({"eps": -1e-8}, ValueError, r"Invalid eps: -1e-08"),
    ({"eps": _NAN}, ValueError, r"Invalid eps: nan"),
    ({"weight_decay": -0.01}, ValueError, r"Invalid weight_decay: -0\.01"),
    ({"weight_decay": "0"}, ValueError, r"Invalid weight_decay: '0'"),
    ({"weight_decay": float("inf")}, ValueError, r"Invalid weight_decay: inf"),
    ({"eps": float("inf")}, ValueError, r"Invalid eps: inf"),
    ({"amsgrad": "no"}, ValueError, r"Invalid amsgrad: 'no' \(expected True or False\)"),
    ({"maximize": 1}, ValueError, r"Invalid maximize: 1 \(expected True or False\)"),
    ({"betas": (1.0, 0.999)}, ValueError, r"Invalid beta1 \(betas\[0\]\): 1\.0"),
    ({"betas": (-0.1, 0.999)}, ValueError, r"Invalid beta1 \(betas\[0\]\): -0\.1"),
    ({"betas": (_NAN, 0.999)}, ValueError, r"Invalid beta1 \(betas\[0\]\): nan"),
    ({"betas": (0.9, 1.0)}, ValueError, r"Invalid beta2 \(betas\[1\]\): 1\.0"),
    ({"betas": (0.9, -0.5)}, ValueError, r"Invalid beta2 \(betas\[1\]\): -0\.5"),
    ({"betas": (0.9,)}, ValueError, r"betas must be a pair"),
    ({"betas": (0.9, 0.99, 0.5)}, ValueError, r"betas must be a pair"),
    ({"betas": 0.9}, ValueError, r"betas must be a pair"),
    ({"beta1": 1.5}, ValueError, r"Invalid beta1 \(betas\[0\]\): 1\.5"),
    ({"beta2": 1.0}, ValueError, r"Invalid beta2 \(betas\[1\]\): 1\.0"),
    ({"betas": (0.5, 0.6), "beta1": 0.7}, ValueError, r"beta1=0\.7 disagrees with betas"),
    ({"betas": (0.5, 0.6), "beta2": 0.7}, ValueError, r"beta2=0\.7 disagrees with betas"),
    # the default pair given explicitly is a spelling too
    ({"betas": (0.9, 0.999), "beta1": 0.5}, ValueError, r"beta1=0\.5 disagrees with betas"),
)


def _sgd_valid(kwargs: Kwargs) -> bool:
    """Nesterov momentum needs momentum > 0 and no dampening."""
    return not kwargs.get("nesterov") or (
        kwargs.get("momentum", 0) > 0 and kwargs.get("dampening", 0) == 0
    )


TABLE: tuple[Entry, ...] = (
    Entry(
        name="SGD",
        cls=na.SGD,
        torch_name="SGD",
        base={"lr": 0.05},
        grid={
            "momentum": (0.0, 0.9),
            "dampening": (0.0, 0.3),
            "nesterov": (False, True),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
        },
        valid=_sgd_valid,
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"momentum": 0.9, "nesterov": True}, {"momentum": 0.9, "nesterov": True}),
            ({"momentum": 1.5}, {"momentum": 1.5}),
            ({"dampening": 1.0}, {"dampening": 1.0}),
            ({"weight_decay": 0}, {"weight_decay": 0}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"momentum": -0.9}, ValueError, r"Invalid momentum: -0\.9"),
            ({"momentum": True}, ValueError, r"Invalid momentum: True"),
            ({"dampening": -0.1}, ValueError, r"Invalid dampening: -0\.1"),
            ({"weight_decay": -1e-4}, ValueError, r"Invalid weight_decay: -0\.0001"),
            ({"momentum": float("inf")}, ValueError, r"Invalid momentum: inf"),
            ({"maximize": None}, ValueError, r"Invalid maximize: None \(expected True or False\)"),
            (
                {"momentum": 0.9, "nesterov": 1},
                ValueError,
                r"Invalid nesterov: 1 \(expected True or False\)",
            ),
            ({"nesterov": True}, ValueError, r"Nesterov momentum requires momentum > 0"),
            (
                {"momentum": 0.9, "dampening": 0.1, "nesterov": True},
                ValueError,
                r"Nesterov momentum requires .* dampening = 0, got momentum=0\.9, dampening=0\.1",
            ),
        ),
    ),
    Entry(
        name="Adam",
        cls=na.Adam,
        torch_name="Adam",
        base={"lr": 0.01},
        grid={**_ADAM_GRID, "decoupled_weight_decay": (False, True)},
        accepted=_ADAM_ACCEPTED,
        invalid=_ADAM_INVALID,
        aliases=("beta1", "beta2"),
    ),
    Entry(
        name="AdamW",
        cls=na.AdamW,
        torch_name="AdamW",
        base={"lr": 0.01},
        grid=_ADAM_GRID,
        accepted=_ADAM_ACCEPTED,
        invalid=_ADAM_INVALID,
        aliases=("beta1", "beta2"),
    ),
    Entry(
        name="NAdam",
        cls=NAdam,
        torch_name="NAdam",
        base={"lr": 0.01},
        grid={
            "weight_decay": (0.0, 0.1),
            "decoupled_weight_decay": (False, True),
            "maximize": (False, True),
            "momentum_decay": (4e-3, 0.3),
            # torch's lerp takes another branch when the weight 1 - beta1 is >= 0.5
            "betas": ((0.9, 0.999), (0.3, 0.6)),
            "eps": (1e-8, 1e-2),
        },
        accepted=(
            # Adam's, less its beta1/beta2 spellings (torch's NAdam has none)
            *(a for a in _ADAM_ACCEPTED if not {"beta1", "beta2"} & a[0].keys()),
            ({"momentum_decay": 0.0}, {"momentum_decay": 0.0}),
            ({"momentum_decay": 1e4}, {"momentum_decay": 1e4}),
            ({"betas": (1 - 2**-24, 0.9), "momentum_decay": 1e4}, {"betas": (1 - 2**-24, 0.9)}),
            ({"decoupled_weight_decay": True}, {"decoupled_weight_decay": True}),
        ),
        invalid=(
            *(c for c in _ADAM_INVALID if not {"amsgrad", "beta1", "beta2"} & c[0].keys()),
            ({"momentum_decay": -4e-3}, ValueError, r"Invalid momentum_decay: -0\.004"),
            ({"momentum_decay": _NAN}, ValueError, r"Invalid momentum_decay: nan"),
            ({"momentum_decay": float("inf")}, ValueError, r"Invalid momentum_decay: inf"),
            ({"momentum_decay": "0"}, ValueError, r"Invalid momentum_decay: '0'"),
            (
                {"decoupled_weight_decay": 1},
                ValueError,
                r"Invalid decoupled_weight_decay: 1 \(expected True or False\)",
            ),
            # mu_1 rounds to 1.0 in float32, where torch divides by 1 - mu_product = 0
            (
                {"betas": (1 - 2**-26, 0.9), "momentum_decay": 1e4},
                ValueError,
                r"Invalid betas\[0\] with momentum_decay: beta1=0\.99999998",
            ),
        ),
    ),
    Entry(
        name="RAdam",
        cls=RAdam,
        torch_name="RAdam",
        base={"lr": 0.01},
        grid={
            "weight_decay": (0.0, 0.1),
            "decoupled_weight_decay": (False, True),
            "maximize": (False, True),
            # rho_t > 5 from step 6 with beta2 0.999, from step 7 with 0.8, never with 0.6
            # (rho_inf = 4); beta1 0.3: torch's lerp takes its other branch
            "betas": ((0.9, 0.999), (0.3, 0.6), (0.3, 0.8)),
            "eps": (1e-8, 1e-2),
        },
        accepted=(
            *(a for a in _ADAM_ACCEPTED if not {"beta1", "beta2"} & a[0].keys()),
            ({"decoupled_weight_decay": True}, {"decoupled_weight_decay": True}),
        ),
        invalid=(
            *(c for c in _ADAM_INVALID if not {"amsgrad", "beta1", "beta2"} & c[0].keys()),
            (
                {"decoupled_weight_decay": "yes"},
                ValueError,
                r"Invalid decoupled_weight_decay: 'yes' \(expected True or False\)",
            ),
        ),
    ),
    Entry(
        name="RMSprop",
        cls=RMSprop,
        torch_name="RMSprop",
        base={"lr": 0.01},
        grid={
            # alpha 0.3: the lerp weight 1 - alpha is >= 0.5, torch.lerp's other branch
            "alpha": (0.99, 0.3),
            "eps": (1e-8, 1e-2),
            "weight_decay": (0, 0.1),
            "momentum": (0, 0.9),
            "centered": (False, True),
            "maximize": (False, True),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"alpha": 0.0}, {"alpha": 0.0}),
            ({"alpha": 1.0}, {"alpha": 1.0}),
            ({"eps": 0.0}, {"eps": 0.0}),
            ({"momentum": 0}, {"momentum": 0}),
            ({"momentum": 1.5}, {"momentum": 1.5}),
            ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
            ({"centered": True, "momentum": 0.5}, {"centered": True, "momentum": 0.5}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"alpha": -0.1}, ValueError, r"Invalid alpha: -0\.1"),
            ({"alpha": _NAN}, ValueError, r"Invalid alpha: nan"),
            ({"alpha": "0.9"}, ValueError, r"Invalid alpha: '0\.9'"),
            ({"eps": -1e-8}, ValueError, r"Invalid eps: -1e-08"),
            ({"eps": float("inf")}, ValueError, r"Invalid eps: inf"),
            ({"weight_decay": -0.01}, ValueError, r"Invalid weight_decay: -0\.01"),
            ({"momentum": -0.9}, ValueError, r"Invalid momentum: -0\.9"),
            ({"momentum": True}, ValueError, r"Invalid momentum: True"),
            (
                {"centered": "yes"},
                ValueError,
                r"Invalid centered: 'yes' \(expected True or False\)",
            ),
            ({"centered": 1}, ValueError, r"Invalid centered: 1 \(expected True or False\)"),
            ({"maximize": None}, ValueError, r"Invalid maximize: None \(expected True or False\)"),
        ),
    ),
    Entry(
        name="Adagrad",
        cls=Adagrad,
        torch_name="Adagrad",
        base={"lr": 0.1},
        grid={
            "lr_decay": (0, 0.1),
            "weight_decay": (0, 0.1),
            "initial_accumulator_value": (0, 0.5),
            "eps": (1e-10, 1e-2),
            "maximize": (False, True),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"lr_decay": 0.0}, {"lr_decay": 0.0}),
            ({"lr_decay": 2}, {"lr_decay": 2}),
            ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
            ({"initial_accumulator_value": 0.0}, {"initial_accumulator_value": 0.0}),
            ({"initial_accumulator_value": 3}, {"initial_accumulator_value": 3}),
            ({"eps": 0.0}, {"eps": 0.0}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"lr_decay": -0.1}, ValueError, r"Invalid lr_decay: -0\.1"),
            ({"lr_decay": _NAN}, ValueError, r"Invalid lr_decay: nan"),
            ({"weight_decay": -0.01}, ValueError, r"Invalid weight_decay: -0\.01"),
            ({"weight_decay": "0"}, ValueError, r"Invalid weight_decay: '0'"),
            (
                {"initial_accumulator_value": -0.1},
                ValueError,
                r"Invalid initial_accumulator_value: -0\.1",
            ),
            (
                {"initial_accumulator_value": float("inf")},
                ValueError,
                r"Invalid initial_accumulator_value: inf",
            ),
            (
                {"initial_accumulator_value": None},
                ValueError,
                r"Invalid initial_accumulator_value: None",
            ),
            ({"eps": -1e-10}, ValueError, r"Invalid eps: -1e-10"),
            ({"eps": _NAN}, ValueError, r"Invalid eps: nan"),
            ({"maximize": "no"}, ValueError, r"Invalid maximize: 'no' \(expected True or False\)"),
        ),
    ),
    Entry(
        name="Adadelta",
        cls=Adadelta,
        torch_name="Adadelta",
        base={"lr": 1.0},
        grid={
            "rho": (0.9, 0.5),
            "eps": (1e-6, 1e-3),
            "weight_decay": (0, 0.1),
            "maximize": (False, True),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"rho": 0.0}, {"rho": 0.0}),
            ({"rho": 1.0}, {"rho": 1.0}),  # torch's bound is closed: 0 <= rho <= 1
            ({"rho": 1}, {"rho": 1}),
            ({"eps": 0.0}, {"eps": 0.0}),
            ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
        ),
        invalid=(
            *_LR_INVALID,
            (
                {"rho": 1.1},
                ValueError,
                r"Invalid rho: 1\.1 \(expected a number in \[0\.0, 1\.0\]\)",
            ),
            ({"rho": -0.1}, ValueError, r"Invalid rho: -0\.1"),
            ({"rho": _NAN}, ValueError, r"Invalid rho: nan"),
            ({"rho": True}, ValueError, r"Invalid rho: True"),
            ({"eps": -1e-6}, ValueError, r"Invalid eps: -1e-06"),
            ({"eps": float("inf")}, ValueError, r"Invalid eps: inf"),
            ({"weight_decay": -0.1}, ValueError, r"Invalid weight_decay: -0\.1"),
            ({"maximize": 0}, ValueError, r"Invalid maximize: 0 \(expected True or False\)"),
        ),
    ),
    Entry(
        name="Adamax",
        cls=Adamax,
        torch_name="Adamax",
        base={"lr": 0.01},
        grid={
            # betas[0] 0.3: the lerp weight 1 - beta1 is >= 0.5, torch.lerp's other branch
            "betas": ((0.9, 0.999), (0.3, 0.6)),
            "eps": (1e-8, 1e-2),
            "weight_decay": (0, 0.1),
            "maximize": (False, True),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"betas": (0.0, 0.0)}, {"betas": (0.0, 0.0)}),
            ({"betas": (0.999999, 0.999999)}, {"betas": (0.999999, 0.999999)}),
            ({"betas": [0.5, 0.6]}, {"betas": (0.5, 0.6)}),
            ({"eps": 0.0}, {"eps": 0.0}),
            ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"betas": (1.0, 0.999)}, ValueError, r"Invalid beta1 \(betas\[0\]\): 1\.0"),
            ({"betas": (-0.1, 0.999)}, ValueError, r"Invalid beta1 \(betas\[0\]\): -0\.1"),
            ({"betas": (0.9, 1.0)}, ValueError, r"Invalid beta2 \(betas\[1\]\): 1\.0"),
            ({"betas": (0.9, _NAN)}, ValueError, r"Invalid beta2 \(betas\[1\]\): nan"),
            ({"betas": (0.9,)}, ValueError, r"betas must be a pair"),
            ({"betas": 0.9}, ValueError, r"betas must be a pair"),
            ({"eps": -1e-8}, ValueError, r"Invalid eps: -1e-08"),
            ({"eps": _NAN}, ValueError, r"Invalid eps: nan"),
            ({"weight_decay": -0.01}, ValueError, r"Invalid weight_decay: -0\.01"),
            (
                {"maximize": "yes"},
                ValueError,
                r"Invalid maximize: 'yes' \(expected True or False\)",
            ),
        ),
    ),
    Entry(
        name="ASGD",
        cls=ASGD,
        torch_name="ASGD",
        base={"lr": 0.05},
        grid={
            "lambd": (1e-4, 0.1),
            "alpha": (0.75, 0.4),
            # t0 3.5: mu = 1 / (t - 3.5) (rounded to float32) != 1 from step 5, ax averages
            # from step 6; the default 1e6: ax = p throughout
            "t0": (1e6, 3.5),
            "weight_decay": (0, 0.1),
            "maximize": (False, True),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"lr": 1}, {"lr": 1}),
            ({"lambd": 0.0}, {"lambd": 0.0}),
            ({"alpha": 0.0}, {"alpha": 0.0}),
            ({"alpha": 2}, {"alpha": 2}),
            ({"t0": 0}, {"t0": 0}),
            ({"t0": -5.0}, {"t0": -5.0}),
            ({"weight_decay": 0.0}, {"weight_decay": 0.0}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"lambd": -1e-4}, ValueError, r"Invalid lambd: -0\.0001"),
            ({"lambd": _NAN}, ValueError, r"Invalid lambd: nan"),
            ({"lambd": float("inf")}, ValueError, r"Invalid lambd: inf"),
            ({"alpha": -0.75}, ValueError, r"Invalid alpha: -0\.75"),
            ({"alpha": float("inf")}, ValueError, r"Invalid alpha: inf"),
            ({"alpha": "0.75"}, ValueError, r"Invalid alpha: '0\.75'"),
            ({"t0": _NAN}, ValueError, r"Invalid t0: nan \(expected a finite number\)"),
            ({"t0": -float("inf")}, ValueError, r"Invalid t0: -inf"),
            ({"t0": True}, ValueError, r"Invalid t0: True"),
            ({"t0": None}, ValueError, r"Invalid t0: None"),
            ({"weight_decay": -0.1}, ValueError, r"Invalid weight_decay: -0\.1"),
            ({"weight_decay": _NAN}, ValueError, r"Invalid weight_decay: nan"),
            ({"maximize": 1}, ValueError, r"Invalid maximize: 1 \(expected True or False\)"),
        ),
    ),
    Entry(
        name="Rprop",
        cls=Rprop,
        torch_name="Rprop",
        base={"lr": 0.05},
        grid={
            "etas": ((0.5, 1.2), (0.3, 1.5)),
            # (1e-3, 0.08): both bounds bind within 30 steps from lr 0.05
            "step_sizes": ((1e-6, 50), (1e-3, 0.08)),
            "maximize": (False, True),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"lr": 1}, {"lr": 1}),
            ({"etas": (1e-9, 1.0000001)}, {"etas": (1e-9, 1.0000001)}),
            ({"etas": [0.5, 1.2]}, {"etas": (0.5, 1.2)}),
            ({"step_sizes": (0.0, 0.0)}, {"step_sizes": (0.0, 0.0)}),
            ({"step_sizes": [1e-6, 50]}, {"step_sizes": (1e-6, 50)}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"etas": (0.0, 1.2)}, ValueError, r"Invalid etaminus \(etas\[0\]\): 0\.0"),
            ({"etas": (1.0, 1.2)}, ValueError, r"Invalid etaminus \(etas\[0\]\): 1\.0"),
            ({"etas": (-0.5, 1.2)}, ValueError, r"Invalid etaminus \(etas\[0\]\): -0\.5"),
            ({"etas": (_NAN, 1.2)}, ValueError, r"Invalid etaminus \(etas\[0\]\): nan"),
            ({"etas": (0.5, 1.0)}, ValueError, r"Invalid etaplus \(etas\[1\]\): 1\.0"),
            ({"etas": (0.5, 0.9)}, ValueError, r"Invalid etaplus \(etas\[1\]\): 0\.9"),
            (
                {"etas": (0.5, float("inf"))},
                ValueError,
                r"Invalid etaplus \(etas\[1\]\): inf",
            ),
            ({"etas": (0.5,)}, ValueError, r"etas must be a pair \(etaminus, etaplus\)"),
            ({"etas": 0.5}, ValueError, r"etas must be a pair"),
            (
                {"step_sizes": (-1e-6, 50)},
                ValueError,
                r"Invalid step_size_min \(step_sizes\[0\]\): -1e-06",
            ),
            (
                {"step_sizes": (1e-6, _NAN)},
                ValueError,
                r"Invalid step_size_max \(step_sizes\[1\]\): nan",
            ),
            (
                {"step_sizes": (1.0, 0.5)},
                ValueError,
                r"Invalid step_sizes: \(1\.0, 0\.5\) \(expected step_size_min <= step_size_max",
            ),
            ({"step_sizes": (1e-6, 50, 1)}, ValueError, r"step_sizes must be a pair"),
            ({"maximize": "no"}, ValueError, r"Invalid maximize: 'no' \(expected True or False\)"),
        ),
    ),
    Entry(
        name="Lion",
        cls=Lion,
        torch_name="Lion",  # not in torch.optim: the reference is tests/_references.py's
        reference=lion_reference,
        base={"lr": 0.05},
        grid={
            "betas": ((0.9, 0.99), (0.2, 0.6), (0.0, 0.0)),
            "weight_decay": (0.0, 0.3),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"lr": 1}, {"lr": 1}),
            ({"betas": (0.0, 0.0)}, {"betas": (0.0, 0.0)}),
            ({"betas": (0.999999, 0.999999)}, {"betas": (0.999999, 0.999999)}),
            ({"betas": [0.5, 0.6]}, {"betas": (0.5, 0.6)}),
            ({"weight_decay": 0}, {"weight_decay": 0}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"betas": (1.0, 0.99)}, ValueError, r"Invalid beta1 \(betas\[0\]\): 1\.0"),
            ({"betas": (-0.1, 0.99)}, ValueError, r"Invalid beta1 \(betas\[0\]\): -0\.1"),
            ({"betas": (0.9, 1.0)}, ValueError, r"Invalid beta2 \(betas\[1\]\): 1\.0"),
            ({"betas": (0.9, _NAN)}, ValueError, r"Invalid beta2 \(betas\[1\]\): nan"),
            ({"betas": (0.9,)}, ValueError, r"betas must be a pair"),
            ({"weight_decay": -0.1}, ValueError, r"Invalid weight_decay: -0\.1"),
            ({"weight_decay": float("inf")}, ValueError, r"Invalid weight_decay: inf"),
            ({"weight_decay": "0"}, ValueError, r"Invalid weight_decay: '0'"),
        ),
    ),
    Entry(
        name="Adafactor",
        cls=Adafactor,
        torch_name="Adafactor",
        # Updates are about lr * RMS(p): with lr 0.1 the differences from torch's fused
        # multiply-adds and MKL rsqrt stay within ATOL (at a fifth of it); the branch
        # rho_t = 1/sqrt(t) < lr and larger steps: tests/test_adafactor.py
        base={"lr": 0.1},
        grid={
            # the lerp weight t**beta2_decay: torch.lerp's branch |w| >= 0.5 until step 2 or 10
            "beta2_decay": (-0.8, -0.3),
            # eps1 1.0: both floors (variance estimate, row mean) bite; eps2 3.0 > RMS(p)
            "eps": ((None, 1e-3), (1.0, 3.0)),
            "d": (1.0, 1.5),
            "weight_decay": (0.0, 0.1),
            "maximize": (False, True),
        },
        accepted=(
            ({"lr": 0.0}, {"lr": 0.0}),
            ({"lr": 1}, {"lr": 1}),
            ({"beta2_decay": 0.0}, {"beta2_decay": 0.0}),
            ({"beta2_decay": -2}, {"beta2_decay": -2}),
            ({"eps": (0.0, 0.0)}, {"eps": (0.0, 0.0)}),
            ({"eps": [1e-30, 1e-3]}, {"eps": (1e-30, 1e-3)}),
            ({"eps": (None, 0)}, {"eps": (None, 0)}),
            ({"d": 1}, {"d": 1}),
            ({"weight_decay": 0}, {"weight_decay": 0}),
        ),
        invalid=(
            *_LR_INVALID,
            ({"beta2_decay": 0.1}, ValueError, r"Invalid beta2_decay: 0\.1"),
            ({"beta2_decay": _NAN}, ValueError, r"Invalid beta2_decay: nan"),
            ({"beta2_decay": -float("inf")}, ValueError, r"Invalid beta2_decay: -inf"),
            ({"beta2_decay": "-0.8"}, ValueError, r"Invalid beta2_decay: '-0\.8'"),
            ({"eps": (-1e-30, 1e-3)}, ValueError, r"Invalid eps1 \(eps\[0\]\): -1e-30"),
            ({"eps": (_NAN, 1e-3)}, ValueError, r"Invalid eps1 \(eps\[0\]\): nan"),
            ({"eps": (None, -1e-3)}, ValueError, r"Invalid eps2 \(eps\[1\]\): -0\.001"),
            ({"eps": (None, None)}, ValueError, r"Invalid eps2 \(eps\[1\]\): None"),
            ({"eps": (1e-30, float("inf"))}, ValueError, r"Invalid eps2 \(eps\[1\]\): inf"),
            ({"eps": 1e-3}, ValueError, r"eps must be a pair \(eps1, eps2\)"),
            ({"eps": (None,)}, ValueError, r"eps must be a pair \(eps1, eps2\)"),
            ({"d": 0.5}, ValueError, r"Invalid d: 0\.5"),
            ({"d": _NAN}, ValueError, r"Invalid d: nan"),
            ({"weight_decay": -0.1}, ValueError, r"Invalid weight_decay: -0\.1"),
            ({"weight_decay": float("inf")}, ValueError, r"Invalid weight_decay: inf"),
            ({"maximize": 1}, ValueError, r"Invalid maximize: 1 \(expected True or False\)"),
        ),
    ),
)

BY_NAME: Mapping[str, Entry] = MappingProxyType({e.name: e for e in TABLE})
assert len(BY_NAME) == len(TABLE), "two table entries share a name"


# --------------------------------------------------------------------- cases


def _product(entry: Entry) -> Iterator[tuple[tuple[int, ...], dict[str, Any]]]:
    """(value indices, kwargs) of every valid combination of the grid, in product order."""
    ranges = [range(len(values)) for values in entry.grid.values()]
    for indices in itertools.product(*ranges):
        kwargs = {
            name: values[i] for (name, values), i in zip(entry.grid.items(), indices, strict=True)
        }
        if entry.valid(kwargs):
            yield indices, kwargs


def cases(entry: Entry) -> Iterator[dict[str, Any]]:
    """Keyword arguments of every valid combination of ``entry.grid`` (``base`` not included)."""
    for _, kwargs in _product(entry):
        yield kwargs


def covering_cases(entry: Entry) -> list[dict[str, Any]]:
    """A few valid cases that between them use every value of every option.

    The first is the first valid case of the grid (its first values); then,
    greedily, the case that uses the most values not used yet, among those the
    one that moves the most options off their first value (so that e.g.
    dampening is tried with momentum), then the first in product order.  For
    the checks too costly to run over the whole grid on every backend.
    """
    grid = list(entry.grid.items())
    todo = {(k, i) for k, (_, values) in enumerate(grid) for i in range(len(values))}
    product = list(_product(entry))
    chosen = []
    if product:
        todo -= set(enumerate(product[0][0]))
        chosen.append(product[0][1])
    while todo:
        best, score = None, (0, 0)
        for indices, kwargs in product:
            new = len(todo & set(enumerate(indices)))
            moved = sum(1 for i in indices if i != 0)
            if new and (new, moved) > score:
                best, score = (indices, kwargs), (new, moved)
        if best is None:
            missing = sorted((grid[k][0], grid[k][1][i]) for k, i in todo)
            raise ValueError(f"{entry.name}: no valid case uses {missing}")
        todo -= set(enumerate(best[0]))
        chosen.append(best[1])
    return chosen


def case_id(entry: Entry, kwargs: Kwargs) -> str:
    """A test id: the entry's name and the case's options."""
    return "-".join([entry.name, *(f"{k}={v}" for k, v in kwargs.items())])


def entry_params() -> list[Any]:
    """``pytest.param(entry)`` for every table entry."""
    return [pytest.param(e, id=e.name) for e in TABLE]


def case_params() -> list[Any]:
    """``pytest.param(entry, kwargs)`` for the full grid of every entry."""
    return [pytest.param(e, kw, id=case_id(e, kw)) for e in TABLE for kw in cases(e)]


def covering_params() -> list[Any]:
    """``pytest.param(entry, kwargs)`` for the covering cases of every entry."""
    return [pytest.param(e, kw, id=case_id(e, kw)) for e in TABLE for kw in covering_cases(e)]


# ---------------------------------------------------------- parameters and runs

SHAPES = ((), (1,), (7,), (2, 3), (4, 1, 2))
TORCH_STEPS = 30
RTOL = 1e-13
ATOL = 1e-15


def initial(shapes=SHAPES, seed=0) -> list[np.ndarray]:
    """Initial parameter values, NumPy float64."""
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s)) for s in shapes]


def grad_sequence(shapes=SHAPES, steps=TORCH_STEPS, seed=1) -> list[list[np.ndarray]]:
    """``steps`` lists of gradients (one per shape), NumPy float64."""
    rng = np.random.default_rng(seed)
    return [[np.asarray(rng.standard_normal(s)) for s in shapes] for _ in range(steps)]


def ours(xp, values, dtype="float64") -> list[P]:
    """Parameters of backend ``xp`` holding copies of ``values``."""
    return [P(to_backend(v, xp, dtype=dtype, copy=True)) for v in values]


def theirs(torch, values) -> list[Any]:
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def set_grads(xp, params, torch_params, grads) -> None:
    for p, tp, g in zip(params, torch_params, grads, strict=True):
        p.grad = to_backend(g, xp, dtype=p.data.dtype, copy=True)
        tp.grad = torch_params[0].new_tensor(g)


def assert_params_match(params, torch_params, step) -> None:
    for i, (p, tp) in enumerate(zip(params, torch_params, strict=True)):
        np.testing.assert_allclose(
            to_np(p.data),
            tp.detach().numpy(),
            rtol=RTOL,
            atol=ATOL,
            err_msg=f"parameter {i} after step {step}",
        )


def assert_state_matches(opt, topt, params, torch_params) -> None:
    """Our state has torch's keys, ``step`` as an int, and torch's values."""
    for i, (p, tp) in enumerate(zip(params, torch_params, strict=True)):
        mine, ref = opt.state.get(p) or {}, topt.state.get(tp) or {}
        assert set(mine) == set(ref), f"parameter {i}: state keys {set(mine)}, torch's {set(ref)}"
        for key, value in ref.items():
            if key == "step":
                assert type(mine["step"]) is int, f"parameter {i}: step is {mine['step']!r}"
                assert mine["step"] == int(value.item()), f"parameter {i}: step"
            elif value is None:
                assert mine[key] is None, f"parameter {i}: {key}"
            else:
                np.testing.assert_allclose(
                    to_np(mine[key]),
                    value.numpy(),
                    rtol=RTOL,
                    atol=ATOL,
                    err_msg=f"parameter {i}: {key}",
                )


def run_side_by_side(
    xp, torch, make_ours, make_theirs, *, steps=TORCH_STEPS, on_step=None, shapes=SHAPES
):
    """Run ours and torch's on the same float64 values and gradients; compare every step.

    Parameters are compared after every step, and the state (keys and values)
    at the end; the gradients must come out of a step as they went in.
    Returns both optimizers.
    """
    params = ours(xp, initial(shapes))
    torch_params = theirs(torch, initial(shapes))
    opt, topt = make_ours(params), make_theirs(torch_params)
    for step, grads in enumerate(grad_sequence(shapes, steps)):
        if on_step is not None:
            on_step(step, opt, topt)
        set_grads(xp, params, torch_params, grads)
        opt.step()
        topt.step()
        assert_params_match(params, torch_params, step)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            assert to_np(p.grad).tobytes() == g.tobytes(), f"step {step} changed gradient {i}"
    assert_state_matches(opt, topt, params, torch_params)
    assert opt.step_count == steps
    for p in params:
        assert str(p.data.dtype).endswith("float64")
    return opt, topt


# ------------------------------------------------------------ exact comparisons


def assert_same_bits(actual, expected, what="") -> None:
    """Same backend, dtype, shape and bytes (NaN payloads and the sign of zero included)."""
    assert backend_name(actual) == backend_name(expected), what
    a, e = to_np(actual), to_np(expected)
    np.testing.assert_array_equal(a, e, strict=True, err_msg=what)
    assert a.tobytes() == e.tobytes(), f"{what}: same values, different bits"


def assert_same_run(opt_a, params_a, opt_b, params_b) -> None:
    """Two optimizers in the same place: parameters, state records and counters, bit for bit."""
    assert (opt_a.step_count, opt_a.skipped_steps) == (opt_b.step_count, opt_b.skipped_steps)
    for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
        assert_same_bits(pa.data, pb.data, f"parameter {i}")
        ra, rb = opt_a.state.get(pa), opt_b.state.get(pb)
        assert (ra is None) == (rb is None), f"parameter {i}: state {ra} vs {rb}"
        if ra is None:
            continue
        assert list(ra) == list(rb), f"parameter {i}: state keys"
        for key, value in ra.items():
            other = rb[key]
            if key == "step":
                assert type(value) is int and type(other) is int, f"parameter {i}: step"
                assert value == other, f"parameter {i}: step {value} != {other}"
            elif value is None or other is None:
                assert value is None and other is None, f"parameter {i}: {key}"
            elif isinstance(value, float) or isinstance(other, float):  # scalar state
                assert type(value) is float and type(other) is float, f"parameter {i}: {key}"
                assert value.hex() == other.hex(), f"parameter {i}: {key} {value!r} != {other!r}"
            else:
                assert_same_bits(value, other, f"parameter {i}: {key}")


def snapshot(opt, params):
    """Host copies of every parameter, every state entry, every group's options, the counters."""
    data = [to_np(p.data).copy() for p in params]
    state = {}
    for i, p in enumerate(params):
        record = opt.state.get(p)
        if record is not None:
            state[i] = {
                k: (to_np(v).copy() if hasattr(v, "shape") else v) for k, v in record.items()
            }
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    counters = (opt.step_count, opt.skipped_steps)
    return data, state, copy.deepcopy(groups), counters


def _same_bytes(a, b, what) -> None:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), what
        assert (a.dtype, a.shape) == (b.dtype, b.shape), what
        assert a.tobytes() == b.tobytes(), f"{what} changed"
    else:
        assert type(a) is type(b) and a == b, f"{what}: {a!r} != {b!r}"


def assert_unchanged(before, after) -> None:
    """Two :func:`snapshot` results are byte for byte the same."""
    data0, state0, groups0, counters0 = before
    data1, state1, groups1, counters1 = after
    assert len(data0) == len(data1)
    for i, (a, b) in enumerate(zip(data0, data1, strict=True)):
        _same_bytes(a, b, f"parameter {i}")
    assert state0.keys() == state1.keys()
    for i in state0:
        assert list(state0[i]) == list(state1[i]), f"state keys of parameter {i}"
        for k in state0[i]:
            _same_bytes(state0[i][k], state1[i][k], f"state {k!r} of parameter {i}")
    assert groups0 == groups1
    assert counters0 == counters1
