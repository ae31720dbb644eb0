"""Test servers run as separate processes over the simulated vsock transport.

    python vsock_server.py protocol --sim-dir D --cid 16 --port 5000 [--read-timeout S ...]
    python vsock_server.py echo     --sim-dir D --cid 16 --port 5001
    python vsock_server.py relay    --sim-dir D --cid 3  --port 8000 --to-cid 16 --to-port 5001

Prints ``READY <cid> <port>`` on stdout once listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from enclave.protocol import HandlerError, ProtocolLimits, serve
from enclave.transport import (
    VsockAddress,
    open_connection,
    relay,
    start_server,
)

SECRET = "s3cr3t-do-not-leak"


def protocol_handlers() -> dict:
    state = {"running": 0, "peak": 0, "calls": 0}

    async def echo(body):
        return body

    async def sleep(body):
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        try:
            await asyncio.sleep(body["seconds"])
        finally:
            state["running"] -= 1
        return body.get("tag")

    async def fail(body):
        raise HandlerError(body["code"], body["message"])

    async def crash(body):
        raise RuntimeError(f"{SECRET} {body!r}")

    async def big(body):
        return b"x" * body

    async def int_keys(body):
        return {1: "one"}

    async def stats(body):
        state["calls"] += 1
        return {"peak": state["peak"], "running": state["running"], "pid": os.getpid()}

    async def reset(body):
        state["peak"] = 0
        return None

    return {
        "echo": echo, "sleep": sleep, "fail": fail, "crash": crash, "big": big,
        "int-keys": int_keys, "stats": stats, "reset": reset,
    }


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Raw byte echo until EOF, then half-close."""
    while data := await reader.read(1 << 20):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["protocol", "echo", "relay"])
    parser.add_argument("--sim-dir", required=True)
    parser.add_argument("--cid", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--to-cid", type=int)
    parser.add_argument("--to-port", type=int)
    for name in ("max-frame", "max-in-flight", "max-connections"):
        parser.add_argument(f"--{name}", type=int)
    for name in ("request-timeout", "idle-timeout", "read-timeout", "write-timeout"):
        parser.add_argument(f"--{name}", type=float)
    args = parser.parse_args()
    address = VsockAddress(args.cid, args.port)

    if args.mode == "protocol":
        fields = {
            name.replace("-", "_"): getattr(args, name.replace("-", "_"))
            for name in ("max-frame", "max-in-flight", "max-connections", "request-timeout",
                         "idle-timeout", "read-timeout", "write-timeout")
        }
        limits = ProtocolLimits(**{k: v for k, v in fields.items() if v is not None})
        server = await serve(address, protocol_handlers(), limits=limits, sim_dir=args.sim_dir)
    elif args.mode == "echo":
        server = await start_server(echo_stream, address, sim_dir=args.sim_dir)
    else:
        target = VsockAddress(args.to_cid, args.to_port)

        async def forward(reader, writer):
            up_reader, up_writer = await open_connection(target, sim_dir=args.sim_dir)
            await relay(reader, writer, up_reader, up_writer)

        server = await start_server(forward, address, sim_dir=args.sim_dir)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"READY {server.address.cid} {server.address.port}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
