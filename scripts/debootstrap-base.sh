#!/usr/bin/env bash
# Bootstrap a minimal Debian root from the distribution's signed archive (no registry)
# and write it as a tarball ready for `docker import`. Foreign architectures run their
# maintainer scripts through the host's QEMU binfmt handlers.
#
#   debootstrap-base.sh SUITE DEBIAN_ARCH OUTPUT.tar
#
# MANYFORGE_DEBOOTSTRAP_INCLUDE=pkg1,pkg2 adds packages (the policy dumps use it).
set -euo pipefail

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
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
printf 'deb %s %s main\n' "$mirror" "$suite" > "$root/etc/apt/sources.list"
tar --numeric-owner --xattrs -C "$root" -cf "$partial" .
mv "$partial" "$output"
