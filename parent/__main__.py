"""``python -m parent COMMAND ...``: what runs on the parent instance.

Commands: ``proxy`` (HTTP API for other services), ``kms-relay`` (vsock → KMS, vsock-proxy
compatible), ``credentials`` (instance-role credentials → enclave), ``deploy`` (EC2
deployment) and ``key-policy`` (KMS key policy from measurements). ``python -m parent COMMAND
--help`` shows each command's options.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "proxy": ("parent.proxy", "HTTP API for other services, forwarding to the enclave"),
    "kms-relay": ("parent.kms_relay", "vsock -> TCP relay for the enclave's KMS traffic"),
    "credentials": ("parent.credentials", "push instance-role credentials to the enclave"),
    "deploy": ("parent.deploy", "deploy to EC2 (build, run, describe, terminate)"),
    "key-policy": ("parent.key_policy", "KMS key policy from enclave measurements"),
}


def _usage() -> str:
    lines = ["usage: python -m parent COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"python -m parent: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"python -m parent: {name} is not available in this build", file=sys.stderr)
        return 2
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
