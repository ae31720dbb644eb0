"""The parent instance's systemd units (``parent/systemd/``), rendered for one deployment.

The user-data script around them is the fleet stack's (:mod:`parent.fleet.userdata`)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from enclave.endpoints import kms_host
from enclave.wire import KMS_RELAY_PORT

MAX_USER_DATA = 16 * 1024  # EC2 limit on raw user data
INSTALL_DIR = "/opt/nitro-toolkit"
CONFIG_DIR = "/etc/nitro-toolkit"
SERVICE_USER = "nitro-toolkit"
UNITS = (
    "nitro-toolkit-enclave.service",
    "nitro-toolkit-kms-relay.service",
    "nitro-toolkit-credentials.service",
    "nitro-toolkit-proxy.service",
    "nitro-toolkit-enclave-watch.service",
)



@dataclass(frozen=True)
class UserDataConfig:
    name: str
    region: str
    bucket: str
    eif_key: str
    toolkit_key: str
    key_arn: str
    cpu_count: int = 2
    memory_mib: int = 1024
    enclave_cid: int = 16
    proxy_port: int = 8080
    relay_port: int = KMS_RELAY_PORT
    proxy_host: str = "127.0.0.1"


def render_unit(filename: str, **values: object) -> str:
    template = resources.files("parent").joinpath("systemd", filename).read_text()
    return template.format(**values)


def render_units(cfg: UserDataConfig, *, kms_host_name: str | None = None) -> dict[str, str]:
    """The systemd units for ``cfg``; ``kms_host_name`` overrides the KMS host derived from
    the region (a CloudFormation template passes a ``${AWS::URLSuffix}`` expression)."""
    values = {
        "name": cfg.name,
        "region": cfg.region,
        "kms_host": kms_host_name or kms_host(cfg.region),
        "eif_path": f"{INSTALL_DIR}/app.eif",
        "cpu_count": cfg.cpu_count,
        "memory_mib": cfg.memory_mib,
        "enclave_cid": cfg.enclave_cid,
        "proxy_port": cfg.proxy_port,
        "proxy_host": cfg.proxy_host,
        "relay_port": cfg.relay_port,
        "relay_config": f"{CONFIG_DIR}/vsock-proxy.yaml",
        "python": f"{INSTALL_DIR}/venv/bin/python",
        "service_user": SERVICE_USER,
    }
    return {unit: render_unit(unit, **values) for unit in UNITS}
