"""PCR arithmetic of Nitro Enclaves (nitro-spec §2.6, §5.4): extend, image PCRs, PCR3/PCR4/PCR8."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

PCR_SIZE = 48
ZERO_PCR = bytes(PCR_SIZE)


def extend(old: bytes, data: bytes) -> bytes:
    """TPM-style extend used by the hypervisor and ExtendPCR: ``SHA384(old ‖ data)``."""
    if len(old) != PCR_SIZE:
        raise ValueError(f"a PCR is {PCR_SIZE} bytes, got {len(old)}")
    return hashlib.sha384(old + data).digest()


def measure(chunks: Iterable[bytes]) -> bytes:
    """EIF-style measurement: ``SHA384(0^48 ‖ SHA384(chunk0 ‖ chunk1 ‖ …))``."""
    h = hashlib.sha384()
    for chunk in chunks:
        h.update(chunk)
    return extend(ZERO_PCR, h.digest())


def image_pcrs(kernel: bytes, cmdline: bytes, ramdisks: list[bytes]) -> dict[int, bytes]:
    """PCR0 (whole image), PCR1 (kernel + bootstrap), PCR2 (application) of an EIF's sections."""
    if not ramdisks:
        raise ValueError("an EIF has at least one ramdisk")
    return {
        0: measure([kernel, cmdline, *ramdisks]),
        1: measure([kernel, cmdline, ramdisks[0]]),
        2: measure(ramdisks[1:]),
    }


def pcr3_from_role_arn(role_arn: str) -> bytes:
    """PCR3: ``SHA384(0^48 ‖ utf8(role ARN))`` (one hash, raw bytes)."""
    return extend(ZERO_PCR, role_arn.encode())


def pcr4_from_instance_id(instance_id: str) -> bytes:
    """PCR4: ``SHA384(0^48 ‖ ascii(instance id))``."""
    return extend(ZERO_PCR, instance_id.encode("ascii"))


def pcr8_from_certificate(cert_der: bytes) -> bytes:
    """PCR8: ``SHA384(0^48 ‖ SHA384(DER(signing certificate)))``."""
    return measure([cert_der])
