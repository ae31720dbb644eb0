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
