"""Client of the Nitro Secure Module: attestation documents, PCRs, randomness.

Pure Python over ``/dev/nsm`` (one ioctl, CBOR messages; nitro-spec §1), or over the simulated
NSM when ``NITRO_NSM_SOCKET`` names its socket::

    nsm = NsmClient()                    # the device, or $NITRO_NSM_SOCKET
    doc = nsm.attestation(public_key=der, nonce=nonce)
    nsm.extend_pcr(16, b"config v2"); nsm.lock_pcr(16)

Every failure raises ``NsmError`` whose ``code`` is the NSM ``ErrorCode`` name
(``ReadOnlyIndex``, ``InvalidIndex``, ``InputTooLarge``, ``InvalidResponse``, ...), or
``DeviceUnavailable`` when there is no NSM to talk to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from enclave.nsm._device import (
    NSM_DEVICE,
    NSM_IOCTL_RAW,
    NSM_SOCKET_ENV,
    DeviceTransport,
    NsmUnavailableError,
    SocketTransport,
    default_transport,
)
from enclave.nsm.codec import (
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    RESPONSE_FOR,
    Attestation,
    DescribeNsm,
    DescribePcr,
    ExtendPcr,
    GetRandom,
    LockPcr,
    LockPcrs,
    NsmDescription,
    NsmError,
    PcrInfo,
    Request,
    decode_response,
    encode_request,
)

__all__ = [
    "MAX_RANDOM_BYTES",
    "NSM_DEVICE",
    "NSM_IOCTL_RAW",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "NSM_SOCKET_ENV",
    "DeviceTransport",
    "NsmClient",
    "NsmDescription",
    "NsmError",
    "NsmUnavailableError",
    "PcrInfo",
    "SocketTransport",
    "Transport",
]

Transport = Callable[[bytes], bytes]
"""A device transport: one CBOR request in, one CBOR response out."""

MAX_RANDOM_BYTES = 1 << 20
"""Most bytes one ``get_random`` call gathers (the NSM returns up to 256 per request)."""

_T = TypeVar("_T")


class NsmClient:
    """Operations of the NSM; thread-safe when its transport is (both built-in ones are)."""

    def __init__(self, transport: Transport | None = None) -> None:
        """``transport=None`` picks ``$NITRO_NSM_SOCKET`` (simulator) or ``/dev/nsm``.

        Raises ``NsmUnavailableError`` when neither is there.
        """
        self._transport: Transport = transport if transport is not None else default_transport()

    def __enter__(self) -> NsmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the device file, if the transport holds one."""
        close = getattr(self._transport, "close", None)
        if callable(close):
            close()

    # -- operations ---------------------------------------------------------------------------

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """A signed attestation document (COSE_Sign1 bytes) carrying the given fields."""
        request = Attestation(user_data=user_data, nonce=nonce, public_key=public_key)
        return self._call(request).document

    def describe_pcr(self, index: int) -> PcrInfo:
        """Lock state and value of PCR ``index``."""
        return self._call(DescribePcr(index))

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """``PCR[index] = SHA384(PCR[index] ‖ data)``; returns the new value."""
        return self._call(ExtendPcr(index, data)).data

    def lock_pcr(self, index: int) -> None:
        """Make PCR ``index`` read-only until the enclave terminates."""
        self._call(LockPcr(index))

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``0 .. range_-1``."""
        self._call(LockPcrs(range_))

    def describe_nsm(self) -> NsmDescription:
        """Version, module id, PCR count, locked PCRs and digest of the NSM."""
        return self._call(DescribeNsm())

    def get_random(self, n: int = 256) -> bytes:
        """``n`` random bytes from the NSM (several requests if ``n`` exceeds one answer)."""
        if type(n) is not int or not 0 <= n <= MAX_RANDOM_BYTES:
            raise NsmError("InvalidArgument", f"n must be an int in 0..{MAX_RANDOM_BYTES}")
        out = bytearray()
        while len(out) < n:  # every round adds at least one byte, so at most n rounds
            chunk = self._call(GetRandom()).random
            if not chunk:
                raise NsmError("InvalidResponse", "GetRandom returned no bytes")
            out += chunk
        return bytes(out[:n])

    # -- plumbing -----------------------------------------------------------------------------

    def _call(self, request: Request) -> Any:
        raw = encode_request(request)
        try:
            answer = self._transport(raw)
        except NsmError:
            raise
        except Exception as e:  # a caller-supplied transport failed in its own way
            raise NsmError("InternalError", f"transport failed: {type(e).__name__}: {e}") from e
        return decode_response(answer, RESPONSE_FOR[type(request)])
