"""A build on a host that lacks a piece says which piece and how to get it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from manyforge import engine

ROOT = Path(__file__).resolve().parents[2]


def test_missing_docker_cli_is_named(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # an empty PATH: no docker, no buildx
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "build"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert "error: the docker CLI is not installed; run `sudo scripts/setup-host.sh`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_binfmt_handler_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "BINFMT_DIR", tmp_path)
    with pytest.raises(engine.EngineError, match=r"no binfmt handler for s390x .*QEMU emulation is not set up"):
        engine.check_prerequisites("s390x", needs_debootstrap=False)


def test_binfmt_handler_without_fix_binary_flag_is_refused(tmp_path, monkeypatch):
    (tmp_path / "qemu-s390x").write_text("enabled\ninterpreter /usr/bin/qemu-s390x\nflags: P\n")
    monkeypatch.setattr(engine, "BINFMT_DIR", tmp_path)
    with pytest.raises(engine.EngineError, match="lacks the fix-binary"):
        engine.check_prerequisites("s390x", needs_debootstrap=False)


def test_real_host_is_ready_for_emulated_builds():
    engine.check_prerequisites("s390x", needs_debootstrap=True)


def test_policy_check_of_an_image_not_built_says_so_without_a_registry():
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "policy", "check", "--image", "manylinux_2_34", "--arch", "ppc64le"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: image manyforge/manylinux_2_34_ppc64le:latest is not built here; build it first with `invoke build`"
    )
