"""Portable checkpoints: nested state in a safetensors file, no pickle.

``save(obj, path)`` writes a nested structure of dicts, lists and tuples whose
leaves are arrays of any backend (or Tensors/Parameters), Python numbers,
strings, bools and None; ``load(path, backend=None, device=None)`` reads it
back with the arrays in the requested backend (NumPy by default) and device.
A checkpoint written from CuPy on a GPU therefore resumes on a laptop with
NumPy, and the other way round.

The file is an ordinary safetensors file.  Its tensors are the arrays,
named ``"0"``, ``"1"``, ... in the order they are met; its string metadata
(``__metadata__``) holds:

``format``
    ``"neural_arch.checkpoint"`` (files without it are refused as foreign);
``format_version``
    ``"1"``; a file from a newer format is refused with both versions named;
``structure``
    the nested structure as JSON (see :func:`_encode`); every JSON object in
    it is a one-key tag: ``{"dict": [[key, value], ...]}`` (keys str or int,
    in order), ``{"tuple": [...]}``, ``{"array": "<tensor name>"}``,
    ``{"float": "nan" | "inf" | "-inf"}``; JSON arrays are lists and JSON
    scalars are themselves;
``checksum``
    ``"sha256:<hex>"`` over the other metadata and every tensor's name,
    dtype, shape and bytes, so a truncated or corrupted file is refused
    instead of resuming training from garbage.

What comes back differs from what went in only in these documented ways:
Tensors and Parameters load as their arrays; NumPy scalars (``np.float32(1)``)
load as Python numbers; an array object that appears twice is stored once and
loads as one object.  Loading reads JSON and raw bytes only and never runs
code from the file.

Writes are atomic: the file is written to a temporary file in the same
directory, flushed and fsynced, then renamed over ``path``.  Any failure
(an unsupported leaf, a full disk, Ctrl-C) leaves a previous checkpoint at
``path`` untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import struct
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np
import safetensors
import safetensors.numpy

from . import backend as _backend

__all__ = ["FORMAT_VERSION", "load", "save"]

#: The checkpoint format this library writes; it reads this version and older.
FORMAT_VERSION = 1

_MAGIC = "neural_arch.checkpoint"

# safetensors dtype codes -> dtype names; the dtypes a checkpoint can hold.
_CODES = {
    "BOOL": "bool",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
}
_DTYPES = frozenset(_CODES.values())

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- save


def save(obj: Any, path: PathLike) -> None:
    """Write ``obj`` to ``path`` as a checkpoint (atomically; see the module docs).

    ``obj`` is a nested structure of dicts (str or int keys), lists and
    tuples whose leaves are arrays of any supported backend, Tensors or
    Parameters (stored as their ``.data``), ``int``, ``float``, ``bool``,
    ``str`` and ``None``; typically
    ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}``.

    Raises TypeError naming the path inside ``obj`` (``obj["optimizer"]["state"][3]``)
    of an unsupported leaf, dict key or dtype, before anything is written;
    OSError when the file cannot be written (the old file is then unchanged).
    """
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    structure = _Encoder(arrays).encode(obj, "obj")
    metadata = {
        "format": _MAGIC,
        "format_version": str(FORMAT_VERSION),
        "structure": json.dumps(
            structure, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ),
    }
    metadata["checksum"] = _checksum(metadata, arrays)
    data = safetensors.numpy.save(arrays, metadata=metadata)
    _write_atomic(path, data)


class _Encoder:
    """Turns a nested object into JSON-able structure, collecting arrays on the way."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.names: dict[int, str] = {}  # id(array) -> tensor name: store shared arrays once
        self.keep: list[Any] = []  # keeps ids valid while encoding
        self.open: set[int] = set()  # containers being encoded, to refuse cycles

    def encode(self, x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return str(x) if isinstance(x, str) else x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return _encode_float(float(x))
        if isinstance(x, np.generic) and x.dtype.kind in "biuf":
            return self.encode(x.item(), where)
        if isinstance(x, (dict, list, tuple)):
            return self._container(x, where)
        data = _tensor_data(x)
        if data is not None or array_api_compat.is_array_api_obj(x):
            return {"array": self._array(x if data is None else data, where)}
        raise TypeError(
            f"cannot save {where}: unsupported type {type(x).__module__}.{type(x).__qualname__}; "
            "checkpoints hold dicts, lists, tuples, arrays, Tensors, int, float, bool, "
            "str and None"
        )

    def _container(self, x: dict | list | tuple, where: str) -> Any:
        if id(x) in self.open:
            raise ValueError(f"cannot save {where}: it contains itself")
        self.open.add(id(x))
        try:
            if isinstance(x, dict):
                items = []
                for key, value in x.items():
                    if isinstance(key, bool) or not isinstance(key, (str, int)):
                        raise TypeError(
                            f"cannot save {_child(where, key)}: dict keys must be str or "
                            f"int, got {type(key).__name__}"
                        )
                    key = str(key) if isinstance(key, str) else int(key)
                    items.append([key, self.encode(value, _child(where, key))])
                return {"dict": items}
            encoded = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(x)]
            return encoded if isinstance(x, list) else {"tuple": encoded}
        finally:
            self.open.discard(id(x))

    def _array(self, x: Any, where: str) -> str:
        if id(x) in self.names:
            return self.names[id(x)]
        name = str(len(self.arrays))
        self.arrays[name] = _host_array(x, where)
        self.names[id(x)] = name
        self.keep.append(x)
        return name


def _child(where: str, key: Any) -> str:
    shown = json.dumps(key) if isinstance(key, str) else repr(key)
    return f"{where}[{shown}]"


def _encode_float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {"float": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


def _tensor_data(x: Any) -> Any:
    """The array of a neural_arch Tensor/Parameter, or None for anything else."""
    from .tensor import Tensor  # lazy: tensor imports backend, checkpoint must not cycle

    return x.data if isinstance(x, Tensor) else None


def _host_array(x: Any, where: str) -> np.ndarray:
    """A contiguous, little-endian NumPy copy of array ``x`` (any backend, any device)."""
    name = _backend.dtype_name(x.dtype)
    if name not in _DTYPES:
        raise TypeError(
            f"cannot save {where}: dtype {name} is not supported; "
            f"checkpoints hold {', '.join(sorted(_DTYPES))}"
        )
    host = _bfloat16_to_numpy(x, where) if name == "bfloat16" else _backend.to_numpy(x)
    if not host.flags.c_contiguous:  # (ascontiguousarray would make 0-d arrays 1-d)
        host = np.ascontiguousarray(host)
    if host.dtype.byteorder == ">":
        host = host.astype(host.dtype.newbyteorder("<"))
    return host


def _bfloat16_to_numpy(x: Any, where: str) -> np.ndarray:
    ml_dtypes = _ml_dtypes(f"cannot save {where}")
    if array_api_compat.is_torch_array(x):
        import torch

        bits = x.detach().cpu().contiguous().view(torch.int16).numpy()
        return bits.view(ml_dtypes.bfloat16)
    return np.asarray(_backend.to_numpy(x), dtype=ml_dtypes.bfloat16)


def _ml_dtypes(context: str) -> ModuleType:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(
            f"{context}: bfloat16 arrays in NumPy need the ml_dtypes package "
            "(pip install ml_dtypes)"
        ) from None
    return ml_dtypes


def _checksum(metadata: dict[str, str], arrays: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(arrays):
        arr = arrays[name]
        h.update(json.dumps([name, arr.dtype.name, list(arr.shape)]).encode())
        h.update(memoryview(arr.reshape(-1).view(np.uint8)))
    return "sha256:" + h.hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    directory, base = os.path.split(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 lets the umask decide, as for any newly written file.
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            )
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"cannot create a temporary file next to {path!r}")
    try:
        with open(fd, "wb") as f:
            with contextlib.suppress(OSError):  # keep the permissions of the file replaced
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX; a no-op where directories cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- load


def load(path: PathLike, backend: str | ModuleType | None = None, device: Any = None) -> Any:
    """Read a checkpoint written by :func:`save`.

    Arrays come back in ``backend`` (a name such as ``"numpy"``, ``"torch"``,
    ``"cupy"``, or a namespace; default NumPy) on ``device`` (the backend's
    default if None), with the dtypes they were saved with.  Dicts, lists,
    tuples, int keys and plain values come back with their Python types.

    Raises OSError when the file cannot be read (e.g. FileNotFoundError) and
    ValueError, naming the path and the problem, when it is truncated,
    corrupted, not a neural_arch checkpoint, or from a newer format version;
    ValueError too when a saved dtype does not exist in ``backend``.
    """
    path = os.fspath(path)
    xp = _backend.resolve_backend("numpy" if backend is None else backend)
    with open(path, "rb") as f:
        raw = f.read()
    metadata = _read_metadata(path, raw)
    try:
        tensors = safetensors.deserialize(raw)
    except Exception as exc:  # SafetensorError and friends: the file is damaged
        raise ValueError(f"checkpoint {path!r} is corrupt: {exc}") from None
    arrays = {}
    for name, info in tensors:
        dtype = _CODES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"checkpoint {path!r} has a tensor of unknown dtype {info['dtype']}")
        arrays[name] = (dtype, tuple(info["shape"]), info["data"])
    if _checksum_raw(metadata, arrays) != metadata.get("checksum"):
        raise ValueError(
            f"checkpoint {path!r} is corrupt: its checksum does not match its contents"
        )
    try:
        structure = json.loads(metadata["structure"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"checkpoint {path!r} has no readable structure: {exc}") from None
    decoder = _Decoder(path, arrays, xp, device)
    return decoder.decode(structure, "obj")


def _read_metadata(path: str, raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, checked to be ours and readable."""
    if len(raw) < 8:
        raise ValueError(
            f"checkpoint {path!r} is truncated or not a safetensors file ({len(raw)} bytes)"
        )
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > len(raw) - 8:
        raise ValueError(
            f"checkpoint {path!r} is truncated or not a safetensors file: its header "
            f"claims {header_len} bytes but only {len(raw) - 8} follow"
        )
    try:
        header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(
            f"checkpoint {path!r} is corrupt or not a safetensors file: unreadable header"
        ) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != _MAGIC:
        raise ValueError(
            f"{path!r} is not a neural_arch checkpoint (no {_MAGIC!r} marker in its "
            "safetensors metadata)"
        )
    version = metadata.get("format_version")
    if not isinstance(version, str) or not version.isdigit():
        raise ValueError(f"checkpoint {path!r} is corrupt: format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path!r} has format version {int(version)}, but this neural_arch "
            f"reads versions up to {FORMAT_VERSION}; upgrade neural_arch to load it"
        )
    if not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"checkpoint {path!r} is corrupt: non-string metadata")
    return metadata


def _checksum_raw(metadata: dict[str, str], arrays: dict[str, tuple]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps({k: v for k, v in metadata.items() if k != "checksum"}, sort_keys=True).encode()
    )
    for name in sorted(arrays):
        dtype, shape, data = arrays[name]
        h.update(json.dumps([name, dtype, list(shape)]).encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


class _Decoder:
    """Rebuilds the saved object from its JSON structure and the file's tensors."""

    def __init__(self, path: str, arrays: dict[str, tuple], xp: ModuleType, device: Any):
        self.path, self.raw, self.xp, self.device = path, arrays, xp, device
        self.done: dict[str, Any] = {}

    def corrupt(self, where: str, what: str) -> ValueError:
        return ValueError(f"checkpoint {self.path!r} is corrupt at {where}: {what}")

    def decode(self, node: Any, where: str) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if not isinstance(node, dict) or len(node) != 1:
            raise self.corrupt(where, f"unexpected node {node!r:.80}")
        ((tag, value),) = node.items()
        if tag == "dict" and isinstance(value, list):
            out = {}
            for item in value:
                if (
                    not isinstance(item, list)
                    or len(item) != 2
                    or isinstance(item[0], bool)
                    or not isinstance(item[0], (str, int))
                ):
                    raise self.corrupt(where, f"bad dict item {item!r:.80}")
                out[item[0]] = self.decode(item[1], _child(where, item[0]))
            return out
        if tag == "tuple" and isinstance(value, list):
            return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(value))
        if tag == "float" and value in ("nan", "inf", "-inf"):
            return float(value)
        if tag == "array" and isinstance(value, str):
            return self.array(value, where)
        raise self.corrupt(where, f"unexpected node {node!r:.80}")

    def array(self, name: str, where: str) -> Any:
        if name in self.done:
            return self.done[name]
        if name not in self.raw:
            raise self.corrupt(where, f"tensor {name!r} is missing")
        dtype, shape, data = self.raw[name]
        xp = self.xp
        bf16_numpy = dtype == "bfloat16" and _backend.backend_name(xp) == "numpy"
        if not hasattr(xp, dtype) and not bf16_numpy:
            raise ValueError(
                f"checkpoint {self.path!r}: {where} has dtype {dtype}, which backend "
                f"{_backend.backend_name(xp)!r} does not have; load it with another backend"
            )
        if dtype == "bfloat16" and _backend.backend_name(xp) == "torch":
            import torch

            bits = np.frombuffer(data, dtype=np.int16).reshape(shape).copy()
            out = _backend.to_backend(bits, xp, device=self.device)
            out = out.view(torch.bfloat16)
        else:
            np_dtype = (
                _ml_dtypes(f"cannot load {where}").bfloat16 if dtype == "bfloat16" else dtype
            )
            host = np.frombuffer(data, dtype=np_dtype).reshape(shape)
            if not host.flags.writeable:
                host = host.copy()
            out = _backend.to_backend(host, xp, device=self.device)
        self.done[name] = out
        return out
