"""The publish stage's decisions that need no registry: what a registry option may be, what a
changelog reports between two SBOMs, and that every image writes its SBOM when it is built."""

from __future__ import annotations

import pytest

from manyforge.publish import Destination, PublishError, changelog_markdown, diff_sboms, previous_release
from manyforge.render import render_dockerfile, sbom_input
from manyforge.spec import load_spec
from manyforge.target import resolve_target

SPEC = load_spec()


@pytest.mark.parametrize("value", ["", "127.0.0.1:5000", "Registry/ns", "host/ns/", "host:port/ns", "host/ns\nRUN x", "host/UPPER"])
def test_registry_option_is_checked(value):
    with pytest.raises(PublishError, match="expected HOST\\[:PORT\\]/NAMESPACE"):
        Destination.parse(value)


def test_registry_option_parts():
    dest = Destination.parse("127.0.0.1:5000/team/manyforge")
    assert dest.plain_http and dest.repository("manylinux_2_36_x86_64") == "127.0.0.1:5000/team/manyforge/manylinux_2_36_x86_64"
    assert not Destination.parse("registry.example/ns").plain_http


def _sbom(ninja: str, extra_package: bool = False) -> dict:
    components = [
        {"type": "application", "name": "cpython", "version": "3.13.5", "properties": [{"name": "manyforge:interpreter", "value": "cp313-cp313"}]},
        {"type": "library", "name": "ninja", "version": ninja, "properties": [{"name": "manyforge:installed-in", "value": "tools"}]},
        {"type": "library", "name": "libc6", "version": "2.36-9"},
        {"type": "application", "name": "gcc", "version": "12.2.0", "bom-ref": "toolchain",
         "properties": [{"name": "manyforge:toolchain", "value": "debian-gcc-12"}]},
    ]
    if extra_package:
        components.append({"type": "library", "name": "git", "version": "1:2.39.5-0+deb12u2"})
    return {"components": components}


def test_changelog_reports_exactly_what_changed():
    changes = diff_sboms(_sbom("1.13.2"), _sbom("1.11.1.4", extra_package=True))
    assert changes["tools"] == {"added": [], "removed": [], "updated": [["ninja", "1.13.2", "1.11.1.4"]]}
    assert changes["packages"]["added"] == [["git", "1:2.39.5-0+deb12u2"]]
    assert not any(changes["interpreters"].values()) and not any(changes["toolchain"].values())
    text = changelog_markdown({"image": "m", "from": "a", "to": "b", "arches": {"x86_64": changes}})
    assert "- ninja: 1.13.2 → 1.11.1.4" in text and "- added git 1:2.39.5-0+deb12u2" in text


@pytest.mark.parametrize("image, arch", [("manylinux_2_36", "x86_64"), ("manylinux_2_28", "s390x"), ("musllinux_1_2", "armv7l")])
def test_every_image_writes_its_sbom_at_build_time(image, arch):
    target = resolve_target(SPEC, image, arch)
    assert "write-sbom.py /build/sbom-input.json /opt/_internal/sbom.cdx.json" in render_dockerfile(target)
    data = sbom_input(target)
    assert [c["tag"] for c in data["cpython"]] == list(target.interpreters)
    assert {w["name"] for w in data["wheels"]["tools"]} >= {"auditwheel", "cyclonedx-python-lib"}
    assert set(data["wheels"]["frontend"]) == set(target.interpreters)
    assert data["package_query"] and data["purl_type"] in ("deb", "rpm", "apk")


def test_previous_release_is_the_newest_older_dated_tag():
    tags = ["latest", "2026.11.22-3", "2026.11.23-1", "2026.11.23-10", "2026.11.23-2", "sha256-abc.sig"]
    assert previous_release(tags, "2026.11.23-10") == "2026.11.23-2"
    assert previous_release(tags, "2026.11.23-1") == "2026.11.22-3"
    assert previous_release(tags, "2026.11.22-3") is None
