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

# Emulated builds get the build host's cross compiler of the same GCC at /cross
# (MANYFORGE_CROSS=host-triplet:target-triplet:gcc-version). Linked into PATH under the plain
# names, it is what configure records, so the installed sysconfig still says `gcc`.
if [[ -n ${MANYFORGE_CROSS:-} ]]; then
    IFS=: read -r host target gcc_version <<< "$MANYFORGE_CROSS"
    mkdir -p /lib64 /opt/cross-bin
    ln -sf "/cross/usr/lib/$host/ld-linux-x86-64.so.2" /lib64/ld-linux-x86-64.so.2
    for tool in gcc cpp; do
        ln -sf "/cross/usr/bin/$target-$tool-$gcc_version" "/opt/cross-bin/$tool"
    done
    ln -sf "/cross/usr/bin/$target-gcc-$gcc_version" /opt/cross-bin/cc
    for tool in ar ranlib as ld nm strip objcopy readelf; do
        ln -sf "/cross/usr/bin/$target-$tool" "/opt/cross-bin/$tool"
    done
    export PATH="/opt/cross-bin:$PATH" LD_LIBRARY_PATH="/cross/usr/lib/$host"
    step "compiling with the build host's $target-gcc-$gcc_version"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xf "$tarball" -C "$work" --strip-components=1
cd "$work"

configure_args=(--prefix="$prefix" --with-ensurepip=no --enable-ipv6 "$@")
# Test extension modules only slow the build down; the option exists from 3.10 on.
if ./configure --help | grep -q -- --disable-test-modules; then
    configure_args+=(--disable-test-modules)
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

libdir=$(find "$prefix/lib" -maxdepth 1 -name 'python3.*' -type d | head -n1)
# The static libpython serves embedding, never a wheel; optimized bytecode serves only -O runs.
rm -f "$prefix"/lib/libpython*.a "$libdir"/config-*/libpython*.a
find "$libdir" -name '*.opt-[12].pyc' -delete
find "$libdir" -depth -type d \( -name test -o -name tests -o -name idle_test \) \
    ! -path '*/site-packages/*' -exec rm -rf {} +
find "$prefix" -type f \( -name '*.so' -o -path "$prefix/bin/*" \) -print0 | xargs -0 file \
    | grep ': *ELF' | cut -d: -f1 | xargs -r strip --strip-unneeded

"$prefix/bin/python3" -c 'import ssl, sqlite3, ctypes, zlib, bz2, lzma, readline, uuid, sys; print(sys.version)'
