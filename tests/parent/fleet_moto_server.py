"""moto's server (``moto_server``) with the one stand-in the fleet tests need, as a process.

Run: ``python tests/parent/fleet_moto_server.py -H 127.0.0.1 -p PORT`` (moto_server's options).

Stand-in, named and documented (moto 5.2 lacks it):

* ``KmsKeyUpdateStandIn``: moto's CloudFormation cannot *update* an ``AWS::KMS::Key`` (the
  class has no ``update_from_cloudformation_json``, so a stack update that changes the key
  policy loses the key). Real CloudFormation updates the key in place with the new
  ``KeyPolicy`` (PutKeyPolicy). The stand-in does exactly that on moto's key object: same key
  id and ARN, the new policy, so tests read it back with ``kms.get_key_policy``.

Everything else is moto_server unmodified; the tests talk to it with boto3 over HTTP.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

START_TIMEOUT = 30.0  # seconds for the server to answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server() -> Iterator[str]:
    """This file as a server process on a free loopback port; yields its URL, stops it after."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def reset(url: str) -> None:
    """Forget every resource (moto's reset API)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def install_kms_key_update_stand_in() -> None:
    from moto.kms.models import Key

    def update_from_cloudformation_json(
        cls: type[Key],
        original_resource: Key,
        new_resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> Key:
        properties = cloudformation_json["Properties"]
        policy = properties["KeyPolicy"]
        original_resource.policy = policy if isinstance(policy, str) else json.dumps(policy)
        if "Description" in properties:
            original_resource.description = properties["Description"]
        return original_resource

    Key.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)  # type: ignore[assignment,method-assign]


if __name__ == "__main__":
    install_kms_key_update_stand_in()
    from moto.server import main

    main(sys.argv[1:])
