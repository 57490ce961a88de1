"""Every interpreter is the one a native build would make, judged against interpreters we did
not build: Debian's own, built natively on each architecture's real hardware.

The reference is the `_sysconfigdata_` of Debian's `libpython3.X-minimal:<arch>` of the same
minor (bullseye 3.9, bookworm 3.11, trixie 3.13), fetched from Debian's signed archive through
the host's apt mirror. Every HAVE_*/SIZEOF_*/ALIGNOF_*/PY_* value (and byte order, platform
triplet, SOABI, EXT_SUFFIX, CC) must equal it, except the entries listed below, each with
its reason. A cross build that took configure's guesses (fnv hashing, no computed gotos, no
time.tzset, a "broken" sem_getvalue) differs in exactly such values.

Then the hardening pypa's images build with: read from the binaries (RELRO, BIND_NOW, stack
protector, fortified calls where glibc fortifies), and kept out of what extensions inherit.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from manyforge.arches import ARCHES
from manyforge.spec import REPO_ROOT

pytestmark = pytest.mark.image

# Debian's default CPython per release, and the glibc it builds against.
SUITES = {"3.9": ("bullseye", "2.31"), "3.11": ("bookworm", "2.36"), "3.13": ("trixie", "2.41")}
# What Debian's archive carries (bullseye has no ppc64el or s390x here).
SUITE_ARCHES = {
    "bullseye": {"amd64", "arm64", "armhf", "i386"},
    "bookworm": {"amd64", "arm64", "armhf", "i386", "ppc64el", "s390x"},
    "trixie": {"amd64", "arm64", "armhf", "i386", "ppc64el", "s390x"},
}
COMPARED = re.compile(r"(HAVE_|SIZEOF_|ALIGNOF_|PY_)[A-Z0-9_]+|WORDS_BIGENDIAN|DOUBLE_IS_[A-Z0-9_]+")
# Flags and paths are build choices, not configure's findings about the target.
NOT_FINDINGS = re.compile(
    r"PY_(CFLAGS|CFLAGS_NODIST|CORE_CFLAGS|CORE_LDFLAGS|CPPFLAGS|LDFLAGS|LDFLAGS_NODIST|LDFLAGS_NOLTO"
    r"|STDMODULE_CFLAGS|BUILTIN_MODULE_CFLAGS|BUILTIN_HASHLIB_HASHES)"
)

# Entries that may differ from Debian's build, each with why; every one a choice of how Debian
# builds, none a fact of the libc or the CPU. (Measured: x86_64 cp311 against bookworm's 3.11.)
MAY_DIFFER = {
    "PY_ENABLE_SHARED": "Debian builds a shared libpython; manylinux interpreters are static, as pypa's",
    "HAVE_LIBDB": "Debian builds dbm.ndbm on Berkeley DB; the images (as pypa's) on gdbm's compatibility library",
    "HAVE_DB_H": "Berkeley DB's header (Debian's dbm.ndbm), see HAVE_LIBDB",
    "HAVE_NDBM_H": "gdbm's ndbm.h (the images' dbm.ndbm), see HAVE_LIBDB",
    "HAVE_GDBM_DASH_NDBM_H": "gdbm's gdbm-ndbm.h (the images' dbm.ndbm), see HAVE_LIBDB",
    "HAVE_LIBGDBM_COMPAT": "gdbm's compatibility library (the images' dbm.ndbm), see HAVE_LIBDB",
    "HAVE_MEMORY_H": "Debian regenerates configure with a newer autoconf, which no longer checks for memory.h",
    "HAVE_BLUETOOTH_BLUETOOTH_H": "Debian builds with libbluetooth-dev; the images (as pypa's) do not",
    "HAVE_BZLIB_H": "Debian's minimal package comes from a build stage without bzlib.h (bz2 is its own package)",
    "PY_SQLITE_ENABLE_LOAD_EXTENSION": "Debian configures --enable-loadable-sqlite-extensions",
    "PY_SSL_DEFAULT_CIPHERS": "Debian configures --with-ssl-default-suites=openssl",
}
# Functions a newer glibc than the image's provides: may be missing here when the reference's
# glibc has them and the image's does not (glibc's NEWS names the release that added each).
NEWER_GLIBC = {
    "HAVE_STRLCPY": "2.38",
    "HAVE_CLOSEFROM": "2.34",
    "HAVE_CLOSE_RANGE": "2.34",
    "HAVE_POSIX_SPAWN_FILE_ACTIONS_ADDCLOSEFROM_NP": "2.34",
    "HAVE_SYS_PIDFD_H": "2.36",
}

CONFIG_VARS = (
    "import json, sys, sysconfig; v = sysconfig.get_config_vars();"
    "print(json.dumps({'vars': v, 'version': list(sys.version_info[:3]), 'ft': bool(v.get('Py_GIL_DISABLED'))}, default=str))"
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def debian_reference(minor: str, arch: str, cache: Path) -> tuple[dict, str]:
    """Debian's build_time_vars of CPython `minor` for `arch`, and the package it came from."""
    suite, _ = SUITES[minor]
    debian_arch = ARCHES[arch].debian
    where = (cache / f"{suite}-{debian_arch}").resolve()
    where.mkdir(parents=True, exist_ok=True)
    package = f"libpython{minor}-minimal"
    debs = sorted(where.glob(f"{package}_*_{debian_arch}.deb"))
    if not debs:
        env = {**os.environ, "MANYFORGE_APT_ARCHITECTURES": debian_arch}
        proc = subprocess.run(
            [str(REPO_ROOT / "scripts" / "debian-apt.sh"), str(where / "apt"), suite, "apt-get", "-qq", "download", f"{package}:{debian_arch}"],
            cwd=where, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"Debian's {package}:{debian_arch} ({suite}) could not be fetched:\n{proc.stderr[-2000:]}"
        debs = sorted(where.glob(f"{package}_*_{debian_arch}.deb"))
    unpacked = where / "root"
    if not unpacked.exists():
        subprocess.run(["dpkg-deb", "-x", "--", str(debs[-1]), str(unpacked)], check=True, timeout=120)
    data = [p for p in (unpacked / "usr" / "lib" / f"python{minor}").glob("_sysconfigdata_*.py") if not p.is_symlink()]
    assert len(data) == 1, f"{debs[-1].name}: expected one _sysconfigdata_ file, found {[p.name for p in data]}"
    for node in ast.parse(data[0].read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "build_time_vars":
            return ast.literal_eval(node.value), debs[-1].name
    raise AssertionError(f"{data[0]}: no build_time_vars")


def differences(
    ours: dict, reference: dict, ours_version: tuple[int, ...], ref_version: tuple[int, ...], image_glibc: str, ref_glibc: str,
    free_threaded: bool,
) -> list[str]:
    """What differs that no listed reason explains."""
    wrong = []
    for name in sorted(set(ours) | set(reference)):
        if not COMPARED.fullmatch(name) or NOT_FINDINGS.fullmatch(name) or name in MAY_DIFFER:
            continue
        mine, theirs = ours.get(name), reference.get(name)
        if mine == theirs:
            continue
        if theirs is None and ours_version > ref_version:
            continue  # a variable added by a later patch release than the reference's
        if name in NEWER_GLIBC and not mine and _version(image_glibc) < _version(NEWER_GLIBC[name]) <= _version(ref_glibc):
            continue
        wrong.append(f"{name}: ours {mine!r}, Debian's {theirs!r}")
    for name in ("MULTIARCH", "SOABI", "EXT_SUFFIX"):
        theirs = str(reference.get(name))
        if free_threaded:  # Debian's reference is the default build: the ABI tag gains "t"
            theirs = re.sub(r"cpython-(\d+)", r"cpython-\1t", theirs)
        if ours.get(name) != theirs:
            wrong.append(f"{name}: ours {ours.get(name)!r}, Debian's {theirs!r}")
    # The machine configure saw (config.guess): a 32-bit build under a 64-bit personality saw
    # the host's (x86_64 for i686), and OpenSSL's config with it.
    mine_cpu, theirs_cpu = (str(v.get("HOST_GNU_TYPE")).split("-")[0] for v in (ours, reference))
    if mine_cpu != theirs_cpu:
        wrong.append(f"HOST_GNU_TYPE: ours {ours.get('HOST_GNU_TYPE')!r}, Debian's {reference.get('HOST_GNU_TYPE')!r}")
    # Debian's compilers carry the triplet in their names; the images' are plain gcc. From glibc
    # 2.34 on, libpthread is part of libc and configure needs no -pthread: a reference built on
    # an older glibc than the image's says "gcc -pthread" where a native build here says "gcc".
    theirs_cc = re.sub(r"^\S+-linux-gnu\S*-gcc", "gcc", str(reference.get("CC")))
    if _version(ref_glibc) < (2, 34) <= _version(image_glibc):
        theirs_cc = theirs_cc.replace(" -pthread", "")
    elif _version(image_glibc) < (2, 34) <= _version(ref_glibc) and not theirs_cc.endswith(" -pthread"):
        theirs_cc += " -pthread"
    if ours.get("CC") != theirs_cc:
        wrong.append(f"CC: ours {ours.get('CC')!r}, Debian's {reference.get('CC')!r} (as {theirs_cc!r})")
    return wrong


def _has_reference(target) -> bool:
    return target.image.libc.name == "glibc" and any(
        ".".join(target.cpython_version(tag).split(".")[:2]) in SUITES
        and ARCHES[target.arch].debian in SUITE_ARCHES[SUITES[".".join(target.cpython_version(tag).split(".")[:2])][0]]
        for tag in target.interpreters
    )


@pytest.mark.applies_to.with_args(_has_reference)
def test_interpreters_equal_debians_native_builds(host, built_image, tmp_path_factory):
    target = built_image.target
    cache = REPO_ROOT / "build" / "debian-reference"
    report, failures = [], []
    for tag in target.interpreters:
        minor = ".".join(target.cpython_version(tag).split(".")[:2])
        if minor not in SUITES or ARCHES[target.arch].debian not in SUITE_ARCHES[SUITES[minor][0]]:
            report.append(f"{target.slug} {tag}: no Debian build of {minor} for {target.arch} to compare with")
            continue
        got = json.loads(host.check_output(f"/opt/python/{tag}/bin/python -c {shlex.quote(CONFIG_VARS)}"))
        reference, package = debian_reference(minor, target.arch, cache)
        ref_version = _version(str(reference.get("VERSION", minor)) + ".0")
        ref_patch = re.search(r"_(\d+\.\d+\.\d+)", package)
        if ref_patch:
            ref_version = _version(ref_patch.group(1))
        wrong = differences(
            got["vars"], reference, tuple(got["version"]), ref_version, target.image.libc.version, SUITES[minor][1], got["ft"]
        )
        compared = sum(1 for n in set(got["vars"]) | set(reference) if COMPARED.fullmatch(n) and not NOT_FINDINGS.fullmatch(n))
        report.append(f"{target.slug} {tag}: {compared} values against {package}: {len(wrong)} unexplained")
        failures += [f"{tag}: {w}" for w in wrong]
    out = REPO_ROOT / "build" / "equivalence"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{target.slug}.txt").write_text("\n".join(report + failures) + "\n")
    assert not failures, "\n".join(report + failures)


def _dynamic(host, path: str) -> tuple[str, str, str]:
    return (
        host.check_output(f"readelf -lW {shlex.quote(path)}"),
        host.check_output(f"readelf -dW {shlex.quote(path)}"),
        host.check_output(f"readelf --dyn-syms -W {shlex.quote(path)}"),
    )


def test_interpreter_is_hardened_as_pypas(host, built_image, interpreter):
    """pypa's hardening (-fstack-protector-strong, _FORTIFY_SOURCE=2, -z relro -z now) in the
    interpreter and its modules (the from-source libraries inside them), none of it inherited by
    extensions: not in CFLAGS/LDFLAGS, only in the *_NODIST flags."""
    glibc = built_image.target.image.libc.name == "glibc"
    python = host.check_output(f"readlink -f /opt/python/{interpreter}/bin/python")
    ext = host.check_output(f"/opt/python/{interpreter}/bin/python -c 'import sysconfig; print(sysconfig.get_config_var(\"EXT_SUFFIX\"))'")
    libdir = host.check_output(f"/opt/python/{interpreter}/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"platstdlib\"))'")
    binaries = [python] + [f"{libdir}/lib-dynload/{m}{ext}" for m in ("_ssl", "_sqlite3", "_hashlib", "_decimal")]
    problems = []
    fortified = []  # binaries calling a fortified libc function (only code with such calls has any)
    for path in binaries:
        headers, dynamic, symbols = _dynamic(host, path)
        name = path.rsplit("/", 1)[-1]
        if "GNU_RELRO" not in headers:
            problems.append(f"{name}: no RELRO segment")
        if "BIND_NOW" not in dynamic and not re.search(r"FLAGS_1\).*\bNOW\b", dynamic):
            problems.append(f"{name}: not linked with -z now")
        if "__stack_chk_fail" not in symbols:
            problems.append(f"{name}: no stack protector")
        if re.search(r"\b__\w+_chk\b", symbols.replace("__stack_chk_fail", "")):
            fortified.append(name)
    # glibc fortifies (musl has no fortified headers): the interpreter itself and the modules
    # with fortifiable calls (_decimal and _sqlite3 have some; _ssl's own code may have none).
    if glibc and (binaries[0].rsplit("/", 1)[-1] not in fortified or len(fortified) < 2):
        problems.append(f"fortified calls (_FORTIFY_SOURCE) only in {fortified or 'none'}: expected the interpreter and its modules")
    # configure keeps what it was given as CFLAGS_NODIST in CONFIGURE_CFLAGS_NODIST (the Makefile's
    # own CFLAGS_NODIST is left for `make` to set); the interpreter's build uses PY_*_NODIST.
    names = ("CFLAGS", "LDFLAGS", "LDSHARED", "CONFIGURE_CFLAGS", "CONFIGURE_LDFLAGS", "PY_CFLAGS_NODIST", "PY_LDFLAGS_NODIST")
    code = f"import json, sysconfig; print(json.dumps({{k: sysconfig.get_config_var(k) or '' for k in {names!r}}}))"
    flags = json.loads(host.check_output(f"/opt/python/{interpreter}/bin/python -c {shlex.quote(code)}"))
    for key in ("CFLAGS", "LDFLAGS", "LDSHARED", "CONFIGURE_CFLAGS", "CONFIGURE_LDFLAGS"):
        for flag in ("-fstack-protector-strong", "_FORTIFY_SOURCE", "-z,relro", "-z,now"):
            if flag in flags[key]:
                problems.append(f"sysconfig {key} has {flag}: every extension would inherit it")
    for flag in ("-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", "-Werror=format-security"):
        if flag not in flags["PY_CFLAGS_NODIST"]:
            problems.append(f"PY_CFLAGS_NODIST lacks {flag}")
    for flag in ("-Wl,-z,relro", "-Wl,-z,now"):
        if flag not in flags["PY_LDFLAGS_NODIST"]:
            problems.append(f"PY_LDFLAGS_NODIST lacks {flag}")
    assert not problems, "\n".join(problems)
