"""The NSM wire format, public: CBOR request/response types and codecs (nitro-spec §1.2).

The client (``enclave.nsm``) and the simulated NSM (``simulator.nsm``) both speak it through
this module, so the two cannot drift apart. ``SOCKET_FRAME_HEADER`` frames one message on
the simulated NSM's Unix socket (a u32 big-endian length).
"""

from __future__ import annotations

from ._nsm_codec import *  # noqa: F403 (the names listed in its __all__)
from ._nsm_codec import __all__ as _CODEC_NAMES
from ._nsm_device import FRAME_HEADER as SOCKET_FRAME_HEADER

__all__ = [*_CODEC_NAMES, "SOCKET_FRAME_HEADER"]
