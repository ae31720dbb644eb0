"""The builder's one error type: a stable ``code`` and a message, never a traceback."""

from __future__ import annotations

from attestation.errors import CodedError


class EifBuildError(CodedError):
    """The EIF cannot be built from these inputs.

    Codes: ``usage``, ``bad-rootfs``, ``rootfs-too-large``, ``bad-blobs``, ``bad-signing-key``,
    ``docker`` (daemon missing or refusing), ``kms`` (remote signing failed), ``io``.
    """

    show_code = True
