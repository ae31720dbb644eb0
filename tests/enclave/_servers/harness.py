"""Start the test servers of vsock_server.py as real processes and stop them again."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "vsock_server.py"
REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 20.0  # seconds for a server process to print READY
STOP_TIMEOUT = 5.0


class ServerProcess:
    """``python vsock_server.py MODE ...`` in its own process; a context manager."""

    def __init__(self, mode: str, sim_dir: Path, cid: int, port: int, **options: object) -> None:
        self.sim_dir = sim_dir
        self.cid = cid
        self.port = port
        argv = [sys.executable, str(SCRIPT), mode, "--sim-dir", str(sim_dir),
                "--cid", str(cid), "--port", str(port)]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NITRO_VSOCK_")}
        env["PYTHONPATH"] = str(REPO)
        # a file, not a pipe: a pipe nobody reads could fill up and block the server
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._stderr, env=env, cwd=REPO
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            end = time.monotonic() + START_TIMEOUT
            while time.monotonic() < end:
                if sel.select(timeout=0.1):
                    line = self.proc.stdout.readline().decode()
                    if line.startswith("READY"):
                        return
                    if not line:
                        break
        self.stop()
        raise RuntimeError(f"server did not start: {self.stderr()}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
