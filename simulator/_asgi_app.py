"""Find the package of ``--asgi MODULE:ATTR`` and copy it into the simulated enclave's code.

The module is found the way ``python -m simulator up`` would import it (its working
directory, then ``PYTHONPATH``, then ``sys.path``). Its top-level package (or the module file
itself) is copied, ``.py`` files only, next to the enclave code the simulated enclave runs;
the NSM measures that copy into PCR0/PCR2 (``simulator.measure.app_package_files``).
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import sys
from pathlib import Path

__all__ = ["AsgiAppError", "copy_app", "locate_app"]


class AsgiAppError(Exception):
    """The ASGI app's module cannot be found or copied."""

    code = "asgi-app-not-found"


def _search_path() -> list[str]:
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [os.getcwd(), *extra, *sys.path]


def locate_app(spec: str) -> Path:
    """The package directory (or module file) holding MODULE of ``MODULE:ATTR``."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise AsgiAppError(f"--asgi expects MODULE:ATTR, got {spec!r}")
    top = module.split(".")[0]
    found = importlib.machinery.PathFinder.find_spec(top, _search_path())
    if found is None or not found.origin or found.origin in ("built-in", "frozen"):
        raise AsgiAppError(
            f"cannot find module {top!r} of --asgi {spec} (searched the working directory, "
            f"PYTHONPATH and sys.path)"
        )
    origin = Path(found.origin).resolve()
    return origin.parent if found.submodule_search_locations else origin


def copy_app(source: Path, code_dir: Path) -> Path:
    """Copy the package (``.py`` files) or module into ``code_dir``; the copy's path."""
    target = code_dir / source.name
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    if source.is_file():
        shutil.copyfile(source, target)
        return target

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {
            n for n in names
            if not (n.endswith(".py") or Path(directory, n).is_dir())
            or n == "__pycache__" or n.startswith(".")
        }

    shutil.copytree(source, target, ignore=ignore)
    return target
