"""Checkpoints attacked as a hostile user would: crafted files, odd objects, bad paths.

``na.load`` must raise only ValueError or OSError on any file (never RecursionError,
MemoryError, KeyError, ...), ``na.save`` TypeError/ValueError/OSError naming the target
file, and ``Module.load_state_dict`` TypeError/ValueError naming the key.  After every
refusal the file on disk and the model are byte-identical to what they were.

Crafted files are framed here by hand (8-byte little-endian header length, JSON header,
data), and signed with a checksum computed here, so that an attack gets past the
checksum and reaches the parser it aims at.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import hashlib
import json
import os
import stat
import struct
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neural_arch as na
from neural_arch import backend, checkpoint

MARKER = "neural_arch.checkpoint"
META = {"format": MARKER, "format_version": "1", "structure": "null", "checksum": "x"}
_META = json.dumps(META)
CODES = {
    "uint16": "U16",
    "bool": "BOOL",
    "int64": "I64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --------------------------------------------------------------------------- crafting


def frame(header, data: bytes = b"") -> bytes:
    """The safetensors framing around ``header`` (bytes, str, or a JSON-able object)."""
    if not isinstance(header, (bytes, str)):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(header)) + header + data


def signed(structure: str, tensors=None, **metadata) -> bytes:
    """A checkpoint around ``structure`` (JSON text) and ``tensors`` (name -> NumPy array)
    whose checksum is right, written from the documented format, not by the library."""
    tensors = tensors or {}
    meta = {"format": MARKER, "format_version": "1", "structure": structure, **metadata}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, arr.dtype.name, list(arr.shape)]).encode())
        h.update(arr.tobytes())
    header, data = {"__metadata__": {**meta, "checksum": "sha256:" + h.hexdigest()}}, b""
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {
            "dtype": CODES[arr.dtype.name],
            "shape": list(arr.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    return frame(header, data)


def nested(depth: int, open_: str, close: str, leaf: str = "1") -> str:
    return open_ * depth + leaf + close * depth


def refused_cleanly(path, **kwargs):
    """Load ``path`` expecting a ValueError that names the file; return the message."""
    with pytest.raises(ValueError) as info:
        na.load(path, **kwargs)
    assert str(path) in str(info.value)
    return str(info.value)


def loads_or_refuses(path, **kwargs):
    """The fuzzing invariant: the file loads, or the refusal is a ValueError/OSError."""
    with contextlib.suppress(ValueError, OSError):
        na.load(path, **kwargs)


def test_the_crafted_files_are_real_checkpoints(tmp_path):
    """The crafting above is right, so the refusals below are the attacks' doing."""
    path = tmp_path / "ck.safetensors"
    structure = '{"dict":[["a",{"tuple":[1,{"float":"nan"}]}],["w",{"array":"0"}]]}'
    path.write_bytes(signed(structure, {"0": np.arange(3.0)}))
    out = na.load(path)
    assert out["a"][0] == 1 and out["a"][1] != out["a"][1]
    np.testing.assert_array_equal(out["w"], np.arange(3.0))


# --------------------------------------------------------------------------- deep nesting


_HEAD = '{"__metadata__":{"format":"' + MARKER + '"}'
DEEP_HEADERS = {
    # the header itself, nested before the marker is even reachable
    "tensor entry 1000 deep": _HEAD + ',"x":' + nested(1000, "[", "]") + "}",
    "tensor entry 100000 deep": _HEAD + ',"x":' + nested(100_000, "[", "]") + "}",
    "objects 50000 deep": _HEAD + ',"x":' + nested(50_000, '{"a":', "}") + "}",
    "metadata value deep": _HEAD[:-1] + ',"v":' + nested(5000, "[", "]") + "}}",
    "a list around the marker": nested(20_000, "[", "]", f'"{MARKER}"'),
    "unclosed brackets": "[" * 200_000 + f'"{MARKER}"',
    "unclosed string hides nothing": _HEAD + ',"x":' + "[" * 5000 + '"\\',
}


@pytest.mark.parametrize("name", sorted(DEEP_HEADERS))
def test_deeply_nested_headers_are_refused(tmp_path, name):
    path = tmp_path / "deep.safetensors"
    path.write_bytes(frame(DEEP_HEADERS[name]))
    assert "nests too deep" in refused_cleanly(path)


def _list_tags(depth):
    return nested(depth, "[", "]")


def _dict_tags(depth):
    return nested(depth, '{"dict":[["k",', "]]}")


def _tuple_tags(depth):
    return nested(depth, '{"tuple":[', "]}")


def _bad_tags(depth):  # objects that are no tag at all
    return nested(depth, '{"a":', "}")


@pytest.mark.parametrize("tags", [_list_tags, _dict_tags, _tuple_tags, _bad_tags])
@pytest.mark.parametrize("depth", [checkpoint.MAX_DEPTH + 1, 1000, 100_000])
def test_deeply_nested_structures_are_refused(tmp_path, tags, depth):
    """Signed files (the checksum is right): the structure's depth is what is refused."""
    path = tmp_path / "deep.safetensors"
    path.write_bytes(signed(tags(depth)))
    message = refused_cleanly(path)
    assert "deeper than" in message or "unexpected node" in message


@pytest.mark.parametrize("tags", [_list_tags, _dict_tags, _tuple_tags])
def test_structures_at_the_depth_limit_load(tmp_path, tags):
    path = tmp_path / "deep.safetensors"
    path.write_bytes(signed(tags(checkpoint.MAX_DEPTH)))
    out = na.load(path)
    for _ in range(checkpoint.MAX_DEPTH):
        out = out["k"] if isinstance(out, dict) else out[0]
    assert out == 1


def test_brackets_inside_strings_do_not_count(tmp_path):
    path = tmp_path / "ck.safetensors"
    text = "[" * 10_000 + '\\"{' * 1000 + "]"
    na.save({text: text}, path)
    assert na.load(path) == {text: text}


@pytest.mark.parametrize("kind", ["list", "dict", "tuple", "mixed"])
def test_save_bounds_the_depth(tmp_path, kind):
    def deep(depth):
        obj = 1
        for i in range(depth):
            k = kind if kind != "mixed" else ("list", "dict", "tuple")[i % 3]
            obj = [obj] if k == "list" else ({"k": obj} if k == "dict" else (obj,))
        return obj

    path = tmp_path / "ck.safetensors"
    na.save(deep(checkpoint.MAX_DEPTH), path)
    assert na.load(path) == deep(checkpoint.MAX_DEPTH)
    before = path.read_bytes()
    for depth in (checkpoint.MAX_DEPTH + 1, 400, 5000):
        with pytest.raises(ValueError, match="nest deeper than") as info:
            na.save(deep(depth), path)
        assert str(path) in str(info.value)
        assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]


# --------------------------------------------------------------------------- crafted headers


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _with(**tensors):
    return frame({"__metadata__": META, **tensors}, bytes(8))


BAD_HEADERS = {
    # the framing
    "empty file": (b"", "truncated"),
    "7 bytes": (b"\x01" * 7, "truncated"),
    "length 2**64-1": (struct.pack("<Q", 2**64 - 1) + b"{}", "truncated"),
    "length 2**63": (struct.pack("<Q", 2**63) + b"{}", "truncated"),
    "length one past the end": (struct.pack("<Q", 3) + b"{}", "truncated"),
    "a pickle": (b"\x80\x04\x95" + bytes(40), "truncated"),
    # what the header is
    "no marker": (frame({"__metadata__": {"format": "pt"}}), "not a neural_arch checkpoint"),
    "marker as a key only": (frame({MARKER: {}}), "not a neural_arch checkpoint"),
    "marker elsewhere": (frame({"__metadata__": {"x": MARKER}}), "not a neural_arch checkpoint"),
    "header a list": (frame([MARKER]), "not a JSON object"),
    "header a string": (frame(json.dumps(MARKER)), "not a JSON object"),
    "metadata a list": (frame({"__metadata__": [MARKER]}), "not a neural_arch checkpoint"),
    "not UTF-8": (frame(b'{"__metadata__":{"format":"%s","\xff":""}}' % MARKER.encode()), "UTF-8"),
    "not JSON": (frame(f'{{"__metadata__":{{"format":"{MARKER}"'), "unreadable header"),
    "BOM": (frame("\ufeff" + json.dumps({"__metadata__": META})), "unreadable header"),
    "duplicate metadata": (
        frame('{"__metadata__":' + _META + ',"__metadata__":' + _META + "}"),
        "duplicate",
    ),
    "NaN in a shape": (
        frame(
            '{"__metadata__":' + _META + ',"0":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}'
        ),
        "not JSON",
    ),
    "huge int": (frame('{"__metadata__":' + _META + ',"0":' + "9" * 5000 + "}"), "header"),
    # metadata
    "structure null": (frame({"__metadata__": {**META, "structure": None}}), "no string"),
    "structure missing": (
        frame({"__metadata__": {k: v for k, v in META.items() if k != "structure"}}),
        "no 'structure'",
    ),
    "checksum missing": (
        frame({"__metadata__": {k: v for k, v in META.items() if k != "checksum"}}),
        "no 'checksum'",
    ),
    "metadata value an int": (frame({"__metadata__": {**META, "checksum": 5}}), "no string"),
    "wrong checksum": (frame({"__metadata__": META}), "checksum does not match"),
    # tensor entries
    "entry an int": (_with(**{"0": 5}), "is not {"),
    "entry a list": (_with(**{"0": []}), "is not {"),
    "entry null": (_with(**{"0": None}), "is not {"),
    "entry missing a key": (_with(**{"0": {"dtype": "F32", "shape": [2]}}), "is not {"),
    "entry with an extra key": (_with(**{"0": {**_entry(), "x": 1}}), "is not {"),
    "dtype unknown": (_with(**{"0": _entry(dtype="F128")}), "unknown dtype"),
    "dtype lower case": (_with(**{"0": _entry(dtype="f32")}), "unknown dtype"),
    "dtype an int": (_with(**{"0": _entry(dtype=5)}), "unknown dtype"),
    "dtype null": (_with(**{"0": _entry(dtype=None)}), "unknown dtype"),
    "dtype F8": (_with(**{"0": _entry(dtype="F8_E4M3")}), "unknown dtype"),
    "shape a str": (_with(**{"0": {**_entry(), "shape": "2"}}), "has shape"),
    "shape an int": (_with(**{"0": {**_entry(), "shape": 2}}), "has shape"),
    "shape negative": (_with(**{"0": _entry(shape=(-2,))}), "has shape"),
    "shape -1 and -2": (_with(**{"0": _entry(shape=(-1, -2))}), "has shape"),
    "shape float": (_with(**{"0": _entry(shape=(2.0,))}), "has shape"),
    "shape bool": (_with(**{"0": _entry(shape=(True, True))}), "has shape"),
    "shape 65 dims": (_with(**{"0": _entry(shape=(1,) * 65, offsets=(0, 4))}), "has shape"),
    "shape 2**64": (_with(**{"0": _entry(shape=(2**64,))}), "too large"),
    "shape overflowing int64": (_with(**{"0": _entry(shape=(2**32, 2**32, 2**32))}), "too large"),
    "empty but huge": (_with(**{"0": _entry(shape=(0, 2**62, 2**62), offsets=(0, 0))}), "large"),
    "shape too small": (_with(**{"0": _entry(shape=(1,))}), "needs"),
    "offsets a dict": (_with(**{"0": {**_entry(), "data_offsets": {}}}), "data_offsets"),
    "offsets one int": (_with(**{"0": _entry(offsets=(8,))}), "data_offsets"),
    "offsets three ints": (_with(**{"0": _entry(offsets=(0, 8, 8))}), "data_offsets"),
    "offsets negative": (_with(**{"0": _entry(offsets=(-8, 0))}), "data_offsets"),
    "offsets reversed": (_with(**{"0": _entry(offsets=(8, 0))}), "data_offsets"),
    "offsets floats": (_with(**{"0": _entry(offsets=(0.0, 8.0))}), "data_offsets"),
    "offsets bools": (_with(**{"0": _entry(shape=(0,), offsets=(False, False))}), "data_offsets"),
    "offsets past the end": (_with(**{"0": _entry(shape=(4,), offsets=(0, 16))}), "ends at"),
    "offsets far past the end": (
        _with(**{"0": _entry(dtype="F64", shape=(2**40,), offsets=(0, 2**43))}),
        "ends at",
    ),
    "a gap": (_with(**{"0": _entry(shape=(1,), offsets=(4, 8))}), "starts at"),
    "an overlap": (
        _with(**{"0": _entry(), "1": _entry(shape=(1,), offsets=(4, 8))}),
        "starts at",
    ),
    "the same bytes twice": (_with(**{"0": _entry(), "1": _entry()}), "starts at"),
    "bytes after the last": (_with(**{"0": _entry(shape=(1,), offsets=(0, 4))}), "after the last"),
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_crafted_headers_are_refused(tmp_path, name):
    content, fragment = BAD_HEADERS[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    assert fragment in refused_cleanly(path)
    assert path.read_bytes() == content


def test_a_large_header_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_MAX_HEADER", 64)
    path = tmp_path / "big.safetensors"
    path.write_bytes(frame({"__metadata__": META, "pad": "x" * 100}))
    assert "more than the 64" in refused_cleanly(path)


@pytest.mark.parametrize(
    "content",
    [
        struct.pack("<Q", 2**62) + bytes(64),
        _with(**{"0": _entry(dtype="F64", shape=(2**40,), offsets=(0, 2**43))}),
        _with(**{"0": _entry(dtype="F64", shape=(2**22,), offsets=(0, 2**25))}),
        signed('{"array":"0"}', {"0": np.zeros(1)})[:-4],
        frame({"__metadata__": META, "0": _entry(shape=(1,), offsets=(0, 4))}, bytes(20_000_000)),
    ],
    ids=["header length", "tensor of 8 TiB", "tensor of 32 MiB", "truncated data", "20 MB unread"],
)
def test_sizes_are_checked_against_the_file_before_allocating(tmp_path, content):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            na.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes allocated to refuse a {len(content)}-byte file"


# --------------------------------------------------------------------------- format_version


@pytest.mark.parametrize(
    "version",
    [
        "",
        "0",
        "01",
        "1.0",
        "1 ",
        " 1",
        "1\n",
        "+1",
        "-1",
        "0x1",
        "1_0",
        "١",
        "²",
        "𝟏",
        "一",
        "1١",
        1,
        1.0,
        None,
        True,
        [1],
        {"v": 1},
    ],
)
def test_format_version_is_accepted_only_as_written(tmp_path, version):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(
        signed("1", format_version=version)
        if isinstance(version, str)
        else frame({"__metadata__": {**META, "format_version": version}})
    )
    assert "format_version" in refused_cleanly(path)


@pytest.mark.parametrize("version", ["2", "10", "9" * 5000])
def test_newer_format_versions_are_named(tmp_path, version):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(signed("1", format_version=version))
    assert f"reads versions up to {checkpoint.FORMAT_VERSION}" in refused_cleanly(path)


# --------------------------------------------------------------------------- crafted structures

BAD_STRUCTURES = {
    "not JSON": "[1,",
    "NaN": "NaN",
    "Infinity in a list": "[1,-Infinity]",
    "duplicate tag": '{"dict":[],"dict":[]}',
    "two tags": '{"dict":[],"tuple":[]}',
    "unknown tag": '{"set":[1]}',
    "empty object": "{}",
    "dict of a str": '{"dict":"x"}',
    "dict item of three": '{"dict":[["a",1,2]]}',
    "dict item not a list": '{"dict":[{"a":1}]}',
    "dict key a float": '{"dict":[[1.5,1]]}',
    "dict key a bool": '{"dict":[[true,1]]}',
    "dict key null": '{"dict":[[null,1]]}',
    "dict key a list": '{"dict":[[[1],1]]}',
    "tuple of a str": '{"tuple":"ab"}',
    "float not special": '{"float":"1.5"}',
    "float a number": '{"float":1.5}',
    "array missing": '{"array":"7"}',
    "array not a str": '{"array":0}',
    "array null": '{"array":null}',
    "duplicate dict key": '{"dict":[["a",1],["a",2]]}',
    "duplicate int key": '{"dict":[[7,1],[7,2]]}',
}


@pytest.mark.parametrize("name", sorted(BAD_STRUCTURES))
def test_crafted_structures_are_refused(xp, tmp_path, name):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(signed(BAD_STRUCTURES[name], {"0": np.zeros(2)}))
    refused_cleanly(path, backend=xp)


@pytest.mark.parametrize("shape", [(2**28, 0, 1), (2**30, 0, 2**30), (0, 2**60), (1,) * 64])
def test_odd_shapes_load_quickly_on_every_backend(xp, tmp_path, shape):
    """An empty array may claim any dimensions its library allows; JAX's asarray takes
    minutes over (2**28, 0, 1), so a crafted file of such tensors must not reach it."""
    path = tmp_path / "ck.safetensors"
    path.write_bytes(signed('{"array":"0"}', {"0": np.zeros(shape, dtype=np.float32)}))
    out = na.load(path, backend=xp)
    assert tuple(out.shape) == shape and backend.namespace(out) is xp


def test_bools_other_than_0_and_1_are_refused(xp, tmp_path):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(signed('{"array":"0"}', {"0": np.array([0, 1, 2], np.uint8).view(bool)}))
    assert "0 and 1" in refused_cleanly(path, backend=xp)


def test_a_dtype_the_backend_lacks_is_a_value_error(xp, tmp_path):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(signed('{"array":"0"}', {"0": np.ones(2, dtype=np.float16)}))
    if hasattr(xp, "float16"):
        assert na.load(path, backend=xp).dtype == xp.float16
    else:
        assert "float16" in refused_cleanly(path, backend=xp)


def test_bfloat16_without_ml_dtypes_is_a_value_error_on_load(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    bits = np.array([0x3FC0, 0xC000], dtype=np.uint16)  # 1.5, -2.0
    data = signed('{"array":"0"}', {"0": bits})
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    header["0"]["dtype"] = "BF16"  # same bytes; the checksum then names bfloat16
    meta = header["__metadata__"]
    h = hashlib.sha256(
        json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode()
    )
    h.update(json.dumps(["0", "bfloat16", [2]]).encode())
    h.update(bits.tobytes())
    meta["checksum"] = "sha256:" + h.hexdigest()
    path.write_bytes(frame(header, bits.tobytes()))
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    assert "ml_dtypes" in refused_cleanly(path)


@pytest.mark.parametrize("device", ["nope", "cuda:97", 12345, object()])
def test_a_device_the_backend_lacks_is_a_value_error(xp, tmp_path, device):
    path = tmp_path / "ck.safetensors"
    na.save({"w": np.zeros(2)}, path)
    assert "device" in refused_cleanly(path, backend=xp, device=device)


# --------------------------------------------------------------------------- fuzzing


def _valid_checkpoint():
    return signed(
        '{"dict":[["w",{"array":"0"}],["m",{"array":"1"}],["state",{"dict":[[0,{"dict":'
        '[["step",3]]}]]}],["betas",{"tuple":[0.9,0.999]}],["nan",{"float":"nan"}]]}',
        {"0": np.arange(6.0).reshape(2, 3), "1": np.array([True, False])},
    )


VALID = _valid_checkpoint()


@FUZZ
@given(
    cut=st.integers(0, len(VALID)),
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), max_size=4),
    insert=st.one_of(
        st.none(), st.tuples(st.integers(0, len(VALID)), st.binary(min_size=1, max_size=16))
    ),
)
def test_damaged_files_load_or_are_refused_cleanly(tmp_path, cut, flips, insert):
    data = bytearray(VALID)
    for i, mask in flips:
        data[i] ^= mask
    if insert is not None:
        data[insert[0] : insert[0]] = insert[1]
    path = tmp_path / "ck.safetensors"
    path.write_bytes(bytes(data[:cut]))
    loads_or_refuses(path)


_json = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["dict", "tuple", "array", "float", "0", "x"]), children, max_size=2
        ),
    ),
    max_leaves=25,
)


@FUZZ
@given(structure=_json)
def test_arbitrary_signed_structures_load_or_are_refused_cleanly(tmp_path, structure):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(signed(json.dumps(structure), {"0": np.zeros(2)}))
    loads_or_refuses(path)


_entries = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(["F32", "F64", "BOOL", "BF16", "C64", "X"]), _json),
        "shape": st.one_of(st.lists(st.integers(-(2**65), 2**65), max_size=4), _json),
        "data_offsets": st.one_of(st.lists(st.integers(-(2**65), 2**65), max_size=3), _json),
    }
)


@FUZZ
@given(
    entries=st.dictionaries(st.text(max_size=3), st.one_of(_entries, _json), max_size=3),
    metadata=st.dictionaries(st.sampled_from(["structure", "checksum", "x"]), _json, max_size=3),
    data=st.binary(max_size=64),
)
def test_arbitrary_headers_are_refused_cleanly(tmp_path, entries, metadata, data):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(frame({**entries, "__metadata__": {**META, **metadata}}, data))
    loads_or_refuses(path)


# --------------------------------------------------------------------------- not files


def test_not_regular_files(tmp_path):
    with pytest.raises(IsADirectoryError):
        na.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        na.load(tmp_path / "missing")
    if os.path.exists(os.devnull):
        with pytest.raises(ValueError, match="not a regular file"):
            na.load(os.devnull)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        na.load(fifo)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        (3, TypeError),
        (None, TypeError),
        (3.5, TypeError),
        (["a"], TypeError),
        ("", ValueError),
        ("a\0b", ValueError),
    ],
)
def test_bad_path_arguments(tmp_path, monkeypatch, path, error):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match="path"):
        na.load(path)
    with pytest.raises(error, match="path"):
        na.save({"a": 1}, path)
    assert os.listdir(tmp_path) == []


def test_bytes_paths_work(tmp_path):
    path = os.fsencode(tmp_path / "ck.safetensors")
    na.save({"a": 1}, path)
    assert na.load(path) == {"a": 1}


# --------------------------------------------------------------------------- save: odd objects


class _Point(collections.namedtuple("_Point", "x y")):
    pass


UNSAVABLE = [
    (np.longdouble(1.5), TypeError, np.dtype(np.longdouble).name),
    (np.clongdouble(1), TypeError, "complex"),
    (1 + 2j, TypeError, "complex"),
    (np.complex64(1), TypeError, "complex64"),
    (np.complex128(1), TypeError, "complex"),
    (np.datetime64("2020-01-01"), TypeError, "datetime64"),
    (np.timedelta64(1, "s"), TypeError, "timedelta64"),
    (np.bytes_(b"x"), TypeError, "bytes"),
    (np.void(b"xy"), TypeError, "void"),
    (object(), TypeError, "object"),
    ({1, 2}, TypeError, "set"),
    (frozenset(), TypeError, "frozenset"),
    (b"x", TypeError, "bytes"),
    (bytearray(b"x"), TypeError, "bytearray"),
    (memoryview(b"x"), TypeError, "memoryview"),
    (Ellipsis, TypeError, "ellipsis"),
    (int, TypeError, "type"),
    (lambda: 0, TypeError, "function"),
    (range(3), TypeError, "range"),
    (np.zeros(2, dtype=object), TypeError, "object"),
    (np.zeros(2, dtype="U3"), TypeError, "str"),
    (np.zeros(2, dtype="V4"), TypeError, "void"),
    (np.zeros(2, dtype=[("a", "f4")]), TypeError, "void"),
    (np.zeros(2, dtype=np.longdouble), TypeError, np.dtype(np.longdouble).name),
    (np.zeros(2, dtype=np.complex128), TypeError, "complex128"),
    (np.ma.masked_array([1.0, 2.0], mask=[True, False]), TypeError, "mask"),
    (10**4000, ValueError, "too large"),
    (-(10**4000), ValueError, "too large"),
    ({1.5: 0}, TypeError, "float"),
    ({None: 0}, TypeError, "NoneType"),
    ({(1, 2): 0}, TypeError, "tuple"),
    ({True: 0}, TypeError, "bool"),
    ({np.int64(1): 0}, TypeError, "int64"),
    ({b"k": 0}, TypeError, "bytes"),
    ({10**4000: 0}, ValueError, "too large"),
]


@pytest.mark.parametrize(("leaf", "error", "what"), UNSAVABLE, ids=lambda x: repr(x)[:30])
def test_unsupported_leaves_are_refused_and_the_old_file_survives(tmp_path, leaf, error, what):
    path = tmp_path / "ck.safetensors"
    na.save({"w": np.arange(3.0)}, path)
    before = path.read_bytes()
    # valid arrays come first, so a save that wrote as it went would have started
    with pytest.raises(error) as info:
        na.save({"w": np.zeros(3), "state": [np.ones(2), {"bad": leaf}]}, path)
    message = str(info.value)
    assert str(path) in message and 'obj["state"][1]["bad"]' in message and what in message
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def _cycles():
    a = [1]
    a.append(a)
    b = {"x": 1}
    b["self"] = [b]
    c = [0]
    c.append((c,))
    return [a, b, c]


@pytest.mark.parametrize("obj", _cycles(), ids=["list", "dict", "tuple"])
def test_cycles_are_refused(tmp_path, obj):
    path = tmp_path / "ck.safetensors"
    with pytest.raises(ValueError, match="contains itself") as info:
        na.save(obj, path)
    assert str(path) in str(info.value)
    assert not path.exists()


def test_subclasses_are_stored_as_their_base_type_without_running_their_methods(tmp_path):
    class Loud:
        def __str__(self):
            raise AssertionError("__str__ called")

        __repr__ = __int__ = __index__ = __float__ = __hash__ = __str__

    class S(Loud, str):
        pass

    class I(Loud, int):  # noqa: E742
        pass

    class F(Loud, float):
        pass

    class Color(enum.IntEnum):
        RED = 1

    path = tmp_path / "ck.safetensors"
    na.save([S("s"), I(3), F(0.5), _Point(1, 2), {Color.RED: Color.RED}], path)
    out = na.load(path)
    assert out == ["s", 3, 0.5, (1, 2), {1: 1}]
    assert [type(v) for v in out] == [str, int, float, tuple, dict]
    assert type(next(iter(out[4]))) is int


def test_saving_never_replaces_the_file_when_the_header_would_be_too_large(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    na.save({"w": np.arange(3.0)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint, "_MAX_HEADER", 500)
    with pytest.raises(ValueError, match="header") as info:
        na.save(list(range(1000)), path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- save: file system


def test_missing_directory_names_the_target(tmp_path):
    path = tmp_path / "nope" / "ck.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        na.save({"a": 1}, path)
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)
    assert info.value.filename == str(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", ["", os.sep])
def test_a_directory_is_not_replaced(tmp_path, suffix):
    target = tmp_path / "dir"
    target.mkdir()
    (target / "keep").write_text("x")
    for path in (str(target) + suffix, str(tmp_path / "new") + os.sep):
        with pytest.raises(IsADirectoryError) as info:
            na.save({"a": 1}, path)
        assert path in str(info.value)
    assert os.listdir(target) == ["keep"]
    assert sorted(os.listdir(tmp_path)) == ["dir"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes read-only directories"
)
def test_a_read_only_directory_names_the_target(tmp_path):
    path = tmp_path / "ck.safetensors"
    na.save({"a": 1}, path)
    before = path.read_bytes()
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(PermissionError) as info:
            na.save({"a": 2}, path)
    finally:
        os.chmod(tmp_path, 0o700)
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]


@pytest.mark.parametrize("where", ["replace", "fsync"])
def test_a_failed_write_names_the_target_not_the_temporary(tmp_path, monkeypatch, where):
    path = tmp_path / "ck.safetensors"
    na.save({"a": 1}, path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link", args[0])

    monkeypatch.setattr(checkpoint.os, where, fail)
    with pytest.raises(OSError) as info:
        na.save({"a": 2}, path)
    monkeypatch.undo()
    assert info.value.errno == errno.EXDEV
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_saving_through_a_symlink_writes_through_and_keeps_the_link(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "ck.safetensors"
    na.save({"epoch": 1}, target)
    os.chmod(target, 0o640)
    link = tmp_path / "latest.safetensors"
    os.symlink(os.path.relpath(target, tmp_path), link)  # relative, into another directory
    link_of_link = tmp_path / "link2"
    os.symlink(link.name, link_of_link)
    na.save({"epoch": 2}, link_of_link)
    assert os.path.islink(link) and os.path.islink(link_of_link)
    assert na.load(target) == {"epoch": 2} == na.load(link)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["latest.safetensors", "link2", "real"]
    assert os.listdir(real_dir) == ["ck.safetensors"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_dangling_and_looping_symlinks(tmp_path):
    dangling = tmp_path / "dangling"
    os.symlink("created.safetensors", dangling)
    na.save({"a": 1}, dangling)
    assert os.path.islink(dangling) and na.load(tmp_path / "created.safetensors") == {"a": 1}
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    with pytest.raises(OSError) as info:
        na.save({"a": 1}, loop)
    assert info.value.errno == errno.ELOOP and str(loop) in str(info.value)
    assert os.path.islink(loop)
    to_dir = tmp_path / "to_dir"
    (tmp_path / "d").mkdir()
    os.symlink("d", to_dir)
    with pytest.raises(IsADirectoryError):
        na.save({"a": 1}, to_dir)
    assert os.listdir(tmp_path / "d") == []


def test_a_long_file_name_still_gets_a_temporary_file(tmp_path):
    path = tmp_path / ("c" * 240 + ".st")
    na.save({"a": 1}, path)
    assert na.load(path) == {"a": 1}
    assert os.listdir(tmp_path) == [path.name]


# ---------------------------------------------------------------- Module.load_state_dict


def _model(xp):
    na.manual_seed(0)
    return na.Sequential(na.Linear(3, 4), na.Tanh(), na.Linear(4, 2)).to(xp)


def _state(model):
    return [(p.data, backend.to_numpy(p.data).tobytes()) for p in model.parameters()]


def _assert_unchanged(model, before):
    for p, (data, raw) in zip(model.parameters(), before, strict=True):
        assert p.data is data and backend.to_numpy(p.data).tobytes() == raw


class _Junk:
    shape = (2,)
    dtype = "float32"


def _bad_values(xp):
    """Values for '2.bias' (shape (2,), float32), the last key: refusals name it."""
    as_xp = lambda a: backend.to_backend(a, xp)  # noqa: E731
    values = [
        ([0.0, 0.0], TypeError, "must be an array"),
        (0.0, TypeError, "must be an array"),
        (None, TypeError, "must be an array"),
        ("00", TypeError, "must be an array"),
        (_Junk(), TypeError, "must be an array"),
        (as_xp(np.zeros(2, dtype=np.int64)), TypeError, "int64"),
        (as_xp(np.zeros(2, dtype=bool)), TypeError, "bool"),
        (np.zeros(2, dtype=np.complex64), TypeError, "complex64"),
        (np.zeros(2, dtype=object), TypeError, "object"),
        (np.zeros(2, dtype="U2"), TypeError, "floating"),
        (as_xp(np.zeros(3, dtype=np.float32)), ValueError, "(3,)"),
        (as_xp(np.zeros((2, 1), dtype=np.float32)), ValueError, "(2, 1)"),
        (as_xp(np.zeros((), dtype=np.float32)), ValueError, "()"),
        (na.Tensor(as_xp(np.zeros((1, 2), dtype=np.float32))), ValueError, "(1, 2)"),
    ]
    return values


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_refuses_bad_values_and_changes_nothing(xp, strict):
    model = _model(xp)
    source = {k: backend.to_numpy(v) + 1 for k, v in model.state_dict().items()}
    before = _state(model)
    for value, error, fragment in _bad_values(xp):
        bad = {**source, "2.bias": value}
        with pytest.raises(error) as info:
            model.load_state_dict(bad, strict=strict)
        assert "'2.bias'" in str(info.value) and fragment in str(info.value), value
        _assert_unchanged(model, before)
    model.load_state_dict(source, strict=strict)  # the valid one still loads
    np.testing.assert_array_equal(backend.to_numpy(model[2].bias.data), source["2.bias"])


@pytest.mark.parametrize(
    ("state_dict", "strict", "error", "fragment"),
    [
        ([("0.weight", np.zeros((4, 3)))], True, TypeError, "mapping"),
        (None, True, TypeError, "mapping"),
        ("0.weight", True, TypeError, "mapping"),
        ({}, "False", TypeError, "strict"),
        ({}, None, TypeError, "strict"),
        ({}, 1, TypeError, "strict"),
        ({}, [], TypeError, "strict"),
        ({0: np.zeros(2)}, True, ValueError, "unexpected keys [0]"),
        ({"2.bias ": np.zeros(2)}, True, ValueError, "missing keys"),
    ],
)
def test_load_state_dict_refuses_bad_arguments(xp, state_dict, strict, error, fragment):
    model = _model(xp)
    before = _state(model)
    with pytest.raises(error) as info:
        model.load_state_dict(state_dict, strict=strict)
    assert fragment in str(info.value)
    _assert_unchanged(model, before)


def test_load_state_dict_accepts_numpy_bools_and_rounds_to_the_parameter_dtype(xp):
    model = _model(xp)
    source = {k: backend.to_numpy(v).astype(np.float64) / 3 for k, v in model.state_dict().items()}
    model.load_state_dict(source, strict=np.True_)
    for name, p in model.named_parameters():
        assert backend.dtype_name(p.data.dtype) == "float32"
        np.testing.assert_array_equal(backend.to_numpy(p.data), source[name].astype(np.float32))


def test_load_state_dict_into_read_only_and_guarded_parameters():
    torch = pytest.importorskip("torch")
    model = _model("numpy")
    model[0].weight.data.flags.writeable = False
    sd = {k: v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)  # the read-only array is replaced, not written
    np.testing.assert_array_equal(model[0].weight.data, sd["0.weight"])

    tmodel = _model("torch")
    tmodel[0].weight.data = torch.zeros(4, 3, requires_grad=True)
    tmodel[0].bias.data = torch.zeros(1).expand(4)  # a broadcast view cannot be written
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    for name, p in tmodel.named_parameters():
        np.testing.assert_array_equal(p.data.detach().numpy(), sd[name])


def test_load_state_dict_copies_torch_values_out_of_their_graph():
    torch = pytest.importorskip("torch")
    model = _model("torch")
    sd = {k: torch.ones(v.shape, requires_grad=True) * 2 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    for p in model.parameters():
        assert not p.data.requires_grad and p.data.grad_fn is None
        assert torch.equal(p.data, torch.full(p.data.shape, 2.0))


def test_save_resolves_lazy_torch_views(tmp_path):
    torch = pytest.importorskip("torch")
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    path = tmp_path / "ck.safetensors"
    na.save({"conj": z.conj(), "neg": torch.tensor([1.0, 2.0])._neg_view()}, path)
    out = na.load(path)
    np.testing.assert_array_equal(out["conj"], np.array([1 - 2j, 3 + 4j], dtype=np.complex64))
    np.testing.assert_array_equal(out["neg"], np.array([-1.0, -2.0], dtype=np.float32))


def test_load_state_dict_is_seen_by_a_pending_backward(xp):
    model = _model(xp)
    w = model[0].weight
    loss = (w * w).sum()
    model.load_state_dict({k: backend.to_numpy(v) + 1 for k, v in model.state_dict().items()})
    with pytest.raises(RuntimeError, match="modified"):
        loss.backward()


def test_module_load_of_a_crafted_file_changes_nothing(xp, tmp_path):
    model = _model(xp)
    before = _state(model)
    path = tmp_path / "model.safetensors"
    path.write_bytes(frame(DEEP_HEADERS["tensor entry 100000 deep"]))
    with pytest.raises(ValueError):
        model.load(path)
    path.write_bytes(signed(_dict_tags(5000)))
    with pytest.raises(ValueError):
        model.load(path)
    _assert_unchanged(model, before)
