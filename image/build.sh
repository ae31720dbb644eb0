#!/bin/sh
# `make image`: build Dockerfile.enclave from a context of exactly what it needs, offline.
#
# Environment (the make variables of the same names):
#   IMAGE              tag to build (default nitro-toolkit-enclave:latest)
#   BASE_IMAGE         base to build on; empty = the digest pinned in Dockerfile.enclave
#   BASE_FALLBACK      what to do when that pinned base can be neither found nor pulled:
#                      "standin" (default) builds on image/base-image.sh's Debian stand-in and
#                      says so; "none" fails
#   SOURCE_DATE_EPOCH  mtime of every added file (make passes the last commit's time)
#   WHEELS_DIR         wheels fetched by `make wheels` (default build/wheels)
#   DOCKER             docker client (default docker); DOCKER_BUILDKIT=1 selects BuildKit
#   DOCKER_BUILD_FLAGS extra flags for docker build (e.g. --no-cache)
# The build runs with --network none. The context is a tar of Dockerfile.enclave, attestation/, enclave/ and the wheels, without
# byte code or other build leftovers of the host.
set -eu
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-nitro-toolkit-enclave:latest}"
WHEELS_DIR="${WHEELS_DIR:-build/wheels}"
DOCKER="${DOCKER:-docker}"
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
pinned="$(sed -n 's/^ARG BASE=//p' Dockerfile.enclave)"
base="${BASE_IMAGE:-}"
note=""

if [ -z "$base" ]; then
    base="$pinned"
    if ! "$DOCKER" image inspect "$pinned" >/dev/null 2>&1 \
        && ! "$DOCKER" pull --quiet "$pinned" >/dev/null 2>&1; then
        if [ "${BASE_FALLBACK:-standin}" != standin ]; then
            echo "image: cannot pull the pinned base $pinned (no registry access?)." >&2
            echo "image: run 'make base-image' and 'make image BASE_IMAGE=<its name>' instead." >&2
            exit 2
        fi
        echo "image: cannot pull the pinned base $pinned; using the Debian stand-in" >&2
        base="$(image/base-image.sh)"
        note=" on the STAND-IN base $base (not the pinned one: its PCR2 differs)"
    fi
fi
test -d "$WHEELS_DIR" || { echo "image: $WHEELS_DIR is missing: run 'make wheels'." >&2; exit 2; }

# tar names the wheels build/wheels/ whatever WHEELS_DIR is, as the Dockerfile expects.
tar --sort=name --owner=0 --group=0 --numeric-owner \
    --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' --exclude='.fetched-*' \
    --transform="s|^${WHEELS_DIR%/}|build/wheels|" \
    -cf - Dockerfile.enclave attestation enclave "$WHEELS_DIR" \
    | "$DOCKER" build --network none -f Dockerfile.enclave ${DOCKER_BUILD_FLAGS:-} \
        --build-arg "BASE=$base" --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" \
        --label "org.opencontainers.image.base.name=$base" -t "$IMAGE" -
echo "built $IMAGE$note (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)" >&2
