"""Runs inside the enclave: vsock transport, framed protocol, NSM client, attested KMS, app."""
