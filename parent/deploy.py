"""``python -m parent deploy``: one parent instance, as the fleet stack with one instance.

The imperative create/teardown that lived here is replaced by the CloudFormation stack of
:mod:`parent.fleet`; this command is ``python -m parent fleet deploy --desired 1`` with the
stack named ``nitro-toolkit`` unless ``--stack-name`` says otherwise:

    python -m parent deploy --region us-east-1 --eif build/app.eif --dry-run
    python -m parent deploy --region us-east-1 --eif build/app.eif
    python -m parent deploy --region us-east-1 --teardown        # = fleet teardown

``--dry-run`` prints the template and CloudFormation's change set for it; it changes nothing.
Every other option is ``fleet deploy``'s (``python -m parent fleet deploy --help``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .fleet.instance_types import ENCLAVE_FAMILIES, supports_enclaves

__all__ = ["DEFAULT_STACK_NAME", "ENCLAVE_FAMILIES", "main", "supports_enclaves"]

DEFAULT_STACK_NAME = "nitro-toolkit"


def _has(args: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes as ``python -m parent fleet``: 0 done, 1 AWS/deployment error, 2 usage."""
    from .fleet.cli import main as fleet_main

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not _has(args, "--stack-name"):
        args = ["--stack-name", DEFAULT_STACK_NAME, *args]
    if "--teardown" in args:
        args.remove("--teardown")
        return fleet_main(["teardown", *args])
    if not _has(args, "--desired"):
        args += ["--desired", "1"]
    return fleet_main(["deploy", *args])


if __name__ == "__main__":
    sys.exit(main())
