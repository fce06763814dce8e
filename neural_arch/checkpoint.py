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

A file is untrusted input: the checksum catches accidents, not an attacker,
so every part of the file is checked for itself.  Before anything is
allocated, the header's length and every tensor's dtype, shape and byte range
are checked against the file's real size; the nesting depth of the JSON is
measured before it is parsed (a safetensors header is at most 3 deep, the
structure at most ``3 * MAX_DEPTH + 1``).  Whatever the bytes, :func:`load`
raises only OSError (the file cannot be read) or ValueError.

Writes are atomic: the file is written to a temporary file in the same
directory, flushed and fsynced, then renamed over ``path``.  Any failure
(an unsupported leaf, a full disk, Ctrl-C) leaves a previous checkpoint at
``path`` untouched and no temporary file behind.  A symbolic link is written
through: its target is replaced (atomically) and the link stays a link.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
import struct
from types import ModuleType
from typing import Any, BinaryIO

import array_api_compat
import numpy as np
import safetensors.numpy

from . import backend as _backend

__all__ = ["FORMAT_VERSION", "load", "save"]

#: The checkpoint format this library writes; it reads this version and older.
FORMAT_VERSION = 1

#: How deep containers (dicts, lists, tuples) may nest inside one another.
MAX_DEPTH = 64

_MAGIC = "neural_arch.checkpoint"

# The largest header read, as in safetensors' own readers.
_MAX_HEADER = 100_000_000

# Python ints are stored as JSON numbers; Python refuses to print or parse
# more than 4300 digits (sys.get_int_max_str_digits), so stay well below.
_MAX_INT_BITS = 12_000

# NumPy's limits on dimensions and on the byte size of an array (even an empty one).
_MAX_NDIM = 64
_MAX_NBYTES = 2**63 - 1

# safetensors dtype codes -> (dtype name, bytes per element); the dtypes a checkpoint holds.
_CODES = {
    "BOOL": ("bool", 1),
    "I8": ("int8", 1),
    "I16": ("int16", 2),
    "I32": ("int32", 4),
    "I64": ("int64", 8),
    "U8": ("uint8", 1),
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "C64": ("complex64", 8),
}
_DTYPES = frozenset(name for name, _ in _CODES.values())
_NUMPY_SCALARS = "bool, integer and float16/32/64 NumPy scalars"

PathLike = str | os.PathLike


def _file_name(path: Any) -> str:
    """``path`` as a str, refusing what is no file name before the file system sees it."""
    try:
        name = os.fspath(path)
    except TypeError:
        raise TypeError(
            f"path must be a str or os.PathLike file name, got {type(path).__name__}"
        ) from None
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not name or "\0" in name:
        raise ValueError(
            f"path must be a non-empty file name without NUL characters, got {name!r}"
        )
    return name


# --------------------------------------------------------------------------- save


def save(obj: Any, path: PathLike) -> None:
    """Write ``obj`` to ``path`` as a checkpoint (atomically; see the module docs).

    ``obj`` is a nested structure of dicts (str or int keys), lists and
    tuples whose leaves are arrays of any supported backend, Tensors or
    Parameters (stored as their ``.data``), ``int``, ``float``, ``bool``,
    ``str`` and ``None``; typically
    ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}``.
    Containers nest at most :data:`MAX_DEPTH` deep.  When ``path`` is a
    symbolic link, the file it points to is replaced and the link kept.

    Raises, before anything is written and naming ``path`` and the place inside
    ``obj`` (``obj["optimizer"]["state"][3]``): TypeError for an unsupported
    leaf, dict key or dtype; ValueError for a structure that contains itself
    or nests too deep, and for an int too large to store.  OSError (naming
    ``path``) when the file cannot be written; the old file is then unchanged.
    """
    path = _file_name(path)
    arrays: dict[str, np.ndarray] = {}
    structure = _Encoder(arrays, path).encode(obj, "obj", 0)
    try:
        text = json.dumps(structure, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # an int past a lowered sys.set_int_max_str_digits
        raise ValueError(f"cannot save to {path!r}: {exc}") from None
    metadata = {"format": _MAGIC, "format_version": str(FORMAT_VERSION), "structure": text}
    metadata["checksum"] = _checksum(metadata, arrays)
    data = safetensors.numpy.save(arrays, metadata=metadata)
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > _MAX_HEADER:
        raise ValueError(
            f"cannot save to {path!r}: the structure needs a {header_len}-byte header, more "
            f"than the {_MAX_HEADER} bytes safetensors readers accept; store long lists of "
            "numbers as arrays"
        )
    _write_atomic(path, data)


class _Encoder:
    """Turns a nested object into JSON-able structure, collecting arrays on the way."""

    def __init__(self, arrays: dict[str, np.ndarray], path: str) -> None:
        self.arrays, self.path = arrays, path
        self.names: dict[int, str] = {}  # id(array) -> tensor name: store shared arrays once
        self.keep: list[Any] = []  # keeps ids valid while encoding
        self.open: set[int] = set()  # containers being encoded, to refuse cycles

    def refuse(self, kind: type[Exception], where: str, what: str) -> Exception:
        return kind(f"cannot save {where} to {self.path!r}: {what}")

    def encode(self, x: Any, where: str, depth: int) -> Any:
        # Subclasses of str/int/float are stored through the base type's own
        # method, so an overridden __str__/__int__/__float__ is never run.
        if x is None or isinstance(x, bool):
            return x
        if isinstance(x, str):
            return str.__str__(x)
        if isinstance(x, int):
            return self._int(int.__int__(x), where)
        if isinstance(x, float):
            return _encode_float(float.__float__(x))
        if isinstance(x, np.generic):
            if x.dtype.kind in "biu" or x.dtype.name in ("float16", "float32", "float64"):
                return self.encode(x.item(), where, depth)
            raise self.refuse(
                TypeError,
                where,
                f"NumPy scalars of dtype {x.dtype.name} are not supported; "
                f"checkpoints hold {_NUMPY_SCALARS} (they load as Python numbers)",
            )
        if isinstance(x, (dict, list, tuple)):
            return self._container(x, where, depth)
        data = _tensor_data(x)
        if data is not None or array_api_compat.is_array_api_obj(x):
            return {"array": self._array(x if data is None else data, where)}
        raise self.refuse(
            TypeError,
            where,
            f"unsupported type {type(x).__module__}.{type(x).__qualname__}; checkpoints hold "
            "dicts, lists, tuples, arrays, Tensors, int, float, bool, str and None",
        )

    def _int(self, x: int, where: str) -> int:
        if x.bit_length() > _MAX_INT_BITS:
            raise self.refuse(
                ValueError,
                where,
                f"an int of {x.bit_length()} bits is too large to store "
                f"(at most {_MAX_INT_BITS} bits); store it as a str",
            )
        return x

    def _container(self, x: dict | list | tuple, where: str, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise self.refuse(ValueError, where, f"containers nest deeper than {MAX_DEPTH} levels")
        if id(x) in self.open:
            raise self.refuse(ValueError, where, "it contains itself")
        self.open.add(id(x))
        try:
            if isinstance(x, dict):
                items = []
                for key, value in x.items():
                    if isinstance(key, bool) or not isinstance(key, (str, int)):
                        raise self.refuse(
                            TypeError,
                            _child(where, key),
                            f"dict keys must be str or int, got {type(key).__name__}",
                        )
                    key = str.__str__(key) if isinstance(key, str) else int.__int__(key)
                    inner = _child(where, key)
                    if isinstance(key, int):
                        self._int(key, inner)
                    items.append([key, self.encode(value, inner, depth + 1)])
                return {"dict": items}
            encoded = [self.encode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]
            return encoded if isinstance(x, list) else {"tuple": encoded}
        finally:
            self.open.discard(id(x))

    def _array(self, x: Any, where: str) -> str:
        if id(x) in self.names:
            return self.names[id(x)]
        name = str(len(self.arrays))
        self.arrays[name] = self._host_array(x, where)
        self.names[id(x)] = name
        self.keep.append(x)
        return name

    def _host_array(self, x: Any, where: str) -> np.ndarray:
        """A contiguous, little-endian NumPy copy of array ``x`` (any backend, any device)."""
        if isinstance(x, np.ma.MaskedArray):
            raise self.refuse(
                TypeError,
                where,
                "masked arrays are not supported (the mask would be lost); "
                "save .data and .mask as two arrays",
            )
        try:
            name = _backend.dtype_name(x.dtype)
        except Exception:  # an object that claims to be an array but has no dtype
            name = None
        if name not in _DTYPES:
            raise self.refuse(
                TypeError,
                where,
                f"dtype {name} is not supported; checkpoints hold {', '.join(sorted(_DTYPES))}",
            )
        if name == "bfloat16":
            _ml_dtypes(TypeError, f"cannot save {where} to {self.path!r}")
        try:
            if array_api_compat.is_torch_array(x):  # a lazy conjugate or negative view
                x = x.resolve_conj().resolve_neg()
            host = _bfloat16_to_numpy(x) if name == "bfloat16" else _backend.to_numpy(x)
        except Exception as exc:  # each library fails in its own way (sparse, meta, ...)
            raise self.refuse(
                TypeError,
                where,
                f"cannot copy this {type(x).__qualname__} to host memory "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        if not isinstance(host, np.ndarray) or host.dtype.name != name:
            raise self.refuse(TypeError, where, f"it did not convert to a NumPy {name} array")
        if not host.flags.c_contiguous:  # (ascontiguousarray would make 0-d arrays 1-d)
            host = np.ascontiguousarray(host)
        if host.dtype.byteorder == ">":
            host = host.astype(host.dtype.newbyteorder("<"))
        return host


def _child(where: str, key: Any) -> str:
    shown = json.dumps(key) if isinstance(key, str) else repr(key)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{where}[{shown}]"


def _encode_float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {"float": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


def _tensor_data(x: Any) -> Any:
    """The array of a neural_arch Tensor/Parameter, or None for anything else."""
    from .tensor import Tensor  # lazy: tensor imports backend, checkpoint must not cycle

    return x.data if isinstance(x, Tensor) else None


def _bfloat16_to_numpy(x: Any) -> np.ndarray:
    ml_dtypes = _ml_dtypes(TypeError, "cannot save")
    if array_api_compat.is_torch_array(x):
        import torch

        bits = x.detach().cpu().contiguous().view(torch.int16).numpy()
        return bits.view(ml_dtypes.bfloat16)
    return np.asarray(_backend.to_numpy(x), dtype=ml_dtypes.bfloat16)


def _ml_dtypes(error: type[Exception], context: str) -> ModuleType:
    try:
        import ml_dtypes
    except ImportError:
        raise error(
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
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename.

    A symbolic link is followed, so its target is replaced and the link kept.
    Every OSError names ``path``, never the temporary file.
    """
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(errno.EISDIR, "a file name cannot end with a separator", path)
    target = os.path.realpath(path)
    if os.path.islink(target):  # realpath stops at a loop of links
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    directory, base = os.path.split(target)
    for _ in range(100):
        # (the name is cut so that a target name near the system's limit still fits)
        tmp = os.path.join(directory, f".{base[:200]}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 lets the umask decide, as for any newly written file.
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            )
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _naming(exc, path) from None
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(errno.EEXIST, "cannot create a temporary file next to it", path)
    try:
        with open(fd, "wb") as f:
            with contextlib.suppress(OSError):  # keep the permissions of the file replaced
                os.chmod(tmp, os.stat(target).st_mode & 0o7777)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise
    _fsync_directory(directory)


def _naming(exc: OSError, path: str) -> OSError:
    """``exc`` again (same errno, hence same subclass), naming ``path`` as its file."""
    if exc.errno is None:
        return OSError(f"cannot write {path!r}: {exc}")
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), path)


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

    Whatever the file holds, the only errors are OSError when it cannot be
    read (e.g. FileNotFoundError, IsADirectoryError) and ValueError, naming
    the path and the problem, when it is no regular file, truncated,
    corrupted, crafted, not a neural_arch checkpoint, or from a newer format
    version; ValueError too when a saved dtype does not exist in ``backend``
    or ``device`` is not one of its devices.  Bad arguments (a ``path`` that
    is no file name, an unknown ``backend``) raise TypeError/ValueError.
    """
    path = _file_name(path)
    xp = _backend.resolve_backend("numpy" if backend is None else backend)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        header_len = _header_length(path, _read_exactly(path, f, min(size, 8)), size)
        metadata, infos = _parse_header(path, _read_exactly(path, f, header_len))
        layout = _layout(path, infos, size - 8 - header_len)  # checked before the data is read
        data = memoryview(_read_exactly(path, f, size - 8 - header_len))
        if f.read(1):
            raise ValueError(f"checkpoint {path!r} grew while it was being read")
    tensors = {name: (dtype, shape, data[b:e]) for name, (dtype, shape, b, e) in layout.items()}
    if _checksum_raw(metadata, tensors) != metadata["checksum"]:
        raise ValueError(
            f"checkpoint {path!r} is corrupt: its checksum does not match its contents"
        )
    structure = metadata["structure"]
    if _json_depth(structure) > 3 * MAX_DEPTH + 1:
        raise ValueError(
            f"checkpoint {path!r} is corrupt: its structure nests deeper than {MAX_DEPTH} "
            "containers"
        )
    try:
        tree = _parse_json(structure)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path!r} has no readable structure: {exc}") from None
    if device is not None:
        _check_device(path, xp, device)
    return _Decoder(path, tensors, xp, device).decode(tree, "obj", 0)


def _open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a
    writer; on a regular file it changes nothing.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path!r} is not a regular file, so not a checkpoint")
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb")


def _read_exactly(path: str, f: BinaryIO, n: int) -> bytes:
    chunk = f.read(n)
    if len(chunk) != n:
        raise ValueError(f"checkpoint {path!r} is truncated (it shrank while it was being read)")
    return chunk


def _header_length(path: str, first: bytes, size: int) -> int:
    if size < 8:
        raise ValueError(
            f"checkpoint {path!r} is truncated or not a safetensors file ({size} bytes)"
        )
    (header_len,) = struct.unpack("<Q", first)
    if header_len > size - 8:
        raise ValueError(
            f"checkpoint {path!r} is truncated or not a safetensors file: its header "
            f"claims {header_len} bytes but only {size - 8} follow"
        )
    if header_len > _MAX_HEADER:
        raise ValueError(
            f"checkpoint {path!r} is corrupt or not a checkpoint: its header claims "
            f"{header_len} bytes, more than the {_MAX_HEADER} a safetensors header may have"
        )
    return header_len


def _not_ours(path: str) -> ValueError:
    return ValueError(
        f"{path!r} is not a neural_arch checkpoint (no {_MAGIC!r} marker in its "
        "safetensors metadata)"
    )


def _parse_header(path: str, raw: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """The checked ``__metadata__`` and tensor entries of a safetensors header."""
    if f'"{_MAGIC}"'.encode() not in raw:  # the cheapest check comes first
        raise _not_ours(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"checkpoint {path!r} is corrupt: its header is not UTF-8") from None
    # {"name": {"shape": [...]}} is as deep as a safetensors header goes.
    if _json_depth(text) > 3:
        raise ValueError(f"checkpoint {path!r} is corrupt: its header nests too deep")
    try:
        header = _parse_json(text)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path!r} is corrupt: unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"checkpoint {path!r} is corrupt: its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or metadata.get("format") != _MAGIC:
        raise _not_ours(path)
    _check_version(path, metadata.get("format_version"))
    for key in ("structure", "checksum"):
        if key not in metadata:
            raise ValueError(f"checkpoint {path!r} is corrupt: its metadata has no {key!r}")
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"checkpoint {path!r} is corrupt: metadata {bad[0]!r:.60} is no string")
    return metadata, header


def _check_version(path: str, version: Any) -> None:
    """Accept ``format_version`` only as written: ASCII decimal digits, no sign, no zero first."""
    if not isinstance(version, str) or not re.fullmatch("[1-9][0-9]*", version):
        raise ValueError(f"checkpoint {path!r} is corrupt: format_version {version!r:.40}")
    if len(version) > len(str(FORMAT_VERSION)) or int(version) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path!r} has format version {version:.40}, but this neural_arch "
            f"reads versions up to {FORMAT_VERSION}; upgrade neural_arch to load it"
        )


def _layout(path: str, infos: dict[str, Any], data_len: int) -> dict[str, tuple]:
    """``name -> (dtype name, shape, begin, end)``, each entry checked against the
    ``data_len`` bytes of data that follow the header.

    As safetensors requires, the byte ranges tile the data exactly: no gap,
    no overlap, nothing after the last.
    """
    out, ranges = {}, []
    for name, info in infos.items():
        dtype, shape, begin, end = _tensor_entry(path, name, info)
        if end > data_len:
            raise ValueError(
                f"checkpoint {path!r} is truncated or corrupt: tensor {name!r:.60} ends at "
                f"byte {end} of a {data_len}-byte data section"
            )
        out[name] = (dtype, shape, begin, end)
        ranges.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise ValueError(
                f"checkpoint {path!r} is corrupt: tensor {name!r:.60} starts at byte {begin}, "
                f"expected {position} (the tensors' bytes must follow one another)"
            )
        position = end
    if position != data_len:
        raise ValueError(
            f"checkpoint {path!r} is corrupt: {data_len - position} bytes after the last tensor"
        )
    return out


def _tensor_entry(path: str, name: str, info: Any) -> tuple[str, tuple[int, ...], int, int]:
    def corrupt(what: str) -> ValueError:
        return ValueError(f"checkpoint {path!r} is corrupt: tensor {name!r:.60} {what}")

    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise corrupt("is not {'dtype', 'shape', 'data_offsets'}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _CODES:
        raise corrupt(f"has unknown dtype {code!r:.40}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(type(n) is int and n >= 0 for n in shape)
    ):
        raise corrupt(f"has shape {shape!r:.80}; at most {_MAX_NDIM} integers >= 0 expected")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(n) is int for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise corrupt(
            f"has data_offsets {offsets!r:.80}; [begin, end] with 0 <= begin <= end expected"
        )
    dtype, itemsize = _CODES[code]
    if math.prod(n for n in shape if n) * itemsize > _MAX_NBYTES:
        raise corrupt(f"has shape {shape!r:.80}, too large for any array")
    nbytes = math.prod(shape) * itemsize
    if nbytes != offsets[1] - offsets[0]:
        raise corrupt(
            f"of dtype {dtype} and shape {tuple(shape)!r:.80} needs {nbytes} bytes, "
            f"but data_offsets give {offsets[1] - offsets[0]}"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _checksum_raw(metadata: dict[str, str], tensors: dict[str, tuple]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps({k: v for k, v in metadata.items() if k != "checksum"}, sort_keys=True).encode()
    )
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        h.update(json.dumps([name, dtype, list(shape)]).encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


# A JSON string, closed or running to the end of the text: with the end allowed,
# a match never fails, so stripping strings is one pass however the text is made.
_JSON_STRING = re.compile(r'"(?:[^"\\]+|\\.)*(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _json_depth(text: str) -> int:
    """An upper bound on how deep the arrays and objects of JSON ``text`` nest.

    Counted on the brackets outside strings, without parsing, so a text nested
    thousands deep is refused before ``json.loads`` recurses into it.  The
    bound is exact for valid JSON; the parser stops at the first error of
    invalid JSON, where the count is still exact.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _parse_json(text: str) -> Any:
    """``json.loads`` refusing duplicate keys and the non-standard NaN/Infinity."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate keys in a JSON object")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_device(path: str, xp: ModuleType, device: Any) -> None:
    """Refuse, as a ValueError, a ``device`` that ``xp`` does not have (each library
    reports an unknown device with an exception of its own)."""
    try:
        _backend.to_backend(np.zeros(1), xp, device=device)
    except Exception as exc:
        raise ValueError(
            f"cannot load {path!r} onto device {device!r} of backend "
            f"{_backend.backend_name(xp)!r}: {type(exc).__name__}: {exc}"
        ) from exc


class _Decoder:
    """Rebuilds the saved object from its JSON structure and the file's tensors."""

    def __init__(self, path: str, tensors: dict[str, tuple], xp: ModuleType, device: Any):
        self.path, self.raw, self.xp, self.device = path, tensors, xp, device
        self.done: dict[str, Any] = {}

    def corrupt(self, where: str, what: str) -> ValueError:
        return ValueError(f"checkpoint {self.path!r} is corrupt at {where}: {what}")

    def decode(self, node: Any, where: str, depth: int) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, (list, dict)) and depth >= MAX_DEPTH:
            raise self.corrupt(where, f"containers nest deeper than {MAX_DEPTH} levels")
        if isinstance(node, list):
            return [self.decode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node)]
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
                if item[0] in out:
                    raise self.corrupt(where, f"duplicate dict key {item[0]!r:.60}")
                out[item[0]] = self.decode(item[1], _child(where, item[0]), depth + 1)
            return out
        if tag == "tuple" and isinstance(value, list):
            return tuple(self.decode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        if tag == "float" and value in ("nan", "inf", "-inf"):
            return float(value)
        if tag == "array" and isinstance(value, str):
            return self.array(value, where)
        raise self.corrupt(where, f"unexpected node {node!r:.80}")

    def array(self, name: str, where: str) -> Any:
        if name in self.done:
            return self.done[name]
        if name not in self.raw:
            raise self.corrupt(where, f"tensor {name!r:.60} is missing")
        dtype, shape, data = self.raw[name]
        xp, backend_name = self.xp, _backend.backend_name(self.xp)
        if not hasattr(xp, dtype) and not (dtype == "bfloat16" and backend_name == "numpy"):
            raise ValueError(
                f"checkpoint {self.path!r}: {where} has dtype {dtype}, which backend "
                f"{backend_name!r} does not have; load it with another backend"
            )
        if dtype == "bfloat16" and backend_name == "torch":
            import torch

            bits = np.frombuffer(data, dtype=np.int16).reshape(shape).copy()
            out = _backend.to_backend(bits, xp, device=self.device).view(torch.bfloat16)
        else:
            context = f"checkpoint {self.path!r}: cannot load {where}"
            np_dtype = _ml_dtypes(ValueError, context).bfloat16 if dtype == "bfloat16" else dtype
            # A copy: writable, aligned, and free of the file's buffer.
            host = np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()
            if dtype == "bool" and host.size and host.view(np.uint8).max() > 1:
                raise self.corrupt(where, f"tensor {name!r:.60} has bools other than 0 and 1")
            if backend_name == "jax":
                import jax  # jnp.asarray compiles an operation, in time that grows with

                # the dimensions of an empty array ((2**28, 0) takes minutes): device_put does not
                out = jax.device_put(host, self.device)
            else:
                out = _backend.to_backend(host, xp, device=self.device)
        if _backend.dtype_name(out.dtype) != dtype:  # e.g. JAX without jax_enable_x64
            raise ValueError(
                f"checkpoint {self.path!r}: {where} has dtype {dtype}, but backend "
                f"{backend_name!r} made it {_backend.dtype_name(out.dtype)} (for JAX, enable "
                "jax_enable_x64, or load into NumPy and let load_state_dict cast)"
            )
        self.done[name] = out
        return out
