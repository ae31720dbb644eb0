"""Signed EIFs (PCR8): the section nitro-cli's sign-eif writes, verified by pycose and by our
reader; hostile signature sections stay bad-eif."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from eif_build_helpers import SIMPLE_ROOTFS, make_blobs, make_rootfs, run_cli, signing_pair

from attestation.eif import SectionType, build_eif, read_eif
from attestation.errors import EifError
from attestation.pcr import extend
from parent.eif import BuildInputs, EifBuildError, build
from parent.eif.signing import LocalSigner

CMD = '["/app/main.py"]'


def _signed(
    tmp: Path, name: str = "app.eif", kernel: bytes = b"KERNEL"
) -> tuple[Path, Path, Path, dict]:
    blobs = make_blobs(tmp / "blobs", kernel=kernel)
    rootfs = make_rootfs(tmp / "rootfs.tar", SIMPLE_ROOTFS)
    key, cert = signing_pair(tmp) if not (tmp / "signer.key").exists() else (
        tmp / "signer.key", tmp / "signer.crt",
    )  # fmt: skip
    out = tmp / name
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(out), "--cmd", CMD, "--signing-key", str(key), "--signing-cert", str(cert),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, key, cert, json.loads(done.stdout)


def _section(path: Path, kind: SectionType) -> bytes:
    image = read_eif(path)
    raw = path.read_bytes()
    (sec,) = [s for s in image.sections if s.type is kind]
    return raw[sec.data_offset : sec.end]


def test_pcr8_is_the_extend_of_the_certificate_der_hash(tmp_path: Path) -> None:
    import hashlib

    out, _key, cert, printed = _signed(tmp_path)
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    expected = extend(bytes(48), hashlib.sha384(der).digest())
    assert printed["Measurements"]["PCR8"] == expected.hex()
    image = read_eif(out)
    assert image.pcrs[8] == expected
    assert image.crc_ok and image.signing is not None
    assert image.signing.signature_check, image.signing.problem


def test_signature_section_is_sign_eif_shaped_and_verifies_with_pycose(tmp_path: Path) -> None:
    from pycose.keys import EC2Key
    from pycose.messages import Sign1Message

    out, _key, cert, printed = _signed(tmp_path)
    entries = cbor2.loads(_section(out, SectionType.SIGNATURE))
    assert isinstance(entries, list) and len(entries) == 1
    entry = entries[0]
    assert list(entry) == ["signing_certificate", "signature"]
    # serde Vec<u8>: arrays of uint8, not byte strings
    assert isinstance(entry["signing_certificate"], list)
    assert isinstance(entry["signature"], list)
    assert bytes(entry["signing_certificate"]) == cert.read_bytes()
    cose = bytes(entry["signature"])
    assert cose[0] == 0x84  # untagged COSE_Sign1
    protected, unprotected, payload, signature = cbor2.loads(cose)
    assert cbor2.loads(protected) == {1: -35} and unprotected == {} and len(signature) == 96
    body = cbor2.loads(payload)
    assert list(body) == ["register_index", "register_value"]
    assert body["register_index"] == 0
    assert bytes(body["register_value"]).hex() == printed["Measurements"]["PCR0"]
    message = Sign1Message.from_cose_obj(list(cbor2.loads(cose)), True)  # untagged
    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message.key = EC2Key.from_pem_public_key(pem.decode())
    assert message.verify_signature()


def test_signed_builds_are_reproducible_too(tmp_path: Path) -> None:
    first, *_ = _signed(tmp_path, "a.eif")
    second, *_ = _signed(tmp_path, "b.eif")
    assert first.read_bytes() == second.read_bytes()


def test_signing_changes_no_image_pcr(tmp_path: Path) -> None:
    out, *_ = _signed(tmp_path)
    blobs, rootfs = tmp_path / "blobs", tmp_path / "rootfs.tar"
    inputs = BuildInputs(blobs, rootfs, ["/app/main.py"], epoch=1_700_000_000)  # as run_cli
    unsigned = build(inputs, tmp_path / "u.eif")
    signed = read_eif(out).pcrs
    assert all(unsigned.pcrs[i] == signed[i] for i in (0, 1, 2))
    assert 8 not in unsigned.pcrs


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    key, _ = signing_pair(tmp_path, "one")
    _, cert = signing_pair(tmp_path, "two")
    with pytest.raises(EifBuildError) as info:
        LocalSigner.from_files(key, cert)
    assert info.value.code == "bad-signing-key"


def test_a_p256_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "p256.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    _, cert = signing_pair(tmp_path)
    with pytest.raises(EifBuildError) as info:
        LocalSigner.from_files(path, cert)
    assert info.value.code == "bad-signing-key"


def _resectioned(out: Path, signature: bytes) -> bytes:
    image = read_eif(out)
    raw = out.read_bytes()
    sections = []
    for sec in image.sections:
        data = raw[sec.data_offset : sec.end]
        sections.append((sec.type, signature if sec.type is SectionType.SIGNATURE else data))
    return build_eif(sections)


@pytest.mark.parametrize(
    "signature",
    [
        b"\xff\x00garbage",
        cbor2.dumps([]),
        cbor2.dumps([{"signing_certificate": [1, 2, 3], "signature": [0]}]),
        cbor2.dumps([{"signing_certificate": [300], "signature": [0]}]),
        cbor2.dumps({"signing_certificate": "x"}),
        b"\x9f" * 40000,  # larger than the 32 KiB limit
    ],
)
def test_a_hostile_signature_section_stays_bad_eif(tmp_path: Path, signature: bytes) -> None:
    out, *_ = _signed(tmp_path)
    hostile = tmp_path / "hostile.eif"
    hostile.write_bytes(_resectioned(out, signature))
    with pytest.raises(EifError) as info:
        read_eif(hostile)
    assert info.value.code == "bad-eif"
    done = run_cli("attestation", "pcrs", "--eif", str(hostile))
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_a_signature_over_another_pcr0_fails_the_signature_check(tmp_path: Path) -> None:
    out, *_ = _signed(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    shutil.copy(tmp_path / "signer.key", other_dir / "signer.key")
    shutil.copy(tmp_path / "signer.crt", other_dir / "signer.crt")
    other, *_ = _signed(other_dir, kernel=b"OTHER")
    swapped = tmp_path / "swapped.eif"
    swapped.write_bytes(_resectioned(out, _section(other, SectionType.SIGNATURE)))
    image = read_eif(swapped)
    assert image.signing is not None and not image.signing.signature_check
    assert image.signing.problem == "signed PCR0 differs from the image's PCR0"
    assert image.pcrs[8] == read_eif(out).pcrs[8]  # same certificate, so the same PCR8


def test_gnu_cpio_lists_the_ramdisks_when_installed(tmp_path: Path) -> None:
    from eif_build_helpers import parse_newc, ramdisks

    if shutil.which("cpio") is None:
        pytest.skip("GNU cpio is not installed (apt-get install cpio)")
    out, *_ = _signed(tmp_path)
    for disk in ramdisks(out.read_bytes()):
        listed = (
            subprocess.run(
                ["cpio", "-it", "--quiet"], input=disk, capture_output=True, timeout=60, check=True
            )
            .stdout.decode()
            .split()
        )
        assert listed == [m.name for m in parse_newc(disk)]
