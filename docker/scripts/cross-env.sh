# shellcheck shell=bash
# Sourced by the from-source build scripts. Emulated builds get the build host's cross compiler
# of the same GCC at /cross (MANYFORGE_CROSS=host-triplet:target-triplet:gcc-version). Linked
# into PATH under the plain names, it is what configure records, so the installed sysconfig
# still says `gcc`.
if [[ -n ${MANYFORGE_CROSS:-} ]]; then
    IFS=: read -r host target gcc_version <<< "$MANYFORGE_CROSS"
    mkdir -p /lib64 /opt/cross-bin
    ln -sf "/cross/usr/lib/$host/ld-linux-x86-64.so.2" /lib64/ld-linux-x86-64.so.2
    for tool in gcc cpp; do
        ln -sf "/cross/usr/bin/$target-$tool-$gcc_version" "/opt/cross-bin/$tool"
    done
    ln -sf "/cross/usr/bin/$target-gcc-$gcc_version" /opt/cross-bin/cc
    for tool in ar ranlib as ld nm strip objcopy readelf; do
        ln -sf "/cross/usr/bin/$target-$tool" "/opt/cross-bin/$tool"
    done
    export PATH="/opt/cross-bin:$PATH" LD_LIBRARY_PATH="/cross/usr/lib/$host"
    echo "manyforge: compiling with the build host's $target-gcc-$gcc_version"
fi
