"""The script both image tests run inside the image's Python: every module of the app imports.

Modules that belong to an optional extra of the client side (``nitro-toolkit[connect]``) are
not part of the enclave image's dependencies and are left out by name.
"""

CLIENT_EXTRA_MODULES = ("attestation.https",)
"""Import httpx (the ``connect`` extra): for services that verify, never run in the enclave."""

IMPORT_ALL = f"""
import importlib, pkgutil, sys
skip = {CLIENT_EXTRA_MODULES!r}
count = 0
for package in ("attestation", "enclave"):
    importlib.import_module(package)
    count += 1
    for info in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
        if info.name.endswith("__main__") or info.name in skip:
            continue
        importlib.import_module(info.name)
        count += 1
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("parent", "simulator"))
assert not leaked, leaked
print(count)
"""
