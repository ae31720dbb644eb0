"""``python -m parent COMMAND ...``: what runs on the parent instance.

Commands: ``proxy`` (HTTP API for other services), ``kms-relay`` (vsock → KMS, vsock-proxy
compatible), ``credentials`` (instance-role credentials → enclave), ``fleet`` and ``deploy``
(EC2 deployments as one CloudFormation stack) and ``key-policy`` (KMS key policy from
measurements). ``python -m parent COMMAND --help`` shows each command's options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from enclave.service import dispatch

COMMANDS = {
    "proxy": ("parent.proxy", "HTTP API for other services, forwarding to the enclave"),
    "kms-relay": ("parent.kms_relay", "vsock -> TCP relay for the enclave's KMS traffic"),
    "ingress": ("parent.ingress", "TCP -> vsock relay to the enclave's attested HTTPS listener"),
    "credentials": ("parent.credentials", "push instance-role credentials to the enclave"),
    "deploy": ("parent.deploy", "one parent on EC2: the fleet stack with one instance"),
    "key-policy": ("parent.key_policy", "KMS key policy from enclave measurements"),
    "eif": ("parent.eif.cli", "build a reproducible (signed) EIF without nitro-cli"),
    "fleet": ("parent.fleet.cli", "CloudFormation fleet: template, deploy, rollout, teardown"),
    "enclave-watch": ("parent.enclave_watch", "restart the enclave when it stops (systemd)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; see the module docstring."""
    return dispatch("python -m parent", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
