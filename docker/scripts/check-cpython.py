"""Run by a freshly built interpreter on its target (its own stage: natively, or under QEMU when
it was cross-compiled): fail the build when it is not what a native build of it would be.

- every extension module an official build of its version ships on Linux imports (one list:
  the image tests import it from here);
- the checks a cross build could get wrong behave as natively (hash algorithm, computed gotos,
  time.tzset, sem_getvalue, byte order, platform triplet).

    python check-cpython.py [--json]
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import sysconfig

# Extension modules (and the packages that need one) of every supported version.
MODULES = [
    "array", "binascii", "bz2", "cmath", "ctypes", "curses", "curses.panel", "dbm.gnu", "dbm.ndbm", "decimal",
    "fcntl", "grp", "hashlib", "lzma", "math", "mmap", "multiprocessing.shared_memory", "pyexpat", "readline",
    "resource", "select", "socket", "sqlite3", "ssl", "termios", "tkinter", "unicodedata", "uuid",
    "xml.etree.ElementTree", "zlib", "zoneinfo", "_asyncio", "_ctypes", "_curses_panel", "_datetime", "_decimal",
    "_elementtree", "_hashlib", "_json", "_lzma", "_multiprocessing", "_pickle", "_posixshmem", "_queue",
    "_sqlite3", "_ssl", "_tkinter", "_uuid", "test.support",
]  # fmt: skip
REMOVED_IN_3_13 = ["audioop", "crypt", "ossaudiodev", "spwd", "_crypt"]
ADDED = {(3, 13): ["dbm.sqlite3"], (3, 14): ["compression.zstd", "_zstd"]}

# CPython's own list of its standard library (sys.stdlib_module_names, 3.10+) names modules of
# other platforms and a few whose import does something: those are not imported.
NOT_ON_LINUX = {
    "msvcrt", "nt", "winreg", "winsound", "msilib", "_msi", "_winapi", "_overlapped", "_wmi", "_winreg",
    "_scproxy", "_apple_support", "_ios_support", "_android_support",
}  # fmt: skip
IMPORT_HAS_EFFECTS = {"antigravity", "this", "__phello__"}  # opens a browser, prints; a frozen demo
# Built only where libnsl is found; deprecated (PEP 594) and not in pypa's images either.
NOT_REQUIRED = {"nis"}

# Library versions pypa's images promise (pypa/manylinux docker/tests/modules-check.py).
SQLITE_AT_LEAST = (3, 50)
TK_AT_LEAST = 8.6
ZSTD_AT_LEAST = (1, 5, 7)  # from 3.14 (compression.zstd)
OPENSSL_AT_LEAST = (1, 1, 1)

# Big-endian machines of the platform triplets CPython names (sysconfig MULTIARCH).
BIG_ENDIAN = ("s390x-", "powerpc64-", "powerpc-", "mips-", "mips64-")


def expected_modules(version: tuple[int, int]) -> list[str]:
    names = list(MODULES) + (REMOVED_IN_3_13 if version < (3, 13) else [])
    for since, added in ADDED.items():
        if version >= since:
            names += added
    # Every module of the standard library by CPython's own count, where the version has one.
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    names += sorted(stdlib - NOT_ON_LINUX - IMPORT_HAS_EFFECTS - NOT_REQUIRED - set(names))
    return names


def missing_modules() -> dict[str, str]:
    bad = {}
    for name in expected_modules(sys.version_info[:2]):
        try:
            importlib.import_module(name)
        except Exception as exc:  # an ImportError, or a module that fails as it loads
            bad[name] = repr(exc)
    return bad


def _queue_size() -> str:
    import multiprocessing

    try:
        return str(multiprocessing.Queue().qsize())
    except NotImplementedError as exc:
        return f"NotImplementedError: {exc}"


def _compiler_multiarch() -> str | None:
    """What the image's C compiler calls this platform (None: no compiler, or it says nothing)."""
    try:
        out = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def library_problems() -> list[str]:
    """The libraries the modules link are as new as pypa's images have them."""
    problems = []
    try:
        import sqlite3

        if sqlite3.sqlite_version_info[:2] < SQLITE_AT_LEAST:
            problems.append(f"SQLite {sqlite3.sqlite_version} is older than {'.'.join(map(str, SQLITE_AT_LEAST))}")
        db = sqlite3.connect(":memory:")
        try:
            db.execute("create virtual table fts5_probe using fts5(text)")
        except sqlite3.OperationalError as exc:
            problems.append(f"SQLite has no FTS5: {exc}")
        finally:
            db.close()
    except ImportError:
        pass  # reported as a missing module
    try:
        import tkinter

        if tkinter.TkVersion < TK_AT_LEAST:
            problems.append(f"Tk {tkinter.TkVersion} is older than {TK_AT_LEAST}")
    except ImportError:
        pass
    try:
        import ssl

        if ssl.OPENSSL_VERSION_INFO[:3] < OPENSSL_AT_LEAST:
            problems.append(f"{ssl.OPENSSL_VERSION} is older than OpenSSL {'.'.join(map(str, OPENSSL_AT_LEAST))}")
    except ImportError:
        pass
    if sys.version_info >= (3, 14):
        try:
            zstd = importlib.import_module("compression.zstd")
            if tuple(zstd.zstd_version_info[:3]) < ZSTD_AT_LEAST:
                problems.append(f"zstd {zstd.zstd_version_info[:3]} is older than {'.'.join(map(str, ZSTD_AT_LEAST))}")
        except ImportError:
            pass
    return problems


def _glibc() -> tuple[int, ...] | None:
    import os

    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # type: ignore[union-attr]
    except (ValueError, OSError, AttributeError):
        return None  # musl
    return tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else None


def compiler_problems(cfg: dict[str, object], libc: tuple[int, ...] | None, musl_stack: bool) -> list[str]:
    """What extension builds inherit names the image's compilers as pypa's images do: a native
    build before glibc 2.34 (where libpthread became part of libc) adds -pthread to CC and CXX;
    LDSHARED is `$CC -shared`, plus the thread stack size musl builds of 3.15+ link with."""
    pthread = " -pthread" if libc is not None and libc < (2, 34) else ""
    stack = " -Wl,-z,stack-size=1048576" if musl_stack else ""
    want = {
        "CC": f"gcc{pthread}",
        "CXX": f"g++{pthread}",
        "LDSHARED": f"gcc{pthread} -shared{stack}",
        "LDCXXSHARED": f"g++{pthread} -shared{stack}",
    }
    return [f"sysconfig {key} is {cfg.get(key)!r}, not {value!r}" for key, value in want.items() if cfg.get(key) != value]


def probes() -> dict[str, object]:
    """What a native build shows and a cross build with configure's guesses does not."""
    import time

    cfg = sysconfig.get_config_vars()
    return {
        "hash_algorithm": sys.hash_info.algorithm,
        "computed_gotos": cfg.get("HAVE_COMPUTED_GOTOS"),
        "time_tzset": hasattr(time, "tzset"),
        "queue_qsize": _queue_size(),
        "byteorder": sys.byteorder,
        "multiarch": cfg.get("MULTIARCH"),
        "soabi": cfg.get("SOABI"),
        "ext_suffix": cfg.get("EXT_SUFFIX"),
        "cc": cfg.get("CC"),
    }


def probe_problems(found: dict[str, object], compiler_multiarch: str | None) -> list[str]:
    problems = []
    want_hash = "siphash13" if sys.version_info >= (3, 11) else "siphash24"
    if found["hash_algorithm"] != want_hash:
        problems.append(f"sys.hash_info.algorithm is {found['hash_algorithm']!r}, a native build has {want_hash!r}")
    if found["computed_gotos"] != 1:
        problems.append(f"HAVE_COMPUTED_GOTOS is {found['computed_gotos']!r}: GCC and clang support computed gotos")
    if not found["time_tzset"]:
        problems.append("time.tzset is missing")
    if found["queue_qsize"] != "0":
        problems.append(f"multiprocessing.Queue().qsize() gives {found['queue_qsize']}")
    multiarch = str(found["multiarch"] or "")
    want_order = "big" if multiarch.startswith(BIG_ENDIAN) else "little"
    if found["byteorder"] != want_order:
        problems.append(f"sys.byteorder is {found['byteorder']!r} on {multiarch}")
    if not multiarch or multiarch not in str(found["soabi"]) or multiarch not in str(found["ext_suffix"]):
        problems.append(f"SOABI {found['soabi']!r} and EXT_SUFFIX {found['ext_suffix']!r} do not name the triplet {multiarch!r}")
    if compiler_multiarch is not None and compiler_multiarch != multiarch:
        problems.append(f"MULTIARCH is {multiarch!r}, the image's gcc says {compiler_multiarch!r}")
    return problems


def main() -> None:
    missing = missing_modules()
    found = probes()
    libc = _glibc()
    musl_stack = libc is None and sys.version_info >= (3, 15)
    problems = [f"module {name}: {why}" for name, why in missing.items()] + probe_problems(found, _compiler_multiarch())
    problems += library_problems() + compiler_problems(sysconfig.get_config_vars(), libc, musl_stack)
    if "--json" in sys.argv[1:]:
        print(json.dumps({"problems": problems, "probes": found}))
        return
    if problems:
        sys.exit("manyforge: this interpreter is not what a native build would be, or not what pypa's images promise:\n  " + "\n  ".join(problems))
    import sqlite3
    import ssl

    print("manyforge:", sys.version.split()[0], ssl.OPENSSL_VERSION, "SQLite", sqlite3.sqlite_version, found["hash_algorithm"])


if __name__ == "__main__":
    main()
