"""Puts the fake ``nitro-cli`` (tests/parent/fake_nitro_cli/) on a PATH of its own."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from parent.nitro_cli import NitroCli, NitroCliLimits

FAKE_SOURCE = Path(__file__).resolve().parent / "fake_nitro_cli" / "nitro-cli"


@dataclass
class FakeNitro:
    bin_dir: Path
    state: Path
    env: dict[str, str]

    def cli(self, limits: NitroCliLimits | None = None, **env: str) -> NitroCli:
        return NitroCli(env={**self.env, **env}, limits=limits or NitroCliLimits())

    def add_image(self, uri: str) -> None:
        path = self.state / "images.json"
        images = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*images, uri]))


def make_fake(tmp_path: Path) -> FakeNitro:
    """Install the fake as ``nitro-cli`` in tmp_path/bin, run by this interpreter."""
    bin_dir = tmp_path / "bin"
    state = tmp_path / "nitro-state"
    bin_dir.mkdir()
    state.mkdir()
    text = FAKE_SOURCE.read_text().replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1)
    exe = bin_dir / "nitro-cli"
    exe.write_text(text)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["FAKE_NITRO_CLI_STATE"] = str(state)
    return FakeNitro(bin_dir, state, env)
