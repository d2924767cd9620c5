"""The service's requests and answers as JSON, parsed and checked whole before anything runs.

``POST /predict``::

    {"examples": [EXAMPLE, ...], "neighbours": 5, "candidates": [3, 17, 42]}

``POST /learn``::

    {"request_id": "client-chosen id", "examples": [EXAMPLE, ...], "labels": [3, 17]}

An EXAMPLE is one payload in the service's payload format, the format of a stream segment's
payload (``lifelong.streaming.segments``): either the payload's bytes in base64 (``uint8[H,W]``:
H*W bytes, row-major; ``float32[D]``: 4*D bytes, little-endian), or a JSON array of numbers of
the payload's shape (H lists of W integers in [0, 255]; D finite numbers). ``neighbours``
(optional) is how many nearest neighbours' labels to return; ``candidates`` (optional)
restricts each example's answer to the nearest neighbour holding one of those labels (an
N-way question, as in the retention evaluation's N-way score).

Every problem raises ``BadRequestError`` with its HTTP status (400; 413 for too many
examples or bytes): malformed JSON, NaN or Infinity anywhere, unknown keys, a payload of the
wrong size or shape, a label outside [0, num_values), a bad request id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from lifelong.errors import BadRequestError, ConfigError
from lifelong.streaming.segments import check_format

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


@dataclass(frozen=True)
class Limits:
    """What one request may hold.

    Attributes:
        payload_format: ``uint8[H,W]`` or ``float32[D]``.
        num_values: Labels lie in [0, num_values).
        max_examples: Examples per request.
        max_body_bytes: Bytes per request body.
        max_neighbours: The most neighbours an answer can list (the memory's k).
        default_neighbours: Neighbours listed when the request names none.
    """

    payload_format: str
    num_values: int
    max_examples: int = 256
    max_body_bytes: int = 8 << 20
    max_neighbours: int = 256
    default_neighbours: int = 5

    @property
    def dtype_shape(self) -> tuple[str, tuple[int, ...]]:
        return check_format(self.payload_format)


@dataclass(frozen=True, eq=False)
class PredictRequest:
    """Examples to answer: payloads [n, *shape] (uint8 images or float32 keys)."""

    payloads: np.ndarray
    neighbours: int
    candidates: np.ndarray | None = None  # [c] int64 labels, or None: the whole memory

    def __len__(self) -> int:
        return len(self.payloads)


@dataclass(frozen=True, eq=False)
class LearnRequest:
    """Labelled examples to write once under ``request_id``; ``digest`` fingerprints the
    payloads and labels (a retry must repeat them exactly)."""

    request_id: str
    payloads: np.ndarray
    labels: np.ndarray
    digest: str

    def __len__(self) -> int:
        return len(self.labels)


def _reject_constant(name: str):
    raise BadRequestError(f"the body holds {name}, which is not a number JSON allows")


def parse_json(body: bytes, limits: Limits) -> dict:
    """The body as a JSON object.

    Raises:
        BadRequestError: too large (413), not UTF-8 JSON, NaN/Infinity, not an object.
    """
    if len(body) > limits.max_body_bytes:
        raise BadRequestError(f"the body has {len(body)} bytes, more than the "
                              f"{limits.max_body_bytes} allowed", status=413)
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except BadRequestError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError(f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _check_keys(data: dict, allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequestError(f"unknown keys {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(data))
    if missing:
        raise BadRequestError(f"missing keys {missing}")


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"{what} must be an integer, got {json.dumps(value)[:40]}")
    return value


def decode_example(example, index: int, limits: Limits) -> np.ndarray:
    """One example as an array of the payload's dtype and shape.

    Raises:
        BadRequestError: the example does not fit the payload format.
    """
    dtype, shape = limits.dtype_shape
    where = f"examples[{index}]"
    if isinstance(example, str):
        try:
            raw = base64.b64decode(example, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(f"{where} is not valid base64") from None
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(raw) != size:
            raise BadRequestError(f"{where} decodes to {len(raw)} bytes; a {limits.payload_format}"
                                  f" payload has {size}")
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
        array = array.reshape(shape)
    elif isinstance(example, list):
        if not _has_shape(example, shape):
            raise BadRequestError(f"{where} must be a base64 string or a JSON array of shape "
                                  f"{list(shape)} ({limits.payload_format})")
        flat = list(_flatten(example))
        if dtype == "uint8":
            if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255
                   for v in flat):
                raise BadRequestError(f"{where}: pixels must be integers in [0, 255]")
        elif any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in flat):
            raise BadRequestError(f"{where}: values must be numbers")
        array = np.asarray(flat, dtype=np.float64)
        if dtype == "float32" and not (np.abs(array) <= np.finfo(np.float32).max).all():
            raise BadRequestError(f"{where} holds a value outside float32's finite range")
        array = array.astype(dtype).reshape(shape)
    else:
        raise BadRequestError(f"{where} must be a base64 string or a JSON array, got "
                              f"{type(example).__name__}")
    if dtype == "float32" and not np.isfinite(array).all():
        raise BadRequestError(f"{where} holds NaN or Inf")
    return array


def _has_shape(value, shape: tuple[int, ...]) -> bool:
    if not shape:
        return not isinstance(value, list)
    return isinstance(value, list) and len(value) == shape[0] and \
        all(_has_shape(v, shape[1:]) for v in value)


def _flatten(value):
    for v in value:
        if isinstance(v, list):
            yield from _flatten(v)
        else:
            yield v


def _examples(data: dict, limits: Limits) -> np.ndarray:
    examples = data["examples"]
    if not isinstance(examples, list) or not examples:
        raise BadRequestError("examples must be a non-empty JSON array")
    if len(examples) > limits.max_examples:
        raise BadRequestError(f"{len(examples)} examples in one request, more than the "
                              f"{limits.max_examples} allowed", status=413)
    return np.stack([decode_example(e, i, limits) for i, e in enumerate(examples)])


def _labels(values, count: int, what: str, limits: Limits, exact: bool = True) -> np.ndarray:
    if not isinstance(values, list) or (exact and len(values) != count) or not values:
        expected = f"{count} labels, one per example" if exact else "a non-empty array"
        raise BadRequestError(f"{what} must be a JSON array of {expected}")
    labels = [_int(v, f"{what}[{i}]") for i, v in enumerate(values)]
    bad = [v for v in labels if not 0 <= v < limits.num_values]
    if bad:
        raise BadRequestError(f"{what}: label {bad[0]} is outside the memory's label range "
                              f"[0, {limits.num_values})")
    return np.asarray(labels, dtype=np.int64)


def parse_predict(body: bytes, limits: Limits) -> PredictRequest:
    """A ``/predict`` body. Raises BadRequestError (see the module)."""
    data = parse_json(body, limits)
    _check_keys(data, {"examples", "neighbours", "candidates"}, {"examples"})
    payloads = _examples(data, limits)
    neighbours = _int(data.get("neighbours", limits.default_neighbours), "neighbours")
    if not 0 <= neighbours <= limits.max_neighbours:
        raise BadRequestError(f"neighbours must lie in [0, {limits.max_neighbours}], got "
                              f"{neighbours}")
    candidates = None
    if data.get("candidates") is not None:
        candidates = np.unique(_labels(data["candidates"], 0, "candidates", limits,
                                       exact=False))
    return PredictRequest(payloads=payloads, neighbours=neighbours, candidates=candidates)


def parse_learn(body: bytes, limits: Limits) -> LearnRequest:
    """A ``/learn`` body. Raises BadRequestError (see the module)."""
    data = parse_json(body, limits)
    _check_keys(data, {"request_id", "examples", "labels"}, {"request_id", "examples", "labels"})
    request_id = data["request_id"]
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise BadRequestError("request_id must be a string of 1 to 128 characters from "
                              "A-Z a-z 0-9 . _ : @ -")
    payloads = _examples(data, limits)
    labels = _labels(data["labels"], len(payloads), "labels", limits)
    return LearnRequest(request_id=request_id, payloads=payloads, labels=labels,
                        digest=digest(payloads, labels))


def digest(payloads: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the payloads' bytes (little-endian), their shape and the labels."""
    h = hashlib.sha256()
    h.update(repr((str(payloads.dtype), payloads.shape)).encode())
    h.update(np.ascontiguousarray(payloads.astype(payloads.dtype.newbyteorder("<"))).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def limits_for(payload_format: str, num_values: int, max_examples: int, max_body_bytes: int,
               max_neighbours: int, default_neighbours: int) -> Limits:
    """The limits of a service, the payload format checked (uint8[H,W] or float32[D]).

    Raises:
        ConfigError: another payload format.
    """
    dtype, shape = check_format(payload_format)
    if not ((dtype == "uint8" and len(shape) == 2) or (dtype == "float32" and len(shape) == 1)):
        raise ConfigError(f"the service takes uint8[H,W] or float32[D] payloads, got "
                          f"{payload_format!r}")
    return Limits(payload_format=payload_format, num_values=num_values,
                  max_examples=max_examples, max_body_bytes=max_body_bytes,
                  max_neighbours=max_neighbours,
                  default_neighbours=min(default_neighbours, max_neighbours))


def finite_or_none(x: float) -> float | None:
    """A similarity for JSON: None for an empty neighbour (-inf)."""
    return float(x) if math.isfinite(x) else None
