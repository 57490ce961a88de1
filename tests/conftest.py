"""Shared fixtures: the real spec of the repository (or MANYFORGE_SPEC's), loaded once; a
registry on 127.0.0.1 and a cosign key pair for the publishing tests (each module names its key's
password as `key_password`).

A broken MANYFORGE_SPEC (or lock) stops the run before collection with pytest's one-line usage
error naming the variable and the problem, not a traceback from a fixture or a conftest import.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from registry_server import cosign_key_pair, running_registry

from manyforge.spec import DEFAULT_SPEC, Spec, SpecError, load_spec

_SPEC: list[Spec] = []


def pytest_configure(config: pytest.Config) -> None:
    chosen = os.environ.get("MANYFORGE_SPEC")
    try:
        _SPEC.append(load_spec(chosen or DEFAULT_SPEC))
    except SpecError as exc:
        where = f"MANYFORGE_SPEC={chosen[:200]!r}: " if chosen else ""
        raise pytest.UsageError(where + "; ".join(exc.problems)[:2000]) from None


@pytest.fixture(scope="session")
def spec() -> Spec:
    return _SPEC[0]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture(scope="module")
def keys(tmp_path_factory, key_password: str) -> tuple[Path, Path]:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"), key_password)
