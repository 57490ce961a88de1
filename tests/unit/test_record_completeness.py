"""When a test session's records may say "complete": the selection rules of tests/image/conftest.py.

Publishing trusts a record only when every image test of the image was selected and ran. Each
way of running fewer tests than the whole suite must make the session's records incomplete:
-k, -m, --deselect, --last-failed, single tests named by node ID, and deselection by anything
but the conftest's own not-applicable rule (pytest's --stepwise drops the tests before the last
failure through the same hook).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TESTS = ROOT / "tests" / "image"


def _conftest():
    spec = importlib.util.spec_from_file_location("image_conftest", IMAGE_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["image_conftest"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


CONFTEST = _conftest()
MODULES = {p.name for p in IMAGE_TESTS.glob("test_*.py")}


class Stash(dict):
    def get(self, key, default=None):
        return super().get(key, default)


def session(args=("tests/image",), keyword="", markexpr="", deselect=None, lf=False, foreign=False):
    stash = Stash({CONFTEST._MODULES: MODULES})
    if foreign:
        stash[CONFTEST._FOREIGN_DESELECT] = True
    option = SimpleNamespace(keyword=keyword, markexpr=markexpr, deselect=deselect, lf=lf)
    return SimpleNamespace(config=SimpleNamespace(option=option, args=list(args), stash=stash))


def test_the_whole_suite_is_whole():
    assert CONFTEST._whole_suite(session())


@pytest.mark.parametrize(
    "changes",
    [
        {"keyword": "cibuildwheel"},
        {"markexpr": "not image"},
        {"deselect": ["tests/image/test_image.py::test_x"]},
        {"lf": True},
        {"args": [f"tests/image/{m}::test_x" for m in sorted(MODULES)]},  # one test of every module
        {"foreign": True},
    ],
    ids=["-k", "-m", "--deselect", "--lf", "node-ids", "foreign-deselect"],
)
def test_any_narrower_selection_is_not_whole(changes):
    assert not CONFTEST._whole_suite(session(**changes))


def test_stepwise_deselection_is_seen_as_foreign(monkeypatch):
    """--sw (or any plugin) deselects through pytest_deselected; only the conftest's own
    not-applicable deselection keeps the session whole."""
    config = SimpleNamespace(stash=Stash({CONFTEST._OWN_DESELECT: {"tests/image/test_image.py::own"}}))
    own = SimpleNamespace(config=config, nodeid="tests/image/test_image.py::own")
    other = SimpleNamespace(config=config, nodeid="tests/image/test_image.py::test_x[manylinux_2_36_x86_64]")
    monkeypatch.setattr(CONFTEST, "_item_target", lambda item: object())  # both are image tests
    CONFTEST.pytest_deselected([own])
    assert not config.stash.get(CONFTEST._FOREIGN_DESELECT, False)
    CONFTEST.pytest_deselected([other])
    assert config.stash[CONFTEST._FOREIGN_DESELECT]
