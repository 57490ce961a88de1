"""Where each image×arch builds and how: the build host's arch decides what is native, what is
cross-compiled and what runs under QEMU (an arm64 runner is native for aarch64 and armv7l and
builds x86_64 or s390x as foreign targets); the runners of images.yaml, validated; the time and
disk each workflow job is expected to take; and the `--builder` option with the cache options a
builder gets. No Docker: renders and option handling only."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from manyforge import engine, workflow
from manyforge.arches import host_arch, runs_natively
from manyforge.engine import Builder, EngineError, builder_name, cache_options, check_builder
from manyforge.render import render_dockerfile
from manyforge.spec import DEFAULT_SPEC, SpecError, load_spec, spec_from_data
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec()


def froms(dockerfile: str) -> dict[str, str]:
    """Stage name -> its FROM line's platform ('' when it has none)."""
    return {m.group(2): m.group(1) or "" for m in re.finditer(r"^FROM (?:--platform=(\S+) )?\S+ AS (\S+)$", dockerfile, re.M)}


# --- target resolution ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["aarch64", "armv7l"])
def test_an_arm64_host_builds_aarch64_and_armv7l_natively_with_no_qemu(arch):
    target = resolve_target(SPEC, "manylinux_2_36", arch, build_host="aarch64")
    assert not target.emulated and not target.cross_compiles
    stages = froms(render_dockerfile(target))
    assert not [s for s in stages if s.startswith(("native_", "cross"))]
    assert target.bootstrap_arches == [arch]


@pytest.mark.parametrize(("arch", "package"), [("x86_64", "gcc-12-x86-64-linux-gnu"), ("s390x", "gcc-12-s390x-linux-gnu"),
                                               ("i686", "gcc-12-i686-linux-gnu")])  # fmt: skip
def test_an_arm64_host_cross_compiles_x86_64_and_s390x_from_its_own_stages(arch, package):
    target = resolve_target(SPEC, "manylinux_2_36", arch, build_host="aarch64")
    assert target.emulated and target.cross_compiles
    assert target.native().arch == "aarch64" and target.bootstrap_arches == [arch, "aarch64"]
    text = render_dockerfile(target)
    stages = froms(text)
    # The build host's own image, verbatim, for its platform; the compiler is Debian's cross
    # compiler for the target (Debian spells x86_64 as x86-64 in package names).
    assert stages["native_runtime"] == "linux/arm64" and "native_cpython_cp313_cp313" in stages
    assert re.search(rf"^\s+{re.escape(package)} ", text, re.M)
    assert "cross_cpython_cp313_cp313" in stages


def test_an_x86_64_host_is_what_it_always_was():
    for arch, cross in (("x86_64", False), ("i686", False), ("aarch64", True), ("armv7l", True), ("s390x", True)):
        target = resolve_target(SPEC, "manylinux_2_36", arch, build_host="x86_64")
        assert target.cross_compiles is cross, arch
        if cross:
            assert froms(render_dockerfile(target))["native_runtime"] == "linux/amd64"


def test_a_base_that_cannot_be_cross_built_runs_under_qemu_whatever_the_host():
    raw = copy.deepcopy(yaml.safe_load(DEFAULT_SPEC.read_text()))
    raw["bases"]["alpine312"]["emulated"] = ["s390x"]  # e.g. with its own LLD 10, which links no s390x
    spec = spec_from_data(raw, DEFAULT_SPEC, None, SPEC.lock_path, check_lock=False)
    s390x = replace(resolve_target(spec, "musllinux_1_1", "x86_64", build_host="x86_64"), arch="s390x")
    assert s390x.emulated and not s390x.cross_compiles
    assert "AS cross" not in render_dockerfile(s390x)


def test_the_build_host_defaults_to_this_machine_and_unknown_hosts_are_refused():
    assert host_arch("arm64") == "aarch64" and host_arch("aarch64") == "aarch64" and host_arch("x86_64") == "x86_64"
    with pytest.raises(ValueError, match="build hosts: x86_64, aarch64"):
        host_arch("sparc64")
    assert resolve_target(SPEC, "manylinux_2_36", "x86_64").build_host == host_arch()
    with pytest.raises(SpecError, match="unknown build host 'armv7l'; choose one of: x86_64, aarch64"):
        resolve_target(SPEC, "manylinux_2_36", "x86_64", build_host="armv7l")
    assert runs_natively("armv7l", "aarch64") and not runs_natively("armv7l", "x86_64")


def test_render_takes_the_build_host_on_the_command_line(tmp_path):
    out = tmp_path / "Dockerfile"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "render", "--image=manylinux_2_36", "--arch=s390x", "--build-host=aarch64", f"--output={out}"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert froms(out.read_text())["native_runtime"] == "linux/arm64"


# --- runners in images.yaml ----------------------------------------------------------------------


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_SPEC.read_text())


def _problems(raw: dict) -> str:
    with pytest.raises(SpecError) as caught:
        spec_from_data(raw, DEFAULT_SPEC, None, SPEC.lock_path, check_lock=False)
    return "\n".join(caught.value.problems)


def test_an_arch_built_by_two_runners_or_by_none_is_refused():
    raw = copy.deepcopy(_raw())
    raw["runners"]["arm64"]["builds"].append("s390x")
    assert "runners.arm64.builds: s390x is already built by runner 'x86_64'" in _problems(raw)
    raw = copy.deepcopy(_raw())
    raw["runners"]["x86_64"]["builds"].remove("ppc64le")
    text = _problems(raw)
    assert "images.manylinux2014.archs[3]: no runner builds ppc64le" in text


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("labels", ["ubuntu 24.04"], "runners.arm64.labels"),
    ("labels", ["-self-hosted"], "runners.arm64.labels"),
    ("labels", [], "runners.arm64.labels"),
    ("arch", "armv7l", "runners.arm64.arch"),
])  # fmt: skip
def test_a_runners_values_are_validated(key, value, expected):
    raw = copy.deepcopy(_raw())
    raw["runners"]["arm64"][key] = value
    assert expected in _problems(raw)


def test_the_matrix_puts_each_arch_on_its_runner_and_in_its_leg():
    jobs = {j["slug"]: j for image in SPEC.images for j in workflow.image_entries(SPEC, image)}
    assert jobs["manylinux_2_28_aarch64"]["runner"] == ["ubuntu-24.04-arm"] and jobs["manylinux_2_28_aarch64"]["leg"] == "native"
    assert jobs["musllinux_1_2_armv7l"]["build_host"] == "aarch64" and jobs["musllinux_1_2_armv7l"]["qemu"] == ""
    assert jobs["manylinux_2_28_s390x"]["runner"] == ["ubuntu-24.04"] and jobs["manylinux_2_28_s390x"]["leg"] == "cross"
    assert jobs["manylinux_2_28_s390x"]["qemu"] == "s390x" and jobs["manylinux_2_36_s390x"]["debootstrap"] == "true"


# --- the time and disk of each job ---------------------------------------------------------------


def test_every_job_fits_a_hosted_runner():
    for image, arch, leg, e in workflow.estimates(SPEC):
        assert e.minutes_uncached < workflow.JOB_BUDGET_MINUTES, (image, arch, leg, e)
        assert e.disk_gb < workflow.RUNNER_DISK_GB, (image, arch, leg, e)


def test_the_measured_builds_are_what_the_model_says_on_two_cores():
    # The model's stage times reproduce the builds they were taken from (2 cores, no tests).
    def two_core_seconds(image, arch, interpreters, host="x86_64"):
        target = resolve_target(SPEC, image, arch, interpreters=interpreters, build_host=host)
        e = workflow.estimate(target)
        tests = (3 + len(target.interpreters)) * (5 if target.emulated else 1)
        return (e.minutes_cached - workflow.SETUP_MIN - tests) * 60 / workflow.FOUR_CORE_FACTOR

    four = ["cp39-cp39", "cp311-cp311", "cp313-cp313", "cp313-cp313t"]
    # 818 s for the interpreters and 41 s of bootstrap, measured before Debian 12 built SQLite and
    # zstd from source, plus those two libraries' stages (82 s), plus git (55 s, measured) and
    # libtool (40 s, the model's figure) since the Debian images build them
    tools = 55 + 40
    assert two_core_seconds("manylinux_2_36", "x86_64", four) == pytest.approx(818 + 41 + 82 + tools, abs=60)
    assert two_core_seconds("manylinux_2_31", "x86_64", ["cp313-cp313"]) == pytest.approx(392 + 41 + tools, abs=60)


def test_musllinux_1_1_s390x_fits_only_cross_compiled():
    """Under QEMU (Alpine 3.12's own LLD 10 links no s390x) it would not fit the budget; with the
    static clang it cross-compiles and would. It is still not built (images.yaml says why)."""
    assert "s390x" not in SPEC.image("musllinux_1_1").archs
    s390x = replace(resolve_target(SPEC, "musllinux_1_1", "x86_64", build_host="x86_64"), arch="s390x")
    assert s390x.cross_compiles and workflow.estimate(s390x).minutes_cached <= workflow.JOB_BUDGET_MINUTES
    raw = copy.deepcopy(yaml.safe_load(DEFAULT_SPEC.read_text()))
    raw["bases"]["alpine312"]["emulated"] = ["s390x"]
    spec = spec_from_data(raw, DEFAULT_SPEC, None, SPEC.lock_path, check_lock=False)
    emulated = replace(resolve_target(spec, "musllinux_1_1", "x86_64", build_host="x86_64"), arch="s390x")
    assert workflow.estimate(emulated).minutes_cached > workflow.JOB_BUDGET_MINUTES


# --- --builder -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mf-second", "a.b_c", "B1", "x" * 63])
def test_a_builder_name_is_accepted(name):
    assert builder_name(name) == name


@pytest.mark.parametrize("name", ["-x", "--help", "a b", "a,b", "a=b", "", "x" * 64, "b\u00e4r", "a/b", "a\nb"])
def test_a_builder_name_that_is_no_name_is_refused(name):
    with pytest.raises(EngineError, match="--builder .*: not a buildx builder name"):
        builder_name(name)


def test_build_and_benchmark_refuse_a_bad_builder_before_anything_runs():
    for task in ("build", "benchmark"):
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", task, "--builder=--driver=remote"], cwd=ROOT, capture_output=True, text=True,
            check=False, timeout=120,
        )  # fmt: skip
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "error: --builder '--driver=remote': not a buildx builder name (ASCII letters, digits, _ . -, starting with a "
            "letter or digit, at most 63 characters); see `docker buildx ls`"
        ]


REGISTRY_BASED = resolve_target(SPEC, "manylinux_2_28", "x86_64", build_host="x86_64")
CROSS = resolve_target(SPEC, "manylinux_2_28", "s390x", build_host="x86_64")
DEBIAN = resolve_target(SPEC, "manylinux_2_36", "x86_64", build_host="x86_64")
CACHE = "ghcr.io/org/cache"


def test_no_cache_setting_gives_only_the_builder():
    assert cache_options(Builder("farm", "remote"), CROSS, None, True, default_builder=False) == ["--builder=farm"]
    assert cache_options(Builder(None, "docker"), CROSS, None, True, default_builder=True) == []


def test_a_builder_that_exports_reads_and_writes_the_cache_and_a_cross_target_reads_its_hosts():
    args = cache_options(Builder("farm", "docker-container"), CROSS, CACHE, True, default_builder=False)
    assert args == [
        "--builder=farm",
        "--cache-from", f"type=registry,ref={CACHE}:manylinux_2_28_s390x",
        "--cache-from", f"type=registry,ref={CACHE}:manylinux_2_28_x86_64",
        "--cache-to", f"type=registry,ref={CACHE}:manylinux_2_28_s390x,mode=max",
    ]  # fmt: skip
    # Only reading it: no --cache-to.
    assert "--cache-to" not in cache_options(Builder("farm", "kubernetes"), CROSS, CACHE, False, default_builder=False)


def test_the_docker_driver_on_the_classic_store_only_reads_a_named_cache():
    second = Builder("second", "docker", context="second")
    args = cache_options(second, REGISTRY_BASED, CACHE, True, default_builder=False)
    # A docker-driver builder is chosen by its context (buildx refuses --builder for it).
    assert second.docker_argv == ["--context=second"]
    assert args == ["--cache-from", f"type=registry,ref={CACHE}:manylinux_2_28_x86_64"]


def test_without_builder_the_engines_own_writes_the_cache_on_containerds_store_debian_bases_included():
    own = Builder(None, "docker", containerd_store=True)
    for target in (REGISTRY_BASED, DEBIAN):
        args = cache_options(own, target, CACHE, True, default_builder=True)
        assert "--builder" not in " ".join(args) and args[-2:] == ["--cache-to", f"type=registry,ref={CACHE}:{target.slug},mode=max"]


def test_without_builder_on_the_classic_store_a_docker_container_builder_takes_the_cache_but_not_debian_bases(capsys):
    classic = Builder(None, "docker")
    args = cache_options(classic, REGISTRY_BASED, CACHE, True, default_builder=True)
    assert args[0] == f"--builder={engine.CACHE_BUILDER}" and "--cache-to" in args
    assert cache_options(classic, DEBIAN, CACHE, True, default_builder=True) == []
    assert "building without the registry cache" in capsys.readouterr().err


def test_a_builder_that_cannot_see_the_engines_images_is_refused_for_bootstrapped_bases():
    for driver in ("docker-container", "remote", "kubernetes"):
        with pytest.raises(EngineError, match="cannot see; use a docker-driver builder"):
            check_builder(Builder("farm", driver), DEBIAN)
        check_builder(Builder("farm", driver), REGISTRY_BASED)
    check_builder(Builder("second", "docker"), DEBIAN)


@pytest.mark.parametrize(("args", "expected"), [
    (["--image=manylinux_2_36", "--arch=riscv64"], "error: unknown arch 'riscv64' for image manylinux_2_36; choose one of: x86_64,"),
    (["--image=manylinux_2_36"], "error: --image and --arch: give both (one canary job) or neither (the whole matrix)"),
    (["--image=--help", "--arch=x86_64"], "error: unknown image '--help'; choose one of: manylinux2014,"),
])  # fmt: skip
def test_the_canary_takes_only_an_image_arch_of_images_yaml(args, expected):
    proc = subprocess.run([sys.executable, "-m", "invoke", "matrix", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith(expected), proc.stderr


def test_the_readmes_estimates_table_is_the_models():
    """README's table is `invoke matrix --estimates`: it was hand-copied once and went stale when
    the Debian images declared every interpreter."""
    readme = (ROOT / "README.md").read_text()
    assert workflow.estimates_table(SPEC) in readme, "README's estimates table differs: paste `invoke matrix --estimates`"
