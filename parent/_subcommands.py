"""Dispatch `python -m PACKAGE COMMAND [ARGS...]` to the `main(argv)` of a module per command."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence

Commands = Mapping[str, tuple[str, str]]
"""command name -> (module with a ``main(argv) -> int``, one-line description)."""


def usage(prog: str, commands: Commands) -> str:
    """The usage text listing every command."""
    width = max(len(name) for name in commands) + 2
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}{text}" for name, (_, text) in commands.items()]
    return "\n".join(lines)


def dispatch(prog: str, commands: Commands, argv: Sequence[str] | None = None) -> int:
    """Run the named command's ``main(rest)``; 2 with the usage for an unknown command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(prog, commands))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{usage(prog, commands)}", file=sys.stderr)
        return 2
    module_name = commands[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"{prog}: {name} is not available in this build", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)
