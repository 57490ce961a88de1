#!/usr/bin/env bash
# Bootstrap a minimal Debian root from the distribution's signed archive (no registry)
# and write it as a tarball ready for `docker import`. Foreign architectures run their
# maintainer scripts through the host's QEMU binfmt handlers.
#
#   debootstrap-base.sh SUITE DEBIAN_ARCH OUTPUT.tar
#   debootstrap-base.sh --pack ROOT OUTPUT.tar   (for the tests) normalize ROOT in place and
#                                                pack it at $SOURCE_DATE_EPOCH as above
#
# MANYFORGE_DEBOOTSTRAP_INCLUDE=pkg1,pkg2 adds packages (the policy dumps use it).
set -euo pipefail

# The same suite's signed Release gives the same tarball, byte for byte, in every job and on
# every machine: the image made of it then has the same digest, so the stages built on it hit
# the registry cache of another job instead of being built again. Its time is the Release's
# Date (SOURCE_DATE_EPOCH overrides it); what debootstrap writes that depends on the moment
# or the machine is removed (ldconfig's aux-cache of inodes and times, backup copies, the
# remaining logs), set to that time (the days of the last password change in /etc/shadow) or
# emptied (the host's /etc/hostname and /etc/resolv.conf, which debootstrap copies; a container
# gets its own of both from the engine).
pack_root() {
    local root=$1 epoch=$2 output=$3 shadow
    [[ $epoch =~ ^[0-9]{1,12}$ ]] || { echo "SOURCE_DATE_EPOCH: expected seconds since 1970, got '${epoch:0:40}'" >&2; exit 2; }
    rm -f "$root/etc/hostname" "$root/etc/resolv.conf"  # never written through a link to the host's
    : > "$root/etc/hostname"
    : > "$root/etc/resolv.conf"
    rm -rf "$root"/var/cache/ldconfig/aux-cache "$root"/var/log/apt/* "$root"/var/lib/dpkg/*-old \
        "$root"/var/cache/debconf/*-old "$root"/etc/{passwd,group,shadow,gshadow}-
    shadow=$root/etc/shadow
    if [[ -f $shadow && ! -L $shadow ]]; then
        awk -v days=$((epoch / 86400)) 'BEGIN { FS = OFS = ":" } $3 != "" { $3 = days } { print }' "$shadow" > "$shadow.new"
        chmod --reference="$shadow" "$shadow.new"
        chown --reference="$shadow" "$shadow.new"
        mv "$shadow.new" "$shadow"
    fi
    # Sorted names, one time for every file, numeric owners, no access or change times.
    tar --sort=name --mtime="@$epoch" --numeric-owner --xattrs --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$root" -cf "$output.partial" .
    mv "$output.partial" "$output"
}

if [[ ${1:-} == --pack && $# -eq 3 ]]; then
    pack_root "$2" "${SOURCE_DATE_EPOCH:-}" "$3"
    exit 0
fi
if [[ $# -ne 3 ]]; then
    echo "usage: $0 SUITE DEBIAN_ARCH OUTPUT.tar" >&2
    exit 2
fi
suite=$1 arch=$2 output=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mirror=${MANYFORGE_DEBIAN_MIRROR:-$("$here/debian-apt.sh" --print-mirror)}

root=$(mktemp -d "${TMPDIR:-/tmp}/manyforge-root.XXXXXX")
partial="$output.partial"
cleanup() { rm -rf "$root" "$partial"; }
trap cleanup EXIT

# The keyring makes debootstrap verify the Release file's signature and every
# package's hash against it.
include=()
if [[ -n ${MANYFORGE_DEBOOTSTRAP_INCLUDE:-} ]]; then
    include=(--include="$MANYFORGE_DEBOOTSTRAP_INCLUDE")
fi
debootstrap --variant=minbase --arch="$arch" "${include[@]}" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$suite" "$root" "$mirror" >&2

# Provenance for the image's SBOM: the signed Release index debootstrap verified.
release=$(find "$root/var/lib/apt/lists" -maxdepth 1 -name '*_InRelease' | head -n1)
if [[ -n $release ]]; then
    mkdir -p "$root/usr/share/manyforge"
    printf '{"suite": "%s", "arch": "%s", "inrelease_sha256": "%s", "release_date": "%s"}\n' \
        "$suite" "$arch" "$(sha256sum "$release" | cut -d' ' -f1)" \
        "$(sed -n 's/^Date: //p' "$release" | head -n1)" > "$root/usr/share/manyforge/base.json"
fi
# The tarball's time (below): the Release's Date, unless SOURCE_DATE_EPOCH is given.
if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
    epoch=$SOURCE_DATE_EPOCH
elif [[ -n $release ]]; then
    epoch=$(date -u -d "$(sed -n 's/^Date: //p' "$release" | head -n1)" +%s)
else
    epoch=0
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
printf 'deb %s %s main\n' "$mirror" "$suite" > "$root/etc/apt/sources.list"

pack_root "$root" "$epoch" "$output"
