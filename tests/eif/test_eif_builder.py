"""The EIF builder: reproducible bytes, the PCRs that move, exact ramdisk contents, bad input.

Blobs are small fake files (see eif_build_helpers): nothing here boots a kernel.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from eif_build_helpers import (
    CMDLINE,
    ROOT,
    SIMPLE_ROOTFS,
    Member,
    make_blobs,
    make_rootfs,
    parse_newc,
    ramdisks,
    run_cli,
)

from attestation.eif import read_eif
from attestation.pcr import measure
from parent.eif import BuildInputs, EifBuildError, build
from parent.eif.docker import select_cmd

EPOCH = 1_700_000_000
CMD = ["/usr/bin/python3", "/app/main.py"]


def _build(tmp: Path, out: str = "app.eif", **changes) -> tuple[Path, dict[int, bytes]]:
    blobs = changes.pop("blobs", None) or make_blobs(tmp / "blobs")
    rootfs = changes.pop("rootfs", None) or make_rootfs(tmp / "rootfs.tar", SIMPLE_ROOTFS)
    inputs = BuildInputs(
        blobs_dir=blobs,
        rootfs_tar=rootfs,
        cmd=changes.pop("cmd", CMD),
        env=changes.pop("env", ["A=1", "B=two words"]),
        epoch=changes.pop("epoch", EPOCH),
        **changes,
    )
    result = build(inputs, tmp / "out" / out)
    return result.path, dict(result.pcrs)


def test_two_builds_are_identical_byte_for_byte(tmp_path: Path) -> None:
    first, _ = _build(tmp_path, "a.eif")
    other = tmp_path / "elsewhere"
    other.mkdir()
    second, _ = _build(other, "b.eif")  # new blobs/rootfs files with the same content
    assert first.read_bytes() == second.read_bytes()


def test_cli_builds_are_identical_and_the_reader_reports_the_printed_pcrs(tmp_path: Path) -> None:
    blobs = make_blobs(tmp_path / "blobs")
    rootfs = make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    outputs = []
    for name in ("one", "two"):
        out = tmp_path / name / "app.eif"
        done = run_cli(
            "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
            "--output", str(out), "--cmd", json.dumps(CMD), "--env", "A=1",
            "--measurements", str(tmp_path / name / "measurements.json"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        assert json.loads((tmp_path / name / "measurements.json").read_text()) == printed
        image = read_eif(out)
        assert image.crc_ok
        assert image.measurements() == printed
        assert set(printed["Measurements"]) == {"HashAlgorithm", "PCR0", "PCR1", "PCR2"}
        assert printed["Measurements"]["HashAlgorithm"] == "Sha384 { ... }"
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    # `python -m attestation pcrs --check-measurements` (what `make eif` runs) agrees
    check = run_cli(
        "attestation", "pcrs", "--eif", str(tmp_path / "one" / "app.eif"),
        "--check-measurements", str(tmp_path / "one" / "measurements.json"),
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_fresh_clone_builds_the_same_bytes(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    if subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "parent", "attestation"]
    ).returncode:
        pytest.skip("uncommitted builder changes: the clone would run other code")
    blobs = make_blobs(tmp_path / "blobs")
    rootfs = make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    results = []
    for where in (ROOT, clone):
        out = tmp_path / where.name / "app.eif"
        done = run_cli(
            "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
            "--output", str(out), "--cmd", json.dumps(CMD),
            cwd=where, env={"PYTHONPATH": str(where)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results.append(out.read_bytes())
    assert results[0] == results[1]


def test_changing_one_rootfs_file_changes_pcr0_and_pcr2_not_pcr1(tmp_path: Path) -> None:
    _, before = _build(tmp_path / "a")
    changed = dict(SIMPLE_ROOTFS, **{"app/main.py": Member(data=b"print('bye')\n")})
    (tmp_path / "b").mkdir()
    _, after = _build(tmp_path / "b", rootfs=make_rootfs(tmp_path / "b.tar", changed))
    assert after[0] != before[0]
    assert after[2] != before[2]
    assert after[1] == before[1]


def test_changing_the_cmdline_changes_pcr0_and_pcr1_not_pcr2(tmp_path: Path) -> None:
    _, before = _build(tmp_path / "a")
    blobs = make_blobs(tmp_path / "b" / "blobs", cmdline=CMDLINE.replace(b"30", b"31"))
    _, after = _build(tmp_path / "b", blobs=blobs)
    assert after[0] != before[0]
    assert after[1] != before[1]
    assert after[2] == before[2]


def test_cmdline_is_trimmed_like_nitro_cli(tmp_path: Path) -> None:
    _, before = _build(tmp_path / "a")
    blobs = make_blobs(tmp_path / "b" / "blobs", cmdline=b"  " + CMDLINE.strip() + b"\n\n")
    _, after = _build(tmp_path / "b", blobs=blobs)
    assert after == before
    assert read_eif(tmp_path / "a" / "out" / "app.eif").cmdline == CMDLINE.strip().decode()


def test_pcrs_follow_the_formulas_over_the_sections(tmp_path: Path) -> None:
    path, pcrs = _build(tmp_path)
    raw = path.read_bytes()
    boot, customer = ramdisks(raw)
    blobs = tmp_path / "blobs"
    kernel, cmdline = (blobs / "bzImage").read_bytes(), CMDLINE.strip()
    assert pcrs[0] == measure([kernel, cmdline, boot, customer])
    assert pcrs[1] == measure([kernel, cmdline, boot])
    assert pcrs[2] == measure([customer])


def test_bootstrap_ramdisk_holds_exactly_dev_init_nsm(tmp_path: Path) -> None:
    path, _ = _build(tmp_path)
    boot = parse_newc(ramdisks(path.read_bytes())[0])
    assert [(m.name, m.kind, m.perm) for m in boot] == [
        ("dev", "dir", 0o755),
        ("init", "file", 0o755),
        ("nsm.ko", "file", 0o755),
    ]
    assert boot[1].data == (tmp_path / "blobs" / "init").read_bytes()
    assert boot[2].data == (tmp_path / "blobs" / "nsm.ko").read_bytes()
    assert all(m.uid == m.gid == m.mtime == 0 for m in boot)
    assert [m.ino for m in boot] == [721, 722, 723]


def test_customer_ramdisk_holds_exactly_the_expected_entries(tmp_path: Path) -> None:
    path, _ = _build(tmp_path)
    members = {m.name: m for m in parse_newc(ramdisks(path.read_bytes())[1])}
    assert list(members) == [
        "cmd", "env", "rootfs", "rootfs/app", "rootfs/app/main.py", "rootfs/bin",
        "rootfs/bin/app", "rootfs/bin/app-copy", "rootfs/dev", "rootfs/etc", "rootfs/etc/conf",
        "rootfs/proc", "rootfs/run", "rootfs/sys", "rootfs/tmp", "rootfs/var",
    ]  # fmt: skip
    assert members["cmd"].data == b"/usr/bin/python3\n/app/main.py\n"
    assert members["env"].data == b"A=1\nB=two words\n"
    assert (members["cmd"].perm, members["env"].perm) == (0o644, 0o644)
    assert members["rootfs/app/main.py"].data == b"print('hello')\n"
    assert members["rootfs/bin/app"].kind == "symlink"
    assert members["rootfs/bin/app"].data == b"/app/main.py"
    # a hard link becomes a relative symlink, as linuxkit converts it
    assert members["rootfs/bin/app-copy"].kind == "symlink"
    assert members["rootfs/bin/app-copy"].data == b"../app/main.py"
    conf = members["rootfs/etc/conf"]
    assert (conf.uid, conf.gid, conf.perm, conf.mtime) == (1000, 1000, 0o600, 1000)
    assert members["rootfs/etc"].mtime == EPOCH  # clamped to SOURCE_DATE_EPOCH
    for name in ("rootfs", "rootfs/dev", "rootfs/proc", "rootfs/tmp"):
        assert (members[name].kind, members[name].perm, members[name].nlink) == ("dir", 0o755, 2)
    assert [m.ino for m in members.values()] == list(range(721, 721 + len(members)))


def test_metadata_has_a_fixed_build_time_input_digests_and_no_host_name(tmp_path: Path) -> None:
    import socket

    path, _ = _build(tmp_path)
    meta = read_eif(path).metadata
    assert meta is not None
    assert meta["BuildMetadata"]["BuildTime"] == "2023-11-14T22:13:20+00:00"
    assert meta["BuildMetadata"]["KernelVersion"] == "6.1.0"
    inputs = meta["CustomMetadata"]["Inputs"]
    tar_hash = hashlib.sha256((tmp_path / "rootfs.tar").read_bytes()).hexdigest()
    assert inputs["rootfs.tar"] == f"sha256:{tar_hash}"
    assert set(inputs) >= {"blobs/bzImage", "blobs/cmdline", "blobs/init", "blobs/nsm.ko"}
    assert socket.gethostname().encode() not in path.read_bytes()
    # the metadata is not measured: another build time changes the file, not the PCRs
    _, pcrs = _build(tmp_path, "later.eif", epoch=EPOCH + 10)
    assert pcrs[1] == read_eif(path).pcrs[1]


def test_docker_cmd_wins_over_entrypoint_as_nitro_cli_does() -> None:
    assert select_cmd({"Cmd": ["/app"], "Entrypoint": ["/init", "-x"]}) == ["/app"]
    assert select_cmd({"Cmd": None, "Entrypoint": ["/init", "-x"]}) == ["/init", "-x"]
    assert select_cmd({}) == []


@pytest.mark.parametrize(
    ("name", "code"),
    [("../escape", "bad-rootfs"), ("a/../../b", "bad-rootfs")],
)
def test_a_rootfs_that_climbs_out_is_refused(tmp_path: Path, name: str, code: str) -> None:
    tar = make_rootfs(tmp_path / "bad.tar", {name: Member(data=b"x")})
    with pytest.raises(EifBuildError) as info:
        _build(tmp_path, rootfs=tar)
    assert info.value.code == code


def test_bad_inputs_are_one_line_errors_with_a_code(tmp_path: Path) -> None:
    blobs = make_blobs(tmp_path / "blobs")
    rootfs = make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    (blobs / "Image").write_bytes(b"second kernel")
    cases = [
        (["--rootfs-tar", str(rootfs), "--blobs", str(blobs)], "bad-blobs"),
        (["--rootfs-tar", str(rootfs), "--blobs", str(tmp_path / "none")], "bad-blobs"),
        (["--rootfs-tar", str(tmp_path / "junk.tar"), "--blobs", str(tmp_path)], "bad-blobs"),
    ]
    (blobs / "Image").unlink()
    cases += [
        (["--rootfs-tar", str(tmp_path / "junk.tar"), "--blobs", str(blobs)], "bad-rootfs"),
        (["--rootfs-tar", str(rootfs), "--blobs", str(blobs), "--cmd", "{}"], "usage"),
        (["--rootfs-tar", str(rootfs), "--blobs", str(blobs), "--env", "NOEQUALS"], "usage"),
        (["--rootfs-tar", str(rootfs), "--blobs", str(blobs), "--signing-key", "k"], "usage"),
    ]
    for index, (args, code) in enumerate(cases):
        if index < 3:
            (blobs / "Image").write_bytes(b"second kernel")
        else:
            (blobs / "Image").unlink(missing_ok=True)
        extra = [] if "--cmd" in args else ["--cmd", '["/app"]']
        done = run_cli("parent", "eif", "build", *args, *extra, "--output", str(tmp_path / "x.eif"))
        assert done.returncode == 2, (args, done.stderr)
        assert f"error ({code}):" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "x.eif").exists()


def test_rootfs_without_cmd_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EifBuildError) as info:
        _build(tmp_path, cmd=[])
    assert info.value.code == "usage"


def test_missing_parent_directories_are_added(tmp_path: Path) -> None:
    tar = make_rootfs(tmp_path / "sparse.tar", {"opt/app/bin/run": Member(data=b"#!", mode=0o755)})
    path, _ = _build(tmp_path, rootfs=tar)
    members = {m.name: m for m in parse_newc(ramdisks(path.read_bytes())[1])}
    for parent in ("rootfs/opt", "rootfs/opt/app", "rootfs/opt/app/bin"):
        assert (members[parent].kind, members[parent].perm) == ("dir", 0o755)
    names = list(members)
    assert names.index("rootfs/opt/app/bin") < names.index("rootfs/opt/app/bin/run")


def test_a_member_under_a_file_is_refused(tmp_path: Path) -> None:
    tar = make_rootfs(tmp_path / "bad.tar", {"etc": Member(data=b"x"), "etc/conf": Member()})
    with pytest.raises(EifBuildError) as info:
        _build(tmp_path, rootfs=tar)
    assert info.value.code == "bad-rootfs"


def test_dockers_own_files_are_dropped_or_replaced_as_linuxkit_does(tmp_path: Path) -> None:
    tree = dict(SIMPLE_ROOTFS)
    tree.update({
        ".dockerenv": Member(), "etc/hostname": Member(data=b"build-host-42\n"),
        "etc/hosts": Member(data=b"172.17.0.2 build-host-42\n"), "etc/resolv.conf": Member(),
        "dev": Member("dir", mode=0o755), "dev/console": Member(),
    })  # fmt: skip
    path, _ = _build(tmp_path, rootfs=make_rootfs(tmp_path / "docker.tar", tree))
    members = {m.name: m for m in parse_newc(ramdisks(path.read_bytes())[1])}
    for gone in (".dockerenv", "etc/hostname", "dev/console"):
        assert f"rootfs/{gone}" not in members
    assert members["rootfs/etc/hosts"].data.startswith(b"127.0.0.1       localhost\n")
    assert members["rootfs/etc/resolv.conf"].data == b"\n# no resolv.conf configured\n"
    assert b"build-host-42" not in path.read_bytes()
