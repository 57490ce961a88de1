#!/usr/bin/env bash
# Cross builds: give a cross-compiled interpreter the frontend (pip, build, ...) that its native
# twin got from install-frontend.sh. The twin is the same release at the same prefix, built on
# the build host, so what that install added is valid as it is: pure-Python packages (byte code
# is the same on every architecture) and scripts naming PREFIX's own python. Only what the
# target's install lacks is copied, and an architecture-specific file among it is refused.
# Nothing runs under emulation.
#
#   copy-frontend.sh NATIVE_PREFIX PREFIX
set -euo pipefail

native=$1 prefix=$2
fail() { echo "copy-frontend.sh: $*" >&2; exit 1; }
is_elf() { [[ -f $1 && ! -L $1 && $(head -c4 "$1" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; }

shopt -s nullglob
sites=("$prefix"/lib/python3*/site-packages)
[[ ${#sites[@]} -eq 1 ]] || fail "expected one lib/python3*/site-packages under $prefix, found ${#sites[@]}"
site=${sites[0]#"$prefix"/}
[[ -d $native/$site ]] || fail "$native has no $site: not the same release as $prefix"

# Any ELF file (an extension module, a bundled program) is the build host's: refused.
while IFS= read -r -d '' file; do
    is_elf "$file" && fail "$file is compiled for the build host; the frontend must be pure Python"
done < <(find "$native/$site" -type f ! -name '*.py' ! -name '*.pyc' -print0)
packages=()
for entry in "$native/$site"/*; do
    [[ -e $prefix/$site/${entry##*/} ]] || packages+=("$entry")
done
scripts=()
for entry in "$native"/bin/*; do
    name=${entry##*/}
    [[ -e $prefix/bin/$name || -L $prefix/bin/$name ]] && continue
    is_elf "$entry" && fail "$entry is a program for the build host, not part of a frontend"
    scripts+=("$entry")
done
[[ ${#scripts[@]} -gt 0 ]] || fail "no frontend script in $native/bin that $prefix lacks (is the frontend installed there?)"

# Checked first, copied after: a refusal leaves the target as it was.
[[ ${#packages[@]} -gt 0 ]] && cp -a "${packages[@]}" "$prefix/$site/"
cp -a "${scripts[@]}" "$prefix/bin/"
echo "copy-frontend.sh: ${#packages[@]} entries of $site and ${#scripts[@]} script(s) from the native interpreter"
