"""TestPKI: documents and chain shaped like the real ones; save/load across processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from attestation_helpers import MODULE_ID, NOW, PCRS, sign
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import TestPKI, load_root_pem, parse_document, verify

REAL_KEY_ORDER = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]


def test_document_bytes_look_like_the_nsm(pki: TestPKI) -> None:
    data = sign(pki)
    assert data[:7] == bytes.fromhex("8444a1013822a0")  # untagged, {1:-35}, {}
    assert data[7] == 0x59  # payload bstr with a 2-byte length
    envelope = cbor2.loads(data)
    protected, unprotected, payload, signature = envelope
    assert protected == b"\xa1\x01\x38\x22" and unprotected == {}
    assert len(signature) == 96
    assert payload[0] == 0xBF and payload[-1] == 0xFF  # indefinite-length map
    fields = cbor2.loads(payload)
    assert list(fields) == REAL_KEY_ORDER
    assert fields["digest"] == "SHA384"
    assert fields["public_key"] is None and fields["user_data"] is None and fields["nonce"] is None
    assert cbor2.dumps("nonce") + b"\xf6" in payload  # nonce: null
    assert payload.index(cbor2.dumps("pcrs")) < payload.index(cbor2.dumps("certificate"))
    assert payload[payload.index(cbor2.dumps("pcrs")) + 5] == 0xB0  # definite map(16)


def test_flags_change_the_encoding(pki: TestPKI) -> None:
    assert sign(pki, tagged=True)[:3] == bytes.fromhex("d28444")
    definite = cbor2.loads(sign(pki, indefinite_map=False))[2]
    assert definite[0] == 0xA9


def test_chain_has_the_real_profile(pki: TestPKI) -> None:
    doc = parse_document(sign(pki, timestamp_ms=int(NOW.timestamp() * 1000)))
    certs = [x509.load_der_x509_certificate(d) for d in (*doc.cabundle, doc.certificate)]
    assert len(certs) == 5 and certs[0] == pki.root_certificate
    expected_path_len = [None, 2, 1, 0]
    for cert, path_len in zip(certs[:4], expected_path_len, strict=True):
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_len
        assert ku.critical and ku.value.key_cert_sign
    leaf = certs[4]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.content_commitment and not ku.key_cert_sign
    for cert in certs:
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        assert cert.signature_algorithm_oid._name == "ecdsa-with-SHA384"
    # Names: root first, then region, zone, instance, and the leaf named after the module.
    cns = [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in certs]
    assert cns[0] == "test.nitro-enclaves"
    assert cns[1].endswith(".us-east-1.test.nitro-enclaves")
    assert ".zonal.us-east-1." in cns[2]
    assert cns[3] == f"{pki.instance_id}.us-east-1.test.nitro-enclaves"
    assert cns[4] == f"{MODULE_ID}.us-east-1.test"
    # Validity: leaf ~3 h starting just before the document; root long-lived.
    assert leaf.not_valid_before_utc <= doc.datetime <= leaf.not_valid_after_utc
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(hours=2, minutes=59) <= life <= timedelta(hours=3, minutes=1)
    assert doc.datetime - leaf.not_valid_before_utc <= timedelta(seconds=4)
    root_life = certs[0].not_valid_after_utc - certs[0].not_valid_before_utc
    assert root_life > timedelta(days=365 * 29)


def test_leaf_is_reused_for_a_while_then_renewed(pki: TestPKI) -> None:
    t0 = int((NOW - timedelta(hours=10)).timestamp() * 1000)
    first, second = "i-aaaaaaaaaaaaaaaaa-enc1", "i-aaaaaaaaaaaaaaaaa-enc2"
    raws = [
        sign(pki, module_id=first, timestamp_ms=t0),
        sign(pki, module_id=first, timestamp_ms=t0 + 60_000),
        sign(pki, module_id=first, timestamp_ms=t0 + 3_600_000),
        sign(pki, module_id=second, timestamp_ms=t0),
    ]
    a, b, c, other = (parse_document(r) for r in raws)
    assert a.certificate == b.certificate != c.certificate
    assert other.certificate != a.certificate
    for raw in raws:
        verify(raw, roots=[pki.root_certificate], at="document")


def test_intermediates_are_reissued_for_distant_times() -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    pki = TestPKI.generate(not_before=start)
    times = [start + timedelta(days=d) for d in (0, 3, 30, 400, 2)]
    for when in times:
        data = pki.sign_document(
            pcrs=PCRS, module_id=MODULE_ID, timestamp_ms=int(when.timestamp() * 1000)
        )
        verify(data, roots=[pki.root_certificate], at="document")
        verify(data, roots=[pki.root_certificate], at=when + timedelta(hours=2))
    with pytest.raises(ValueError, match="root"):
        pki.sign_document(pcrs=PCRS, module_id=MODULE_ID, timestamp_ms=1_000)


def test_sign_document_refuses_what_the_nsm_could_not_produce(pki: TestPKI) -> None:
    bad = [
        {"pcrs": {}},
        {"pcrs": {32: bytes(48)}},
        {"pcrs": {0: bytes(47)}},
        {"module_id": ""},
        {"nonce": b"x" * 1025},
        {"user_data": "text"},
        {"timestamp_ms": 0},
        {"timestamp_ms": 1.5},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            sign(pki, **kwargs)
    with pytest.raises(ValueError):
        TestPKI.generate(not_before=datetime(2024, 1, 1))  # naive


def test_save_and_load_round_trip(pki: TestPKI, tmp_path: Path) -> None:
    pki.save(tmp_path)
    assert (tmp_path / "root.pem").read_bytes() == pki.root_pem
    for key_file in tmp_path.glob("*.key.pem"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    loaded = TestPKI.load(tmp_path)
    assert loaded.root_certificate == pki.root_certificate
    assert loaded.instance_id == pki.instance_id and loaded.region == pki.region
    a = parse_document(sign(pki))
    b = parse_document(sign(loaded))
    assert a.cabundle == b.cabundle  # same CAs; each process makes its own leaves
    verify(sign(loaded), roots=[load_root_pem((tmp_path / "root.pem").read_bytes())])


def test_another_process_signs_with_the_saved_pki(pki: TestPKI, tmp_path: Path) -> None:
    pki.save(tmp_path / "pki")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from attestation import TestPKI
        pki = TestPKI.load(sys.argv[1])
        doc = pki.sign_document(pcrs={0: b"\\x01" * 48}, module_id="i-0abc-enc1", nonce=b"hi")
        Path(sys.argv[2]).write_bytes(doc)
        """
    )
    out = tmp_path / "doc.cbor"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "pki"), str(out)],
        check=True,
        timeout=60,
        env=env,
    )
    doc = verify(out.read_bytes(), roots=[pki.root_certificate])
    assert doc.nonce == b"hi" and doc.module_id == "i-0abc-enc1"
