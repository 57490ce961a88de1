#!/usr/bin/env bash
# Lay out the image contract: /opt/python/<tag> for each interpreter, pythonX.Y on PATH,
# the tools and manylinux-interpreters on PATH, and a manifest of what the image carries.
#
#   finalize.sh POLICY ARCH TOOLS_TAG TAG=PREFIX...
set -euo pipefail

policy=$1 arch=$2 tools_tag=$3
shift 3

# Libraries a user's before-all step installs under /usr/local are searched by the loader and
# found by `auditwheel repair` (it reads ld.so.conf), on every glibc family as in pypa's images.
if [[ $policy == manylinux* ]]; then
    printf '/usr/local/lib\n/usr/local/lib64\n' > /etc/ld.so.conf.d/00-manylinux.conf
    ldconfig
else
    # Alpine's root and new users log in to ash; pypa's musllinux images give them bash.
    chsh -s /bin/bash root
    useradd -D -s /bin/bash >/dev/null
fi

mkdir -p /opt/python
manifest=/opt/_internal/manifest.txt
printf 'policy %s\narch %s\n' "$policy" "$arch" > "$manifest"
for pair in "$@"; do
    tag=${pair%%=*} prefix=${pair#*=}
    ln -sfn "$prefix" "/opt/python/$tag"
    python=$(basename "$(find "$prefix/bin" -maxdepth 1 -name 'python3.[0-9]*' ! -name '*-config' -type f | head -n1)")
    ln -sf "$prefix/bin/$python" "/usr/local/bin/$python"
    "/opt/python/$tag/bin/python" -c 'import sys' # every interpreter must start
    printf 'interpreter %s %s\n' "$tag" "$prefix" >> "$manifest"
done

for tool in /opt/_internal/tools/bin/*; do
    name=$(basename "$tool")
    case $name in
        python* | pip | pip3 | pip3.* | activate* | Activate*) ;;
        *) ln -sf "$tool" "/usr/local/bin/$name" ;;
    esac
done
# SSL_CERT_FILE names certifi's bundle, as in pypa's images: OpenSSL, curl and git trust the
# same roots as pip, whatever the release's own store holds.
ln -sf "$(/opt/_internal/tools/bin/python -c 'import certifi; print(certifi.where())')" /opt/_internal/certs.pem
test -s /opt/_internal/certs.pem
# pypa's command line, run by the tools interpreter (standard library only).
printf '#!/bin/sh\nexec /opt/python/%s/bin/python /opt/_internal/bin/manylinux-interpreters.py "$@"\n' "$tools_tag" \
    > /usr/local/bin/manylinux-interpreters
chmod 0755 /usr/local/bin/manylinux-interpreters /usr/local/bin/manyforge-entrypoint
manylinux-interpreters list --installed > /dev/null
mkdir -p "$PIPX_HOME" "$PIPX_MAN_DIR"
