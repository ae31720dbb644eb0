"""Strict CBOR decoding for attestation documents (one item, nothing after it, no tags).

cbor2 does the decoding; this module makes it strict: trailing bytes, duplicate map keys, any
semantic tag (bignums, shared references, dates...) and deep nesting are refused, and every
decoder exception becomes a :class:`~attestation.errors.MalformedError`.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from .errors import MalformedError

MAX_NESTING = 8
"""Deepest container nesting a document needs is 3 (payload -> pcrs/cabundle -> bytes)."""

# Tags cbor2 would interpret on its own; any other tag reaches _refuse_unknown_tag.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004)
_SELF_DESCRIBE_TAG = 55799


class _TagRefused(Exception):
    pass


def _refuse_tag(*_args: Any) -> Any:
    raise _TagRefused("CBOR tags are not allowed here")


def _refuse_unknown_tag(_decoder: Any, tag: Any) -> Any:
    raise _TagRefused(f"CBOR tag {getattr(tag, 'tag', '?')} is not allowed here")


_NO_TAGS = {t: _refuse_tag for t in (*_BUILTIN_TAGS, _SELF_DESCRIBE_TAG)}


def decode_strict(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item spanning all of ``data``; raise MalformedError otherwise."""
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            tag_hook=_refuse_unknown_tag,
            allow_duplicate_keys=False,
            max_depth=MAX_NESTING,
        )
        value = decoder.decode()
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


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, _TagRefused):
        text = str(cause)
    return text[:200]
