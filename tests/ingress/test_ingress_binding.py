"""The TLS binding check (attestation.binding, attestation.connect.Expectations) on documents
made by the test PKI: ours, nitriding's and evervault's shapes, and every refusal."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation import TestPKI, Verifier
from attestation.binding import (
    check_binding,
    nitriding_user_data,
    parse_nitriding_user_data,
    spki_of,
)
from attestation.connect import Expectations
from attestation.errors import AttestationError, PublicKeyMismatchError
from enclave.ingress import make_identity

PCRS = {i: bytes([i + 1]) * 48 for i in range(3)} | {i: b"\0" * 48 for i in range(3, 16)}
OTHER_PCRS = {i: bytes([0xA0 + i]) * 48 for i in range(3)} | {
    i: b"\0" * 48 for i in range(3, 16)
}
DEBUG_PCRS = {i: b"\0" * 48 for i in range(16)}


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate()


@pytest.fixture(scope="module")
def enclave_cert() -> bytes:
    return make_identity().cert_der


@pytest.fixture(scope="module")
def mitm_cert() -> bytes:
    return make_identity().cert_der


def expect(pki: TestPKI, **kwargs) -> Expectations:
    return Expectations(verifier=Verifier([pki.root_certificate]), **kwargs)


def doc(pki: TestPKI, cert: bytes, nonce: bytes, *, pcrs=PCRS, **fields) -> bytes:
    fields.setdefault("public_key", spki_of(cert))
    fields.setdefault("user_data", nitriding_user_data(cert))
    return pki.sign_document(pcrs=pcrs, module_id="i-0123456789abcdef0-enc0123456789abcdef",
                             nonce=nonce, **fields)


def test_bound_document_passes(pki, enclave_cert):
    nonce = os.urandom(32)
    checked = expect(pki, pcrs={0: PCRS[0]}).check(doc(pki, enclave_cert, nonce),
                                                   enclave_cert, nonce)
    assert checked.public_key == spki_of(enclave_cert)


def test_mitm_certificate_is_public_key_mismatch(pki, enclave_cert, mitm_cert):
    nonce = os.urandom(32)  # the MITM relays the enclave's genuine, fresh document
    with pytest.raises(PublicKeyMismatchError) as info:
        expect(pki).check(doc(pki, enclave_cert, nonce), mitm_cert, nonce)
    assert info.value.code == "public-key-mismatch"


def test_another_enclaves_document(pki, enclave_cert, mitm_cert):
    nonce = os.urandom(32)  # the MITM serves a document of an enclave it runs itself
    other = doc(pki, mitm_cert, nonce, pcrs=OTHER_PCRS)
    with pytest.raises(AttestationError) as info:
        expect(pki, pcrs={0: PCRS[0]}).check(other, mitm_cert, nonce)
    assert info.value.code == "pcr-mismatch"
    other_key = doc(pki, enclave_cert, nonce, pcrs=OTHER_PCRS)  # same PCRs policy-free
    with pytest.raises(PublicKeyMismatchError):
        expect(pki).check(other_key, mitm_cert, nonce)


def test_replayed_document_with_old_nonce(pki, enclave_cert):
    old = doc(pki, enclave_cert, os.urandom(32))
    with pytest.raises(AttestationError) as info:
        expect(pki).check(old, enclave_cert, os.urandom(32))
    assert info.value.code == "nonce-mismatch"


def test_old_document_is_stale_with_max_age(pki, enclave_cert):
    from datetime import timedelta

    nonce = os.urandom(32)
    old_ms = int((time.time() - 3600) * 1000)
    stale = doc(pki, enclave_cert, nonce, timestamp_ms=old_ms)
    with pytest.raises(AttestationError) as info:
        expect(pki, max_age=timedelta(minutes=5)).check(stale, enclave_cert, nonce)
    assert info.value.code == "stale"


def test_debug_document_is_refused_unless_allowed(pki, enclave_cert):
    nonce = os.urandom(32)
    debug = doc(pki, enclave_cert, nonce, pcrs=DEBUG_PCRS)
    with pytest.raises(AttestationError) as info:
        expect(pki).check(debug, enclave_cert, nonce)
    assert info.value.code == "debug-enclave"
    expect(pki, allow_debug=True).check(debug, enclave_cert, nonce)


def test_untrusted_root(enclave_cert):
    nonce = os.urandom(32)
    foreign = doc(TestPKI.generate(), enclave_cert, nonce)
    with pytest.raises(AttestationError) as info:
        Expectations(verifier=Verifier([TestPKI.generate().root_certificate])).check(
            foreign, enclave_cert, nonce)
    assert info.value.code == "untrusted-root"


# -- compatibility: nitriding and evervault shapes ----------------------------------------------


def test_nitriding_binding(pki, enclave_cert, mitm_cert):
    import base64
    import hashlib

    nonce = os.urandom(20)
    e = expect(pki, binding="nitriding")
    assert e.target(nonce).startswith("/enclave/attestation?nonce=")
    # nitriding answers base64, user_data = multihash(cert) || multihash(app key hash)
    app_hash = hashlib.sha256(b"app key").digest()
    body = base64.b64encode(doc(pki, enclave_cert, nonce, public_key=None,
                                user_data=nitriding_user_data(enclave_cert, app_hash)))
    e.check(body, enclave_cert, nonce)
    with pytest.raises(PublicKeyMismatchError):
        e.check(body, mitm_cert, nonce)
    # the SHA-256 of the SPKI is accepted as nitriding's "TLS key hash" too
    spki_hash = b"\x12\x20" + hashlib.sha256(spki_of(enclave_cert)).digest()
    e.check(doc(pki, enclave_cert, nonce, public_key=None, user_data=spki_hash),
            enclave_cert, nonce)


def test_evervault_binding(pki, enclave_cert, mitm_cert):
    import base64
    import json

    e = expect(pki, binding="evervault")
    raw = doc(pki, enclave_cert, None, public_key=None, user_data=spki_of(enclave_cert))
    body = json.dumps({"attestation_doc": base64.b64encode(raw).decode()}).encode()
    e.check(body, enclave_cert, os.urandom(32))  # no nonce in evervault's cached document
    with pytest.raises(PublicKeyMismatchError):
        e.check(body, mitm_cert, b"")
    with pytest.raises(PublicKeyMismatchError):  # our binding is not evervault's
        e.check(doc(pki, enclave_cert, None), enclave_cert, b"")


def test_bindings_do_not_accept_each_other(pki, enclave_cert):
    nonce = os.urandom(32)
    only_user_data = doc(pki, enclave_cert, nonce, public_key=None)
    with pytest.raises(PublicKeyMismatchError):
        expect(pki).check(only_user_data, enclave_cert, nonce)


@given(st.binary(max_size=200))
def test_nitriding_user_data_parser_is_total(data):
    try:
        tls, app = parse_nitriding_user_data(data)
    except PublicKeyMismatchError:
        return
    assert len(tls) == 32 and (app is None or len(app) == 32)


@given(st.binary(min_size=32, max_size=32), st.one_of(st.none(), st.binary(min_size=32,
                                                                             max_size=32)))
def test_nitriding_user_data_round_trip(cert_hash, app):
    import hashlib

    data = b"\x12\x20" + cert_hash + (b"\x12\x20" + app if app is not None else b"")
    assert parse_nitriding_user_data(data) == (cert_hash, app)
    assert len(nitriding_user_data(b"x", app)) == (68 if app else 34)
    assert nitriding_user_data(b"x")[2:] == hashlib.sha256(b"x").digest()


def test_check_binding_refuses_garbage_certificate(pki, enclave_cert):
    from attestation import parse_document

    d = parse_document(doc(pki, enclave_cert, b"n"))
    with pytest.raises(AttestationError) as info:
        check_binding(d, b"not a certificate")
    assert info.value.code == "malformed"
