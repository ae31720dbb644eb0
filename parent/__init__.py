"""Runs on the parent instance: proxy, KMS relay, credentials, nitro-cli and EC2 helpers."""
