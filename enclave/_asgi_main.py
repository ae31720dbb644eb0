"""The ``--asgi`` part of ``python -m enclave``: load the ASGI app, start the TLS listener."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import resource
import sys
from typing import Any

__all__ = ["load_asgi", "start"]


def load_asgi(spec: str) -> Any:
    """``MODULE:ATTR`` -> the ASGI app object (ValueError for a malformed spec)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("expected MODULE:ATTR, e.g. myservice.api:app")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable (an ASGI app is)")
    return obj


def _raise_fd_limit() -> None:
    """Each connection is a descriptor: use the hard limit, not the (often 1024) soft one."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def start(asgi: Any, app: Any, args: argparse.Namespace | Any) -> Any:
    """Make the TLS identity, install the runtime API, start the listener (None: cannot).

    ``args``: the process's ``EnclaveConfig`` (or parsed flags): ``ingress_port``,
    ``tls_cert``, ``tls_key``, ``proxy_protocol``."""
    from .ingress import DEFAULT_INGRESS_PORT, make_identity, runtime, start_ingress
    from .transport import TransportError

    _raise_fd_limit()
    port = getattr(args, "ingress_port", None) or DEFAULT_INGRESS_PORT
    try:
        identity = make_identity(getattr(args, "tls_cert", None), getattr(args, "tls_key", None))
    except (OSError, ValueError) as exc:
        print(f"enclave: cannot load the TLS certificate/key: {exc}", file=sys.stderr)
        return None
    runtime.install(app)
    try:
        return await start_ingress(
            asgi, app, identity, port=port,
            proxy_protocol=bool(getattr(args, "proxy_protocol", False)),
        )
    except (TransportError, OSError) as exc:
        print(f"enclave: cannot listen on vsock port {port}: {exc}", file=sys.stderr)
        return None
