"""The signed build statement: written by the builder, checked by
``python -m attestation provenance verify`` against the EIF or an attestation document."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eif_build_helpers import SIMPLE_ROOTFS, make_blobs, make_rootfs, run_cli, signing_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.eif import read_eif
from attestation.provenance import PAYLOAD_TYPE, ProvenanceError, pae, verify_statement
from attestation.testpki import TestPKI


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("prov")
    blobs = make_blobs(tmp / "blobs")
    rootfs = make_rootfs(tmp / "rootfs.tar", SIMPLE_ROOTFS)
    key, cert = signing_pair(tmp)
    wheels = tmp / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"PK fake wheel")
    out = tmp / "app.eif"
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(out), "--cmd", '["/app/main.py"]', "--env", "SECRET=hunter2",
        "--signing-key", str(key), "--signing-cert", str(cert),
        "--source-repo", "https://example.org/repo.git", "--source-commit", "abc123",
        "--base-image", "debian@sha256:" + "ab" * 32, "--wheels", str(wheels),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    other = tmp / "other.eif"
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(other), "--cmd", '["/app/other.py"]',
        "--signing-key", str(key), "--signing-cert", str(cert),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {
        "eif": out,
        "statement": tmp / "app.eif.intoto.json",
        "other": other,
        "key": key,
        "cert": cert,
        "tmp": tmp,
    }


def _payload(envelope_path: Path) -> dict:
    envelope = json.loads(envelope_path.read_text())
    return json.loads(base64.b64decode(envelope["payload"]))


def _resign(built: dict[str, Path], statement: dict, key_path: Path, cert_path: Path) -> bytes:
    body = json.dumps(statement).encode()
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sig = key.sign(pae(PAYLOAD_TYPE, body), ec.ECDSA(hashes.SHA384()))
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": "x", "sig": base64.b64encode(sig).decode(),
                        "cert": cert_path.read_text()}],
    }  # fmt: skip
    return json.dumps(envelope).encode()


def test_statement_shape(built: dict[str, Path]) -> None:
    statement = _payload(built["statement"])
    image = read_eif(built["eif"])
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    (subject,) = statement["subject"]
    assert subject["name"] == "app.eif"
    assert subject["annotations"] == {f"PCR{i}": v.hex() for i, v in image.pcrs.items()}
    build_def = statement["predicate"]["buildDefinition"]
    assert build_def["externalParameters"]["source"] == {
        "repository": "https://example.org/repo.git",
        "commit": "abc123",
    }
    names = {d["name"]: d for d in build_def["resolvedDependencies"]}
    assert names["base-image"] == {
        "name": "base-image",
        "uri": "debian",
        "digest": {"sha256": "ab" * 32},
    }
    assert "wheel:demo-1.0-py3-none-any.whl" in names
    assert {"blobs/bzImage", "blobs/cmdline", "blobs/init", "blobs/nsm.ko", "rootfs.tar"} <= set(
        names
    )
    assert "version" in statement["predicate"]["runDetails"]["builder"]
    assert b"hunter2" not in built["statement"].read_bytes()  # env values stay out


def test_cli_verifies_against_the_eif(built: dict[str, Path]) -> None:
    done = run_cli(
        "attestation", "provenance", "verify", str(built["statement"]), "--eif", str(built["eif"]),
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["valid"] and result["trusted_by"] == "pcr8"
    assert result["source"]["commit"] == "abc123"
    with_key = run_cli(
        "attestation", "provenance", "verify", str(built["statement"]), "--eif", str(built["eif"]),
        "--key", str(built["cert"]),
    )  # fmt: skip
    assert with_key.returncode == 0 and with_key.stdout.startswith("OK: built from"), (
        with_key.stdout
    )


def test_a_changed_pcr_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    statement = _payload(built["statement"])
    statement["subject"][0]["annotations"]["PCR2"] = "00" * 48
    # re-signed with the right key: the signature holds, the subject does not
    resigned = _resign(built, statement, built["key"], built["cert"])
    with pytest.raises(Exception) as info:
        verify_statement(resigned, eif=built["eif"])
    assert getattr(info.value, "code", None) == "pcr-mismatch"
    # edited without re-signing: the signature breaks
    envelope = json.loads(built["statement"].read_text())
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(envelope))
    done = run_cli("attestation", "provenance", "verify", str(path), "--eif", str(built["eif"]))
    assert done.returncode == 1 and "[bad-provenance]" in done.stdout, done.stdout


def test_a_wrong_signature_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    statement = _payload(built["statement"])
    key, cert = signing_pair(tmp_path, "mallory")
    forged = _resign(built, statement, key, cert)
    with pytest.raises(ProvenanceError, match="not the EIF's signing certificate"):
        verify_statement(forged, eif=built["eif"])
    # a trusted key that did not sign it
    with pytest.raises(ProvenanceError, match="does not verify"):
        verify_statement(
            built["statement"].read_bytes(),
            eif=built["eif"],
            trusted_key=serialization.load_pem_private_key(key.read_bytes(), None).public_key(),
        )
    # a corrupted signature
    envelope = json.loads(built["statement"].read_text())
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[-1] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(ProvenanceError):
        verify_statement(json.dumps(envelope).encode(), eif=built["eif"])


def test_the_statement_of_another_eif_is_refused(built: dict[str, Path]) -> None:
    with pytest.raises(Exception) as info:
        verify_statement(built["statement"].read_bytes(), eif=built["other"])
    assert getattr(info.value, "code", None) in {"bad-provenance", "pcr-mismatch"}


def test_documents_from_this_image_pass_and_from_another_image_fail(
    built: dict[str, Path], tmp_path: Path
) -> None:
    pki = TestPKI.generate()
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root_pem)
    this = read_eif(built["eif"]).pcrs
    other = read_eif(built["other"]).pcrs
    for name, pcrs, expected_rc in (("this", this, 0), ("other", other, 1)):
        full = {i: bytes(48) for i in range(16)} | dict(pcrs)
        doc = pki.sign_document(pcrs=full, module_id="i-0123456789abcdef0-enc0123456789abcdef")
        path = tmp_path / f"{name}.cbor"
        path.write_bytes(doc)
        done = run_cli(
            "attestation", "provenance", "verify", str(built["statement"]),
            "--document", str(path), "--root", str(root), "--json",
        )  # fmt: skip
        assert done.returncode == expected_rc, done.stdout + done.stderr
        if expected_rc:
            assert json.loads(done.stdout)["error"]["code"] == "pcr-mismatch"


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        b"[]",
        b"{" * 5000,
        json.dumps({"payloadType": "text/plain", "payload": "", "signatures": []}).encode(),
        json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "!!", "signatures": [{}]}).encode(),
        json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "e30=", "signatures": [1]}).encode(),
        b" " * (1 << 20) + b"{}",
    ],
)
def test_malformed_envelopes_are_bad_provenance(built: dict[str, Path], envelope: bytes) -> None:
    with pytest.raises(ProvenanceError):
        verify_statement(envelope, eif=built["eif"])


def test_usage_errors_exit_2(built: dict[str, Path], tmp_path: Path) -> None:
    done = run_cli("attestation", "provenance", "verify", str(tmp_path / "missing.json"),
                   "--eif", str(built["eif"]))  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_source_urls_lose_their_credentials() -> None:
    from parent.eif.provenance import public_url

    assert (
        public_url("https://bot:ghp_secret@github.example/o/r.git")
        == "https://github.example/o/r.git"
    )
    assert public_url("git@github.example:o/r.git") == "git@github.example:o/r.git"
    assert public_url("") == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    envelope=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"payloadType": st.just(PAYLOAD_TYPE), "payload": st.text(max_size=40),
             "signatures": json_values},
        ).map(lambda v: json.dumps(v).encode()),
    )
)  # fmt: skip
def test_arbitrary_envelopes_are_coded_rejections(built: dict[str, Path], envelope: bytes) -> None:
    from attestation.errors import AttestationError

    with pytest.raises(AttestationError):
        verify_statement(envelope, eif=built["eif"])


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(statement=json_values)
def test_arbitrary_signed_statements_are_coded_rejections(
    built: dict[str, Path], statement
) -> None:
    from attestation.errors import AttestationError

    with pytest.raises(AttestationError):
        verify_statement(_resign(built, statement, built["key"], built["cert"]), eif=built["eif"])


def test_a_named_key_signs_the_statement_of_an_unsigned_eif(tmp_path: Path) -> None:
    blobs = make_blobs(tmp_path / "blobs")
    rootfs = make_rootfs(tmp_path / "rootfs.tar", SIMPLE_ROOTFS)
    key, cert = signing_pair(tmp_path, "release")
    out = tmp_path / "plain.eif"
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(out), "--cmd", '["/a"]',
        "--provenance-key", str(key), "--provenance-cert", str(cert),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    statement = tmp_path / "plain.eif.intoto.json"
    assert "PCR8" not in _payload(statement)["subject"][0]["annotations"]
    # the EIF carries no certificate, so only a key the verifier names is trusted
    refused = run_cli("attestation", "provenance", "verify", str(statement), "--eif", str(out))
    assert refused.returncode == 1 and "[bad-provenance]" in refused.stdout
    trusted = run_cli("attestation", "provenance", "verify", str(statement), "--eif", str(out),
                      "--key", str(cert))  # fmt: skip
    assert trusted.returncode == 0, trusted.stdout
    # a bad named key is refused before anything is built
    (tmp_path / "junk.key").write_text("not a key")
    done = run_cli(
        "parent", "eif", "build", "--rootfs-tar", str(rootfs), "--blobs", str(blobs),
        "--output", str(tmp_path / "never.eif"), "--cmd", '["/a"]',
        "--provenance-key", str(tmp_path / "junk.key"), "--provenance-cert", str(cert),
    )  # fmt: skip
    assert done.returncode == 2 and "error (bad-signing-key)" in done.stderr
    assert not (tmp_path / "never.eif").exists()
