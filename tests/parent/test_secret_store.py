"""The parent's secret store: directory (atomic, fsynced) and S3 (moto in server mode, a real
process on a free port) behave alike; malformed records are refused with typed errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parent.secret_store import (
    DirectoryStore,
    S3Store,
    SecretRecord,
    SecretStore,
    StoreError,
    StoreLimits,
    open_store,
)

MOTO_START_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + MOTO_START_S
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, "moto_server exited"
            assert time.monotonic() < end, "moto_server did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _s3(url: str) -> object:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SecretStore:
    if request.param == "directory":
        return DirectoryStore(tmp_path / "secrets", StoreLimits(max_records=3))
    url = request.getfixturevalue("moto_url")
    client = _s3(url)
    bucket = f"b{os.urandom(6).hex()}"
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    return S3Store(bucket, "fleet/a", client=client, limits=StoreLimits(max_records=3))


def rec(name: str = "k1", ciphertext: bytes = b"\x01" * 40, **ctx: str) -> SecretRecord:
    return SecretRecord(name, "hmac", ciphertext, ctx)


def test_put_list_delete_round_trip(store: SecretStore) -> None:
    assert store.list() == []
    store.put(rec("k1", purpose="test"))
    store.put(rec("k2", b"\x02" * 10))
    store.put(rec("k1", b"\x03" * 5))  # replaces
    got = {r.name: r for r in store.list()}
    assert set(got) == {"k1", "k2"}
    assert got["k1"].ciphertext == b"\x03" * 5 and got["k1"].encryption_context == {}
    assert got["k2"].seal_load_body() == {"name": "k2", "kind": "hmac", "ciphertext": b"\x02" * 10}
    assert store.delete("k1") is True
    assert store.delete("k1") is False
    assert [r.name for r in store.list()] == ["k2"]


def test_the_store_is_bounded(store: SecretStore) -> None:
    for i in range(3):
        store.put(rec(f"k{i}"))
    with pytest.raises(StoreError) as info:
        store.put(rec("k9"))
    assert info.value.code == "store-full"
    store.put(rec("k0", b"new"))  # replacing one is fine


@pytest.mark.parametrize("bad", [
    SecretRecord("../x", "hmac", b"c"),
    SecretRecord(".hidden", "hmac", b"c"),
    SecretRecord("a/b", "hmac", b"c"),
    SecretRecord("k", "rsa", b"c"),
    SecretRecord("k", "hmac", b""),
    SecretRecord("k", "hmac", b"c" * 6145),
    SecretRecord("k", "hmac", b"c", {"a": 1}),  # type: ignore[dict-item]
    SecretRecord("k", "hmac", b"c", {f"k{i}": "v" for i in range(17)}),
])
def test_malformed_records_are_refused(store: SecretStore, bad: SecretRecord) -> None:
    with pytest.raises(StoreError) as info:
        store.put(bad)
    assert info.value.code == "bad-record"
    assert store.list() == []


def test_a_record_never_shows_its_ciphertext_in_repr() -> None:
    assert "\\x01" not in repr(rec())


def test_directory_writes_atomically_and_privately(tmp_path: Path) -> None:
    d = tmp_path / "s"
    store = DirectoryStore(d)
    store.put(rec("k1"))
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in d.iterdir()) == ["k1.json"]
    (d / ".tmp-crashed").write_bytes(b"half a rec")  # a crash mid-write leaves only this
    assert [r.name for r in store.list()] == ["k1"]


def test_directory_reports_a_corrupt_record_by_type(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    (tmp_path / "k1.json").write_bytes(b"{not json")
    with pytest.raises(StoreError) as info:
        store.list()
    assert info.value.code == "bad-record"
    (tmp_path / "k1.json").write_bytes(rec("other").to_bytes())  # a file naming another
    with pytest.raises(StoreError):
        store.list()


def test_s3_keeps_to_its_prefix(moto_url: str) -> None:
    client = _s3(moto_url)
    client.create_bucket(Bucket="shared")  # type: ignore[attr-defined]
    a = S3Store("shared", "fleet-a", client=client)
    b = S3Store("shared", "fleet-b/", client=client)
    a.put(rec("k1"))
    client.put_object(Bucket="shared", Key="fleet-a/nested/k2.json",  # type: ignore[attr-defined]
                      Body=rec("k2").to_bytes())
    assert [r.name for r in a.list()] == ["k1"]
    assert b.list() == []
    raw = client.get_object(Bucket="shared", Key="fleet-a/k1.json")["Body"].read()  # type: ignore[attr-defined]
    assert json.loads(raw)["name"] == "k1"


def test_s3_errors_are_typed(moto_url: str) -> None:
    store = S3Store("no-such-bucket", "", client=_s3(moto_url))
    with pytest.raises(StoreError) as info:
        store.list()
    assert info.value.code == "store-failed" and "NoSuchBucket" in info.value.message


def test_open_store_picks_by_location(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "d")), DirectoryStore)
    s3 = open_store("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store) and s3.describe() == "s3://bucket/some/prefix/"
    with pytest.raises(StoreError):
        open_store("s3:///x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_reading_any_bytes_gives_a_record_or_a_typed_error(raw: bytes) -> None:
    try:
        SecretRecord.from_bytes(raw)
    except StoreError as exc:
        assert exc.code == "bad-record"


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(names, st.sampled_from(["hmac", "ec-p256", "ed25519"]), st.binary(min_size=1, max_size=64),
       st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4))
def test_records_round_trip(name: str, kind: str, ct: bytes, ctx: dict[str, str]) -> None:
    record = SecretRecord(name, kind, ct, ctx)
    assert SecretRecord.from_bytes(record.to_bytes()) == record
