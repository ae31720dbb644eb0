"""Attested HTTPS ingress: any ASGI 3 app served over TLS inside the enclave (docs/ingress.md).

``python -m enclave --asgi MODULE:ATTR`` makes a TLS key pair in the enclave, listens on a
vsock port (default 5443) and serves the app with uvicorn behind the attestation route
``GET /.well-known/nitro-attestation?nonce=HEX`` (raw document, ``public_key`` = the SPKI of
the presented certificate). The app reaches the toolkit through :mod:`enclave.ingress.runtime`.
"""

from ._route import ATTESTATION_PATH, AttestationRoute, RouteLimits
from ._tls import TlsIdentity, make_identity
from .server import DEFAULT_INGRESS_PORT, Ingress, IngressLimits, start_ingress

__all__ = [
    "ATTESTATION_PATH",
    "DEFAULT_INGRESS_PORT",
    "AttestationRoute",
    "Ingress",
    "IngressLimits",
    "RouteLimits",
    "TlsIdentity",
    "make_identity",
    "start_ingress",
]
