"""The ASGI app's package is part of what PCR0/PCR2 measure in simulation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from simulator._asgi_app import AsgiAppError, copy_app, locate_app
from simulator.measure import MeasureError, app_package_files, build_enclave_image
from simulator.stack import DEFAULT_ENCLAVE_SOURCE

APPS = Path(__file__).resolve().parent / "_apps"


def test_editing_the_app_changes_pcr0_and_pcr2_not_pcr1(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(APPS))
    source = locate_app("ingress_testapp:app")
    assert source == APPS / "ingress_testapp"
    copy = copy_app(source, tmp_path)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.pyc").write_bytes(b"not measured")
    before = build_enclave_image(DEFAULT_ENCLAVE_SOURCE, app_files=app_package_files(copy))
    assert "rootfs/app/ingress_testapp/__init__.py" in {e.path for e in before.listing}
    assert not any(e.path.endswith(".pyc") for e in before.listing)
    plain = build_enclave_image(DEFAULT_ENCLAVE_SOURCE)
    assert plain.pcrs[0] != before.pcrs[0]
    target = copy / "__init__.py"
    target.write_text(target.read_text() + "\n# one changed line\n")
    after = build_enclave_image(DEFAULT_ENCLAVE_SOURCE, app_files=app_package_files(copy))
    assert after.pcrs[0] != before.pcrs[0] and after.pcrs[2] != before.pcrs[2]
    assert after.pcrs[1] == before.pcrs[1]


def test_a_single_module_is_measured_by_name(tmp_path):
    module = tmp_path / "solo.py"
    module.write_text("app = None\n")
    assert app_package_files(module) == {"solo.py": module}
    copied = copy_app(module, tmp_path / "code") if (tmp_path / "code").mkdir() is None else None
    assert copied is not None and copied.read_text() == "app = None\n"


def test_bad_specs_and_missing_modules(tmp_path):
    with pytest.raises(AsgiAppError):
        locate_app("no-colon")
    with pytest.raises(AsgiAppError):
        locate_app("surely_not_a_module_4f2a:app")
    with pytest.raises(MeasureError):
        app_package_files(tmp_path)  # a directory without __init__.py
    shutil.rmtree(tmp_path)
