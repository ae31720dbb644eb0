"""A sealed secret survives restarts (real processes: `python -m simulator up`): the enclave
SIGKILLed comes back and serves it with no second seal-load; the proxy killed too finds it in
its store; seal-delete removes it from the store."""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fleet_support import (
    Launched,
    create_key,
    health,
    metrics,
    post,
    seal_body,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]
BACK_WITHIN_S = 60  # generous: a shared 2-core machine; bench/fleet.py measures the real time


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    stack = Launched(tmp_path_factory.mktemp("restart") / "state")
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def signer(launched: Launched) -> ec.EllipticCurvePublicKey:
    info = launched.info
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    status, answer = post(info["proxy_url"] + "/v1/seal-load",
                          seal_body(info, create_key(info), "signer", der, kind="ec-p256"))
    assert status == 200, answer
    return key.public_key()


def sign_ok(url: str, public: ec.EllipticCurvePublicKey, message: bytes) -> bool:
    status, answer = post(url + "/v1/sign", {"name": "signer",
                                              "message": base64.b64encode(message).decode()},
                          timeout=10.0)
    if status != 200:
        return False
    public.verify(base64.b64decode(answer["signature"]), message, ec.ECDSA(hashes.SHA256()))
    return True


def seal_loads(url: str) -> float:
    return metrics(url).get(
        ("nitro_proxy_requests_total", (("route", "/v1/seal-load"), ("status", "200"))), 0.0)


def test_the_store_keeps_the_ciphertext_never_the_plaintext(
    launched: Launched, signer: ec.EllipticCurvePublicKey
) -> None:
    store = launched.state / "parent" / "secrets"
    files = sorted(p.name for p in store.iterdir())
    assert files == ["signer.json"]
    assert oct(store.stat().st_mode & 0o777) == "0o700"
    text = (store / "signer.json").read_text()
    assert '"ciphertext"' in text and "PRIVATE" not in text
    status, body = health(launched.info["proxy_url"])
    assert status == 200 and body["secrets"] == "loaded 1/1"


def test_a_killed_enclave_serves_the_secret_again_without_a_second_seal_load(
    launched: Launched, signer: ec.EllipticCurvePublicKey
) -> None:
    url = launched.info["proxy_url"]
    assert sign_ok(url, signer, b"before")
    assert seal_loads(url) == 1
    old = launched.read()["pids"]["enclave"]
    os.kill(old, signal.SIGKILL)
    start = time.monotonic()
    wait_for(lambda: launched.read()["pids"]["enclave"] != old, BACK_WITHIN_S,
             "the launcher to restart the enclave")
    wait_for(lambda: sign_ok(url, signer, b"after"), BACK_WITHIN_S, "sign after the restart",
             step=0.05)
    print(f"enclave SIGKILL -> sign served again in {time.monotonic() - start:.2f} s")
    assert seal_loads(url) == 1  # nobody called seal-load again
    status, body = health(url)
    assert status == 200 and body["secrets"] == "loaded 1/1"
    m = metrics(url)
    assert m[("nitro_enclave_restarts_total", ())] >= 1
    assert m[("nitro_secrets_loaded", ())] == 1


def test_the_store_survives_a_killed_proxy_and_enclave(
    launched: Launched, signer: ec.EllipticCurvePublicKey
) -> None:
    url = launched.info["proxy_url"]
    pids = launched.read()["pids"]
    os.kill(pids["proxy"], signal.SIGKILL)
    os.kill(pids["enclave"], signal.SIGKILL)
    wait_for(lambda: all(launched.read()["pids"][n] != pids[n] for n in ("proxy", "enclave")),
             BACK_WITHIN_S, "the launcher to restart both")
    wait_for(lambda: sign_ok(url, signer, b"again"), BACK_WITHIN_S, "sign from the new proxy")
    assert seal_loads(url) == 0  # a new proxy: it loaded the secret from its store
    assert wait_for(lambda: health(url)[1].get("secrets") == "loaded 1/1", 10, "health")


def test_seal_delete_removes_the_secret_from_the_store(
    launched: Launched, signer: ec.EllipticCurvePublicKey
) -> None:
    url = launched.info["proxy_url"]
    status, answer = post(url + "/v1/seal-delete", {"name": "signer"})
    assert status == 200 and answer["deleted"] is True
    assert not (launched.state / "parent" / "secrets" / "signer.json").exists()
    status, body = health(url)
    assert status == 200 and body["secrets"] == "loaded 0/0"
    assert not sign_ok(url, signer, b"gone")


