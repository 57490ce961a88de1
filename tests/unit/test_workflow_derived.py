"""Derived images declared in images.yaml flow through the GitHub workflow: each rides on the job
of its parent image×arch as released (built FROM the parent's local image ID after it, tested by
the image suite through MANYFORGE_TEST_DERIVED, published under the parent's release tag by the
same job); none is silently left out: what the workflow cannot build is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from manyforge import workflow
from manyforge.spec import DEFAULT_SPEC, SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "image.yml"


def _matrix_with(tmp_path, derived: dict):
    """images.yaml with `derived:` added, as a matrix file of the checkout would declare them."""
    data = yaml.safe_load(DEFAULT_SPEC.read_text())
    data["derived"] = derived
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def _jobs(spec, image: str) -> dict[str, dict]:
    [entry] = [m for m in workflow.matrix(spec) if m["image"] == image]
    jobs = [j for leg in ("native", "cross") if entry[leg] for j in json.loads(entry[leg])["include"]]
    return {j["slug"]: j for j in jobs}


def test_images_yaml_declares_no_derived_image_and_its_jobs_carry_none():
    spec = load_spec(DEFAULT_SPEC)
    assert spec.derived == {}
    for entry in workflow.matrix(spec):
        for leg in ("native", "cross"):
            for job in json.loads(entry[leg])["include"] if entry[leg] else []:
                assert job["derived"] == "" and job["derived_images"] == "", job["slug"]


def test_a_derived_image_rides_on_its_parents_job_as_released(tmp_path):
    spec = _matrix_with(tmp_path, {"scientific": {"from": "manylinux_2_36", "archs": ["x86_64"], "packages": ["liblmdb-dev"]}})
    jobs = _jobs(spec, "manylinux_2_36")
    own = jobs["manylinux_2_36_x86_64"]
    assert own["derived"] == f"{tmp_path / 'images.yaml'}:scientific:x86_64" and own["derived_images"] == "scientific"
    # Not on the other arches, nor on a variant of the parent (not what it derives from).
    others = {slug: j["derived_images"] for slug, j in jobs.items() if slug != "manylinux_2_36_x86_64"}
    assert others and set(others.values()) == {""}, others
    for entry in workflow.matrix(spec):
        if entry["image"] != "manylinux_2_36":
            assert all(j["derived_images"] == "" for j in _jobs(spec, entry["image"]).values())


def test_the_repositorys_own_matrix_file_is_named_from_the_checkout():
    spec = load_spec(DEFAULT_SPEC)
    assert workflow._spec_argument(spec) == "images.yaml"


@pytest.mark.parametrize(
    "derived,message",
    [
        ({"from": "registry.example/pypa/manylinux_2_28_x86_64@sha256:" + "0" * 64, "archs": ["x86_64"]}, "its parent is pinned by digest"),
        ({"from": "manylinux_2_36", "archs": ["s390x"]}, "s390x is cross-built or emulated on its runner"),
        ({"from": "manylinux_2_36", "archs": ["x86_64", "aarch64"]}, "the workflow publishes derived images of one arch; 2 declared"),
    ],
)
def test_a_derived_image_the_workflow_cannot_build_is_refused_not_dropped(tmp_path, derived, message):
    spec = _matrix_with(tmp_path, {"app": derived})
    with pytest.raises(SpecError) as exc:
        workflow.matrix(spec)
    assert any(p.startswith("images.yaml: derived.app: ") and message in p for p in exc.value.problems), exc.value.problems


def test_the_image_workflow_tests_and_publishes_the_jobs_derived_images():
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    steps = {s.get("name"): s for s in jobs["native"]["steps"]}
    assert steps["build, then test the image (writes its test record)"]["env"]["MANYFORGE_TEST_DERIVED"] == "${{ matrix.derived }}"
    publish = steps["publish this arch under the image's release tag"]
    assert publish["env"]["DERIVED"] == "${{ matrix.derived_images }}"
    assert 'invoke publish --registry="$REGISTRY" --image="$name" --arch="$ARCH" --tag="$TAG"' in publish["run"]
