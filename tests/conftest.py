"""Shared fixtures: the real spec of the repository."""

from __future__ import annotations

import pytest

from manyforge.spec import Spec, load_spec


@pytest.fixture(scope="session")
def spec() -> Spec:
    return load_spec()
