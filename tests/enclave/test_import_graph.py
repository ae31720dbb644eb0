"""``enclave.app`` and ``enclave.handlers`` never import each other.

Both import ``enclave.context`` (``Context``, ``Operation``, ``Handler`` and the ``AppView``
protocol an operation is written against). The built-in operations load without the app
framework, and ``enclave.app`` reaches the handlers only inside the functions that install
them, never at module level.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = sorted((ROOT / "enclave" / "handlers").glob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # `if TYPE_CHECKING:` blocks count as module level
        nodes = [n for node in nodes for n in ([node] if not isinstance(node, ast.If)
                                               else [node, *node.body, *node.orelse])]
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def _refers_to(names: set[str], module: str) -> bool:
    return any(n == module or n.startswith(module + ".") for n in names)


def test_no_handler_module_imports_the_app_anywhere() -> None:
    assert HANDLERS, "enclave/handlers has no modules?"
    offenders = [p.name for p in HANDLERS if _refers_to(_imports(p), "enclave.app")]
    assert offenders == []


def test_the_context_module_imports_neither_side() -> None:
    names = _imports(ROOT / "enclave" / "context.py")
    assert not _refers_to(names, "enclave.app")
    assert not _refers_to(names, "enclave.handlers")


def test_the_app_does_not_import_the_handlers_at_module_level() -> None:
    names = _imports(ROOT / "enclave" / "app.py", top_level_only=True)
    assert not _refers_to(names, "enclave.handlers")


def test_the_handlers_load_in_a_fresh_interpreter_without_the_app() -> None:
    modules = [_module_name(p) for p in HANDLERS]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=True,
    )
    loaded = json.loads(out.stdout)
    assert "enclave.handlers.core" in loaded
    assert "enclave.app" not in loaded


def test_an_app_still_has_its_builtins_and_the_default_app_its_sealed_operations() -> None:
    from enclave.app import App, default_app

    builtins = {"health", "describe", "attestation", "e2e", "set-credentials"}
    assert builtins <= set(App("t", "1").operations)
    assert {"seal-load", "sign"} <= set(default_app().operations)
