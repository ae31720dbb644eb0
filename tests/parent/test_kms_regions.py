"""Issue 9 items 17 and 18: one function derives a region's KMS host; the packaged allowlist,
the documented region list and the parent's rendered files all agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enclave.endpoints import dns_suffix, kms_host, kms_hostnames
from enclave.kms import tunnel as kms_tunnel
from parent import _userdata
from parent._allowlist import load_allowlist

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "attested-kms.md"
YAML = ROOT / "parent" / "vsock-proxy.yaml"
NO_FIPS_PREFIXES = ("cn-",)


def documented_regions() -> list[str]:
    text = DOC.read_text()
    start = text.index("**KMS regions of the packaged allowlist.**")
    section = text[start : text.index("\n\n", text.index("\n\n", start) + 2)]
    return re.findall(r"`([a-z]{2}(?:-[a-z]+)+-\d)`", section)


def test_kms_host_per_partition() -> None:
    assert kms_host("us-east-1") == "kms.us-east-1.amazonaws.com"
    assert kms_host("cn-north-1") == "kms.cn-north-1.amazonaws.com.cn"
    assert kms_host("cn-northwest-1", fips=True) == "kms-fips.cn-northwest-1.amazonaws.com.cn"
    assert kms_host("us-gov-west-1", fips=True) == "kms-fips.us-gov-west-1.amazonaws.com"
    assert kms_hostnames("eu-west-1") == {"kms.eu-west-1.amazonaws.com",
                                          "kms-fips.eu-west-1.amazonaws.com"}  # fmt: skip
    assert dns_suffix("cn-north-1") == "amazonaws.com.cn"
    # the enclave's tunnel uses the same function (no second derivation)
    assert kms_tunnel.kms_hostnames is kms_hostnames


def test_packaged_allowlist_follows_the_documented_regions() -> None:
    regions = documented_regions()
    assert len(regions) == len(set(regions)) >= 38
    assert {"ap-east-2", "ap-southeast-6", "cn-north-1", "us-gov-east-1"} <= set(regions)
    expected = set()
    for region in regions:
        expected.add((kms_host(region), 443))
        if not region.startswith(NO_FIPS_PREFIXES):
            expected.add((kms_host(region, fips=True), 443))
    entries = load_allowlist(YAML)
    found = [(e.address, e.port) for e in entries]
    assert len(found) == len(set(found))
    assert set(found) == expected


@pytest.mark.parametrize("region", ["cn-north-1", "cn-northwest-1", "us-east-1", "eu-west-3"])
def test_relay_unit_uses_the_regions_kms_host(region: str) -> None:
    cfg = _userdata.UserDataConfig(
        name="app",
        region=region,
        bucket="nitro-toolkit-artifacts",
        eif_key="app.eif",
        toolkit_key="toolkit.tar.gz",
        key_arn=f"arn:aws:kms:{region}:111122223333:key/0f1e2d3c-0000-4000-8000-000000000000",
    )
    host = kms_host(region)
    unit = _userdata.render_units(cfg)["nitro-toolkit-kms-relay.service"]
    assert f"-m parent kms-relay 8000 {host} 443 --config" in unit
    assert f" {host} 443 " in unit and f"-> {host}:443" in unit
    if region.startswith("cn-"):
        assert ".amazonaws.com " not in unit and ".amazonaws.com:" not in unit
