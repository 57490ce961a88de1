#!/bin/bash
# Build one tool the base packages older than pypa's images carry (images.yaml source_tools),
# from its sha256-verified source file, into DESTDIR/usr/local; or unpack git-lfs's release
# binary there. What is installed is also copied into / so that the next tool of the same
# stage builds with it (automake with the new autoconf, Tk with Tcl, git with curl).
#
#   build-tool.sh NAME SOURCE-FILE DESTDIR
#
# NAME: libxcrypt, curl, git, autoconf, automake, libtool, tcl, tk, git-lfs. curl is built for git only:
# static, with the interpreters' from-source OpenSSL, in a prefix of the stage (never shipped).
# With MANYFORGE_CROSS set (a cross stage; /build/cross-env.sh), git is cross-compiled for that
# target with its compiler and the target's development packages (Debian multiarch).
set -euo pipefail
name=${1:?}
if [[ -n ${MANYFORGE_CROSS:-} ]]; then
    [[ $name == git ]] || { echo "build-tool.sh: only git is cross-compiled, not $name" >&2; exit 1; }
    # shellcheck source=docker/scripts/cross-env.sh
    source "$(dirname "${BASH_SOURCE[0]}")/cross-env.sh"
fi

name=$1 source=$2 destdir=$3
work=$(mktemp -d)
jobs=$(nproc)

# The hardening of pypa's builds (and of ours for CPython): fortified calls, full RELRO.
cppflags="-Wdate-time -D_FORTIFY_SOURCE=2"
cflags="-O2 -fstack-protector-strong -Wformat -Werror=format-security"
ldflags="-Wl,-z,relro -Wl,-z,now"
curl_prefix=/opt/_internal/curl-static

unpack() {
    tar -xf "$source" -C "$work"
    local top
    top=$(find "$work" -mindepth 1 -maxdepth 1 -type d)
    [ "$(printf '%s\n' "$top" | wc -l)" = 1 ] || { echo "build-tool.sh: $source has more than one top directory" >&2; exit 1; }
    cd "$top"
}

standard_install() {  # configure, make, install into DESTDIR; extra arguments go to configure
    ./configure --prefix=/usr/local "$@" CPPFLAGS="$cppflags" CFLAGS="$cflags" LDFLAGS="$ldflags" >/dev/null
    make -j"$jobs" >/dev/null
    make install DESTDIR="$destdir" >/dev/null
}

glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null || true)  # "glibc 2.17"; nothing on musl
glibc=${glibc#glibc }
glibc_before_2_25() {  # getrandom() came with glibc 2.25 (CentOS 7 has 2.17)
    [ -n "$glibc" ] && [ "$(printf '%s\n2.25\n' "$glibc" | sort -V | head -1)" != 2.25 ]
}

case "$name" in
    curl)
        unpack
        PKG_CONFIG_PATH=/usr/local/lib/pkgconfig ./configure --prefix="$curl_prefix" --disable-shared --enable-static --with-openssl=/usr/local \
            --with-zlib --without-libpsl --without-brotli --without-zstd --without-libidn2 --without-nghttp2 \
            --without-libssh2 --without-librtmp --disable-ldap --disable-ldaps --disable-manual \
            CPPFLAGS="$cppflags" CFLAGS="$cflags" LDFLAGS="$ldflags" LIBS="-ldl -pthread" >/dev/null
        make -j"$jobs" >/dev/null
        make install >/dev/null
        "$curl_prefix/bin/curl" --version
        ;;
    git)
        unpack
        # NO_RUST: git 2.55 builds parts in Rust by default (Cargo), optional until git 3.0.
        # sysconfdir=/etc: the system config every git of the image reads (a prefix of /usr/local
        # would make it /usr/local/etc/gitconfig, missing the filters `git lfs install --system`
        # and the distribution's git-lfs package write to /etc/gitconfig).
        args=(prefix=/usr/local sysconfdir=/etc NO_GETTEXT=1 NO_TCLTK=1 NO_OPENSSL=1 NO_RUST=1 INSTALL_SYMLINKS=1 INSTALL_STRIP=-s)
        if [ -x "$curl_prefix/bin/curl-config" ]; then
            # The static curl above (the release's is too old for git): linked in, with OpenSSL.
            args+=(CURLDIR="$curl_prefix" CURL_CONFIG="$curl_prefix/bin/curl-config"
                   "CURL_LDFLAGS=$("$curl_prefix/bin/curl-config" --static-libs)")
        fi
        if [ -z "$glibc" ]; then
            args+=(NO_REGEX=NeedsStartEnd)  # musl's regcomp lacks REG_STARTEND
        fi
        if [[ -n ${MANYFORGE_CROSS:-} ]]; then
            # git's Makefile names its own cc and ar: the target's, from cross-env.sh. The build
            # host's curl-config would describe the host's libcurl: the target's is linked by
            # name, and `git version --build-options` names the target's CPU.
            # The CPU as `uname -m` names it on the target, which is what a native build records.
            case ${MANYFORGE_CROSS%%-*} in
                powerpc64le) cpu=ppc64le ;;
                arm) cpu=armv7l ;;
                *) cpu=${MANYFORGE_CROSS%%-*} ;;
            esac
            args+=(CC="$CC" AR="$AR" STRIP="$STRIP" CURL_LDFLAGS=-lcurl CURL_CONFIG=false USE_CURL_FOR_IMAP_SEND=YesPlease "HOST_CPU=$cpu")
        fi
        if glibc_before_2_25; then
            args+=(CSPRNG_METHOD=urandom NO_UNCOMPRESS2=1)  # CentOS 7: no getrandom(), zlib 1.2.7
        else
            args+=(CSPRNG_METHOD=getrandom)
        fi
        make -j"$jobs" "${args[@]}" CPPFLAGS="$cppflags" CFLAGS="$cflags" LDFLAGS="$ldflags" all >/dev/null
        make "${args[@]}" CPPFLAGS="$cppflags" CFLAGS="$cflags" LDFLAGS="$ldflags" DESTDIR="$destdir" install >/dev/null
        ;;
    libxcrypt)
        # Into / only (the runtime stage): it takes the place of the release's libcrypt.
        [ "$destdir" = / ] || { echo "build-tool.sh: libxcrypt replaces the release's libcrypt: DESTDIR must be /" >&2; exit 1; }
        unpack
        # libcrypt.so.2, crypt.h and libcrypt.so for what is built here: the current API only.
        standard_install --disable-obsolete-api --enable-hashes=all --disable-werror
        # libcrypt.so.1 for the release's own programs, linked against glibc's: its obsolete API
        # under glibc's symbol versions only. The version map is edited so that no XCRYPT_*
        # version node is defined and OW_CRYPT_1.0 chains to nothing.
        make distclean >/dev/null
        sed -E -i -e 's/XCRYPT_[0-9][0-9.]*/-/g' -e 's/^(%chain[[:space:]]+OW_CRYPT_1\.0)[[:space:]].*$/\1/' lib/libcrypt.map.in
        compat=$work/compat
        ./configure --prefix=/usr/local --disable-xcrypt-compat-files --enable-obsolete-api=glibc --enable-hashes=all \
            --disable-werror CPPFLAGS="$cppflags" CFLAGS="$cflags" LDFLAGS="$ldflags" >/dev/null
        make -j"$jobs" >/dev/null
        make install DESTDIR="$compat" >/dev/null
        cp -P "$compat"/usr/local/lib/libcrypt.so.1* /usr/local/lib/
        # The release's libcrypt goes: header, static and shared libraries (glibc's libcrypt-2.17.so).
        rm -f /usr/include/crypt.h
        find /lib /lib64 /usr/lib /usr/lib64 -maxdepth 1 \( -name libcrypt.a -o -name libcrypt.so -o -name 'libcrypt.so.*' -o -name 'libcrypt-2.*.so' \) -delete
        ldconfig
        # The loader now finds both in /usr/local/lib (00-manylinux.conf), nothing of glibc's.
        [ "$(ldconfig -p | grep -c 'libcrypt\.so\.[12] .*=> /usr/local/lib/')" = 2 ] || { ldconfig -p | grep libcrypt >&2; exit 1; }
        if ldconfig -p | grep 'libcrypt\.so' | grep -v '=> /usr/local/lib/' >&2; then
            echo "build-tool.sh: the release's libcrypt is still in the loader's cache" >&2
            exit 1
        fi
        ;;
    autoconf | libtool)
        unpack
        standard_install
        ;;
    automake)
        system_aclocal=$(aclocal --print-ac-dir 2>/dev/null || true)
        unpack
        standard_install
        # The release's macros (pkg.m4, gettext's, ...) stay visible to the new aclocal.
        if [ -n "$system_aclocal" ]; then
            mkdir -p "$destdir/usr/local/share/aclocal"
            echo "$system_aclocal" >> "$destdir/usr/local/share/aclocal/dirlist"
        fi
        ;;
    tcl | tk)
        unpack
        cd unix
        # Manual pages (Tcl's default: /usr/local/man, a link on some releases) are left out.
        if [ "$name" = tk ]; then
            standard_install --mandir=/usr/local/share/man --with-tcl=/usr/local/lib
        else
            standard_install --mandir=/usr/local/share/man
        fi
        # The stub libraries stay: tcl.pc and tk.pc name them, and tkinter's link reads those.
        rm -rf "$destdir/usr/local/share/man"
        ;;
    git-lfs)
        mkdir "$work/lfs"
        tar -xzf "$source" -C "$work/lfs" --strip-components=1
        install -D -m 0755 "$work/lfs/git-lfs" "$destdir/usr/local/bin/git-lfs"
        if [ "$destdir" = / ]; then
            git-lfs install --system --skip-repo  # the filters for every user, as the release's install.sh sets them for one
        fi
        ;;
    *)
        echo "build-tool.sh: no recipe for $name" >&2
        exit 1
        ;;
esac

cd /
rm -rf "$work"
if [ "$name" != curl ] && [ "$destdir" != / ]; then
    # Strip what is ELF (strip refuses, and leaves alone, anything else).
    find "$destdir/usr/local" -type f \( -perm -u+x -o -name '*.so*' \) -exec strip --strip-unneeded {} + 2>/dev/null || true
    cp -a "$destdir/usr/local/." /usr/local/
fi
hash -r
case "$name" in
    curl) ;;
    libxcrypt) ls -l /usr/local/lib/libcrypt.so.[12] ;;
    git)
        if [[ -n ${MANYFORGE_CROSS:-} ]]; then
            file -L /usr/local/bin/git  # the target's binary: not run here (no QEMU in this stage)
        else
            git --version
        fi
        ;;
    autoconf) autoconf --version | head -1 ;;
    automake) automake --version | head -1 ;;
    libtool) libtoolize --version | head -1 ;;
    tcl) echo 'puts [info patchlevel]' | /usr/local/bin/tclsh8.6 ;;
    tk) test -e /usr/local/lib/libtk8.6.so ;;
    git-lfs) /usr/local/bin/git-lfs version ;;
esac
