"""The toolkit's one strict CBOR decoder, for every byte string from outside a trust boundary.

cbor2 builds the values; before it runs, a linear scan of the item heads enforces the
:class:`CborLimits` (size, nesting depth, total item count, map key types) and refuses every
semantic tag (bignums, shared references, dates...) and indefinite lengths. cbor2 then refuses
duplicate map keys. Nothing reaches a Python dict that could make insertion quadratic: keys are
text, byte strings (hashed with a secret seed) or integers whose hashes are all distinct.
Every failure is a :class:`~attestation.errors.MalformedError`; callers re-code it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import cbor2

from .errors import MalformedError

KEY_TEXT = "text"
KEY_BYTES = "bytes"
KEY_INT = "int"
SMALL_INT_KEY = 2**32 - 1
"""Largest integer-key magnitude: well under 2**61 - 1, where Python int hashes start to wrap."""


@dataclass(frozen=True, slots=True)
class CborLimits:
    """Bounds of one decode; the defaults fit an attestation document."""

    max_bytes: int = 64 * 1024
    """Largest input accepted (a document is at most 16 KiB of payload plus its envelope)."""
    max_depth: int = 8
    """Deepest container nesting (a document needs 3: payload -> pcrs/cabundle -> bytes)."""
    max_items: int = 4096
    """Data items in the whole input (containers, keys and values all count)."""
    key_types: frozenset[str] = frozenset({KEY_TEXT, KEY_INT})
    """Kinds of map key allowed: KEY_TEXT, KEY_BYTES, KEY_INT (|key| <= SMALL_INT_KEY)."""


DOCUMENT_LIMITS = CborLimits()
MAX_NESTING = DOCUMENT_LIMITS.max_depth

_INT_KEY_MAJORS = (0, 1)
_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def _key_ok(major: int, arg: int, key_types: frozenset[str]) -> bool:
    if major == 3:
        return KEY_TEXT in key_types
    if major == 2:
        return KEY_BYTES in key_types
    if major in _INT_KEY_MAJORS:
        return KEY_INT in key_types and arg < SMALL_INT_KEY
    return False


def check_structure(data: bytes, limits: CborLimits, what: str) -> None:
    """Walk the item heads of ``data`` (one item, nothing after it); raise MalformedError
    on any limit, tag, indefinite length, reserved head or disallowed key kind. Linear in
    the number of items, which ``max_items`` bounds; allocates nothing per item."""
    size = len(data)
    if size > limits.max_bytes:
        raise MalformedError(
            f"{what} CBOR is {size} bytes, over the limit of {limits.max_bytes} (max_bytes)",
            expected=limits.max_bytes,
            found=size,
        )
    max_items, max_depth, key_types = limits.max_items, limits.max_depth, limits.key_types
    # per open container: items left (-1: indefinite, ends at a break), items seen, is a map
    left: list[int] = []
    seen: list[int] = []
    is_map: list[bool] = []
    pos = items = 0
    while True:
        if pos >= size:
            raise MalformedError(f"{what} is not valid CBOR: truncated at byte {pos}")
        head = data[pos]
        pos += 1
        major, info = head >> 5, head & 31
        if head == 0xFF:  # break: ends the innermost indefinite container
            if not left or left[-1] != -1 or (is_map[-1] and seen[-1] % 2):
                raise MalformedError(f"{what} is not valid CBOR: unexpected break at {pos - 1}")
            left[-1] = 0
        else:
            if info < 24:
                arg = info
            elif info in _ARG_BYTES:
                width = _ARG_BYTES[info]
                if pos + width > size:
                    raise MalformedError(f"{what} is not valid CBOR: truncated at byte {pos}")
                arg = int.from_bytes(data[pos : pos + width], "big")
                pos += width
            elif info == 31 and (major == 4 or major == 5):
                arg = -1
            else:
                raise MalformedError(
                    f"{what} is not valid CBOR: head 0x{head:02x} (reserved, or an indefinite "
                    f"string) is refused"
                )
            items += 1
            if items > max_items:
                raise MalformedError(
                    f"{what} has more than {max_items} CBOR items (max_items)",
                    expected=max_items,
                    found=items,
                )
            if left and is_map[-1] and seen[-1] % 2 == 0 and not _key_ok(major, arg, key_types):
                raise MalformedError(
                    f"{what} has a map key of CBOR major type {major}; keys must be "
                    f"{', '.join(sorted(key_types))}"
                )
            if major == 2 or major == 3:
                pos += arg
                if pos > size:
                    raise MalformedError(f"{what} is not valid CBOR: a string runs past the end")
            elif major == 4 or major == 5:
                count = arg * 2 if major == 5 and arg > 0 else arg
                if count:
                    if len(left) >= max_depth:
                        raise MalformedError(
                            f"{what} CBOR nests deeper than {max_depth} (max_depth)",
                            expected=max_depth,
                            found=len(left) + 1,
                        )
                    if count > max_items:  # cheaper than counting up to it
                        raise MalformedError(
                            f"{what} has more than {max_items} CBOR items (max_items)",
                            expected=max_items,
                            found=count,
                        )
                    left.append(count)
                    seen.append(0)
                    is_map.append(major == 5)
                    continue
            elif major == 6:
                raise MalformedError(
                    f"{what} is not valid CBOR: CBOR tag {arg} is not allowed here"
                )
            elif major == 7 and info == 24 and arg < 32:
                raise MalformedError(f"{what} is not valid CBOR: invalid simple value {arg}")
        # one item complete: close every container it completes
        while left:
            if left[-1] == 0:  # a break closed it
                left.pop()
                seen.pop()
                is_map.pop()
                continue
            seen[-1] += 1
            if left[-1] > 0:
                left[-1] -= 1
                if left[-1] == 0:
                    left.pop()
                    seen.pop()
                    is_map.pop()
                    continue
            break
        if not left:
            break
    if pos != size:
        raise MalformedError(
            f"{what} has {size - pos} trailing byte(s) after the CBOR item",
            expected=size,
            found=pos,
        )


def decode_strict(data: bytes, what: str, limits: CborLimits = DOCUMENT_LIMITS) -> Any:
    """Decode exactly one CBOR item spanning all of ``data`` within ``limits``; raise
    MalformedError otherwise (duplicate keys included)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    check_structure(data, limits, what)
    try:
        decoder = cbor2.CBORDecoder(
            io.BytesIO(data),
            allow_duplicate_keys=False,
            max_depth=limits.max_depth + 1,
        )
        return decoder.decode()
    except Exception as exc:  # cbor2 raises several types; none may escape (typed errors only)
        text = (str(exc) or type(exc).__name__)[:200]
        raise MalformedError(f"{what} is not valid CBOR: {text}") from None
