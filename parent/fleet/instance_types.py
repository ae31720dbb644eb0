"""Which EC2 instance types can run Nitro Enclaves, and their CPU architecture."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

Arch = Literal["x86_64", "arm64"]
ARCHS: tuple[Arch, ...] = ("x86_64", "arm64")

# Families whose Nitro instances support enclaves (UG "Requirements": Intel/AMD/Graviton Nitro
# types with >= 4 vCPUs, or >= 2 on Graviton; not T*, Mac, A1, or bare metal < 4 vCPUs).
# Used when DescribeInstanceTypes does not report NitroEnclavesSupport.
_FAMILIES = """c5 c5a c5ad c5d c5n c6a c6g c6gd c6gn c6i c6id c6in c7a c7g c7gd c7gn c7i c8g
    m5 m5a m5ad m5d m5dn m5n m5zn m6a m6g m6gd m6i m6id m6idn m6in m7a m7g m7gd m7i m8g
    r5 r5a r5ad r5b r5d r5dn r5n r6a r6g r6gd r6i r6id r6idn r6in r7a r7g r7gd r7i r7iz r8g
    x2idn x2iedn x2iezn z1d i3en i4g i4i im4gn is4gen d3 d3en hpc6a hpc7g"""
ENCLAVE_FAMILIES = frozenset(_FAMILIES.split())
GRAVITON = re.compile(r"^[a-z]+\d+g")
DEFAULT_INSTANCE_TYPE: Mapping[Arch, str] = {"x86_64": "m6i.xlarge", "arm64": "m6g.large"}


def supports_enclaves(instance_type: str, info: Mapping[str, Any] | None = None) -> bool:
    """True when the type supports Nitro Enclaves: DescribeInstanceTypes' NitroEnclavesSupport
    when reported, else the family list and the vCPU rule."""
    if info is not None and "NitroEnclavesSupport" in info:
        return info["NitroEnclavesSupport"] == "supported"
    family, _, size = instance_type.partition(".")
    if family not in ENCLAVE_FAMILIES:
        return False
    if info is not None and "VCpuInfo" in info:
        vcpus = int(info["VCpuInfo"].get("DefaultVCpus", 0))
        return vcpus >= (2 if GRAVITON.match(family) else 4)
    return size not in ("nano", "micro", "small", "medium", "large") or (
        GRAVITON.match(family) is not None and size == "large"
    )


def arch_of(instance_type: str) -> Arch:
    """The CPU architecture of a type (Graviton families are arm64)."""
    return "arm64" if GRAVITON.match(instance_type.split(".")[0]) else "x86_64"
