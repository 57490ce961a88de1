#!/usr/bin/env bash
# Prepare a Debian 12 host to build and test images: Docker engine, buildx plugin,
# QEMU user emulation with binfmt handlers, debootstrap, linters, pigz (publish compresses
# image layers with it on every core, as one gzip stream each). Safe to run again:
# every step checks first and only does what is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state_dir=${MANYFORGE_STATE_DIR:-/var/cache/manyforge}
plugin_dir=/usr/local/lib/docker/cli-plugins
log() { printf '==> %s\n' "$*" >&2; }

# Debian 12 only: everything below installs Debian 12's packages and Debian trixie's release
# tools into it. Anywhere else it would mix distributions (on GitHub's Ubuntu runners it would
# put docker.io over their docker-ce and ask Ubuntu's mirror for Debian suites), so it refuses.
# `--check` only says whether this host is one it sets up. MANYFORGE_OS_RELEASE: for the tests.
os_release=${MANYFORGE_OS_RELEASE:-/etc/os-release}
# A field of os-release, read (not sourced): KEY=value or KEY="value".
os_field() { [[ -r $os_release ]] || return 0; sed -n "s/^$1=//p" "$os_release" | head -n1 | tr -d "\"'"; }
os_id=$(os_field ID)
os_version=$(os_field VERSION_ID)
os_name=$(os_field PRETTY_NAME)
if [[ $os_id != debian || $os_version != 12 ]]; then
    echo "error: $0 sets up Debian 12 hosts; this one is ${os_name:-unknown (no $os_release)}." >&2
    if [[ ${GITHUB_ACTIONS:-} == true ]]; then
        echo "error: on a GitHub runner, run scripts/setup-runner.sh: it uses the runner's own Docker and buildx." >&2
    else
        echo "error: install Docker, buildx, QEMU's binfmt handlers (fix-binary flag) and debootstrap yourself, or use a Debian 12 machine." >&2
    fi
    exit 1
fi
if [[ ${1:-} == --check ]]; then
    echo "debian12: $0 sets up this host"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "error: $0 must run as root (it installs packages and starts dockerd)" >&2
    exit 1
fi

packages=(docker.io qemu-user-static binfmt-support debootstrap shellcheck xz-utils ca-certificates pigz podman)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian 12 has no buildx package; the one from the next release runs against its engine.
if ! docker buildx version >/dev/null 2>&1; then
    log "installing docker-buildx from Debian trixie"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && "$here/debian-apt.sh" "$state_dir/apt-trixie" trixie apt-get download -qq docker-buildx 2>/dev/null)
    dpkg-deb -x "$work"/docker-buildx_*.deb "$work/root"
    install -D -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-buildx" "$plugin_dir/docker-buildx"
fi

# Release tools from Debian trixie, static Go programs that run on Debian 12 as they are:
# cosign (signatures, attestations), oras (registry reads), docker-registry (the tests' registry).
release_tools=()
for tool in cosign oras docker-registry; do
    command -v "$tool" >/dev/null 2>&1 || release_tools+=("$tool")
done
if [[ ${#release_tools[@]} -gt 0 ]]; then
    log "installing ${release_tools[*]} from Debian trixie"
    work=$(mktemp -d)
    (cd "$work" && "$here/debian-apt.sh" "$state_dir/apt-trixie" trixie apt-get download -qq "${release_tools[@]}" 2>/dev/null)
    for tool in "${release_tools[@]}"; do
        dpkg-deb -x "$work/${tool}"_*.deb "$work/root-$tool"
        install -m 0755 "$work/root-$tool/usr/bin/$tool" "/usr/local/bin/$tool"
    done
    rm -rf "$work"
fi

# binfmt handlers: the fix-binary flag lets containers run foreign binaries without
# QEMU inside them.
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-s390x ]]; then
    log "registering QEMU binfmt handlers"
    update-binfmts --enable >/dev/null 2>&1 || true
    for fmt in /usr/share/binfmts/qemu-*; do
        update-binfmts --import "$(basename "$fmt")" >/dev/null 2>&1 || true
    done
fi
if ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-s390x 2>/dev/null; then
    echo "error: binfmt handler qemu-s390x is missing or lacks the fix-binary (F) flag" >&2
    exit 1
fi

if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/manyforge-dockerd.log)"
    nohup dockerd >/var/log/manyforge-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "error: dockerd did not start; see /var/log/manyforge-dockerd.log" >&2; exit 1; }
fi

log "host ready: $(docker version --format 'engine {{.Server.Version}}'), $(docker buildx version | cut -d' ' -f1,2)"
