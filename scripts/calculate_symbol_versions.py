#!/usr/bin/env python3
"""Dump the C library version and the symbol versions each whitelisted library defines.

Runs with whatever Python the image or root has (standard library only, Python 3.6+), or with
the host's Python against a distribution root: `calculate_symbol_versions.py --root DIR`.
Reads the ELF `.gnu.version_d` section of each library directly, so it works for any
architecture's root without executing foreign code (except musl's loader, which prints its
version and runs under QEMU when the root is foreign).

Output (JSON on stdout):
  {"libc": {"name": "glibc", "version": "2.36"}, "arch": "x86_64",
   "libraries": {"libc.so.6": {"GLIBC": ["2.2.5", ...]}, "libstdc++.so.6": {"GLIBCXX": [...], ...}}}
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys

SHT_GNU_VERDEF = 0x6FFFFFFD
VER_FLG_BASE = 0x1
EM_ARCH = {3: "i686", 62: "x86_64", 183: "aarch64", 21: "ppc64le", 22: "s390x", 40: "armv7l", 243: "riscv64"}
# Libraries a wheel may assume on a manylinux/musllinux system (the union of the policies).
DEFAULT_LIBRARIES = [
    "libc.so.6", "libm.so.6", "libmvec.so.1", "libanl.so.1", "libatomic.so.1", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libresolv.so.2", "libnsl.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1", "libexpat.so.1",
    "libX11.so.6", "libXext.so.6", "libXrender.so.1", "libICE.so.6", "libSM.so.6", "libGL.so.1",
    "libgobject-2.0.so.0", "libgthread-2.0.so.0", "libglib-2.0.so.0",
]  # fmt: skip
LIB_DIRS = ["lib64", "lib", "usr/lib64", "usr/lib"]


class ElfError(Exception):
    pass


def read_verdef(path):
    """Version names defined by an ELF shared object, and its machine."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF":
        raise ElfError(path + ": not an ELF file")
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(endian + "H", data, 18)[0]
    if is64:
        shoff, = struct.unpack_from(endian + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, 0x3A)
        sh_fmt = endian + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(endian + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, 0x2E)
        sh_fmt = endian + "IIIIIIIIII"
    sections = [struct.unpack_from(sh_fmt, data, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for sh in sections:
        sh_type, sh_offset, sh_link, sh_info = sh[1], sh[4], sh[6], sh[7]
        if sh_type != SHT_GNU_VERDEF:
            continue
        strtab_offset = sections[sh_link][4]
        offset = sh_offset
        for _ in range(sh_info):
            _version, flags, _ndx, count, _hash, aux, nxt = struct.unpack_from(endian + "HHHHIII", data, offset)
            if count and not flags & VER_FLG_BASE:
                name_offset, = struct.unpack_from(endian + "I", data, offset + aux)
                start = strtab_offset + name_offset
                names.add(data[start:data.index(b"\0", start)].decode())
            if not nxt:
                break
            offset += nxt
    return names, EM_ARCH.get(machine, "machine-%d" % machine)


def group_versions(names):
    """{'GLIBC_2.2.5', 'CXXABI_TM_1'} -> {'GLIBC': ['2.2.5'], 'CXXABI': ['TM_1']}, numbers in
    numeric order; private versions are not part of any ABI and are left out."""
    groups = {}
    for name in names:
        m = re.match(r"^([A-Z]+)_(.+)$", name)
        if m and m.group(2) != "PRIVATE":
            groups.setdefault(m.group(1), []).append(m.group(2))
    return {prefix: sorted(set(vs), key=version_key) for prefix, vs in sorted(groups.items())}


def version_key(version):
    """Numeric versions in numeric order, then named ones (FLOAT128, TM_1) alphabetically."""
    if re.match(r"^\d+(\.\d+)*$", version):
        return (0, [int(x) for x in version.split(".")], "")
    return (1, [], version)


def find_library(root, name):
    for base in LIB_DIRS:
        top = os.path.join(root, base)
        if not os.path.isdir(top):
            continue
        candidates = [os.path.join(top, name)]
        candidates += [os.path.join(top, sub, name) for sub in sorted(os.listdir(top)) if "-linux-" in sub]
        for candidate in candidates:
            if os.path.exists(candidate):
                return os.path.realpath(candidate) if root == "/" else resolve_in_root(root, candidate)
    return None


def resolve_in_root(root, path):
    """Follow symlinks as if `root` were `/`."""
    for _ in range(40):
        if not os.path.islink(path):
            return path
        target = os.readlink(path)
        path = os.path.join(root, target.lstrip("/")) if target.startswith("/") else os.path.join(os.path.dirname(path), target)
    raise ElfError(path + ": too many symbolic links")


def detect_libc(root):
    glibc = find_library(root, "libc.so.6")
    if glibc:
        with open(glibc, "rb") as fh:
            m = re.search(rb"release version (\d+\.\d+)", fh.read())
        if m:
            return {"name": "glibc", "version": m.group(1).decode()}
    for base in ("lib", "usr/lib"):
        top = os.path.join(root, base)
        loaders = sorted(f for f in os.listdir(top) if f.startswith("ld-musl-")) if os.path.isdir(top) else []
        if loaders:
            loader = os.path.join(top, loaders[0])
            out = subprocess.run([loader], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
            m = re.search(rb"^Version (\S+)", out.stderr, re.M)
            if m:
                return {"name": "musl", "version": m.group(1).decode(), "loader": loaders[0]}
    raise ElfError("no glibc libc.so.6 or musl loader found under " + root)


def dump(root, libraries):
    libc = detect_libc(root)
    result = {"libc": libc, "arch": None, "libraries": {}}
    for name in libraries:
        path = find_library(root, name)
        if path is None:
            continue
        names, arch = read_verdef(path)
        result["arch"] = result["arch"] or arch
        result["libraries"][name] = group_versions(names)
    if result["arch"] is None and libc["name"] == "musl":
        result["arch"] = libc["loader"].split("-")[2].split(".")[0]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/", help="distribution root to inspect (default: /)")
    parser.add_argument("--libraries", help="comma-separated sonames (default: the policies' union)")
    parser.add_argument("--label", help="name recorded in the dump, e.g. debian-bookworm")
    args = parser.parse_args(argv)
    libraries = args.libraries.split(",") if args.libraries else DEFAULT_LIBRARIES
    try:
        result = dump(args.root, libraries)
    except (ElfError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    if args.label:
        result["label"] = args.label
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
