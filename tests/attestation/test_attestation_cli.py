"""python -m attestation verify / inspect: exit codes, JSON contract, input formats."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from attestation_helpers import PCRS, Vector, sign

from attestation import TestPKI
from attestation._cli import build_parser, decode_input, main

ROOT = Path(__file__).resolve().parents[2]
VALID_KEYS = {
    "valid",
    "module_id",
    "timestamp",
    "digest",
    "pcrs",
    "public_key",
    "user_data",
    "nonce",
}


@pytest.fixture
def doc_file(pki: TestPKI, tmp_path: Path) -> Path:
    path = tmp_path / "doc.cbor"
    path.write_bytes(sign(pki, nonce=b"\x01\x02", user_data=b""))
    return path


@pytest.fixture
def root_file(pki: TestPKI, tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(pki.root_pem)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_json_valid(capsys, doc_file: Path, root_file: Path) -> None:
    code, out, _ = run(capsys, "verify", str(doc_file), "--root", str(root_file), "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) == VALID_KEYS
    assert result["valid"] is True
    assert result["pcrs"] == {str(i): v.hex() for i, v in PCRS.items()}
    assert result["nonce"] == "0102" and result["user_data"] == "" and result["public_key"] is None
    assert isinstance(result["timestamp"], int) and result["digest"] == "SHA384"
    assert out.count("\n") == 1  # exactly one object


def test_verify_json_rejected(capsys, doc_file: Path, root_file: Path) -> None:
    code, out, _ = run(capsys, "verify", str(doc_file), "--json")  # AWS root only
    assert code == 1
    assert json.loads(out) == {
        "valid": False,
        "error": {"code": "untrusted-root", "message": "cabundle[0] is not a trusted root"},
    }
    code, out, _ = run(
        capsys,
        "verify",
        str(doc_file),
        "--root",
        str(root_file),
        "--json",
        "--pcr",
        f"0={'00' * 48}",
    )
    assert code == 1 and json.loads(out)["error"]["code"] == "pcr-mismatch"


def test_verify_policy_flags(capsys, doc_file: Path, root_file: Path) -> None:
    base = ["verify", str(doc_file), "--root", str(root_file)]
    ok = [
        ["--pcr", f"0={PCRS[0].hex()}", "--pcr", f"15={PCRS[15].hex()}"],
        ["--nonce", "0102"],
        ["--user-data", ""],
        ["--max-age", "300"],
        ["--at", "document"],
    ]
    for flags in ok:
        assert run(capsys, *base, *flags)[0] == 0, flags
    rejected = {
        "nonce-mismatch": ["--nonce", "0103"],
        "user-data-mismatch": ["--user-data", "00"],
        "public-key-mismatch": ["--public-key", "00"],
        "expired": ["--at", "2999-01-01T00:00:00Z"],
        "not-yet-valid": ["--at", "2000-01-01T00:00:00+00:00"],
    }
    for expected, flags in rejected.items():
        code, out, _ = run(capsys, *base, *flags, "--json")
        assert code == 1 and json.loads(out)["error"]["code"] == expected, flags


def test_debug_needs_allow_debug(capsys, pki: TestPKI, tmp_path: Path, root_file: Path) -> None:
    path = tmp_path / "debug.cbor"
    path.write_bytes(sign(pki, pcrs={**PCRS, 0: bytes(48)}))
    base = ["verify", str(path), "--root", str(root_file), "--json"]
    code, out, _ = run(capsys, *base)
    assert code == 1 and json.loads(out)["error"]["code"] == "debug-enclave"
    assert run(capsys, *base, "--allow-debug")[0] == 0


def test_human_output(capsys, doc_file: Path, root_file: Path) -> None:
    code, out, _ = run(capsys, "verify", str(doc_file), "--root", str(root_file))
    assert code == 0 and out.startswith("VALID") and "nonce:" in out and "0102" in out
    code, out, _ = run(capsys, "verify", str(doc_file))
    assert code == 1 and out.startswith("REJECTED [untrusted-root]")


@pytest.mark.parametrize("encoding", ["raw", "hex", "base64", "base64url", "wrapped"])
def test_input_formats(capsys, monkeypatch, encoding: str, doc_file: Path, root_file: Path):
    raw = doc_file.read_bytes()
    text = {
        "raw": raw,
        "hex": raw.hex().encode() + b"\n",
        "base64": base64.b64encode(raw),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "wrapped": b"\n".join(
            base64.b64encode(raw)[i : i + 76] for i in range(0, len(raw) * 2, 76)
        ),
    }[encoding]
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(text)))
    code, out, _ = run(capsys, "verify", "-", "--root", str(root_file), "--json")
    assert code == 0, out
    assert decode_input(text) == raw


def test_garbage_input_is_rejected_not_crashed(capsys, tmp_path: Path) -> None:
    for content in (b"", b"hello world", b"\x00\xff" * 10, b"abc", "é".encode()):
        path = tmp_path / "junk"
        path.write_bytes(content)
        code, out, _ = run(capsys, "verify", str(path), "--json")
        assert code == 1 and json.loads(out)["error"]["code"] == "malformed"


def test_usage_and_io_errors_exit_2(capsys, doc_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a pem")
    cases = [
        ["verify", str(tmp_path / "missing.cbor")],
        ["verify", str(doc_file), "--root", str(tmp_path / "missing.pem")],
        ["verify", str(doc_file), "--root", str(bad)],
        ["verify", str(doc_file), "--at", "yesterday"],
        ["verify", str(doc_file), "--at", "2024-01-01T00:00:00"],  # no time zone
        ["verify", str(doc_file), "--pcr", "x=00"],
        ["verify", str(doc_file), "--pcr", "0=zz"],
        ["verify", str(doc_file), "--pcr", "0=00"],  # wrong PCR size
        ["verify", str(doc_file), "--pcr", f"0={'00' * 48}", "--pcr", f"0={'11' * 48}"],
        ["verify", str(doc_file), "--nonce", "xyz"],
        ["verify", str(doc_file), "--max-age", "-1"],
    ]
    for argv in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert out == "" and err.startswith("error:"), argv
    with pytest.raises(SystemExit) as exc:
        main(["verify"])  # argparse: missing FILE
    assert exc.value.code == 2
    capsys.readouterr()


def test_inspect_is_labelled_unverified(capsys, doc_file: Path) -> None:
    code, out, _ = run(capsys, "inspect", str(doc_file))
    assert code == 0 and out.startswith("*** UNVERIFIED") and "cabundle[0]" in out
    code, out, _ = run(capsys, "inspect", str(doc_file), "--json")
    result = json.loads(out)
    assert code == 0 and result["verified"] is False and "UNVERIFIED" in result["warning"]
    assert len(result["cabundle"]) == 4 and result["certificate"]["subject"]
    assert result["nonce"] == "0102"
    junk = doc_file.with_name("junk")
    junk.write_bytes(b"\x84\x01")
    assert run(capsys, "inspect", str(junk))[0] == 1


def test_pcrs_subcommand_is_registered_when_present(capsys, monkeypatch) -> None:
    fake = types.ModuleType("attestation._cli_pcrs")

    def register(subparsers) -> None:
        p = subparsers.add_parser("pcrs", help="compute PCRs")
        p.set_defaults(func=lambda args: print("pcrs ran") or 0)

    fake.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attestation._cli_pcrs", fake)
    import attestation

    monkeypatch.setattr(attestation, "_cli_pcrs", fake, raising=False)
    assert "pcrs" in build_parser().format_help()
    assert run(capsys, "pcrs") == (0, "pcrs ran\n", "")


def test_real_process_and_real_vector(vectors: list[Vector], tmp_path: Path) -> None:
    v = next(x for x in vectors if x.name == "base-2.cbor")
    path = tmp_path / "base-2.b64"
    path.write_bytes(base64.b64encode(v.data))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "attestation", "verify", str(path), "--json"]
    done = subprocess.run(
        [*cmd, "--at", "document"], capture_output=True, timeout=60, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["module_id"] == v.facts["module_id"]
    done = subprocess.run(cmd, capture_output=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "expired"
    done = subprocess.run([*cmd, "--at", "bogus"], capture_output=True, timeout=60, env=env)
    assert done.returncode == 2 and done.stdout == b""
