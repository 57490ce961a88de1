#!/usr/bin/env bash
# Run apt-get against Debian suites other than the host's (e.g. trixie for docker-buildx,
# bullseye/sid for CPython sources) without touching the host's apt configuration.
# The mirror is the one the host already uses, read from its own apt sources, so no host
# name is written anywhere; MANYFORGE_DEBIAN_MIRROR overrides it.
#
#   debian-apt.sh STATE_DIR SUITE[,SUITE...] apt-get|apt-cache ARGS...
#   debian-apt.sh --print-mirror
#   debian-apt.sh --print-security-mirror   the host's mirror of Debian's security archive
#                                           (MANYFORGE_DEBIAN_SECURITY_MIRROR overrides it)
#
# MANYFORGE_APT_ARCHITECTURES=arm64,s390x indexes (and downloads) those dpkg architectures'
# packages instead of the host's (one STATE_DIR per set of architectures).
set -euo pipefail

if [[ ${1:-} == --print-security-mirror ]]; then
    # The URI of the host's sources that serve a <suite>-security suite (deb822, then one-line).
    security=${MANYFORGE_DEBIAN_SECURITY_MIRROR:-$(
        for file in /etc/apt/sources.list.d/*.sources; do
            [[ -f $file ]] || continue
            awk '
                /^[[:space:]]*$/ { if (uri != "" && sec) { print uri; exit } uri=""; sec=0; next }
                /^URIs:/ { uri=$2 }
                /^Suites:/ { for (i = 2; i <= NF; i++) if ($i ~ /-security$/) sec=1 }
                END { if (uri != "" && sec) print uri }
            ' "$file"
        done
        for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f $file ]] || continue
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i + 1) ~ /-security$/) print $i; break } }' "$file"
        done | head -n1
    )}
    security=$(printf '%s\n' "$security" | head -n1)
    if [[ -z $security ]]; then
        echo "error: no Debian security mirror in /etc/apt/sources* (a <suite>-security suite); set MANYFORGE_DEBIAN_SECURITY_MIRROR" >&2
        exit 1
    fi
    echo "$security"
    exit 0
elif [[ ${1:-} == --print-mirror ]]; then
    print_only=1
elif [[ $# -lt 4 ]] || [[ $3 != apt-get && $3 != apt-cache ]]; then
    echo "usage: $0 STATE_DIR SUITE[,SUITE...] apt-get|apt-cache ARGS..." >&2
    exit 2
fi
print_only=${print_only:-0}

host_mirror() {
    # deb822 sources first (Debian 12 default), then one-line sources.
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk '
            /^[[:space:]]*$/ { if (uri != "" && main) { print uri; exit } uri=""; main=0; next }
            /^URIs:/ { uri=$2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/ && $i !~ /-updates$/) main=1 }
            END { if (uri != "" && main) print uri }
        ' "$file" | head -n1
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk '$1 == "deb" && $3 !~ /-(security|updates)$/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$file"
    done
}

mirror=${MANYFORGE_DEBIAN_MIRROR:-$(host_mirror | grep -v -- '-security' | head -n1)}
if [[ -z $mirror ]]; then
    echo "error: no Debian mirror found in /etc/apt/sources*; set MANYFORGE_DEBIAN_MIRROR" >&2
    exit 1
fi

if [[ $print_only == 1 ]]; then
    echo "$mirror"
    exit 0
fi

state_dir=$1
IFS=, read -r -a suites <<< "$2"
tool=$3
shift 3
mkdir -p "$state_dir/lists/partial" "$state_dir/archives/partial"
{
    for suite in "${suites[@]}"; do
        printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' "$mirror" "$suite"
        printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' "$mirror" "$suite"
    done
} > "$state_dir/sources.list"

apt_opts=(
    -o "Dir::Etc::SourceList=$state_dir/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$state_dir/lists"
    -o "Dir::Cache::Archives=$state_dir/archives"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
)
if [[ -n ${MANYFORGE_APT_ARCHITECTURES:-} ]]; then
    IFS=, read -r -a architectures <<< "$MANYFORGE_APT_ARCHITECTURES"
    for architecture in "${architectures[@]}"; do
        if [[ ! $architecture =~ ^[a-z0-9]{1,20}$ ]]; then
            echo "error: MANYFORGE_APT_ARCHITECTURES: ${architecture:0:40} is not a dpkg architecture" >&2
            exit 2
        fi
        apt_opts+=(-o "APT::Architectures::=$architecture")
    done
fi
if [[ ! -f $state_dir/updated ]] || [[ -n $(find "$state_dir/updated" -mmin +360 2>/dev/null) ]]; then
    apt-get "${apt_opts[@]}" -qq update
    touch "$state_dir/updated"
fi
"$tool" "${apt_opts[@]}" "$@"
