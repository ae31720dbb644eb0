"""Packaging facts of the ingress: the systemd unit renders, the verifier CLI does not import
httpx or the enclave side, and the parent command is wired."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources


def test_systemd_unit_renders():
    template = resources.files("parent").joinpath(
        "systemd", "nitro-toolkit-ingress.service").read_text()
    text = template.format(service_user="nitro-toolkit", python="/opt/venv/bin/python",
                           ingress_host="0.0.0.0", ingress_port=443, enclave_cid=16,
                           ingress_vsock_port=5443)
    assert ("ExecStart=/opt/venv/bin/python -m parent ingress --listen 0.0.0.0:443 "
            "--enclave-cid 16 --enclave-port 5443") in text
    assert "{" not in text and "LimitNOFILE=" in text


def test_verify_cli_does_not_import_httpx_or_the_enclave():
    code = (
        "import sys\n"
        "from attestation._cli import main\n"
        "main(['verify', '/nonexistent'])\n"
        "print(sorted(m for m in ('httpx', 'httpcore', 'uvicorn', 'enclave', 'parent')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_parent_ingress_usage_errors():
    def run(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "parent", "ingress", *args],
                              capture_output=True, timeout=60).returncode

    assert run("--listen", "nope", "--enclave-cid", "16") == 2
    assert run("--listen", "127.0.0.1:0", "--enclave-cid", "16", "--idle-timeout", "0") == 2


def test_the_app_can_bring_its_own_certificate(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from attestation.binding import spki_of
    from enclave.ingress import make_identity
    from enclave.ingress._tls import _self_signed

    key = ec.generate_private_key(ec.SECP384R1())
    cert = _self_signed(key)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    own = make_identity(tmp_path / "cert.pem", tmp_path / "key.pem")
    assert own.cert_der == cert.public_bytes(serialization.Encoding.DER)
    assert own.spki_der == spki_of(own.cert_der)
    fresh = make_identity()
    assert fresh.spki_der != own.spki_der and "key" not in repr(fresh).lower()
    import pytest

    with pytest.raises(ValueError):
        make_identity(tmp_path / "cert.pem", None)


def test_enclave_asgi_usage_errors(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        env = {"NITRO_VSOCK_SIM_DIR": str(tmp_path / "v"), "NITRO_VSOCK_SIM_CID": "16",
               "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-m", "enclave", *args], capture_output=True,
                              text=True, timeout=60, env=env)

    for spec in ("no_colon", "surely_not_a_module_91:app", "json:not_there"):
        done = run("--asgi", spec)
        assert done.returncode == 2 and "cannot load ASGI app" in done.stderr
