#!/usr/bin/env bash
# Build one CPython from a verified source tarball into PREFIX, strip it and drop its test
# suite and static library (nobody links a wheel against them). pip and the build frontend
# come next, in their own layer (install-frontend.sh).
#
#   build-cpython.sh TARBALL PREFIX [CONFIGURE-ARGS...]
#
# Cross-compiling, configure takes the target's answers to the checks it cannot run from
# MANYFORGE_CONFIGURE_ANSWERS (JSON, recorded in configure-answers/); where none are recorded,
# it finds them first by running configure's test programs on the target (QEMU's binfmt
# handler runs them; configure-answers.py says which checks those are). With
# MANYFORGE_DERIVE_ANSWERS=FILE it only does that and writes them to FILE.
set -euo pipefail

tarball=$1 prefix=$2
shift 2

step() { echo "manyforge: $(basename "$prefix"): $*"; }
# A fixed string as a sed pattern (| is the delimiter below).
literal() { printf '%s' "$1" | sed 's/[][\.*^$|/]/\\&/g'; }

# shellcheck source=docker/scripts/cross-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/cross-env.sh"

# Libraries built from source for this base (build-library.sh) are in /usr/local; not every
# release's pkg-config looks there by itself.
export PKG_CONFIG_PATH=/usr/local/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}

# CPython 3.11 and 3.12 check for SQLite with pkg-config's libraries in LDFLAGS, so the link puts
# them before the test program and -lsqlite3: a static SQLite's own needs (-lm for its math
# functions) go unresolved and _sqlite3 is silently left out. 3.13's configure puts them in LIBS,
# after it; the older ones get the same line.
unpack() {
    tar -xf "$tarball" -C "$1" --strip-components=1
    # shellcheck disable=SC2016 # configure's own text
    sed -i 's/^  LDFLAGS="\$LIBSQLITE3_LIBS \$LDFLAGS"$/  LIBS="$LIBS $LIBSQLITE3_LIBS"/' "$1/configure"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unpack "$work"
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
# The interpreter's own flags (hardening as pypa's; cross-env.sh) stay out of the sysconfig
# that extension builds inherit.
nodist=(CFLAGS_NODIST="-fno-semantic-interposition $harden_cflags $harden_cppflags" LDFLAGS_NODIST="$harden_ldflags")
# clang (the cross route of the RHEL and musl families) on armv7: CPython 3.15's configure adds
# clang-only flags to BASECFLAGS, where every extension built with the image's GCC inherits them
# (pypa/manylinux#1938); as pypa does, they move to the interpreter's own flags.
if [[ ${MANYFORGE_CROSS:-} == arm* ]] && gcc --version > "$work/cc-version" 2>&1 && grep -q clang "$work/cc-version"; then
    for flag in -mno-omit-leaf-frame-pointer -mno-thumb; do
        if grep -q -- "frame_pointer_cflags $flag" configure; then
            sed -i "s/frame_pointer_cflags $flag/frame_pointer_cflags/g" configure
            nodist[0]+=" $flag"
        fi
    done
fi

if [[ -n ${MANYFORGE_CROSS:-} ]]; then
    answers=${MANYFORGE_CONFIGURE_ANSWERS:-}
    if [[ -n $answers && -z ${MANYFORGE_DERIVE_ANSWERS:-} ]]; then
        # Recorded for this minor, perhaps from another patch release: one whose configure runs
        # a check they do not answer is answered here, on the target, instead.
        unanswered=$(python3 "$(dirname "${BASH_SOURCE[0]}")/configure-answers.py" unanswered configure "$answers")
        if [[ -n $unanswered ]]; then
            echo "manyforge: $(basename "$prefix"): the recorded configure answers lack $unanswered: finding them all on the target"
            answers=
        fi
    fi
    if [[ -n ${MANYFORGE_DERIVE_ANSWERS:-} || -z $answers ]]; then
        # configure as if native, in a copy: its test programs run on the target (QEMU).
        step "configure's checks that run a program, run on the target ($MANYFORGE_CROSS)"
        native_args=()
        for arg in "${configure_args[@]}"; do
            case $arg in --build=* | --host=* | --with-build-python=*) ;; *) native_args+=("$arg") ;; esac
        done
        mkdir "$work/answers" && unpack "$work/answers"
        (cd "$work/answers" && CONFIG_SITE=/dev/null ./configure -C "${native_args[@]}" "${nodist[@]}" >/dev/null) || {
            tail -n 30 "$work/answers/config.log" >&2
            echo "build-cpython.sh: configure did not run on the target; are QEMU's binfmt handlers registered?" >&2
            exit 1
        }
        python3 "$(dirname "${BASH_SOURCE[0]}")/configure-answers.py" derive "$work/answers/configure" "$work/answers/config.cache" > "$work/answers.json"
        rm -rf "$work/answers"
        if [[ -n ${MANYFORGE_DERIVE_ANSWERS:-} ]]; then
            cp -- "$work/answers.json" "$MANYFORGE_DERIVE_ANSWERS"
            step "configure answers written to $MANYFORGE_DERIVE_ANSWERS"
            exit 0
        fi
        echo "manyforge: $(basename "$prefix"): no configure answers recorded for this target: using the ones just found on it"
        answers=$work/answers.json
    fi
    python3 "$(dirname "${BASH_SOURCE[0]}")/configure-answers.py" site "$answers" > /opt/cross-bin/config.site
    export CONFIG_SITE=/opt/cross-bin/config.site
fi

step configure
./configure "${configure_args[@]}" "${nodist[@]}" >/dev/null
step "make -j$(nproc)"
make -j"$(nproc)" >/dev/null
step "make install"
make install >/dev/null

python=$(find "$prefix/bin" -maxdepth 1 -name 'python3.[0-9]*' ! -name '*-config' -type f | head -n1)
ln -sf "$(basename "$python")" "$prefix/bin/python3"
ln -sf "$(basename "$python")" "$prefix/bin/python"
step "strip, trim"
if [[ ${MANYFORGE_CROSS_SYSROOT:-/} != / ]]; then
    # The sysroot's search paths (cross-env.sh) were the build's, not a native twin's: they go,
    # and paths seen through the sysroot (from pkg-config) name the target's own root.
    { grep -rlF "$MANYFORGE_CROSS_SYSROOT/" "$prefix/lib" "$prefix/bin" || true; } | while IFS= read -r f; do
        if file "$f" | grep -q text; then
            sed -i -e "s| *$(literal "$CPPFLAGS")||g" -e "s| *$(literal "$LDFLAGS")||g" -e "s|$(literal "$MANYFORGE_CROSS_SYSROOT")/|/|g" "$f"
        fi
    done
fi

libdir=$(find "$prefix/lib" -maxdepth 1 -name 'python3.*' -type d | head -n1)
# The static libpython serves embedding, never a wheel; optimized bytecode serves only -O runs.
rm -f "$prefix"/lib/libpython*.a "$libdir"/config-*/libpython*.a
find "$libdir" -name '*.opt-[12].pyc' -delete
# The test suite goes; the `test` package's support code stays, as in pypa's images: projects'
# own test suites import test.support. (From 3.11 on, --disable-test-modules installs no test
# package at all: its support code comes from the source tree, byte-compiled like the rest.)
if [[ -d $libdir/test ]]; then
    find "$libdir/test" -mindepth 1 -maxdepth 1 ! -name __init__.py ! -name support -exec rm -rf {} +
else
    mkdir "$libdir/test"
    cp Lib/test/__init__.py "$libdir/test/"
    cp -R Lib/test/support "$libdir/test/support"
    # a cross build's own interpreter cannot run here: its native twin (same release) compiles
    if [[ -n ${MANYFORGE_CROSS:-} ]]; then compiler=python3; else compiler=$prefix/bin/python3; fi
    "$compiler" -m compileall -q "$libdir/test" >/dev/null
fi
find "$libdir" -depth -type d \( -name test -o -name tests -o -name idle_test \) \
    ! -path "$libdir/test" ! -path '*/site-packages/*' -exec rm -rf {} +
find "$prefix" -type f \( -name '*.so' -o -path "$prefix/bin/*" \) -print0 | xargs -0 file \
    | grep ': *ELF' | cut -d: -f1 | xargs -r strip --strip-unneeded

# A cross build cannot run what it built: the target's own stage checks it (check-cpython.py).
if [[ -z ${MANYFORGE_CROSS:-} ]]; then
    "$prefix/bin/python3" "$(dirname "${BASH_SOURCE[0]}")/check-cpython.py"
fi
