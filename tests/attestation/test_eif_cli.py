"""``python -m attestation pcrs``: measurements, PCR3/PCR4, verify-before-deploy comparisons."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from eif_helpers import CMDLINE, KERNEL, PCR0, PCR1, PCR2, RAMDISK0, RAMDISK1, signing_pair

from attestation import TestPKI
from attestation._cli import main
from attestation.eif import assemble_eif, compare_eif_with_document, read_eif
from attestation.pcr import pcr3_from_role_arn, pcr4_from_instance_id

ROOT = Path(__file__).resolve().parents[2]
UG_ARN = "arn:aws:iam::123456789012:role/Webserver"
UG_PCR3 = (
    "78fce75db17cd4e0a3fb8dad3ad128ca5e77edbb2b2c7f75329dccd99aa5f6ef"
    "4fc1f1a452e315b9e98f9e312e6921e6"
)
UG_INSTANCE = "i-1234567890abcdef0"
UG_PCR4 = (
    "08f996b5d43e047a9eb51e7f548bfee7e164fd7dc8f65541f2ac09d6545ac812"
    "719327281c401a67a10fcba87ae79ce0"
)


@pytest.fixture
def eif(tmp_path: Path) -> Path:
    path = tmp_path / "app.eif"
    path.write_bytes(assemble_eif(KERNEL, CMDLINE, [RAMDISK0, RAMDISK1]))
    return path


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["pcrs", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def test_ug_vectors() -> None:
    assert pcr3_from_role_arn(UG_ARN).hex() == UG_PCR3
    assert pcr4_from_instance_id(UG_INSTANCE).hex() == UG_PCR4


def test_eif_measurements(capsys, eif: Path) -> None:
    code, out, _ = run(capsys, "--eif", str(eif))
    assert code == 0
    assert out == {
        "Measurements": {
            "HashAlgorithm": "Sha384 { ... }",
            "PCR0": PCR0,
            "PCR1": PCR1,
            "PCR2": PCR2,
        }
    }


def test_role_arn_alone_and_instance_id_alone(capsys) -> None:
    code, out, _ = run(capsys, "--role-arn", UG_ARN)
    assert code == 0 and out["Measurements"] == {"HashAlgorithm": "Sha384 { ... }", "PCR3": UG_PCR3}
    code, out, _ = run(capsys, "--instance-id", UG_INSTANCE)
    assert (
        code == 0 and out["Measurements"]["PCR4"] == UG_PCR4 and "PCR3" not in out["Measurements"]
    )


def test_all_together_with_signed_eif(capsys, tmp_path: Path) -> None:
    pem, key = signing_pair()
    path = tmp_path / "signed.eif"
    path.write_bytes(
        assemble_eif(KERNEL, CMDLINE, [RAMDISK0], signing_certificate_pem=pem, signing_key=key)
    )
    code, out, _ = run(
        capsys, "--eif", str(path), "--role-arn", UG_ARN, "--instance-id", UG_INSTANCE
    )
    assert code == 0
    assert list(out["Measurements"]) == [
        "HashAlgorithm",
        "PCR0",
        "PCR1",
        "PCR2",
        "PCR3",
        "PCR4",
        "PCR8",
    ]


def test_bad_eif_is_exit_2_with_code(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.eif"
    bad.write_bytes(b".eif" + b"\x00" * 600)
    code, out, err = run(capsys, "--eif", str(bad))
    assert code == 2
    assert out["error"]["code"] == "bad-eif"
    assert "num_sections" in err


def test_crc_mismatch_and_ignore_crc(capsys, eif: Path) -> None:
    data = bytearray(eif.read_bytes())
    data[-1] ^= 0xFF
    eif.write_bytes(bytes(data))
    code, out, _ = run(capsys, "--eif", str(eif))
    assert code == 2 and "CRC mismatch" in out["error"]["message"]
    code, out, _ = run(capsys, "--eif", str(eif), "--ignore-crc")
    assert code == 0 and out["Measurements"]["PCR2"] != PCR2


def test_usage_errors(capsys, tmp_path: Path) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "--eif", str(tmp_path / "missing.eif"))[0] == 2
    assert run(capsys, "--role-arn", UG_ARN, "--check-doc", "x")[0] == 2
    assert run(capsys, "--instance-id", "i-é")[0] == 2


def test_check_measurements_match_and_mismatch(capsys, eif: Path, tmp_path: Path) -> None:
    good = tmp_path / "measurements.json"
    good.write_text(json.dumps(read_eif(eif).measurements()))
    code, out, _ = run(capsys, "--eif", str(eif), "--check-measurements", str(good))
    assert code == 0 and out["match"] is True and out["checked"] == ["PCR0", "PCR1", "PCR2"]

    other = tmp_path / "policy.json"
    other.write_text(json.dumps({"pcrs": {"0": "ab" * 48, "1": PCR1}}))
    code, out, err = run(capsys, "--eif", str(eif), "--check-measurements", str(other))
    assert code == 1 and out["match"] is False
    assert out["mismatches"] == [{"pcr": 0, "expected": "ab" * 48, "found": PCR0}]
    assert f"PCR0 mismatch: expected {'ab' * 48}, found {PCR0}" in err


def _document(pki: TestPKI, pcrs: dict[int, bytes]) -> bytes:
    full = {i: bytes(48) for i in range(16)}
    full.update({i: bytes([0x20 + i]) * 48 for i in (3, 4)})
    full.update(pcrs)
    return pki.sign_document(pcrs=full, module_id="i-0123456789abcdef0-enc0123456789abcdef")


def test_check_doc_match(capsys, pki: TestPKI, eif: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root_pem)
    doc = tmp_path / "doc.b64"
    doc.write_bytes(base64.b64encode(_document(pki, dict(read_eif(eif).pcrs))))
    code, out, _ = run(capsys, "--eif", str(eif), "--check-doc", str(doc), "--root", str(root))
    assert code == 0, out
    assert out["match"] is True and out["against"] == "attestation document"


def test_check_doc_mismatch_names_pcr(capsys, pki: TestPKI, eif: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root_pem)
    pcrs = dict(read_eif(eif).pcrs)
    pcrs[2] = b"\x07" * 48
    doc = tmp_path / "doc.cbor"
    doc.write_bytes(_document(pki, pcrs))
    code, out, err = run(capsys, "--eif", str(eif), "--check-doc", str(doc), "--root", str(root))
    assert code == 1
    assert out["mismatches"] == [{"pcr": 2, "expected": PCR2, "found": "07" * 48}]
    assert "PCR2 mismatch" in err
    # PCR3 from a role ARN is compared too when given
    code, out, _ = run(
        capsys,
        "--eif",
        str(eif),
        "--check-doc",
        str(doc),
        "--root",
        str(root),
        "--role-arn",
        UG_ARN,
    )
    assert code == 1 and {m["pcr"] for m in out["mismatches"]} == {2, 3}


def test_check_doc_untrusted_root_is_rejected(capsys, pki: TestPKI, eif: Path, tmp_path) -> None:
    doc = tmp_path / "doc.cbor"
    doc.write_bytes(_document(pki, dict(read_eif(eif).pcrs)))
    code, out, err = run(capsys, "--eif", str(eif), "--check-doc", str(doc))  # AWS root only
    assert code == 1
    assert out["match"] is False and out["error"]["code"] in {"untrusted-root", "bad-chain"}
    assert "document rejected" in err


def test_compare_eif_with_document_function(pki: TestPKI, eif: Path) -> None:
    doc = _document(pki, dict(read_eif(eif).pcrs))
    result = compare_eif_with_document(eif, doc, roots=[pki.root_certificate])
    assert result.matches and result.checked == (0, 1, 2)
    assert result.document is not None and result.document.pcrs[0].hex() == PCR0
    result = compare_eif_with_document(
        eif, doc, roots=[pki.root_certificate], instance_id=UG_INSTANCE
    )
    assert [m.index for m in result.mismatches] == [4]


def test_module_entry_point(eif: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "attestation", "pcrs", "--eif", str(eif)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Measurements"]["PCR0"] == PCR0
