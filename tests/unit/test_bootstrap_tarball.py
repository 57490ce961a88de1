"""A bootstrapped Debian root packs into the same tarball, byte for byte, wherever and whenever
it is made (scripts/debootstrap-base.sh), so that the base image made of it, and the stages built
on it, hit the registry cache of another job. The script's packing runs for real here on two
roots that differ only the way two debootstraps of one Release do (file times, creation order,
the host's hostname and resolver, ldconfig's aux-cache, backup files, /etc/shadow's change day);
two real bootstraps of bookworm amd64 gave the same sha256 on this machine (README)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

from manyforge.engine import tarball_epoch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "debootstrap-base.sh"
EPOCH = 1783764997  # bookworm's Release Date when this was written: 2026-07-11 10:16:37 UTC


def make_root(path: Path, when: int, order: list[str], host: str) -> Path:
    files = {
        "etc/os-release": "ID=debian\n",
        "etc/shadow": f"root:*:{when // 86400}:0:99999:7:::\nnobody:*:{when // 86400}:0:99999:7:::\n",
        "etc/hostname": f"{host}\n",
        "etc/resolv.conf": f"nameserver 10.0.0.{len(host)}\n",
        "etc/passwd-": "backup\n",
        "var/cache/ldconfig/aux-cache": f"{when}\n",
        "var/log/apt/eipp.log.xz": "x",
        "usr/bin/tool": "#!/bin/sh\n",
        "usr/share/doc/a/copyright": "a\n",
    }
    for name in order:
        file = path / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(files[name])
        os.utime(file, (when, when))
    if (path / "usr/bin/tool").exists():
        (path / "usr/bin/tool").chmod(0o755)
    return path


def pack(root: Path, output: Path, epoch: str = str(EPOCH)) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    return subprocess.run(["bash", str(SCRIPT), "--pack", str(root), str(output)], env=env,
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip


def test_two_roots_of_one_release_pack_into_the_same_bytes(tmp_path):
    names = ["etc/os-release", "etc/shadow", "etc/hostname", "etc/resolv.conf", "etc/passwd-",
             "var/cache/ldconfig/aux-cache", "var/log/apt/eipp.log.xz", "usr/bin/tool", "usr/share/doc/a/copyright"]  # fmt: skip
    one = make_root(tmp_path / "one", EPOCH + 3600, names, "runner-one")
    two = make_root(tmp_path / "two", EPOCH + 86400 * 3 + 17, list(reversed(names)), "fv-az1234-567")
    for root, out in ((one, tmp_path / "one.tar"), (two, tmp_path / "two.tar")):
        proc = pack(root, out)
        assert proc.returncode == 0, proc.stderr
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "one.tar", tmp_path / "two.tar")}
    assert len(digests) == 1
    with tarfile.open(tmp_path / "one.tar") as tar:
        members = tar.getmembers()
        names_in = [m.name for m in members]
        assert names_in == sorted(names_in, key=lambda n: n.split("/"))  # by name, depth first
        assert {m.mtime for m in members} == {EPOCH}
        assert not [n for n in names_in if n.endswith(("aux-cache", "eipp.log.xz", "passwd-"))]
        assert tar.extractfile("./etc/hostname").read() == b"" and tar.extractfile("./etc/resolv.conf").read() == b""  # type: ignore[union-attr]
        shadow = tar.extractfile("./etc/shadow").read().decode()  # type: ignore[union-attr]
        assert {line.split(":")[2] for line in shadow.splitlines()} == {str(EPOCH // 86400)}
        assert tar.getmember("./usr/bin/tool").mode == 0o755
        assert not any("atime" in m.pax_headers or "ctime" in m.pax_headers for m in members)
    assert tarball_epoch(tmp_path / "one.tar") == EPOCH


def test_a_time_that_is_not_a_number_is_refused(tmp_path):
    root = make_root(tmp_path / "root", EPOCH, ["etc/os-release", "etc/hostname", "etc/resolv.conf"], "h")
    proc = pack(root, tmp_path / "out.tar", epoch="yesterday")
    assert proc.returncode == 2 and "SOURCE_DATE_EPOCH: expected seconds since 1970" in proc.stderr
    assert not (tmp_path / "out.tar").exists()
