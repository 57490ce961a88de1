#!/usr/bin/env python3
"""Compile probe libraries with the image's own toolchain and ask auditwheel which platform
policy each one satisfies. Runs inside an image (standard library only) and prints JSON:

  {"probes": {"c-libc": {"policy": "manylinux_2_17_x86_64"}, "cxx-format": {"skipped": "..."}}}

A probe the compiler cannot build (e.g. <format> before GCC 13) is reported as skipped.
"""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

PROBES = {
    "c-libc": ("c", [], r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int probe(const char *s) { char *d = strdup(s); int n = (int)strlen(d); free(d); printf("%d\n", n); return n; }
"""),
    "cxx-stdlib": ("c++", ["-std=c++11"], r"""
#include <string>
#include <vector>
#include <sstream>
extern "C" int probe(const char *s) { std::istringstream in{std::string(s)}; std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x); return (int)w.size(); }
"""),
    "cxx-filesystem": ("c++", ["-std=c++17"], r"""
#include <filesystem>
extern "C" int probe(const char *s) { return std::filesystem::exists(std::filesystem::path(s)) ? 1 : 0; }
"""),
    "cxx-jthread": ("c++", ["-std=c++20", "-pthread"], r"""
#include <thread>
#include <atomic>
extern "C" int probe(const char *) { std::atomic<int> n{0}; { std::jthread t([&] { n = 42; }); } return n; }
"""),
    "cxx-format": ("c++", ["-std=c++20"], r"""
#include <format>
#include <string>
extern "C" int probe(const char *s) { return (int)std::format("{}:{}", s, 42).size(); }
"""),
}


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (name, digest, len(data))


def make_wheel(directory, probe, library):
    """A wheel holding one shared library, tagged for this platform and no Python ABI."""
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    name = "probe_" + probe.replace("-", "_")
    dist_info = "%s-1.0.dist-info" % name
    with open(library, "rb") as fh:
        files = {"%s/lib%s.so" % (name, name): fh.read()}
    files[dist_info + "/METADATA"] = ("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name).encode()
    files[dist_info + "/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: manyforge\nRoot-Is-Purelib: false\nTag: py3-none-%s\n" % platform
    ).encode()
    record = [record_line(n, d) for n, d in files.items()] + [dist_info + "/RECORD,,"]
    files[dist_info + "/RECORD"] = ("\n".join(record) + "\n").encode()
    path = os.path.join(directory, "%s-1.0-py3-none-%s.whl" % (name, platform))
    with zipfile.ZipFile(path, "w") as whl:
        for n, d in files.items():
            whl.writestr(n, d)
    return path


def run_probe(directory, probe, language, flags, source):
    compiler = "gcc" if language == "c" else "g++"
    src = os.path.join(directory, probe + (".c" if language == "c" else ".cpp"))
    lib = os.path.join(directory, probe + ".so")
    with open(src, "w") as fh:
        fh.write(source)
    built = subprocess.run(
        [compiler, *flags, "-O2", "-fPIC", "-shared", src, "-o", lib], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if built.returncode != 0:
        first = (built.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        return {"skipped": "%s cannot build it: %s" % (compiler, first)}
    wheel = make_wheel(directory, probe, lib)
    shown = subprocess.run(["auditwheel", "show", wheel], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text = shown.stdout.decode(errors="replace")
    m = re.search(r'consistent\s+with\s+the\s+following\s+platform\s+tag:\s*"([^"]+)"', text)
    if not m:
        return {"error": "auditwheel show gave no platform tag", "output": text[-2000:]}
    return {"policy": m.group(1)}


def main():
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for probe, (language, flags, source) in PROBES.items():
            results[probe] = run_probe(directory, probe, language, flags, source)
    json.dump({"probes": results}, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
