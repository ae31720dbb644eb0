"""Issue 9 items 13 and 14: the simulated enclave runs only what its PCR0 measures, and the
simulator's sockets and state files are private whatever the umask.

A planted ``.pyc`` (valid for the real source's mtime and size, so plain Python would run it)
must either change PCR0 or never run; ``PYTHON*`` variables must not reach the enclave; every
toolkit file the enclave imports must come from the measured copy.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from importlib._bootstrap_external import _code_to_timestamp_pyc  # type: ignore[attr-defined]
from pathlib import Path

import pytest

from attestation import TestPKI
from simulator._nsm_server import serve_nsm
from simulator.measure import (
    build_image_root,
    enclave_argv,
    measure_image_root,
    package_files,
)
from simulator.nsm import SimulatedNsm
from simulator.stack import ATTESTATION_SOURCE, DEFAULT_ENCLAVE_SOURCE

ROOT = Path(__file__).resolve().parents[2]
PLANTED_MODULE = "_image_trim"  # any enclave module; imported by the probe below


def plant_pyc(package: Path, module: str, marker: Path) -> Path:
    """A __pycache__ entry for ``package/module.py`` that CPython accepts as up to date."""
    source = package / f"{module}.py"
    st = source.stat()
    evil = source.read_text() + f"\nopen({str(marker)!r}, 'w').write('planted bytecode ran')\n"
    code = compile(evil, str(source), "exec")
    data = _code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size)
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.parent.mkdir(exist_ok=True)
    cached.write_bytes(data)
    return cached


@pytest.fixture
def tampered(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the enclave package with a planted .pyc and a sourceless module."""
    source = tmp_path / "src" / "enclave"
    shutil.copytree(DEFAULT_ENCLAVE_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "PWNED"
    plant_pyc(source, PLANTED_MODULE, marker)
    sourceless = compile(f"open({str(marker)!r}, 'w').write('sourceless')", "x", "exec")
    (source / "sourceless.pyc").write_bytes(_code_to_timestamp_pyc(sourceless, 0, 0))
    return source, marker


def _probe_package(tmp_path: Path) -> Path:
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    (probe / "__main__.py").write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            import enclave.{PLANTED_MODULE}, enclave.app, enclave.kms, attestation
            try:
                import enclave.sourceless
                sourceless = True
            except ImportError:
                sourceless = False
            files = sorted(
                m.__file__ for m in list(sys.modules.values())
                if getattr(m, "__file__", None)
                and m.__name__.split(".")[0] in ("enclave", "attestation", "probe")
            )
            print(json.dumps({{"files": files, "sourceless": sourceless,
                               "env": sorted(k for k in os.environ if k.startswith("PYTHON")),
                               "flags": [sys.flags.isolated, sys.flags.dont_write_bytecode]}}))
            """
        )
    )
    return probe


def test_the_planted_pyc_would_run_without_the_measured_copy(tampered) -> None:
    """Honesty check: the plant is effective against plain Python."""
    source, marker = tampered
    done = subprocess.run(
        [sys.executable, "-c", f"import enclave.{PLANTED_MODULE}"],
        cwd=source.parent, env={**os.environ, "PYTHONPATH": str(source.parent)},
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_planted_bytecode_neither_counts_nor_runs(tampered, tmp_path: Path) -> None:
    source, marker = tampered
    clean = build_image_root(tmp_path / "clean", {"enclave": DEFAULT_ENCLAVE_SOURCE,
                                                  "attestation": ATTESTATION_SOURCE})  # fmt: skip
    probe = _probe_package(tmp_path)
    image = build_image_root(
        tmp_path / "image",
        {"enclave": source, "attestation": ATTESTATION_SOURCE, "probe": probe},
    )
    assert not list(image.rglob("*.pyc")) and not list(image.rglob("__pycache__"))
    without_probe = build_image_root(
        tmp_path / "image2", {"enclave": source, "attestation": ATTESTATION_SOURCE}
    )
    assert measure_image_root(without_probe).pcrs == measure_image_root(clean).pcrs
    # hostile environment: every PYTHON* variable must be ignored
    hostile = tmp_path / "hostile"
    (hostile / "enclave").mkdir(parents=True)
    (hostile / "enclave" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('env')")
    env = {
        **os.environ,
        "PYTHONPATH": str(hostile),
        "PYTHONSTARTUP": str(hostile / "enclave" / "__init__.py"),
        "PYTHONINSPECT": "",
        "PYTHONDONTWRITEBYTECODE": "",
    }
    env.pop("PYTHONDONTWRITEBYTECODE")
    done = subprocess.run(
        enclave_argv(sys.executable, image, "probe"),
        cwd=hostile, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not marker.exists(), marker.read_text()
    assert result["sourceless"] is False
    assert result["flags"] == [1, 1]
    assert result["files"] and all(f.startswith(str(image) + os.sep) for f in result["files"])
    assert any("/attestation/" in f for f in result["files"])
    assert not list(image.rglob("*.pyc"))  # -B: nothing written either


def test_every_toolkit_file_the_enclave_imports_is_measured(tmp_path: Path) -> None:
    image = build_image_root(
        tmp_path / "image", {"enclave": DEFAULT_ENCLAVE_SOURCE, "attestation": ATTESTATION_SOURCE}
    )
    listed = {e.path for e in measure_image_root(image).listing}
    for package in ("enclave", "attestation"):
        for rel, _path in package_files(image / package):
            assert f"rootfs/app/{package}/{rel}" in listed
    assert "rootfs/app/attestation/roots/aws-nitro-enclaves-root-g1.pem" in listed
    before = measure_image_root(image).pcrs
    target = image / "attestation" / "errors.py"
    target.write_text(target.read_text() + "\n# changed\n")
    after = measure_image_root(image).pcrs
    assert after[0] != before[0] and after[2] != before[2] and after[1] == before[1]


# -- item 14: private sockets and files ---------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_nsm_socket_is_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    pki = TestPKI.generate()
    nsm = SimulatedNsm.for_enclave(pki, DEFAULT_ENCLAVE_SOURCE)
    path = tmp_path / "nsm.sock"
    old = os.umask(0)
    try:

        async def run() -> int:
            server = await serve_nsm(nsm, path)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(path))  # it serves
                return _mode(path)
            finally:
                server.close()

        assert asyncio.run(run()) == 0o600
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["nsm.sock"]  # no staging dir left behind


def test_nsm_process_and_pki_files_are_private_under_umask_0(tmp_path: Path) -> None:
    sock, pki = tmp_path / "nsm.sock", tmp_path / "pki"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.nsm", "--socket", str(sock), "--pki", str(pki),
         "--enclave-source", str(DEFAULT_ENCLAVE_SOURCE)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(0),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        assert _mode(sock) == 0o600
        assert _mode(pki) == 0o700
        for f in pki.iterdir():
            assert _mode(f) & 0o022 == 0, f  # nobody else may replace root.pem
            if f.name.endswith(".key.pem"):
                assert _mode(f) == 0o600
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_stack_under_umask_0_and_hostile_env_runs_only_measured_code(tampered, tmp_path) -> None:
    source, marker = tampered
    state = tmp_path / "st"
    hostile = tmp_path / "hostile"
    (hostile / "enclave").mkdir(parents=True)
    (hostile / "enclave" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('env')")
    env = {**os.environ, "PYTHONSTARTUP": str(hostile / "enclave" / "__init__.py")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "up", "--state", str(state),
         "--enclave-source", str(source)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.umask(0),
    )  # fmt: skip
    try:
        end = time.monotonic() + 60
        while not (state / "stack.json").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < end, "stack.json never appeared"
            time.sleep(0.1)
        info = json.loads((state / "stack.json").read_text())
        with urllib.request.urlopen(info["proxy_url"] + "/health", timeout=10) as r:
            assert json.loads(r.read())["enclave"] == "ok"
        # what runs is what was measured, and the planted bytecode is not part of either
        image = state / "run" / "enclave-image"
        packages = {"enclave": DEFAULT_ENCLAVE_SOURCE, "attestation": ATTESTATION_SOURCE}
        clean = build_image_root(tmp_path / "clean", packages)
        assert info["pcrs"]["0"] == measure_image_root(image).pcrs[0].hex()
        assert info["pcrs"]["0"] == measure_image_root(clean).pcrs[0].hex()
        assert not marker.exists()
        enclave_pid = info["pids"]["enclave"]
        environ = Path(f"/proc/{enclave_pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith((b"PYTHON", b"AWS_ACCESS", b"AWS_SECRET"))]
        cmdline = Path(f"/proc/{enclave_pid}/cmdline").read_bytes().split(b"\0")
        assert b"-I" in cmdline and b"-B" in cmdline
        # item 14: every directory 0700, stack.json 0600, every socket private
        for d in (state, state / "logs", state / "run", state / "vsock", state / "pki"):
            assert _mode(d) == 0o700, d
        assert _mode(state / "stack.json") == 0o600
        for path in state.rglob("*"):
            if path.is_socket():
                assert _mode(path) == 0o600 or _mode(path.parent) == 0o700, path
            if path.is_file() and (path.name.endswith(".key.pem") or path.parent.name == "keys"):
                assert _mode(path) == 0o600, path
        assert _mode(next(state.rglob("nsm-*.sock"))) == 0o600
        kms_files = [p for p in (state / "kms").rglob("*") if p.is_file()]
        secrets = [p for p in kms_files if p.name != "endpoint.json"]  # URL and pid: public
        assert secrets and all(_mode(p) == 0o600 for p in secrets), secrets
        assert all(_mode(p) & 0o022 == 0 for p in kms_files)
        kms_dirs = [state / "kms", *(p for p in (state / "kms").rglob("*") if p.is_dir())]
        assert all(_mode(p) == 0o700 for p in kms_dirs), kms_dirs
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
