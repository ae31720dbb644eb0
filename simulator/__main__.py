"""``python -m simulator COMMAND ...``: local stand-ins for AWS.

Commands: ``up`` (the whole local stack, see ``simulator.stack``), ``demo`` (the guided story
on a fresh stack, ``make demo``), ``kms`` (the local KMS endpoint alone) and ``nsm`` (a
simulated NSM device alone).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from enclave.service import dispatch

COMMANDS = {
    "up": ("simulator.stack", "run the local stack until interrupted (writes STATE/stack.json)"),
    "demo": ("simulator.demo", "the whole story on a fresh local stack (make demo)"),
    "kms": ("simulator.kms", "the local KMS endpoint alone"),
    "nsm": ("simulator.nsm", "a simulated NSM device alone"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; see the module docstring."""
    return dispatch("python -m simulator", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
