"""Shared fixtures: the real spec of the repository."""

from __future__ import annotations

import os

import pytest

from manyforge.spec import DEFAULT_SPEC, Spec, load_spec


@pytest.fixture(scope="session")
def spec() -> Spec:
    return load_spec(os.environ.get("MANYFORGE_SPEC") or DEFAULT_SPEC)
