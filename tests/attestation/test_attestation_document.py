"""parse_document: structure only, strict, every limit named and enforced."""

from __future__ import annotations

import cbor2
import pytest
from attestation_helpers import MODULE_ID, PCRS, sign
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import (
    MalformedError,
    TestPKI,
    UnsupportedAlgorithmError,
    parse_document,
)
from attestation import document as d
from attestation.testpki import encode_cose_sign1, encode_payload

KEY = ec.generate_private_key(ec.SECP384R1())
CERT = b"\x30" * 600


def fields(**over) -> dict:
    base = dict(
        module_id=MODULE_ID,
        timestamp_ms=1_700_000_000_000,
        pcrs=PCRS,
        certificate=CERT,
        cabundle=[CERT, CERT],
        public_key=None,
        user_data=None,
        nonce=None,
    )
    base.update(over)
    return base


def doc(**over) -> bytes:
    tagged = over.pop("tagged", False)
    return encode_cose_sign1(encode_payload(**fields(**over)), KEY, tagged=tagged)


def raw_payload_doc(payload_obj) -> bytes:
    """A document whose payload is arbitrary CBOR (for schema tests)."""
    return encode_cose_sign1(cbor2.dumps(payload_obj), KEY)


def payload_map(**over) -> dict:
    m = {
        "module_id": MODULE_ID,
        "digest": "SHA384",
        "timestamp": 1_700_000_000_000,
        "pcrs": dict(PCRS),
        "certificate": CERT,
        "cabundle": [CERT],
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }
    for k, v in over.items():
        if v is _DROP:
            m.pop(k)
        else:
            m[k] = v
    return m


_DROP = object()


def malformed(data: bytes, match: str | None = None) -> MalformedError:
    with pytest.raises(MalformedError, match=match) as err:
        parse_document(data)
    assert err.value.code == "malformed"
    return err.value


# -- envelope ------------------------------------------------------------------------------------


def test_untagged_and_tagged_parse_to_the_same_document() -> None:
    plain = doc()
    tagged = b"\xd2" + plain
    assert doc(tagged=True)[0] == 0xD2
    a, b = parse_document(plain), parse_document(tagged)
    assert (a.protected, a.payload, a.signature) == (b.protected, b.payload, b.signature)
    assert a == b and hash(a) == hash(b)


def test_definite_and_indefinite_maps() -> None:
    definite = encode_payload(**fields(), indefinite_map=False)
    indefinite = encode_payload(**fields(), indefinite_map=True)
    assert definite[0] == 0xA9 and indefinite[0] == 0xBF and indefinite[-1] == 0xFF
    a = parse_document(encode_cose_sign1(definite, KEY))
    b = parse_document(encode_cose_sign1(indefinite, KEY))
    assert a.payload == definite and b.payload == indefinite  # original bytes kept
    assert (a.module_id, a.pcrs, a.cabundle) == (b.module_id, b.pcrs, b.cabundle)


def test_fields_are_exposed_with_types() -> None:
    parsed = parse_document(doc(public_key=b"pk", user_data=b"", nonce=b"n" * 1024))
    assert parsed.module_id == MODULE_ID
    assert parsed.timestamp == 1_700_000_000_000
    assert parsed.datetime.year == 2023 and parsed.datetime.tzinfo is not None
    assert dict(parsed.pcrs) == PCRS
    assert parsed.cabundle == (CERT, CERT)
    assert parsed.public_key == b"pk" and parsed.user_data == b"" and parsed.nonce == b"n" * 1024
    with pytest.raises(TypeError):
        parsed.pcrs[0] = b"x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        parsed.module_id = "x"  # type: ignore[misc]


def test_null_and_missing_optionals_mean_absent() -> None:
    nulls = parse_document(raw_payload_doc(payload_map()))
    missing = parse_document(
        raw_payload_doc(payload_map(public_key=_DROP, user_data=_DROP, nonce=_DROP))
    )
    for parsed in (nulls, missing):
        assert parsed.public_key is None and parsed.user_data is None and parsed.nonce is None


def test_is_debug() -> None:
    assert not parse_document(doc()).is_debug
    assert parse_document(doc(pcrs={**PCRS, 0: bytes(48)})).is_debug
    assert parse_document(doc(pcrs={4: b"\x01" * 48})).is_debug  # no PCR0: nothing measured


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "size"),
        (b"\x84", "CBOR"),
        (bytes(d.MAX_DOCUMENT_SIZE + 1), "size"),
        (cbor2.dumps([1, 2, 3]), "4 items"),
        (cbor2.dumps({"a": 1}), "4 items"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"x", b"s" * 95]), "96"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"x", "s" * 96]), "96"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"", b"s" * 96]), "payload"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, "x", b"s" * 96]), "payload"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\x01", b"s" * 96]), "map"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\xa0\x00", b"s" * 96]), "trailing"),
        (cbor2.dumps([b"", {}, b"\xa0", b"s" * 96]), "protected"),
        (cbor2.dumps([{1: -35}, {}, b"\xa0", b"s" * 96]), "protected"),
        (cbor2.dumps([b"\x80", {}, b"\xa0", b"s" * 96]), "protected header must be a map"),
        (cbor2.dumps([b"\xa0", {}, b"\xa0", b"s" * 96]), "no algorithm"),
        (cbor2.dumps([b"\xa2\x01\x38\x22\x04\x41k", {}, b"\xa0", b"s" * 96]), "parameters"),
    ],
)
def test_envelope_errors(data: bytes, match: str) -> None:
    malformed(data, match)


def test_trailing_bytes_after_the_document_are_refused() -> None:
    malformed(doc() + b"\x00", "trailing")


def test_unprotected_header_must_be_empty() -> None:
    payload = encode_payload(**fields())
    data = encode_cose_sign1(payload, KEY, unprotected=cbor2.dumps({4: b"kid"}))
    malformed(data, "unprotected")
    malformed(encode_cose_sign1(payload, KEY, unprotected=b"\x80"), "unprotected")


def test_other_tags_are_refused() -> None:
    good = doc()
    malformed(b"\xd8\x12" + good, "tag")  # tag 18 in a non-minimal form
    malformed(b"\xd1" + good, "tag")  # tag 17 (COSE_Mac0)
    malformed(b"\xd9\xd9\xf7" + good, "tag")  # self-described CBOR
    malformed(b"\xd2\xd2" + good, "tag")
    # a bignum timestamp inside the payload
    bignum = cbor2.dumps(payload_map()).replace(
        cbor2.dumps("timestamp") + cbor2.dumps(1_700_000_000_000),
        cbor2.dumps("timestamp") + b"\xc2\x46" + (1_700_000_000_000).to_bytes(6, "big"),
    )
    malformed(encode_cose_sign1(bignum, KEY), "tag")


def test_duplicate_keys_are_refused() -> None:
    body = cbor2.dumps(payload_map())
    dup = b"\xaa" + body[1:] + cbor2.dumps("nonce") + cbor2.dumps(b"second")
    malformed(encode_cose_sign1(dup, KEY), "Duplicate")


def test_unsupported_algorithm_and_digest() -> None:
    payload = encode_payload(**fields())
    for alg in (-7, -36, -37, 1):
        protected = cbor2.dumps({1: alg})
        with pytest.raises(UnsupportedAlgorithmError) as err:
            parse_document(encode_cose_sign1(payload, KEY, protected=protected))
        assert err.value.code == "unsupported-algorithm"
        assert err.value.expected == -35
    with pytest.raises(UnsupportedAlgorithmError):
        parse_document(encode_cose_sign1(payload, KEY, protected=cbor2.dumps({1: "ES384"})))
    with pytest.raises(UnsupportedAlgorithmError):
        parse_document(raw_payload_doc(payload_map(digest="SHA256")))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"module_id": _DROP}, "module_id"),
        ({"module_id": None}, "module_id"),
        ({"module_id": ""}, "module_id"),
        ({"module_id": b"i-1"}, "module_id"),
        ({"digest": _DROP}, "digest"),
        ({"digest": 384}, "digest"),
        ({"timestamp": _DROP}, "timestamp"),
        ({"timestamp": 0}, "timestamp"),
        ({"timestamp": -5}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"timestamp": d.MAX_TIMESTAMP_MS + 1}, "timestamp"),
        ({"timestamp": 2**64 - 1}, "timestamp"),
        ({"pcrs": _DROP}, "pcrs"),
        ({"pcrs": {}}, "pcrs"),
        ({"pcrs": [b"x" * 48]}, "pcrs"),
        ({"pcrs": {i: bytes(48) for i in range(33)}}, "33 entries"),
        ({"pcrs": {32: bytes(48)}}, "PCR index"),
        ({"pcrs": {-1: bytes(48)}}, "PCR index"),
        ({"pcrs": {"0": bytes(48)}}, "PCR index"),
        ({"pcrs": {0: bytes(47)}}, "PCR0"),
        ({"pcrs": {0: bytes(0)}}, "PCR0"),
        ({"pcrs": {0: "00" * 48}}, "PCR0"),
        ({"certificate": _DROP}, "certificate"),
        ({"certificate": b""}, "certificate"),
        ({"certificate": b"x" * (d.MAX_CERTIFICATE_SIZE + 1)}, "certificate"),
        ({"certificate": [CERT]}, "certificate"),
        ({"cabundle": _DROP}, "cabundle"),
        ({"cabundle": []}, "cabundle"),
        ({"cabundle": CERT}, "cabundle"),
        ({"cabundle": [CERT] * (d.MAX_CABUNDLE_LENGTH + 1)}, "cabundle"),
        ({"cabundle": [CERT, b""]}, r"cabundle\[1\]"),
        ({"cabundle": [CERT, "x"]}, r"cabundle\[1\]"),
        ({"public_key": b"k" * (d.MAX_FIELD_SIZE + 1)}, "public_key"),
        ({"user_data": "text"}, "user_data"),
        ({"nonce": 5}, "nonce"),
    ],
)
def test_schema_errors(over: dict, match: str) -> None:
    malformed(raw_payload_doc(payload_map(**over)), match)


def test_limits_are_inclusive() -> None:
    parse_document(raw_payload_doc(payload_map(pcrs={i: bytes(32) for i in range(32)})))
    parse_document(raw_payload_doc(payload_map(pcrs={31: bytes(64)})))
    parse_document(raw_payload_doc(payload_map(certificate=b"c" * d.MAX_CERTIFICATE_SIZE)))
    parse_document(raw_payload_doc(payload_map(cabundle=[b"c"] * d.MAX_CABUNDLE_LENGTH)))
    parse_document(raw_payload_doc(payload_map(timestamp=d.MAX_TIMESTAMP_MS)))
    big = {n: b"x" * d.MAX_FIELD_SIZE for n in ("public_key", "user_data", "nonce")}
    parse_document(raw_payload_doc(payload_map(**big)))


def test_payload_size_limit() -> None:
    base = len(cbor2.dumps(payload_map(extra=b"")))
    filler = payload_map(extra=b"z" * (d.MAX_PAYLOAD_SIZE - base - 2))  # 2: longer bstr head
    body = cbor2.dumps(filler)
    assert len(body) == d.MAX_PAYLOAD_SIZE
    parse_document(encode_cose_sign1(body, KEY))  # unknown keys are ignored
    too_big = cbor2.dumps(payload_map(extra=b"z" * d.MAX_PAYLOAD_SIZE))
    malformed(encode_cose_sign1(too_big, KEY))


def test_non_text_and_unknown_keys() -> None:
    parse_document(raw_payload_doc(payload_map(future_field=1)))
    m = payload_map()
    m[7] = b"x"
    parse_document(raw_payload_doc(m))  # ignored: only the known fields are read


def test_deep_nesting_is_refused() -> None:
    nested: object = b"x"
    for _ in range(50):
        nested = [nested]
    malformed(raw_payload_doc(payload_map(extra=nested)), "CBOR")


def test_input_types() -> None:
    data = doc()
    assert parse_document(bytearray(data)) == parse_document(memoryview(data))
    for bad in (None, "84", 5, [1]):
        malformed(bad)  # type: ignore[arg-type]


def test_testpki_documents_parse(pki: TestPKI) -> None:
    parsed = parse_document(sign(pki, nonce=b"n", user_data=b"u", public_key=b"k"))
    assert (parsed.nonce, parsed.user_data, parsed.public_key) == (b"n", b"u", b"k")
