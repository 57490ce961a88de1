# shellcheck shell=bash
# Sourced by the from-source build scripts. In a cross stage (a stage that runs on the build
# host's CPU, MANYFORGE_CROSS=<target triplet>) the target's libraries and headers are in
# MANYFORGE_CROSS_SYSROOT (the target's own build stage mounted at /sysroot, or / where the
# family installs them multiarch) and a native interpreter of the same version is at
# /opt/_internal/build-python. The target's
# compilers, MANYFORGE_CROSS_CC / _CXX (Debian's cross gcc, or clang with --target), are put
# on PATH as plain `gcc` and `g++`, and its binutils (prefix MANYFORGE_CROSS_TOOLS) as `ar`,
# `strip`, ...: configure records those names, so the installed sysconfig says `gcc` like a
# native build's. `cc` stays the build host's compiler, for tools a build runs on the host.
# shellcheck disable=SC2034 # read by the scripts that source this file
cross_configure_args=()

# Hardening with pypa's images' flags (build_utils.sh; we leave out its -g -O2 -Wall, which
# would trade CPython's -O3 for debug info): for the interpreters (in CPython's *_NODIST
# variables, so user extensions do not inherit it) and the from-source libraries linked into
# their modules. _FORTIFY_SOURCE does nothing on musl, which has no fortified headers.
harden_cflags="-fstack-protector-strong -Wformat -Werror=format-security"
harden_cppflags="-Wdate-time -D_FORTIFY_SOURCE=2"
harden_ldflags="-Wl,-Bsymbolic-functions -Wl,-z,relro -Wl,-z,now"
# A function, so that its own variables stay its own: the scripts that source this file have
# theirs (build-library.sh's `name` was once overwritten here).
manyforge_cross_env() {
    local native_triplet sysroot pair name real tool multiarch root
    native_triplet=$(cc -dumpmachine)
    export CC_FOR_BUILD=cc
    mkdir -p /opt/cross-bin
    sysroot=${MANYFORGE_CROSS_SYSROOT:-/}
    for pair in "gcc=${MANYFORGE_CROSS_CC:?}" "g++=${MANYFORGE_CROSS_CXX:?}" "cpp=${MANYFORGE_CROSS_CC} -E"; do
        name=${pair%%=*} real=${pair#*=}
        {
            echo '#!/bin/sh'
            # clang answers --print-multiarch with Debian's tuple where the family's own GCC
            # (RHEL, Alpine) prints nothing; CPython's configure compares it with its triplet.
            if [[ -n ${MANYFORGE_CROSS_NO_MULTIARCH:-} ]]; then
                # shellcheck disable=SC2016 # written for the wrapper, which expands it
                echo 'case "$1" in -print-multiarch|--print-multiarch) exit 0 ;; esac'
            fi
            if [[ $sysroot == / ]]; then
                printf 'exec %s "$@"\n' "$real"
            else
                printf 'exec %s --sysroot=%s "$@"\n' "$real" "$sysroot"
            fi
        } > "/opt/cross-bin/$name"
        chmod 0755 "/opt/cross-bin/$name"
    done
    # Test programs a configure runs on the target (build-cpython.sh, configure-answers.py)
    # find the target's loader and libraries in the sysroot.
    if [[ $sysroot != / ]]; then
        export QEMU_LD_PREFIX=$sysroot
    fi
    for tool in ar ranlib nm strip objcopy objdump readelf; do
        ln -sf "$(command -v "${MANYFORGE_CROSS_TOOLS:?}$tool")" "/opt/cross-bin/$tool"
    done
    # What configure cannot find out without running target code comes from the target:
    # build-cpython.sh writes configure's site file (configure-answers.py).
    export PATH="/opt/cross-bin:/opt/_internal/build-python/bin:$PATH"
    # readelf under its own name: CPython's configure refuses the host's plain `readelf`.
    READELF=$(command -v "${MANYFORGE_CROSS_TOOLS}readelf")
    export CC=gcc CXX=g++ AR=ar RANLIB=ranlib STRIP=strip READELF
    # The target's .pc files only: in the sysroot (their paths seen through it), or, with a
    # multiarch root (sysroot /), in the target's own library directory.
    multiarch=$(gcc -print-multiarch 2>/dev/null || true)
    root=${sysroot%/}
    if [[ -n $root ]]; then
        # CPython < 3.11 (setup.py) finds libraries only in directories it is told of.
        export CPPFLAGS="-I$root/usr/local/include -I$root/usr/include" LDFLAGS="-L$root/usr/local/lib -L$root/usr/lib64 -L$root/usr/lib"
        export PKG_CONFIG_SYSROOT_DIR=$root
        export PKG_CONFIG_LIBDIR=$root/usr/local/lib/pkgconfig:$root/usr/lib/${multiarch:-none}/pkgconfig:$root/usr/lib64/pkgconfig:$root/usr/lib/pkgconfig:$root/usr/share/pkgconfig
    else
        export PKG_CONFIG_LIBDIR=/usr/local/lib/pkgconfig:/usr/lib/${multiarch:?}/pkgconfig:/usr/share/pkgconfig
    fi
    # shellcheck disable=SC2034
    cross_configure_args=(--build="$native_triplet" --host="$MANYFORGE_CROSS")
    echo "manyforge: cross-compiling for $MANYFORGE_CROSS on $native_triplet with ${MANYFORGE_CROSS_CC}"
}

if [[ -n ${MANYFORGE_CROSS:-} ]]; then
    manyforge_cross_env
fi
