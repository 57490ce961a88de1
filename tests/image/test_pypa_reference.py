"""pypa's own in-image expectations, run unchanged in ours: pypa/manylinux's
docker/tests/modules-check.py (its module list per version, SQLite >= 3.50 with FTS5, Tk >= 8.6,
zstd >= 1.5.7 from 3.14, OpenSSL >= 1.1.1, sysconfig's CC/CXX/LDSHARED/LDCXXSHARED per policy)
in every interpreter of every image the suite builds.

The file is pypa's, read at a pinned commit from a copy of their repository, never copied into
this project: MANYFORGE_PYPA_MANYLINUX names a clone or bare git directory of pypa/manylinux
(default: the workplace's mirror). Where no copy is on the machine (GitHub is out of reach from
ours), this test is deselected at collection and says so in the session's summary;
check-cpython.py, which every interpreter's build and test_completeness.py run, holds the same
expectations in our own words.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.image

# pypa/manylinux at the commit whose images cibuildwheel 4.3.5 pins' sources were read from.
PYPA_COMMIT = "ad3c453962dd6d0644f765dcc19cc79c6123b9a0"
PYPA_FILE = "docker/tests/modules-check.py"
PYPA_FILE_SHA256 = "165fe23b3b7605e268b74283a1fe4cb0151c1e9994ccfca00c51ced4b7a5dfcd"
DEFAULT_COPY = "/work/.mirror/pypa+manylinux/repo"


def _git_dir(root: Path) -> Path:
    return root / ".git" if (root / ".git").exists() else root


def pypa_modules_check() -> tuple[str | None, str]:
    """pypa's file at the pinned commit, or None and why it is not on this machine."""
    where = Path(os.environ.get("MANYFORGE_PYPA_MANYLINUX", DEFAULT_COPY))
    if not where.exists():
        return None, f"no copy of pypa/manylinux at {where} (set MANYFORGE_PYPA_MANYLINUX)"
    out = subprocess.run(
        ["git", f"--git-dir={_git_dir(where)}", "show", f"{PYPA_COMMIT}:{PYPA_FILE}"],
        capture_output=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        return None, f"{where} has no {PYPA_FILE} at {PYPA_COMMIT[:12]}: {out.stderr.decode(errors='replace').strip()}"
    digest = hashlib.sha256(out.stdout).hexdigest()
    if digest != PYPA_FILE_SHA256:
        return None, f"{where}: {PYPA_FILE} at {PYPA_COMMIT[:12]} has sha256 {digest}, not the pinned {PYPA_FILE_SHA256}"
    return out.stdout.decode(), str(where)


PYPA_CHECK, PYPA_WHERE = pypa_modules_check()
if PYPA_CHECK is None:
    warnings.warn(f"pypa's {PYPA_FILE} is not run (deselected): {PYPA_WHERE}", pytest.PytestWarning, stacklevel=1)


@pytest.mark.applies_to.with_args(lambda target: PYPA_CHECK is not None)
def test_pypa_modules_check_passes_unchanged(host, interpreter):
    """pypa's modules-check.py, as pypa runs it in its own images (unittest, the image's
    AUDITWHEEL_POLICY in the environment), passes in this interpreter."""
    assert PYPA_CHECK is not None, PYPA_WHERE
    result = host.run(f"/opt/python/{interpreter}/bin/python -W ignore -c {shlex.quote(PYPA_CHECK)}")
    assert result.rc == 0, f"pypa's {PYPA_FILE} fails in {interpreter}:\n{result.stderr[-4000:]}"
    assert "OK" in result.stderr.splitlines()[-1], result.stderr[-2000:]
