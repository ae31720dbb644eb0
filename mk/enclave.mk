# Targets that build the enclave image and EIF and run it on a Nitro-enabled instance.
# (filled in by the build/deploy work; see docs/deploy.md)
