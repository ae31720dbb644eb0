"""``python -m parent COMMAND ...``: what runs on the parent instance.

Commands: ``proxy`` (HTTP API for other services), ``kms-relay`` (vsock → KMS, vsock-proxy
compatible), ``credentials`` (instance-role credentials → enclave), ``deploy`` (EC2
deployment) and ``key-policy`` (KMS key policy from measurements). ``python -m parent COMMAND
--help`` shows each command's options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from parent._subcommands import dispatch

COMMANDS = {
    "proxy": ("parent.proxy", "HTTP API for other services, forwarding to the enclave"),
    "kms-relay": ("parent.kms_relay", "vsock -> TCP relay for the enclave's KMS traffic"),
    "credentials": ("parent.credentials", "push instance-role credentials to the enclave"),
    "deploy": ("parent.deploy", "deploy to EC2 (build, run, describe, terminate)"),
    "key-policy": ("parent.key_policy", "KMS key policy from enclave measurements"),
    "enclave-watch": ("parent.enclave_watch", "restart the enclave when it stops (systemd)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; see the module docstring."""
    return dispatch("python -m parent", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
