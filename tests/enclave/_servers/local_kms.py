"""The local KMS served from a thread of the test process (aiohttp on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import boto3
from aiohttp import web

from attestation import TestPKI
from simulator.kms.server import KmsServer, create_app


class LocalKms:
    """The real local KMS endpoint, trusting ``pki``'s root, for in-process tests."""

    def __init__(self, state: Path, pki: TestPKI) -> None:
        self.server = KmsServer(state_dir=state, roots=[pki.root_certificate])
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(create_app(self.server), access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def client(self, keys: dict) -> Any:
        """A stock boto3 KMS client for this endpoint."""
        return boto3.client("kms", endpoint_url=self.url, region_name="us-east-1", **keys)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
