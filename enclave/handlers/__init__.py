"""Built-in operations and the default app (sealed secrets).

``install_builtins(app)`` adds what every app has: ``health``, ``describe``, ``attestation``,
``e2e`` and ``set-credentials``. ``default_app()`` is what ``python -m enclave`` runs: the
built-ins plus the sealed-secret operations (docs/app.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import App

DEFAULT_APP_NAME = "sealed-secrets"
DEFAULT_APP_VERSION = "1"


def install_builtins(app: App) -> None:
    from . import attestation, core, credentials

    core.install(app)
    attestation.install(app)
    credentials.install(app)


def default_app(**kwargs: Any) -> App:
    """The sealed-secrets app (``kwargs`` go to ``App``: limits, nsm, kms, ...)."""
    from ..app import App
    from . import sealed

    app = App(DEFAULT_APP_NAME, DEFAULT_APP_VERSION, **kwargs)
    sealed.install(app)
    return app
