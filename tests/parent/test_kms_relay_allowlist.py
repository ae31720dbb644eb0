"""The vsock-proxy allowlist: YAML parsing and destination matching."""

from __future__ import annotations

import ipaddress
import string

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from parent._allowlist import (
    DEFAULT_ALLOWLIST,
    AllowedEndpoint,
    AllowlistError,
    IpFamily,
    check_destination,
    load_allowlist,
    parse_allowlist,
    resolve,
    same_host,
)

label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)
hostname = st.lists(label, min_size=2, max_size=4).map(".".join)
port = st.integers(1, 65535)
endpoints = st.lists(st.builds(AllowedEndpoint, hostname, port), max_size=20)


def _yaml(entries) -> str:
    return yaml.safe_dump({"allowlist": [{"address": e.address, "port": e.port} for e in entries]})


def _no_dns(host: str, family: IpFamily):
    raise OSError(f"{host}: no DNS in this test")


# -- parsing -------------------------------------------------------------------------------------


def test_packaged_default_lists_kms_endpoints():
    entries = load_allowlist()
    assert DEFAULT_ALLOWLIST.name == "vsock-proxy.yaml"
    addresses = {e.address for e in entries}
    assert "kms.us-east-1.amazonaws.com" in addresses
    assert "kms-fips.us-east-1.amazonaws.com" in addresses
    assert "kms.eu-west-1.amazonaws.com" in addresses
    assert "kms.cn-north-1.amazonaws.com.cn" in addresses
    assert all(e.port == 443 for e in entries)
    assert all(e.address.startswith(("kms.", "kms-fips.")) for e in entries)


def test_parses_the_aws_flow_style_format():
    text = (
        "allowlist:\n"
        "- {address: kms.us-east-1.amazonaws.com, port: 443}\n"
        "- {address: 127.0.0.1, port: 8443}\n"
    )
    assert parse_allowlist(text) == (
        AllowedEndpoint("kms.us-east-1.amazonaws.com", 443),
        AllowedEndpoint("127.0.0.1", 8443),
    )


@settings(max_examples=100, deadline=None)
@given(endpoints)
def test_round_trip(entries):
    assert parse_allowlist(_yaml(entries)) == tuple(entries)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no 'allowlist' field"),
        ("allow: []", "no 'allowlist' field"),
        ("allowlist: {address: a, port: 1}", "not a list"),
        ("allowlist:\n- {port: 443}", "no address field"),
        ("allowlist:\n- {address: a.b}", "no port field"),
        ("allowlist:\n- {address: a.b, port: '443'}", "no port field"),
        ("allowlist:\n- {address: a.b, port: true}", "no port field"),
        ("allowlist:\n- {address: a.b, port: 70000}", "out of range"),
        ("allowlist:\n- {address: a.b, port: 0}", "out of range"),
        ("allowlist:\n- just-a-string", "not a mapping"),
        ("allowlist: [\n", "bad YAML"),
        ("- a\n- b", "no 'allowlist' field"),
        ("allowlist: " + "[" * 20_000, "nests too deeply"),
    ],
)
def test_malformed_files_have_a_clear_error(text, needle):
    with pytest.raises(AllowlistError) as info:
        parse_allowlist(text)
    assert info.value.code == "allowlist-malformed"
    assert needle in info.value.message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_is_a_typed_error_or_a_list(data):
    try:
        entries = parse_allowlist(data)
    except AllowlistError as exc:
        assert exc.code == "allowlist-malformed"
    else:
        assert all(isinstance(e, AllowedEndpoint) and 0 < e.port < 65536 for e in entries)


def test_oversized_and_missing_files(tmp_path):
    with pytest.raises(AllowlistError) as info:
        load_allowlist(tmp_path / "absent.yaml")
    assert info.value.code == "allowlist-unreadable"
    big = tmp_path / "big.yaml"
    big.write_text("allowlist:\n" + "- {address: a.b, port: 1}\n" * 60_000)
    with pytest.raises(AllowlistError) as info:
        load_allowlist(big)
    assert info.value.code == "allowlist-malformed"


# -- matching ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(endpoints.filter(bool), st.data())
def test_a_listed_host_and_port_is_allowed_without_dns(entries, data):
    pick = data.draw(st.sampled_from(entries))
    variant = data.draw(st.sampled_from([pick.address, pick.address.upper(), pick.address + "."]))
    assert check_destination(entries, variant, pick.port, resolver=_no_dns).port == pick.port


@settings(max_examples=100, deadline=None)
@given(endpoints, hostname, port)
def test_an_unlisted_destination_is_refused(entries, host, p):
    listed = any(same_host(e.address, host) and e.port == p for e in entries)
    try:
        check_destination(entries, host, p, resolver=_no_dns)
    except AllowlistError as exc:
        assert exc.code == "destination-not-allowed"
        assert not listed
    else:
        assert listed


def test_port_must_match_even_when_the_host_does():
    entries = [AllowedEndpoint("kms.us-east-1.amazonaws.com", 443)]
    with pytest.raises(AllowlistError, match="not on the allowlist"):
        check_destination(entries, "kms.us-east-1.amazonaws.com", 80, resolver=_no_dns)


@settings(max_examples=100, deadline=None)
@given(st.lists(hostname, min_size=1, max_size=5, unique=True), st.data())
def test_match_by_resolved_ip(names, data):
    """An address that resolves to the destination's (first) IP allows it, like vsock-proxy."""
    ips = {n: ipaddress.ip_address(f"10.0.0.{i + 1}") for i, n in enumerate(names)}
    target_name = data.draw(st.sampled_from(names))
    target_ip = ips[target_name]

    def resolver(host, family):
        if host in ips:
            return [ips[host]]
        if host == str(target_ip):
            return [target_ip]
        raise OSError("unknown")

    entries = [AllowedEndpoint(n, 443) for n in names]
    assert check_destination(entries, str(target_ip), 443, resolver=resolver).address == (
        target_name
    )
    with pytest.raises(AllowlistError):
        check_destination(entries, "10.9.9.9", 443, resolver=lambda h, f: [
            ipaddress.ip_address("10.9.9.9")] if h == "10.9.9.9" else resolver(h, f))


def test_unresolvable_entries_are_skipped_not_fatal():
    """vsock-proxy aborts on the first entry that does not resolve (CLI #648); we skip it."""
    entries = [AllowedEndpoint("does-not-resolve.invalid", 443), AllowedEndpoint("localhost", 443)]
    assert check_destination(entries, "127.0.0.1", 443).address == "localhost"


def test_real_resolution_of_localhost():
    assert ipaddress.ip_address("127.0.0.1") in resolve("localhost", IpFamily.IPV4)
    assert resolve("127.0.0.1") == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(OSError):
        resolve("127.0.0.1", IpFamily.IPV6)
    with pytest.raises(OSError):
        resolve("no-such-host.invalid")


def test_unresolvable_destination_is_refused_with_reason():
    entries = [AllowedEndpoint("localhost", 443)]
    with pytest.raises(AllowlistError) as info:
        check_destination(entries, "no-such-host.invalid", 443)
    assert info.value.code == "destination-not-allowed"
    assert "does not resolve" in info.value.message
