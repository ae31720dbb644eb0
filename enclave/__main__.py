"""``python -m enclave [--app module:attr] [--port 5000] [--asgi MODULE:ATTR]``: run on vsock.

The default app is the sealed-secrets app (``enclave.app:default_app``). A user's app is a
module path away: ``--app mypkg.app:build`` where ``build`` is an ``enclave.app.App`` or a
callable returning one. The server listens on ``(VMADDR_CID_ANY, port)`` — in simulation
(``NITRO_VSOCK_SIM_DIR``) as ``NITRO_VSOCK_SIM_CID``. It prints one JSON ``ready`` line on
stdout, logs JSON lines on stderr (ids, codes, timings — never payloads) and stops cleanly on
SIGTERM/SIGINT. Exit codes: 0 stopped, 2 usage, app loading error or invalid configuration
(``invalid-config``, ``enclave.config``), 5 cannot listen, 6 no NSM
(on hardware, i.e. without ``NITRO_VSOCK_SIM_DIR``: neither ``/dev/nsm`` nor ``NITRO_NSM_SOCKET``).

With ``--asgi MODULE:ATTR`` the process also serves that ASGI 3 app over TLS on vsock port
``--ingress-port`` (default 5443), with a key pair made here at start and the attestation
route ahead of the app (``enclave.ingress``, docs/ingress.md); the ready line then carries
``ingress_port``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from enclave.config import DEFAULT_DEADLINE_S, REQUEST_TIMEOUT_S, ConfigError, EnclaveConfig
from enclave.service import EXIT_LISTEN, EXIT_USAGE, Started, config_failure, run_service
from enclave.wire import APP_PORT

DEFAULT_APP = "enclave.app:default_app"
DEFAULT_PORT = APP_PORT
EXIT_NO_NSM = 6


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m enclave",
        description="Run an enclave app (default: sealed secrets) on vsock.",
    )
    p.add_argument("--app", default=DEFAULT_APP, help=f"module:attr (default {DEFAULT_APP})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="vsock port (default 5000)")
    p.add_argument("--debug", action="store_true", help="log every request (ids and codes)")
    p.add_argument(
        "--no-loopback",
        action="store_true",
        help="do not bring up 'lo' on hardware (needed by the KMS tunnel)",
    )
    p.add_argument("--asgi", metavar="MODULE:ATTR", help="also serve this ASGI app over TLS")
    p.add_argument("--ingress-port", type=int, default=None,
                   help="vsock port of the TLS listener (default 5443)")
    p.add_argument("--tls-cert", metavar="PEM", help="the app's own certificate (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="the app's own private key (with --tls-cert)")
    p.add_argument("--proxy-protocol", action="store_true",
                   help="connections start with a PROXY v2 header (parent --proxy-protocol)")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S, metavar="S",
                   help="outer deadline of one request; the inner ones derive from it "
                   f"(default {REQUEST_TIMEOUT_S:g})")
    p.add_argument("--default-deadline", type=float, default=None, metavar="S",
                   help="deadline of an operation that declares none (default "
                   f"min({DEFAULT_DEADLINE_S:g}, request timeout - reply margin))")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="handler runs at once (default: the app's own, 128)")
    return p


async def _start(app: object, config: EnclaveConfig, asgi: object = None) -> Started | int:
    from enclave.app import App, log_event
    from enclave.transport import VMADDR_CID_ANY, TransportError, VsockAddress

    assert isinstance(app, App)
    port = config.port
    try:
        server = await app.serve(
            VsockAddress(VMADDR_CID_ANY, port), protocol_limits=config.protocol_limits()
        )
    except (TransportError, OSError) as exc:
        print(f"enclave: cannot listen on vsock port {port}: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    ingress = None
    if asgi is not None:
        from enclave._asgi_main import start

        ingress = await start(asgi, app, config)
        if ingress is None:
            server.close()
            return EXIT_LISTEN
    address = getattr(server, "address", None)
    log_event("listening", app=app.name, version=app.version, port=port)

    async def close() -> None:
        log_event("stopping", app=app.name)
        server.close()
        if ingress is not None:
            await ingress.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        app.close()

    ready = {"app": app.name, "version": app.version, "cid": getattr(address, "cid", None)}
    if ingress is not None:
        ready["ingress_port"] = ingress.address.port
    return Started(ready={**ready, "port": port}, close=close)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from enclave.app import load_app
    from enclave.logs import configure_json_logging

    configure_json_logging(logging.DEBUG if args.debug else logging.INFO)
    try:
        config = EnclaveConfig.from_args(args)
    except ConfigError as exc:
        return config_failure("enclave", exc)
    hardware = not os.environ.get("NITRO_VSOCK_SIM_DIR")
    if hardware:
        from enclave.nsm._device import NSM_DEVICE, NSM_SOCKET_ENV, UNAVAILABLE_MESSAGE

        if not os.environ.get(NSM_SOCKET_ENV) and not os.path.exists(NSM_DEVICE):
            print(f"enclave: {UNAVAILABLE_MESSAGE}", file=sys.stderr)
            return EXIT_NO_NSM
    if hardware and not args.no_loopback:
        from enclave.kms.tunnel import bring_up_loopback

        with contextlib.suppress(Exception):
            bring_up_loopback()
    try:
        app = load_app(args.app)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        print(f"enclave: cannot load app {args.app!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        app.limits = config.app_limits(app.limits)
    except ConfigError as exc:
        return config_failure("enclave", exc)
    asgi = None
    if args.asgi:
        from enclave._asgi_main import load_asgi

        try:
            asgi = load_asgi(args.asgi)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            print(f"enclave: cannot load ASGI app {args.asgi!r}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return run_service(lambda: _start(app, config, asgi))


if __name__ == "__main__":
    sys.exit(main())
