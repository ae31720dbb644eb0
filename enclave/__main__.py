"""``python -m enclave [--app module:attr] [--port 5000]``: run an enclave app on vsock.

The default app is the sealed-secrets app (``enclave.handlers:default_app``). A user's app is a
module path away: ``--app mypkg.app:build`` where ``build`` is an ``enclave.app.App`` or a
callable returning one. The server listens on ``(VMADDR_CID_ANY, port)`` — in simulation
(``NITRO_VSOCK_SIM_DIR``) as ``NITRO_VSOCK_SIM_CID``. It prints one JSON ``ready`` line on
stdout, logs JSON lines on stderr (ids, codes, timings — never payloads) and stops cleanly on
SIGTERM/SIGINT. Exit codes: 0 stopped, 2 usage or app loading error, 5 cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from .service import EXIT_LISTEN, EXIT_USAGE, Started, run_service
from .wire import APP_PORT

DEFAULT_APP = "enclave.handlers:default_app"
DEFAULT_PORT = APP_PORT


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
    return p


async def _start(app: object, port: int) -> Started | int:
    from .app import App, log_event
    from .transport import VMADDR_CID_ANY, TransportError, VsockAddress

    assert isinstance(app, App)
    try:
        server = await app.serve(VsockAddress(VMADDR_CID_ANY, port))
    except (TransportError, OSError) as exc:
        print(f"enclave: cannot listen on vsock port {port}: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    address = getattr(server, "address", None)
    log_event("listening", app=app.name, version=app.version, port=port)

    async def close() -> None:
        log_event("stopping", app=app.name)
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        app.close()

    ready = {"app": app.name, "version": app.version, "cid": getattr(address, "cid", None)}
    return Started(ready={**ready, "port": port}, close=close)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .app import load_app
    from .logs import configure_json_logging

    configure_json_logging(logging.DEBUG if args.debug else logging.INFO)
    if not 0 < args.port < 2**32:
        print("enclave: --port must be 1..4294967295", file=sys.stderr)
        return EXIT_USAGE
    if not args.no_loopback and not os.environ.get("NITRO_VSOCK_SIM_DIR"):
        from .kms_tunnel import bring_up_loopback

        with contextlib.suppress(Exception):
            bring_up_loopback()
    try:
        app = load_app(args.app)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        print(f"enclave: cannot load app {args.app!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_service(lambda: _start(app, args.port))


if __name__ == "__main__":
    sys.exit(main())
