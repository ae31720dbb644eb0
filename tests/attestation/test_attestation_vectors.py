"""The real AWS documents of ../shared/vectors: accepted at their own time, refused otherwise."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from attestation_helpers import Vector
from cryptography.hazmat.primitives.serialization import Encoding

from attestation import (
    AWS_NITRO_ROOT_G1,
    AttestationError,
    BadSignatureError,
    DebugEnclaveError,
    ExpiredError,
    Policy,
    Verifier,
    load_root_pem,
    parse_document,
    verify,
)
from attestation._chain import ChainValidator, make_roots

pytestmark = pytest.mark.vectors


def test_every_genuine_document_verifies_at_its_own_time(genuine: list[Vector]) -> None:
    assert len(genuine) >= 20
    for v in genuine:
        doc = verify(v.data, Policy(allow_debug=True), at="document")
        assert doc.timestamp == v.facts["timestamp_ms"], v.name
        assert doc.module_id == v.facts["module_id"], v.name


def test_debug_documents_are_refused_unless_allowed(genuine: list[Vector]) -> None:
    debug = [v for v in genuine if v.debug]
    production = [v for v in genuine if not v.debug]
    assert debug and production
    for v in debug:
        with pytest.raises(DebugEnclaveError):
            verify(v.data, at="document")  # policy=None still refuses debug mode
        with pytest.raises(DebugEnclaveError):
            verify(v.data, Policy(pcrs={4: v.facts["all_pcrs"]["4"]}), at="document")
    for v in production:
        verify(v.data, at="document")


def test_every_document_is_expired_today(genuine: list[Vector]) -> None:
    for v in genuine:
        with pytest.raises(ExpiredError):
            verify(v.data, Policy(allow_debug=True))


def test_forged_document_is_bad_signature_whatever_the_time(forged: list[Vector]) -> None:
    assert [v.name for v in forged] == ["eternis-3.cbor"]
    for v in forged:
        for at in ("document", None, v.when):
            with pytest.raises(BadSignatureError):
                # A forged document is never described by its policy (PCRs wrong here too).
                verify(v.data, Policy(pcrs={5: "11" * 48}, allow_debug=True), at=at)


def test_parsed_fields_match_the_manifest(vectors: list[Vector]) -> None:
    for v in vectors:
        f = v.facts
        doc = parse_document(v.data)
        assert doc.module_id == f["module_id"]
        assert doc.timestamp == f["timestamp_ms"]
        assert doc.digest == f["digest"]
        assert {str(i): p.hex() for i, p in doc.pcrs.items()} == f["all_pcrs"]
        for name in ("public_key", "user_data", "nonce"):
            value = getattr(doc, name)
            assert (value.hex() if value is not None else None) == f[f"{name}_hex"], (v.name, name)
        assert len(doc.cabundle) == f["cabundle_len"]
        assert doc.cabundle[0] == AWS_NITRO_ROOT_G1.public_bytes(Encoding.DER)
        assert doc.is_debug == v.debug
        assert len(doc.signature) == 96
        assert doc.protected == bytes.fromhex(f["protected_header_hex"])
        indefinite = f["payload_encoding"].startswith("indefinite")
        assert (doc.payload[0] == 0xBF) == indefinite


def test_empty_user_data_is_present_and_empty(vectors: list[Vector]) -> None:
    fc2 = next(v for v in vectors if v.name == "fastcrypto-2.cbor")
    doc = parse_document(fc2.data)
    assert doc.user_data == b""
    verify(fc2.data, Policy(user_data=b""), at="document")
    with pytest.raises(AttestationError) as err:
        verify(fc2.data, Policy(user_data=b"\x00"), at="document")
    assert err.value.code == "user-data-mismatch"


def test_policy_on_real_documents(genuine: list[Vector]) -> None:
    v = next(x for x in genuine if x.name == "nitriding-4.cbor")
    pcrs = {int(k): h for k, h in v.facts["all_pcrs"].items()}
    nonce = bytes.fromhex(v.facts["nonce_hex"])
    verify(v.data, Policy(pcrs=pcrs, nonce=nonce, max_age=timedelta(minutes=5)), at=v.when)
    verify(
        v.data, Policy(image_sha384=pcrs[0], any_of=[{1: "00" * 48}, {1: pcrs[1]}]), at="document"
    )
    with pytest.raises(AttestationError) as err:
        verify(v.data, Policy(pcrs={0: "00" * 48}), at="document")
    assert err.value.code == "pcr-mismatch"
    assert err.value.expected == {0: "00" * 48}
    assert err.value.found == {0: pcrs[0]}


def test_verification_at_an_explicit_time_inside_and_outside_the_leaf(
    genuine: list[Vector],
) -> None:
    v = next(x for x in genuine if x.name == "base-2.cbor")
    leaf_nb = datetime.fromisoformat(v.facts["leaf_not_before"])
    leaf_na = datetime.fromisoformat(v.facts["leaf_not_after"])
    verify(v.data, at=leaf_nb)
    verify(v.data, at=leaf_na)
    with pytest.raises(AttestationError) as err:
        verify(v.data, at=leaf_nb - timedelta(seconds=1))
    assert err.value.code == "not-yet-valid"
    with pytest.raises(AttestationError) as err:
        verify(v.data, at=leaf_na + timedelta(seconds=1))
    assert err.value.code == "expired"


def _regions(v: Vector) -> dict[str, tuple[int, int]]:
    """Byte ranges of the interesting parts of a raw document."""
    doc = parse_document(v.data)
    data = v.data
    out: dict[str, tuple[int, int]] = {}

    def put(name: str, needle: bytes) -> None:
        at = data.find(needle)
        assert at >= 0, name
        out[name] = (at, at + len(needle))

    put("protected", doc.protected)
    put("signature", doc.signature)
    put("module_id", doc.module_id.encode())
    put("timestamp", b"timestamp")
    put("pcr0", doc.pcrs[0])
    put("pcr4", doc.pcrs[4])
    put("certificate", doc.certificate)
    for i, cert in enumerate(doc.cabundle):
        put(f"cabundle[{i}]", cert)
    for name in ("public_key", "user_data", "nonce"):
        value = getattr(doc, name)
        if value:
            put(name, value)
    out["envelope"] = (0, 8)
    return out


def test_one_flipped_byte_in_any_region_is_refused(genuine: list[Vector]) -> None:
    verifier = Verifier()
    for v in genuine:
        original = parse_document(v.data)
        for name, (start, end) in _regions(v).items():
            for offset in {start, (start + end) // 2, end - 1}:
                mutated = bytearray(v.data)
                mutated[offset] ^= 0x01
                try:
                    doc = verifier.verify(bytes(mutated), Policy(allow_debug=True), at="document")
                except AttestationError:
                    continue
                # Only acceptable if the signed parts are untouched (cannot happen here).
                assert (doc.protected, doc.payload, doc.signature) == (
                    original.protected,
                    original.payload,
                    original.signature,
                ), f"{v.name}: flip in {name} at {offset} still verified"


def test_every_byte_of_one_document_matters(genuine: list[Vector]) -> None:
    v = next(x for x in genuine if x.name == "base-2.cbor")
    verifier = Verifier()
    verifier.verify(v.data, at="document")
    for offset in range(0, len(v.data), 3):
        mutated = bytearray(v.data)
        mutated[offset] ^= 0x80
        with pytest.raises(AttestationError):
            verifier.verify(bytes(mutated), at="document")


def test_chain_check_alone_refuses_any_flipped_certificate_byte(genuine: list[Vector]) -> None:
    """The signature catches these first; the chain must catch them on its own too."""
    v = next(x for x in genuine if x.name == "eternis-2.cbor")
    doc = parse_document(v.data)
    roots = make_roots([AWS_NITRO_ROOT_G1])
    at = doc.datetime.timestamp()
    chain = ChainValidator()
    chain.validate(chain.leaf_key(doc.certificate)[:2], doc.cabundle, roots, at)
    certs = [*doc.cabundle, doc.certificate]
    for index, der in enumerate(certs):
        for offset in range(0, len(der), 5):
            flipped = bytearray(der)
            flipped[offset] ^= 0x04
            mutated = list(certs)
            mutated[index] = bytes(flipped)
            with pytest.raises(AttestationError):
                leaf = chain.leaf_key(mutated[-1])[:2]
                chain.validate(leaf, mutated[:-1], roots, at)


def test_pinned_root_is_the_aws_root(vectors_dir) -> None:
    der = AWS_NITRO_ROOT_G1.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == (
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    )
    shipped = load_root_pem((vectors_dir / "nitro-root-g1.pem").read_bytes())
    assert shipped == AWS_NITRO_ROOT_G1
    assert AWS_NITRO_ROOT_G1.not_valid_after_utc > datetime.now(UTC)
