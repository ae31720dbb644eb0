"""Every size the EIF builder accepts, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuildLimits:
    """Bounds on inputs; the defaults fit any enclave that nitro-cli can run."""

    chunk_size: int = 1 << 20  # bytes held at once while streaming a file
    max_rootfs_entries: int = 1_000_000
    max_rootfs_bytes: int = 16 << 30  # an enclave holds its whole ramdisk in memory
    max_blob_bytes: int = 256 << 20  # kernel, init, nsm.ko
    max_cmdline_bytes: int = 4096  # the kernel's COMMAND_LINE_SIZE on x86_64 / arm64
    max_cmd_env_bytes: int = 1 << 20  # the cmd and env files together
    max_signing_file_bytes: int = 64 << 10  # key and certificate PEM
    docker_timeout_s: float = 600.0  # one `docker` command (export of a large image)


DEFAULT_LIMITS = BuildLimits()
