"""Old home of the command dispatcher; it lives in :mod:`enclave.service` (re-exported here)."""

from __future__ import annotations

from enclave.service import Commands, dispatch, usage

__all__ = ["Commands", "dispatch", "usage"]
