"""The whole network path: boto3 -> loopback tunnel -> simulated vsock -> relay -> KMS.

Production shape (TLS through CONNECT): the relay forwards to a TLS front with a test CA
certificate for kms.us-east-1.amazonaws.com, which hands the decrypted HTTP to the local
KMS. A spy between relay and TLS front records what the parent sees: ciphertext only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import TestPKI
from enclave.kms import AttestedKms, KmsError, KmsLimits
from enclave.kms.credentials import CredentialLimits, CredentialStore, parse_credentials
from enclave.kms.tunnel import KmsTunnel, TunnelError, TunnelLimits, bring_up_loopback
from enclave.nsm import NsmClient
from enclave.transport import PARENT_CID, VsockAddress, relay
from parent.key_policy import key_policy
from parent.kms_relay import KmsRelay
from simulator.nsm import SimulatedNsm

sys.path.insert(0, str(Path(__file__).parent))
from test_kms_client import (
    ENCLAVE_DIR,
    OPERATOR,
    OPERATOR_KEYS,
    ROLE,
    LocalKms,
)

ROOT = Path(__file__).resolve().parents[2]
KMS_HOST = "kms.us-east-1.amazonaws.com"
SECRET = b"tunnel secret 42 (never in the clear on the parent)"
ROLE_BODY = {
    "access_key_id": "AKIASIMPARENTROLE001",
    "secret_access_key": "sim-parent-role-secret-key",
    "session_token": None,
    "expiration": None,
    "region": "us-east-1",
}


class LoopThread:
    """An event loop in a thread, for servers the test drives from blocking code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def make_tls(tmp: Path, host: str) -> tuple[ssl.SSLContext, Path]:
    """A server context with a leaf for `host` under a fresh CA; returns it and the CA file."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    (tmp / "ca.pem").write_bytes(pem(ca))
    (tmp / "leaf.pem").write_bytes(pem(leaf))
    (tmp / "leaf.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    return ctx, tmp / "ca.pem"


async def start_forwarder(target_port: int, *, tls: ssl.SSLContext | None = None, tap=None):
    """TCP server on 127.0.0.1 piping to 127.0.0.1:target_port (optionally TLS-terminating,
    optionally recording every byte it sees into `tap`)."""

    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        if tap is None:
            await relay(reader, writer, up_reader, up_writer)
            return

        async def copy(src, dst):
            while data := await src.read(65536):
                tap.append(data)
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()
            up_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def pki():
    return TestPKI.generate()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pki):
    """Local KMS + key for this enclave's PCRs + an event loop thread for relays."""
    kms = LocalKms(tmp_path_factory.mktemp("kms"), pki)
    nsm = SimulatedNsm.for_enclave(pki, ENCLAVE_DIR)
    operator = kms.client(OPERATOR_KEYS)
    policy = key_policy(pcrs={0: nsm.pcrs[0]}, enclave_role=ROLE, admin=OPERATOR)
    key_id = operator.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    blob = operator.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    loop = LoopThread()
    yield {"kms": kms, "nsm": nsm, "key_id": key_id, "blob": blob, "loop": loop,
           "port": int(kms.url.rsplit(":", 1)[1])}
    loop.close()
    kms.close()


@pytest.fixture
def sim_dir(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.mktemp("vs")
    d.chmod(0o700)
    monkeypatch.setenv("NITRO_VSOCK_SIM_DIR", str(d))
    return d


def store_with_role() -> CredentialStore:
    store = CredentialStore()
    store.set(parse_credentials(ROLE_BODY))
    return store


def start_relay(loop: LoopThread, target_port: int, vsock_port: int) -> KmsRelay:
    kms_relay = KmsRelay("127.0.0.1", target_port, listen=VsockAddress(PARENT_CID, vsock_port))
    loop.run(kms_relay.start())
    return kms_relay


def test_simulation_path_plain_http(stack, sim_dir):
    loop = stack["loop"]
    tap: list[bytes] = []
    spy, spy_port = loop.run(start_forwarder(stack["port"], tap=tap))
    kms_relay = start_relay(loop, spy_port, 8100)
    kms = AttestedKms.for_enclave(
        store_with_role(), scheme="http", relay=VsockAddress(PARENT_CID, 8100),
        nsm=NsmClient(transport=stack["nsm"].handle),
    )
    try:
        assert kms.decrypt(stack["blob"]) == SECRET
        assert len(kms.generate_random(16)) == 16
        seen = b"".join(tap)
        assert b"TrentService.Decrypt" in seen  # plain HTTP in simulation...
        assert SECRET not in seen  # ...but the answer is sealed to the enclave's key
    finally:
        kms.close()
        loop.run(kms_relay.close())
        spy.close()


def test_production_path_tls_through_connect(stack, sim_dir, tmp_path):
    loop = stack["loop"]
    tls, ca = make_tls(tmp_path, KMS_HOST)
    front, front_port = loop.run(start_forwarder(stack["port"], tls=tls))
    tap: list[bytes] = []
    spy, spy_port = loop.run(start_forwarder(front_port, tap=tap))
    kms_relay = start_relay(loop, spy_port, 8101)
    kms = AttestedKms.for_enclave(
        store_with_role(), region="us-east-1", relay=VsockAddress(PARENT_CID, 8101),
        nsm=NsmClient(transport=stack["nsm"].handle), ca_bundle=str(ca),
    )
    try:
        for _ in range(3):  # kept-alive TLS connection reused
            assert kms.decrypt(stack["blob"]) == SECRET
        seen = b"".join(tap)
        assert seen.startswith(b"\x16\x03")  # a TLS handshake: the relay sees records only
        assert KMS_HOST.encode() in seen  # SNI, as on AWS
        for clear in (SECRET, b"TrentService", b"AKIASIMPARENTROLE001", b"Recipient"):
            assert clear not in seen
        assert kms_relay.total == 1  # one TLS session carried all three calls
    finally:
        kms.close()
        loop.run(kms_relay.close())
        spy.close()
        front.close()


def test_a_certificate_for_another_host_is_refused(stack, sim_dir, tmp_path):
    loop = stack["loop"]
    tls, ca = make_tls(tmp_path, "kms.evil.example")
    front, front_port = loop.run(start_forwarder(stack["port"], tls=tls))
    kms_relay = start_relay(loop, front_port, 8102)
    kms = AttestedKms.for_enclave(
        store_with_role(), region="us-east-1", relay=VsockAddress(PARENT_CID, 8102),
        nsm=NsmClient(transport=stack["nsm"].handle), ca_bundle=str(ca),
    )
    try:
        with pytest.raises(KmsError) as info:
            kms.generate_random(8)
        assert info.value.code == "kms-tls-failed"
    finally:
        kms.close()
        loop.run(kms_relay.close())
        front.close()


def test_relay_down_is_kms_unreachable(stack, sim_dir):
    kms = AttestedKms.for_enclave(
        store_with_role(), region="us-east-1", relay=VsockAddress(PARENT_CID, 8199),
        nsm=NsmClient(transport=stack["nsm"].handle), limits=KmsLimits(max_attempts=2),
        tunnel_limits=TunnelLimits(connect_timeout_s=0.5),
    )
    try:
        with pytest.raises(KmsError) as info:
            kms.generate_random(8)
        assert info.value.code == "kms-unreachable"
    finally:
        kms.close()


@pytest.mark.parametrize("region", ["us-east-1", None])
def test_no_credentials_from_the_parent_is_a_typed_error(stack, sim_dir, region, monkeypatch):
    """An explicit region builds the client at once and the request waits for credentials;
    without one, the first call waits for the credentials to learn the region."""
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    kms = AttestedKms.for_enclave(
        CredentialStore(CredentialLimits(wait_s=0.3)), region=region, scheme="http",
        relay=VsockAddress(PARENT_CID, 8195), nsm=NsmClient(transport=stack["nsm"].handle),
    )
    try:
        with pytest.raises(KmsError) as info:
            kms.generate_random(8)
        assert info.value.code == "credentials-unavailable"
        assert "never received" in info.value.message
    finally:
        kms.close()


def _raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return s.recv(200)


def test_connect_is_answered_only_for_this_regions_kms(sim_dir):
    with KmsTunnel("eu-west-1", relay=VsockAddress(PARENT_CID, 8198),
                   limits=TunnelLimits(head_timeout_s=0.5, connect_timeout_s=0.3)) as tunnel:
        assert tunnel.allowed_hosts == {"kms.eu-west-1.amazonaws.com",
                                        "kms-fips.eu-west-1.amazonaws.com"}
        p = tunnel.port
        assert _raw(p, b"CONNECT evil.example.com:443 HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 403")
        assert _raw(p, b"CONNECT kms.eu-west-1.amazonaws.com:80 HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 403")
        assert _raw(p, b"CONNECT kms.us-east-1.amazonaws.com:443 HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 403")
        assert _raw(p, b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert _raw(p, b"\xff\xfe garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _raw(p, b"CONNECT kms.eu-west-1.amazonaws.com:443").startswith(b"HTTP/1.1 400")
        assert _raw(p, b"X" * 10_000).startswith(b"HTTP/1.1 400")
        # allowed, but nothing listens on the relay port: 502 after the connect deadline
        assert _raw(p, b"CONNECT KMS.eu-west-1.amazonaws.com:443 HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 502")
        assert tunnel.total == 8


def test_any_request_head_gets_a_clear_http_answer(sim_dir):
    """Property: whatever a client sends, the tunnel answers one status line and keeps
    serving; only this region's KMS on port 443 gets past the check (502 here: no relay)."""
    allowed = {b"kms.us-west-2.amazonaws.com:443", b"kms-fips.us-west-2.amazonaws.com:443"}
    line = st.builds(
        lambda m, t, v, extra: m + b" " + t + b" " + v + b"\r\n" + extra + b"\r\n",
        st.sampled_from([b"CONNECT", b"GET", b"connect", b"POST"]),
        st.sampled_from(sorted(allowed)) | st.binary(max_size=40).filter(lambda b: b" " not in b),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"FTP/1"]),
        st.sampled_from([b"", b"Host: x\r\n", b"Proxy-Connection: keep-alive\r\n"]),
    )
    with KmsTunnel("us-west-2", relay=VsockAddress(PARENT_CID, 8196),
                   limits=TunnelLimits(head_timeout_s=0.3, connect_timeout_s=0.05)) as tunnel:

        @settings(max_examples=60, deadline=None)
        @given(line | st.binary(max_size=300).map(lambda b: b + b"\r\n\r\n"))
        def check(head):
            answer = _raw(tunnel.port, head)
            status = answer[:12]
            assert status in {b"HTTP/1.1 400", b"HTTP/1.1 403", b"HTTP/1.1 405",
                              b"HTTP/1.1 502"}, answer
            first = head.split(b"\r\n", 1)[0].split(b" ")
            passes = (len(first) == 3 and first[0] == b"CONNECT"
                      and first[1].lower() in allowed and first[2].startswith(b"HTTP/1."))
            assert (status == b"HTTP/1.1 502") == passes

        check()
        assert _raw(tunnel.port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")


def test_china_regions_use_their_dns_suffix():
    with pytest.raises(TunnelError):
        KmsTunnel("cn-north-1", scheme="ftp")
    assert "kms.cn-north-1.amazonaws.com.cn" in KmsTunnel("cn-north-1").allowed_hosts


def test_plain_http_is_refused_outside_simulation(monkeypatch):
    monkeypatch.delenv("NITRO_VSOCK_SIM_DIR", raising=False)
    with pytest.raises(TunnelError) as info:
        KmsTunnel("us-east-1", scheme="http")
    assert info.value.code == "plaintext-outside-simulation"


def test_loopback_already_up_is_left_alone():
    assert bring_up_loopback() is False  # this test machine's lo is up


def test_loopback_is_brought_up_in_a_fresh_network_namespace():
    """`unshare -n` gives a namespace whose lo is down, like an enclave's."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not installed")
    script = (
        "import socket\n"
        "from enclave.kms.tunnel import bring_up_loopback\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError as e:\n"
        "    print('before', e.errno)\n"
        "print('changed', bring_up_loopback())\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "c = socket.create_connection(s.getsockname(), timeout=2)\n"
        "print('after ok')\n"
        "print('again', bring_up_loopback())\n"
    )
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip("no permission to create a network namespace here")
    p = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", script], capture_output=True, text=True,
        timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    assert lines[0].startswith("before 101")  # ENETUNREACH: lo is down
    assert lines[1:4] == ["changed True", "after ok", "again False"]


def test_tunnel_connection_limit(sim_dir):
    with KmsTunnel("us-east-1", relay=VsockAddress(PARENT_CID, 8197),
                   limits=TunnelLimits(max_connections=1, head_timeout_s=2)) as tunnel:
        held = socket.create_connection(("127.0.0.1", tunnel.port), timeout=5)
        try:
            import time
            time.sleep(0.2)
            assert _raw(tunnel.port, b"").startswith(b"HTTP/1.1 503")
            assert tunnel.refused == 1
        finally:
            held.close()


def test_listening_log_line_keeps_its_fields(sim_dir, caplog):
    """The port and relay reach the JSON log (extra={"fields": ...}, what the formatter reads)."""
    import json
    import logging

    from enclave.logs import JsonLineFormatter

    with caplog.at_level(logging.INFO, logger="enclave.kms.tunnel"), KmsTunnel(
        "us-east-1", relay=VsockAddress(PARENT_CID, 8195)
    ) as tunnel:
        port = tunnel.port
    record = next(r for r in caplog.records if r.getMessage() == "kms tunnel listening")
    line = json.loads(JsonLineFormatter().format(record))
    assert line["port"] == port and line["relay"] == [PARENT_CID, 8195]
