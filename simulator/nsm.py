"""The simulated Nitro Secure Module: same CBOR requests and answers as ``/dev/nsm``.

``SimulatedNsm.handle(request) -> response`` behaves like the device (nitro-spec §1.2-1.3):
32 PCRs of 48 bytes (SHA-384); PCRs 0-15 hold the boot measurements and are locked from the
start; 16-31 start zero and unlocked, extend as ``SHA384(old ‖ data)`` and lock on request;
attestation documents carry the locked PCRs only and are signed by a ``TestPKI`` chain shaped
like AWS's. In debug mode PCR0-3 are zero, as on hardware, while PCR4 stays set. Errors come
back as ``{"Error": code}``; ``handle`` never raises.

Run it as the device stand-in of a simulated enclave::

    python -m simulator.nsm --socket PATH --pki DIR --enclave-source DIR \\
        [--role-arn ARN] [--instance-id ID] [--debug]

It prints one JSON "ready" line (socket, module id, PCRs) once the socket listens and exits
cleanly on SIGTERM or SIGINT. Point the enclave at it with ``NITRO_NSM_SOCKET=PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from attestation.pcr import PCR_SIZE, ZERO_PCR, extend, pcr3_from_role_arn, pcr4_from_instance_id
from attestation.testpki import TestPKI
from enclave.nsm.codec import (
    Attestation,
    AttestationDocumentBytes,
    DescribeNsm,
    DescribePcr,
    ErrorResponse,
    ExtendPcr,
    GetRandom,
    LockPcr,
    LockPcrs,
    NsmDescription,
    NsmError,
    PcrExtended,
    PcrInfo,
    PcrLocked,
    PcrsLocked,
    RandomBytes,
    Request,
    Response,
    decode_request,
    encode_response,
)
from enclave.service import Started, run_service

from ._nsm_server import NsmServerLimits, serve_nsm
from .measure import MeasureError, measure_enclave_code, measure_image_root

__all__ = [
    "BOOT_LOCKED_PCRS",
    "MAX_ATTESTATION_FIELD",
    "MAX_PCRS",
    "NSM_VERSION",
    "RANDOM_BYTES_PER_REQUEST",
    "NsmServerLimits",
    "SimulatedNsm",
    "boot_pcrs",
    "main",
    "make_module_id",
    "random_instance_id",
    "serve_nsm",
]

log = logging.getLogger("simulator.nsm")

MAX_PCRS = 32
BOOT_LOCKED_PCRS = range(16)
"""PCRs the hypervisor fills and locks before the enclave starts."""
DEBUG_ZERO_PCRS = (0, 1, 2, 3)
"""PCRs that read as zero in a debug-mode enclave (PCR4 keeps the instance id)."""
MAX_ATTESTATION_FIELD = 1024
"""Largest user_data, nonce or public_key in an Attestation request (the NSM's tested 1 KiB)."""
RANDOM_BYTES_PER_REQUEST = 256
"""Bytes one GetRandom answers with ("returns up to 256 bytes")."""
NSM_VERSION = (1, 0, 0)
DIGEST = "SHA384"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INTERNAL_ERROR = encode_response(ErrorResponse("InternalError"))

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _millis(when: datetime) -> int:
    if when.tzinfo is None:
        raise NsmError("InternalError", "the NSM clock must return an aware datetime")
    return (when - _EPOCH) // timedelta(milliseconds=1)


def random_instance_id() -> str:
    """An EC2-style instance id: ``i-`` and 17 hex digits."""
    return "i-" + secrets.token_hex(9)[:17]


def make_module_id(instance_id: str, *, now: datetime | None = None) -> str:
    """``<instance id>-enc<16 hex>`` like real NSM ids (ms timestamp, then 4 random digits)."""
    ms = _millis(now or _utc_now())
    return f"{instance_id}-enc{ms & 0xFFFFFFFFFFFF:012x}{secrets.token_hex(2)}"


def boot_pcrs(
    source_dir: str | os.PathLike[str],
    *,
    instance_id: str,
    role_arn: str | None = None,
    app_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
    image_root: bool = False,
) -> dict[int, bytes]:
    """PCR0-2 measured from the enclave code, PCR3 from the role ARN (else zero), PCR4.

    ``image_root``: ``source_dir`` is a ``build_image_root`` copy; every file in it counts.
    """
    if image_root:
        pcrs = measure_image_root(source_dir).pcrs
    else:
        pcrs = measure_enclave_code(source_dir, app_files=app_files)
    pcrs[3] = pcr3_from_role_arn(role_arn) if role_arn else ZERO_PCR
    pcrs[4] = pcr4_from_instance_id(instance_id)
    return pcrs


class SimulatedNsm:
    """An NSM in memory; ``handle`` is usable directly as ``NsmClient(transport=...)``.

    Thread-safe: one lock serializes requests, like the kernel driver's mutex.
    """

    def __init__(
        self,
        pki: TestPKI,
        *,
        pcrs: Mapping[int, bytes],
        module_id: str,
        debug: bool = False,
        clock: Clock = _utc_now,
    ) -> None:
        """``pcrs``: boot measurements for PCRs 0-15 (missing ones are zero)."""
        if not isinstance(module_id, str) or not module_id:
            raise NsmError("InvalidArgument", "module_id must be a non-empty str")
        bank = [ZERO_PCR] * MAX_PCRS
        for index, value in pcrs.items():
            if type(index) is not int or index not in BOOT_LOCKED_PCRS:
                raise NsmError("InvalidArgument", f"boot PCR index {index!r} is not in 0..15")
            if not isinstance(value, bytes | bytearray) or len(value) != PCR_SIZE:
                raise NsmError("InvalidArgument", f"PCR{index} must be {PCR_SIZE} bytes")
            bank[index] = bytes(value)
        if debug:
            for index in DEBUG_ZERO_PCRS:
                bank[index] = ZERO_PCR
        self._pki = pki
        self._bank = bank
        self._locked = set(BOOT_LOCKED_PCRS)
        self._module_id = module_id
        self._debug = debug
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def for_enclave(
        cls,
        pki: TestPKI,
        source_dir: str | os.PathLike[str],
        *,
        instance_id: str | None = None,
        role_arn: str | None = None,
        debug: bool = False,
        clock: Clock = _utc_now,
        app_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
        image_root: bool = False,
    ) -> SimulatedNsm:
        """The NSM of an enclave running the code at ``source_dir`` on ``instance_id``.

        ``instance_id`` defaults to the TestPKI's simulated instance.
        """
        instance = instance_id or pki.instance_id
        pcrs = boot_pcrs(
            source_dir,
            instance_id=instance,
            role_arn=role_arn,
            app_files=app_files,
            image_root=image_root,
        )
        module_id = make_module_id(instance, now=clock())
        return cls(pki, pcrs=pcrs, module_id=module_id, debug=debug, clock=clock)

    # -- views ---------------------------------------------------------------------------------

    @property
    def module_id(self) -> str:
        """The enclave id the documents carry."""
        return self._module_id

    @property
    def debug(self) -> bool:
        """Whether this is a debug-mode enclave (PCR0-3 zero)."""
        return self._debug

    @property
    def pcrs(self) -> dict[int, bytes]:
        """Current value of every PCR."""
        with self._lock:
            return dict(enumerate(self._bank))

    @property
    def locked_pcrs(self) -> frozenset[int]:
        """Indices of the locked PCRs."""
        with self._lock:
            return frozenset(self._locked)

    # -- the device ------------------------------------------------------------------------------

    def handle(self, request: bytes) -> bytes:
        """Answer one CBOR request with one CBOR response, as ``/dev/nsm`` does."""
        try:
            try:
                parsed = decode_request(request)
                with self._lock:
                    response: Response | ErrorResponse = self._dispatch(parsed)
            except NsmError as e:
                response = ErrorResponse(e.nsm_code)
            return encode_response(response)
        except Exception:  # a bug here must look like the device failing, not crash the caller
            log.exception("simulated NSM failed on a request")
            return _INTERNAL_ERROR

    def _dispatch(self, request: Request) -> Response:
        match request:
            case DescribePcr(index=index):
                self._check_index(index)
                return PcrInfo(locked=index in self._locked, data=self._bank[index])
            case ExtendPcr(index=index, data=data):
                self._check_index(index)
                if index in self._locked:
                    raise NsmError("ReadOnlyIndex")
                self._bank[index] = extend(self._bank[index], data)
                return PcrExtended(self._bank[index])
            case LockPcr(index=index):
                self._check_index(index)
                if index in self._locked:
                    raise NsmError("ReadOnlyIndex")
                self._locked.add(index)
                return PcrLocked()
            case LockPcrs(range_=range_):
                if range_ > MAX_PCRS:
                    raise NsmError("InvalidIndex")
                self._locked.update(range(range_))
                return PcrsLocked()
            case DescribeNsm():
                return NsmDescription(
                    *NSM_VERSION,
                    module_id=self._module_id,
                    max_pcrs=MAX_PCRS,
                    locked_pcrs=tuple(sorted(self._locked)),
                    digest=DIGEST,
                )
            case Attestation():
                return AttestationDocumentBytes(self._attest(request))
            case GetRandom():
                return RandomBytes(secrets.token_bytes(RANDOM_BYTES_PER_REQUEST))
        raise NsmError("InvalidOperation")

    @staticmethod
    def _check_index(index: int) -> None:
        if not 0 <= index < MAX_PCRS:
            raise NsmError("InvalidIndex")

    def _attest(self, request: Attestation) -> bytes:
        for value in (request.user_data, request.nonce, request.public_key):
            if value is not None and len(value) > MAX_ATTESTATION_FIELD:
                raise NsmError("InputTooLarge")
        try:
            return self._pki.sign_document(
                pcrs={i: self._bank[i] for i in sorted(self._locked)},
                module_id=self._module_id,
                timestamp_ms=_millis(self._clock()),
                public_key=request.public_key,
                user_data=request.user_data,
                nonce=request.nonce,
            )
        except ValueError as e:  # TestPKI refuses what the NSM could not produce
            raise NsmError("InternalError", str(e)) from None


# -- the device server process ---------------------------------------------------------------


def _load_or_create_pki(directory: Path) -> TestPKI:
    if directory.is_dir() and any(directory.iterdir()):
        return TestPKI.load(directory)
    pki = TestPKI.generate()
    pki.save(directory)
    return pki


def _app_files(packages: list[str]) -> dict[str, Path] | None:
    from .measure import app_package_files

    files: dict[str, Path] = {}
    for package in packages:
        files.update(app_package_files(package))
    return files or None


async def _start(args: argparse.Namespace) -> Started:
    pki = _load_or_create_pki(Path(args.pki))
    nsm = SimulatedNsm.for_enclave(
        pki,
        args.image_root or args.enclave_source,
        instance_id=args.instance_id,
        role_arn=args.role_arn,
        debug=args.debug,
        app_files=_app_files(args.app_package),
        image_root=args.image_root is not None,
    )
    server = await serve_nsm(nsm, args.socket)
    ready = {
        "socket": os.fspath(args.socket),
        "module_id": nsm.module_id,
        "debug": nsm.debug,
        "pcrs": {str(i): v.hex() for i, v in nsm.pcrs.items() if i in BOOT_LOCKED_PCRS},
        "root_pem": os.fspath(Path(args.pki) / "root.pem"),
    }

    async def close() -> None:
        server.close()
        close_clients = getattr(server, "close_clients", None)  # Python >= 3.13
        if callable(close_clients):
            close_clients()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)

    return Started(ready=ready, close=close)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m simulator.nsm``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator.nsm",
        description="Serve a simulated /dev/nsm on an AF_UNIX socket (NITRO_NSM_SOCKET).",
    )
    parser.add_argument("--socket", required=True, help="AF_UNIX socket path to listen on")
    parser.add_argument(
        "--pki", required=True, help="TestPKI directory (generated and saved there if empty)"
    )
    code = parser.add_mutually_exclusive_group(required=True)
    code.add_argument("--enclave-source", help="enclave package directory to measure (PCR0-2)")
    code.add_argument(
        "--image-root",
        help="measured copy the enclave runs from (simulator.measure.build_image_root): "
        "every file in it counts (PCR0-2)",
    )
    parser.add_argument(
        "--app-package", action="append", default=[], metavar="DIR",
        help="also measure this app package (or .py module) into PCR0/PCR2 (repeatable)",
    )
    parser.add_argument("--role-arn", help="IAM role ARN of the parent (PCR3; else zero)")
    parser.add_argument("--instance-id", help="parent instance id (PCR4; default: the PKI's)")
    parser.add_argument("--debug", action="store_true", help="debug-mode enclave: PCR0-3 zero")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="simulator.nsm: %(message)s")
    try:
        return run_service(lambda: _start(args))
    except (OSError, ValueError, NsmError, MeasureError) as e:
        print(f"simulator.nsm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
