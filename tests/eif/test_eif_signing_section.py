"""parent.eif.signing writes the section with attestation.eif_signature and reads it back: a
signer whose output is not a signature by the certificate's key is ``bad-signing-key``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from eif_build_helpers import signing_pair

from attestation.eif_signature import read_section
from parent.eif import EifBuildError
from parent.eif.signing import LocalSigner, signature_section

PCR0 = bytes(range(48))


@dataclass
class _Garbage:
    certificate_pem: bytes
    output: bytes

    def sign_der(self, message: bytes) -> bytes:
        return self.output


def test_a_local_signer_writes_a_section_that_reads_back(tmp_path: Path) -> None:
    signer = LocalSigner.from_files(*signing_pair(tmp_path))
    section = signature_section(signer, PCR0)
    assert read_section(section, PCR0).signature_check
    assert signature_section(signer, PCR0) == section  # RFC 6979: deterministic


@pytest.mark.parametrize(
    "output",
    [
        b"not DER",
        bytes.fromhex("3006020101020101"),  # r = s = 1: DER, but not a signature of the key
        bytes.fromhex("3038023301") + bytes(50) + bytes.fromhex("020101"),  # r wider than P-384
    ],
)
def test_a_signer_returning_no_valid_signature_is_bad_signing_key(
    tmp_path: Path, output: bytes
) -> None:
    signer = LocalSigner.from_files(*signing_pair(tmp_path))
    with pytest.raises(EifBuildError) as info:
        signature_section(_Garbage(signer.certificate_pem, output), PCR0)
    assert info.value.code == "bad-signing-key"
