"""Verify AWS Nitro Enclaves attestation documents: COSE, chain to the pinned root, policy."""
