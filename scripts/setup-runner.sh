#!/usr/bin/env bash
# Prepare a GitHub-hosted Ubuntu runner to build and test images: it keeps the runner's own
# Docker engine and buildx (docker-ce, preinstalled) and adds only what a job needs and the
# runner lacks, from the runner's own Ubuntu archive. Our Debian 12 machines use
# scripts/setup-host.sh instead; each refuses the other's hosts.
#
#   setup-runner.sh --check                     say whether this host is a runner it sets up
#   setup-runner.sh host [--qemu ARCH] [--debootstrap] [--containerd-store]
#       --qemu ARCH         QEMU's binfmt handler for ARCH (fix-binary flag), for a target the
#                           runner's CPU does not run (qemu-user-static of the runner's Ubuntu)
#       --debootstrap       debootstrap and Debian's archive keyring, for Debian bases; the
#                           Debian mirror comes from MANYFORGE_DEBIAN_MIRROR (the workflow sets
#                           it from the repository variable DEBIAN_MIRROR), never from here
#       --containerd-store  switch the engine to containerd's image store, so that its own
#                           builder writes a registry cache and still sees local base images
#   setup-runner.sh login                       log in to the registry of $REGISTRY
#       ghcr.io with GITHUB_TOKEN (as $ACTOR); any other registry with $REGISTRY_USERNAME and
#       $REGISTRY_PASSWORD (secrets of the environment `release`). Credentials go to docker login on its input.
#
# MANYFORGE_OS_RELEASE: another os-release file (for the tests).
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

os_release=${MANYFORGE_OS_RELEASE:-/etc/os-release}
# A field of os-release, read (not sourced): KEY=value or KEY="value".
os_field() { [[ -r $os_release ]] || return 0; sed -n "s/^$1=//p" "$os_release" | head -n1 | tr -d "\"'"; }
os_id=$(os_field ID)
os_name=$(os_field PRETTY_NAME)

check_runner() {
    if [[ ${GITHUB_ACTIONS:-} != true ]]; then
        die "$0 sets up GitHub's hosted runners (GITHUB_ACTIONS=true); on a Debian 12 machine run scripts/setup-host.sh"
    fi
    if [[ $os_id != ubuntu ]]; then
        die "$0 sets up GitHub's Ubuntu runners; this one is ${os_name:-unknown (no $os_release)}"
    fi
}

# The arches of images.yaml and the binfmt handlers qemu-user-static registers for them.
qemu_handler() {
    case $1 in
        x86_64) echo qemu-x86_64 ;;
        i686) echo qemu-i386 ;;
        aarch64) echo qemu-aarch64 ;;
        armv7l) echo qemu-arm ;;
        ppc64le) echo qemu-ppc64le ;;
        s390x) echo qemu-s390x ;;
        riscv64) echo qemu-riscv64 ;;
        *) die "--qemu: unknown arch '${1:0:40}'; expected x86_64, i686, aarch64, armv7l, ppc64le, s390x or riscv64" ;;
    esac
}

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]} from the runner's Ubuntu archive"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -- "${missing[@]}" >/dev/null
}

wait_for_docker() {
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "the Docker engine did not answer within 60 s after its restart"
}

setup_host() {
    local qemu="" debootstrap=0 containerd=0
    while [[ $# -gt 0 ]]; do
        case $1 in
            --qemu) [[ $# -ge 2 ]] || die "--qemu needs an arch"; qemu=$2; shift 2 ;;
            --qemu=*) qemu=${1#--qemu=}; shift ;;
            --debootstrap) debootstrap=1; shift ;;
            --containerd-store) containerd=1; shift ;;
            *) die "unknown option '${1:0:40}'; see the head of $0" ;;
        esac
    done
    # Every option is checked before anything is looked at or installed.
    local handler=""
    if [[ -n $qemu ]]; then
        handler=$(qemu_handler "$qemu")
    fi
    if [[ $debootstrap == 1 ]]; then
        [[ -n ${MANYFORGE_DEBIAN_MIRROR:-} ]] || die "a Debian base needs a Debian mirror: set the repository variable DEBIAN_MIRROR (the runner's apt sources are Ubuntu's)"
        [[ $MANYFORGE_DEBIAN_MIRROR =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)*/?$ ]] \
            || die "DEBIAN_MIRROR: expected an http(s) URL of a Debian mirror (host and path only)"
        [[ -n ${MANYFORGE_DEBIAN_SECURITY_MIRROR:-} ]] || die "a Debian base installs its release's security updates: set the repository variable DEBIAN_SECURITY_MIRROR (a mirror of Debian's security archive)"
        [[ $MANYFORGE_DEBIAN_SECURITY_MIRROR =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)*/?$ ]] \
            || die "DEBIAN_SECURITY_MIRROR: expected an http(s) URL of a Debian security mirror (host and path only)"
    fi
    [[ $(id -u) -eq 0 ]] || die "$0 host must run as root (sudo): it installs packages"
    # The runner's engine and buildx are used as they are; never replaced.
    docker info >/dev/null 2>&1 || die "no Docker engine answers; GitHub's Ubuntu runners have one preinstalled"
    docker buildx version >/dev/null 2>&1 || die "docker buildx is missing; GitHub's Ubuntu runners have it preinstalled"
    apt_install pigz xz-utils ca-certificates
    if [[ -n $qemu ]]; then
        if ! grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$handler" 2>/dev/null; then
            # Ubuntu's qemu-user-static registers every handler with the fix-binary flag.
            apt_install qemu-user-static binfmt-support
            [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
            systemctl restart systemd-binfmt.service 2>/dev/null || update-binfmts --enable >/dev/null 2>&1 || true
        fi
        grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$handler" 2>/dev/null \
            || die "binfmt handler $handler is missing or lacks the fix-binary (F) flag after installing qemu-user-static"
        log "QEMU for $qemu: $handler registered with the fix-binary flag"
    fi
    if [[ $debootstrap == 1 ]]; then
        apt_install debootstrap debian-archive-keyring
    fi
    if [[ $containerd == 1 ]] && ! docker info --format '{{json .DriverStatus}}' | grep -q io.containerd.snapshotter; then
        log "switching the engine to containerd's image store"
        local config=/etc/docker/daemon.json
        python3 - "$config" <<'EOF'
import json, os, sys
path = sys.argv[1]
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
config.setdefault("features", {})["containerd-snapshotter"] = True
with open(path, "w") as f:
    json.dump(config, f, indent=2)
EOF
        systemctl restart docker
        wait_for_docker
        docker info --format '{{json .DriverStatus}}' | grep -q io.containerd.snapshotter \
            || die "the engine did not switch to containerd's image store"
    fi
    log "runner ready: $(docker version --format 'engine {{.Server.Version}}'), $(docker buildx version | cut -d' ' -f1,2)"
}

registry_login() {
    [[ -n ${REGISTRY:-} ]] || die "no registry: set the repository variable MANYFORGE_REGISTRY (e.g. ghcr.io/<owner>)"
    local host=${REGISTRY%%/*} user password
    if [[ $host == ghcr.io ]]; then
        user=${ACTOR:-} password=${GITHUB_TOKEN:-}
    else
        user=${REGISTRY_USERNAME:-} password=${REGISTRY_PASSWORD:-}
    fi
    [[ -n $user && -n $password ]] \
        || die "no credentials for $host: ghcr.io takes the workflow's token; any other registry the secrets REGISTRY_USERNAME and REGISTRY_PASSWORD (of the environment release)"
    printf '%s' "$password" | docker login --username "$user" --password-stdin -- "$host" >/dev/null
    log "logged in to $host as $user"
}

case ${1:-} in
    --check) check_runner; echo "runner: $0 sets up this host" ;;
    host) check_runner; shift; setup_host "$@" ;;
    login) check_runner; registry_login ;;
    *) die "usage: $0 --check | host [--qemu ARCH] [--debootstrap] [--containerd-store] | login" ;;
esac
