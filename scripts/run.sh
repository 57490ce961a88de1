#!/usr/bin/env bash
# The one entry point for a fresh machine: set up the host (Docker engine, buildx, QEMU,
# debootstrap) and the project's Python environment, then run an invoke task.
#
#   scripts/run.sh build      build the default image (manylinux_2_36 x86_64 here)
#   scripts/run.sh test       run the whole test suite
#   scripts/run.sh --list     every task
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MANYFORGE_VENV:-$root/.venv}

if [[ $(id -u) -eq 0 ]]; then
    "$root/scripts/setup-host.sh"
else
    sudo "$root/scripts/setup-host.sh"
fi

if [[ ! -x $venv/bin/invoke ]] || [[ $root/pyproject.toml -nt $venv/.installed ]] \
    || [[ $root/constraints.txt -nt $venv/.installed ]]; then
    echo "==> preparing the Python environment in $venv" >&2
    python3 -m venv "$venv"
    # constraints.txt pins every dependency (refresh it with `invoke constraints`).
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$root/constraints.txt" -e "${root}[test]"
    touch "$venv/.installed"
fi

export PATH="$venv/bin:$PATH"
cd "$root"
exec "$venv/bin/invoke" "$@"
