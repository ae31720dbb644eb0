"""Built-in operations and the default app (sealed secrets).

``install_builtins(app)`` adds what every app has: ``health``, ``describe``, ``attestation``,
``e2e`` and ``set-credentials``. ``enclave.app.default_app()``, what ``python -m enclave``
runs, is the built-ins plus the sealed-secret operations (docs/app.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from enclave.context import AppView

DEFAULT_APP_NAME = "sealed-secrets"
DEFAULT_APP_VERSION = "1"


def install_builtins(app: AppView) -> None:
    from enclave.handlers import attestation, core, credentials

    core.install(app)
    attestation.install(app)
    credentials.install(app)
