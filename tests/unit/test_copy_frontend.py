"""copy-frontend.sh gives a cross-compiled interpreter the frontend of its native twin: run for
real on two prefixes laid out as CPython installs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "scripts" / "copy-frontend.sh"
ELF = Path(shutil.which("true") or "/bin/true")


def prefix(root: Path, *, frontend: bool, lib: str = "python3.13") -> Path:
    site = root / "lib" / lib / "site-packages"
    site.mkdir(parents=True)
    (site / "README.txt").write_text("site\n")
    bindir = root / "bin"
    bindir.mkdir()
    shutil.copy(ELF, bindir / "python3.13")
    (bindir / f"idle{lib[6:]}").write_text(f"#!{root}/bin/python3.13\n# {'native' if frontend else 'target'}\n")
    if frontend:
        (site / "pip").mkdir()
        (site / "pip" / "__init__.py").write_text("__version__ = '25.3'\n")
        (bindir / "pip3").write_text("#!/opt/_internal/cpython-3.13.15/bin/python\nfrom pip import main\n")
        (bindir / "pip").symlink_to("pip3")
    return root


def run(native: Path, target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(native), str(target)], capture_output=True, text=True, check=False)


def test_copies_what_the_target_lacks_and_nothing_else(tmp_path):
    native, target = prefix(tmp_path / "native", frontend=True), prefix(tmp_path / "target", frontend=False)
    target_python = (target / "bin" / "python3.13").read_bytes()
    proc = run(native, target)
    assert proc.returncode == 0, proc.stderr
    assert "1 entries of lib/python3.13/site-packages and 2 script(s)" in proc.stdout
    assert (target / "lib/python3.13/site-packages/pip/__init__.py").read_text() == "__version__ = '25.3'\n"
    assert (target / "bin/pip3").read_text().startswith("#!/opt/_internal/cpython-3.13.15/bin/python\n")
    assert (target / "bin/pip").is_symlink() and str((target / "bin/pip").readlink()) == "pip3"
    # The target's own files stay its own.
    assert "# target" in (target / "bin/idle3.13").read_text()
    assert (target / "bin/python3.13").read_bytes() == target_python


@pytest.mark.parametrize(
    "plant, message",
    [
        (lambda native: shutil.copy(ELF, native / "bin" / "uv"), "is a program for the build host"),
        (lambda native: shutil.copy(ELF, native / "lib/python3.13/site-packages/pip/_speedups.so"), "is compiled for the build host"),
        (lambda native: shutil.copy(ELF, native / "lib/python3.13/site-packages/pip/helper"), "is compiled for the build host"),
    ],
    ids=["host-program", "host-extension", "host-binary-in-a-package"],
)
def test_refuses_what_is_built_for_the_host(tmp_path, plant, message):
    native, target = prefix(tmp_path / "native", frontend=True), prefix(tmp_path / "target", frontend=False)
    plant(native)
    proc = run(native, target)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not (target / "lib/python3.13/site-packages/pip").exists()


def test_refuses_a_twin_of_another_release(tmp_path):
    native, target = prefix(tmp_path / "native", frontend=True), prefix(tmp_path / "target", frontend=False)
    (native / "lib/python3.13").rename(native / "lib/python3.12")
    proc = run(native, target)
    assert proc.returncode == 1 and "not the same release" in proc.stderr, proc.stderr


def test_refuses_a_twin_without_a_frontend(tmp_path):
    native, target = prefix(tmp_path / "native", frontend=False), prefix(tmp_path / "target", frontend=False)
    proc = run(native, target)
    assert proc.returncode == 1 and "is the frontend installed there" in proc.stderr, proc.stderr


def test_a_free_threaded_prefix(tmp_path):
    native = prefix(tmp_path / "native", frontend=True, lib="python3.13t")
    target = prefix(tmp_path / "target", frontend=False, lib="python3.13t")
    proc = run(native, target)
    assert proc.returncode == 0, proc.stderr
    assert (target / "lib/python3.13t/site-packages/pip/__init__.py").exists()
    assert (target / "lib/python3.13t/site-packages/README.txt").read_text() == "site\n"
