"""Just enough of the protobuf wire format to write and read ONNX files in pieces.

An ONNX file is one serialized ``ModelProto``. The stock path builds the whole message in memory (every
tensor's bytes copied into it, then copied again to serialize); paramio instead writes the message as a
sequence of fields whose lengths it computes up front, streaming each tensor's bytes straight from the
tensor, and reads it by walking the fields and recording where each tensor's bytes lie, so that they can
be mapped rather than parsed. Every length is checked against the end of its enclosing message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple, NoReturn

__all__ = ["LEN", "VARINT", "varint", "field_header", "Field", "fields"]

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


_ONE_BYTE = tuple(bytes((i,)) for i in range(128))


def varint(value: int) -> bytes:
    """The base-128 encoding of a non-negative integer."""
    if 0 <= value < 128:  # most keys, dims and dtype codes: a saved-model write encodes tens of thousands
        return _ONE_BYTE[value]
    if value < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field_header(number: int, length: int) -> bytes:
    """Key and length prefix of a length-delimited field (a submessage, bytes or string)."""
    return varint(number << 3 | LEN) + varint(length)


class Field(NamedTuple):
    """One field of a message: its number, wire type, where its key starts, and its value's byte range
    (for a varint, ``value`` holds the decoded number)."""

    number: int
    wire: int
    key_start: int
    start: int
    end: int
    value: int


def _read_varint(buf: bytes | memoryview, pos: int, end: int, fail: Callable[[str], NoReturn]) -> tuple[int, int]:
    result = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            fail(f"a varint runs past the end of its message at byte {pos}")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos + i + 1
        shift += 7
    fail(f"a varint longer than {_MAX_VARINT_BYTES} bytes at byte {pos}")


def fields(buf: bytes | memoryview, start: int, end: int, fail: Callable[[str], NoReturn]) -> Iterator[Field]:
    """The fields of the message in ``buf[start:end]``, in file order; ``fail`` is called (and must raise)
    at the first malformed key, unknown wire type or length that runs past ``end``."""
    pos = start
    while pos < end:
        key_start = pos
        key, pos = _read_varint(buf, pos, end, fail)
        number, wire = key >> 3, key & 7
        if number == 0:
            fail(f"field number 0 at byte {key_start}")
        if wire == VARINT:
            value, pos = _read_varint(buf, pos, end, fail)
            yield Field(number, wire, key_start, pos, pos, value)
            continue
        if wire == LEN:
            length, pos = _read_varint(buf, pos, end, fail)
            size = length
        elif wire == I64:
            size = 8
        elif wire == I32:
            size = 4
        else:
            fail(f"unsupported wire type {wire} at byte {key_start}")
        if size > end - pos:
            fail(f"field {number} at byte {key_start} needs {size} bytes, only {end - pos} remain (truncated?)")
        yield Field(number, wire, key_start, pos, pos + size, 0)
        pos += size
