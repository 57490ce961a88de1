"""The symbol dump on real roots other than the host's: a musl root from Debian's musl package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dump_of_a_musl_root_reads_the_loaders_version(tmp_path):
    fetched = subprocess.run(["apt-get", "download", "musl"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert fetched.returncode == 0, fetched.stderr
    deb = next(tmp_path.glob("musl_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")], check=True)
    packaged = deb.name.split("_")[1].split("-")[0]  # musl_1.2.3-1_amd64.deb -> 1.2.3
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "calculate_symbol_versions.py"), "--root", str(tmp_path / "root")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(proc.stdout)
    assert data["libc"]["name"] == "musl"
    assert data["libc"]["version"] == packaged
    assert data["arch"] == "x86_64"
    assert data["libraries"] == {}  # musl's libc has no symbol versions
