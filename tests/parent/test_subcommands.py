"""`python -m parent` / `python -m simulator`: one dispatcher, real processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from enclave.service import dispatch


@pytest.mark.parametrize("package", ["parent", "simulator"])
def test_help_lists_commands_and_unknown_is_a_usage_error(package: str) -> None:
    ok = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "commands:" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", package, "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
    bare = subprocess.run([sys.executable, "-m", package], capture_output=True, text=True)
    assert bare.returncode == 2


def test_dispatch_runs_the_module_main_with_the_rest(capsys) -> None:
    commands = {"policy": ("parent.key_policy", "key policy")}
    with pytest.raises(SystemExit) as info:  # argparse's --help of the dispatched module
        dispatch("prog", commands, ["policy", "--help"])
    assert info.value.code == 0 and "--measurements" in capsys.readouterr().out
    missing = {"gone": ("parent.no_such_module", "absent")}
    assert dispatch("prog", missing, ["gone"]) == 2
    assert "not available" in capsys.readouterr().err
