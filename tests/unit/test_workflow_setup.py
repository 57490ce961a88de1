"""Which set-up path a machine takes: scripts/setup-host.sh on our Debian 12 machines,
scripts/setup-runner.sh on GitHub's Ubuntu runners; each refuses the other's hosts with a
message, before it installs anything. The scripts run for real, against os-release files."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SETUP_HOST = ROOT / "scripts" / "setup-host.sh"
SETUP_RUNNER = ROOT / "scripts" / "setup-runner.sh"

OS_RELEASES = {
    "debian12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    "debian13": 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n',
    "ubuntu2404": 'PRETTY_NAME="Ubuntu 24.04.3 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n',
}


def run(script: Path, args: list[str], os_release: str | None, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "os-release"
    if os_release is not None:
        path.write_text(OS_RELEASES[os_release])
    base = {k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "REGISTRY", "MANYFORGE_DEBIAN_MIRROR", "MANYFORGE_DEBIAN_SECURITY_MIRROR")}
    return subprocess.run(
        ["bash", str(script), *args], env={**base, "MANYFORGE_OS_RELEASE": str(path), **env},
        capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_debian_12_takes_the_host_path(tmp_path):
    proc = run(SETUP_HOST, ["--check"], "debian12", tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("debian12"), proc.stderr
    proc = run(SETUP_RUNNER, ["--check"], "debian12", tmp_path)
    assert proc.returncode == 1 and "scripts/setup-host.sh" in proc.stderr


def test_a_github_runner_takes_the_runner_path(tmp_path):
    proc = run(SETUP_RUNNER, ["--check"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true")
    assert proc.returncode == 0 and proc.stdout.startswith("runner"), proc.stderr
    proc = run(SETUP_HOST, ["--check"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true")
    assert proc.returncode == 1
    assert "Ubuntu 24.04.3 LTS" in proc.stderr and "scripts/setup-runner.sh" in proc.stderr


@pytest.mark.parametrize("os_release", ["debian13", "ubuntu2404", None], ids=["debian13", "ubuntu-not-a-runner", "no-os-release"])
def test_the_host_script_refuses_every_other_host_before_installing_anything(tmp_path, os_release):
    # Without --check too: the refusal comes first, so a wrong host never gets Debian's packages.
    proc = run(SETUP_HOST, [], os_release, tmp_path)
    assert proc.returncode == 1
    assert "sets up Debian 12 hosts" in proc.stderr and "==> installing" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("os_release", "env"), [("ubuntu2404", {}), ("debian12", {"GITHUB_ACTIONS": "true"})],
                         ids=["ubuntu-not-a-runner", "debian-in-actions"])  # fmt: skip
def test_the_runner_script_refuses_what_is_not_a_github_ubuntu_runner(tmp_path, os_release, env):
    proc = run(SETUP_RUNNER, ["host"], os_release, tmp_path, **env)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "==>" not in proc.stderr


def test_a_debian_base_on_a_runner_needs_the_mirror_variable(tmp_path):
    proc = run(SETUP_RUNNER, ["host", "--debootstrap"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true")
    assert proc.returncode == 1 and "DEBIAN_MIRROR" in proc.stderr
    proc = run(SETUP_RUNNER, ["host", "--debootstrap"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true",
               MANYFORGE_DEBIAN_MIRROR="http://x.example/debian --no-check-gpg")  # fmt: skip
    assert proc.returncode == 1 and "expected an http(s) URL" in proc.stderr
    proc = run(SETUP_RUNNER, ["host", "--debootstrap"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true",
               MANYFORGE_DEBIAN_MIRROR="http://x.example/debian")  # fmt: skip
    assert proc.returncode == 1 and "DEBIAN_SECURITY_MIRROR" in proc.stderr
    proc = run(SETUP_RUNNER, ["host", "--debootstrap"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true",
               MANYFORGE_DEBIAN_MIRROR="http://x.example/debian", MANYFORGE_DEBIAN_SECURITY_MIRROR="x.example; id")  # fmt: skip
    assert proc.returncode == 1 and "DEBIAN_SECURITY_MIRROR: expected an http(s) URL" in proc.stderr


def test_an_unknown_qemu_arch_is_refused(tmp_path):
    proc = run(SETUP_RUNNER, ["host", "--qemu=sparc64"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true")
    assert proc.returncode == 1 and "--qemu: unknown arch 'sparc64'" in proc.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "set the repository variable MANYFORGE_REGISTRY"),
        ({"REGISTRY": "ghcr.io/org"}, "no credentials for ghcr.io"),
        ({"REGISTRY": "quay.io/org", "GITHUB_TOKEN": "t", "ACTOR": "a"}, "REGISTRY_USERNAME and REGISTRY_PASSWORD"),
    ],
    ids=["no-registry", "ghcr-without-token", "other-registry-without-secrets"],
)
def test_login_takes_the_token_for_ghcr_and_the_secrets_elsewhere(tmp_path, env, expected):
    proc = run(SETUP_RUNNER, ["login"], "ubuntu2404", tmp_path, GITHUB_ACTIONS="true", **env)
    assert proc.returncode == 1 and expected in proc.stderr
    assert "docker login" not in proc.stderr and "logged in" not in proc.stderr


def _runs(workflow: Path) -> list[str]:
    data = yaml.safe_load(workflow.read_text())
    return [str(step.get("run", "")) for job in data["jobs"].values() for step in job.get("steps", [])]


def test_the_workflows_set_runners_up_with_the_runner_script_and_ci_with_the_host_script():
    runs = [r for w in sorted((ROOT / ".github" / "workflows").glob("*.yml")) for r in _runs(w)]
    assert not [r for r in runs if "setup-host.sh" in r or "apt-get install" in r and "docker" in r]
    assert any("scripts/setup-runner.sh host" in r for r in runs)
    # Our machines and CI: scripts/run.sh, the one entry point, takes the Debian path.
    assert re.search(r'"\$root/scripts/setup-host.sh"', (ROOT / "scripts" / "run.sh").read_text())


def test_image_jobs_install_the_image_test_extra_a_part_of_test():
    # The image jobs need what tests/image runs, not the linters; scripts/run.sh and .ci/run keep
    # installing `test`, which holds every requirement of `image-test`.
    text = (ROOT / "pyproject.toml").read_text()  # read as text: tomllib is 3.11+, the project 3.10+
    extras = {name: re.findall(r'^\s+"([^"]+)",', body, re.M)
              for name, body in re.findall(r'^([a-z-]+) = \[\n(.*?)^\]', text, re.M | re.S)}  # fmt: skip
    assert set(extras["image-test"]) <= set(extras["test"]) and len(extras["test"]) > len(extras["image-test"])
    names = {re.split(r"[<>=]", r)[0] for r in extras["image-test"]}
    assert {"pytest", "pytest-testinfra", "cibuildwheel"} == names  # testinfra: tests/image/conftest.py
    installs = [r for r in _runs(ROOT / ".github" / "workflows" / "image.yml") if "pip install" in r]
    assert installs and all('-e ".[image-test]"' in r or re.search(r"-e \.$", r.strip()) for r in installs), installs
