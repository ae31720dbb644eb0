"""The launch template's user data: a CloudFormation ``Fn::Sub`` body for Amazon Linux 2023.

It installs nitro-cli and sizes the enclave allocator, fetches the EIF from the stack's bucket
and refuses to run it unless its SHA-384 is the one the stack names, installs the toolkit and
starts the toolkit's systemd units (rendered by :mod:`parent._userdata` from
``parent/systemd/``) plus the ingress relay. Stack values arrive as ``${Name}`` references
that CloudFormation substitutes; nothing else in the script may use ``${``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from enclave.wire import INGRESS_PORT

from .._userdata import (
    CONFIG_DIR,
    INSTALL_DIR,
    MAX_USER_DATA,
    SERVICE_USER,
    UNITS,
    UserDataConfig,
    render_unit,
    render_units,
)

ENCLAVE_NAME = "nitro-toolkit"
SECRET_STORE_PREFIX = "sealed/"
"""Where the parents keep sealed secrets (KMS ciphertexts) in the stack's bucket."""
INGRESS_UNIT = "nitro-toolkit-ingress.service"
KMS_HOST = "kms.${AWS::Region}.${AWS::URLSuffix}"
"""The region's KMS endpoint as the stack resolves it (amazonaws.com.cn in China regions)."""
# parameters and attributes the script may reference (Fn::Sub names)
SUBSTITUTIONS = frozenset(
    {
        "AWS::Region",
        "AWS::StackName",
        "AWS::URLSuffix",
        "ArtifactBucket",
        "EifObjectKey",
        "EifSha384",
        "ToolkitObjectKey",
        "EnclaveKeyArn",
        "IngressPort",
    }
)
_SUB_RE = re.compile(r"\$\{([^}!][^}]*)\}")



@dataclass(frozen=True)
class EnclaveSettings:
    """What the parent reserves for the enclave and how the services reach it."""

    cpu_count: int = 2
    memory_mib: int = 1024
    enclave_cid: int = 16
    proxy_port: int = 8080
    enclave_ingress_port: int = INGRESS_PORT  # vsock port of the enclave's TLS listener
    proxy_public: bool = False  # True behind an NLB: health checks reach the proxy

    def check(self) -> None:
        problems = []
        for label, value, low, high in (
            ("cpu_count", self.cpu_count, 1, 256),
            ("memory_mib", self.memory_mib, 64, 4 * 1024 * 1024),
            ("enclave_cid", self.enclave_cid, 4, 0xFFFFFFFE),
            ("proxy_port", self.proxy_port, 1, 65535),
            ("enclave_ingress_port", self.enclave_ingress_port, 1, 0xFFFFFFFF),
        ):
            if not low <= value <= high:
                problems.append(f"{label} {value} (must be {low}..{high})")
        if problems:
            raise ValueError("invalid enclave settings: " + "; ".join(problems))


def units(settings: EnclaveSettings) -> dict[str, str]:
    """The systemd units, with stack values left as ``${...}`` references."""
    cfg = UserDataConfig(
        name=ENCLAVE_NAME,
        region="${AWS::Region}",
        bucket="${ArtifactBucket}",
        eif_key="${EifObjectKey}",
        toolkit_key="${ToolkitObjectKey}",
        key_arn="${EnclaveKeyArn}",
        cpu_count=settings.cpu_count,
        memory_mib=settings.memory_mib,
        enclave_cid=settings.enclave_cid,
        proxy_port=settings.proxy_port,
        proxy_host="0.0.0.0" if settings.proxy_public else "127.0.0.1",
    )
    out = render_units(cfg, kms_host_name=KMS_HOST)
    out[INGRESS_UNIT] = render_unit(
        INGRESS_UNIT,
        service_user=SERVICE_USER,
        python=f"{INSTALL_DIR}/venv/bin/python",
        ingress_host="0.0.0.0",
        ingress_port="${IngressPort}",
        enclave_cid=settings.enclave_cid,
        ingress_vsock_port=settings.enclave_ingress_port,
    )
    return out


def script(settings: EnclaveSettings) -> str:
    """The bash script, as an ``Fn::Sub`` template string."""
    settings.check()
    app = f"{INSTALL_DIR}/app.eif"
    lines = [
        "#!/bin/bash",
        "# nitro-toolkit parent bootstrap for stack ${AWS::StackName} (parent.fleet)",
        "set -euo pipefail",
        "exec > >(tee -a /var/log/nitro-toolkit-bootstrap.log) 2>&1",
        "",
        "# 1. nitro-cli and the enclave allocator, Python for the parent services",
        "dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel python3.11 "
        "python3.11-pip",
        f"id {SERVICE_USER} >/dev/null 2>&1 || useradd --system --no-create-home "
        f"--shell /sbin/nologin {SERVICE_USER}",
        "cat > /etc/nitro_enclaves/allocator.yaml <<'EOF'",
        "---",
        f"memory_mib: {settings.memory_mib}",
        f"cpu_count: {settings.cpu_count}",
        "EOF",
        "systemctl enable --now nitro-enclaves-allocator.service",
        "",
        "# 2. the EIF, accepted only with the SHA-384 this stack names",
        f"install -d -m 0755 {INSTALL_DIR} {CONFIG_DIR}",
        "aws s3 cp --region ${AWS::Region} s3://${ArtifactBucket}/${EifObjectKey} " + app,
        f'echo "${{EifSha384}}  {app}" | sha384sum --check --strict -'
        " || { echo 'nitro-toolkit: EIF SHA-384 mismatch, refusing to run it'; "
        f"rm -f {app}; exit 1; }}",
        "",
        "# 3. the toolkit (parent services)",
        "aws s3 cp --region ${AWS::Region} s3://${ArtifactBucket}/${ToolkitObjectKey} "
        f"{INSTALL_DIR}/toolkit.tar.gz",
        f"rm -rf {INSTALL_DIR}/src && install -d {INSTALL_DIR}/src",
        f"tar -xzf {INSTALL_DIR}/toolkit.tar.gz -C {INSTALL_DIR}/src",
        f"python3.11 -m venv {INSTALL_DIR}/venv",
        f"{INSTALL_DIR}/venv/bin/pip install --quiet {INSTALL_DIR}/src",
        "",
        "# 4. configuration: the relay's KMS allowlist, the deployment's facts",
        f"cat > {CONFIG_DIR}/vsock-proxy.yaml <<'EOF'",
        "allowlist:",
        f"- {{address: {KMS_HOST}, port: 443}}",
        "EOF",
        f"cat > {CONFIG_DIR}/deployment.json <<'EOF'",
        '{"stack": "${AWS::StackName}", "region": "${AWS::Region}", '
        '"key_arn": "${EnclaveKeyArn}", "eif_sha384": "${EifSha384}", '
        f'"secret_store": "s3://${{ArtifactBucket}}/{SECRET_STORE_PREFIX}", '
        f'"enclave_cid": {settings.enclave_cid}, "proxy_port": {settings.proxy_port}}}',
        "EOF",
        "",
        "# 5. systemd units: enclave, KMS relay, credentials hand-off, proxy, ingress",
    ]
    rendered = units(settings)
    for unit, text in rendered.items():
        lines += [f"cat > /etc/systemd/system/{unit} <<'EOF'", text.rstrip("\n"), "EOF"]
    lines += [
        "systemctl daemon-reload",
        "systemctl enable --now " + " ".join((*UNITS, INGRESS_UNIT)),
        "echo 'nitro-toolkit: bootstrap done'",
        "",
    ]
    body = "\n".join(lines)
    unknown = set(_SUB_RE.findall(body)) - SUBSTITUTIONS
    if unknown:
        raise ValueError(f"user data references unknown stack values: {sorted(unknown)}")
    if len(body.encode()) > MAX_USER_DATA:
        raise ValueError(f"user data is {len(body.encode())} bytes, EC2 allows {MAX_USER_DATA}")
    return body


def user_data(settings: EnclaveSettings) -> dict[str, Any]:
    """``Fn::Base64`` of ``Fn::Sub`` of :func:`script`, for ``LaunchTemplateData.UserData``.

    The stack values are named in the ``Fn::Sub`` variable map (explicit ``Ref``/``GetAtt``),
    so that a change of any of them is a visible change of the launch template."""
    variables: dict[str, Any] = {
        name: {"Ref": name}
        for name in ("ArtifactBucket", "EifObjectKey", "EifSha384", "ToolkitObjectKey")
    }
    variables["IngressPort"] = {"Ref": "IngressPort"}
    variables["EnclaveKeyArn"] = {"Fn::GetAtt": ["EnclaveKey", "Arn"]}
    return {"Fn::Base64": {"Fn::Sub": [script(settings), variables]}}
