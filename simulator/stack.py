"""The local stack: every part of a deployment as its own process, wired like on EC2.

``python -m simulator up --state DIR [--enclave-source DIR]`` starts, in order:

1. ``kms``        — the local KMS endpoint (``python -m simulator.kms``), trusting the test PKI;
2. ``nsm``        — the simulated NSM device of the enclave (``python -m simulator.nsm``), its
   PCR0-2 measured from the enclave code that will run;
3. ``kms-relay``  — the parent's vsock → TCP relay to the KMS (``python -m parent kms-relay``);
4. ``enclave``    — ``python -m enclave`` with ``NITRO_NSM_SOCKET`` and ``NITRO_VSOCK_SIM_DIR``
   (simulated CID 16), run isolated from ``DIR/run/<name>-image``: a fresh copy of the
   ``enclave`` and ``attestation`` packages, which is exactly what the NSM measured
   (``simulator.measure.build_image_root``); no bytecode, no inherited environment;
5. ``credentials``— the parent's credential hand-off (``python -m parent credentials``);
6. ``proxy``      — the parent HTTP proxy (``python -m parent proxy``).

It writes ``DIR/stack.json`` (URLs, root PEM, CID, PCRs, local credentials, pids, logs) and runs
until SIGINT/SIGTERM, then stops the children in reverse order: SIGTERM to each one's process
group, a bounded wait, then SIGKILL. A child that dies while starting stops the whole stack with
its name, exit code and the tail of its log. Each child also gets ``PR_SET_PDEATHSIG`` so it
dies with the launcher even if the launcher is killed outright. Logs are in ``DIR/logs``.

Files: ``DIR`` and its ``logs``, ``run``, ``vsock`` and ``pki`` directories are mode 0700 and
``stack.json`` is 0600, whatever the umask; every socket lives inside one of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attestation as _attestation_pkg
import enclave as _enclave_pkg
from enclave.wire import APP_PORT, INGRESS_PORT, KMS_RELAY_PORT
from simulator.kms.store import atomic_write
from simulator.measure import build_image_root, enclave_argv

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENCLAVE_SOURCE = Path(_enclave_pkg.__file__).resolve().parent
ATTESTATION_SOURCE = Path(_attestation_pkg.__file__).resolve().parent
"""The ``attestation`` package the enclave imports: copied and measured with it."""
ENCLAVE_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")
"""The only variables of the launcher's environment the simulated enclave inherits."""
DEFAULT_ENCLAVE_CID = 16
ENCLAVE_PORT = APP_PORT
INGRESS_VSOCK_PORT = INGRESS_PORT  # the enclave's TLS listener with --asgi (enclave.ingress)
REGION = "us-east-1"
STACK_FILE = "stack.json"
CREDENTIALS_INTERVAL_S = 5.0  # re-push often: a restarted simulated enclave gets them soon

__all__ = [
    "DEFAULT_ENCLAVE_CID",
    "ENCLAVE_PORT",
    "EnclaveHandle",
    "Stack",
    "StackConfig",
    "StackError",
    "StackLimits",
    "main",
]


class StackError(Exception):
    """The stack could not start; the message names the part and why."""

    code = "stack-failed"


@dataclass(frozen=True)
class StackLimits:
    startup_timeout_s: float = 30.0  # per child, until it is ready
    stop_timeout_s: float = 5.0  # after SIGTERM, before SIGKILL
    poll_interval_s: float = 0.05
    log_tail_lines: int = 15  # lines of a failed child's log shown in the error


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    enclave_source: Path = DEFAULT_ENCLAVE_SOURCE
    enclave_cid: int = DEFAULT_ENCLAVE_CID
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 0  # 0 = a free port
    kms_port: int = 0
    python: str = sys.executable
    limits: StackLimits = field(default_factory=StackLimits)
    debug_logs: bool = False
    proxy_args: tuple[str, ...] = ()  # extra `python -m parent proxy` options
    asgi: str | None = None  # MODULE:ATTR served over TLS in the enclave (attested ingress)
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 0  # 0 = a free port
    ingress_args: tuple[str, ...] = ()  # extra `python -m parent ingress` options


# ---------------------------------------------------------------- child processes


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One started process: its name, Popen and log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    spec: dict = field(default_factory=dict)  # how it was started (args, env, cwd)
    log_offset: int = 0  # where this run's output starts in the (appended) log file

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float) -> int | None:
        """SIGTERM the child's process group, wait ``timeout``, then SIGKILL it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout)
        # the group may hold grandchildren even after the leader exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EnclaveHandle:
    """A running simulated enclave: its NSM device, the app, the credential hand-off."""

    name: str
    cid: int
    source: Path
    pcrs: dict[str, str]
    module_id: str
    nsm_socket: Path
    children: list[Child]


class Stack:
    """Starts and stops the local deployment (see the module docstring)."""

    def __init__(self, config: StackConfig, *, echo: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.limits = config.limits
        self.state = Path(config.state_dir).absolute()
        self.logs = self.state / "logs"
        self.run_dir = self.state / "run"
        self.vsock_dir = self.state / "vsock"
        self.pki_dir = self.state / "pki"
        self.children: list[Child] = []
        self.enclaves: dict[str, EnclaveHandle] = {}
        self.kms_url = ""
        self.proxy_url = ""
        self.ingress_url = ""
        self.kms_relay_metrics_url = ""
        self._echo = echo or (lambda _msg: None)

    # ------------------------------------------------------------ environment

    def _env(
        self, extra: Mapping[str, str] | None = None, *, pythonpath: Sequence[Path] = ()
    ) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NITRO_", "AWS_"))}
        paths = [*map(str, pythonpath), str(REPO_ROOT)]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(paths),
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "NITRO_VSOCK_SIM_DIR": str(self.vsock_dir),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        env.update(extra or {})
        return env

    @staticmethod
    def _packages(source: Path) -> dict[str, Path]:
        """Import name -> directory of every toolkit package the simulated enclave runs.

        One place to add more (e.g. an app package): each is copied and measured.
        """
        return {"enclave": source, "attestation": ATTESTATION_SOURCE}

    def _enclave_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """A clean environment: nothing inherited but ENCLAVE_ENV_KEEP (no PYTHON*, no AWS_*)."""
        env = {k: os.environ[k] for k in ENCLAVE_ENV_KEEP if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(
            {"NITRO_VSOCK_SIM_DIR": str(self.vsock_dir), "AWS_EC2_METADATA_DISABLED": "true"}
        )
        env.update(extra)
        return env

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log_path = self.logs / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [self.config.python, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else self._env(),
                cwd=str(cwd or self.run_dir),
                start_new_session=True,  # own process group: stopped as a whole
                preexec_fn=_die_with_parent,  # the launcher spawns from one thread
            )
        spec = {"args": list(args), "env": env, "cwd": cwd}
        child = Child(name, process, log_path, spec, offset)
        self.children.append(child)
        return child

    def _wait_until(self, child: Child, ready: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + self.limits.startup_timeout_s
        while True:
            result = ready()
            if result:
                return result
            if not child.alive():
                raise StackError(
                    f"{child.name} exited with code {child.process.returncode} while starting "
                    f"({what}); last lines of {child.log_path}:\n"
                    f"{child.log_tail(self.limits.log_tail_lines)}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{child.name} was not ready after {self.limits.startup_timeout_s:g} s "
                    f"({what}); last lines of {child.log_path}:\n"
                    f"{child.log_tail(self.limits.log_tail_lines)}"
                )
            time.sleep(self.limits.poll_interval_s)

    @staticmethod
    def _ready_line(child: Child, event: str = "ready") -> Callable[[], dict | None]:
        def check() -> dict | None:
            try:
                with open(child.log_path, "rb") as f:
                    f.seek(child.log_offset)
                    text = f.read().decode(errors="replace")
            except OSError:
                return None
            for line in text.splitlines():
                if line.startswith("{") and f'"{event}"' in line:
                    with contextlib.suppress(ValueError):
                        obj = json.loads(line)
                        if isinstance(obj, dict) and obj.get("event") == event:
                            return obj
            return None

        return check

    def _vsock_listening(self, cid: int, port: int) -> Callable[[], bool]:
        path = self.vsock_dir / f"{cid}-{port}.sock"

        def check() -> bool:
            if not path.exists():
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                try:
                    s.connect(str(path))
                except OSError:
                    return False
            return True

        return check

    # ------------------------------------------------------------ parts

    def _prepare(self) -> None:
        for d in (self.state, self.logs, self.run_dir, self.vsock_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)  # whatever the umask: keys, sockets and logs live below
        if not (self.pki_dir / "root.pem").exists():
            from attestation import TestPKI

            TestPKI.generate().save(self.pki_dir)
        os.chmod(self.pki_dir, 0o700)

    def _start_kms(self) -> None:
        port = self.config.kms_port or free_port()
        child = self._spawn(
            "kms",
            [
                "-m", "simulator.kms", "--port", str(port), "--state", str(self.state),
                "--trust-root", str(self.pki_dir / "root.pem"), "--region", REGION,
            ],
        )
        endpoint = self.state / "kms" / "endpoint.json"

        def ready() -> str | None:
            try:
                data = json.loads(endpoint.read_text())
            except (OSError, ValueError):
                return None
            return data.get("url") if data.get("pid") == child.pid else None

        self.kms_url = self._wait_until(child, ready, "KMS endpoint.json")
        self._echo(f"kms        {self.kms_url}  (pid {child.pid})")

    def _start_relay(self) -> None:
        port = int(self.kms_url.rsplit(":", 1)[1])
        allowlist = self.run_dir / "kms-allowlist.yaml"
        allowlist.write_text(f"allowlist:\n- {{address: 127.0.0.1, port: {port}}}\n")
        metrics_port = free_port()
        self.kms_relay_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        child = self._spawn(
            "kms-relay",
            [
                "-m", "parent", "kms-relay", str(KMS_RELAY_PORT), "127.0.0.1", str(port),
                "--config", str(allowlist), "--metrics-port", str(metrics_port),
            ],
        )
        self._wait_until(child, self._vsock_listening(3, KMS_RELAY_PORT), "relay socket")
        self._echo(f"kms-relay  vsock(3, {KMS_RELAY_PORT}) -> 127.0.0.1:{port}  (pid {child.pid})")

    def _asgi_copy(self, image: Path, source: Path, asgi: str | None) -> None:
        """Copy the ASGI app's package (or module) into the enclave's measured copy."""
        if not asgi:
            return
        from ._asgi_app import AsgiAppError, copy_app, locate_app

        try:
            package = locate_app(asgi)
        except AsgiAppError as exc:
            raise StackError(str(exc)) from None
        if package == source or source in package.parents:
            return  # part of the enclave code: copied and measured already
        copy_app(package, image)

    def start_enclave(
        self, name: str, source: Path, cid: int, *, asgi: str | None = None
    ) -> EnclaveHandle:
        """Start an NSM device, an enclave app built from ``source`` and its credentials;
        with ``asgi`` (MODULE:ATTR) the enclave also serves that app over TLS."""
        source = Path(source).resolve()
        nested = source / "enclave"
        if not (source / "__init__.py").is_file() and (nested / "__init__.py").is_file():
            source = nested  # a copy of the whole repository
        if not (source / "__init__.py").is_file():
            raise StackError(
                f"--enclave-source {source} is not the enclave package (no __init__.py)"
            )
        nsm_socket = self.run_dir / f"nsm-{cid}.sock"
        # What the enclave runs is a fresh copy of its packages (and its ASGI app, if any);
        # the NSM measures that copy.
        image = build_image_root(self.run_dir / f"{name}-image", self._packages(source))
        self._asgi_copy(image, source, asgi)
        nsm = self._spawn(
            f"{name}-nsm",
            [
                "-m", "simulator.nsm", "--socket", str(nsm_socket), "--pki", str(self.pki_dir),
                "--image-root", str(image),
            ],
        )
        info = self._wait_until(nsm, self._ready_line(nsm), "NSM ready line")
        env = self._enclave_env(
            {
                "NITRO_NSM_SOCKET": str(nsm_socket),
                "NITRO_VSOCK_SIM_CID": str(cid),
                "NITRO_KMS_SCHEME": "http",
                "AWS_REGION": REGION,
                "HOME": str(image),
            }
        )
        app_args = ["--port", str(ENCLAVE_PORT)]
        if self.config.debug_logs:
            app_args.append("--debug")
        if asgi:
            app_args += ["--asgi", asgi, "--ingress-port", str(INGRESS_VSOCK_PORT)]
        argv = enclave_argv(self.config.python, image, "enclave", app_args)
        app = self._spawn(name, argv[1:], env=env, cwd=image)
        self._wait_until(app, self._vsock_listening(cid, ENCLAVE_PORT), "enclave socket")
        if asgi:
            self._wait_until(app, self._vsock_listening(cid, INGRESS_VSOCK_PORT),
                             "enclave TLS listener")
        creds = self._start_credentials(name, cid)
        handle = EnclaveHandle(
            name, cid, source, info["pcrs"], info.get("module_id", ""), nsm_socket,
            [nsm, app, creds],
        )
        self.enclaves[name] = handle
        self._echo(f"{name:<10} vsock({cid}, {ENCLAVE_PORT})  PCR0 {handle.pcrs['0'][:16]}…  "
                   f"(pid {app.pid})")
        return handle

    def _start_credentials(self, name: str, cid: int) -> Child:
        from simulator.kms.credentials import DEFAULT_CREDENTIALS

        parent = DEFAULT_CREDENTIALS[1]
        env = self._env(
            {
                "AWS_ACCESS_KEY_ID": parent.access_key_id,
                "AWS_SECRET_ACCESS_KEY": parent.secret_access_key,
                "AWS_REGION": REGION,
            }
        )
        child = self._spawn(
            f"{name}-credentials",
            ["-m", "parent", "credentials", "--enclave-cid", str(cid),
             "--port", str(ENCLAVE_PORT), "--region", REGION,
             "--interval", str(CREDENTIALS_INTERVAL_S)],
            env=env,
        )
        self._wait_until(child, lambda: _enclave_has_credentials(self.vsock_dir, cid),
                         "first credential push")
        return child

    def _start_proxy(self) -> None:
        port = self.config.proxy_port or free_port(self.config.proxy_host)
        child = self._spawn(
            "proxy",
            [
                "-m", "parent", "proxy", "--enclave-cid", str(self.config.enclave_cid),
                "--enclave-port", str(ENCLAVE_PORT), "--host", self.config.proxy_host,
                "--port", str(port), "--secret-store", str(self.state / "parent" / "secrets"),
                *self.config.proxy_args,
            ],
        )
        info = self._wait_until(child, self._ready_line(child), "proxy ready line")
        self.proxy_url = info["url"]
        self._echo(f"proxy      {self.proxy_url}  (pid {child.pid})")

    def _start_ingress(self) -> None:
        port = self.config.ingress_port or free_port(self.config.ingress_host)
        child = self._spawn(
            "ingress",
            [
                "-m", "parent", "ingress", "--listen", f"{self.config.ingress_host}:{port}",
                "--enclave-cid", str(self.config.enclave_cid),
                "--enclave-port", str(INGRESS_VSOCK_PORT), *self.config.ingress_args,
            ],
        )
        info = self._wait_until(child, self._ready_line(child), "ingress ready line")
        self.ingress_url = info["url"]
        self._echo(f"ingress    {self.ingress_url} -> vsock({self.config.enclave_cid}, "
                   f"{INGRESS_VSOCK_PORT})  (pid {child.pid})")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> dict:
        """Start everything; returns what is written to ``stack.json``."""
        self._prepare()
        try:
            self._start_kms()
            self._start_relay()
            self.start_enclave("enclave", self.config.enclave_source, self.config.enclave_cid,
                               asgi=self.config.asgi)
            self._start_proxy()
            if self.config.asgi:
                self._start_ingress()
        except BaseException:
            self.stop()
            raise
        info = self.describe()
        if self.ingress_url:
            info["ingress_url"] = self.ingress_url
        # mode 0600: it lists local (simulated) access keys
        atomic_write(self.state / STACK_FILE, (json.dumps(info, indent=2) + "\n").encode())
        return info

    def describe(self) -> dict:
        from simulator.kms.credentials import DEFAULT_CREDENTIALS

        operator, parent = DEFAULT_CREDENTIALS[0], DEFAULT_CREDENTIALS[1]
        main_enclave = self.enclaves.get("enclave")
        return {
            "proxy_url": self.proxy_url,
            "kms_url": self.kms_url,
            "region": REGION,
            "root_pem": str(self.pki_dir / "root.pem"),
            "enclave_cid": self.config.enclave_cid,
            "enclave_port": ENCLAVE_PORT,
            "kms_relay_port": KMS_RELAY_PORT,
            "kms_relay_metrics_url": self.kms_relay_metrics_url,
            "enclave_source": str(main_enclave.source) if main_enclave else None,
            "module_id": main_enclave.module_id if main_enclave else None,
            "pcrs": main_enclave.pcrs if main_enclave else {},
            "credentials": {
                "operator": _credential(operator),
                "parent": _credential(parent),
            },
            "vsock_dir": str(self.vsock_dir),
            "logs": str(self.logs),
            "pids": {"stack": os.getpid(), **{c.name: c.pid for c in self.children}},
        }

    def child(self, name: str) -> Child:
        for c in self.children:
            if c.name == name:
                return c
        raise StackError(f"no child named {name!r}")

    def restart_enclave(self, name: str = "enclave") -> Child:
        """Stop (if still running) and start again the enclave app ``name`` (same code, CID
        and NSM device), like an enclave that was terminated and run again."""
        handle = self.enclaves[name]
        old = self.child(name)
        old.stop(self.limits.stop_timeout_s)
        self.children.remove(old)
        new = self._spawn(name, old.spec["args"], env=old.spec["env"], cwd=old.spec["cwd"])
        self._wait_until(new, self._vsock_listening(handle.cid, ENCLAVE_PORT), "enclave socket")
        handle.children = [new if c is old else c for c in handle.children]
        return new

    def respawn(self, old: Child) -> Child:
        """Start ``old`` again with the same arguments (stopping what is left of it); the new
        child takes its place (stop order, enclave handle). Does not wait for it to be ready."""
        old.stop(self.limits.stop_timeout_s)
        index = self.children.index(old)
        new = self._spawn(old.name, old.spec["args"], env=old.spec["env"], cwd=old.spec["cwd"])
        self.children.remove(new)
        self.children[index] = new
        for handle in self.enclaves.values():
            handle.children = [new if c is old else c for c in handle.children]
        return new

    def enclave_listening(self, cid: int, port: int = ENCLAVE_PORT) -> bool:
        return self._vsock_listening(cid, port)()

    def check_alive(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if not c.alive()), None)

    def stop(self) -> None:
        """Stop every child, last started first; never leaves one running."""
        for child in reversed(self.children):
            child.stop(self.limits.stop_timeout_s)
        self.children.clear()
        with contextlib.suppress(OSError):
            (self.state / STACK_FILE).unlink()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _enclave_has_credentials(vsock_dir: Path, cid: int) -> bool:
    """Ask the enclave's ``health`` whether it holds credentials (one short request)."""
    import asyncio

    from enclave.protocol import ProtocolClient
    from enclave.transport import VsockAddress

    async def ask() -> bool:
        client = await ProtocolClient.connect(
            VsockAddress(cid, ENCLAVE_PORT), sim_dir=vsock_dir, deadline=1.0
        )
        try:
            answer = await client.request("health", {}, timeout=2.0)
        finally:
            await client.close()
        return isinstance(answer, dict) and bool(answer.get("credentials"))

    try:
        return asyncio.run(ask())
    except Exception:
        return False


def _rewrite_info(stack: Stack) -> None:
    """stack.json again, with the pids of restarted children."""
    atomic_write(stack.state / STACK_FILE, (json.dumps(stack.describe(), indent=2) + "\n").encode())


def _credential(c: Any) -> dict:
    return {
        "access_key_id": c.access_key_id,
        "secret_access_key": c.secret_access_key,
        "principal": c.principal,
    }


# ---------------------------------------------------------------- `python -m simulator up`


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m simulator up",
        description="Run the local stack (KMS, NSM, enclave, KMS relay, credentials, proxy) "
        "until interrupted; writes STATE/stack.json.",
    )
    parser.add_argument("--state", required=True, type=Path, help="state directory")
    parser.add_argument(
        "--enclave-source", type=Path, default=DEFAULT_ENCLAVE_SOURCE,
        help="enclave package directory to measure and run (default: this copy's enclave/)",
    )
    parser.add_argument("--enclave-cid", type=int, default=DEFAULT_ENCLAVE_CID)
    parser.add_argument("--proxy-host", default="127.0.0.1")
    parser.add_argument("--proxy-port", type=int, default=0)
    parser.add_argument("--kms-port", type=int, default=0)
    parser.add_argument("--debug-logs", action="store_true", help="log every enclave request")
    parser.add_argument("--asgi", metavar="MODULE:ATTR",
                        help="serve this ASGI app over TLS in the enclave; adds ingress_url")
    parser.add_argument("--ingress-port", type=int, default=0, help="TCP port of the ingress")
    fleet = parser.add_argument_group("local fleet (simulator.fleet)")
    fleet.add_argument("--enclaves", type=int, metavar="N",
                       help="run N parent+enclave nodes behind HAProxy (stack.json: lb_url, nodes)")
    fleet.add_argument("--node-source", action="append", metavar="I=DIR",
                       help="node I runs the enclave code in DIR (e.g. a changed build)")
    fleet.add_argument("--secret-store", metavar="DIR|s3://BUCKET/PREFIX",
                       help="the nodes' shared secret store (default STATE/secrets)")
    fleet.add_argument("--s3-endpoint-url", help="S3 endpoint for an s3:// secret store")
    args = parser.parse_args(argv)
    config = StackConfig(
        state_dir=args.state,
        enclave_source=args.enclave_source,
        enclave_cid=args.enclave_cid,
        proxy_host=args.proxy_host,
        proxy_port=args.proxy_port,
        kms_port=args.kms_port,
        debug_logs=args.debug_logs,
        asgi=args.asgi,
        ingress_port=args.ingress_port,
    )
    if args.enclaves is not None:
        from .fleet import main_fleet

        return main_fleet(args, config)
    stack = Stack(config, echo=lambda msg: print(msg, flush=True))
    from ._supervisor import RestartPolicy, Supervisor

    supervisor = Supervisor([stack], RestartPolicy(), echo=lambda m: print(m, flush=True),
                            on_restart=lambda s, _c: _rewrite_info(s))
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        info = stack.start()
        print(f"stack up: {Path(config.state_dir).absolute() / STACK_FILE}", flush=True)
        ready = {"event": "ready", "stack": str(Path(args.state).absolute() / STACK_FILE),
                 "proxy_url": info["proxy_url"], "kms_url": info["kms_url"]}
        if info.get("ingress_url"):
            ready["ingress_url"] = info["ingress_url"]
        print(json.dumps(ready), flush=True)
        while True:  # what exits is started again, with backoff
            supervisor.tick()
            time.sleep(supervisor.policy.tick_s)
    except _Interrupted as exc:
        print(f"{exc}: stopping the stack", flush=True)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup
            signal.signal(s, signal.SIG_IGN)
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
