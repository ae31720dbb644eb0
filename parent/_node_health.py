"""``GET /health`` of a fleet node: the proxy's own health plus the secrets and drain state.

A load balancer sends traffic only to a node answering 200, so the node answers 503 while it
drains (``"proxy": "draining"``) and while a registered secret is not loaded in its enclave
(``"secrets": "loaded N/M"``, the failing ones listed by name with the KMS error).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from ._drain import Drainer
from ._proxy_http import REQUEST_ID_HEADER, RID_KEY
from ._secret_keeper import SecretKeeper

SETTLE_S = 1.0  # /health waits this long for a load pass that is due (the LB's check timeout)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def node_health(inner: Handler, keeper: SecretKeeper | None, drainer: Drainer) -> Handler:
    """Wrap the proxy's ``health`` handler (its JSON answer is extended, never replaced)."""

    async def health(request: web.Request) -> web.StreamResponse:
        response = await inner(request)
        body = getattr(response, "body", None)
        try:
            out = json.loads(body) if isinstance(body, bytes | bytearray) else None
        except ValueError:
            out = None
        if not isinstance(out, dict):
            return response
        status = response.status
        if keeper is not None:
            if status == 200:
                await keeper.settle(SETTLE_S)
            out.update(keeper.report())
            if status == 200 and not keeper.ready:
                status = 503
        if drainer.draining:
            out["proxy"] = "draining"
            status = 503
        rid = request.get(RID_KEY) or ""
        return web.json_response(out, status=status, headers={REQUEST_ID_HEADER: rid})

    return health
