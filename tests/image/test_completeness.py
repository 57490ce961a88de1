"""Every interpreter is complete, and the toolchain builds what the policy promises.

The module lists are those an official CPython build of each version ships on Linux (what
pypa's images carry too); versions of from-source libraries and fallbacks come from the target.
"""

from __future__ import annotations

import json
import shlex

import pytest

from manyforge import engine
from manyforge.spec import REPO_ROOT

pytestmark = pytest.mark.image

# The build-time check of every interpreter (check-cpython.py: the one module list, and the
# probes of what a cross build can get wrong), run again in the finished image.
CHECK_CPYTHON = (REPO_ROOT / "docker" / "scripts" / "check-cpython.py").read_text()


def run(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command!r} failed ({result.rc}):\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def python_json(host, interpreter: str, code: str, *args: str):
    argv = " ".join(shlex.quote(a) for a in args)
    return json.loads(run(host, f"/opt/python/{interpreter}/bin/python -W ignore -c {shlex.quote(code)} {argv}"))


def test_interpreter_passes_its_build_time_check(host, interpreter):
    """Every extension module of an official build imports, and what a cross build with
    configure's guesses gets wrong (fnv hashing, no computed gotos, no time.tzset, a broken
    sem_getvalue, triplet, byte order) is as a native build has it."""
    report = python_json(host, interpreter, CHECK_CPYTHON, "--json")
    assert report["problems"] == [], report


def test_library_versions(host, built_image, interpreter):
    """A library built from source is the pinned one, and a from-source OpenSSL finds the
    release's CA certificates. The minimum versions (pypa's: SQLite 3.50 with FTS5, Tk 8.6, ...)
    are check-cpython.py's, run above, and pypa's own file checks them again
    (test_pypa_reference.py)."""
    probe = (
        "import json, sqlite3, ssl, sys\n"
        "info = {'openssl_text': ssl.OPENSSL_VERSION, 'sqlite': sqlite3.sqlite_version, 'zstd': None}\n"
        "if sys.version_info >= (3, 14):\n"
        "    from compression import zstd; info['zstd'] = '.'.join(map(str, zstd.zstd_version_info[:3]))\n"
        "print(json.dumps(info))"
    )
    info = python_json(host, interpreter, probe)
    libraries = {lib["name"]: lib["version"] for lib in built_image.target.library_builds()}
    if "openssl" in libraries:
        assert info["openssl_text"].startswith(f"OpenSSL {libraries['openssl']} "), info
    if "sqlite" in libraries:
        assert info["sqlite"] == libraries["sqlite"], info
    if "zstd" in libraries and info["zstd"] is not None:
        assert info["zstd"] == libraries["zstd"], info
    # A from-source OpenSSL reads the release's own CA certificates.
    paths = python_json(host, interpreter, "import json, ssl; print(json.dumps(ssl.get_default_verify_paths()[:4]))")
    assert any(p and host.file(p).exists for p in paths), paths


def test_sysconfig_names_the_images_own_toolchain(host, built_image, interpreter):
    config = python_json(
        host, interpreter, "import json, sysconfig; print(json.dumps(sysconfig.get_config_vars(), default=str))"
    )
    cc, cxx, ldshared = config["CC"], config["CXX"], config["LDSHARED"]
    assert cc.split()[0] == "gcc" and cxx.split()[0] == "g++", (cc, cxx)
    assert ldshared.startswith(f"{cc} -shared"), ldshared
    # Nothing of a cross or build-only setup leaks into what extension builds inherit.
    leaked = {k: v for k, v in config.items() if isinstance(v, str) and ("/cross" in v or "/opt/cross-bin" in v)}
    assert leaked == {}
    toolchain = built_image.target.toolchain
    gcc = run(host, "command -v gcc")
    assert gcc.startswith((toolchain.prefix or "/usr/bin", "/usr/local/bin")), gcc
    assert run(host, "gcc -dumpversion").split(".")[0] == toolchain.gcc


def test_interpreter_is_its_pinned_release_or_a_declared_fallback(host, built_image, interpreter):
    target = built_image.target
    version = run(host, f"/opt/python/{interpreter}/bin/python -c 'import platform; print(platform.python_version())'")
    assert version == target.cpython_version(interpreter)
    catalog = json.loads(host.file("/opt/_internal/manylinux-interpreters.json").content_string)
    labels = engine.image_labels(built_image.ref)
    pinned = target.spec.data.interpreters[interpreter].cpython
    if version != pinned:
        assert version in target.spec.data.interpreters[interpreter].fallback
        assert catalog["fallbacks"][interpreter] == {"pinned": pinned, "built": version}
        assert f"{interpreter}={version} (pinned {pinned})" in labels["io.manyforge.cpython-fallbacks"]
    else:
        assert interpreter not in catalog["fallbacks"]
        assert interpreter not in labels.get("io.manyforge.cpython-fallbacks", "")


# --- the toolchain -------------------------------------------------------------------------

ARRAY_PROGRAM = "#include <array>\n#include <cstdio>\nint main() { std::array<int, 3> a{1, 2, 3}; std::printf(\"%d\\n\", a[2]); }\n"


def test_cxx_links_with_as_needed(host):
    """meson links with -Wl,--as-needed; a toolset's libstdc++.so linker script must survive it."""
    run(host, f"printf %s {shlex.quote(ARRAY_PROGRAM)} > /tmp/asneeded.cpp")
    run(host, "g++ -D_GLIBCXX_ASSERTIONS -fPIC -Wl,--as-needed -o /tmp/asneeded /tmp/asneeded.cpp")
    assert run(host, "/tmp/asneeded") == "3"


def test_libatomic_links(host):
    program = "#include <stdatomic.h>\nint main(void) { _Atomic long long x = 1; return (int)atomic_fetch_add(&x, 1) - 1; }\n"
    run(host, f"printf %s {shlex.quote(program)} > /tmp/atomic.c")
    run(host, "gcc -o /tmp/atomic /tmp/atomic.c -latomic")
    run(host, "/tmp/atomic")


def default_march(host, compiler: str) -> str:
    """The -march the compiler proper (cc1, cc1plus, f951) gets: the last on its command line."""
    out = host.run(f"echo | {compiler} -S -o /dev/null -v - 2>&1").stdout
    proper = [line for line in out.splitlines() if any(f"/{p} " in line for p in ("cc1", "cc1plus", "f951"))]
    assert proper, out
    return ([w for w in proper[-1].split() if w.startswith("-march=")] or [""])[-1]


def test_compilers_default_to_the_baseline_march(host, built_image):
    """x86_64 wheels must run on any x86-64 CPU: no compiler defaults to x86-64-v2 or later."""
    if built_image.target.arch != "x86_64":
        pytest.skip("a question for x86_64 only")
    for compiler in ("gcc -x c", "g++ -x c++", "gfortran -x f77"):
        assert not default_march(host, compiler).startswith("-march=x86-64-v"), compiler


FIX_TOOLCHAIN = (REPO_ROOT / "docker" / "scripts" / "fix-toolchain.sh").read_text()


def test_fix_toolchain_wraps_a_compiler_that_defaults_to_x86_64_v2(host, built_image):
    """The wrapper EL9 images get, proven on a toolset made here to default to x86-64-v2 as EL9's
    gcc does (its drivers pass -march=x86-64-v2 first; a caller's later -march wins, as with a
    configured default), and on the linker script form of a gcc-toolset's libstdc++.so."""
    if built_image.target.arch != "x86_64":
        pytest.skip("a question for x86_64 only")
    tc = "/tmp/toolset"
    run(host, f"rm -rf {tc} && mkdir -p {tc}/bin {tc}/lib")
    for driver in ("gcc", "g++", "gfortran"):
        real = run(host, f"readlink -f $(command -v {driver})")
        script = f"#!/bin/sh\nexec {real} -march=x86-64-v2 \"$@\"\n"
        run(host, f"printf %s {shlex.quote(script)} > {tc}/bin/{driver} && chmod +x {tc}/bin/{driver}")
    run(host, f"cp {tc}/bin/gcc {tc}/bin/cc")
    env = f"PATH=/usr/local/bin:{tc}/bin:$PATH"  # the order of an image with a toolset
    assert default_march(host, f"{env} gcc -x c") == "-march=x86-64-v2"
    libstdcxx = run(host, "g++ -print-file-name=libstdc++.so.6")
    run(host, f"echo 'INPUT ( {libstdcxx} -lstdc++_nonshared )' > {tc}/lib/libstdc++.so")
    run(host, f"printf %s {shlex.quote(FIX_TOOLCHAIN)} > /tmp/fix-toolchain.sh")
    try:
        run(host, f"{env} bash /tmp/fix-toolchain.sh --march x86-64 --prefix {tc}")
        for compiler in ("gcc -x c", "cc -x c", "g++ -x c++", "gfortran -x f77"):
            assert default_march(host, f"{env} {compiler}") == "-march=x86-64", compiler
        # A caller's own -march is left alone.
        assert default_march(host, f"{env} gcc -march=haswell -x c") == "-march=haswell"
        out = host.run(f"echo | {env} gcc -march=haswell -x c -S -o /dev/null -v - 2>&1").stdout
        assert "-march=x86-64 " not in out and "-mtune=generic" not in out
        assert run(host, f"cat {tc}/lib/libstdc++.so") == f"INPUT ( {libstdcxx} -lstdc++_nonshared {libstdcxx} )"
    finally:
        # The wrappers went to /usr/local/bin, ahead of the image's own compilers: remove them.
        for name in ("gcc", "cc", "g++", "gfortran"):
            host.run(f"grep -q 'Written by manyforge: {tc}' /usr/local/bin/{name} 2>/dev/null && rm -f /usr/local/bin/{name}")
    assert not run(host, "command -v gcc").startswith("/usr/local/bin"), "wrappers left behind"

