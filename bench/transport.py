"""Transport and protocol throughput and latency over the simulated vsock (AF_UNIX), next to
socat relaying the same bytes over the same kind of socket, in the same run.

Throughput (MB/s) for 1 KiB, 64 KiB and 1 MiB messages. One sender (this process, blocking
``sendall`` of one message at a time) and one sink (a helper process, ``recv_into`` a 1 MiB
buffer until EOF, then an 8-byte ack) are shared by every row, so rows differ only in what
sits between them:

* direct          sender -> sink (no relay: the ceiling of the two Python endpoints)
* socat           sender -> ``socat UNIX-LISTEN,fork UNIX-CONNECT`` -> sink (defaults: -b 8192)
* socat tuned     same, ``-b 262144`` and 4 MiB ``sndbuf``/``rcvbuf`` on both sockets
* relay           sender -> our relay process (``start_server`` + ``open_connection`` +
                  ``relay()``, on the simulated vsock addresses) -> sink
* transport       our asyncio client (``open_connection``, ``write``+``drain`` per message)
                  -> our server (``start_server``, ``read(1 MiB)`` until EOF): no relay
* protocol        ``ProtocolClient`` -> ``serve`` process, 8 requests in flight, request body
                  = message, reply = its length: framing + CBOR both ways, no relay

Latency: sequential round trips of a 16-byte message: raw echo (direct, through socat,
through our relay) and a ``ProtocolClient.request`` to an echo op. Plus a burst of
concurrent connections held by one protocol server.

Every row is measured REPEATS times, interleaved (the order rotates each round); the median is
reported, and ratios are medians of per-round ratios. The CPU time of the middle process per
GB (socat's forked children included) is reported too: on a shared machine it is steadier
than wall-clock throughput. Run:
``.venv/bin/python bench/transport.py`` (socat: ``apt-get install -y socat``; without it the
socat rows say so). Prints a Markdown table for docs/benchmarks.md. Stops by
itself after DEADLINE_S at most.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from enclave.protocol import ProtocolClient, ProtocolLimits, serve  # noqa: E402
from enclave.transport import (  # noqa: E402
    TransportLimits,
    VsockAddress,
    open_connection,
    relay,
    start_server,
)

DEADLINE_S = 110  # the whole run; a watchdog ends it after this
IO_TIMEOUT_S = 30  # any single socket wait
REPEATS = 7
SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}
VOLUME = {1024: 48 << 20, 64 * 1024: 384 << 20, 1024 * 1024: 384 << 20}  # bytes per trial
PROTOCOL_VOLUME = {1024: 8 << 20, 64 * 1024: 192 << 20, 1024 * 1024: 256 << 20}
PROTOCOL_WINDOW = 8  # requests in flight
RTT_COUNT = 2000
CONCURRENT_CONNECTIONS = 200
SOCK_BUFFER = 4 << 20
TUNED_SOCAT = ["-b", "262144"]
TUNED_SOCAT_OPTS = f",sndbuf={SOCK_BUFFER},rcvbuf={SOCK_BUFFER}"

# simulated vsock addresses
RELAY_ADDR = VsockAddress(3, 8000)
SINK_ADDR = VsockAddress(16, 6000)  # the raw sink, reachable at <dir>/16-6000.sock
ECHO_ADDR = VsockAddress(16, 6001)
TRANSPORT_SINK_ADDR = VsockAddress(16, 6002)
PROTOCOL_ADDR = VsockAddress(16, 6003)
RELAY_ECHO_ADDR = VsockAddress(3, 8001)


class BenchDeadline(Exception):
    """The run went over DEADLINE_S (not an OSError: nothing may swallow it)."""


def _die_with_parent() -> None:
    """Helper processes get SIGTERM if this script dies, however it dies (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def sim_path(sim_dir: str, address: VsockAddress) -> str:
    return os.path.join(sim_dir, f"{address.cid}-{address.port}.sock")


# --- helper process roles -------------------------------------------------------------------


def role_sink(path: str) -> None:
    """Raw sink: per connection, count bytes until EOF, answer 8-byte count, close."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    print("READY", flush=True)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        conn, _ = listener.accept()
        conn.settimeout(IO_TIMEOUT_S)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUFFER)
        total = 0
        while n := conn.recv_into(view):
            total += n
        conn.sendall(total.to_bytes(8, "big"))
        conn.close()


def role_echo(path: str) -> None:
    """Raw echo for round trips: one thread-free loop per connection, sequentially."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    print("READY", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.settimeout(IO_TIMEOUT_S)
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.close()


async def role_relay(sim_dir: str, listen: VsockAddress, target: VsockAddress) -> None:
    async def forward(reader, writer):
        up_reader, up_writer = await open_connection(target, sim_dir=sim_dir, deadline=5)
        await relay(reader, writer, up_reader, up_writer)

    server = await start_server(forward, listen, sim_dir=sim_dir)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def role_transport_sink(sim_dir: str) -> None:
    async def sink(reader, writer):
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        writer.write(total.to_bytes(8, "big"))
        await writer.drain()

    server = await start_server(sink, TRANSPORT_SINK_ADDR, sim_dir=sim_dir)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def role_protocol(sim_dir: str) -> None:
    async def sink(body):
        return len(body)

    async def echo(body):
        return body

    limits = ProtocolLimits(max_connections=CONCURRENT_CONNECTIONS + 16)
    server = await serve(PROTOCOL_ADDR, {"sink": sink, "echo": echo}, limits=limits,
                         sim_dir=sim_dir)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


def run_role(args: argparse.Namespace) -> None:
    d = args.sim_dir
    if args.role == "sink":
        role_sink(sim_path(d, SINK_ADDR))
    elif args.role == "echo":
        role_echo(sim_path(d, ECHO_ADDR))
    elif args.role == "relay":
        asyncio.run(role_relay(d, RELAY_ADDR, SINK_ADDR))
    elif args.role == "relay-echo":
        asyncio.run(role_relay(d, RELAY_ECHO_ADDR, ECHO_ADDR))
    elif args.role == "transport-sink":
        asyncio.run(role_transport_sink(d))
    elif args.role == "protocol":
        asyncio.run(role_protocol(d))


# --- process management -----------------------------------------------------------------------


class Helpers:
    def __init__(self, sim_dir: str) -> None:
        self.sim_dir = sim_dir
        self.procs: list[subprocess.Popen] = []

    def role(self, name: str) -> None:
        argv = [sys.executable, __file__, "--role", name, "--sim-dir", self.sim_dir]
        self._start(argv, ready_line=True)

    def command(self, argv: list[str], wait_for: str) -> None:
        self._start(argv, ready_line=False)
        end = time.monotonic() + 10
        while not os.path.exists(wait_for):
            if time.monotonic() > end:
                raise RuntimeError(f"{argv[0]} did not create {wait_for}")
            time.sleep(0.01)

    def _start(self, argv: list[str], *, ready_line: bool) -> None:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if ready_line else subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # no threads in this process
        )
        self.procs.append(proc)
        if ready_line:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode().strip()
            if line != "READY":
                raise RuntimeError(f"helper {argv[3]} failed to start")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# --- measurements -------------------------------------------------------------------------------


def connect_unix(path: str) -> socket.socket:
    end = time.monotonic() + 5
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(IO_TIMEOUT_S)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.01)


def blocking_send(path: str, size: int, volume: int) -> float:
    """MB/s of sending ``volume`` bytes in ``size`` messages to a sink behind ``path``."""
    message = memoryview(bytes(size))
    count = volume // size
    sock = connect_unix(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUFFER)
    started = time.perf_counter()
    for _ in range(count):
        sock.sendall(message)
    sock.shutdown(socket.SHUT_WR)
    ack = b""
    while len(ack) < 8 and (chunk := sock.recv(8 - len(ack))):
        ack += chunk
    elapsed = time.perf_counter() - started
    sock.close()
    if int.from_bytes(ack, "big") != count * size:
        raise RuntimeError(f"sink got {int.from_bytes(ack, 'big')} of {count * size} bytes")
    return count * size / elapsed / 1e6


async def transport_send(sim_dir: str, size: int, volume: int) -> float:
    message = memoryview(bytes(size))
    count = volume // size
    reader, writer = await open_connection(TRANSPORT_SINK_ADDR, sim_dir=sim_dir, deadline=5)
    started = time.perf_counter()
    for _ in range(count):
        writer.write(message)
        await writer.drain()
    writer.write_eof()
    ack = await reader.readexactly(8)
    elapsed = time.perf_counter() - started
    writer.close()
    if int.from_bytes(ack, "big") != count * size:
        raise RuntimeError("transport sink lost bytes")
    return count * size / elapsed / 1e6


async def protocol_send(sim_dir: str, size: int, volume: int) -> float:
    body = bytes(size)
    count = max(PROTOCOL_WINDOW, volume // size)
    client = await ProtocolClient.connect(PROTOCOL_ADDR, sim_dir=sim_dir, deadline=5)
    window = asyncio.Semaphore(PROTOCOL_WINDOW)

    async def one() -> None:
        async with window:
            if await client.request("sink", body, timeout=IO_TIMEOUT_S) != size:
                raise RuntimeError("protocol sink answered wrongly")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - started
    await client.close()
    return count * size / elapsed / 1e6


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6


def raw_rtt(path: str) -> tuple[float, float]:
    sock = connect_unix(path)
    message = b"p" * 16
    samples = []
    for _ in range(RTT_COUNT):
        started = time.perf_counter()
        sock.sendall(message)
        got = 0
        while got < len(message):
            got += len(sock.recv(64))
        samples.append(time.perf_counter() - started)
    sock.close()
    return percentiles(samples[100:])


async def protocol_rtt(sim_dir: str) -> tuple[float, float]:
    client = await ProtocolClient.connect(PROTOCOL_ADDR, sim_dir=sim_dir, deadline=5)
    message = b"p" * 16
    samples = []
    for _ in range(RTT_COUNT):
        started = time.perf_counter()
        await client.request("echo", message, timeout=IO_TIMEOUT_S)
        samples.append(time.perf_counter() - started)
    await client.close()
    return percentiles(samples[100:])


async def concurrent_clients(sim_dir: str) -> tuple[int, float]:
    limits = TransportLimits(socket_buffer=256 * 1024)  # many sockets: keep kernel memory low
    started = time.perf_counter()
    clients = await asyncio.gather(
        *(ProtocolClient.connect(PROTOCOL_ADDR, sim_dir=sim_dir, deadline=10,
                                 transport_limits=limits)
          for _ in range(CONCURRENT_CONNECTIONS))
    )
    answers = await asyncio.gather(
        *(c.request("echo", i, timeout=IO_TIMEOUT_S) for i, c in enumerate(clients))
    )
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in clients))
    return sum(a == i for i, a in enumerate(answers)), elapsed * 1e3


# --- the run ------------------------------------------------------------------------------------


def main() -> int:
    def over_time(*_: object) -> None:
        raise BenchDeadline(f"stopped after {DEADLINE_S} s")

    signal.signal(signal.SIGALRM, over_time)
    signal.alarm(DEADLINE_S)
    socat = shutil.which("socat")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vsock-bench-") as tmp:
        sim_dir = os.path.join(tmp, "v")
        os.mkdir(sim_dir, 0o700)
        helpers = Helpers(sim_dir)
        try:
            return run(helpers, sim_dir, socat, started)
        finally:
            helpers.stop()


def process_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user + system) of a process; with reaped children (socat's forks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def run(helpers: Helpers, sim_dir: str, socat: str | None, started: float) -> int:
    for name in ("sink", "echo", "relay", "relay-echo", "transport-sink", "protocol"):
        helpers.role(name)
    relay_pid = helpers.procs[2].pid
    sink = sim_path(sim_dir, SINK_ADDR)
    echo = sim_path(sim_dir, ECHO_ADDR)
    rows: dict[str, str] = {"direct": sink, "relay": sim_path(sim_dir, RELAY_ADDR)}
    middle: dict[str, tuple[int, bool]] = {"relay": (relay_pid, False)}
    rtt_paths = {"direct": echo, "relay": sim_path(sim_dir, RELAY_ECHO_ADDR)}
    if socat:
        for label, extra, opts in (("socat", [], ""), ("socat tuned", TUNED_SOCAT,
                                                       TUNED_SOCAT_OPTS)):
            for target, name in ((sink, label), (echo, f"{label} echo")):
                listen = os.path.join(sim_dir, f"socat-{name.replace(' ', '-')}.sock")
                helpers.command(
                    [socat, *extra, f"UNIX-LISTEN:{listen},fork{opts}",
                     f"UNIX-CONNECT:{target}{opts}"],
                    wait_for=listen,
                )
                if name.endswith("echo"):
                    rtt_paths[label] = listen
                else:
                    rows[label] = listen
                    middle[label] = (helpers.procs[-1].pid, True)

    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], float] = {}
    order = list(rows)
    for repeat in range(REPEATS):
        for size in SIZES.values():
            for label in order[repeat % len(order):] + order[: repeat % len(order)]:
                path = rows[label]
                pid, children = middle.get(label, (0, False))
                before = process_cpu(pid, children=children) if pid else 0.0
                results.setdefault((label, size), []).append(
                    blocking_send(path, size, VOLUME[size])
                )
                if pid:
                    time.sleep(0.05)  # let socat reap its child, so its CPU time is counted
                    cpu[(label, size)] = (cpu.get((label, size), 0.0)
                                          + process_cpu(pid, children=children) - before)
            results.setdefault(("transport", size), []).append(
                asyncio.run(transport_send(sim_dir, size, VOLUME[size]))
            )
            results.setdefault(("protocol", size), []).append(
                asyncio.run(protocol_send(sim_dir, size, PROTOCOL_VOLUME[size]))
            )
    rtts = {label: raw_rtt(path) for label, path in rtt_paths.items()}
    rtts["protocol request"] = asyncio.run(protocol_rtt(sim_dir))
    answered, burst_ms = asyncio.run(concurrent_clients(sim_dir))
    cpu_per_gb = {key: seconds / (REPEATS * VOLUME[key[1]] / 1e9) for key, seconds in cpu.items()}
    report(results, cpu_per_gb, rtts, answered, burst_ms, socat, time.monotonic() - started)
    return 0


def report(results, cpu_per_gb, rtts, answered, burst_ms, socat, elapsed) -> None:
    median = {key: statistics.median(values) for key, values in results.items()}

    def mbs(label: str, size: int) -> str:
        value = median.get((label, size))
        return f"{value:,.0f}" if value is not None else "n/a"

    def ratio(label: str, base: str, size: int) -> str:
        """Median of the per-repeat ratios (each pair measured back to back)."""
        a, b = results.get((label, size)), results.get((base, size))
        if not a or not b:
            return "n/a"
        return f"{statistics.median(x / y for x, y in zip(a, b, strict=True)):.2f}"

    print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"socat: {_socat_version(socat) if socat else 'not installed (apt-get install socat)'};"
          f" median of {REPEATS}; run took {elapsed:.0f} s\n")
    print("Throughput, MB/s (10^6 bytes/s), sender -> [middle] -> sink over AF_UNIX:\n")
    labels = ["direct", "socat", "socat tuned", "relay", "transport", "protocol"]
    print("| message | " + " | ".join(labels) + " | relay / socat | relay / socat tuned |")
    print("|---|" + "---:|" * (len(labels) + 2))
    for name, size in SIZES.items():
        cells = [mbs(label, size) for label in labels]
        print(f"| {name} | " + " | ".join(cells)
              + f" | {ratio('relay', 'socat', size)} | {ratio('relay', 'socat tuned', size)} |")
    print("\nCPU time of the middle process (user + system), seconds per GB relayed:\n")
    middles = [m for m in ("socat", "socat tuned", "relay") if any(k[0] == m for k in cpu_per_gb)]
    print("| message | " + " | ".join(middles) + " |")
    print("|---|" + "---:|" * len(middles))
    for name, size in SIZES.items():
        cells = [f"{cpu_per_gb[(m, size)]:.2f}" if (m, size) in cpu_per_gb else "n/a"
                 for m in middles]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nRound trip of a 16-byte message, sequential, microseconds:\n")
    print("| path | p50 | p99 |")
    print("|---|---:|---:|")
    for label in ("direct", "socat", "socat tuned", "relay", "protocol request"):
        if label in rtts:
            p50, p99 = rtts[label]
            print(f"| {label} | {p50:.0f} | {p99:.0f} |")
    protocol_1k = median.get(("protocol", 1024))
    if protocol_1k:
        print(f"\nProtocol with 1 KiB bodies, {PROTOCOL_WINDOW} in flight: "
              f"{protocol_1k * 1e6 / 1024:,.0f} requests/s.")
    print(f"{CONCURRENT_CONNECTIONS} concurrent protocol connections, one request each: "
          f"{answered} answered correctly in {burst_ms:.0f} ms (connect + request).")


def _socat_version(path: str) -> str:
    try:
        out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return path
    for line in out.splitlines():
        if "socat version" in line:
            return line.split("socat version")[1].split()[0]
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--sim-dir", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="rounds per row")
    parser.add_argument("--deadline", type=int, default=DEADLINE_S,
                        help="seconds before the watchdog stops the run (raise it under load)")
    args = parser.parse_args()
    if args.role:
        run_role(args)
    else:
        REPEATS, DEADLINE_S = args.repeats, args.deadline
        sys.exit(main())
