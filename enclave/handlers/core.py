"""Built-in operations every app has: ``health``, ``describe``, ``e2e`` and ``parent-time``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from attestation.e2e import SUITE_NAME
from enclave.clock import PARENT_TIME_OP
from enclave.handlers._body import fields, get_bytes
from enclave.protocol import HandlerError

if TYPE_CHECKING:
    from enclave.context import AppView, Context


def install(app: AppView) -> None:
    @app.operation("health", http=False, limited=False, deadline_s=2.0)
    async def health(ctx: Context, body: Any) -> dict:
        """Liveness: app name, version, uptime, requests in progress."""
        fields(body)
        return {
            "status": "ok",
            "app": ctx.app.name,
            "version": ctx.app.version,
            "uptime_s": round(time.monotonic() - ctx.app.started, 3),
            "in_flight": ctx.app.in_flight,
            "credentials": ctx.app.credentials.get() is not None,
            "clock": ctx.app.clock.state(),
        }

    @app.operation("describe", http=False, limited=False, deadline_s=2.0)
    async def describe(ctx: Context, body: Any) -> dict:
        """The app's operations (the proxy builds its routes from this) and e2e suite."""
        fields(body)
        out = ctx.app.describe()
        out["e2e"] = {"suite": SUITE_NAME, "public_key": ctx.e2e_key.public_key_der}
        out["user_data"] = ctx.app.user_data
        return out

    @app.operation("e2e", http=False, e2e=False, limited=False, bytes_fields=("sealed",))
    async def e2e(ctx: Context, body: Any) -> dict:
        """An end-to-end sealed request; the answer is sealed to the caller."""
        req = fields(body, required=("sealed",))
        sealed = get_bytes(req, "sealed", max_len=ctx.e2e_key.limits.max_sealed_len, min_len=1)
        return {"sealed": await ctx.app.dispatch_sealed(sealed)}

    @app.operation(PARENT_TIME_OP, http=False, e2e=False, limited=False, deadline_s=2.0)
    async def parent_time(ctx: Context, body: Any) -> dict:
        """The parent's time (untrusted evidence): the enclave corrects its clock within bounds."""
        req = fields(body, required=("time_ms",))
        time_ms = req["time_ms"]
        if not isinstance(time_ms, int) or isinstance(time_ms, bool) or not 0 < time_ms < 2**53:
            raise HandlerError("bad-request", "'time_ms' must be milliseconds since the epoch")
        return ctx.app.clock.offer(time_ms)
