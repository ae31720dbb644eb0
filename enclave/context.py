"""What an operation sees: its request context, its app (a protocol) and the registry types.

``enclave.app`` (the framework) and ``enclave.handlers`` (the built-in operations) both import
this module and never each other: an operation is written against :class:`AppView`, which
``enclave.app.App`` implements, and gets a :class:`Context` per request.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from enclave.clock import EnclaveClock
    from enclave.e2e import EnclaveE2EKey
    from enclave.nsm import NsmClient
    from enclave.sealed import SealedStore

__all__ = ["AppView", "Context", "Handler", "Operation"]

Handler = Callable[["Context", Any], Awaitable[Any]]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Operation:
    """One named operation and how it may be reached."""

    name: str
    handler: Handler
    deadline_s: float | None = None  # None = AppLimits.default_deadline_s
    http: bool = True  # the parent proxy may expose it as POST /v1/<name>
    e2e: bool = True  # reachable inside an end-to-end sealed request
    limited: bool = True  # counts against AppLimits.max_concurrent
    bytes_fields: tuple[str, ...] = ()  # top-level body fields that are bytes (base64 in JSON)
    doc: str = ""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "http": self.http,
            "e2e": self.e2e,
            "bytes_fields": list(self.bytes_fields),
            "doc": self.doc,
        }


class AppView(Protocol):
    """What an operation may use of its app (``enclave.app.App`` is one)."""

    name: str
    version: str
    user_data: bytes
    started: float
    in_flight: int
    limits: Any  # enclave.app.AppLimits
    clock: EnclaveClock
    secrets: SealedStore
    e2e_key: EnclaveE2EKey

    @property
    def nsm(self) -> NsmClient: ...

    @property
    def kms(self) -> Any: ...

    @property
    def credentials(self) -> Any: ...

    @property
    def executor(self) -> ThreadPoolExecutor: ...

    def operation(
        self,
        name: str,
        *,
        deadline_s: float | None = None,
        http: bool = True,
        e2e: bool = True,
        limited: bool = True,
        bytes_fields: tuple[str, ...] = (),
        doc: str | None = None,
    ) -> Callable[[Handler], Handler]: ...

    def describe(self) -> dict[str, Any]: ...

    async def dispatch_sealed(self, sealed: bytes) -> bytes: ...


@dataclass
class Context:
    """What a handler gets besides its body."""

    app: AppView
    op: str
    request_id: str
    deadline: float  # event-loop time by which the answer is due
    end_to_end: bool = False  # the request arrived sealed (HPKE) and the reply is sealed
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nsm(self) -> NsmClient:
        return self.app.nsm

    @property
    def kms(self) -> Any:
        """The attested KMS client (``enclave.kms.AttestedKms``)."""
        return self.app.kms

    @property
    def secrets(self) -> SealedStore:
        return self.app.secrets

    @property
    def e2e_key(self) -> EnclaveE2EKey:
        return self.app.e2e_key

    @property
    def limits(self) -> Any:
        return self.app.limits

    def remaining(self) -> float:
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    async def run_blocking(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run a blocking call (NSM, boto3) on the app's bounded thread pool."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        return await loop.run_in_executor(self.app.executor, call)
