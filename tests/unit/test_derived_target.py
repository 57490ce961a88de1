"""A derived target states what it keeps of its parent of the matrix (what the image tests read
of any image) as typed properties, not by forwarding every unknown attribute: the same values as
the parent's, and, with no parent of the matrix, an AttributeError that says why."""

from __future__ import annotations

import copy

import pytest
import yaml
from test_hostile_derived import FILE, facts

from manyforge import parent
from manyforge.spec import load_spec
from manyforge.target import derived_target_of, resolve_target

KEPT = ("image", "auditwheel_policy", "base", "base_name", "toolchain", "downloadable", "omitted")


def _targets(tmp_path, with_parent: bool):
    data = copy.deepcopy(FILE)
    del data["derived"]["stack"]["script"]
    path = tmp_path / "manyforge.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    matrix = resolve_target(spec, "manylinux_2_36", "x86_64", build_host="x86_64")
    lock = parent.DerivedLock(images={"stack": {"x86_64": facts()}})
    return matrix, derived_target_of(spec, lock, "lock", "stack", "x86_64", "x86_64", matrix if with_parent else None)


def test_what_a_derived_image_keeps_is_its_parents(tmp_path):
    matrix, derived = _targets(tmp_path, with_parent=True)
    for name in KEPT:
        assert getattr(derived, name) == getattr(matrix, name), name
    assert derived.cpython_version("cp313-cp313") == matrix.cpython_version("cp313-cp313")
    assert derived.library_builds() == matrix.library_builds()
    # What is its own is not the parent's.
    assert (derived.slug, derived.repository, derived.is_derived) == ("stack_x86_64", "downstream/stack_x86_64", True)


@pytest.mark.parametrize("name", ["fallbacks", "toolchain_name", "interpreter_builds", "native", "base_ref"])
def test_nothing_else_of_the_parent_is_forwarded(tmp_path, name):
    _, derived = _targets(tmp_path, with_parent=True)
    assert not hasattr(derived, name)


def test_without_a_parent_of_the_matrix_the_kept_facts_say_why_they_are_missing(tmp_path):
    _, derived = _targets(tmp_path, with_parent=False)
    for name in KEPT:
        with pytest.raises(AttributeError, match=rf"^{name}: stack_x86_64 has no parent of the matrix to read it from"):
            getattr(derived, name)
    assert derived.interpreters == facts().interpreters  # its own: read from the parent itself
