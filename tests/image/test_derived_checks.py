"""A derived image's own checks (the commands its file declares), run in the built image as part
of its image tests: the rest of the suite (contract, completeness, cibuildwheel) runs on it as on
any image. Deselected for the images of the matrix, which declare none."""

from __future__ import annotations

import pytest

from manyforge import engine, pipeline

pytestmark = pytest.mark.image


@pytest.mark.applies_to.with_args(lambda t: t.is_derived)
def test_the_derived_images_own_checks_pass(built_image):
    assert pipeline.run_checks(built_image.target, built_image.ref) == []


@pytest.mark.applies_to.with_args(lambda t: t.is_derived)
def test_the_derived_image_names_the_parent_it_was_built_from(built_image):
    target = built_image.target
    labels = engine.image_labels(built_image.ref)
    assert labels["io.manyforge.parent-image-id"] == target.parent.image_id == engine.image_id(target.matrix_parent.latest_ref)
