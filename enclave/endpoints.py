"""AWS endpoint host names of a region: the one place the KMS host is derived.

Used by the enclave's KMS tunnel (which hosts CONNECT may name), the parent's relay
allowlist and systemd unit (parent._userdata), and the packaged vsock-proxy.yaml test.
Suffixes follow the AWS SDKs' partitions (botocore ``endpoints.json``): China regions end in
``amazonaws.com.cn``, so ``kms.{region}.amazonaws.com`` is wrong there.
"""

from __future__ import annotations

__all__ = ["dns_suffix", "kms_host", "kms_hostnames"]

_SUFFIXES = (
    ("cn-", "amazonaws.com.cn"),
    ("eusc-", "amazonaws.eu"),
    ("us-isob-", "sc2s.sgov.gov"),
    ("us-iso-", "c2s.ic.gov"),
)
_DEFAULT_SUFFIX = "amazonaws.com"


def dns_suffix(region: str) -> str:
    """The AWS DNS suffix of a region's endpoints (as the AWS SDKs map it)."""
    for prefix, suffix in _SUFFIXES:
        if region.startswith(prefix):
            return suffix
    return _DEFAULT_SUFFIX


def kms_host(region: str, *, fips: bool = False) -> str:
    """``kms.{region}.{suffix}`` (``kms-fips.`` with ``fips``): kms.cn-north-1.amazonaws.com.cn."""
    return f"{'kms-fips' if fips else 'kms'}.{region}.{dns_suffix(region)}"


def kms_hostnames(region: str) -> frozenset[str]:
    """KMS host names of ``region``: standard and FIPS."""
    return frozenset({kms_host(region), kms_host(region, fips=True)})
