#!/usr/bin/env bash
# Make the installed toolchain build what the policy promises, whatever the distribution's
# defaults:
#
#   --march M      compilers that default to a newer -march (EL9's gcc: x86-64-v2, which
#                  auditwheel cannot detect in a wheel) get a wrapper in /usr/local/bin, ahead
#                  of the toolchain on PATH, adding -march=M (and -mtune=generic) unless the
#                  caller chose a -march itself.
#   --prefix DIR   a toolset's libstdc++.so linker script, INPUT ( system-lib nonshared-archive ),
#                  names the system library once more after the archive: with -Wl,--as-needed
#                  (meson's default) the first mention is dropped before the archive needs it.
set -euo pipefail

march='' prefix=''
while [[ $# -gt 0 ]]; do
    case $1 in
        --march) march=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        *) echo "fix-toolchain.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

default_march() {  # the -march the compiler proper gets (the last one on its command line)
    echo | "$@" -S -o /dev/null -v - 2>&1 | grep -E '/(cc1|cc1plus|f951) ' | grep -oE -- ' -march=[^ ]+' | tail -n1 | tr -d ' '
}

if [[ -n $march ]]; then
    bindir=$(dirname "$(command -v gcc)")
    found=$(default_march gcc -x c)
    if [[ $found != "-march=$march" ]]; then
        echo "manyforge: gcc defaults to ${found:-no -march}; wrapping the compilers in $bindir to default to -march=$march"
        mkdir -p /usr/local/bin
        for tool in "$bindir"/*; do
            name=$(basename "$tool")
            for driver in gcc g++ gfortran; do
                if [[ -f $bindir/$driver ]] && cmp -s "$tool" "$bindir/$driver"; then
                    cat > "/usr/local/bin/$name" <<WRAPPER
#!/bin/sh
# Written by manyforge: $bindir/$name defaults to ${found:-?}; the policy's baseline is -march=$march.
tune=-mtune=generic
for arg in "\$@"; do
    case \$arg in
        -march=*) exec $tool "\$@" ;;
        -mtune=*) tune= ;;
    esac
done
exec $tool -march=$march \${tune:+"\$tune"} "\$@"
WRAPPER
                    chmod 0755 "/usr/local/bin/$name"
                fi
            done
        done
        for check in "gcc -x c" "g++ -x c++" "gfortran -x f77"; do
            # shellcheck disable=SC2086 # word splitting of the compiler and language is intended
            got=$(PATH="/usr/local/bin:$PATH" default_march $check)
            if [[ $got != "-march=$march" ]]; then
                echo "fix-toolchain.sh: ${check%% *} still defaults to ${got:-no -march}" >&2
                exit 1
            fi
        done
    fi
fi

if [[ -n $prefix ]]; then
    while IFS= read -r script; do
        # Only a linker script of the form INPUT ( <shared library> -lstdc++_nonshared ).
        if grep -qE '^INPUT *\( *[^ ]+\.so\.[0-9]+ +-lstdc\+\+_nonshared *\)' "$script"; then
            sed -i -E 's/^INPUT *\( *([^ ]+\.so\.[0-9]+) +(-lstdc\+\+_nonshared) *\)/INPUT ( \1 \2 \1 )/' "$script"
            echo "manyforge: $script: $(grep '^INPUT' "$script")"
        fi
    done < <(find "$prefix" -name 'libstdc++.so' -type f)
fi
