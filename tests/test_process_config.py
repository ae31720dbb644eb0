"""One configuration per process, inner deadlines derived from the outer one (issue 10 item 6).

* for any valid outer deadline, every derived inner one ends before it (hypothesis);
* an inner deadline set explicitly that does not nest, or a bound that is not positive, is a
  typed ``invalid-config`` error (kind ``bad-request``) when the configuration is made, and the
  processes turn it into exit code 2 and one stderr line, never a traceback;
* live (tests/parent/test_proxy.py::test_the_enclave_gives_up_before_the_proxy): behind the
  proxy, the enclave's typed ``deadline-exceeded`` answer arrives before the proxy's own
  deadline (the inner layer gives up first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import Kind
from enclave.config import (
    DEFAULT_DEADLINE_S,
    QUEUE_TIMEOUT_S,
    READ_TIMEOUT_S,
    REPLY_MARGIN_S,
    REQUEST_TIMEOUT_S,
    AppLimits,
    ConfigError,
    EnclaveConfig,
    handler_deadline,
)
from enclave.service import EXIT_USAGE
from enclave.transport import VsockAddress
from parent._proxy_http import HttpLimits
from parent.ingress_config import IngressLimits
from parent.proxy_config import ProxyConfig
from parent.relay_config import RelayLimits

ROOT = Path(__file__).resolve().parent.parent
ENCLAVE = VsockAddress(16, 5000)
OUTER = st.floats(min_value=0.01, max_value=86_400.0, allow_nan=False, allow_infinity=False)


# ---------------------------------------------------------------- defaults are unchanged


def test_defaults_are_the_historic_values() -> None:
    config = EnclaveConfig()
    limits = config.app_limits()
    assert (config.request_timeout_s, limits.default_deadline_s, limits.queue_timeout_s) == (
        REQUEST_TIMEOUT_S, DEFAULT_DEADLINE_S, QUEUE_TIMEOUT_S) == (30.0, 15.0, 2.0)
    protocol = config.protocol_limits()
    assert (protocol.request_timeout, protocol.read_timeout) == (30.0, READ_TIMEOUT_S) == (
        30.0, 10.0)
    assert limits == AppLimits()
    proxy = ProxyConfig.derived(ENCLAVE)
    assert proxy.http == HttpLimits()  # 15 s outer, body 10 s, slot wait 5 s
    assert proxy.keeper.gate_timeout_s == 10.0
    assert ProxyConfig(enclave=ENCLAVE) == proxy


def test_the_enclave_defaults_are_the_protocols() -> None:
    """enclave.config names the protocol's defaults; they must not drift apart."""
    from enclave.protocol import ProtocolLimits

    assert ProtocolLimits().request_timeout == REQUEST_TIMEOUT_S
    assert ProtocolLimits().read_timeout == READ_TIMEOUT_S


# ---------------------------------------------------------------- derived deadlines nest


@settings(max_examples=300, deadline=None)
@given(outer=OUTER)
def test_enclave_deadlines_nest_for_any_outer(outer: float) -> None:
    config = EnclaveConfig(request_timeout_s=outer, reply_margin_s=min(REPLY_MARGIN_S, outer / 2))
    limits = config.app_limits()
    protocol = config.protocol_limits()
    assert protocol.request_timeout == outer
    assert config.handler_deadline_s < outer
    assert limits.default_deadline_s <= config.handler_deadline_s
    assert limits.queue_timeout_s < limits.default_deadline_s
    assert limits.reply_margin_s < limits.default_deadline_s
    assert protocol.read_timeout < outer


@settings(max_examples=300, deadline=None)
@given(outer=OUTER, own=st.floats(min_value=0.001, max_value=1e6), margin=st.floats(0.001, 60))
def test_a_handler_always_ends_before_its_callers_deadline(
    outer: float, own: float, margin: float
) -> None:
    """What ``App.dispatch`` gives a handler, for a request that arrived with ``timeout_ms``."""
    assert handler_deadline(own, outer, margin) < outer
    assert handler_deadline(own, outer, margin) <= own or own < 0.001
    assert handler_deadline(own, None, margin) == own


@settings(max_examples=300, deadline=None)
@given(outer=OUTER)
def test_proxy_deadlines_nest_for_any_outer(outer: float) -> None:
    config = ProxyConfig.derived(ENCLAVE, outer, secret_store="/nonexistent")
    assert config.request_timeout_s == outer
    assert config.http.body_timeout_s < outer
    assert config.http.queue_timeout_s < outer
    assert config.keeper.gate_timeout_s < outer
    assert config.drain.deadline_s > outer  # SIGTERM never cuts off an admitted request


@settings(max_examples=200, deadline=None)
@given(proxy_outer=OUTER, enclave_outer=OUTER)
def test_the_enclave_gives_up_before_the_proxy_whatever_both_are_set_to(
    proxy_outer: float, enclave_outer: float
) -> None:
    """Across processes: the proxy sends what remains of D (timeout_ms); the protocol server
    caps it by its own outer deadline; the app takes its margin off that."""
    enclave = EnclaveConfig(request_timeout_s=enclave_outer,
                            reply_margin_s=min(REPLY_MARGIN_S, enclave_outer / 2))
    limits = enclave.app_limits()
    wire = min(enclave.protocol_limits().request_timeout, proxy_outer)
    for own in (limits.default_deadline_s, 30.0, 2.0):
        assert handler_deadline(own, wire, limits.reply_margin_s) < proxy_outer


# ---------------------------------------------------------------- invalid: typed, at once


def _invalid() -> list[Any]:
    return [
        lambda: EnclaveConfig(request_timeout_s=-1.0),
        lambda: EnclaveConfig(request_timeout_s=float("nan")),
        lambda: EnclaveConfig(request_timeout_s=10.0, default_deadline_s=10.0),
        lambda: EnclaveConfig(default_deadline_s=5.0, queue_timeout_s=5.0),
        lambda: EnclaveConfig(request_timeout_s=5.0, read_timeout_s=6.0),
        lambda: EnclaveConfig(reply_margin_s=30.0),
        lambda: EnclaveConfig(port=0),
        lambda: EnclaveConfig(max_concurrent=0),
        lambda: EnclaveConfig(ingress_port=0),
        lambda: EnclaveConfig(tls_cert="cert.pem"),  # without its key
        lambda: AppLimits(queue_timeout_s=20.0),
        lambda: AppLimits(max_concurrent=-1),
        lambda: HttpLimits(request_timeout_s=0.0),
        lambda: HttpLimits(request_timeout_s=5.0),  # body (10 s) would outlast the request
        lambda: HttpLimits.derived(15.0, body_timeout_s=15.0),
        lambda: HttpLimits.derived(15.0, queue_timeout_s=20.0),
        lambda: ProxyConfig.derived(ENCLAVE, 5.0, gate_timeout_s=6.0, secret_store="/x"),
        lambda: ProxyConfig(enclave=ENCLAVE, port=70000),
        lambda: ProxyConfig.derived(ENCLAVE, drain_deadline_s=-1.0),
        lambda: ProxyConfig.derived(ENCLAVE, drain_grace_s=-0.5),
        lambda: RelayLimits(connect_timeout_s=0.0),
        lambda: RelayLimits(max_connections=0),
        lambda: IngressLimits(idle_timeout_s=-3.0),
    ]


@pytest.mark.parametrize("make", _invalid())
def test_an_invalid_config_is_a_typed_error(make: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.code == "invalid-config"
    assert caught.value.kind == Kind.BAD_REQUEST
    assert caught.value.message


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NITRO_VSOCK_SIM_DIR": os.environ.get("TMPDIR", "/tmp")}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)


@pytest.mark.parametrize("argv", [
    ("-m", "enclave", "--request-timeout", "-1"),
    ("-m", "enclave", "--request-timeout", "10", "--default-deadline", "12"),
    ("-m", "parent", "proxy", "--enclave-cid", "16", "--request-timeout", "5",
     "--body-timeout", "6"),
    ("-m", "parent", "proxy", "--enclave-cid", "16", "--queue-timeout", "0"),
    ("-m", "parent", "kms-relay", "--connect-timeout", "0", "8000",
     "kms.us-east-1.amazonaws.com", "443"),
    ("-m", "parent", "ingress", "--listen", "127.0.0.1:0", "--enclave-cid", "16",
     "--idle-timeout", "-3"),
])
def test_processes_refuse_an_invalid_config_with_exit_2_and_no_traceback(
    argv: tuple[str, ...]
) -> None:
    done = _run(*argv)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "invalid-config (bad-request)" in done.stderr
    assert "Traceback" not in done.stderr
