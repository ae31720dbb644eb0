"""Shared inputs of the EIF tests: the nitro-spec §5.7 synthetic sections and a signing cert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KERNEL = b"KERNEL-IMAGE"
CMDLINE = b"reboot=k panic=30 pci=off nomodules console=ttyS0"
RAMDISK0 = b"RAMDISK-0-BOOTSTRAP"
RAMDISK1 = b"RAMDISK-1-APP"

# nitro-spec §5.7 (synthetic, computed from §5.1-5.4)
PCR0 = (
    "3a1802f4dc693137238f341a90610730ad2b03f8d8777d21"
    "0be9926ea9bf78ae318efc8756440243053f7c614e104ee9"
)
PCR1 = (
    "bce017d9aa0e93e5e3a5dab94b1d6a00cd9201211f08fc61"
    "0076405ccbef9ae01c3ef1060a8c3094f91fd706c062e119"
)
PCR2 = (
    "22e24471c39d3664a951ec258b0b63778ddade72ec66cc67"
    "69f7bcff41b53745b210ce9647c1b65c8abb227063dbfaeb"
)
EMPTY_PCR = (
    "21b9efbc184807662e966d34f390821309eeac6802309798"
    "826296bf3e8bec7c10edb30948c90ba67310f7b964fc500a"
)
HEADER_PREFIX = "2e656966000400000000000040000000000000000000000200000005"


def signing_pair(curve: ec.EllipticCurve | None = None) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A self-signed EC certificate (PEM) and its key, like `openssl req -x509` for sign-eif."""
    key = ec.generate_private_key(curve or ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eif-signer")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key
