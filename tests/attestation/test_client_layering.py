"""``attestation.client`` runs in other services: it needs ``attestation`` and nothing above it.

The layers are ``attestation`` <- ``enclave`` <- ``parent`` (DESIGN §2): importing the client
(and the e2e codec it seals with) in a fresh interpreter must load no ``enclave``, ``parent``
or ``simulator`` module, and no file of ``attestation/`` may import one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UPPER = {"enclave", "parent", "simulator"}


def _loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_importing_the_client_loads_neither_enclave_nor_parent() -> None:
    loaded = _loaded_after("import attestation.client, attestation.e2e")
    assert "attestation.client" in loaded and "attestation.e2e" in loaded
    assert [m for m in loaded if m.split(".")[0] in UPPER] == []


def test_the_client_seals_without_the_enclave_package() -> None:
    """The client half works on its own: seal a request to a fresh X25519 key."""
    loaded = _loaded_after(
        "from cryptography.hazmat.primitives import serialization\n"
        "from cryptography.hazmat.primitives.asymmetric import x25519\n"
        "from attestation.e2e import seal_request\n"
        "spki = x25519.X25519PrivateKey.generate().public_key().public_bytes(\n"
        "    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)\n"
        "sealed, opener = seal_request(spki, b'n' * 32, 'health', {})\n"
        "assert sealed and opener.request_id"
    )
    assert [m for m in loaded if m.split(".")[0] in UPPER] == []


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_no_attestation_module_imports_an_upper_layer() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path)
                                           if m.split(".")[0] in UPPER)
        for path in sorted((ROOT / "attestation").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
