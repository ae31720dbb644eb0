"""``python -m simulator COMMAND ...``: local stand-ins for AWS.

Commands: ``up`` (the whole local stack, see ``simulator.stack``), ``demo`` (the guided story
on a fresh stack, ``make demo``), ``kms`` (the local KMS endpoint alone) and ``nsm`` (a
simulated NSM device alone).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "up": ("simulator.stack", "run the local stack until interrupted (writes STATE/stack.json)"),
    "demo": ("simulator.demo", "the whole story on a fresh local stack (make demo)"),
    "kms": ("simulator.kms", "the local KMS endpoint alone"),
    "nsm": ("simulator.nsm", "a simulated NSM device alone"),
}


def _usage() -> str:
    lines = ["usage: python -m simulator COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<6} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"python -m simulator: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
