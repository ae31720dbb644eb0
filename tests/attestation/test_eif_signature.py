"""The EIF signature section (attestation.eif_signature): strict CBOR under named limits, one
COSE_Sign1 implementation, and interop with pycose, an independent COSE implementation.

Adversarial cases: tagged, duplicate-key, odd-key, deep and oversize sections, COSE messages
and payloads each end in a typed ``bad-eif``, never a traceback."""

from __future__ import annotations

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eif_helpers import CMDLINE, KERNEL, RAMDISK0, signing_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation._cose import ALG_ES384, ECDSA_ALGORITHMS, encode_sign1, protected_header
from attestation.eif import SectionType, build_eif, read_eif, sign_pcr0
from attestation.eif_signature import (
    COSE_CBOR,
    MAX_SECTION_SIZE,
    SECTION_CBOR,
    build_section,
    pcr0_payload,
    read_section,
)
from attestation.errors import EifError
from attestation.pcr import image_pcrs

PEM, KEY = signing_pair()
PCR0 = image_pcrs(KERNEL, CMDLINE, [RAMDISK0])[0]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sign_der(message: bytes) -> bytes:
    return KEY.sign(message, ECDSA_ALGORITHMS[ALG_ES384].ecdsa)


def _section(cose: bytes, pem: bytes = PEM) -> bytes:
    return cbor2.dumps([{"signing_certificate": list(pem), "signature": list(cose)}])


def _good_cose() -> bytes:
    entry = cbor2.loads(build_section(PCR0, PEM, _sign_der))[0]
    return bytes(entry["signature"])


GOOD_SECTION = build_section(PCR0, PEM, _sign_der)


def _bad_eif(raw: bytes, match: str | None = None) -> EifError:
    with pytest.raises(EifError, match=match) as info:
        read_section(raw, PCR0)
    assert info.value.code == "bad-eif" and info.value.kind
    return info.value


def test_a_built_section_reads_back_and_in_a_whole_eif() -> None:
    info = read_section(build_section(PCR0, PEM, _sign_der), PCR0)
    assert info.signature_check and info.problem is None
    der = x509.load_pem_x509_certificate(PEM).public_bytes(serialization.Encoding.DER)
    assert info.certificate_der == der
    eif = build_eif(
        [
            (SectionType.KERNEL, KERNEL),
            (SectionType.CMDLINE, CMDLINE),
            (SectionType.RAMDISK, RAMDISK0),
            (SectionType.SIGNATURE, sign_pcr0(PCR0, PEM, KEY)),
        ]
    )
    image = read_eif(eif)
    assert image.signing is not None and image.signing.signature_check


def test_a_tagged_cose_sign1_is_read_and_any_other_tag_is_refused() -> None:
    cose = _good_cose()
    assert read_section(_section(b"\xd2" + cose), PCR0).signature_check  # tag 18: COSE_Sign1
    for tag in (55799, 24, 61, 98):  # self-describe, embedded CBOR, CWT, COSE_Sign
        _bad_eif(_section(cbor2.dumps(cbor2.CBORTag(tag, cbor2.loads(cose)))), "tag")


def test_tags_anywhere_in_the_section_are_refused() -> None:
    cose = list(_good_cose())
    for section in (
        cbor2.dumps(cbor2.CBORTag(55799, [{"signing_certificate": list(PEM), "signature": cose}])),
        cbor2.dumps([{"signing_certificate": cbor2.CBORTag(24, PEM), "signature": cose}]),
        cbor2.dumps([{"signing_certificate": list(PEM), "signature": cose, "x": 2**70}]),  # bignum
    ):
        _bad_eif(section, "tag|depth")


def test_tags_in_the_protected_header_or_payload_are_refused() -> None:
    protected = protected_header(ALG_ES384)
    bignum_alg = cbor2.dumps({1: cbor2.CBORTag(3, b"\x22")})  # -35 as a negative bignum
    tagged_payload = cbor2.dumps(cbor2.CBORTag(24, pcr0_payload(PCR0)))
    for cose in (
        encode_sign1(bignum_alg, pcr0_payload(PCR0), bytes(96)),
        encode_sign1(protected, tagged_payload, bytes(96)),
    ):
        _bad_eif(_section(cose), "tag")


def test_duplicate_keys_are_refused_at_every_level() -> None:
    cose = list(_good_cose())
    pem = cbor2.dumps(list(PEM))
    entry = b"\xa3" + cbor2.dumps("signing_certificate") + pem
    entry += cbor2.dumps("signature") + cbor2.dumps(cose) + cbor2.dumps("signature") + b"\x80"
    _bad_eif(b"\x81" + entry, "[Dd]uplicate")
    protected = b"\xa2\x01\x38\x22\x01\x38\x22"  # {1: -35, 1: -35}
    _bad_eif(_section(encode_sign1(protected, pcr0_payload(PCR0), bytes(96))), "[Dd]uplicate")
    payload = b"\xa3" + cbor2.dumps("register_index") + b"\x00"
    payload += cbor2.dumps("register_value") + cbor2.dumps(list(PCR0))
    payload += cbor2.dumps("register_index") + b"\x00"
    cose_dup = encode_sign1(protected_header(ALG_ES384), payload, bytes(96))
    _bad_eif(_section(cose_dup), "[Dd]uplicate")


def test_odd_keys_are_refused() -> None:
    cose = list(_good_cose())
    for key in (1, b"signature", 1.5, None):
        _bad_eif(cbor2.dumps([{"signing_certificate": list(PEM), "signature": cose, key: 0}]))
    header = cbor2.dumps({1: -35, 1.5: 0})
    _bad_eif(_section(encode_sign1(header, pcr0_payload(PCR0), bytes(96))))


def test_oversize_and_deep_sections_are_refused_by_their_named_limits() -> None:
    assert SECTION_CBOR.max_bytes == MAX_SECTION_SIZE == COSE_CBOR.max_bytes
    filler = list(bytes(MAX_SECTION_SIZE))
    big = cbor2.dumps([{"signing_certificate": list(PEM), "signature": filler}])
    assert len(big) > MAX_SECTION_SIZE
    error = _bad_eif(big, "max_bytes")
    assert error.message
    deep: object = 0
    for _ in range(SECTION_CBOR.max_depth + 1):
        deep = [deep]
    _bad_eif(cbor2.dumps([{"signing_certificate": deep, "signature": [0]}]), "depth|deeper")
    many = cbor2.dumps([{"signing_certificate": list(PEM), "signature": [[]] * 1100}])
    assert len(many) < MAX_SECTION_SIZE
    _bad_eif(many)  # nested arrays are not a byte array
    deep_header: object = -35
    for _ in range(COSE_CBOR.max_depth + 1):
        deep_header = [deep_header]
    cose = encode_sign1(cbor2.dumps({1: deep_header}), pcr0_payload(PCR0), bytes(96))
    _bad_eif(_section(cose), "depth|deeper")
    items = cbor2.dumps({"register_index": 0, "register_value": [0] * (COSE_CBOR.max_items + 1)})
    _bad_eif(_section(encode_sign1(protected_header(ALG_ES384), items, bytes(96))), "max_items")


def test_trailing_bytes_and_truncation_are_refused() -> None:
    section = build_section(PCR0, PEM, _sign_der)
    _bad_eif(section + b"\x00", "trailing")
    _bad_eif(section[:-1], "not valid CBOR")
    _bad_eif(_section(_good_cose() + b"\x00"), "trailing")


@SETTINGS
@given(data=st.data())
def test_any_mutation_of_a_good_section_is_typed(data: st.DataObject) -> None:
    section = bytearray(GOOD_SECTION)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(section) - 1))
        section[at] = data.draw(st.integers(0, 255))
    try:
        info = read_section(bytes(section), PCR0)
    except EifError as exc:
        assert exc.code == "bad-eif"
    else:
        assert isinstance(info.signature_check, bool)


tagged_values = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=8) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.builds(cbor2.CBORTag, st.integers(0, 2**16), inner)
    ),
    max_leaves=8,
)


@SETTINGS
@given(value=tagged_values)
def test_a_tag_anywhere_is_bad_eif(value: object) -> None:
    tagged = cbor2.CBORTag(61, value)
    cose = list(_good_cose())
    _bad_eif(cbor2.dumps([{"signing_certificate": list(PEM), "signature": cose, "x": tagged}]))
    header = cbor2.dumps({1: -35, 4: tagged})
    _bad_eif(_section(encode_sign1(header, pcr0_payload(PCR0), bytes(96))))


# -- interop: pycose (an independent implementation, test dependency) -------------------------


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_our_cose_sign1_verifies_with_pycose(curve: ec.EllipticCurve) -> None:
    from pycose.keys import EC2Key
    from pycose.messages import Sign1Message

    pem, key = signing_pair(curve)
    entry = cbor2.loads(sign_pcr0(PCR0, pem, key))[0]
    message = Sign1Message.from_cose_obj(list(cbor2.loads(bytes(entry["signature"]))), True)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message.key = EC2Key.from_pem_public_key(public.decode())
    assert message.verify_signature()
    assert cbor2.loads(message.payload)["register_value"] == list(PCR0)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
@pytest.mark.parametrize("tagged", [False, True])
def test_a_pycose_cose_sign1_reads_with_ours(curve: ec.EllipticCurve, tagged: bool) -> None:
    from pycose.algorithms import Es256, Es384, Es512
    from pycose.headers import Algorithm
    from pycose.keys import EC2Key
    from pycose.messages import Sign1Message

    alg = {256: Es256, 384: Es384, 521: Es512}[curve.key_size]
    pem, key = signing_pair(curve)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    message = Sign1Message(phdr={Algorithm: alg}, payload=pcr0_payload(PCR0))
    message.key = EC2Key.from_pem_private_key(private.decode())
    cose = message.encode(tag=tagged)
    info = read_section(_section(cose, pem), PCR0)
    assert info.signature_check, info.problem
    assert read_section(_section(cose, pem), bytes(48)).problem == (
        "signed PCR0 differs from the image's PCR0"
    )
