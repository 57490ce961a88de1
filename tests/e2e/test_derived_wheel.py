"""A downstream maintainer's path with nothing but an installed wheel of manyforge: the wheel
carries the matrix, templates and scripts; in a fresh directory outside this repository, the
project's short file resolves, builds and checks, and the contract command runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=3600)


def test_a_wheel_of_manyforge_builds_a_derived_image_outside_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    proc = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = wheels.glob("manyforge-*.whl")
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path).returncode == 0
    proc = run(str(venv / "bin" / "pip"), "install", "-q", str(wheel), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "examples" / "scientific" / "manyforge.yaml", project)
    manyforge = str(venv / "bin" / "manyforge")
    for step in ("resolve", "build", "check"):
        proc = run(manyforge, step, "--spec", "manyforge.yaml", "--image", "scientific", cwd=project)
        assert proc.returncode == 0, f"{step}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert (project / "derived.lock.json").is_file() and (project / "build" / "logs" / "scientific_x86_64.log").is_file()
    proc = run(manyforge, "contract", "example/scientific_x86_64:latest", cwd=project)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("contract checks pass"), proc.stdout + proc.stderr
