"""Every error code has a kind (DESIGN §3), and the proxy maps kinds, never codes, to status.

The source of every package is read: each call that builds a ``CodedError`` with a literal
code must name a code its family lists with a kind (or pass ``kind=``, or belong to a family
that declares one kind for all its codes). A new code without a kind fails here.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

from attestation.errors import KINDS, CodedError, is_code, is_kind

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("attestation", "enclave", "parent", "simulator")
SKIP_MODULES = {"__main__", "_vsock_real", "_image_trim"}  # entry points / Linux-only device code
NOT_TOOLKIT_CODES = {"simulator.kms.errors.KmsError", "parent.nitro_cli.NitroCliError"}
"""AWS exception names and nitro-cli's ``Exx``: other tools' codes, kept as they are."""


def _import_all() -> None:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if info.name.rsplit(".", 1)[-1] in SKIP_MODULES:
                continue
            importlib.import_module(info.name)


def _families() -> list[type[CodedError]]:
    _import_all()
    seen: list[type[CodedError]] = []
    todo: list[type[CodedError]] = [CodedError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen and sub.__module__.split(".")[0] in PACKAGES:
                seen.append(sub)
            todo.append(sub)
    return seen


FAMILIES = _families()
BY_NAME: dict[str, list[type[CodedError]]] = {}
for _cls in FAMILIES:
    BY_NAME.setdefault(_cls.__name__, []).append(_cls)


def _declares_kind(cls: type) -> bool:
    """The family itself (not CodedError) sets a kind for codes it does not list."""
    return any("kind" in vars(c) for c in cls.__mro__ if c is not CodedError and c is not object)


def _covers(cls: type[CodedError], code: str) -> bool:
    if cls.__name__ in ("NsmError", "NsmUnavailableError"):
        from enclave.nsm.codec import NSM_ERROR_CODES

        return code in NSM_ERROR_CODES  # the NSM's own names, mapped at the source
    if code in cls.codes:
        return True
    other_tool = f"{cls.__module__}.{cls.__name__}" in NOT_TOOLKIT_CODES
    return _declares_kind(cls) and (not cls.codes or other_tool)


def _literal_codes() -> list[tuple[str, str, int, str, bool]]:
    """(class name, code, line, file, passes kind=) for every literal-coded construction."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                first = node.args[0]
                if name not in BY_NAME or not isinstance(first, ast.Constant):
                    continue
                if not isinstance(first.value, str) or len(node.args) < 2:
                    continue  # a one-code-per-class family: the first argument is the message
                has_kind = any(k.arg == "kind" for k in node.keywords)
                where = str(path.relative_to(ROOT))
                found.append((name, first.value, node.lineno, where, has_kind))
    return found


def test_there_are_many_families_and_codes() -> None:
    assert len(FAMILIES) >= 25
    assert len(_literal_codes()) >= 100


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_family_declares_kinds_from_the_fixed_set(cls: type[CodedError]) -> None:
    assert is_kind(cls.kind), cls.kind
    for code, kind in cls.codes.items():
        assert is_kind(kind), (code, kind)
        if f"{cls.__module__}.{cls.__name__}" not in NOT_TOOLKIT_CODES:
            assert is_code(code), code
    if isinstance(vars(cls).get("code"), str):  # one code per class: the class has its kind
        assert is_code(cls.code) and _declares_kind(cls), cls


def test_every_literal_code_has_a_kind() -> None:
    missing = []
    for name, code, line, path, has_kind in _literal_codes():
        if has_kind:
            continue
        if not any(_covers(cls, code) for cls in BY_NAME[name]):
            missing.append(f"{path}:{line}: {name}({code!r}) has no kind")
    assert not missing, "\n".join(missing)


def test_kinds_travel_and_map_to_the_one_status_table() -> None:
    from enclave.wire import KINDS as WIRE_KINDS
    from enclave.wire import PROTOCOL_CODES
    from parent._proxy_http import STATUS_FOR_KIND

    assert WIRE_KINDS == KINDS
    assert dict(STATUS_FOR_KIND) == {
        "bad-request": 400,
        "forbidden": 403,
        "not-found": 404,
        "conflict": 409,
        "unavailable": 503,
        "internal": 500,
    }
    assert set(PROTOCOL_CODES.values()) <= set(KINDS)


def test_the_siblings_the_review_found_now_agree() -> None:
    from enclave.kms.credentials import CredentialsError
    from enclave.nsm.codec import NsmError
    from parent._proxy_http import STATUS_FOR_KIND

    expired = CredentialsError("credentials-expired", "x")
    unavailable = CredentialsError("credentials-unavailable", "x")
    assert STATUS_FOR_KIND[expired.kind] == STATUS_FOR_KIND[unavailable.kind] == 503
    err = NsmError("ReadOnlyIndex", "locked")
    assert (err.code, err.kind) == ("nsm-read-only-index", "conflict")
    assert err.nsm_code == "ReadOnlyIndex"
