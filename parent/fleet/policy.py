"""Key policies that accept a list of releases (measurement sets), for rolling releases.

Two pin modes say which PCRs a release is known by:

* ``image``: PCR0 (``ImageSha384``), PCR1 and PCR2. Every new image has a new PCR0, so a
  rollout widens the policy to old + new and narrows it to new once the fleet runs it.
* ``signer``: PCR8, the hash of the release-signing certificate. Every image signed with the
  same certificate matches, so a rollout of a newly signed image changes no key policy.

Each release becomes one ``Allow`` statement whose conditions pin all its PCRs together (one
statement with multi-valued conditions would also accept old PCR0 with new PCR2).
Principals may be ARNs or CloudFormation expressions (``{"Ref": ...}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..key_policy import (
    ADMIN_ACTIONS,
    ATTESTED_ACTIONS,
    IMAGE_SHA384_KEY,
    OPERATOR_ACTIONS,
    PCR_KEY,
    KeyPolicyError,
    load_measurements,
)

PinMode = Literal["image", "signer"]
PIN_MODES: tuple[PinMode, ...] = ("image", "signer")
PINNED_PCRS: Mapping[PinMode, tuple[int, ...]] = {"image": (0, 1, 2), "signer": (8,)}
REQUIRED_PCR: Mapping[PinMode, int] = {"image": 0, "signer": 8}
RELEASE_SID = "EnclaveRelease{}"
MAX_RELEASES = 4
"""A policy accepts at most this many releases (a rollout needs two)."""

Principal = str | Mapping[str, Any]
Release = Mapping[int, str]


def pinned(measurements: Any, pin: PinMode) -> dict[int, str]:
    """The PCRs that identify a release in ``pin`` mode, from nitro-cli JSON or a mapping."""
    if pin not in PIN_MODES:
        raise KeyPolicyError("usage", f"pin mode must be one of {', '.join(PIN_MODES)}")
    pcrs = load_measurements(measurements)
    needed = REQUIRED_PCR[pin]
    if needed not in pcrs:
        raise KeyPolicyError(
            "missing-pcr",
            f"pin mode {pin!r} needs PCR{needed}"
            + (" (a signed EIF: build it with a signing certificate)" if needed == 8 else ""),
        )
    return {i: pcrs[i] for i in PINNED_PCRS[pin] if i in pcrs}


def _conditions(release: Release) -> dict[str, str]:
    out: dict[str, str] = {}
    for index in sorted(release):
        key = IMAGE_SHA384_KEY if index == 0 else PCR_KEY.format(index)
        out[key] = release[index]
    return out


def _principal(value: Principal | Sequence[Principal], what: str) -> Any:
    values = [value] if isinstance(value, str | Mapping) else list(value)
    if not values:
        raise KeyPolicyError("bad-principal", f"{what}: at least one principal is needed")
    for item in values:
        if isinstance(item, str) and (":root" in item or not item.startswith("arn:")):
            raise KeyPolicyError("bad-principal", f"{what}: {item!r} must be a role/user ARN")
    return values[0] if len(values) == 1 else values


def unique_releases(releases: Sequence[Release]) -> list[dict[int, str]]:
    """Releases in order, each once (two images signed alike are one release in signer mode)."""
    out: list[dict[int, str]] = []
    for release in releases:
        normalized = {int(i): str(v).lower() for i, v in release.items()}
        if normalized not in out:
            out.append(normalized)
    return out


def release_key_policy(
    releases: Sequence[Release],
    *,
    enclave_role: Principal,
    admin: Principal | Sequence[Principal],
    operator: Principal | Sequence[Principal] | None = None,
) -> dict[str, Any]:
    """The key policy accepting every release in ``releases``; nothing else may decrypt.

    The enclave role gets the attested actions once per release, under that release's PCR
    conditions; the admin manages the key and never decrypts; the operator (default: the
    admin) may encrypt. The admin must differ from the enclave role.
    """
    unique = unique_releases(releases)
    if not unique:
        raise KeyPolicyError("missing-pcr", "at least one release (measurement set) is needed")
    if len(unique) > MAX_RELEASES:
        raise KeyPolicyError("too-many-releases", f"at most {MAX_RELEASES} releases at once")
    for release in unique:
        if not release:
            raise KeyPolicyError("missing-pcr", "a release without PCRs would match any enclave")
        if release.get(0, "1") == "0" * len(release.get(0, "")):
            raise KeyPolicyError("debug-measurements", "PCR0 is all zero (debug mode)")
    role = _principal(enclave_role, "enclave role")
    admins = _principal(admin, "admin")
    if role == admins or (isinstance(admins, list) and role in admins):
        raise KeyPolicyError("bad-principal", "the key admin must differ from the enclave role")
    operators = _principal(operator, "operator") if operator is not None else admins
    statements: list[dict[str, Any]] = [
        {
            "Sid": RELEASE_SID.format(n),
            "Effect": "Allow",
            "Principal": {"AWS": role},
            "Action": list(ATTESTED_ACTIONS),
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": _conditions(release)},
        }
        for n, release in enumerate(unique, start=1)
    ]
    statements += [
        {
            "Sid": "KeyAdministration",
            "Effect": "Allow",
            "Principal": {"AWS": admins},
            "Action": list(ADMIN_ACTIONS),
            "Resource": "*",
        },
        {
            "Sid": "OperatorEncrypt",
            "Effect": "Allow",
            "Principal": {"AWS": operators},
            "Action": list(OPERATOR_ACTIONS),
            "Resource": "*",
        },
    ]
    return {"Version": "2012-10-17", "Id": "nitro-enclave-release-policy", "Statement": statements}


def releases_in(policy: Mapping[str, Any]) -> list[dict[int, str]]:
    """The releases a policy made by :func:`release_key_policy` accepts (PCR index → hex)."""
    out: list[dict[int, str]] = []
    for statement in policy.get("Statement", []):
        if not str(statement.get("Sid", "")).startswith(RELEASE_SID.format("")):
            continue
        tests = statement.get("Condition", {}).get("StringEqualsIgnoreCase", {})
        release: dict[int, str] = {}
        for key, value in tests.items():
            if key == IMAGE_SHA384_KEY:
                release[0] = str(value)
            elif key.startswith(PCR_KEY.format("")):
                release[int(key[len(PCR_KEY.format("")) :])] = str(value)
        out.append(release)
    return out
