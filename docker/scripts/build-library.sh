#!/usr/bin/env bash
# Build one library the base release lacks (or has too old) from a verified source tarball:
# static, position-independent, installed under DEST/usr/local. The interpreter stages copy
# that tree into /usr/local, where CPython's configure finds it through pkg-config; their
# extension modules link it in, so nothing of it is needed at run time. Family facts come in
# the environment: OPENSSLDIR (where the release keeps its CA certificates).
#
#   build-library.sh NAME TARBALL DEST
set -euo pipefail

# shellcheck source=docker/scripts/cross-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/cross-env.sh"

name=$1 tarball=$2 dest=$3
step() { echo "manyforge: $name: $*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xf "$tarball" -C "$work" --strip-components=1
cd "$work"
# Hardened as the interpreters are (cross-env.sh): the libraries end up inside their modules.
export CFLAGS="-O2 -fPIC $harden_cflags $harden_cppflags"
jobs=$(nproc)

case $name in
    openssl)
        # `config` guesses the target from uname (the image's own under linux32 or QEMU); a
        # cross build names it.
        configure=(./config)
        if [[ -n ${MANYFORGE_CROSS:-} ]]; then
            case $MANYFORGE_CROSS in
                x86_64-*) configure=(./Configure linux-x86_64) ;;
                i?86-*) configure=(./Configure linux-elf) ;;
                aarch64-*) configure=(./Configure linux-aarch64) ;;
                powerpc64le-*) configure=(./Configure linux-ppc64le) ;;
                s390x-*) configure=(./Configure linux64-s390x) ;;
                arm*) configure=(./Configure linux-armv4) ;;
                riscv64-*) configure=(./Configure linux64-riscv64) ;;
                *) echo "build-library.sh: no OpenSSL target for $MANYFORGE_CROSS" >&2; exit 2 ;;
            esac
        fi
        # OpenSSL 3's 64-bit atomics need libatomic on 32-bit x86 (as pypa's build-openssl.sh);
        # -l options given to Configure reach libcrypto.pc, and so every link of the modules.
        extra=()
        case ${MANYFORGE_CROSS:-$(uname -m)} in i?86*) extra+=(-latomic) ;; esac
        step "configure (openssldir ${OPENSSLDIR:?})"
        # shellcheck disable=SC2086 # the flags are words
        "${configure[@]}" --prefix=/usr/local --libdir=lib --openssldir="$OPENSSLDIR" \
            no-shared no-tests no-docs -fPIC $harden_cflags $harden_cppflags ${extra[@]+"${extra[@]}"} >/dev/null
        step "make -j$jobs"
        make -j"$jobs" build_libs >/dev/null
        make DESTDIR="$dest" install_dev >/dev/null
        ;;
    sqlite)
        # Debian's orig tarball is SQLite's canonical source tree; its configure writes the
        # amalgamation itself (with the bundled jimsh when no tclsh is around).
        step configure
        CFLAGS="$CFLAGS -DSQLITE_ENABLE_FTS3 -DSQLITE_ENABLE_FTS3_PARENTHESIS -DSQLITE_ENABLE_FTS4 \
-DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_RTREE -DSQLITE_ENABLE_COLUMN_METADATA -DSQLITE_ENABLE_MATH_FUNCTIONS \
-DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_SECURE_DELETE -DSQLITE_MAX_VARIABLE_NUMBER=250000" \
            ./configure --prefix=/usr/local --disable-shared --enable-static --disable-tcl ${cross_configure_args[@]+"${cross_configure_args[@]}"} >/dev/null
        step "make -j$jobs"
        make -j"$jobs" libsqlite3.a >/dev/null
        make DESTDIR="$dest" install-headers install-lib install-pc >/dev/null 2>&1 || make DESTDIR="$dest" install >/dev/null
        ;;
    zstd)
        step "make -j$jobs"
        make -C lib -j"$jobs" libzstd.a libzstd.pc PREFIX=/usr/local CC="${CC:-cc}" AR="${AR:-ar}" >/dev/null
        make -C lib DESTDIR="$dest" PREFIX=/usr/local install-static install-includes install-pc >/dev/null
        ;;
    *)
        echo "build-library.sh: no recipe for $name" >&2
        exit 2
        ;;
esac

# Static only: what a shared build would pull in privately (-ldl, -pthread, -lm) must be named
# to every link, so pkg-config gives it without --static.
for pc in "$dest"/usr/local/lib/pkgconfig/*.pc; do
    private=$(sed -n 's/^Libs.private: *//p' "$pc")
    if [[ -n $private ]]; then
        sed -i -e "s|^\(Libs:.*\)$|\1 $private|" -e '/^Libs.private:/d' "$pc"
    fi
done
rm -rf "$dest/usr/local/share" "$dest/usr/local/bin"
find "$dest/usr/local/lib" -name '*.so*' -delete
# The hardening took: the archive calls the stack protector's check.
for archive in "$dest"/usr/local/lib/*.a; do
    "${NM:-nm}" "$archive" > "$work/symbols" 2>/dev/null  # not piped into grep -q: pipefail, SIGPIPE
    if ! grep -q ' U __stack_chk_fail' "$work/symbols"; then
        echo "build-library.sh: $(basename "$archive") was built without the stack protector" >&2
        exit 1
    fi
done
step "installed $(find "$dest/usr/local/lib" -name '*.a' -printf '%f ')"
