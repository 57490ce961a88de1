"""Run by a freshly built interpreter: fail the build when a module whose library configure
did not find was silently left out, and print what the interpreter links."""

import importlib
import sys

wanted = ["ssl", "sqlite3", "ctypes", "zlib", "bz2", "lzma", "readline", "uuid", "curses", "dbm.gnu", "decimal", "_tkinter"]
if sys.version_info >= (3, 14):
    wanted.append("compression.zstd")
missing = []
for name in wanted:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
if missing:
    sys.exit("manyforge: modules missing from this build: " + ", ".join(missing))

import sqlite3  # noqa: E402
import ssl  # noqa: E402

print("manyforge:", sys.version.split()[0], ssl.OPENSSL_VERSION, "SQLite", sqlite3.sqlite_version)
