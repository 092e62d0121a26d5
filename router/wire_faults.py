"""Where protobuf bytes that failed to parse went wrong, as a field path for INVALID_ARGUMENT.

protobuf says only "Wire format was corrupt"; `fault_path` walks the wire format itself,
guided by the message's descriptor, and names the first field that cannot decode:

| fault                                          | path named                               |
|------------------------------------------------|------------------------------------------|
| invalid UTF-8 in a string                      | the string (`prompt`, `sampling.stop`)   |
| inside a repeated message                      | indexed (`chat.messages[1].content`)     |
| a packed varint list that breaks (token ids)   | the list (`tokens.token_ids`)            |
| bytes that end or break inside a field         | that field (`sampling`, `chat.messages`) |
| a broken tag, or nothing found                 | the enclosing message (`request` at top) |

Unknown field numbers, and known ones sent with another wire type, are skipped: protobuf keeps
them as unknown fields, so they cannot be the fault. Pure and bounded by the bytes' length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

TOP_LEVEL = "request"
_VARINT, _FIXED64, _LEN, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_FIXED_SIZES = {_FIXED64: 8, _FIXED32: 4}
_MAX_VARINT_BYTES = 10


class _Malformed(Exception):
    """The bytes break inside field `number` (0: inside a tag, before any number was read)."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


@dataclass(frozen=True, slots=True)
class _WireField:
    number: int
    wire_type: int
    payload: bytes  # a length-delimited field's bytes; empty for the other wire types


def fault_path(descriptor: Descriptor, data: bytes) -> str:
    """The path of the first field of `data` (a `descriptor` message) that cannot decode."""
    return _fault_in(descriptor, data, "", Counter()) or TOP_LEVEL


def _fault_in(descriptor: Descriptor, data: bytes, prefix: str, seen: Counter[str]) -> str | None:
    # `seen` counts the elements of each repeated message so far, by path: a singular message
    # sent twice is merged by protobuf, so its repeated fields go on counting.
    try:
        for wire in _wire_fields(data):
            field = descriptor.fields_by_number.get(wire.number)
            if field is None or wire.wire_type != _LEN:
                continue
            fault = _field_fault(field, wire.payload, _indexed_path(prefix, field, seen), seen)
            if fault:
                return fault
    except _Malformed as exc:
        field = descriptor.fields_by_number.get(exc.number)
        return _join(prefix, field.name) if field else prefix
    return None


def _field_fault(
    field: FieldDescriptor, payload: bytes, path: str, seen: Counter[str]
) -> str | None:
    """`path` (or a path inside it) if this length-delimited field cannot decode."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return None if _is_utf8(payload) else path
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _fault_in(field.message_type, payload, path, seen)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return None
    return None if _is_packed_list(field, payload) else path


def _indexed_path(prefix: str, field: FieldDescriptor, seen: Counter[str]) -> str:
    # Repeated messages are named by index (as validation names chat messages); repeated
    # scalars and strings by the list (as validation names `sampling.stop`).
    path = _join(prefix, field.name)
    if field.is_repeated and field.type == FieldDescriptor.TYPE_MESSAGE:
        seen[path] += 1
        path = f"{path}[{seen[path] - 1}]"
    return path


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_packed_list(field: FieldDescriptor, payload: bytes) -> bool:
    fixed_size = {FieldDescriptor.CPPTYPE_FLOAT: 4, FieldDescriptor.CPPTYPE_DOUBLE: 8}
    if field.cpp_type in fixed_size:
        return len(payload) % fixed_size[field.cpp_type] == 0
    try:
        position = 0
        while position < len(payload):
            _, position = _varint(payload, position, field.number)
    except _Malformed:
        return False
    return True


def _wire_fields(data: bytes) -> Iterator[_WireField]:
    """Every field of `data` in order; raises _Malformed where the bytes break."""
    position = 0
    while position < len(data):
        wire, position = _read_field(data, position)
        yield wire


def _read_field(data: bytes, position: int) -> tuple[_WireField, int]:
    tag, position = _varint(data, position, 0)
    number, wire_type = tag >> 3, tag & 7
    if number == 0 or tag >> 32:
        raise _Malformed(0)
    if wire_type == _VARINT:
        return _WireField(number, wire_type, b""), _varint(data, position, number)[1]
    if wire_type in _FIXED_SIZES:
        return _WireField(number, wire_type, b""), _take(
            data, position, _FIXED_SIZES[wire_type], number
        )
    if wire_type == _LEN:
        size, position = _varint(data, position, number)
        end = _take(data, position, size, number)
        return _WireField(number, wire_type, data[position:end]), end
    if wire_type == _START_GROUP:
        return _WireField(number, wire_type, b""), _skip_group(data, position, number)
    raise _Malformed(number)  # an END_GROUP with no group open, or wire type 6 or 7


def _skip_group(data: bytes, position: int, number: int) -> int:
    """The position after the END_GROUP closing group `number` (protobuf keeps groups as
    unknown fields). Iterative, so nesting depth costs no stack."""
    open_groups = [number]
    while open_groups:
        tag, after_tag = _varint(data, position, number)
        inner_number, wire_type = tag >> 3, tag & 7
        if wire_type == _END_GROUP and inner_number != open_groups.pop():
            raise _Malformed(number)
        if wire_type == _START_GROUP:
            open_groups.append(inner_number)
        if wire_type in (_START_GROUP, _END_GROUP):
            position = after_tag
        else:
            _, position = _read_field(data, position)
    return position


def _varint(data: bytes, position: int, number: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
        if position >= len(data):
            break
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise _Malformed(number)


def _take(data: bytes, position: int, size: int, number: int) -> int:
    if position + size > len(data):
        raise _Malformed(number)
    return position + size
