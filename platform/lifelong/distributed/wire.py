"""The frames of the direct shard channel (``lifelong.distributed.channel``): named numpy arrays
and a few scalars, with no pickle, checked before anything is built from them.

A frame is a 16-byte prefix ``magic (4s) | header bytes (u32) | data bytes (u64)``, a JSON
header ``{"op": str, "fields": {name: scalar}, "arrays": [[name, dtype, shape], ...]}`` and the
arrays' bytes, C order, one after another. ``read_frame`` refuses a wrong magic, a header over
``MAX_HEADER_BYTES``, data over the reader's limit, a dtype outside ``DTYPES``, a shape that does
not add up to the data, or a connection that ends mid-frame, with ``ProtocolError`` (or EOFError
for a connection closed between frames); arrays come back writable, in memory of their own.

The calls (``step``, ``search``, ``apply``) and their results map onto frames through
``encode_call`` / ``decode_call`` and ``encode_result`` / ``decode_result``; an error travels
as ``op = "error"`` with its type's name and message (``error_fields`` / ``rebuild_error``).
"""

from __future__ import annotations

import builtins
import json
import math
import socket
import struct
from dataclasses import fields as dataclass_fields

import numpy as np

from lifelong import errors
from lifelong.distributed.answer import ShardAnswer
from lifelong.distributed.batches import WRITE_ARRAYS, ShardWrite
from lifelong.errors import LifelongError, ProtocolError

MAGIC = b"LLW1"
PREFIX = struct.Struct("<4sIQ")
MAX_HEADER_BYTES = 1 << 16
DEFAULT_MAX_DATA_BYTES = 1 << 30
DTYPES = ("float32", "float64", "int64", "int32", "int8", "bool")
_ITEMSIZE = {name: np.dtype(name).itemsize for name in DTYPES}
_NAMES = {np.dtype(name): name for name in DTYPES}
_HEADERS: dict[tuple[bytes, int], tuple[str, dict, list]] = {}  # checked headers (``_header``)
_MAX_CACHED_HEADERS = 256
MAX_NDIM = 4
CALLS = ("step", "search", "apply")  # what the channel carries; the rest goes through Ray
_WRITE_FIELDS = ("writer", "seq", "insert_empty", "redo_after")
_ANSWER_ARRAYS = tuple(f.name for f in dataclass_fields(ShardAnswer) if f.name != "offset")
# Errors that are not the platform's own are rebuilt as these builtins (else RuntimeError).
_BUILTIN_ERRORS = ("ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError")


def encode(op: str, fields: dict | None = None,
           arrays: dict[str, np.ndarray] | None = None) -> list:
    """The frame as a list of buffers for ``socket.sendmsg`` (arrays are not copied)."""
    names, blobs = [], []
    for name, a in (arrays or {}).items():
        if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
            a = np.ascontiguousarray(a)
        dtype = _NAMES.get(a.dtype)  # native byte order only
        if dtype is None:
            raise ProtocolError(f"array {name!r} has dtype {a.dtype}, not one of {DTYPES}")
        names.append([name, dtype, list(a.shape)])
        blobs.append(memoryview(a.reshape(-1).view(np.uint8)) if a.size else b"")
    header = json.dumps({"op": op, "fields": fields or {}, "arrays": names},
                        separators=(",", ":")).encode()
    data_bytes = sum(len(b) for b in blobs)
    return [PREFIX.pack(MAGIC, len(header), data_bytes), header, *blobs]


def send_frame(sock: socket.socket, buffers: list) -> None:
    """Sends every buffer of one frame."""
    pending = [memoryview(b).cast("B") for b in buffers if len(b)]
    while pending:
        sent = sock.sendmsg(pending)
        while pending and sent >= len(pending[0]):
            sent -= len(pending[0])
            pending.pop(0)
        if pending and sent:
            pending[0] = pending[0][sent:]


def _read_exact(sock: socket.socket, n: int, start: bool = False) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        r = sock.recv_into(view[got:])
        if r == 0:
            if start and got == 0:
                raise EOFError("the connection was closed")
            raise ProtocolError(f"the connection ended mid-frame ({got} of {n} bytes)")
        got += r
    return buf


def read_frame(sock: socket.socket,
               max_data_bytes: int = DEFAULT_MAX_DATA_BYTES) -> tuple[str, dict, dict]:
    """The next frame: (op, fields, arrays).

    Raises:
        EOFError: the peer closed the connection between frames.
        ProtocolError: the frame is malformed or over the limits (see the module docstring).
        OSError: the socket failed (socket.timeout included).
    """
    header_bytes, data_bytes = _prefix(_read_exact(sock, PREFIX.size, True), max_data_bytes)
    op, fields, specs = _header(_read_exact(sock, header_bytes), data_bytes)
    data = _read_exact(sock, data_bytes) if data_bytes else bytearray()
    return op, fields, _arrays(data, specs)


def parse_frame(frame: bytes | bytearray,
                max_data_bytes: int = DEFAULT_MAX_DATA_BYTES) -> tuple[str, dict, dict]:
    """A whole frame held in memory (e.g. a log record), checked as ``read_frame`` checks one
    read from a socket; its arrays are writable copies.

    Raises:
        ProtocolError: the frame is malformed, over the limits, or not exactly one frame long.
    """
    if len(frame) < PREFIX.size:
        raise ProtocolError(f"a frame needs at least {PREFIX.size} bytes, got {len(frame)}")
    header_bytes, data_bytes = _prefix(frame[:PREFIX.size], max_data_bytes)
    end = PREFIX.size + header_bytes
    if len(frame) != end + data_bytes:
        raise ProtocolError(f"the frame declares {end + data_bytes} bytes, it has {len(frame)}")
    op, fields, specs = _header(frame[PREFIX.size:end], data_bytes)
    return op, fields, _arrays(bytearray(frame[end:]), specs)


def _prefix(prefix, max_data_bytes: int) -> tuple[int, int]:
    magic, header_bytes, data_bytes = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"not a lifelong frame (magic {bytes(magic)!r})")
    if header_bytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {header_bytes} bytes exceeds "
                            f"{MAX_HEADER_BYTES}")
    if data_bytes > max_data_bytes:
        raise ProtocolError(f"frame data of {data_bytes} bytes exceeds {max_data_bytes}")
    return header_bytes, data_bytes


def _header(raw, data_bytes: int) -> tuple[str, dict, list]:
    """The checked header; its array entries get their byte sizes appended.

    A header seen before (byte for byte, with the same data size) is not parsed again: a
    shard's answers repeat theirs step after step. The cache holds checked headers only.
    """
    raw = bytes(raw)
    cached = _HEADERS.get((raw, data_bytes))
    if cached is not None:
        op, fields, specs = cached
        return op, dict(fields), specs
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    op, fields, specs = _check_header(header)
    total = 0
    for spec in specs:
        spec.append(math.prod(spec[2]) * _ITEMSIZE[spec[1]])
        total += spec[3]
    if total != data_bytes:
        raise ProtocolError(f"the arrays need {total} bytes, the frame holds {data_bytes}")
    if len(_HEADERS) >= _MAX_CACHED_HEADERS:
        _HEADERS.clear()
    _HEADERS[raw, data_bytes] = (op, dict(fields), specs)
    return op, fields, specs


def _arrays(data: bytearray, specs: list) -> dict[str, np.ndarray]:
    arrays, at = {}, 0
    for name, dtype, shape, size in specs:
        arrays[name] = np.frombuffer(data, dtype=dtype, count=size // _ITEMSIZE[dtype],
                                     offset=at).reshape(shape)
        at += size
    return arrays


def _check_header(header) -> tuple[str, dict, list]:
    if not isinstance(header, dict) or set(header) != {"op", "fields", "arrays"}:
        raise ProtocolError("frame header must hold exactly op, fields and arrays")
    op, fields, specs = header["op"], header["fields"], header["arrays"]
    if not isinstance(op, str) or not isinstance(fields, dict) or not isinstance(specs, list):
        raise ProtocolError("frame header: op must be a str, fields an object, arrays a list")
    for value in fields.values():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ProtocolError("frame fields must be scalars")
    names = set()
    for spec in specs:  # exact types: JSON gives list, str, int (a bool is no size)
        if not (type(spec) is list and len(spec) == 3 and type(spec[0]) is str
                and spec[1] in _ITEMSIZE and type(spec[2]) is list
                and len(spec[2]) <= MAX_NDIM and _sizes_ok(spec[2])):
            raise ProtocolError(f"bad array entry in frame header: {str(spec)[:100]}")
        if spec[0] in names:
            raise ProtocolError(f"array {spec[0]!r} appears twice in one frame")
        names.add(spec[0])
    return op, fields, specs


def _sizes_ok(shape: list) -> bool:
    for n in shape:
        if type(n) is not int or not 0 <= n < 2**40:
            return False
    return True


# ------------------------------------------------------------------------- calls and results
def _write_parts(write: ShardWrite, prefix: str = "w.") -> tuple[dict, dict]:
    fields = {name: getattr(write, name) for name in _WRITE_FIELDS}
    fields["seq"], fields["insert_empty"] = int(write.seq), int(write.insert_empty)
    fields["redo_after"] = int(write.redo_after)
    return fields, {prefix + name: getattr(write, name) for name in WRITE_ARRAYS}


def _need(arrays: dict, name: str) -> np.ndarray:
    if name not in arrays:
        raise ProtocolError(f"frame misses the array {name!r}")
    return arrays[name]


def _write_from(fields: dict, arrays: dict) -> ShardWrite:
    missing = [f for f in _WRITE_FIELDS if f not in fields]
    if missing:
        raise ProtocolError(f"frame misses the fields {missing}")
    # ShardWrite.check, run by the shard, validates every value and array
    return ShardWrite(**{f: fields[f] for f in _WRITE_FIELDS},
                      **{name: _need(arrays, "w." + name) for name in WRITE_ARRAYS})


def encode_call(method: str, args: tuple) -> list:
    """The frame of ``shard.<method>(*args)`` for a method in ``CALLS``."""
    if method not in CALLS:
        raise ProtocolError(f"{method!r} does not go through the channel")
    fields, arrays = {}, {}
    if method in ("step", "apply"):
        fields, arrays = _write_parts(args[0])
    if method in ("step", "search"):
        q, labels, k = args[-3:]
        fields["k"] = int(k)
        arrays["q"] = q
        if labels is not None:
            arrays["labels"] = labels
    return encode(method, fields, arrays)


def decode_call(op: str, fields: dict, arrays: dict) -> tuple:
    """The arguments ``encode_call`` encoded (checked by the shard, as Ray calls are).

    Raises:
        ProtocolError: an unknown call, or a missing field or array.
    """
    if op not in CALLS:
        raise ProtocolError(f"unknown call {op!r}")
    args: tuple = ()
    if op in ("step", "apply"):
        args = (_write_from(fields, arrays),)
    if op in ("step", "search"):
        if not isinstance(fields.get("k"), int):
            raise ProtocolError("frame misses the int field 'k'")
        args += (_need(arrays, "q"), arrays.get("labels"), fields["k"])
    return args


def _answer_parts(answer: ShardAnswer) -> tuple[dict, dict]:
    arrays = {"a." + name: getattr(answer, name) for name in _ANSWER_ARRAYS
              if getattr(answer, name) is not None}
    return {"offset": int(answer.offset)}, arrays


def _answer_from(fields: dict, arrays: dict) -> ShardAnswer:
    return ShardAnswer(offset=int(fields.get("offset", 0)),
                       **{name: arrays.get("a." + name) for name in _ANSWER_ARRAYS})


def encode_result(method: str, result) -> list:
    """The reply frame of a call's result."""
    if method == "apply":
        return encode("ok", {}, {"inserted": result})
    if method == "search":
        return encode("ok", *_answer_parts(result))
    inserted, answer = result
    fields, arrays = _answer_parts(answer)
    return encode("ok", fields, {"inserted": inserted, **arrays})


def decode_result(method: str, fields: dict, arrays: dict):
    """The result ``encode_result`` encoded."""
    if method == "apply":
        return _need(arrays, "inserted")
    if method == "search":
        return _answer_from(fields, arrays)
    return _need(arrays, "inserted"), _answer_from(fields, arrays)


def error_fields(exc: BaseException) -> dict:
    """What an error frame carries of ``exc``: its type's name and its message."""
    return {"type": type(exc).__name__, "message": str(exc)}


def rebuild_error(fields: dict) -> Exception:
    """The error an error frame names: the platform's own typed error (``lifelong.errors``),
    a few builtins, else a RuntimeError naming the type."""
    name, message = str(fields.get("type", "")), str(fields.get("message", ""))
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, LifelongError):
        return kind(message)
    if name in _BUILTIN_ERRORS:
        return getattr(builtins, name)(message)
    return RuntimeError(f"{name}: {message}")
