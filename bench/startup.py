"""Whole-process start-up cost of ``python -m attestation verify``, against a bare interpreter.

Two install shapes, each with its own baseline:

- **dev**: this interpreter (``.venv``, where the project is an *editable* install: its import
  finder is paid by every interpreter start, the bare one included);
- **wheel**: a throw-away venv where the project is installed from a built wheel, as deployed
  (no editable finder); the dependencies are the dev venv's, reached through a ``.pth`` path
  line (which, unlike the dev venv's own site directory, runs none of its ``.pth`` hooks).

Each round runs, back to back in rotating order, ``python -c pass`` (the baseline), the
**floor** (an interpreter that imports only what verifying cannot do without, and builds the
ECDSA-SHA384 verifier argument, whose constructor imports cryptography's OpenSSL backend) and
``python -m attestation verify DOC --at document`` on one document: a real AWS document from
../shared/vectors when present, else a TestPKI document with its root. The table gives the
median wall time of each with the median of the per-round ratios, and the least CPU time of
each with their ratio (target: at most 2.5x). On a busy machine the CPU ratio is the steadier:
contention only ever adds to CPU time, so the least of many runs is the cost itself.

Bytecode: pip compiles a wheel's modules when it installs them; for the dev shape the project's
modules are compiled here first, as the first run of any command would do, unless
PYTHONDONTWRITEBYTECODE is set: then every run would compile them again, which measures the
compiler, not the start-up.

``--instructions`` also counts, once, the user-space instructions of each command with
valgrind (callgrind): slow (seconds a run) but the same on a busy machine as on an idle one.

Run: ``.venv/bin/python bench/startup.py [--rounds N] [--shape dev|wheel|both]
[--instructions]``. It stops by itself (building the wheel venv takes about ten seconds, each
round about a second, the instruction counts about half a minute a shape).
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 30
TARGET_RATIO = 2.5
RUN_TIMEOUT_S = 30
INSTALL_TIMEOUT_S = 300
VALGRIND_TIMEOUT_S = 300
FLOOR_IMPORTS = (
    "import argparse, json, dataclasses, cbor2, cryptography.x509.verification; "
    "from cryptography.hazmat.primitives import hashes; "
    "from cryptography.hazmat.primitives.asymmetric import ec; ec.ECDSA(hashes.SHA384())"
)
"""What verifying cannot avoid: the libraries it parses and checks with, and the ECDSA
argument of ``public_key.verify`` (building it imports cryptography's OpenSSL backend)."""
VERB = "python -m attestation verify DOC --at document"

Run = tuple[float, float]  # (wall seconds, CPU seconds)


def _vector() -> tuple[Path, list[str]] | None:
    env = os.environ.get("NITRO_VECTORS")
    base = Path(env) if env else ROOT.parent / "shared" / "vectors"
    docs = sorted(base.glob("*.cbor")) if (base / "MANIFEST.json").is_file() else []
    return (docs[0], []) if docs else None


def _testpki(tmp: Path) -> tuple[Path, list[str]]:
    sys.path.insert(0, str(ROOT))
    from attestation import TestPKI

    pki = TestPKI.generate()
    doc = tmp / "doc.cbor"
    module_id = "i-0123456789abcdef0-enc0123456789abcd"
    doc.write_bytes(pki.sign_document(pcrs={0: bytes(48)}, module_id=module_id))
    root = tmp / "root.pem"
    root.write_bytes(pki.root_pem)
    return doc, ["--root", str(root), "--allow-debug"]


def _wheel_python(tmp: Path) -> str:
    """A venv with the project installed from a wheel; the dev venv's dependencies."""
    venv = tmp / "wheel-venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True, timeout=INSTALL_TIMEOUT_S,
    )  # fmt: skip
    python = str(venv / "bin" / "python")
    # pip builds the wheel (its build backend from the configured index) and installs it,
    # compiling the modules' bytecode as any install does
    build = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         str(ROOT)],
        timeout=INSTALL_TIMEOUT_S, cwd=tmp, capture_output=True, text=True,
    )  # fmt: skip
    if build.returncode != 0:
        raise SystemExit(f"cannot install the project into {venv}: {build.stderr[-800:]}")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "dev-venv-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: list[str], cwd: Path) -> Run:
    """(wall seconds, CPU seconds) of one run; CPU time moves less with the machine's load."""
    cpu, start = _cpu(), time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=RUN_TIMEOUT_S)
    elapsed, used = time.perf_counter() - start, _cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{argv!r} failed ({proc.returncode}): {proc.stderr.decode()[-400:]}")
    return elapsed, used


def _instructions(argv: list[str], cwd: Path) -> int:
    """User-space instructions of one run, counted by callgrind (hash seed fixed)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        cwd=cwd, capture_output=True, text=True, timeout=VALGRIND_TIMEOUT_S,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    counted = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or counted is None:
        raise SystemExit(f"valgrind {argv!r} failed ({proc.returncode}): {proc.stderr[-400:]}")
    return int(counted.group(1))


def _commands(python: str, doc: Path, extra: list[str]) -> dict[str, list[str]]:
    verify = [python, "-m", "attestation", "verify", str(doc), "--at", "document", *extra]
    return {
        "bare": [python, "-c", "pass"],
        "floor": [python, "-c", FLOOR_IMPORTS],
        "verify": verify,
    }


def _check_shape(python: str, cwd: Path, editable: bool) -> None:
    """The wheel venv must import the installed copy, and the dev one the source tree."""
    probe = "import attestation, sys; print(attestation.__file__)"
    where = subprocess.run(
        [python, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        check=True,
    ).stdout.strip()  # fmt: skip
    if Path(where).is_relative_to(ROOT) != editable:
        raise SystemExit(f"{python} imports attestation from {where}: not the shape measured")


def _report(shape: str, runs: dict[str, list[Run]]) -> tuple[float, float, float]:
    bares = runs["bare"]

    def ratio(name: str, i: int) -> float:
        if i == 1:  # CPU: the least of each (contention only ever adds)
            return min(r[1] for r in runs[name]) / min(b[1] for b in bares)
        return statistics.median(r[i] / b[i] for r, b in zip(runs[name], bares, strict=True))

    def ms(name: str, i: int) -> str:
        pick = min if i == 1 else statistics.median
        return f"{pick(r[i] for r in runs[name]) * 1e3:.1f}"

    labels = {
        "bare": "`python -c pass`",
        "floor": "floor (the imports verifying needs)",
        "verify": f"`{VERB}`",
    }
    for name, label in labels.items():
        print(f"| {shape} | {label} | {ms(name, 0)} | {ms(name, 1)} | "
              f"{ratio(name, 0):.2f}x | {ratio(name, 1):.2f}x |")  # fmt: skip
    floor_cpu = min(r[1] for r in runs["floor"])
    above = min(r[1] for r in runs["verify"]) / floor_cpu - 1
    return ratio("floor", 1), ratio("verify", 1), above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--shape", choices=("dev", "wheel", "both"), default="both")
    parser.add_argument("--instructions", action="store_true", help="count them with valgrind")
    args = parser.parse_args()
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        doc, extra = _vector() or _testpki(tmp)
        shapes: dict[str, tuple[dict[str, list[str]], Path]] = {}
        if args.shape in ("dev", "both"):
            compileall.compile_dir(ROOT / "attestation", quiet=1)
            _check_shape(sys.executable, ROOT, editable=True)
            shapes["dev"] = (_commands(sys.executable, doc, extra), ROOT)
        if args.shape in ("wheel", "both"):
            python = _wheel_python(tmp)
            _check_shape(python, tmp, editable=False)
            shapes["wheel"] = (_commands(python, doc, extra), tmp)  # cwd: not the source tree
        order = [(shape, name) for shape, (cmds, _) in shapes.items() for name in cmds]
        runs: dict[str, dict[str, list[Run]]] = {s: {n: [] for n in c} for s, (c, _) in
                                                 shapes.items()}  # fmt: skip
        for shape, name in order:  # warm the page cache
            _time(shapes[shape][0][name], shapes[shape][1])
        for i in range(args.rounds):
            for shape, name in order[i % len(order) :] + order[: i % len(order)]:
                cmds, cwd = shapes[shape]
                runs[shape][name].append(_time(cmds[name], cwd))
        if args.instructions:
            for shape, (cmds, cwd) in shapes.items():
                counts[shape] = {name: _instructions(argv, cwd) for name, argv in cmds.items()}

    load = os.getloadavg()[0]
    print(f"document: {doc.name}; {args.rounds} rounds; Python {sys.version.split()[0]}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs\n")  # fmt: skip
    print(f"floor: `python -c '{FLOOR_IMPORTS}'`\n")
    print("| shape | command | median wall ms | least CPU ms | wall ratio | CPU ratio |")
    print("|---|---|---:|---:|---:|---:|")
    summary = {shape: _report(shape, runs[shape]) for shape in shapes}
    print()
    for shape, (floor, verify, above) in summary.items():
        met = "met" if verify <= TARGET_RATIO else "NOT met"
        below = " (the floor alone is above it)" if floor > TARGET_RATIO else ""
        print(
            f"{shape}: verify {verify:.2f}x, floor {floor:.2f}x (CPU); verify is "
            f"{above:.0%} above the floor; target <= {TARGET_RATIO}x: {met}{below}"
        )
    if counts:
        print("\n| shape | command | instructions (M) | ratio |\n|---|---|---:|---:|")
        for shape, count in counts.items():
            for name, n in count.items():
                print(f"| {shape} | {name} | {n / 1e6:.0f} | {n / count['bare']:.2f}x |")
        for shape, count in counts.items():
            above = count["verify"] / count["floor"] - 1
            print(f"\n{shape}: verify is {above:.1%} above the floor in instructions", end="")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
