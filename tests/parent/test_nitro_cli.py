"""parent.nitro_cli against recorded nitro-cli outputs and a fake ``nitro-cli`` on PATH."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_nitro import FakeNitro, make_fake

from attestation.eif import read_eif
from parent._nitro_errors import explain, find_code
from parent.nitro_cli import (
    EifDescription,
    EnclaveDescription,
    EnclaveRun,
    Measurements,
    NitroCli,
    NitroCliError,
    NitroCliLimits,
    TerminateResult,
    _json_values,
)

P0, P1, P2 = "a" * 96, "b" * 96, "c" * 96

# --- recorded outputs (shapes of nitro-cli 1.5 json_output.rs / UG cmd-nitro-* examples) ---------

BUILD_STDOUT_LEGACY = f"""Enclave Image successfully created.
{{
  "Measurements": {{
    "HashAlgorithm": "Sha384 {{ ... }}",
    "PCR0": "{P0}",
    "PCR1": "{P1}",
    "PCR2": "{P2}"
  }}
}}
"""
RUN_STDOUT = """{
  "EnclaveName": "app",
  "EnclaveID": "i-05f6ed443aEXAMPLE-enc173dfe3eEXAMPLE",
  "ProcessID": 7077,
  "EnclaveCID": 16,
  "NumberOfCPUs": 2,
  "CPUIDs": [1, 3],
  "MemoryMiB": 512
}
"""
DESCRIBE_STDOUT = f"""[
  {{
    "EnclaveName": "app",
    "EnclaveID": "i-05f6ed443aEXAMPLE-enc173dfe3eEXAMPLE",
    "ProcessID": 7077,
    "EnclaveCID": 16,
    "NumberOfCPUs": 2,
    "CPUIDs": [1, 3],
    "MemoryMiB": 512,
    "State": "RUNNING",
    "Flags": "DEBUG_MODE",
    "Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{"0" * 96}",
                     "PCR1": "{"0" * 96}", "PCR2": "{"0" * 96}"}}
  }}
]
"""
TERMINATE_ALL_STDOUT = """{
  "EnclaveName": "a",
  "EnclaveID": "i-05f6ed443aEXAMPLE-enc0000000000000001",
  "Terminated": true
}
{
  "EnclaveName": "b",
  "EnclaveID": "i-05f6ed443aEXAMPLE-enc0000000000000002",
  "Terminated": true
}
"""
DESCRIBE_EIF_STDOUT = f"""{{
  "EifVersion": 4,
  "Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "{P0}", "PCR1": "{P1}",
                   "PCR2": "{P2}"}},
  "IsSigned": false,
  "CheckCRC": true,
  "ImageName": "app",
  "ImageVersion": "latest",
  "Metadata": {{"BuildTime": "2024-06-21T10:00:00+00:00", "BuildTool": "nitro-cli",
               "BuildToolVersion": "1.3.1", "OperatingSystem": "Linux", "KernelVersion": "4.14",
               "DockerInfo": {{}}}}
}}
"""
E19_DEVICE = (
    "Start allocating memory...\n[ E19 ] File operation failure. Such error appears when the "
    "system fails to perform the requested file operations, such as opening the EIF file when "
    "launching an enclave, or seeking to a specific offset in the EIF file, or writing to the log "
    "file.\nFile: '/dev/nitro_enclaves', failing operation: 'Open'.\n\nFor more details, please "
    "visit https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#E19\n"
)


def test_recorded_build_output_with_leading_line() -> None:
    (value,) = _json_values(BUILD_STDOUT_LEGACY)
    m = Measurements.from_json(value["Measurements"])
    assert m.hash_algorithm == "Sha384 { ... }"
    assert m.pcrs == {0: bytes.fromhex(P0), 1: bytes.fromhex(P1), 2: bytes.fromhex(P2)}
    assert m.to_json() == value


def test_recorded_run_describe_terminate_describe_eif() -> None:
    run = EnclaveRun.from_json(_json_values(RUN_STDOUT)[0])
    assert (run.enclave_cid, run.cpu_ids, run.memory_mib) == (16, (1, 3), 512)
    (desc,) = [EnclaveDescription.from_json(v) for v in _json_values(DESCRIBE_STDOUT)[0]]
    assert desc.running and desc.debug_mode and desc.state == "RUNNING"
    assert desc.measurements is not None and desc.measurements.pcrs[0] == bytes(48)
    done = [TerminateResult.from_json(v) for v in _json_values(TERMINATE_ALL_STDOUT)]
    assert [(d.enclave_name, d.terminated) for d in done] == [("a", True), ("b", True)]
    eif = EifDescription.from_json(_json_values(DESCRIBE_EIF_STDOUT)[0])
    assert eif.check_crc and not eif.is_signed and eif.version == 4 and eif.image_name == "app"


def test_json_values_skips_prose_and_brackets() -> None:
    text = 'Started enclave with cpu-ids: [1, 3\nnoise {not json}\n{"a": 1}\n[2]'
    assert _json_values(text) == [{"a": 1}, [2]]


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("E19", "EnclaveOptions"),
        ("E26", "4x"),
        ("E27", "allocator.yaml"),
        ("E36", "signing certificate"),
        ("E39", "boot"),
        ("E44", "--debug-mode"),
        ("E11", "signing certificate"),
        ("E29", "allocator"),
        ("E35", "hugepages"),
        ("E48", "Docker"),
    ],
)
def test_error_table_has_fixes(code: str, needle: str) -> None:
    info = explain(code)
    assert info.code == code and info.explanation
    assert needle in info.fix


def test_unknown_code_and_code_detection() -> None:
    assert "cli-errors.html#E99" in explain("E99").fix
    assert find_code(E19_DEVICE) == "E19"
    assert find_code("[E36] x") == "E36"
    assert find_code("no code here") is None


# --- against the fake executable --------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> FakeNitro:
    f = make_fake(tmp_path)
    f.add_image("app:latest")
    return f


@pytest.fixture
def built(fake: FakeNitro, tmp_path: Path) -> Path:
    out = tmp_path / "app.eif"
    fake.cli().build_enclave("app:latest", out)
    return out


def test_build_measurements_match_independent_reader(fake: FakeNitro, tmp_path: Path) -> None:
    out = tmp_path / "build" / "app.eif"
    out.parent.mkdir()
    result = fake.cli().build_enclave("app:latest", out)
    assert result.eif_path == out
    assert dict(result.measurements.pcrs) == dict(read_eif(out).pcrs)
    assert result.measurements.hash_algorithm == "Sha384 { ... }"


def test_build_legacy_stdout_line(fake: FakeNitro, tmp_path: Path) -> None:
    out = tmp_path / "app.eif"
    result = fake.cli(FAKE_NITRO_CLI_LEGACY_STDOUT="1").build_enclave("app:latest", out)
    assert dict(result.measurements.pcrs) == dict(read_eif(out).pcrs)


def _signing_files(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_signed_build_has_pcr8(fake: FakeNitro, tmp_path: Path) -> None:
    cert, key = _signing_files(tmp_path)
    out = tmp_path / "signed.eif"
    result = fake.cli().build_enclave("app:latest", out, signing_certificate=cert, private_key=key)
    image = read_eif(out)
    assert result.measurements.pcrs[8] == image.pcrs[8]
    assert image.signing is not None and image.signing.signature_check
    with pytest.raises(NitroCliError) as info:
        fake.cli().build_enclave("app:latest", out, signing_certificate=cert)
    assert info.value.code == "invalid-argument"


def test_build_without_docker_is_e48(fake: FakeNitro, tmp_path: Path) -> None:
    with pytest.raises(NitroCliError) as info:
        fake.cli(FAKE_NITRO_CLI_NO_DOCKER="1").build_enclave("app:latest", tmp_path / "x.eif")
    err = info.value
    assert err.code == "E48" and err.returncode == 48
    assert "Docker daemon" in err.fix and "Docker error" in err.stderr


def test_build_unknown_image_is_e50(fake: FakeNitro, tmp_path: Path) -> None:
    with pytest.raises(NitroCliError) as info:
        fake.cli().build_enclave("nope:1", tmp_path / "x.eif")
    assert info.value.code == "E50" and "make image" in info.value.fix


def test_run_describe_terminate_cycle(fake: FakeNitro, built: Path) -> None:
    cli = fake.cli()
    run = cli.run_enclave(
        eif_path=built, cpu_count=2, memory_mib=512, enclave_cid=16, enclave_name="app"
    )
    assert (run.enclave_cid, run.cpu_count, run.memory_mib, run.enclave_name) == (16, 2, 512, "app")
    assert run.enclave_id.startswith("i-") and "-enc" in run.enclave_id
    (desc,) = cli.describe_enclaves()
    assert desc.enclave_id == run.enclave_id
    assert desc.state == "RUNNING" and desc.flags == "NONE" and not desc.debug_mode
    assert desc.measurements is not None
    assert dict(desc.measurements.pcrs) == dict(read_eif(built).pcrs)
    (done,) = cli.terminate_enclave(enclave_id=run.enclave_id)
    assert done.terminated and done.enclave_id == run.enclave_id
    assert cli.describe_enclaves() == []


def test_terminate_by_name_and_all(fake: FakeNitro, built: Path) -> None:
    cli = fake.cli(FAKE_NITRO_CLI_POOL_CPUS="4")
    cli.run_enclave(eif_path=built, cpu_count=1, memory_mib=256, enclave_name="one")
    cli.run_enclave(
        eif_path=built, cpu_ids=[3], memory_mib=256, enclave_name="two", debug_mode=True
    )
    cli.run_enclave(eif_path=built, cpu_count=1, memory_mib=256, enclave_name="three")
    flags = {d.enclave_name: d.flags for d in cli.describe_enclaves()}
    assert flags == {"one": "NONE", "two": "DEBUG_MODE", "three": "NONE"}
    assert [r.enclave_name for r in cli.terminate_enclave(enclave_name="one")] == ["one"]
    assert sorted(r.enclave_name or "" for r in cli.terminate_enclave(all=True)) == [
        "three",
        "two",
    ]
    assert cli.terminate_enclave(all=True) == []
    with pytest.raises(NitroCliError) as info:
        cli.terminate_enclave(enclave_name="ghost")
    assert info.value.code == "E58"


def test_run_without_device_is_e19_with_driver_hint(fake: FakeNitro, built: Path) -> None:
    with pytest.raises(NitroCliError) as info:
        fake.cli(FAKE_NITRO_CLI_NO_DEVICE="1").run_enclave(
            eif_path=built, cpu_count=2, memory_mib=512
        )
    err = info.value
    assert err.code == "E19" and err.returncode == 19
    assert "/dev/nitro_enclaves" in err.stderr and "/dev/nitro_enclaves" in err.fix
    assert "EnclaveOptions" in err.fix and "aws-nitro-enclaves-cli" in err.fix
    assert "E19" in str(err) and "Fix:" in str(err)


@pytest.mark.parametrize(
    ("kwargs", "env", "code", "needle"),
    [
        ({"memory_mib": 1}, {}, "E26", "4x"),
        ({"memory_mib": 4096}, {}, "E27", "memory_mib"),
        ({"memory_mib": 512, "cpu_count": 8}, {}, "E22", "cpu_count"),
    ],
)
def test_run_resource_errors(fake: FakeNitro, built: Path, kwargs, env, code, needle) -> None:
    args = {"eif_path": built, "cpu_count": 2, **kwargs}
    with pytest.raises(NitroCliError) as info:
        fake.cli(**env).run_enclave(**args)
    assert info.value.code == code
    assert needle in info.value.fix or needle in info.value.stderr


def test_run_corrupt_eif_is_boot_failure(fake: FakeNitro, built: Path) -> None:
    data = bytearray(built.read_bytes())
    data[-1] ^= 1
    built.write_bytes(bytes(data))
    with pytest.raises(NitroCliError) as info:
        fake.cli().run_enclave(eif_path=built, cpu_count=2, memory_mib=512)
    assert info.value.code == "E36" and "signing certificate" in info.value.fix


@pytest.mark.parametrize("cid", [1, 2, 3, 0xFFFFFFFF, -5])
def test_reserved_cids_refused_before_running(fake: FakeNitro, built: Path, cid: int) -> None:
    with pytest.raises(NitroCliError) as info:
        fake.cli().run_enclave(eif_path=built, cpu_count=2, memory_mib=512, enclave_cid=cid)
    assert info.value.code == "invalid-argument" and "reserved" in info.value.message


def test_cid_zero_means_auto(fake: FakeNitro, built: Path) -> None:
    run = fake.cli().run_enclave(eif_path=built, cpu_count=2, memory_mib=512, enclave_cid=0)
    assert run.enclave_cid >= 4


def test_describe_eif(fake: FakeNitro, built: Path) -> None:
    desc = fake.cli().describe_eif(built)
    assert desc.check_crc and desc.version == 4 and not desc.is_signed
    assert dict(desc.measurements.pcrs) == dict(read_eif(built).pcrs)
    assert desc.image_name == "app"


def test_console_refused_for_non_debug_enclave(fake: FakeNitro, built: Path) -> None:
    cli = fake.cli()
    run = cli.run_enclave(eif_path=built, cpu_count=2, memory_mib=512)
    with pytest.raises(NitroCliError) as info:
        next(iter(cli.console(enclave_id=run.enclave_id)))
    assert info.value.code == "E44" and "--debug-mode" in info.value.fix
    # without the pre-check, nitro-cli itself answers E44
    with pytest.raises(NitroCliError) as info:
        list(cli.console(enclave_id=run.enclave_id, check_debug=False))
    assert info.value.code == "E44" and info.value.returncode == 44


def test_console_streams_debug_enclave(fake: FakeNitro, built: Path) -> None:
    cli = fake.cli()
    run = cli.run_enclave(eif_path=built, cpu_count=2, memory_mib=512, debug_mode=True)
    start = time.monotonic()
    lines = list(cli.console(enclave_id=run.enclave_id, disconnect_timeout=1))
    assert time.monotonic() - start < 10
    assert "Successfully connected to the console." in lines
    assert any("heartbeat" in line for line in lines)


def test_console_stops_early_when_consumer_stops(fake: FakeNitro, built: Path) -> None:
    cli = fake.cli()
    run = cli.run_enclave(
        eif_path=built, cpu_count=2, memory_mib=512, debug_mode=True, enclave_name="dbg"
    )
    stream = cli.console(enclave_name="dbg")
    first = [next(stream) for _ in range(3)]
    stream.close()  # kills nitro-cli console
    assert first[0].startswith("Connecting to the console for enclave")
    assert run.enclave_id


def test_missing_executable_has_install_hint(tmp_path: Path) -> None:
    cli = NitroCli(env={"PATH": str(tmp_path)})
    with pytest.raises(NitroCliError) as info:
        cli.describe_enclaves()
    assert info.value.code == "nitro-cli-missing"
    assert "dnf install -y aws-nitro-enclaves-cli" in str(info.value)
    with pytest.raises(NitroCliError):
        NitroCli(executable=tmp_path / "nope").describe_enclaves()


def test_timeout_kills_the_call(fake: FakeNitro) -> None:
    cli = fake.cli(NitroCliLimits(describe_timeout=0.5), FAKE_NITRO_CLI_SLEEP="30")
    start = time.monotonic()
    with pytest.raises(NitroCliError) as info:
        cli.describe_enclaves()
    assert info.value.code == "nitro-cli-timeout"
    assert time.monotonic() - start < 10


def test_failure_without_code_quotes_stderr(fake: FakeNitro) -> None:
    with pytest.raises(NitroCliError) as info:
        fake.cli(FAKE_NITRO_CLI_STATE="/nonexistent").describe_enclaves()
    assert info.value.code == "nitro-cli-failed"
    assert "FAKE_NITRO_CLI_STATE" in info.value.message


def test_argument_validation(fake: FakeNitro, built: Path) -> None:
    cli = fake.cli()
    for kwargs in (
        {"memory_mib": 512},
        {"memory_mib": 512, "cpu_count": 2, "cpu_ids": [1]},
        {"memory_mib": 0, "cpu_count": 2},
        {"memory_mib": 512, "cpu_count": 0},
    ):
        with pytest.raises(NitroCliError) as info:
            cli.run_enclave(eif_path=built, **kwargs)
        assert info.value.code == "invalid-argument"
    with pytest.raises(NitroCliError):
        cli.terminate_enclave()
    with pytest.raises(NitroCliError):
        cli.console()


def test_module_cli_build_and_errors(fake: FakeNitro, tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    from parent.nitro_cli import main

    monkeypatch.setenv("PATH", fake.env["PATH"])
    monkeypatch.setenv("FAKE_NITRO_CLI_STATE", str(fake.state))
    eif, meas = tmp_path / "app.eif", tmp_path / "measurements.json"
    code = main(
        [
            "build",
            "--docker-uri",
            "app:latest",
            "--output-file",
            str(eif),
            "--measurements",
            str(meas),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(meas.read_text()) == printed
    assert printed["Measurements"]["PCR0"] == read_eif(eif).pcrs[0].hex()
    monkeypatch.setenv("FAKE_NITRO_CLI_NO_DEVICE", "1")
    code = main(["run", "--eif-path", str(eif), "--cpu-count", "2", "--memory", "512"])
    err = capsys.readouterr().err
    assert code == 1 and "error [E19]" in err and "fix:" in err and "EnclaveOptions" in err


# --- output parsing: hostile or odd stdout never escapes as anything but data ---------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSONISH = st.text(alphabet='{}[]":,0123456789 \n\tabcxyzEnclave.', max_size=100)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prose=st.text(max_size=80), noise=_JSONISH)
def test_json_values_never_raises_and_finds_line_start_json(prose: str, noise: str) -> None:
    prose = prose.replace("{", "").replace("[", "")
    found = _json_values(f"{prose}\n{noise}\n{{\n  \"PCR0\": \"ab\"\n}}\n")
    assert isinstance(found, list)
    assert {"PCR0": "ab"} in found  # noise never hides a JSON value that starts a line


@pytest.mark.parametrize(
    "hostile",
    ["[" * 100_000, '{"a":' * 50_000, "[0," * 300_000, "{\n" * 200_000, "\n[" * 100_000],
)
def test_hostile_output_is_bounded_and_raises_nothing(hostile: str) -> None:
    start = time.monotonic()
    assert _json_values(hostile) == []
    assert time.monotonic() - start < 2.0
