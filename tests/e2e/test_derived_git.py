"""A downstream maintainer's other path: manyforge installed by pip from a pinned git revision
(`pip install git+<url>@<commit>`), into a fresh venv, used in a fresh directory outside this
repository. pip builds the revision as it is committed (never the working tree): the matrix,
templates and scripts must come with it, as with the wheel (test_derived_wheel.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=3600)


def test_manyforge_from_a_pinned_git_revision_builds_and_checks_outside_the_repository(tmp_path):
    head = run("git", "rev-parse", "--verify", "HEAD", cwd=ROOT)
    if head.returncode != 0:
        pytest.skip("not a git checkout: there is no revision to install from")
    commit = head.stdout.strip()
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path).returncode == 0
    proc = run(str(venv / "bin" / "pip"), "install", "-q", f"git+{ROOT.as_uri()}@{commit}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # What pip installed is that revision's, with the data the pipeline reads beside the package.
    data = run(str(venv / "bin" / "python"), "-c", "import manyforge.spec as s; print(s.REPO_ROOT); print(s.DEFAULT_SPEC.is_file())", cwd=tmp_path)
    root, has_spec = data.stdout.split()
    assert root.endswith("site-packages/manyforge/_data") and has_spec == "True", data.stdout + data.stderr
    for name in ("docker/derived.Dockerfile.j2", "docker/scripts/write-derived-sbom.py", "docker/scripts/build-derived-library.sh"):
        installed = Path(root) / name
        committed = run("git", "show", f"{commit}:{name}", cwd=ROOT).stdout
        assert installed.read_text() == committed, f"{name} is not the revision's"
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "examples" / "scientific" / "manyforge.yaml", project)
    manyforge = str(venv / "bin" / "manyforge")
    for step in ("resolve", "build", "check"):
        proc = run(manyforge, step, "--spec", "manyforge.yaml", "--image", "scientific", "--arch", "x86_64", cwd=project)
        assert proc.returncode == 0, f"{step}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert (project / "derived.lock.json").is_file() and (project / "build" / "logs" / "scientific_x86_64.log").is_file()
    for ref in ("example/scientific_x86_64:latest", "manyforge/manylinux_2_36_x86_64:latest"):
        proc = run(manyforge, "contract", ref, cwd=project)
        assert proc.returncode == 0 and proc.stdout.strip().endswith("contract checks pass"), proc.stdout + proc.stderr
