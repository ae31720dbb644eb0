"""Start-up: ``python -m attestation verify`` imports what verifying needs and nothing more.

Each case runs a fresh interpreter (a real process, as a caller shelling out would) and looks at
``sys.modules`` after the command: the other subcommands' modules (and the network, EIF and
TestPKI code they pull in) must not be there. bench/startup.py measures what this saves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from attestation_helpers import sign

from attestation import TestPKI
from attestation._cli import _terminal_columns

ROOT = Path(__file__).resolve().parents[2]
NOT_FOR_VERIFY = (
    "attestation._cli_connect",
    "attestation._cli_pcrs",
    "attestation._cli_provenance",
    "attestation.connect",
    "attestation.eif",
    "attestation.provenance",
    "attestation.testpki",
    "http.client",
    "ssl",
    "shutil",  # argparse's help formatter imports it (and bz2, lzma) for the terminal width
)
RUN_TIMEOUT_S = 60

_PROBE = """
import io, json, sys, contextlib
from attestation._cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def _modules_after(*argv: str) -> tuple[int, str, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    result = json.loads(proc.stdout)
    return result["code"], result["out"], set(result["modules"])


@pytest.fixture
def doc_and_root(pki: TestPKI, tmp_path: Path) -> tuple[Path, Path]:
    doc, root = tmp_path / "doc.cbor", tmp_path / "root.pem"
    doc.write_bytes(sign(pki))
    root.write_bytes(pki.root_pem)
    return doc, root


def test_verify_imports_no_other_subcommand(doc_and_root: tuple[Path, Path]) -> None:
    doc, root = doc_and_root
    code, out, modules = _modules_after("verify", str(doc), "--root", str(root), "--at", "document")
    assert code == 0 and out.startswith("VALID"), out
    assert "attestation.verifier" in modules  # the probe does see what verify used
    assert sorted(modules.intersection(NOT_FOR_VERIFY)) == []


def test_inspect_imports_no_other_subcommand(doc_and_root: tuple[Path, Path]) -> None:
    doc, _ = doc_and_root
    code, out, modules = _modules_after("inspect", str(doc))
    assert code == 0 and "UNVERIFIED" in out
    assert sorted(modules.intersection(NOT_FOR_VERIFY)) == []


def test_chosen_subcommand_alone_is_imported() -> None:
    code, _, modules = _modules_after("pcrs", "--role-arn", "arn:aws:iam::123456789012:role/r")
    assert code == 0
    assert "attestation._cli_pcrs" in modules
    assert "attestation._cli_connect" not in modules and "http.client" not in modules


def test_help_lists_every_subcommand() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "attestation", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    for name in ("verify", "inspect", "pcrs", "connect", "provenance"):
        assert f"\n    {name}" in proc.stdout, proc.stdout


def test_unknown_subcommand_lists_the_choices() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "attestation", "nope"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 2
    assert "invalid choice: 'nope'" in proc.stderr and "provenance" in proc.stderr


def test_importing_the_package_loads_no_cryptography() -> None:
    probe = "import sys, attestation; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", "import json; " + probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    modules = set(json.loads(proc.stdout))
    assert not {m for m in modules if m.startswith(("cryptography", "cbor2", "attestation."))}


@pytest.mark.parametrize("columns", [None, "", "0", "x", "57", "200"])
def test_help_width_is_shutils(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    import shutil

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _terminal_columns() == shutil.get_terminal_size().columns
