"""Issue 9 items 9, 11 and 12: max_age at the document's time, oversized CLI input, NitroTPM."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from attestation_helpers import NOW, PCRS, sign

from attestation import (
    MalformedError,
    NitroTpmDocumentError,
    Policy,
    PolicyError,
    TestPKI,
    Verifier,
    parse_document,
    verify,
)
from attestation._cli import MAX_INPUT_SIZE, main

TPM_MODULE_ID = "i-0123456789abcdef0-tpm0123456789abcdef"


def ms(days: float) -> int:
    return int((NOW - timedelta(days=days)).timestamp() * 1000)


# -- item 9: max_age cannot be checked at the document's own time ---------------------------------


def test_max_age_at_document_time_is_an_invalid_policy(pki: TestPKI) -> None:
    old = sign(pki, timestamp_ms=ms(1 / 12))  # 2 h old: passes max_age=5min at its own time
    roots = [pki.root_certificate]
    with pytest.raises(PolicyError) as err:
        verify(old, Policy(max_age=timedelta(minutes=5)), roots=roots, at="document")
    assert err.value.code == "invalid-policy"
    with pytest.raises(PolicyError):
        Verifier(roots).verify(old, Policy(max_age=timedelta(days=9)), at="document")
    # Without max_age, or at an explicit time, nothing changes.
    verify(old, Policy(pcrs={0: PCRS[0]}), roots=roots, at="document")
    with pytest.raises(Exception) as stale:
        verify(old, Policy(max_age=timedelta(minutes=5)), roots=roots)
    assert getattr(stale.value, "code", None) == "stale"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_max_age_with_at_document_is_usage(capsys, pki: TestPKI, tmp_path: Path) -> None:
    doc, root = tmp_path / "doc.cbor", tmp_path / "root.pem"
    doc.write_bytes(sign(pki, timestamp_ms=ms(1 / 12)))
    root.write_bytes(pki.root_pem)
    base = ["verify", str(doc), "--root", str(root), "--max-age", "300", "--at", "document"]
    for extra in ([], ["--json"]):
        code, out, err = _run(capsys, *base, *extra)
        assert code == 2 and out == "" and "max-age" in err


# -- item 11: an oversized input is a rejected document -------------------------------------------


@pytest.mark.parametrize("size", [MAX_INPUT_SIZE + 1, 8 << 20])
def test_oversized_input_is_malformed_json_exit_1(capsys, tmp_path: Path, size: int) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"0" * size)
    code, out, err = _run(capsys, "verify", str(big), "--json")
    assert code == 1 and err == ""
    result = json.loads(out)
    assert result["valid"] is False and result["error"]["code"] == "malformed"
    code, out, _ = _run(capsys, "verify", str(big))
    assert code == 1 and out.startswith("REJECTED [malformed]")
    code, out, _ = _run(capsys, "inspect", str(big), "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "malformed"


def test_unreadable_files_stay_exit_2(capsys, tmp_path: Path) -> None:
    code, out, err = _run(capsys, "verify", str(tmp_path / "missing"), "--json")
    assert code == 2 and out == "" and err.startswith("error:")
    code, out, err = _run(capsys, "verify", str(tmp_path), "--json")  # a directory
    assert code == 2 and out == ""


# -- item 12: a NitroTPM document is named for what it is -----------------------------------------


def test_nitrotpm_document_gets_its_own_code(pki: TestPKI, capsys, tmp_path: Path) -> None:
    tpm = pki.sign_document(pcrs=PCRS, module_id=TPM_MODULE_ID, nitrotpm=True)
    with pytest.raises(NitroTpmDocumentError) as err:
        verify(tpm, roots=[pki.root_certificate])
    assert err.value.code == "nitrotpm-document"
    assert "NitroTPM" in err.value.message and "not a Nitro Enclaves" in err.value.message
    assert isinstance(err.value, MalformedError)  # still "not an enclave document"
    path = tmp_path / "tpm.cbor"
    path.write_bytes(tpm)
    code, out, _ = _run(capsys, "verify", str(path), "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "nitrotpm-document"
    # nitrotpm_pcrs names it whatever the module id; an enclave-shaped document is unchanged.
    with pytest.raises(NitroTpmDocumentError):
        parse_document(pki.sign_document(pcrs=PCRS, module_id="i-0aa-enc0bb", nitrotpm=True))
    assert parse_document(pki.sign_document(pcrs=PCRS, module_id="i-0aa-enc0bb")).pcrs


def test_empty_fields_stay_valid_and_distinct_from_absent(pki: TestPKI) -> None:
    roots = [pki.root_certificate]
    empty = verify(sign(pki, public_key=b"", user_data=b""), roots=roots)
    absent = verify(sign(pki), roots=roots)
    assert empty.public_key == b"" and empty.user_data == b""
    assert absent.public_key is None and absent.user_data is None
    verify(sign(pki, user_data=b""), Policy(user_data=b""), roots=roots)
    with pytest.raises(Exception) as err:
        verify(sign(pki), Policy(user_data=b""), roots=roots)
    assert getattr(err.value, "code", None) == "user-data-mismatch"
