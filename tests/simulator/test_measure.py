"""PCR0/1/2 of the simulated enclave: EIF formulas over a reproducible archive of its code."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.pcr import ZERO_PCR
from simulator.measure import (
    SIM_BOOTSTRAP_RAMDISK,
    SIM_CMDLINE,
    SIM_KERNEL,
    MeasureError,
    build_enclave_image,
    cpio_newc,
    enclave_archive,
    measure_enclave_code,
)

REPO = Path(__file__).resolve().parents[2]
ENCLAVE_DIR = REPO / "enclave"


@pytest.fixture
def source(tmp_path) -> Path:
    """A copy of the real enclave package, with some noise that must not be measured."""
    dst = tmp_path / "enclave"
    shutil.copytree(ENCLAVE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dst / "__pycache__").mkdir()
    (dst / "__pycache__" / "nsm.cpython-311.pyc").write_bytes(b"compiled")
    (dst / ".mypy_cache").mkdir()
    (dst / ".mypy_cache" / "x.py").write_text("cache = 1\n")
    (dst / "stray.pyc").write_bytes(b"compiled")
    return dst


def _sha384_pcr(*chunks: bytes) -> bytes:
    """Independent restatement of nitro-spec §5.4: SHA384(0^48 ‖ SHA384(chunks…))."""
    inner = hashlib.sha384(b"".join(chunks)).digest()
    return hashlib.sha384(ZERO_PCR + inner).digest()


def parse_cpio_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """``(name, mode, content)`` of each entry; checks magic, fixed metadata and alignment."""
    out, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        _ino, mode, uid, gid, _nlink, mtime, size, *_, namesize, check = fields
        assert (uid, gid, mtime, check) == (0, 0, 0, 0)
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        body = name_start + namesize + (-(110 + namesize) % 4)
        content = data[body : body + size]
        pos = body + size + (-size % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, content))


def test_pcrs_follow_the_eif_formulas(source):
    image = build_enclave_image(source)
    assert image.kernel == SIM_KERNEL and image.cmdline == SIM_CMDLINE
    ram0, ram1 = image.ramdisks
    assert ram0 == SIM_BOOTSTRAP_RAMDISK
    pcrs = measure_enclave_code(source)
    assert pcrs == {
        0: _sha384_pcr(SIM_KERNEL, SIM_CMDLINE, ram0, ram1),
        1: _sha384_pcr(SIM_KERNEL, SIM_CMDLINE, ram0),
        2: _sha384_pcr(ram1),
    }


def test_pcr1_is_a_fixed_constant(tmp_path):
    # pinned: changes only if the simulator's kernel/cmdline/bootstrap stand-ins change
    (tmp_path / "a.py").write_text("x = 1\n")
    assert measure_enclave_code(tmp_path)[1].hex() == (
        "10eb254c8afd8144a6719bbbf7c1aca87b670ab9908d49799ebc7d4832ecfaf9"
        "f7e2b1da85279b1845f1cccd89436a49"
    )


def test_archive_holds_exactly_the_python_sources(source):
    entries = parse_cpio_newc(enclave_archive(source))
    files = {name: content for name, mode, content in entries if mode == 0o100644}
    expected = {
        f"rootfs/app/enclave/{p.relative_to(source).as_posix()}": p.read_bytes()
        for p in source.rglob("*.py")
        if "__pycache__" not in p.parts and ".mypy_cache" not in p.parts
    }
    assert files == expected and "rootfs/app/enclave/nsm/__init__.py" in files
    dirs = [name for name, mode, _ in entries if mode == 0o040755]
    assert dirs[:3] == ["rootfs", "rootfs/app", "rootfs/app/enclave"]
    names = [name for name, _, _ in entries]
    assert names == sorted(names, key=lambda n: n.split("/"))


def test_archive_is_reproducible_whatever_the_metadata(source):
    before = enclave_archive(source)
    for p in source.rglob("*.py"):
        os.utime(p, (1_000_000, 1_000_000))
        p.chmod(0o600)
    assert enclave_archive(source) == before
    assert enclave_archive(source) == before  # and stable from run to run


def test_editing_one_source_changes_pcr0_and_pcr2_only(source):
    before = measure_enclave_code(source)
    target = source / "nsm" / "__init__.py"
    target.write_text(target.read_text() + "\n# one more line\n")
    after = measure_enclave_code(source)
    assert after[0] != before[0] and after[2] != before[2]
    assert after[1] == before[1]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: (d / "new_module.py").write_text("pass\n"),
        lambda d: (d / "nsm" / "__init__.py").rename(d / "nsm2.py"),
        lambda d: (d / "zz_sub").mkdir() or (d / "zz_sub" / "__init__.py").write_text(""),
    ],
    ids=["add", "rename", "subpackage"],
)
def test_file_set_changes_are_measured(source, change):
    before = measure_enclave_code(source)
    change(source)
    assert measure_enclave_code(source)[2] != before[2]


def test_ignored_files_do_not_count(source):
    before = measure_enclave_code(source)
    (source / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"x")
    (source / "notes.txt").write_text("not code")
    (source / ".mypy_cache" / "y.py").write_text("y = 2\n")
    assert measure_enclave_code(source) == before


def test_app_files_join_the_application_ramdisk(source, tmp_path):
    plain = measure_enclave_code(source)
    config = tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    with_app = measure_enclave_code(source, app_files={"config.yaml": config})
    assert with_app[1] == plain[1] and with_app[2] != plain[2]
    same = measure_enclave_code(source, app_files={"config.yaml": b"a: 1\n"})
    assert same == with_app
    names = [n for n, _, _ in parse_cpio_newc(enclave_archive(source, app_files={"x/y": b""}))]
    assert "rootfs/app/x/y" in names


@pytest.mark.parametrize("name", ["../escape", "/abs", "a//b", "", "a/./b"])
def test_bad_app_paths_are_refused(source, name):
    with pytest.raises(MeasureError):
        measure_enclave_code(source, app_files={name: b""})


def test_missing_directory_is_a_measure_error(tmp_path):
    with pytest.raises(MeasureError) as info:
        measure_enclave_code(tmp_path / "absent")
    assert info.value.code == "measure-failed"


def test_cpio_writer_round_trips():
    files = {"b/c.txt": b"hello", "a.txt": b"", "b/a": b"x" * 5}
    entries = parse_cpio_newc(cpio_newc(files))
    assert [(n, c) for n, m, c in entries if m == 0o100644] == [
        ("a.txt", b""),
        ("b/a", b"x" * 5),
        ("b/c.txt", b"hello"),
    ]
    assert cpio_newc(files) == cpio_newc(dict(reversed(files.items())))


def test_listing_and_cli_agree(source):
    image = build_enclave_image(source)
    listing = {e.path: e for e in image.listing}
    nsm_entry = listing["rootfs/app/enclave/nsm/__init__.py"]
    nsm_file = source / "nsm" / "__init__.py"
    assert nsm_entry.sha384 == hashlib.sha384(nsm_file.read_bytes()).hexdigest()
    out = subprocess.run(
        [sys.executable, "-m", "simulator.measure", str(source), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=True,
    )
    described = json.loads(out.stdout)
    assert described["pcrs"] == {str(i): v.hex() for i, v in image.pcrs.items()}
    assert len(described["files"]) == len(image.listing)
