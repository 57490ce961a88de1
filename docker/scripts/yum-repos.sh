#!/usr/bin/env bash
# CentOS 7 is past its end of life: its mirror network is gone and every repository lives on
# in the vault. Point every repo file there, make yum fail on a package it cannot find (by
# default it skips missing names silently), then add the toolchain's repository: a repo file
# where one is given (arches Software Collections never built for), else SCL's release
# package, whose repo files need the same treatment.
#
#   yum-repos.sh MIRROR ARCH [REPO-FILE-URL]
set -euo pipefail

mirror=$1 arch=$2 repo_file=${3:-}

to_vault() {
    sed -i -e 's/^enabled=1/enabled=0/' /etc/yum/pluginconf.d/fastestmirror.conf 2>/dev/null || true
    sed -i -e 's/^mirrorlist=/#mirrorlist=/' \
        -e "s|^#* *baseurl=http://mirror.centos.org|baseurl=$mirror|" /etc/yum.repos.d/*.repo
    # The vault keeps aarch64 and ppc64le under altarch/ (i386's repo files already say so).
    if [[ $arch == aarch64 || $arch == ppc64le ]]; then
        sed -i -e "s|$mirror/centos/7/|$mirror/altarch/7/|" /etc/yum.repos.d/*.repo
    fi
}

to_vault
grep -q '^skip_missing_names_on_install' /etc/yum.conf \
    || echo 'skip_missing_names_on_install=False' >> /etc/yum.conf
if [[ -n $repo_file ]]; then
    curl -fsSL --retry 3 -o "/etc/yum.repos.d/$(basename "$repo_file")" "$repo_file"
else
    yum install -y -q centos-release-scl-rh
    to_vault
fi
yum clean all -q
rm -rf /var/cache/yum
