"""Check request bodies against the KMS service model that ships with botocore.

The model is the one boto3 itself uses, so member names, types, enums and length bounds match
AWS. A body of the wrong JSON type raises ``SerializationException``; values that break a
constraint raise one ``ValidationException`` listing every violation, as KMS does. Members the
model does not know are ignored (as AWS does); blobs are base64-decoded.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from simulator.kms.errors import KmsError

__all__ = ["operation_names", "validate_input"]

MAX_VIOLATIONS_REPORTED = 10
"""At most this many constraint violations are listed in one message."""

MAX_VALUE_SHOWN = 64
"""Characters of an offending string value echoed in a message (blobs are never echoed)."""

_MISSING = object()


@lru_cache(maxsize=1)
def _service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("kms")


def operation_names() -> frozenset[str]:
    """Every operation of the KMS model."""
    return frozenset(_service_model().operation_names)


def _operation(name: str) -> OperationModel:
    return _service_model().operation_model(name)


def _wire_name(name: str) -> str:
    return name[:1].lower() + name[1:]


class _Checker:
    def __init__(self) -> None:
        self.violations: list[str] = []

    def fail(self, path: str, value: Any, constraint: str) -> None:
        if value is _MISSING:
            shown = "null"
        elif isinstance(value, int | str):
            shown = repr(value if not isinstance(value, str) else value[:MAX_VALUE_SHOWN])
        else:
            shown = "(hidden)"
        self.violations.append(
            f"Value {shown} at '{path}' failed to satisfy constraint: {constraint}"
        )

    def check(self, value: Any, shape: Shape, path: str) -> Any:
        kind = shape.type_name
        meta = shape.metadata
        if kind == "structure":
            return self._structure(value, shape, path)
        if kind == "string":
            if not isinstance(value, str):
                raise _serialization(path, "a string")
            self._length(len(value), meta, path, value)
            enum = getattr(shape, "enum", None)
            if enum and value not in enum:
                self.fail(path, value, f"Member must satisfy enum value set: [{', '.join(enum)}]")
            return value
        if kind == "blob":
            if not isinstance(value, str):
                raise _serialization(path, "a base64 string")
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise KmsError("SerializationException", f"'{path}' is not valid base64") from None
            self._length(len(data), meta, path, None)
            return data
        if kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise _serialization(path, "an integer")
            if "min" in meta and value < meta["min"]:
                self.fail(
                    path, value, f"Member must have value greater than or equal to {meta['min']}"
                )
            if "max" in meta and value > meta["max"]:
                self.fail(
                    path, value, f"Member must have value less than or equal to {meta['max']}"
                )
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise _serialization(path, "a boolean")
            return value
        if kind == "timestamp":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _serialization(path, "a timestamp")
            return value
        if kind == "list":
            if not isinstance(value, list):
                raise _serialization(path, "a list")
            self._length(len(value), meta, path, None)
            return [
                self.check(v, shape.member, f"{path}.{i + 1}.member") for i, v in enumerate(value)
            ]
        if kind == "map":
            if not isinstance(value, dict):
                raise _serialization(path, "a map")
            self._length(len(value), meta, path, None)
            return {
                self.check(k, shape.key, f"{path}.key"): self.check(v, shape.value, f"{path}.{k}")
                for k, v in value.items()
            }
        raise KmsError("SerializationException", f"'{path}': unsupported shape type {kind}")

    def _length(self, length: int, meta: dict[str, Any], path: str, value: Any) -> None:
        if "min" in meta and length < meta["min"]:
            self.fail(
                path, value, f"Member must have length greater than or equal to {meta['min']}"
            )
        if "max" in meta and length > meta["max"]:
            self.fail(path, value, f"Member must have length less than or equal to {meta['max']}")

    def _structure(self, value: Any, shape: Shape, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _serialization(path or "body", "a structure")
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            member_path = f"{path}.{_wire_name(name)}" if path else _wire_name(name)
            if value.get(name) is None:
                if name in shape.required_members:
                    self.fail(member_path, _MISSING, "Member must not be null")
                continue
            out[name] = self.check(value[name], member, member_path)
        return out


def _serialization(path: str, expected: str) -> KmsError:
    return KmsError("SerializationException", f"'{path}' must be {expected}")


def validate_input(operation: str, body: Any) -> dict[str, Any]:
    """The request members of ``operation``, checked and with blobs decoded."""
    shape = _operation(operation).input_shape
    if shape is None:
        if body not in ({}, None) and not isinstance(body, dict):
            raise _serialization("body", "a structure")
        return {}
    checker = _Checker()
    result = checker._structure(body, shape, "")
    if checker.violations:
        shown = checker.violations[:MAX_VIOLATIONS_REPORTED]
        count = len(checker.violations)
        noun = "error" if count == 1 else "errors"
        raise KmsError(
            "ValidationException", f"{count} validation {noun} detected: " + "; ".join(shown)
        )
    return result
