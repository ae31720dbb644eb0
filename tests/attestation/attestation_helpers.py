"""Helpers shared by the attestation tests (import as ``attestation_helpers``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation import TestPKI
from attestation.testpki import encode_cose_sign1, encode_payload

MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"
PCRS = {i: bytes([0x10 + i]) * 48 for i in range(16)}
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Vector:
    name: str
    data: bytes
    facts: dict

    @property
    def genuine(self) -> bool:
        return bool(self.facts["signature_ok"] and self.facts["chain_signatures_ok"])

    @property
    def debug(self) -> bool:
        return bool(self.facts["debug_mode_pcr0_1_2_all_zero"])

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.facts["timestamp_ms"] / 1000, UTC)


def sign(pki: TestPKI, **kw) -> bytes:
    """A document from the session PKI with sensible defaults."""
    kw.setdefault("pcrs", PCRS)
    kw.setdefault("module_id", MODULE_ID)
    return pki.sign_document(**kw)


# -- hand-built chains, for the bad-chain tests ---------------------------------------------------

DEFAULT_KU = {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}
LEAF_KU = {"digital_signature": True, "content_commitment": True}
UNKNOWN_CRITICAL_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")


@dataclass
class CertSpec:
    """One certificate of a hand-built chain; defaults follow the real Nitro profile."""

    name: str
    ca: bool | None = True  # None: no basicConstraints at all
    path_length: int | None = None
    key_usage: dict | None = field(default_factory=lambda: dict(DEFAULT_KU))  # None: omitted
    not_before: datetime | None = None
    not_after: datetime | None = None
    curve: ec.EllipticCurve = field(default_factory=ec.SECP384R1)
    unknown_critical: bool = False
    issuer_name: str | None = None  # override the issuer name
    signer: int | None = None  # index of the cert whose key signs (default: the previous one)
    key: ec.EllipticCurvePrivateKey | None = None


def nitro_specs(when: datetime) -> list[CertSpec]:
    """Root, regional, zonal, instance, leaf like AWS, valid around ``when``."""
    day = timedelta(days=1)
    return [
        CertSpec("root", not_before=when - 300 * day, not_after=when + 300 * day),
        CertSpec("regional", path_length=2, not_before=when - 5 * day, not_after=when + 5 * day),
        CertSpec("zonal", path_length=1, not_before=when - 2 * day, not_after=when + 2 * day),
        CertSpec(
            "instance",
            path_length=0,
            key_usage={"key_cert_sign": True},
            not_before=when - day,
            not_after=when + day,
        ),
        CertSpec(
            "leaf",
            ca=False,
            key_usage=dict(LEAF_KU),
            not_before=when - timedelta(seconds=3),
            not_after=when + timedelta(hours=3),
        ),
    ]


def _ku(flags: dict) -> x509.KeyUsage:
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{n: bool(flags.get(n, False)) for n in names})


def build_chain(specs: list[CertSpec]) -> tuple[list[bytes], list[ec.EllipticCurvePrivateKey]]:
    """DER certificates (root first, leaf last) and their private keys."""
    keys = [s.key or ec.generate_private_key(s.curve) for s in specs]
    names = [x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, s.name)]) for s in specs]
    ders: list[bytes] = []
    for i, s in enumerate(specs):
        signer = s.signer if s.signer is not None else max(i - 1, 0)
        issuer = (
            names[signer]
            if s.issuer_name is None
            else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, s.issuer_name)])
        )
        b = (
            x509.CertificateBuilder()
            .subject_name(names[i])
            .issuer_name(issuer)
            .public_key(keys[i].public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(s.not_before)
            .not_valid_after(s.not_after)
        )
        if s.ca is not None:
            b = b.add_extension(
                x509.BasicConstraints(ca=s.ca, path_length=s.path_length if s.ca else None),
                critical=True,
            )
        if s.key_usage is not None:
            b = b.add_extension(_ku(s.key_usage), critical=True)
        if s.unknown_critical:
            b = b.add_extension(
                x509.UnrecognizedExtension(UNKNOWN_CRITICAL_OID, b"\x05\x00"), critical=True
            )
        cert = b.sign(keys[signer], hashes.SHA384())
        ders.append(cert.public_bytes(serialization.Encoding.DER))
    return ders, keys


def doc_from_chain(
    ders: list[bytes], keys: list, when: datetime, *, leaf_key=None, **fields
) -> bytes:
    """A document whose certificate is ``ders[-1]`` and cabundle ``ders[:-1]``."""
    payload = encode_payload(
        module_id=fields.pop("module_id", MODULE_ID),
        timestamp_ms=int(when.timestamp() * 1000),
        pcrs=fields.pop("pcrs", PCRS),
        certificate=ders[-1],
        cabundle=ders[:-1],
        **fields,
    )
    return encode_cose_sign1(payload, leaf_key or keys[-1])


def root_of(ders: list[bytes]) -> x509.Certificate:
    return x509.load_der_x509_certificate(ders[0])
