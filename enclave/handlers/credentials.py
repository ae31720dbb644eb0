"""``set-credentials`` wiring: the parent's AWS credentials feed the attested KMS client.

The store and its handler are ``enclave.kms.credentials``; the KMS client is
``enclave.kms.AttestedKms.for_enclave`` (boto3 through the loopback tunnel and the parent's
KMS relay). The operation is reachable on the vsock protocol only: the proxy does not expose it
over HTTP and it is refused inside end-to-end requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enclave.kms.credentials import SET_CREDENTIALS_OP, CredentialStore

if TYPE_CHECKING:
    from enclave.context import AppView, Context


def new_credential_store() -> CredentialStore:
    return CredentialStore()


def new_attested_kms(nsm: Any, credentials: CredentialStore) -> Any:
    from enclave.kms import AttestedKms

    return AttestedKms.for_enclave(credentials, nsm=nsm)


def install(app: AppView) -> None:
    @app.operation(SET_CREDENTIALS_OP, http=False, e2e=False, limited=False, deadline_s=5.0)
    async def set_credentials(ctx: Context, body: Any) -> dict:
        """AWS credentials from the parent (instance role), for attested KMS calls."""
        return await ctx.app.credentials.handle_set_credentials(body)
