#!/bin/sh
# A stand-in for the pinned python:3.11-slim-bookworm base, made from Debian packages, for
# machines that cannot pull from a container registry (`make base-image`, docs/deploy.md).
#
#   image/base-image.sh [CACHE_DIR]     prints the image name (nitro-toolkit-base:bookworm-<key>)
#
# Debian 12 (bookworm) with `python3` (CPython 3.11, like the official base), made by mmdebstrap
# (variant "essential": no apt, no docs) and loaded with `docker import`. <key> is a hash of
# this script (comments aside) and the architecture: an image with that name is reused as is, and the tarball is
# kept in CACHE_DIR (default: $XDG_CACHE_HOME/nitro-toolkit, or ~/.cache/nitro-toolkit) so a
# fresh daemon gets it back without the network. Debian's security updates reach the stand-in
# only when it is remade: `REBUILD=1 image/base-image.sh`. Needs root (or mmdebstrap's unshare
# mode), mmdebstrap and access to a Debian mirror (MIRROR).
set -eu

SUITE=bookworm
PACKAGES=python3
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# Fixed so that two runs against the same mirror state give the same tarball.
export SOURCE_DATE_EPOCH=1700000000

arch="$(docker info --format '{{.Architecture}}' 2>/dev/null || uname -m)"
case "$arch" in
    x86_64 | amd64) debarch=amd64 ;;
    aarch64 | arm64) debarch=arm64 ;;
    *) echo "base-image: unsupported architecture $arch" >&2; exit 2 ;;
esac
key="$( { grep -v '^ *#' "$0"; echo "$debarch $MIRROR $SECURITY"; } | sha256sum | cut -c1-12)"
name="nitro-toolkit-base:$SUITE-$key"
cache="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/nitro-toolkit}"
tarball="$cache/base-$SUITE-$debarch-$key.tar"
partial="$cache/partial-$SUITE-$debarch-$key.tar"  # mmdebstrap picks the format from ".tar"

if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$name" >/dev/null 2>&1; then
    echo "base-image: reusing $name" >&2
    echo "$name"
    exit 0
fi
if [ "${REBUILD:-0}" = 1 ] || [ ! -s "$tarball" ]; then
    command -v mmdebstrap >/dev/null || {
        echo "base-image: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 2; }
    mkdir -p "$cache"
    echo "base-image: mmdebstrap $SUITE ($debarch, $PACKAGES) -> $tarball" >&2
    mmdebstrap --quiet --variant=essential --arch="$debarch" --include="$PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/log/* "$1"/var/lib/apt/lists/*' \
        "$SUITE" "$partial" \
        "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY $SUITE-security main"
    mv "$partial" "$tarball"
fi
echo "base-image: docker import $tarball as $name" >&2
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --message "Debian $SUITE + $PACKAGES (image/base-image.sh)" "$tarball" "$name" >/dev/null
echo "$name"
