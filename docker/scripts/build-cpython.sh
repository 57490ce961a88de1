#!/usr/bin/env bash
# Build one CPython from a verified source tarball into PREFIX, strip it and drop its test
# suite and static library (nobody links a wheel against them). pip and the build frontend
# come next, in their own layer (install-frontend.sh).
#
#   build-cpython.sh TARBALL PREFIX [CONFIGURE-ARGS...]
set -euo pipefail

tarball=$1 prefix=$2
shift 2

step() { echo "manyforge: $(basename "$prefix"): $*"; }

# shellcheck source=docker/scripts/cross-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/cross-env.sh"

# Libraries built from source for this base (build-library.sh) are in /usr/local; not every
# release's pkg-config looks there by itself.
export PKG_CONFIG_PATH=/usr/local/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xf "$tarball" -C "$work" --strip-components=1
cd "$work"

configure_args=(--prefix="$prefix" --with-ensurepip=no --enable-ipv6 ${cross_configure_args[@]+"${cross_configure_args[@]}"} "$@")
# Test extension modules only slow the build down; the option exists from 3.10 on.
./configure --help > "$work/configure-help.txt"  # grep -q would end a pipe early: pipefail
if grep -q -- --disable-test-modules "$work/configure-help.txt"; then
    configure_args+=(--disable-test-modules)
fi
if [[ -n ${MANYFORGE_CROSS:-} ]] && grep -q -- --with-build-python "$work/configure-help.txt"; then
    configure_args+=(--with-build-python="$(find /opt/_internal/build-python/bin -maxdepth 1 -name 'python3.[0-9]*' ! -name '*-config' -type f | head -n1)")
fi
# Keep the interpreter's own flags out of the sysconfig that extension builds inherit.
step configure
./configure "${configure_args[@]}" CFLAGS_NODIST="-fno-semantic-interposition" >/dev/null
step "make -j$(nproc)"
make -j"$(nproc)" >/dev/null
step "make install"
make install >/dev/null

python=$(find "$prefix/bin" -maxdepth 1 -name 'python3.[0-9]*' ! -name '*-config' -type f | head -n1)
ln -sf "$(basename "$python")" "$prefix/bin/python3"
ln -sf "$(basename "$python")" "$prefix/bin/python"
step "strip, trim"
if [[ ${MANYFORGE_CROSS_SYSROOT:-/} != / ]]; then
    # Paths seen through the sysroot (from pkg-config) name the target's own root once installed.
    { grep -rlF "$MANYFORGE_CROSS_SYSROOT/" "$prefix/lib" "$prefix/bin" || true; } | while IFS= read -r f; do
        if file "$f" | grep -q text; then sed -i "s|$MANYFORGE_CROSS_SYSROOT/|/|g" "$f"; fi
    done
fi

libdir=$(find "$prefix/lib" -maxdepth 1 -name 'python3.*' -type d | head -n1)
# The static libpython serves embedding, never a wheel; optimized bytecode serves only -O runs.
rm -f "$prefix"/lib/libpython*.a "$libdir"/config-*/libpython*.a
find "$libdir" -name '*.opt-[12].pyc' -delete
find "$libdir" -depth -type d \( -name test -o -name tests -o -name idle_test \) \
    ! -path '*/site-packages/*' -exec rm -rf {} +
find "$prefix" -type f \( -name '*.so' -o -path "$prefix/bin/*" \) -print0 | xargs -0 file \
    | grep ': *ELF' | cut -d: -f1 | xargs -r strip --strip-unneeded

# A cross build cannot run what it built: the target's own stage checks it (check-cpython.py).
if [[ -z ${MANYFORGE_CROSS:-} ]]; then
    "$prefix/bin/python3" "$(dirname "${BASH_SOURCE[0]}")/check-cpython.py"
fi
