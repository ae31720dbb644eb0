"""Helpers of the reliability tests: the shared live stack and process measurements."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from simulator.stack import Stack

PROXY_HEADER_TIMEOUT_S = 2.0
PROXY_BODY_TIMEOUT_S = 2.0
FDS_WANTED = 8192


@dataclass
class LiveStack:
    stack: Stack
    info: dict
    key_id: str

    @property
    def proxy_url(self) -> str:
        return self.info["proxy_url"]

    def kms(self, who: str) -> Any:
        c = self.info["credentials"][who]
        return boto3.client(
            "kms", endpoint_url=self.info["kms_url"], region_name="us-east-1",
            aws_access_key_id=c["access_key_id"], aws_secret_access_key=c["secret_access_key"],
        )

    def sealed_hmac_body(self, name: str) -> tuple[bytes, dict]:
        """A fresh HMAC key and the /v1/seal-load body carrying it (KMS-encrypted)."""
        key = os.urandom(32)
        blob = self.kms("operator").encrypt(KeyId=self.key_id, Plaintext=key)["CiphertextBlob"]
        body = {"name": name, "kind": "hmac", "ciphertext": base64.b64encode(blob).decode()}
        return key, body

    def pid(self, name: str) -> int:
        return self.stack.child(name).pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
