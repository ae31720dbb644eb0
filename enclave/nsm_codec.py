"""The NSM wire format, public: CBOR request/response types and codecs (nitro-spec §1.2).

The client (``enclave.nsm``) and the simulated NSM (``simulator.nsm``) both speak it through
this module, so the two cannot drift apart. ``SOCKET_FRAME_HEADER`` frames one message on
the simulated NSM's Unix socket (a u32 big-endian length).
"""

from __future__ import annotations

from ._nsm_codec import (
    DIGEST_SIZES,
    ERROR_CODES,
    MAX_CBOR_DEPTH,
    NSM_ERROR_CODES,
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    REQUEST_TYPES,
    RESPONSE_FOR,
    Attestation,
    AttestationDocumentBytes,
    DescribeNsm,
    DescribePcr,
    ErrorResponse,
    ExtendPcr,
    GetRandom,
    LockPcr,
    LockPcrs,
    NsmDescription,
    NsmError,
    PcrExtended,
    PcrInfo,
    PcrLocked,
    PcrsLocked,
    RandomBytes,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from ._nsm_device import FRAME_HEADER as SOCKET_FRAME_HEADER

__all__ = [
    "DIGEST_SIZES",
    "ERROR_CODES",
    "MAX_CBOR_DEPTH",
    "NSM_ERROR_CODES",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "REQUEST_TYPES",
    "RESPONSE_FOR",
    "SOCKET_FRAME_HEADER",
    "Attestation",
    "AttestationDocumentBytes",
    "DescribeNsm",
    "DescribePcr",
    "ErrorResponse",
    "ExtendPcr",
    "GetRandom",
    "LockPcr",
    "LockPcrs",
    "NsmDescription",
    "NsmError",
    "PcrExtended",
    "PcrInfo",
    "PcrLocked",
    "PcrsLocked",
    "RandomBytes",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]
