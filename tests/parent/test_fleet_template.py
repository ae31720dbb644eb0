"""The fleet template (cfn-lint over the parameter matrix), its key policy (a property), the
user data, and the EKS manifests (kubernetes-validate, offline schemas)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parent.fleet import k8s, template, userdata
from parent.fleet.cli import main as fleet_main
from parent.fleet.policy import pinned, release_key_policy, releases_in
from parent.key_policy import ATTESTED_ACTIONS, KeyPolicyError, lint_policy

HEX = st.text("0123456789abcdef", min_size=96, max_size=96).filter(lambda h: set(h) != {"0"})
PCR0, PCR1, PCR2, PCR8 = ("0a" * 48, "1b" * 48, "2c" * 48, "8d" * 48)
MEASUREMENTS = {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": PCR0,
                                 "PCR1": PCR1, "PCR2": PCR2, "PCR8": PCR8}}  # fmt: skip
MATRIX = [
    *itertools.product((False, True), ("x86_64", "arm64"), (1, 3), ("image",), (1,)),
    # the key policy's other shapes: signed releases, and mid-rollout (two releases)
    (True, "x86_64", 3, "signer", 1),
    (False, "arm64", 1, "image", 2),
    (True, "arm64", 3, "signer", 2),
]
"""(NLB, arch, desired instances, pin mode, accepted releases): 11 templates."""


def _options(nlb: bool, arch: str, desired: int, pin: str, n: int) -> template.TemplateOptions:
    releases = [pinned(MEASUREMENTS, pin)]
    if n == 2:
        releases.insert(0, {i: f"{i:x}f" * 48 for i in releases[0]})
    return template.TemplateOptions(
        releases=tuple(releases),
        pin=pin,  # type: ignore[arg-type]
        arch=arch,  # type: ignore[arg-type]
        desired=desired,
        nlb=nlb,
        enclave=userdata.EnclaveSettings(proxy_public=nlb),
    )


def test_cfn_lint_passes_on_every_template_of_the_matrix() -> None:
    from cfnlint.api import ManualArgs, lint

    assert len(set(MATRIX)) == 11
    for case in MATRIX:
        text = template.render(template.build(_options(*case)))
        matches = lint(text, config=ManualArgs(regions=["us-east-1"]))
        assert matches == [], (case, [str(m) for m in matches])


def test_cfn_lint_is_not_a_rubber_stamp() -> None:
    from cfnlint.api import ManualArgs, lint

    broken = template.build(_options(True, "x86_64", 1, "image", 1))
    broken["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["EnclaveOptions"] = {
        "Enabled": "sometimes"
    }
    del broken["Parameters"]["VpcId"]
    matches = lint(template.render(broken), config=ManualArgs(regions=["us-east-1"]))
    assert len(matches) >= 2


def test_the_cli_prints_json_and_yaml(tmp_path, capsys) -> None:
    import yaml

    path = tmp_path / "measurements.json"
    path.write_text("Enclave Image successfully created.\n" + json.dumps(MEASUREMENTS))
    assert fleet_main(["template", "--measurements", str(path), "--nlb", "--desired", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["Parameters"]["DesiredCapacity"]["Default"] == 3
    assert doc["Resources"]["IngressTargetGroup"]["Properties"]["HealthCheckPath"] == "/health"
    assert doc["Parameters"]["IngressPort"]["Default"] == 8443
    assert fleet_main(["template", "--measurements", str(path), "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["Resources"]["EnclaveKey"]
    assert fleet_main(["template"]) == 2
    assert "--measurements" in capsys.readouterr().err
    assert fleet_main(["template", "--measurements", str(path), "--pin", "signer"]) == 0
    signer = json.loads(capsys.readouterr().out)
    policy = signer["Resources"]["EnclaveKey"]["Properties"]["KeyPolicy"]
    assert releases_in(policy) == [{8: PCR8}]
    path.write_text(json.dumps({"PCR0": PCR0}))
    assert fleet_main(["template", "--measurements", str(path), "--pin", "signer"]) == 2
    assert "error [missing-pcr]" in capsys.readouterr().err


def test_the_template_has_what_a_deployment_needs() -> None:
    doc = template.build(_options(True, "arm64", 2, "image", 1))
    res = doc["Resources"]
    data = res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["EnclaveOptions"] == {"Enabled": True}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert "arm64" in doc["Parameters"]["ImageId"]["Default"]
    assert doc["Parameters"]["InstanceType"]["Default"] == "m6g.large"
    bucket = res["ArtifactBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert res["EnclaveKey"]["Properties"]["PendingWindowInDays"] == 7
    assert res["AutoScalingGroup"]["Properties"]["TargetGroupARNs"] == [
        {"Ref": "IngressTargetGroup"}
    ]
    assert res["IngressListener"]["Properties"]["Port"] == {"Ref": "IngressPort"}
    assert "ManagedPolicyArns" not in res["InstanceRole"]["Properties"]
    assert template.options_of(doc) == _options(True, "arm64", 2, "image", 1)
    without = template.build(_options(False, "x86_64", 1, "image", 1))
    assert "LoadBalancer" not in without["Resources"]
    assert "LoadBalancerDnsName" not in without["Outputs"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"instance_type": "t3.large"}, "does not support Nitro Enclaves"),
        ({"desired": 3, "max_size": 2}, "capacities"),
        ({"ingress_port": 0}, "ingress port"),
        ({"pin": "pcr0"}, "pin must be"),
    ],
)
def test_bad_options_are_refused(change: dict, message: str) -> None:
    base = {"releases": (pinned(MEASUREMENTS, "image"),)}
    with pytest.raises(ValueError, match=message):
        template.TemplateOptions(**base, **change)


# --- key policy over releases -----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    measurements=st.lists(
        st.fixed_dictionaries(
            {"PCR0": HEX, "PCR1": HEX, "PCR2": HEX, "PCR8": HEX},
            optional={"PCR3": HEX, "PCR4": HEX, "HashAlgorithm": st.just("Sha384 { ... }")},
        ),
        min_size=1,
        max_size=4,
    ),
    pin=st.sampled_from(["image", "signer"]),
    role=st.from_regex(r"arn:aws:iam::\d{12}:role/[A-Za-z0-9]{1,20}", fullmatch=True),
)
def test_any_measurements_give_a_policy_that_lints_clean_and_decrypts_only_under_pcrs(
    measurements: list[dict[str, str]], pin: str, role: str
) -> None:
    admin = "arn:aws:iam::111122223333:role/KeyAdmin"
    releases = [pinned({"Measurements": m}, pin) for m in measurements]  # type: ignore[arg-type]
    policy = release_key_policy(releases, enclave_role=role, admin=admin)
    assert lint_policy(policy) == []
    expected = []
    for release in releases:
        if release not in expected:
            expected.append(release)
    assert releases_in(policy) == expected
    for statement in policy["Statement"]:
        actions = statement["Action"]
        grants_plaintext = any(a in ATTESTED_ACTIONS for a in actions)
        if not grants_plaintext:
            assert statement["Principal"] == {"AWS": admin}
            continue
        # every Decrypt-like grant: the enclave role only, under a full PCR set
        assert statement["Principal"] == {"AWS": role}
        tests = statement["Condition"]["StringEqualsIgnoreCase"]
        assert tests and all(k.startswith("kms:RecipientAttestation:") for k in tests)
        assert all(len(v) == 96 for v in tests.values())
        assert list(statement["Condition"]) == ["StringEqualsIgnoreCase"]


def test_the_policy_in_the_template_lints_clean_with_cloudformation_principals() -> None:
    policy = template.key_policy_of(_options(False, "x86_64", 1, "image", 2))
    assert lint_policy(policy) == [] and len(releases_in(policy)) == 2


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"releases": []}, "missing-pcr"),
        ({"releases": [{}]}, "missing-pcr"),
        ({"releases": [{0: "0" * 96}]}, "debug-measurements"),
        ({"admin": "arn:aws:iam::111122223333:role/Enclave"}, "bad-principal"),
        ({"admin": "arn:aws:iam::111122223333:root"}, "bad-principal"),
        ({"releases": [{0: f"{i:02x}" * 48} for i in range(1, 7)]}, "too-many-releases"),
    ],
)
def test_unsafe_policies_are_refused(kwargs: dict, code: str) -> None:
    args = {
        "releases": [{0: PCR0}],
        "enclave_role": "arn:aws:iam::111122223333:role/Enclave",
        "admin": "arn:aws:iam::111122223333:role/KeyAdmin",
    }
    args.update(kwargs)
    with pytest.raises(KeyPolicyError) as info:
        release_key_policy(args.pop("releases"), **args)
    assert info.value.code == code


# --- user data ---------------------------------------------------------------------------------


def _substituted(settings: userdata.EnclaveSettings) -> str:
    text = userdata.script(settings)
    values = {
        "AWS::Region": "eu-west-1",
        "AWS::StackName": "prod",
        "AWS::URLSuffix": "amazonaws.com",
        "ArtifactBucket": "prod-artifactbucket-1",
        "EifObjectKey": "eif/" + "a" * 96 + ".eif",
        "EifSha384": "a" * 96,
        "ToolkitObjectKey": "toolkit/" + "b" * 64 + ".tar.gz",
        "EnclaveKeyArn": "arn:aws:kms:eu-west-1:1:key/x",
        "IngressPort": "8443",
    }
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_user_data_is_valid_bash_and_checks_the_eif() -> None:
    script = _substituted(userdata.EnclaveSettings(proxy_public=True))
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "${" not in script
    assert 'echo "' + "a" * 96 + '  /opt/nitro-toolkit/app.eif" | sha384sum --check' in script
    assert "-m parent proxy --enclave-cid 16 --port 8080 --host 0.0.0.0" in script
    assert "-m parent ingress --listen 0.0.0.0:8443" in script
    assert "s3://prod-artifactbucket-1/sealed/" in script
    # the KMS host follows the partition (amazonaws.com.cn in China regions)
    assert "- {address: kms.eu-west-1.amazonaws.com, port: 443}" in script
    assert "kms.eu-west-1.amazonaws.com 443" in script


@pytest.mark.skipif(shutil.which("sha384sum") is None, reason="coreutils sha384sum missing")
def test_the_sha384_check_refuses_another_file(tmp_path) -> None:
    import hashlib

    eif = tmp_path / "app.eif"
    eif.write_bytes(b"the real EIF")
    good = hashlib.sha384(b"the real EIF").hexdigest()
    line = next(ln for ln in userdata.script(userdata.EnclaveSettings()).splitlines()
                if "sha384sum" in ln)  # fmt: skip
    for sha, ok in ((good, True), ("0" * 96, False)):
        cmd = line.replace("${EifSha384}", sha).replace("/opt/nitro-toolkit/app.eif", str(eif))
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
        assert eif.exists() is ok  # a mismatching file is removed, never run
        if not ok:
            assert "refusing to run it" in proc.stdout


def test_user_data_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="enclave_cid"):
        userdata.script(userdata.EnclaveSettings(enclave_cid=3))


# --- EKS manifests -----------------------------------------------------------------------------


def _manifests() -> list[dict]:
    settings = k8s.PodSettings(
        image="123456789012.dkr.ecr.us-east-1.amazonaws.com/nitro-parent:1",
        bucket="prod-artifactbucket-1",
        eif_sha384="c" * 96,
        region="us-east-1",
        service_account_role_arn="arn:aws:iam::123456789012:role/enclave-pods",
        replicas=3,
    )
    return k8s.manifests(settings, pinned(MEASUREMENTS, "image"), "image")


def test_k8s_manifests_validate_against_the_shipped_schemas() -> None:
    import kubernetes_validate

    docs = _manifests()
    assert [d["kind"] for d in docs] == ["ConfigMap", "ServiceAccount", "Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    deployment = docs[2]
    pod = deployment["spec"]["template"]["spec"]
    enclave = next(c for c in pod["containers"] if c["name"] == "enclave")
    limits = enclave["resources"]["limits"]
    assert limits["aws.ec2.nitro/nitro_enclaves"] == "1" and limits["hugepages-2Mi"] == "1024Mi"
    assert "nitro-cli run-enclave" in enclave["command"][2]
    assert "sha384sum -c" in pod["initContainers"][0]["command"][2]
    names = {c["name"] for c in pod["containers"]}
    assert names == {"enclave", "kms-relay", "credentials", "proxy", "ingress"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["nitro-toolkit.dev/pcr0"] == PCR0


def test_kubernetes_validate_rejects_a_broken_manifest() -> None:
    import kubernetes_validate

    deployment = _manifests()[2]
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)


def test_k8s_cli(tmp_path, capsys) -> None:
    import yaml

    path = tmp_path / "m.json"
    path.write_text(json.dumps(MEASUREMENTS))
    argv = ["k8s", "--measurements", str(path), "--eif-sha384", "C" * 96, "--bucket", "b-1",
            "--image", "parent:1", "--region", "eu-west-1",
            "--role-arn", "arn:aws:iam::123456789012:role/pods"]  # fmt: skip
    assert fleet_main(argv) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs[2]["metadata"]["annotations"]["nitro-toolkit.dev/eif-sha384"] == "c" * 96
