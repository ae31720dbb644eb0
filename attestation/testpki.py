"""A Nitro-shaped test PKI that signs attestation documents (for tests and the simulator).

The chain has the shape of the real AWS one (nitro-spec §2.4): a long-lived root without a path
length, a regional CA (pathLen 2, ~20 days), a zonal CA (pathLen 1, ~6 days), an instance CA
(pathLen 0, ~1 day, keyCertSign only) and, per enclave, a leaf (CA:false, digitalSignature +
nonRepudiation, ~3 hours). All keys are P-384, all signatures ecdsa-with-SHA384. Documents are
byte-shaped like real ones: untagged COSE_Sign1, protected ``{1: -35}``, empty unprotected map,
96-byte ``r || s``, payload keys in the NSM's order, absent optionals as CBOR ``null``, and an
indefinite-length top-level map (as the NSM writes since 2025).

Names say ``test`` where AWS says ``aws`` and the organisation is not Amazon's, so a test chain
cannot be mistaken for a real one; only the pinned AWS root is trusted unless a caller passes
``pki.root_certificate`` explicitly.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ._cose import PROTECTED_ES384, es384_sign

__all__ = ["TestPKI", "encode_cose_sign1", "encode_payload"]

PARTITION = "test"
ORGANIZATION = "Nitro Toolkit TestPKI"
ORG_UNIT = "TEST"
ROOT_LIFETIME = timedelta(days=30 * 365)
REGIONAL_LIFETIME = timedelta(days=20)
ZONAL_LIFETIME = timedelta(days=6)
INSTANCE_LIFETIME = timedelta(days=1)
LEAF_LIFETIME = timedelta(hours=3, seconds=3)
LEAF_BACKDATE = timedelta(seconds=3)
"""A new leaf starts this long before the first document it signs (as observed on AWS)."""
LEAF_REUSE = timedelta(minutes=30)
"""A leaf keeps signing documents of the same module for this long, then a new one is made."""
DEFAULT_BACKDATE = timedelta(hours=1)
"""``generate()`` without ``not_before`` starts the chain this long before now."""

_CURVE = ec.SECP384R1()
_SIG_HASH = hashes.SHA384()
_LEVELS = ("regional", "zonal", "instance")
_PATH_LEN = {"regional": 2, "zonal": 1, "instance": 0}
_LIFETIME = {"regional": REGIONAL_LIFETIME, "zonal": ZONAL_LIFETIME, "instance": INSTANCE_LIFETIME}
_META_FILE = "testpki.json"
_MAX_CN = 64  # X.520 upper bound of a commonName (cryptography counts UTF-8 bytes)


def encode_payload(
    *,
    module_id: str,
    timestamp_ms: int,
    pcrs: Mapping[int, bytes],
    certificate: bytes,
    cabundle: list[bytes] | tuple[bytes, ...],
    public_key: bytes | None = None,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    digest: str = "SHA384",
    indefinite_map: bool = True,
    pcrs_field: str = "pcrs",
) -> bytes:
    """CBOR payload in the NSM's key order; ``None`` optionals are written as ``null``.

    No validation: tests use this to build out-of-spec documents on purpose. ``pcrs_field``
    ``"nitrotpm_pcrs"`` gives the shape of a NitroTPM (EC2 instance) document.
    """
    fields = (
        ("module_id", module_id),
        ("digest", digest),
        ("timestamp", timestamp_ms),
        (pcrs_field, {int(k): bytes(v) for k, v in sorted(pcrs.items())}),
        ("certificate", certificate),
        ("cabundle", list(cabundle)),
        ("public_key", public_key),
        ("user_data", user_data),
        ("nonce", nonce),
    )
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields)
    if indefinite_map:
        return b"\xbf" + body + b"\xff"
    return bytes((0xA0 | len(fields),)) + body


def encode_cose_sign1(
    payload: bytes,
    private_key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes = PROTECTED_ES384,
    unprotected: bytes = b"\xa0",
    tagged: bool = False,
) -> bytes:
    """COSE_Sign1 ``[protected, unprotected, payload, r||s]`` signed with ES384.

    ``unprotected`` is raw CBOR (an empty map by default) so tests can put anything there.
    """
    signature = es384_sign(private_key, protected, payload)
    body = (
        b"\x84"
        + cbor2.dumps(protected)
        + unprotected
        + cbor2.dumps(payload)
        + cbor2.dumps(signature)
    )
    return (b"\xd2" + body) if tagged else body


@dataclass
class _Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    der: bytes

    def covers(self, start: datetime, end: datetime) -> bool:
        return self.cert.not_valid_before_utc <= start and end <= self.cert.not_valid_after_utc


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v)]) for o, v in pairs])


def _key_usage(
    *, ds: bool = False, cc: bool = False, kcs: bool = False, crl: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=ds,
        content_commitment=cc,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=kcs,
        crl_sign=crl,
        encipher_only=False,
        decipher_only=False,
    )


def _floor_second(t: datetime) -> datetime:
    return t.replace(microsecond=0)


class TestPKI:
    """Root, regional, zonal and instance CAs plus per-module leaves; signs documents.

    Thread-safe. Intermediate certificates are re-issued (same keys and names) when a document's
    time falls outside them, as AWS rotates its intermediates; the root never changes.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        root: _Issued,
        cas: dict[str, _Issued],
        region: str,
        ids: dict[str, str],
    ) -> None:
        self._root = root
        self._cas = cas
        self.region = region
        self._ids = ids
        self._leaves: dict[str, _Issued] = {}
        self._lock = threading.Lock()

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def generate(cls, *, not_before: datetime | None = None, region: str = "us-east-1") -> TestPKI:
        """A fresh chain valid from ``not_before`` (default: one hour ago)."""
        if not_before is None:
            not_before = datetime.now(UTC) - DEFAULT_BACKDATE
        elif not_before.tzinfo is None:
            raise ValueError("not_before must be timezone-aware (UTC)")
        start = _floor_second(not_before.astimezone(UTC))
        ids = {
            "regional": secrets.token_hex(8),
            "zonal": secrets.token_hex(8),
            "instance": "i-" + secrets.token_hex(9)[:17],
        }
        root_key = ec.generate_private_key(_CURVE)
        root_name = cls._subject_for("root", region, ids)
        root_cert = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
            )
            .add_extension(_key_usage(ds=True, kcs=True, crl=True), critical=True)
            .sign(root_key, _SIG_HASH)
        )
        root = _Issued(root_key, root_cert, root_cert.public_bytes(serialization.Encoding.DER))
        pki = cls(root=root, cas={}, region=region, ids=ids)
        parent = root
        for level in _LEVELS:
            issued = pki._issue_ca(level, ec.generate_private_key(_CURVE), parent, start)
            pki._cas[level] = issued
            parent = issued
        return pki

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TestPKI:
        """Read a PKI written by :meth:`save` (another process signs with the same chain)."""
        d = Path(directory)
        meta = json.loads((d / _META_FILE).read_text())

        def read(name: str) -> _Issued:
            key = serialization.load_pem_private_key((d / f"{name}.key.pem").read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{name}.key.pem is not an EC private key")
            cert = x509.load_pem_x509_certificate((d / f"{name}.pem").read_bytes())
            return _Issued(key, cert, cert.public_bytes(serialization.Encoding.DER))

        return cls(
            root=read("root"),
            cas={level: read(level) for level in _LEVELS},
            region=meta["region"],
            ids=meta["ids"],
        )

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write PEM certificates and keys plus ``testpki.json``; ``root.pem`` is the anchor.

        The directory is mode 0700, keys 0600 and the rest 0644, whatever the umask: whoever
        can replace ``root.pem`` decides what a verifier trusting it accepts.
        """
        d = Path(directory)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        with self._lock:
            items = [("root", self._root), *((lvl, self._cas[lvl]) for lvl in _LEVELS)]
            for name, issued in items:
                (d / f"{name}.pem").write_bytes(
                    issued.cert.public_bytes(serialization.Encoding.PEM)
                )
                os.chmod(d / f"{name}.pem", 0o644)
                key_path = d / f"{name}.key.pem"
                key_pem = issued.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.fchmod(fd, 0o600)  # also when the file already existed with another mode
                with os.fdopen(fd, "wb") as f:
                    f.write(key_pem)
            meta = {"region": self.region, "ids": self._ids}
            (d / _META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            os.chmod(d / _META_FILE, 0o644)

    # -- public views -------------------------------------------------------------------------

    @property
    def root_certificate(self) -> x509.Certificate:
        """The trust anchor: pass it as ``roots=[pki.root_certificate]`` to verify."""
        return self._root.cert

    @property
    def root_pem(self) -> bytes:
        """The root certificate as PEM (what a simulated KMS is told to trust)."""
        return self._root.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def instance_id(self) -> str:
        """The simulated parent instance id (the instance CA's name)."""
        return self._ids["instance"]

    # -- signing ------------------------------------------------------------------------------

    def sign_document(
        self,
        *,
        pcrs: Mapping[int, bytes],
        module_id: str,
        timestamp_ms: int | None = None,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        tagged: bool = False,
        indefinite_map: bool = True,
        nitrotpm: bool = False,
    ) -> bytes:
        """An attestation document signed by this chain, shaped exactly like the NSM's.

        ``timestamp_ms`` defaults to now. Raises ``ValueError`` for values the NSM could not
        produce (PCR sizes, field sizes, a time outside the root's validity). ``nitrotpm``:
        shape it as an EC2 instance's NitroTPM document instead (``nitrotpm_pcrs``).
        """
        _check_sign_args(pcrs, module_id, public_key, user_data, nonce)
        if timestamp_ms is None:
            timestamp_ms = time.time_ns() // 1_000_000
        if not isinstance(timestamp_ms, int) or timestamp_ms <= 0:
            raise ValueError("timestamp_ms must be a positive int")
        when = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        with self._lock:
            leaf = self._leaf_for(module_id, when)
            cabundle = [self._root.der, *(self._cas[lvl].der for lvl in _LEVELS)]
            payload = encode_payload(
                module_id=module_id,
                timestamp_ms=timestamp_ms,
                pcrs=pcrs,
                certificate=leaf.der,
                cabundle=cabundle,
                public_key=public_key,
                user_data=user_data,
                nonce=nonce,
                indefinite_map=indefinite_map,
                pcrs_field="nitrotpm_pcrs" if nitrotpm else "pcrs",
            )
            key = leaf.key
        return encode_cose_sign1(payload, key, tagged=tagged)

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _subject_for(
        level: str, region: str, ids: dict[str, str], module_id: str = ""
    ) -> x509.Name:
        c, st, loc = NameOID.COUNTRY_NAME, NameOID.STATE_OR_PROVINCE_NAME, NameOID.LOCALITY_NAME
        o, ou, cn = NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME
        zone = f"{PARTITION}.nitro-enclaves"
        if level == "root":
            return _name((c, "US"), (o, ORGANIZATION), (ou, ORG_UNIT), (cn, zone))
        if level == "regional":
            return _name(
                (c, "US"),
                (o, ORGANIZATION),
                (ou, ORG_UNIT),
                (cn, f"{ids['regional']}.{region}.{zone}"),
            )
        if level == "zonal":
            return _name(
                (cn, f"{ids['zonal']}.zonal.{region}.{zone}"),
                (ou, ORG_UNIT),
                (o, ORGANIZATION),
                (c, "US"),
                (st, "WA"),
                (loc, "Seattle"),
            )
        if level == "instance":
            common = f"{ids['instance']}.{region}.{zone}"
        else:  # the enclave's leaf, named after its module id like AWS does
            common = f"{module_id}.{region}.{PARTITION}"
            common = common.encode()[:_MAX_CN].decode(errors="ignore")
        return _name(
            (c, "US"), (st, "Washington"), (loc, "Seattle"), (o, ORGANIZATION), (ou, ORG_UNIT),
            (cn, common),
        )  # fmt: skip

    def _issue_ca(
        self, level: str, key: ec.EllipticCurvePrivateKey, parent: _Issued, start: datetime
    ) -> _Issued:
        end = min(start + _LIFETIME[level], parent.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(self._subject_for(level, self.region, self._ids))
            .issuer_name(parent.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.BasicConstraints(ca=True, path_length=_PATH_LEN[level]), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if level == "instance":
            builder = builder.add_extension(_key_usage(kcs=True), critical=True)
        else:
            builder = builder.add_extension(
                _key_usage(ds=True, kcs=True, crl=True), critical=True
            ).add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[
                                x509.UniformResourceIdentifier(
                                    f"http://crl.{PARTITION}.nitro-enclaves.invalid/crl/"
                                    f"{secrets.token_hex(16)}.crl"
                                )
                            ],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        )
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(parent.key, _SIG_HASH)
        return _Issued(key, cert, cert.public_bytes(serialization.Encoding.DER))

    def _ensure_cas_cover(self, start: datetime, end: datetime) -> None:
        """Re-issue any intermediate whose validity does not cover ``[start, end]``."""
        if not self._root.covers(start, end):
            raise ValueError(
                f"time {start.isoformat()} is outside the TestPKI root validity "
                f"({self._root.cert.not_valid_before_utc} .. {self._root.cert.not_valid_after_utc})"
            )
        parent = self._root
        for level in _LEVELS:
            current = self._cas[level]
            if not current.covers(start, end):
                self._cas[level] = self._issue_ca(level, current.key, parent, start)
            parent = self._cas[level]

    def _leaf_for(self, module_id: str, when: datetime) -> _Issued:
        leaf = self._leaves.get(module_id)
        if leaf is not None:
            nb = leaf.cert.not_valid_before_utc
            if (
                nb <= when
                and when - nb <= LEAF_REUSE
                and self._cas["instance"].covers(nb, leaf.cert.not_valid_after_utc)
            ):
                return leaf
        root_start = self._root.cert.not_valid_before_utc
        if when < root_start:
            raise ValueError(
                f"time {when.isoformat()} is before the TestPKI root's notBefore {root_start}"
            )
        start = max(_floor_second(when - LEAF_BACKDATE), root_start)
        end = start + LEAF_LIFETIME
        self._ensure_cas_cover(start, end)
        key = ec.generate_private_key(_CURVE)
        parent = self._cas["instance"]
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._subject_for("leaf", self.region, self._ids, module_id))
            .issuer_name(parent.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ds=True, cc=True), critical=False)
            .sign(parent.key, _SIG_HASH)
        )
        leaf = _Issued(key, cert, cert.public_bytes(serialization.Encoding.DER))
        self._leaves[module_id] = leaf
        return leaf


_PCR_SIZES = (32, 48, 64)
_MAX_FIELD = 1024


def _check_sign_args(
    pcrs: Mapping[int, bytes],
    module_id: str,
    public_key: bytes | None,
    user_data: bytes | None,
    nonce: bytes | None,
) -> None:
    if not isinstance(module_id, str) or not module_id:
        raise ValueError("module_id must be a non-empty str")
    if not pcrs or len(pcrs) > 32:
        raise ValueError("pcrs must hold 1..32 entries")
    for index, value in pcrs.items():
        if not isinstance(index, int) or not 0 <= index < 32:
            raise ValueError(f"PCR index {index!r} is not in 0..31")
        if not isinstance(value, bytes | bytearray) or len(value) not in _PCR_SIZES:
            raise ValueError(f"PCR{index} must be 32, 48 or 64 bytes")
    for name, field in (("public_key", public_key), ("user_data", user_data), ("nonce", nonce)):
        if field is not None and (
            not isinstance(field, bytes | bytearray) or len(field) > _MAX_FIELD
        ):
            raise ValueError(f"{name} must be bytes of at most {_MAX_FIELD}")
