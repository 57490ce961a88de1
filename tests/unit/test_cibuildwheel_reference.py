"""The consumer is the reference: every Linux identifier the pinned cibuildwheel builds (all
enable groups) and every image x arch it pins has an answer in images.yaml.

Read from cibuildwheel itself (tests/consumer.py), against the catalog each image x arch renders
(what its `manylinux-interpreters` offers). Bumping cibuildwheel to a release that adds an
interpreter, an arch or a pinned image fails here until images.yaml answers it.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from consumer import VERSION, Wanted, gaps, pinned_images, wanted

from manyforge.spec import Spec
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_cibuildwheel_is_the_one_asked():
    """The checks below read the installed cibuildwheel: it must be the release the project pins."""
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = [r for r in test_extra if re.match(r"cibuildwheel\s*==", r)]
    assert pins == [f"cibuildwheel=={VERSION}"]
    assert f"cibuildwheel=={VERSION}\n" in (ROOT / "constraints.txt").read_text()


def test_cibuildwheel_is_asked_for_every_arch_and_libc(spec: Spec):
    """The identifiers come from cibuildwheel, not from us: PyPy 8.0 and GraalPy among them."""
    x86 = {w.identifier: w.tag for w in wanted("glibc", "x86_64")}
    assert x86["pp311-manylinux_x86_64"] == "pp311-pypy311_pp80"
    assert any(t.startswith("graalpy") for t in x86.values())
    assert all(w.identifier.endswith("musllinux_x86_64") for w in wanted("musl", "x86_64"))
    for image in spec.images.values():
        for arch in image.archs:
            assert wanted(image.libc.name, arch), f"cibuildwheel builds nothing for {image.libc.name} {arch}?"


def _targets(spec: Spec):
    return [resolve_target(spec, name, arch) for name, image in spec.images.items() for arch in image.archs]


def test_every_identifier_is_carried_offered_or_declared(spec: Spec):
    """For each image x arch: cibuildwheel's identifiers for its arch and libc are in /opt/python,
    offered to `ensure` by the rendered catalog (that arch, the Python version cibuildwheel
    expects), or declared as not built at this site."""
    problems = []
    for target in _targets(spec):
        want = wanted(target.image.libc.name, target.arch)
        found = gaps(want, set(target.interpreters), target.catalog(), target.arch)
        problems += [f"{target.image_name} {target.arch}: {p}" for p in found]
    assert not problems, f"cibuildwheel {VERSION} builds what images.yaml does not answer:\n" + "\n".join(problems)


def test_every_pinned_image_arch_is_built_or_declined(spec: Spec):
    """Every image x arch cibuildwheel pins has an image of ours, or a reason under `unbuilt`."""
    problems = []
    for (image, arch), ref in sorted(pinned_images().items()):
        ours = spec.images.get(image)
        if ours is not None and arch in ours.archs:
            continue
        if arch in spec.data.unbuilt.get(image, {}):
            continue
        problems.append(f"{image} {arch}: pinned by cibuildwheel {VERSION} ({ref.rpartition('/')[2].split('@')[0]}), no image of ours, no reason under unbuilt")
    assert not problems, "\n".join(problems)


def test_the_check_fails_when_the_image_lacks_one():
    """The comparison is not vacuous: an image that lacks an identifier, offers it for another
    Python, or has no file for it, is reported."""
    want = [Wanted("pp311-manylinux_x86_64", "3.11", "/opt/python/pp311-pypy311_pp80")]
    assert gaps(want, {"cp313-cp313"}, {"downloadable": {}}, "x86_64")
    bad_python = {"downloadable": {"pp311-pypy311_pp80": {"python": "3.10", "url": "https://x/a.tar.gz", "sha256": "0" * 64}}}
    assert "Python 3.10" in gaps(want, set(), bad_python, "x86_64")[0]
    assert gaps(want, set(), {"downloadable": {"pp311-pypy311_pp80": {"python": "3.11"}}}, "x86_64")
    good = {"downloadable": {"pp311-pypy311_pp80": {"python": "3.11", "url": "https://x/a.tar.gz", "sha256": "0" * 64}}}
    assert gaps(want, set(), good, "x86_64") == []
    assert gaps(want, set(), {"not_built": {"pp311-pypy311_pp80": "no origin"}}, "x86_64") == []
    assert gaps(want, {"pp311-pypy311_pp80"}, {}, "x86_64") == []
