"""How every toolkit process starts and stops: command dispatch, signals, ready line, exits.

* :func:`dispatch` runs ``python -m PACKAGE COMMAND [ARGS...]`` (parent, simulator).
* :func:`run_service` runs one long-lived service: ``start()`` brings it up and returns a
  :class:`Started` (or an exit code when it cannot start); one JSON line
  ``{"event": "ready", "pid", ...}`` goes to stdout; SIGTERM or SIGINT stops it; ``close()``
  runs within :data:`CLOSE_TIMEOUT_S`. Exit codes are the ``EXIT_*`` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLOSE_TIMEOUT_S",
    "EXIT_FAILED",
    "EXIT_LISTEN",
    "EXIT_OK",
    "EXIT_USAGE",
    "Commands",
    "Started",
    "config_failure",
    "dispatch",
    "run_service",
    "serve_until_signal",
    "usage",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LISTEN = 5
"""Could not listen on the port asked for (taken, not allowed, no vsock)."""
CLOSE_TIMEOUT_S = 10.0
"""A stopping service gets this long to close its listeners and connections."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("enclave.service")

Commands = Mapping[str, tuple[str, str]]
"""command name -> (module with a ``main(argv) -> int``, one-line description)."""


def usage(prog: str, commands: Commands) -> str:
    """The usage text listing every command."""
    width = max(len(name) for name in commands) + 2
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}{text}" for name, (_, text) in commands.items()]
    return "\n".join(lines)


def dispatch(prog: str, commands: Commands, argv: Sequence[str] | None = None) -> int:
    """Run the named command's ``main(rest)``; 2 with the usage for an unknown command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(prog, commands))
        return EXIT_OK if args else EXIT_USAGE
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{usage(prog, commands)}", file=sys.stderr)
        return EXIT_USAGE
    module_name = commands[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"{prog}: {name} is not available in this build", file=sys.stderr)
        return EXIT_USAGE
    return int(module.main(rest) or 0)


def config_failure(prog: str, error: Any) -> int:
    """Report a configuration refused at start-up (a ``ConfigError``: code, kind, message) on
    stderr, as one line, and give :data:`EXIT_USAGE`: no traceback, nothing started."""
    code = getattr(error, "code", "invalid-config")
    kind = getattr(error, "kind", "bad-request")
    message = getattr(error, "message", str(error))
    print(f"{prog}: {code} ({kind}): {message}", file=sys.stderr)
    return EXIT_USAGE


async def _nothing() -> None:
    return None


@dataclass
class Started:
    """A service that is up: what its ready line says, how it runs and how it closes."""

    ready: Mapping[str, Any] | None = None
    """Fields of the JSON ready line (``event`` and ``pid`` are added); None: no line."""
    close: Callable[[], Awaitable[None]] = _nothing
    """Stops listening and releases resources (bounded by CLOSE_TIMEOUT_S)."""
    run: Callable[[asyncio.Event], Awaitable[Any]] | None = None
    """Work to do until the event is set (default: wait for the event)."""
    close_timeout_s: float = CLOSE_TIMEOUT_S
    """How long ``close()`` may take (a draining proxy needs its drain deadline and more)."""


async def serve_until_signal(
    start: Callable[[], Awaitable[Started | int]], *, stop: asyncio.Event | None = None
) -> int:
    """Start, announce, wait for SIGTERM/SIGINT (or ``stop``), close; the exit code."""
    started = await start()
    if isinstance(started, int):
        return started
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    try:
        if started.ready is not None:
            print(json.dumps({"event": "ready", **started.ready, "pid": os.getpid()}), flush=True)
        if started.run is not None:
            await started.run(stop)
        else:
            await stop.wait()
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        try:
            await asyncio.wait_for(started.close(), started.close_timeout_s)
        except TimeoutError:
            log.warning("close-timeout", extra={"fields": {"after_s": started.close_timeout_s}})
    return EXIT_OK


def run_service(start: Callable[[], Awaitable[Started | int]]) -> int:
    """``asyncio.run`` of :func:`serve_until_signal`: the body of a service's ``main()``."""
    return asyncio.run(serve_until_signal(start))
