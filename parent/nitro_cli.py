"""A typed wrapper over the ``nitro-cli`` executable (nitro-spec §4.2).

Every call has a named time limit, its JSON output is parsed into dataclasses, and a failure
becomes a :class:`NitroCliError` carrying nitro-cli's ``Exx`` code, what it means and the fix
that usually applies (``/dev/nitro_enclaves`` missing, allocator too small, boot failures...).

    cli = NitroCli()                                   # `nitro-cli` from PATH
    build = cli.build_enclave("app:latest", "build/app.eif")
    run = cli.run_enclave(eif_path="build/app.eif", cpu_count=2, memory_mib=1024, enclave_cid=16)
    [e.state for e in cli.describe_enclaves()]         # ["RUNNING"]
    cli.terminate_enclave(enclave_id=run.enclave_id)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.errors import CodedError, Kind

from ._nitro_errors import ErrorInfo, explain, find_code

__all__ = [
    "DEFAULT_LIMITS",
    "BuildResult",
    "EifDescription",
    "EnclaveDescription",
    "EnclaveRun",
    "Measurements",
    "NitroCli",
    "NitroCliError",
    "NitroCliLimits",
    "TerminateResult",
]

EXECUTABLE = "nitro-cli"
INSTALL_HINT = (
    "nitro-cli is not installed or not on PATH. On Amazon Linux 2023: "
    "`sudo dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel`, then "
    "`sudo usermod -aG ne,docker $USER` and log in again (see docs/deploy.md)."
)
MIN_ENCLAVE_CID = 4  # 0 = auto; 1, 2, 3 (parent) and U32_MAX are reserved (nitro-spec §4.3)
MAX_ENCLAVE_CID = 0xFFFFFFFE


@dataclass(frozen=True)
class NitroCliLimits:
    """Time and size limits of every nitro-cli call."""

    build_timeout: float = 1800.0  # docker export + linuxkit can take minutes
    run_timeout: float = 300.0  # allocating hugepages + boot + ready signal
    describe_timeout: float = 30.0
    terminate_timeout: float = 120.0
    console_connect_timeout: float = 30.0  # until nitro-cli says it is connected
    console_max_line: int = 64 * 1024  # longer console lines are cut
    max_output_bytes: int = 8 * 1024 * 1024  # stdout/stderr kept per call
    max_quoted_stderr: int = 2000  # stderr quoted in an error message


DEFAULT_LIMITS = NitroCliLimits()


class NitroCliError(CodedError):
    """A nitro-cli failure: ``code`` is ``Exx`` or one of ``nitro-cli-missing``,
    ``nitro-cli-timeout``, ``nitro-cli-output``, ``nitro-cli-failed``, ``invalid-argument``.
    nitro-cli's own ``Exx`` codes are ``internal``."""

    kind = Kind.INTERNAL  # nitro-cli's own Exx codes
    codes = {
        "invalid-argument": Kind.BAD_REQUEST,
        "nitro-cli-missing": Kind.UNAVAILABLE,
        "nitro-cli-timeout": Kind.UNAVAILABLE,
        "nitro-cli-output": Kind.INTERNAL,
        "nitro-cli-failed": Kind.INTERNAL,
    }

    def __init__(
        self,
        code: str,
        message: str,
        *,
        explanation: str = "",
        fix: str = "",
        stderr: str = "",
        returncode: int | None = None,
        command: Sequence[str] = (),
    ) -> None:
        super().__init__(code, message)
        self.explanation = explanation
        self.fix = fix
        self.stderr = stderr
        self.returncode = returncode
        self.command = tuple(command)

    def __str__(self) -> str:
        parts = [f"[{self.code}] {self.message}"]
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "explanation": self.explanation,
            "fix": self.fix,
            "returncode": self.returncode,
        }


# --- parsed outputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurements:
    """``{"HashAlgorithm": "Sha384 { ... }", "PCR0": hex, ...}``."""

    hash_algorithm: str
    pcrs: Mapping[int, bytes]

    @classmethod
    def from_json(cls, value: Any) -> Measurements:
        if not isinstance(value, Mapping):
            raise ValueError("Measurements is not an object")
        pcrs = {}
        for key, hexval in value.items():
            if key.startswith("PCR"):
                pcrs[int(key[3:])] = bytes.fromhex(hexval)
        return cls(str(value.get("HashAlgorithm", "")), pcrs)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"HashAlgorithm": self.hash_algorithm}
        out.update({f"PCR{i}": self.pcrs[i].hex() for i in sorted(self.pcrs)})
        return {"Measurements": out}


@dataclass(frozen=True)
class BuildResult:
    eif_path: Path
    measurements: Measurements


@dataclass(frozen=True)
class EnclaveRun:
    """``run-enclave``'s answer."""

    enclave_name: str | None
    enclave_id: str
    process_id: int
    enclave_cid: int
    cpu_count: int
    cpu_ids: tuple[int, ...]
    memory_mib: int

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> EnclaveRun:
        return cls(
            enclave_name=v.get("EnclaveName"),
            enclave_id=str(v["EnclaveID"]),
            process_id=int(v["ProcessID"]),
            enclave_cid=int(v["EnclaveCID"]),
            cpu_count=int(v["NumberOfCPUs"]),
            cpu_ids=tuple(int(c) for c in v["CPUIDs"]),
            memory_mib=int(v["MemoryMiB"]),
        )


@dataclass(frozen=True)
class EnclaveDescription(EnclaveRun):
    """One element of ``describe-enclaves``: State "RUNNING"/"TERMINATING", Flags
    "NONE"/"DEBUG_MODE" (the code's spelling; the UG prose differs)."""

    state: str = "RUNNING"
    flags: str = "NONE"
    measurements: Measurements | None = None
    image_name: str | None = None
    image_version: str | None = None
    metadata: Mapping[str, Any] | None = None

    @property
    def debug_mode(self) -> bool:
        return self.flags.upper() in ("DEBUG_MODE", "DEBUG")

    @property
    def running(self) -> bool:
        return self.state.upper() == "RUNNING"

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> EnclaveDescription:
        base = EnclaveRun.from_json(v)
        meas = v.get("Measurements")
        return cls(
            **base.__dict__,
            state=str(v["State"]),
            flags=str(v["Flags"]),
            measurements=Measurements.from_json(meas) if meas is not None else None,
            image_name=v.get("ImageName"),
            image_version=v.get("ImageVersion"),
            metadata=v.get("Metadata"),
        )


@dataclass(frozen=True)
class EifDescription:
    """``describe-eif``'s answer."""

    version: int
    measurements: Measurements
    is_signed: bool
    check_crc: bool
    signature_check: bool | None = None
    signing_certificate: Mapping[str, Any] | None = None
    image_name: str | None = None
    image_version: str | None = None
    metadata: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> EifDescription:
        return cls(
            version=int(v["EifVersion"]),
            measurements=Measurements.from_json(v["Measurements"]),
            is_signed=bool(v["IsSigned"]),
            check_crc=bool(v["CheckCRC"]),
            signature_check=v.get("SignatureCheck"),
            signing_certificate=v.get("SigningCertificate"),
            image_name=v.get("ImageName"),
            image_version=v.get("ImageVersion"),
            metadata=v.get("Metadata"),
        )


@dataclass(frozen=True)
class TerminateResult:
    enclave_id: str
    terminated: bool
    enclave_name: str | None = None

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> TerminateResult:
        return cls(str(v["EnclaveID"]), bool(v["Terminated"]), v.get("EnclaveName"))


# --- the wrapper ---------------------------------------------------------------------------------


@dataclass
class NitroCli:
    """Runs ``nitro-cli`` (``executable`` = a path or a name looked up on PATH)."""

    executable: str | os.PathLike[str] | None = None
    limits: NitroCliLimits = DEFAULT_LIMITS
    env: Mapping[str, str] | None = None  # None = inherit
    _resolved: str | None = field(default=None, init=False, repr=False)

    # -- commands --

    def build_enclave(
        self,
        docker_uri: str,
        output_file: str | os.PathLike[str],
        *,
        docker_dir: str | os.PathLike[str] | None = None,
        signing_certificate: str | os.PathLike[str] | None = None,
        private_key: str | os.PathLike[str] | None = None,
        name: str | None = None,
        version: str | None = None,
        metadata: str | os.PathLike[str] | None = None,
    ) -> BuildResult:
        """``build-enclave``: Docker image -> EIF; returns the measurements (PCR0/1/2[/8])."""
        if (signing_certificate is None) != (private_key is None):
            raise NitroCliError(
                "invalid-argument", "signing needs both signing_certificate and private_key"
            )
        args = [
            "build-enclave",
            "--docker-uri",
            docker_uri,
            "--output-file",
            os.fspath(output_file),
        ]
        args += _opt("--docker-dir", docker_dir) + _opt(
            "--signing-certificate", signing_certificate
        )
        args += _opt("--private-key", private_key) + _opt("--name", name)
        args += _opt("--version", version) + _opt("--metadata", metadata)
        value = self._json_call(args, self.limits.build_timeout, expect=dict)
        return BuildResult(
            Path(output_file), self._parse(Measurements.from_json, value.get("Measurements"), args)
        )

    def run_enclave(
        self,
        *,
        eif_path: str | os.PathLike[str],
        memory_mib: int,
        cpu_count: int | None = None,
        cpu_ids: Sequence[int] | None = None,
        enclave_cid: int | None = None,
        debug_mode: bool = False,
        enclave_name: str | None = None,
    ) -> EnclaveRun:
        """``run-enclave``; ``enclave_cid`` None/0 lets the driver pick one."""
        if (cpu_count is None) == (cpu_ids is None):
            raise NitroCliError("invalid-argument", "give exactly one of cpu_count or cpu_ids")
        if cpu_count is not None and cpu_count < 1:
            raise NitroCliError("invalid-argument", f"cpu_count must be >= 1, got {cpu_count}")
        if memory_mib < 1:
            raise NitroCliError("invalid-argument", f"memory_mib must be >= 1, got {memory_mib}")
        if enclave_cid not in (None, 0) and not (
            MIN_ENCLAVE_CID <= enclave_cid <= MAX_ENCLAVE_CID
        ):
            raise NitroCliError(
                "invalid-argument",
                f"enclave_cid {enclave_cid} is reserved: use 0 (auto) or {MIN_ENCLAVE_CID}.."
                f"{MAX_ENCLAVE_CID} (3 is the parent)",
            )
        args = ["run-enclave", "--eif-path", os.fspath(eif_path), "--memory", str(memory_mib)]
        if cpu_count is not None:
            args += ["--cpu-count", str(cpu_count)]
        else:
            args += ["--cpu-ids", *(str(c) for c in cpu_ids or ())]
        if enclave_cid is not None:
            args += ["--enclave-cid", str(enclave_cid)]
        if debug_mode:
            args.append("--debug-mode")
        args += _opt("--enclave-name", enclave_name)
        value = self._json_call(args, self.limits.run_timeout, expect=dict)
        return self._parse(EnclaveRun.from_json, value, args)

    def describe_enclaves(self, *, metadata: bool = False) -> list[EnclaveDescription]:
        """``describe-enclaves`` (``--metadata`` adds image name/version/metadata)."""
        args = ["describe-enclaves"] + (["--metadata"] if metadata else [])
        value = self._json_call(args, self.limits.describe_timeout, expect=list)
        return [self._parse(EnclaveDescription.from_json, v, args) for v in value]

    def describe_eif(self, eif_path: str | os.PathLike[str]) -> EifDescription:
        args = ["describe-eif", "--eif-path", os.fspath(eif_path)]
        value = self._json_call(args, self.limits.describe_timeout, expect=dict)
        return self._parse(EifDescription.from_json, value, args)

    def terminate_enclave(
        self,
        *,
        enclave_id: str | None = None,
        enclave_name: str | None = None,
        all: bool = False,  # mirrors nitro-cli's --all
    ) -> list[TerminateResult]:
        """``terminate-enclave`` by id, name or ``all=True``; one result per enclave."""
        if sum((enclave_id is not None, enclave_name is not None, all)) != 1:
            raise NitroCliError(
                "invalid-argument", "give exactly one of enclave_id, enclave_name or all=True"
            )
        args = ["terminate-enclave"]
        if enclave_id is not None:
            args += ["--enclave-id", enclave_id]
        elif enclave_name is not None:
            args += ["--enclave-name", enclave_name]
        else:
            args.append("--all")
        proc = self._call(args, self.limits.terminate_timeout)
        values = _json_values(proc.stdout)
        if not values and not all:
            raise self._output_error(args, proc.stdout, "no JSON in terminate-enclave output")
        flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
        return [self._parse(TerminateResult.from_json, v, args) for v in flat]

    def console(
        self,
        *,
        enclave_id: str | None = None,
        enclave_name: str | None = None,
        disconnect_timeout: float | None = None,
        check_debug: bool = True,
    ) -> Iterator[str]:
        """Stream the console of a debug-mode enclave, line by line.

        Ends when the enclave stops or after ``disconnect_timeout`` seconds. With
        ``check_debug`` a non-debug enclave is refused before nitro-cli is even started.
        """
        if (enclave_id is None) == (enclave_name is None):
            raise NitroCliError(
                "invalid-argument", "give exactly one of enclave_id or enclave_name"
            )
        if check_debug:
            found = [
                e
                for e in self.describe_enclaves()
                if e.enclave_id == enclave_id or (enclave_name and e.enclave_name == enclave_name)
            ]
            if found and not found[0].debug_mode:
                info = explain("E44")
                raise NitroCliError(
                    "E44",
                    f"enclave {found[0].enclave_id} was not started with --debug-mode; "
                    "its console is not available",
                    explanation=info.explanation,
                    fix=info.fix,
                )
        args = ["console"]
        args += (
            ["--enclave-id", enclave_id] if enclave_id else ["--enclave-name", str(enclave_name)]
        )
        if disconnect_timeout is not None:
            args += ["--disconnect-timeout", str(max(1, int(disconnect_timeout)))]
        return self._stream(args, disconnect_timeout)

    # -- plumbing --

    def resolve(self) -> str:
        """The executable's full path, or NitroCliError(nitro-cli-missing) with an install hint."""
        if self._resolved:
            return self._resolved
        name = os.fspath(self.executable) if self.executable is not None else EXECUTABLE
        path_var = (self.env or os.environ).get("PATH")
        found = shutil.which(name, path=path_var)
        if found is None:
            raise NitroCliError(
                "nitro-cli-missing", f"{name!r} was not found. {INSTALL_HINT}", fix=INSTALL_HINT
            )
        self._resolved = found
        return found

    def _environ(self) -> dict[str, str]:
        return dict(self.env) if self.env is not None else dict(os.environ)

    def _call(self, args: list[str], timeout: float) -> _Completed:
        command = [self.resolve(), *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self._environ(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise NitroCliError(
                    "nitro-cli-missing",
                    f"cannot execute {command[0]}: {exc.strerror}",
                    fix=INSTALL_HINT,
                    command=command,
                ) from exc
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise NitroCliError(
                    "nitro-cli-timeout",
                    f"`nitro-cli {args[0]}` did not finish within {timeout:g} s (killed)",
                    fix="Raise the matching NitroCliLimits field if the host is just slow.",
                    command=command,
                ) from None
            stdout, stderr = _read_back(out, self.limits), _read_back(err, self.limits)
        if returncode != 0:
            raise self._failure(command, returncode, stderr)
        return _Completed(stdout, stderr)

    def _json_call(self, args: list[str], timeout: float, *, expect: type) -> Any:
        proc = self._call(args, timeout)
        values = [v for v in _json_values(proc.stdout) if isinstance(v, expect)]
        if not values:
            raise self._output_error(args, proc.stdout, f"no JSON {expect.__name__} in output")
        return values[-1]

    def _parse(self, parser: Any, value: Any, args: list[str]) -> Any:
        try:
            return parser(value)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._output_error(
                args, json.dumps(value)[:500], f"unexpected JSON: {exc!r}"
            ) from exc

    def _output_error(self, args: list[str], stdout: str, why: str) -> NitroCliError:
        return NitroCliError(
            "nitro-cli-output",
            f"could not understand `nitro-cli {args[0]}` output ({why}): "
            f"{stdout[: self.limits.max_quoted_stderr]!r}",
            command=args,
        )

    def _failure(self, command: list[str], returncode: int, stderr: str) -> NitroCliError:
        quoted = stderr.strip()[-self.limits.max_quoted_stderr :]
        code = find_code(stderr)
        if code is None:
            return NitroCliError(
                "nitro-cli-failed",
                f"`nitro-cli {command[1]}` failed (exit {returncode}): {quoted or '(no stderr)'}",
                stderr=stderr,
                returncode=returncode,
                command=command,
            )
        info: ErrorInfo = explain(code)
        return NitroCliError(
            code,
            f"`nitro-cli {command[1]}` failed with {code}: {info.explanation}\n{quoted}",
            explanation=info.explanation,
            fix=info.fix,
            stderr=stderr,
            returncode=returncode,
            command=command,
        )

    def _stream(self, args: list[str], disconnect_timeout: float | None) -> Iterator[str]:
        command = [self.resolve(), *args]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._environ(),
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        deadline = None
        if disconnect_timeout is not None:
            deadline = time.monotonic() + disconnect_timeout + self.limits.console_connect_timeout
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        try:
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return
                if not sel.select(wait):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf or len(buf) > self.limits.console_max_line:
                    cut = buf.find(b"\n")
                    cut = self.limits.console_max_line if cut < 0 else cut
                    line, buf = buf[:cut], buf[cut + 1 :]
                    yield line.decode("utf-8", "replace")
            if buf:
                yield buf.decode("utf-8", "replace")
            returncode = proc.wait(timeout=self.limits.console_connect_timeout)
            if returncode != 0:
                stderr = proc.stderr.read(self.limits.max_output_bytes).decode("utf-8", "replace")
                raise self._failure(command, returncode, stderr)
        finally:
            sel.close()
            if proc.poll() is None:
                _kill_group(proc)
            proc.stdout.close()
            proc.stderr.close()


@dataclass(frozen=True)
class _Completed:
    stdout: str
    stderr: str


def _opt(flag: str, value: str | os.PathLike[str] | None) -> list[str]:
    return [] if value is None else [flag, os.fspath(value)]


def _read_back(fh: Any, limits: NitroCliLimits) -> str:
    fh.seek(0)
    return fh.read(limits.max_output_bytes).decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


MAX_JSON_CANDIDATES = 64
"""Places in one output where a JSON value is tried; bounds the work on hostile output."""
_JSON_LINE_START = re.compile(r"^[ \t]*([{\[])", re.MULTILINE)


def _json_values(text: str) -> list[Any]:
    """Every JSON object/array that starts a line of ``text``, skipping prose lines such as
    "Enclave Image successfully created." (printed to stdout by older nitro-cli).

    Never raises: deeply nested or unterminated JSON is skipped, and at most
    ``MAX_JSON_CANDIDATES`` line starts are tried.
    """
    decoder = json.JSONDecoder()
    out: list[Any] = []
    pos = 0
    for _ in range(MAX_JSON_CANDIDATES):
        match = _JSON_LINE_START.search(text, pos)
        if match is None:
            break
        start = match.start(1)
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            newline = text.find("\n", start)
            if newline < 0:
                break
            pos = newline + 1
            continue
        out.append(value)
        pos = end
    return out


# --- CLI (used by mk/enclave.mk) -----------------------------------------------------------------


def _cli_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m parent.nitro_cli",
        description="nitro-cli with parsed output and explained errors (exit 1 on failure).",
    )
    p.add_argument("--nitro-cli", default=None, help="path of the nitro-cli executable")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build-enclave: image -> EIF, measurements JSON")
    b.add_argument("--docker-uri", required=True)
    b.add_argument("--output-file", required=True)
    b.add_argument("--measurements", help="also write the measurements JSON here")
    b.add_argument("--signing-certificate")
    b.add_argument("--private-key")
    r = sub.add_parser("run", help="run-enclave")
    r.add_argument("--eif-path", required=True)
    r.add_argument("--cpu-count", type=int, required=True)
    r.add_argument("--memory", type=int, required=True, help="MiB")
    r.add_argument("--enclave-cid", type=int)
    r.add_argument("--enclave-name")
    r.add_argument("--debug-mode", action="store_true")
    sub.add_parser("describe", help="describe-enclaves")
    e = sub.add_parser("describe-eif", help="describe-eif")
    e.add_argument("--eif-path", required=True)
    t = sub.add_parser("terminate", help="terminate-enclave")
    t.add_argument("--enclave-id")
    t.add_argument("--enclave-name")
    t.add_argument("--all", action="store_true")
    c = sub.add_parser("console", help="console of a debug-mode enclave")
    c.add_argument("--enclave-id")
    c.add_argument("--enclave-name")
    c.add_argument("--disconnect-timeout", type=float)
    return p


def _jsonable(value: Any) -> Any:
    if isinstance(value, Measurements):
        return value.to_json()["Measurements"]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 ok, 1 nitro-cli failure (code, explanation and fix on stderr)."""
    import sys

    args = _cli_parser().parse_args(argv)
    cli = NitroCli(executable=args.nitro_cli)
    try:
        if args.command == "build":
            built = cli.build_enclave(
                args.docker_uri,
                args.output_file,
                signing_certificate=args.signing_certificate,
                private_key=args.private_key,
            )
            text = json.dumps(built.measurements.to_json(), indent=2)
            if args.measurements:
                Path(args.measurements).write_text(text + "\n")
            print(text)
        elif args.command == "run":
            run = cli.run_enclave(
                eif_path=args.eif_path,
                cpu_count=args.cpu_count,
                memory_mib=args.memory,
                enclave_cid=args.enclave_cid,
                enclave_name=args.enclave_name,
                debug_mode=args.debug_mode,
            )
            print(json.dumps(_jsonable(run), indent=2))
        elif args.command == "describe":
            print(json.dumps(_jsonable(cli.describe_enclaves()), indent=2))
        elif args.command == "describe-eif":
            print(json.dumps(_jsonable(cli.describe_eif(args.eif_path)), indent=2))
        elif args.command == "terminate":
            done = cli.terminate_enclave(
                enclave_id=args.enclave_id,
                enclave_name=args.enclave_name if not args.all else None,
                all=args.all,
            )
            print(json.dumps(_jsonable(done), indent=2))
        else:
            for line in cli.console(
                enclave_id=args.enclave_id,
                enclave_name=args.enclave_name,
                disconnect_timeout=args.disconnect_timeout,
            ):
                print(line, flush=True)
    except NitroCliError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
