"""Unmodified cibuildwheel (pinned in the test extras) against the images built for real: it
builds, repairs and tests the sample project for every interpreter it supports, with its
default frontend (`build`) and with `build[uv]`, exactly as a user's CI would.

The only settings are the ones any user sets: which image, which identifiers, a test command,
and (for the test step's `pip install virtualenv`) the host's CA bundle, which cibuildwheel
makes visible in the container under /host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from consumer import wanted

pytestmark = pytest.mark.image

SAMPLE = Path(__file__).parent / "sample"
NATIVE = ("x86_64", "i686")  # what runs on this host without QEMU
HOST_CA = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
TEST_COMMAND = (
    "python -c \"import manyforge_sample as m; assert m.add(40, 2) == 42; "
    "assert m.sorted_words('pear apple') == 'apple pear'; print('sample ok')\""
)


def cibuildwheel_identifier(tag: str, arch: str) -> str | None:
    """cibuildwheel's build identifier for an /opt/python tag; None if 4.x no longer builds it
    (free-threaded 3.13 was experimental and is gone from 4.x)."""
    m = re.fullmatch(r"cp3(\d+)-cp3\d+(t?)", tag)
    if m is None or tag == "cp313-cp313t":
        return None
    return f"cp3{m.group(1)}{m.group(2)}-manylinux_{arch}"


def run_cibuildwheel(project, env: dict[str, str], tmp_path, identifiers: list[str]):
    """Unmodified cibuildwheel on the sample project: it succeeds, its test command passes once
    per identifier and it leaves one wheel each. Gives the wheelhouse, its wheels, the output."""
    out = tmp_path / "wheelhouse"
    proc = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--platform", "linux", "--output-dir", str(out), "."],
        cwd=project, env=env, capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    log = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, log
    assert len(re.findall(r"^sample ok$", output, re.M)) == len(identifiers), log
    wheels = sorted(p.name for p in out.glob("*.whl"))
    assert len(wheels) == len(identifiers), wheels
    return out, wheels, output


@pytest.mark.parametrize("frontend", ["default", "build[uv]"])
def test_cibuildwheel_builds_repairs_and_tests_every_interpreter(built_image, frontend, tmp_path):
    target = built_image.target
    if target.arch not in NATIVE:
        pytest.skip("cibuildwheel runs the native images here")
    if not target.image.policy.startswith("manylinux"):
        pytest.skip("this test points CIBW_MANYLINUX_* at the image")
    if "cp39-cp39" not in target.interpreters:
        pytest.skip(f"{target.slug} has no cp39, the interpreter cibuildwheel runs its helpers with (a CI subset)")
    identifiers = [i for t in target.interpreters if (i := cibuildwheel_identifier(t, target.arch))]
    assert identifiers
    project = tmp_path / "project"
    shutil.copytree(SAMPLE, project)
    env = {
        **os.environ,
        f"CIBW_MANYLINUX_{target.arch.upper()}_IMAGE": built_image.ref,
        "CIBW_ARCHS": target.arch,
        "CIBW_BUILD": " ".join(identifiers),
        "CIBW_TEST_COMMAND": TEST_COMMAND,
        # The test step's `pip install virtualenv` goes to the index; cibuildwheel mounts the
        # host's / at /host, so pip in the container can use the host's CA bundle.
        "CIBW_ENVIRONMENT": f"PIP_CERT=/host{HOST_CA}",
    }
    if frontend != "default":
        env["CIBW_BUILD_FRONTEND"] = frontend
    out, wheels, _ = run_cibuildwheel(project, env, tmp_path, identifiers)
    policy_tag = f"{target.image.policy}_{target.arch}"
    for identifier in identifiers:
        abi = identifier.split("-")[0]  # cp314t: python tag cp314, ABI tag cp314t
        mine = [w for w in wheels if f"-{abi.rstrip('t')}-{abi}-" in w]
        assert len(mine) == 1, (identifier, wheels)
        assert policy_tag in mine[0].removesuffix(".whl").split("-")[-1].split("."), mine[0]
        with zipfile.ZipFile(out / mine[0]) as whl:
            assert any(n.endswith(".so") for n in whl.namelist())


# An OCI runtime that drops the bundle's rlimits, then runs runc: only where podman cannot start
# a container at all because the kernel refuses the limits it sets (a sandbox without
# CAP_SYS_RESOURCE, such as our CI machines'). Docker sets none, so it is never needed there.
_NO_RLIMITS_RUNTIME = """#!/usr/bin/env python3
import json, os, shutil, sys
args = sys.argv[1:]


def without_rlimits(path, key):
    with open(path) as fh:
        config = json.load(fh)
    (config.get("process", {}) if key else config).pop("rlimits", None)
    with open(path, "w") as fh:
        json.dump(config, fh)


for i, arg in enumerate(args):
    value = args[i + 1] if i + 1 < len(args) else ""
    if arg in ("--bundle", "-b") or arg.startswith("--bundle="):  # create: the bundle's config.json
        without_rlimits(os.path.join(arg.partition("=")[2] or value, "config.json"), "process")
    elif arg in ("--process", "-p") or arg.startswith("--process="):  # exec: the process's own JSON
        without_rlimits(arg.partition("=")[2] or value, None)
runc = shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin")
os.execv(runc, ["runc", *args])
"""


def _runs_cibuildwheel(t) -> bool:
    """cibuildwheel runs the native manylinux images here, with its helpers in cp39."""
    return t.arch in NATIVE and t.image.policy.startswith("manylinux") and "cp39-cp39" in t.interpreters


@pytest.mark.applies_to.with_args(_runs_cibuildwheel)
def test_cibuildwheel_with_podman_builds_repairs_and_tests(built_image, tmp_path):
    """container-engine = "podman", unmodified cibuildwheel: the image built by the Docker engine
    reaches podman's store as a user's would (`docker save | podman load`)."""
    target = built_image.target
    podman = shutil.which("podman")
    assert podman, "podman is missing: scripts/setup-host.sh installs Debian's"
    saved = subprocess.Popen(["docker", "save", built_image.ref], stdout=subprocess.PIPE)
    loaded = subprocess.run([podman, "load"], stdin=saved.stdout, capture_output=True, text=True, check=False, timeout=1800)
    assert saved.wait() == 0 and loaded.returncode == 0, loaded.stderr
    env = dict(os.environ)
    try:
        probe = subprocess.run([podman, "run", "--rm", built_image.ref, "true"], capture_output=True, text=True, check=False, timeout=300)
        if probe.returncode != 0 and "rlimit" in probe.stderr.lower():
            runtime = tmp_path / "runc-no-rlimits"
            runtime.write_text(_NO_RLIMITS_RUNTIME)
            runtime.chmod(0o755)
            conf = tmp_path / "containers.conf"
            conf.write_text(f'[engine]\nruntime = "norlimits"\n[engine.runtimes]\nnorlimits = ["{runtime}"]\n')
            env["CONTAINERS_CONF"] = str(conf)
            print(f"\n[podman] this kernel refuses podman's rlimits ({probe.stderr.strip()[-120:]}); runc without them", file=sys.stderr)
            probe = subprocess.run([podman, "run", "--rm", built_image.ref, "true"], env=env, capture_output=True, text=True, check=False, timeout=300)
        assert probe.returncode == 0, probe.stderr
        identifiers = [i for t in ("cp39-cp39", target.image.tools_interpreter) if (i := cibuildwheel_identifier(t, target.arch))]
        project = tmp_path / "project"
        shutil.copytree(SAMPLE, project)
        env.update({
            "CIBW_CONTAINER_ENGINE": "podman",
            f"CIBW_MANYLINUX_{target.arch.upper()}_IMAGE": built_image.ref,
            "CIBW_ARCHS": target.arch,
            "CIBW_BUILD": " ".join(identifiers),
            "CIBW_TEST_COMMAND": TEST_COMMAND,
            "CIBW_ENVIRONMENT": f"PIP_CERT=/host{HOST_CA}",
        })  # fmt: skip
        _, wheels, output = run_cibuildwheel(project, env, tmp_path, identifiers)
        assert "podman" in output, output[-6000:]
        assert all(f"{target.image.policy}_{target.arch}" in w for w in wheels), wheels
    finally:
        subprocess.run([podman, "rmi", "--force", built_image.ref], capture_output=True, check=False, env=env, timeout=300)


def _reachable(url: str) -> str | None:
    """None if the archive answers; else why not (one line)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return None
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))[:200]


def _offers(t, implementation: str) -> bool:
    return any(t.spec.data.downloadable[tag].implementation == implementation for tag in t.downloadable)


@pytest.mark.applies_to.with_args(lambda t: _runs_cibuildwheel(t) and _offers(t, "pypy"))
def test_cibuildwheel_builds_pypy_where_its_archive_is_reachable(built_image, host, tmp_path):
    _pypy_or_graalpy(built_image, host, tmp_path, "pypy")


@pytest.mark.applies_to.with_args(lambda t: _runs_cibuildwheel(t) and _offers(t, "graalpy"))
def test_cibuildwheel_builds_graalpy_where_its_archive_is_reachable(built_image, host, tmp_path):
    _pypy_or_graalpy(built_image, host, tmp_path, "graalpy")


def _pypy_or_graalpy(built_image, host, tmp_path, implementation: str) -> None:
    """Unmodified cibuildwheel with the PyPy/GraalPy groups enabled: `ensure` downloads the pinned
    archive in the container, then it builds, repairs and tests. Where the archive cannot be
    reached (python.org and GitHub cannot from our machines) the test says so, and checks that the
    image's catalog offers exactly the pin images.yaml has, at the path cibuildwheel asks for; the
    download path itself is tested with a served archive (test_dropin.py)."""
    target = built_image.target
    asked = {w.tag: w for w in wanted(target.image.libc.name, target.arch)}
    offered = [t for t in target.downloadable if target.spec.data.downloadable[t].implementation == implementation and t in asked]
    assert offered, f"{target.slug} offers no {implementation} cibuildwheel asks for on {target.arch}"
    tag = offered[-1]
    pin = target.downloadable[tag]
    catalog = json.loads(host.check_output("cat /opt/_internal/manylinux-interpreters.json"))
    assert catalog["downloadable"][tag]["url"] == pin.url and catalog["downloadable"][tag]["sha256"] == pin.sha256
    assert asked[tag].path == f"/opt/python/{tag}"
    why = _reachable(pin.url)
    if why is not None:
        print(f"\n[{implementation}] {tag}: its archive is not reachable from here ({why}); "
              "the catalog pin is checked, the download path with a served archive", file=sys.stderr)  # fmt: skip
        return
    project = tmp_path / "project"
    shutil.copytree(SAMPLE, project)
    env = {
        **os.environ,
        f"CIBW_MANYLINUX_{target.arch.upper()}_IMAGE": built_image.ref,
        "CIBW_ARCHS": target.arch,
        "CIBW_ENABLE": "pypy pypy-eol graalpy",
        "CIBW_BUILD": asked[tag].identifier,
        "CIBW_TEST_COMMAND": TEST_COMMAND,
        "CIBW_ENVIRONMENT": f"PIP_CERT=/host{HOST_CA}",
    }
    out = tmp_path / "wheelhouse"
    proc = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--platform", "linux", "--output-dir", str(out), "."],
        cwd=project, env=env, capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    log = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, log
    assert re.search(r"^sample ok$", proc.stdout + proc.stderr, re.M), log
    assert [w.name for w in out.glob("*.whl")] and all(tag.split("-")[0] in w.name for w in out.glob("*.whl")), log
