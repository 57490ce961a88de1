#!/usr/bin/env bash
# Install an interpreter's frontend (pip, build, packaging, pyproject-hooks and what its Python
# version needs) offline from the locked wheels in DIR; requirements.txt there pins each by sha256.
#
#   install-frontend.sh PYTHON DIR
set -euo pipefail

python=$1 dir=$2
pip_wheel=$(find "$dir" -maxdepth 1 -name 'pip-*.whl' | head -n1)
if [[ -z $pip_wheel ]]; then
    echo "install-frontend.sh: no pip wheel in $dir" >&2
    exit 1
fi
# A wheel is runnable as a zip application: pip installs itself and the rest from the lock.
"$python" "$pip_wheel/pip" install --quiet --no-index --no-cache-dir --disable-pip-version-check \
    --find-links "$dir" --require-hashes -r "$dir/requirements.txt"
bindir=$(dirname "$python")
ln -sf pip3 "$bindir/pip"
"$python" -m build --version
