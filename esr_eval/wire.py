"""Messages between the evaluator and a submission's sandbox process, without pickle.

Contract
--------
A message is a JSON header (a dict of plain values) plus zero or more numpy arrays, framed as
``[u32 header length][header JSON][raw bytes of each array]``; the header lists each array's
dtype and shape. :func:`receive` trusts nothing it reads: the header is capped at
``MAX_HEADER_BYTES`` and must be a JSON object, dtypes must be in ``DTYPES``, shapes must be
lists of non-negative ints whose total stays under ``max_array_bytes``; anything else raises
:class:`WireError`. Nothing received is ever unpickled, so a hostile sandbox can send wrong
numbers (which the evaluator checks) but cannot run code in the evaluator. End of stream raises
:class:`EOFError`. Large outputs may instead cross through a shared buffer (:func:`read_shared`):
the header then describes the array, and the reader copies it out after the same checks.
"""

from __future__ import annotations

import json
import math
import struct
from typing import BinaryIO

import numpy as np

MAX_HEADER_BYTES = 1 << 20
MAX_ARRAY_BYTES = 4 << 30
DTYPES = frozenset({"uint8", "float32", "float64", "int64"})
_LENGTH = struct.Struct("<I")


class WireError(ValueError):
    """A message that breaks the framing rules (a hostile or broken peer)."""


def send(stream: BinaryIO, header: dict, arrays: list[np.ndarray] | tuple = ()) -> None:
    """Write one message and flush."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    meta = dict(header, _arrays=[[a.dtype.name, list(a.shape)] for a in arrays])
    body = json.dumps(meta, allow_nan=True).encode()
    stream.write(_LENGTH.pack(len(body)) + body)
    for array in arrays:
        stream.write(memoryview(array).cast("B"))
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytearray:
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        got = stream.readinto(view[done:])
        if not got:
            raise EOFError("the peer closed the stream")
        done += got
    return buffer


def array_spec(entry) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of a ``[dtype, shape]`` description, checked (:class:`WireError` otherwise)."""
    return _array_spec(entry)


def read_shared(buffer, entry) -> np.ndarray:
    """A copy of the array described by ``entry`` (``[dtype, shape]``) at the start of ``buffer``
    (a shared mapping the peer wrote), checked against the buffer's size."""
    dtype, shape = _array_spec(entry)
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > len(buffer):
        raise WireError(f"shared array of {size} bytes exceeds the {len(buffer)}-byte buffer")
    return np.frombuffer(buffer, dtype=dtype, count=math.prod(shape)).reshape(shape).copy()


def _array_spec(entry) -> tuple[str, tuple[int, ...]]:
    if (not isinstance(entry, list) or len(entry) != 2 or entry[0] not in DTYPES
            or not isinstance(entry[1], list) or len(entry[1]) > 8
            or not all(type(d) is int and d >= 0 for d in entry[1])):
        raise WireError(f"bad array description {str(entry)[:200]}")
    return entry[0], tuple(entry[1])


def receive(stream: BinaryIO, max_array_bytes: int = MAX_ARRAY_BYTES) -> tuple[dict, list[np.ndarray]]:
    """Read one message: (header without the framing key, arrays)."""
    (length,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    if length > MAX_HEADER_BYTES:
        raise WireError(f"header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exactly(stream, length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("_arrays"), list):
        raise WireError("header is not a JSON object with an array list")
    specs = [_array_spec(entry) for entry in header.pop("_arrays")]
    total = sum(math.prod(shape) * np.dtype(dtype).itemsize for dtype, shape in specs)
    if total > max_array_bytes:
        raise WireError(f"arrays of {total} bytes exceed {max_array_bytes}")
    arrays = [np.frombuffer(_read_exactly(stream, math.prod(shape) * np.dtype(dtype).itemsize),
                            dtype=dtype).reshape(shape) for dtype, shape in specs]
    return header, arrays
