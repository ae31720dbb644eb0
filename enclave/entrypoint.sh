#!/bin/sh
# Enclave image entrypoint (Dockerfile.enclave CMD). Inside a Nitro enclave the app starts as
# root with `lo` down: bring `lo` up (the KMS tunnel listens on 127.0.0.1), hand /dev/nsm to the
# unprivileged app user, then run `python3 -m enclave` as that user. Under `docker run` (USER
# enclave, `lo` already up) it simply runs the app. Extra arguments go to `python -m enclave`.
set -eu
APP_USER="${ENCLAVE_APP_USER:-enclave}"

if [ "$(id -u)" = "0" ]; then
    python3 -c 'from enclave.kms.tunnel import bring_up_loopback; bring_up_loopback()' || {
        echo "entrypoint: cannot bring up the loopback interface (KMS would be unreachable)" >&2
        exit 1
    }
    if [ -e /dev/nsm ]; then
        chown "$APP_USER" /dev/nsm
    fi
    exec setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups \
        python3 -m enclave --no-loopback "$@"
fi
exec python3 -m enclave "$@"
