"""The builder's one error type: a stable ``code`` and a message, never a traceback."""

from __future__ import annotations

from attestation.errors import CodedError, Kind


class EifBuildError(CodedError):
    """The EIF cannot be built from these inputs.

    Codes: ``usage``, ``bad-rootfs``, ``rootfs-too-large``, ``bad-blobs``, ``bad-signing-key``,
    ``docker`` (daemon missing or refusing), ``kms`` (remote signing failed), ``io``.
    """

    codes = {
        "usage": Kind.BAD_REQUEST,
        "bad-rootfs": Kind.BAD_REQUEST,
        "rootfs-too-large": Kind.BAD_REQUEST,
        "bad-blobs": Kind.BAD_REQUEST,
        "bad-signing-key": Kind.BAD_REQUEST,
        "docker": Kind.UNAVAILABLE,
        "kms": Kind.UNAVAILABLE,
        "io": Kind.INTERNAL,
    }

    show_code = True
