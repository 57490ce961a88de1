#!/usr/bin/env bash
# Build one library of a derived image from its verified source tarball with its declared build
# system, shared, installed under /usr/local (on the loader's path of every manylinux image), so
# that wheels link it and auditwheel grafts it. The options are the spec's, validated words.
#
#   build-derived-library.sh NAME autotools|cmake TARBALL [OPTION...]
set -euo pipefail

name=$1 system=$2 tarball=$3
shift 3
step() { echo "manyforge: $name: $*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xf "$tarball" -C "$work" --strip-components=1
cd "$work"
jobs=$(nproc)

case $system in
    autotools)
        if [[ ! -x configure ]]; then
            step "autoreconf (the tarball has no configure)"
            autoreconf -fi >/dev/null
        fi
        step "configure $*"
        ./configure --prefix=/usr/local "$@" >/dev/null
        step "make -j$jobs"
        make -j"$jobs" >/dev/null
        make install >/dev/null
        ;;
    cmake)
        step "cmake $*"
        cmake -S . -B _build -DCMAKE_INSTALL_PREFIX=/usr/local -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_LIBDIR=lib "$@" >/dev/null
        step "build -j$jobs"
        cmake --build _build -j "$jobs" >/dev/null
        cmake --install _build >/dev/null
        ;;
    *)
        echo "build-derived-library.sh: unknown build system $system" >&2
        exit 2
        ;;
esac
ldconfig
step "installed: $(cd /usr/local && find lib lib64 -maxdepth 1 -name "lib*.so*" -newer "$tarball" 2>/dev/null | tr '\n' ' ')"
