#!/usr/bin/env bash
# Entry point of every image: on 32-bit targets run under a 32-bit personality, so that
# `uname -m` and build systems see the image's own architecture on a 64-bit host.
set -euo pipefail

case ${AUDITWHEEL_ARCH:-} in
    i686 | armv7l)
        if [[ $(uname -m) != "$AUDITWHEEL_ARCH" ]] && command -v linux32 >/dev/null; then
            exec linux32 "$@"
        fi
        ;;
esac
exec "$@"
