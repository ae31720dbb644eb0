"""verify() / Verifier with TestPKI and hand-built chains: every rejection code, order, cache."""

from __future__ import annotations

import pathlib
import threading
from datetime import UTC, datetime, timedelta, timezone

import cbor2
import pytest
from attestation_helpers import (
    MODULE_ID,
    NOW,
    PCRS,
    build_chain,
    doc_from_chain,
    nitro_specs,
    root_of,
    sign,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from attestation import (
    ERROR_CODES,
    AttestationError,
    BadChainError,
    BadSignatureError,
    DebugEnclaveError,
    ExpiredError,
    MalformedError,
    NonceMismatchError,
    NotYetValidError,
    PcrMismatchError,
    Policy,
    PolicyError,
    PublicKeyMismatchError,
    StaleError,
    TestPKI,
    UnsupportedAlgorithmError,
    UntrustedRootError,
    UserDataMismatchError,
    Verifier,
    parse_document,
    verify,
)
from attestation import _chain as chain_mod
from attestation.testpki import encode_cose_sign1, encode_payload

WHEN = NOW - timedelta(hours=1)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def code_of(data: bytes, *, roots=None, policy=None, at=None) -> str:
    try:
        verify(data, policy, roots=roots, at=at)
    except AttestationError as exc:
        return exc.code
    return "valid"


# -- accepted ------------------------------------------------------------------------------------


def test_testpki_document_verifies_with_its_root(pki: TestPKI) -> None:
    data = sign(pki, nonce=b"n", user_data=b"u", public_key=b"k")
    doc = verify(data, roots=[pki.root_certificate])
    assert doc.nonce == b"n" and dict(doc.pcrs) == PCRS
    for variant in (
        sign(pki, tagged=True),
        sign(pki, indefinite_map=False),
        sign(pki, timestamp_ms=ms(WHEN)),
    ):
        verify(variant, roots=[pki.root_certificate])


def test_verifier_instance_and_explicit_time(pki: TestPKI) -> None:
    data = sign(pki, timestamp_ms=ms(WHEN))
    v = Verifier([pki.root_certificate])
    assert v.roots == (pki.root_certificate,)
    assert v.verify(data, at=WHEN).timestamp == ms(WHEN)
    assert v.verify(data, at="document").timestamp == ms(WHEN)
    assert v.verify(data, at=WHEN.astimezone(timezone_plus_5())).module_id == MODULE_ID


def timezone_plus_5():
    return timezone(timedelta(hours=5))


def test_clock_is_read_once_per_verification(pki: TestPKI) -> None:
    calls = []

    def clock() -> datetime:
        calls.append(1)
        return datetime.now(UTC)

    v = Verifier([pki.root_certificate], clock=clock)
    v.verify(sign(pki), Policy(max_age=timedelta(minutes=5)))
    assert len(calls) == 1
    v.verify(sign(pki), at="document")
    assert len(calls) == 1


# -- every rejection code --------------------------------------------------------------------------


def test_malformed() -> None:
    assert code_of(b"\x84\x00") == "malformed"
    assert code_of(b"not a document") == "malformed"


def test_unsupported_algorithm(pki: TestPKI) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    payload = parse_document(sign(pki)).payload
    data = encode_cose_sign1(payload, key, protected=cbor2.dumps({1: -7}))
    assert code_of(data, roots=[pki.root_certificate]) == "unsupported-algorithm"


def test_leaf_key_not_p384_is_unsupported_algorithm() -> None:
    specs = nitro_specs(WHEN)
    specs[-1].curve = ec.SECP256R1()
    ders, _ = build_chain(specs)
    payload = encode_payload(
        module_id=MODULE_ID,
        timestamp_ms=ms(WHEN),
        pcrs=PCRS,
        certificate=ders[-1],
        cabundle=ders[:-1],
    )
    data = encode_cose_sign1(payload, ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(UnsupportedAlgorithmError):
        verify(data, roots=[root_of(ders)], at=WHEN)


def test_leaf_certificate_not_der_is_malformed(pki: TestPKI) -> None:
    good = parse_document(sign(pki))
    payload = encode_payload(
        module_id=MODULE_ID,
        timestamp_ms=good.timestamp,
        pcrs=PCRS,
        certificate=b"\x30\x03\x02\x01\x00",
        cabundle=good.cabundle,
    )
    data = encode_cose_sign1(payload, ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(MalformedError):
        verify(data, roots=[pki.root_certificate])


def test_bad_signature(pki: TestPKI) -> None:
    data = bytearray(sign(pki))
    data[-1] ^= 1
    assert code_of(bytes(data), roots=[pki.root_certificate]) == "bad-signature"
    # Signed by a key that is not the leaf's:
    good = parse_document(sign(pki))
    other = encode_cose_sign1(good.payload, ec.generate_private_key(ec.SECP384R1()))
    assert code_of(other, roots=[pki.root_certificate]) == "bad-signature"
    # r = 0 / s = n (out of range) must fail cleanly, not raise ValueError
    zero = bytes(data[:-96]) + bytes(96)
    assert code_of(zero, roots=[pki.root_certificate]) == "bad-signature"
    ones = bytes(data[:-96]) + b"\xff" * 96
    assert code_of(ones, roots=[pki.root_certificate]) == "bad-signature"


def test_high_s_signature_is_accepted(pki: TestPKI) -> None:
    n = int(
        "ffffffffffffffffffffffffffffffffffffffffffffffff"
        "c7634d81f4372ddf581a0db248b0a77aecec196accc52973",
        16,
    )
    for _ in range(40):
        data = sign(pki)
        s = int.from_bytes(data[-48:], "big")
        flipped = data[:-48] + (n - s).to_bytes(48, "big")  # (r, n - s) is just as valid
        verify(data, roots=[pki.root_certificate])
        verify(flipped, roots=[pki.root_certificate])
        if n - s > n // 2:
            break


def test_untrusted_root(pki: TestPKI) -> None:
    data = sign(pki)
    with pytest.raises(UntrustedRootError) as err:
        verify(data)  # pinned AWS root only
    assert err.value.found != err.value.expected
    other = TestPKI.generate()
    assert code_of(data, roots=[other.root_certificate]) == "untrusted-root"


def test_cabundle_root_replaced_by_another_trusted_root(pki: TestPKI) -> None:
    """cabundle[0] is a trusted root, but not the one that issued cabundle[1]."""
    other = TestPKI.generate()
    good = parse_document(sign(pki))

    cabundle = (other.root_certificate.public_bytes(Encoding.DER), *good.cabundle[1:])
    specs_key = pki._leaves[MODULE_ID].key  # the leaf key of the session PKI
    payload = encode_payload(
        module_id=MODULE_ID,
        timestamp_ms=good.timestamp,
        pcrs=PCRS,
        certificate=good.certificate,
        cabundle=cabundle,
    )
    data = encode_cose_sign1(payload, specs_key)
    roots = [pki.root_certificate, other.root_certificate]
    assert code_of(data, roots=roots) == "bad-chain"


def _chain_code(mutate, when: datetime = WHEN) -> str:
    specs = nitro_specs(when)
    mutate(specs)
    ders, keys = build_chain(specs)
    return code_of(doc_from_chain(ders, keys, when), roots=[root_of(ders)], at=when)


def test_hand_built_nitro_chain_is_valid() -> None:
    assert _chain_code(lambda s: None) == "valid"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: setattr(s[2], "ca", False), id="intermediate-not-ca"),
        pytest.param(lambda s: setattr(s[2], "ca", None), id="intermediate-no-basic-constraints"),
        pytest.param(lambda s: setattr(s[0], "ca", False), id="root-not-ca"),
        pytest.param(
            lambda s: setattr(s[2], "key_usage", {"digital_signature": True}), id="no-keycertsign"
        ),
        pytest.param(lambda s: setattr(s[3], "key_usage", None), id="ca-without-key-usage"),
        pytest.param(lambda s: setattr(s[1], "path_length", 1), id="regional-pathlen-1"),
        pytest.param(lambda s: setattr(s[0], "path_length", 2), id="root-pathlen-2"),
        pytest.param(lambda s: setattr(s[2], "path_length", 0), id="zonal-pathlen-0"),
        pytest.param(lambda s: setattr(s[4], "ca", True), id="leaf-is-ca"),
        pytest.param(
            lambda s: setattr(s[4], "key_usage", {"key_cert_sign": True}), id="leaf-no-ds"
        ),
        pytest.param(lambda s: setattr(s[4], "key_usage", None), id="leaf-without-key-usage"),
        pytest.param(lambda s: setattr(s[3], "issuer_name", "someone else"), id="issuer-name"),
        pytest.param(lambda s: setattr(s[3], "signer", 1), id="signed-by-grandparent"),
        pytest.param(lambda s: setattr(s[4], "signer", 4), id="leaf-self-signed"),
        pytest.param(lambda s: setattr(s[2], "unknown_critical", True), id="unknown-critical"),
        pytest.param(lambda s: setattr(s[4], "unknown_critical", True), id="leaf-unknown-critical"),
    ],
)
def test_bad_chain(mutate) -> None:
    assert _chain_code(mutate) == "bad-chain"


def test_pathlen_without_limits_and_exact_limits_pass() -> None:
    def unlimited(s):
        for spec in s[:4]:
            spec.path_length = None

    assert _chain_code(unlimited) == "valid"

    def exact(s):
        s[0].path_length = 3

    assert _chain_code(exact) == "valid"


def test_cabundle_out_of_order_is_bad_chain() -> None:
    ders, keys = build_chain(nitro_specs(WHEN))
    swapped = [ders[0], ders[2], ders[1], ders[3], ders[4]]
    data = doc_from_chain(swapped, keys, WHEN)
    assert code_of(data, roots=[root_of(ders)], at=WHEN) == "bad-chain"
    short = [ders[0], ders[1], ders[3], ders[4]]  # a missing intermediate
    data = doc_from_chain(short, keys, WHEN)
    assert code_of(data, roots=[root_of(ders)], at=WHEN) == "bad-chain"


def test_garbage_in_cabundle_is_bad_chain() -> None:
    ders, keys = build_chain(nitro_specs(WHEN))
    data = doc_from_chain([ders[0], b"\x30\x00", *ders[2:]], keys, WHEN)
    assert code_of(data, roots=[root_of(ders)], at=WHEN) == "bad-chain"


@pytest.mark.parametrize("index", range(5))
def test_expired_and_not_yet_valid_for_each_certificate(index: int) -> None:
    specs = nitro_specs(WHEN)
    ders, keys = build_chain(specs)
    data = doc_from_chain(ders, keys, WHEN)
    root = [root_of(ders)]
    nb, na = specs[index].not_before, specs[index].not_after
    if index == 4:  # the leaf is the narrowest window: both of its bounds are inclusive
        assert code_of(data, roots=root, at=nb) == "valid"
        assert code_of(data, roots=root, at=na) == "valid"
    assert code_of(data, roots=root, at=WHEN) == "valid"
    with pytest.raises(ExpiredError) as err:
        verify(data, roots=root, at=na + timedelta(seconds=1))
    assert "expired" in err.value.message
    with pytest.raises(NotYetValidError):
        verify(data, roots=root, at=nb - timedelta(seconds=1))


def test_expired_and_not_yet_valid_with_testpki(pki: TestPKI) -> None:
    data = sign(pki, timestamp_ms=ms(WHEN))
    leaf = parse_document(data)
    assert code_of(data, roots=[pki.root_certificate], at=WHEN + timedelta(hours=4)) == "expired"
    assert code_of(data, roots=[pki.root_certificate], at=WHEN - timedelta(days=3)) == (
        "not-yet-valid"
    )
    assert code_of(data, roots=[pki.root_certificate], at="document") == "valid"
    assert leaf.timestamp == ms(WHEN)


def test_signature_is_checked_before_the_chain(pki: TestPKI) -> None:
    data = bytearray(sign(pki, timestamp_ms=ms(WHEN)))
    data[-5] ^= 0x10
    # Expired AND forged, untrusted AND forged: reported as forged.
    assert code_of(bytes(data), roots=[pki.root_certificate], at=NOW + timedelta(days=9)) == (
        "bad-signature"
    )
    assert code_of(bytes(data)) == "bad-signature"


def test_authenticity_is_checked_before_policy(pki: TestPKI) -> None:
    data = sign(pki, pcrs={**PCRS, 0: bytes(48)}, timestamp_ms=ms(WHEN))
    policy = Policy(pcrs={1: "ab" * 48}, nonce=b"x")
    assert code_of(data, policy=policy) == "untrusted-root"
    assert code_of(
        data, roots=[pki.root_certificate], policy=policy, at=NOW + timedelta(days=1)
    ) == ("expired")
    # authentic: debug is the first policy failure, then PCRs, then nonce
    assert code_of(data, roots=[pki.root_certificate], policy=policy) == "debug-enclave"
    relaxed = Policy(pcrs={1: "ab" * 48}, nonce=b"x", allow_debug=True)
    assert code_of(data, roots=[pki.root_certificate], policy=relaxed) == "pcr-mismatch"


def test_policy_codes(pki: TestPKI) -> None:
    data = sign(pki, nonce=b"nonce", user_data=b"ud", public_key=b"pk", timestamp_ms=ms(WHEN))
    roots = [pki.root_certificate]
    cases = [
        (Policy(pcrs={3: PCRS[3]}), "valid"),
        (Policy(pcrs={3: PCRS[4]}), PcrMismatchError.code),
        (Policy(nonce=b"nonce"), "valid"),
        (Policy(nonce=b"other"), NonceMismatchError.code),
        (Policy(user_data=b"ud"), "valid"),
        (Policy(user_data=b"UD"), UserDataMismatchError.code),
        (Policy(public_key=b"pk"), "valid"),
        (Policy(public_key=b""), PublicKeyMismatchError.code),
        (Policy(max_age=timedelta(hours=2)), "valid"),
        (Policy(max_age=timedelta(minutes=30)), StaleError.code),
    ]
    for policy, expected in cases:
        assert code_of(data, roots=roots, policy=policy) == expected, policy


def test_stale_future_document(pki: TestPKI) -> None:
    future = sign(pki, timestamp_ms=ms(NOW + timedelta(minutes=10)))
    roots = [pki.root_certificate]
    at = NOW + timedelta(minutes=9)  # leaf already valid (it starts 3 s before the timestamp)
    assert code_of(future, roots=roots, at=NOW + timedelta(minutes=10)) == "valid"
    assert code_of(future, roots=roots, at=at) == "not-yet-valid"
    skewed = sign(pki, timestamp_ms=ms(NOW + timedelta(seconds=30)))
    at = NOW + timedelta(seconds=28)
    assert code_of(skewed, roots=roots, policy=Policy(), at=at) == "valid"
    tight = Policy(max_skew=timedelta(seconds=1))
    assert code_of(skewed, roots=roots, policy=tight, at=at) == StaleError.code


def test_debug_enclave(pki: TestPKI) -> None:
    data = sign(pki, pcrs={**PCRS, 0: bytes(48), 1: bytes(48), 2: bytes(48)})
    roots = [pki.root_certificate]
    with pytest.raises(DebugEnclaveError):
        verify(data, roots=roots)
    with pytest.raises(DebugEnclaveError):
        verify(data, Policy(), roots=roots)
    verify(data, Policy(allow_debug=True), roots=roots)


def test_invalid_policy_and_arguments(pki: TestPKI) -> None:
    data = sign(pki)
    roots = [pki.root_certificate]
    for bad_at in (datetime(2024, 1, 1), "now", 12345):  # naive, unknown word, number
        with pytest.raises(PolicyError):
            verify(data, roots=roots, at=bad_at)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        verify(data, {"pcrs": {}}, roots=roots)  # type: ignore[arg-type]
    for bad_roots in ([], [b"pem"], pki.root_certificate):
        with pytest.raises(PolicyError):
            verify(data, roots=bad_roots)  # type: ignore[arg-type]


def test_every_error_code_is_exercised() -> None:
    """Each code of errors.py is asserted somewhere in this package's tests."""

    text = "".join(p.read_text() for p in pathlib.Path(__file__).parent.glob("test_*.py"))
    for code in ERROR_CODES - {"bad-eif"}:  # bad-eif belongs to the EIF reader
        cls_names = [c.__name__ for c in AttestationError.__subclasses__() if c.code == code]
        assert f'"{code}"' in text or any(n in text for n in cls_names), code


# -- cache ---------------------------------------------------------------------------------------


def test_warm_verification_uses_the_cache(pki: TestPKI, monkeypatch) -> None:

    calls: list[int] = []
    real = chain_mod.verify_path

    def counting(root, intermediates, leaf, at) -> None:
        calls.append(len(intermediates))
        real(root, intermediates, leaf, at)

    monkeypatch.setattr(chain_mod, "verify_path", counting)
    v = Verifier([pki.root_certificate])
    v.verify(sign(pki))
    assert calls == [3]  # regional, zonal, instance under the root
    assert v._chain.cached_chains == 1
    v.verify(sign(pki))  # same chain and leaf: the path is not verified again
    assert len(calls) == 1
    v.verify(sign(pki, module_id="i-0123456789abcdef0-encffffffffffffffff"))  # a new leaf
    assert len(calls) == 2
    fresh = Verifier([pki.root_certificate])
    fresh.verify(sign(pki))
    assert len(calls) == 3  # a new Verifier starts cold


def test_cache_never_lets_an_expired_certificate_pass(pki: TestPKI) -> None:
    v = Verifier([pki.root_certificate])
    data = sign(pki, timestamp_ms=ms(WHEN))
    v.verify(data, at="document")
    assert v._chain.cached_chains == 1
    with pytest.raises(ExpiredError):
        v.verify(data, at=WHEN + timedelta(hours=4))
    with pytest.raises(NotYetValidError):
        v.verify(data, at=WHEN - timedelta(days=3))


def test_cache_never_lets_an_untrusted_root_pass(pki: TestPKI) -> None:
    trusted = Verifier([pki.root_certificate])
    data = sign(pki)
    trusted.verify(data)
    # Another verifier sharing the same cache but trusting another root.
    other = Verifier([TestPKI.generate().root_certificate], _chain=trusted._chain)
    with pytest.raises(UntrustedRootError):
        other.verify(data)
    # The module-level verify shares one cache between root sets too.
    verify(data, roots=[pki.root_certificate])
    with pytest.raises(UntrustedRootError):
        verify(data)


def test_cached_edge_is_not_reused_for_a_different_parent_with_the_same_name() -> None:
    """Same child bytes, a parent with the same name but another key: no cache reuse."""
    specs = nitro_specs(WHEN)
    ders, keys = build_chain(specs)
    good = doc_from_chain(ders, keys, WHEN)
    v = Verifier([root_of(ders)])
    v.verify(good, at=WHEN)
    impostor_specs = nitro_specs(WHEN)
    impostor_specs[0].key = keys[0]  # same root
    impostor_specs[1].key = keys[1]  # same regional key, re-issued
    impostor, _ = build_chain(impostor_specs)  # zonal with same name but a new key
    mixed = [ders[0], ders[1], impostor[2], ders[3], ders[4]]
    data = doc_from_chain(mixed, keys, WHEN)
    with pytest.raises(BadChainError):
        v.verify(data, at=WHEN)


def test_cache_is_bounded(pki: TestPKI) -> None:
    v = Verifier([pki.root_certificate], cache_size=2)
    for _ in range(3):
        v.verify(sign(pki))
    assert v._chain.cached_chains <= 2
    assert len(v._chain._leaves) <= 2
    v.clear_cache()
    assert v._chain.cached_chains == 0
    off = Verifier([pki.root_certificate], cache_size=0)
    off.verify(sign(pki))
    assert off._chain.cached_chains == 0


def test_concurrent_verification(pki: TestPKI) -> None:
    v = Verifier([pki.root_certificate], cache_size=3)
    docs = [sign(pki, nonce=bytes([i])) for i in range(8)]
    bad = bytearray(docs[0])
    bad[-1] ^= 1
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                doc = v.verify(docs[(n + i) % len(docs)])
                assert doc.nonce == bytes([(n + i) % len(docs)])
                with pytest.raises(BadSignatureError):
                    v.verify(bytes(bad))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors


def test_issuer_name_must_match_byte_for_byte() -> None:
    """Same name, another string type: cryptography's verifier (like webpki) matches names
    byte for byte, so this path is refused (the hand-written validator compared them
    semantically; no real Nitro chain differs in this way)."""

    specs = nitro_specs(WHEN)
    ders, keys = build_chain(specs)
    # Re-issue the leaf with the issuer CN as PrintableString instead of UTF8String.
    leaf = x509.load_der_x509_certificate(ders[4])
    printable = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "instance", _type=_ASN1Type.PrintableString)]
    )

    reissued = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(printable)
        .public_key(keys[4].public_key())
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf.extensions.get_extension_for_class(x509.KeyUsage).value, True)
        .sign(keys[3], hashes.SHA384())
        .public_bytes(serialization.Encoding.DER)
    )
    parent = x509.load_der_x509_certificate(ders[3])
    assert x509.load_der_x509_certificate(reissued).issuer.public_bytes() != (
        parent.subject.public_bytes()
    )
    data = doc_from_chain([*ders[:4], reissued], keys, WHEN)
    assert code_of(data, roots=[root_of(ders)], at=WHEN) == "bad-chain"
