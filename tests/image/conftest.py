"""Build the images under test for real (cached by BuildKit when nothing changed), start one
container of each, and hand testinfra hosts to the tests.

Which images: the image this machine builds end to end (the first bootstrappable base in
images.yaml), natively for x86_64 and under QEMU for s390x, each with all its interpreters
(emulated CPython builds compile with the host's cross compiler, so this fits CI time).
MANYFORGE_TEST_ARCHES=x86_64 narrows the run; MANYFORGE_TEST_IMAGE=<image> tests another
image (the GitHub workflow tests each one); MANYFORGE_TEST_PARTIAL=1 builds only the tools
interpreter for emulated arches.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from manyforge import engine, pipeline
from manyforge.arches import RUNS_NATIVELY
from manyforge.render import Target, resolve_target
from manyforge.sources import SourceCache
from manyforge.spec import Spec, load_spec

EMULATED_ARCH = "s390x"
SAMPLE = Path(__file__).parent / "sample"


@dataclass(frozen=True)
class BuiltImage:
    target: Target
    ref: str


def _targets(spec: Spec) -> list[Target]:
    image = os.environ.get("MANYFORGE_TEST_IMAGE") or pipeline.default_image(spec)
    arches = os.environ.get("MANYFORGE_TEST_ARCHES", f"x86_64,{EMULATED_ARCH}").split(",")
    out = []
    for arch in arches:
        if arch in RUNS_NATIVELY or not os.environ.get("MANYFORGE_TEST_PARTIAL"):
            out.append(resolve_target(spec, image, arch))
        else:
            out.append(resolve_target(spec, image, arch, interpreters=[spec.images[image].tools_interpreter]))
    return out


_SPEC = load_spec()
TARGETS = _targets(_SPEC)


def pytest_generate_tests(metafunc):
    """One build per target for the whole session; interpreter tests fan out per interpreter."""
    if "interpreter" in metafunc.fixturenames:
        pairs = [(t, tag) for t in TARGETS for tag in t.interpreters]
        metafunc.parametrize(
            ["built_image", "interpreter"], pairs, indirect=["built_image"], scope="session",
            ids=[f"{t.slug}-{tag}" for t, tag in pairs],
        )  # fmt: skip
    elif "built_image" in metafunc.fixturenames:
        metafunc.parametrize("built_image", TARGETS, indirect=True, scope="session", ids=[t.slug for t in TARGETS])


@pytest.fixture(scope="session")
def built_image(request, spec) -> BuiltImage:
    target: Target = request.param
    # Progress of a long build belongs on the terminal, not in pytest's capture.
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n[build] {target.slug}", file=sys.stderr)
        result = pipeline.build(spec, SourceCache(), target)
        size = engine.image_size(result.tags[0])
        print(f"[build] {target.slug}: {result.seconds:.0f}s, {size / 1e6:.0f} MB", file=sys.stderr)
    return BuiltImage(target, result.tags[0])


@pytest.fixture(scope="session")
def host(built_image: BuiltImage):
    container = engine.start_container(built_image.ref, built_image.target.arch, mounts={str(SAMPLE): "/sample"})
    try:
        yield testinfra.get_host(f"docker://{container.id}")
    finally:
        container.remove(force=True)
