"""A derived image whose parent is an external image pinned by digest: a registry on 127.0.0.1
stands in for a public one (pypa's, or ours published). The parent is pushed there, named only by
its digest in a downstream file, pulled by the resolve step, read like any parent, and the
derived image names that digest in its labels."""

from __future__ import annotations

import subprocess
import sys

import pytest

from manyforge import engine, parent, pipeline
from manyforge.sources import SourceCache
from manyforge.spec import DEFAULT_SPEC, load_spec
from manyforge.target import resolve_target

# The publishing fixtures' registry and keys (tests/conftest.py) name their password per module.
key_password = pytest.fixture(scope="module")(lambda: "unused")


def test_a_parent_pinned_by_digest_in_a_registry_is_pulled_read_and_named(registry, tmp_path):
    spec = load_spec(DEFAULT_SPEC)
    parent_target = resolve_target(spec, "manylinux_2_36", "x86_64")
    local = parent_target.latest_ref
    if not engine.local_image_exists(local):  # a fresh machine: built (and cached for the image tests) first
        pipeline.build(spec, SourceCache(), parent_target)
    image_id = engine.image_id(local)
    digest = engine.push_image(image_id, f"{registry}/upstream/manylinux_2_36_x86_64", plain_http=True)
    pinned = f"{registry}/upstream/manylinux_2_36_x86_64@{digest}"
    spec_file = tmp_path / "manyforge.yaml"
    spec_file.write_text(
        "org: downstream\n"
        "derived:\n"
        "  lmdb:\n"
        f"    from: {pinned}\n"
        "    archs: [x86_64]\n"
        "    packages: [liblmdb-dev]\n"
        "    checks: [pkg-config --exists lmdb]\n"
    )
    downstream = load_spec(spec_file)
    [facts] = pipeline.resolve_derived(downstream, "lmdb", "x86_64")
    assert facts.ref == pinned and facts.image_id == image_id  # the same image, read from the registry's copy
    assert parent.load_lock(tmp_path / parent.LOCK_NAME).images["lmdb"]["x86_64"] == facts
    target = pipeline.derived_target(downstream, "lmdb", "x86_64")
    result = pipeline.build_derived(downstream, SourceCache(), target)
    labels = engine.image_labels(result.tags[0])
    assert labels["org.opencontainers.image.base.name"] == pinned
    assert labels["org.opencontainers.image.base.digest"] == digest
    assert result.tags[0].startswith("downstream/lmdb_x86_64:")  # the downstream file's org
    # The contract command reads the pinned reference as a maintainer would before pinning it.
    proc = subprocess.run([sys.executable, "-m", "manyforge.cli", "contract", pinned, "--arch", "x86_64"],
                          capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The pulled reference is ours to drop (the image itself stays: it is the local parent too).
    subprocess.run(["docker", "image", "rm", "--no-prune", pinned], check=False, capture_output=True)
