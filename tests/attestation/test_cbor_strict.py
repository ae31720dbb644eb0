"""attestation._cbor.decode_strict: the one strict decoder. Whatever the input, it returns what
cbor2 returns or raises MalformedError; map keys of a kind the limits do not allow are refused
on every path (the head walk and its C-speed shortcut for short inputs)."""

from __future__ import annotations

import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation._cbor import (
    KEY_BYTES,
    KEY_INT,
    KEY_TEXT,
    CborLimits,
    check_structure,
    decode_strict,
)
from attestation.errors import MalformedError

KINDS = {KEY_TEXT: str, KEY_BYTES: bytes, KEY_INT: int}
key_sets = st.sets(st.sampled_from(sorted(KINDS)), min_size=1).map(frozenset)
keys = st.text(max_size=4) | st.binary(max_size=4) | st.integers(-5, 5)
values = st.recursive(
    st.integers(-(2**63), 2**63) | st.binary(max_size=8) | st.text(max_size=4) | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=10,
)


def _keys(value: object) -> list[object]:
    found: list[object] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found.append(k)
            found.extend(_keys(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(_keys(v))
    return found


def _allowed(key: object, kinds: frozenset[str]) -> bool:
    return any(type(key) is KINDS[k] for k in kinds)


def _items(value: object) -> int:
    if isinstance(value, dict):
        return 1 + sum(1 + _items(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_items(v) for v in value)
    return 1


@settings(max_examples=300, deadline=None)
@given(value=values, kinds=key_sets, max_items=st.sampled_from([4, 64, 4096]))
def test_keys_of_a_kind_not_allowed_are_refused_on_every_path(
    value: object, kinds: frozenset[str], max_items: int
) -> None:
    data = cbor2.dumps(value)
    limits = CborLimits(max_bytes=1 << 16, max_depth=16, max_items=max_items, key_types=kinds)
    if any(not _allowed(k, kinds) for k in _keys(value)):  # refused, whatever comes first
        with pytest.raises(MalformedError, match=r"map key|max_items"):
            decode_strict(data, "value", limits)
    elif _items(value) <= max_items:
        assert decode_strict(data, "value", limits) == value
    else:
        with pytest.raises(MalformedError, match="max_items"):
            decode_strict(data, "value", limits)


@pytest.mark.parametrize("kinds", [{KEY_TEXT}, {KEY_TEXT, KEY_INT}, {KEY_TEXT, KEY_BYTES}])
def test_a_short_input_with_a_byte_string_key_is_refused_unless_allowed(kinds: set[str]) -> None:
    limits = CborLimits(max_items=4096, key_types=frozenset(kinds))
    data = cbor2.dumps({"a": 1, b"b": 2})
    assert len(data) < limits.max_items  # the shortcut's size
    if KEY_BYTES in kinds:
        assert decode_strict(data, "value", limits) == {"a": 1, b"b": 2}
    else:
        with pytest.raises(MalformedError, match="map key"):
            decode_strict(data, "value", limits)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), kinds=key_sets)
def test_any_bytes_give_a_value_or_malformed(data: bytes, kinds: frozenset[str]) -> None:
    limits = CborLimits(max_bytes=64, max_depth=4, max_items=32, key_types=kinds)
    try:
        value = decode_strict(data, "value", limits)
    except MalformedError:
        return
    check_structure(data, limits, "value")  # what was accepted passes the walk too
    if isinstance(value, float) and math.isnan(value):
        return
    assert cbor2.loads(data) == value
