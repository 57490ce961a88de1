"""`invoke packages-check` asks a base's real repositories, set up as the image sets them up,
for every package the image declares (what anyone runs before building a UBI variant)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "packages-check", *args], cwd=ROOT, capture_output=True, text=True,
        check=False, timeout=900,
    )  # fmt: skip


def test_every_declared_package_of_the_default_image_is_offered():
    proc = check("--image", "manylinux_2_36")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "debian12's repositories offer every declared package" in proc.stdout


def test_a_cross_compiled_image_has_its_cross_stage_packages_checked_too(tmp_path):
    """s390x: its own packages are asked for under emulation; the cross compiler and the s390x
    -dev packages (multiarch) on the build host, as the cross stage installs them. A cross GCC
    that does not exist is planted: exactly its two packages are named, nothing else."""
    text = (ROOT / "images.yaml").read_text()
    assert "cross: gcc-12\n" in text
    spec = tmp_path / "images.yaml"
    spec.write_text(text.replace("cross: gcc-12\n", "cross: gcc-99\n"))
    proc = check("--image", "manylinux_2_36", "--arch", "s390x", "--spec", str(spec))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "(linux/s390x) for " in proc.stderr and "(linux/amd64, for the cross stage) for " in proc.stderr
    named = sorted(line.rsplit(" ", 1)[1] for line in proc.stdout.splitlines() if "offers no package" in line)
    assert named == ["g++-99-s390x-linux-gnu", "gcc-99-s390x-linux-gnu"], proc.stdout
    assert "debian12 (linux/amd64, for the cross stage) offers no package gcc-99-s390x-linux-gnu" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_package_the_repositories_lack_is_named(tmp_path):
    text = (ROOT / "images.yaml").read_text()
    declared = "packages: [libffi8, libssl3]"
    assert declared in text
    spec = tmp_path / "images.yaml"
    spec.write_text(text.replace(declared, "packages: [libffi8, libssl3, manyforge-no-such-package1]"))
    proc = check("--image", "manylinux_2_36", "--spec", str(spec))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "debian12 offers no package manyforge-no-such-package1" in proc.stdout
    assert "1 declared package(s) missing" in proc.stderr
    assert "Traceback" not in proc.stderr
