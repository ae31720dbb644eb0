"""Hypothesis: arbitrary small rootfs trees always build, round-trip through our reader and
an independent cpio parser, and build to the same bytes twice."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from eif_build_helpers import Member, make_blobs, make_rootfs, parse_newc, ramdisks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.eif import read_eif
from parent.eif import BuildInputs, EifBuildError, build
from parent.eif._rootfs import EXCLUDED, REPLACED

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BLOBS = make_blobs(Path(tempfile.mkdtemp(prefix="eif-prop-blobs-")))

segment = st.text(
    alphabet=st.characters(blacklist_characters="/\0\\", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
members = st.one_of(
    st.builds(Member, st.just("file"), st.binary(max_size=300),
              st.integers(0, 0o7777), uid=st.integers(0, 70000), mtime=st.integers(0, 2**32 - 1)),
    st.builds(Member, st.just("dir"), mode=st.integers(0, 0o7777)),
    st.builds(Member, st.just("symlink"), link=st.text(min_size=1, max_size=40).filter(
        lambda s: "\0" not in s)),
)  # fmt: skip
trees = st.dictionaries(paths, members, max_size=12)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _expected_names(tree: dict[str, Member]) -> list[str]:
    names = {"cmd", "env", "rootfs"} | {f"rootfs/{p}" for p in tree}
    names |= {f"rootfs/{a}" for p in tree for a in _ancestors(p)}
    names |= {f"rootfs/{d}" for d in ("dev", "proc", "run", "sys", "tmp", "var")}
    return sorted(names, key=lambda n: n.encode())


@SETTINGS
@given(tree=trees, cmd=st.lists(st.text(min_size=1, max_size=20).filter(
    lambda s: "\n" not in s and "\0" not in s), min_size=1, max_size=3))  # fmt: skip
def test_any_small_tree_builds_and_round_trips(tree: dict[str, Member], cmd: list[str]) -> None:
    # a reserved mount dir given as a non-directory would clash with the builder's own entry
    tree = {p: m for p, m in tree.items() if p not in {"dev", "proc", "run", "sys", "tmp", "var"}
            or m.kind == "dir"}  # fmt: skip
    tree = {p: m for p, m in tree.items() if p not in EXCLUDED and p not in REPLACED}
    under_non_dir = any(a in tree and tree[a].kind != "dir" for p in tree for a in _ancestors(p))
    with tempfile.TemporaryDirectory(prefix="eif-prop-") as tmp:
        work = Path(tmp)
        rootfs = make_rootfs(work / "rootfs.tar", tree)
        inputs = BuildInputs(BLOBS, rootfs, cmd, env=["K=V"], epoch=1_700_000_000)
        if under_non_dir:  # e.g. "a" a file and "a/b": refused, never a broken ramdisk
            with pytest.raises(EifBuildError) as info:
                build(inputs, work / "a.eif")
            assert info.value.code == "bad-rootfs"
            return
        first = build(inputs, work / "a.eif")
        second = build(inputs, work / "b.eif")
        raw = first.path.read_bytes()
        assert raw == second.path.read_bytes()
        image = read_eif(first.path)
        assert image.crc_ok
        assert dict(image.pcrs) == dict(first.pcrs)
        customer = parse_newc(ramdisks(raw)[1])
        assert [m.name for m in customer] == _expected_names(tree)
        by_name = {m.name: m for m in customer}
        assert by_name["cmd"].data.decode().split("\n")[:-1] == cmd
        for path, member in tree.items():
            got = by_name[f"rootfs/{path}"]
            if member.kind == "file":
                assert got.data == member.data
                assert got.perm == member.mode and got.uid == member.uid
                assert got.mtime == min(member.mtime, 1_700_000_000)
            elif member.kind == "symlink":
                assert got.kind == "symlink" and got.data == member.link.encode()


@settings(max_examples=60, deadline=None)
@given(
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=6),
)
def test_a_damaged_rootfs_tar_is_a_coded_error_or_builds(cut: int, flips: list) -> None:
    """Truncated or bit-flipped tars: EifBuildError('bad-rootfs', ...) or a valid EIF."""
    with tempfile.TemporaryDirectory(prefix="eif-prop-") as tmp:
        work = Path(tmp)
        good = make_rootfs(work / "good.tar", {"a": Member(data=b"x" * 700), "b": Member("dir")})
        raw = bytearray(good.read_bytes()[: cut or None])
        for where, value in flips:
            if where < len(raw):
                raw[where] ^= value
        bad = work / "bad.tar"
        bad.write_bytes(bytes(raw))
        try:
            result = build(BuildInputs(BLOBS, bad, ["/a"]), work / "x.eif")
        except EifBuildError as exc:
            assert exc.code in {"bad-rootfs", "rootfs-too-large"}
        else:
            assert read_eif(result.path).crc_ok
