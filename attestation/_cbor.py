"""The toolkit's one strict CBOR decoder, for every byte string from outside a trust boundary.

cbor2 builds the values; before it runs, a linear walk over the item heads enforces the
:class:`CborLimits` (size, nesting depth, total item count, map key kinds) and refuses every
semantic tag (bignums, shared references, dates...); cbor2 then refuses duplicate map keys
(and tags, and non-string keys where only strings are allowed, in C). Nothing reaches a Python
dict that could make insertion quadratic: keys are text or byte strings (hashed with a secret
seed) or integers below 2**32, whose hashes are all distinct.
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


def _key_majors(key_types: frozenset[str]) -> frozenset[int]:
    """CBOR major types a map key may have under ``key_types``."""
    majors = {3} if KEY_TEXT in key_types else set()
    if KEY_BYTES in key_types:
        majors.add(2)
    if KEY_INT in key_types:
        majors.update(_INT_KEY_MAJORS)
    return frozenset(majors)


def _skip_chunks(data: bytes, pos: int, major: int, what: str) -> int:
    """Position after the chunks and break of an indefinite string (definite chunks of the
    same major type only, as RFC 8949 §3.2.3 requires)."""
    size = len(data)
    while pos < size:
        head = data[pos]
        pos += 1
        if head == 0xFF:
            return pos
        info = head & 31
        if head >> 5 != major or info > 27:
            raise MalformedError(f"{what} is not valid CBOR: bad chunk in an indefinite string")
        if info < 24:
            length = info
        else:
            width = _ARG_BYTES[info]
            length = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        pos += length
    raise MalformedError(f"{what} is not valid CBOR: an indefinite string runs past the end")


def check_structure(data: bytes, limits: CborLimits, what: str) -> None:
    """Walk the item heads of ``data`` (one item, nothing after it); raise MalformedError
    on any limit, tag, reserved head or disallowed key kind. Linear in
    the number of items, which ``max_items`` bounds; allocates nothing per item."""
    size = len(data)
    if size > limits.max_bytes:
        raise MalformedError(
            f"{what} CBOR is {size} bytes, over the limit of {limits.max_bytes} (max_bytes)",
            expected=limits.max_bytes,
            found=size,
        )
    max_items, max_depth = limits.max_items, limits.max_depth
    key_majors = _key_majors(limits.key_types)
    # The open container: items left in it (-1: indefinite, ends at a break), whether it is a
    # map, and the parity of the items seen (a map key comes at even positions). Outer open
    # containers wait on the stack.
    left, in_map, odd = 1, False, False  # a virtual array holding the one top-level item
    stack: list[tuple[int, bool, bool]] = []
    pos = items = 0
    while True:
        if pos >= size:
            raise MalformedError(f"{what} is not valid CBOR: truncated at byte {pos}")
        head = data[pos]
        pos += 1
        if head == 0xFF:  # break: ends the open indefinite container
            if left != -1 or (in_map and odd):
                raise MalformedError(f"{what} is not valid CBOR: unexpected break at {pos - 1}")
            left = 0
        else:
            major = head >> 5
            info = head & 31
            if info < 24:
                arg = info
            elif info < 28:
                width = _ARG_BYTES[info]
                if pos + width > size:
                    raise MalformedError(f"{what} is not valid CBOR: truncated at byte {pos}")
                arg = int.from_bytes(data[pos : pos + width], "big")
                pos += width
            elif info == 31 and (major == 4 or major == 5):
                arg = -1
            elif info == 31 and (major == 2 or major == 3):
                pos = _skip_chunks(data, pos, major, what)  # an indefinite string
                arg = 0
            else:
                raise MalformedError(f"{what} is not valid CBOR: reserved head 0x{head:02x}")
            items += 1
            if items > max_items:
                raise MalformedError(
                    f"{what} has more than {max_items} CBOR items (max_items)",
                    expected=max_items,
                    found=items,
                )
            if (
                in_map
                and not odd
                and (major not in key_majors or (major < 2 and arg >= SMALL_INT_KEY))
            ):
                raise MalformedError(
                    f"{what} has a map key of CBOR major type {major}; keys must be "
                    f"{', '.join(sorted(limits.key_types))}"
                )
            if major == 2 or major == 3:
                pos += arg
                if pos > size:
                    raise MalformedError(f"{what} is not valid CBOR: a string runs past the end")
            elif major == 4 or major == 5:
                count = arg * 2 if major == 5 and arg > 0 else arg
                if count:
                    if len(stack) >= max_depth:
                        raise MalformedError(
                            f"{what} CBOR nests deeper than {max_depth} (max_depth)",
                            expected=max_depth,
                            found=len(stack) + 1,
                        )
                    if count > max_items:  # cheaper than counting up to it
                        raise MalformedError(
                            f"{what} has more than {max_items} CBOR items (max_items)",
                            expected=max_items,
                            found=count,
                        )
                    stack.append((left, in_map, odd))
                    left, in_map, odd = count, major == 5, False
                    continue
            elif major == 6:
                raise MalformedError(
                    f"{what} is not valid CBOR: CBOR tag {arg} is not allowed here"
                )
        # one item complete (or a break): close every container it completes
        while True:
            if left == 0 or left == 1:  # a break closed it, or that was its last item
                if not stack:
                    break
                left, in_map, odd = stack.pop()
                continue
            odd = not odd
            if left > 0:
                left -= 1
            break
        if left <= 1 and not stack:
            break
    if pos != size:
        raise MalformedError(
            f"{what} has {size - pos} trailing byte(s) after the CBOR item",
            expected=size,
            found=pos,
        )


def decode_strict(data: bytes, what: str, limits: CborLimits = DOCUMENT_LIMITS) -> Any:
    """Decode exactly one CBOR item spanning all of ``data`` within ``limits``; raise
    MalformedError otherwise (duplicate keys included).

    The head walk (:func:`check_structure`) is skipped only where it cannot find anything
    cbor2 would not refuse itself: keys exactly text and byte strings (cbor2's
    ``strict_hashable_types`` allows both, so text-only keys need the walk to refuse byte-string
    keys) and an input no longer than ``max_items`` bytes (it cannot hold more items than
    bytes). That keeps small frames at C speed."""
    if not isinstance(data, bytes):
        data = bytes(data)
    text_keys = limits.key_types <= _STRING_KEYS
    if limits.key_types != _STRING_KEYS or len(data) > min(limits.max_items, limits.max_bytes):
        check_structure(data, limits, what)
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            tag_hook=_refuse_unknown_tag,
            allow_duplicate_keys=False,
            strict_hashable_types=text_keys,
            max_depth=limits.max_depth,
        ).decode()
    except Exception as exc:  # cbor2 raises several types; none may escape (typed errors only)
        raise MalformedError(f"{what} is not valid CBOR: {_reason(exc)}") from None
    end = stream.tell()
    if end != len(data):
        raise MalformedError(
            f"{what} has {len(data) - end} trailing byte(s) after the CBOR item",
            expected=len(data),
            found=end,
        )
    return value


_STRING_KEYS = frozenset({KEY_TEXT, KEY_BYTES})

# Tags cbor2 would interpret on its own; any other tag reaches _refuse_unknown_tag.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004)
_SELF_DESCRIBE_TAG = 55799


class _TagRefused(Exception):
    pass


def _refuser(tag: int) -> Any:
    def refuse(*_args: Any) -> Any:
        raise _TagRefused(f"CBOR tag {tag} is not allowed here")

    return refuse


def _refuse_unknown_tag(*args: Any) -> Any:
    number = next((a.tag for a in args if isinstance(a, cbor2.CBORTag)), "?")
    raise _TagRefused(f"CBOR tag {number} is not allowed here")


_NO_TAGS = {t: _refuser(t) for t in (*_BUILTIN_TAGS, _SELF_DESCRIBE_TAG)}


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, _TagRefused):
        text = str(cause)
    return text[:200]
