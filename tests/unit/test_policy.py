"""Policies: validation of policies/, derivation from dumps, agreement with auditwheel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manyforge import policy
from manyforge.policy import Dump, PolicyEntry, PolicyError

ROOT = Path(__file__).resolve().parents[2]
DUMPS = ROOT / "tests" / "data" / "dumps"


def entry(name, priority, versions, libs=("libc.so.6",)):
    return PolicyEntry(name=name, priority=priority, symbol_versions=versions, lib_whitelist=list(libs))


def dump(label, version, arch, libraries):
    return Dump(label=label, libc="glibc", libc_version=version, arch=arch, libraries=libraries)


def test_repository_policies_load_and_cover_every_image(spec):
    policies = policy.load_all(spec=spec)
    assert {image.policy for image in spec.images.values()} <= set(policies)


def test_older_than_previous_entry_is_refused(tmp_path):
    """A newer policy that allows less than an older one is named with its arch and field."""
    path = tmp_path / "manylinux-policy.json"
    policy.write_policies(path, [
        entry("manylinux_2_28", 64, {"x86_64": {"GLIBC": ["2.17", "2.28"], "GLIBCXX": ["3.4.24", "3.4.25"]}}),
        entry("manylinux_2_34", 58, {"x86_64": {"GLIBC": ["2.17", "2.28", "2.34"], "GLIBCXX": ["3.4.24"]}}),
    ])  # fmt: skip
    with pytest.raises(PolicyError) as err:
        policy.load_policies(path)
    assert err.value.problems == [
        "manylinux-policy.json: manylinux_2_34: x86_64: symbol_versions.GLIBCXX lacks 3.4.25 that older manylinux_2_28 allows"
    ]


def test_priority_and_whitelist_order_are_checked(tmp_path):
    path = tmp_path / "manylinux-policy.json"
    policy.write_policies(path, [
        entry("manylinux_2_28", 60, {"x86_64": {}}, libs=("libc.so.6", "libz.so.1")),
        entry("manylinux_2_31", 61, {"x86_64": {}}),
    ])  # fmt: skip
    with pytest.raises(PolicyError) as err:
        policy.load_policies(path)
    assert "manylinux-policy.json: manylinux_2_31: priority 61 must be below manylinux_2_28's 60" in err.value.problems
    assert "manylinux-policy.json: manylinux_2_31: lib_whitelist lacks libz.so.1 that older manylinux_2_28 allows" in err.value.problems


def test_malformed_entry_names_policy_and_field(tmp_path):
    path = tmp_path / "manylinux-policy.json"
    path.write_text(json.dumps([{"name": "manylinux_2_31", "priority": "high", "symbol_versions": {}, "lib_whitelist": []}]))
    with pytest.raises(PolicyError) as err:
        policy.load_policies(path)
    assert err.value.problems[0].startswith("manylinux-policy.json: manylinux_2_31: priority: Input should be a valid integer")


def test_missing_policy_for_an_image_is_named(spec, tmp_path):
    for filename in policy.FAMILY_FILES.values():
        entries = [e for e in policy.load_policies(policy.POLICY_DIR / filename) if e.name != "manylinux_2_36"]
        policy.write_policies(tmp_path / filename, entries)
    with pytest.raises(PolicyError) as err:
        policy.load_all(tmp_path, spec=spec)
    assert err.value.problems == [
        "manylinux-policy.json: no policy manylinux_2_36, which images.yaml image manylinux_2_36 declares"
    ]


def test_derive_intersects_same_libc_and_widens_newer():
    dumps = [
        dump("a", "2.31", "x86_64", {"libc.so.6": {"GLIBC": ["2.2.5", "2.31"]}, "libstdc++.so.6": {"GLIBCXX": ["3.4", "3.4.28"]}}),
        dump("b", "2.31", "x86_64", {"libc.so.6": {"GLIBC": ["2.2.5", "2.31"]}, "libstdc++.so.6": {"GLIBCXX": ["3.4"]}}),
        dump("c", "2.36", "x86_64", {"libc.so.6": {"GLIBC": ["2.2.5", "2.36"]}, "libstdc++.so.6": {"GLIBCXX": ["3.4", "3.4.30"]}}),
    ]
    result = policy.derive(dumps, published=[])
    by_name = {e.name: e for e in result.entries}
    # Intersection: b lacks GLIBCXX 3.4.28, so manylinux_2_31 does not allow it.
    assert by_name["manylinux_2_31"].symbol_versions["x86_64"] == {"GLIBC": ["2.2.5", "2.31"], "GLIBCXX": ["3.4"]}
    # Widening: manylinux_2_36 also allows all of manylinux_2_31 (here: GLIBC 2.31).
    assert by_name["manylinux_2_36"].symbol_versions["x86_64"]["GLIBC"] == ["2.2.5", "2.31", "2.36"]
    assert by_name["manylinux_2_31"].priority > by_name["manylinux_2_36"].priority
    assert policy.check_order("x", result.entries) == []


def test_derive_keeps_published_and_reports_contradictions():
    published = [entry("manylinux_2_36", 56, {"x86_64": {"GLIBC": ["2.2.5", "2.36"], "GLIBCXX": ["3.4", "3.4.30"]}})]
    dumps = [dump("old-distro", "2.36", "x86_64", {"libc.so.6": {"GLIBC": ["2.2.5", "2.36"]}, "libstdc++.so.6": {"GLIBCXX": ["3.4"]}})]
    result = policy.derive(dumps, published)
    assert result.entries == published
    assert result.report == [
        "manylinux_2_36 (x86_64): dump old-distro lacks GLIBCXX 3.4.30 that the published policy allows"
    ]


def test_symbol_dump_reads_a_real_library_of_this_host():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "calculate_symbol_versions.py"), "--libraries", "libc.so.6,libstdc++.so.6"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(proc.stdout)
    assert data["libc"]["name"] == "glibc"
    glibc = data["libraries"]["libc.so.6"]["GLIBC"]
    assert data["libc"]["version"] in glibc  # the libc defines its own release's version
    assert "PRIVATE" not in glibc
    assert "CXXABI" in data["libraries"]["libstdc++.so.6"]


def test_symbol_dump_of_a_missing_root_fails_cleanly(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "calculate_symbol_versions.py"), "--root", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no glibc libc.so.6 or musl loader found under")


def test_debian_dumps_cover_three_releases_and_two_arches():
    dumps = [Dump.read(p) for p in sorted(DUMPS.glob("debian-*.json"))]
    versions = {(d.libc_version, d.arch) for d in dumps}
    for version in ("2.31", "2.36", "2.41"):
        assert {a for v, a in versions if v == version} >= {"x86_64", "aarch64"}, version


def test_derivation_from_debian_dumps_matches_policies_dir():
    """policies/ holds what derivation from the committed Debian dumps gives (nothing hand-edited)."""
    dumps = [Dump.read(p) for p in sorted(DUMPS.glob("debian-*.json"))]
    published = [e for e in policy.load_policies(policy.POLICY_DIR / "manylinux-policy.json")]
    result = policy.derive(dumps, [e for e in published if e.name not in {"manylinux_2_31", "manylinux_2_36", "manylinux_2_41"}])
    derived = {e.name: e for e in result.entries}
    for e in published:
        assert derived[e.name] == e, e.name


def test_differences_from_auditwheel_are_all_recorded(spec):
    """Every difference from the pinned auditwheel's policies has a recorded reason, and every
    recorded difference still exists."""
    from manyforge.sources import SourceCache, fetch_wheels

    cache = SourceCache()
    auditwheel = next(w for w in spec.wheels["manylinux_2_36_x86_64"] if w.name == "auditwheel")
    if not cache.has(auditwheel):  # a fresh machine: fetch the pinned wheel (hash-checked)
        fetch_wheels(spec, cache, spec.images["manylinux_2_36"], "x86_64")
    theirs = policy.auditwheel_policies(cache.verify(auditwheel))
    recorded = yaml.safe_load((policy.POLICY_DIR / "differences.yaml").read_text())
    actual: dict[str, list[str]] = {}
    for name, ours in policy.load_all().items():
        if name in theirs:
            diffs = policy.compare(ours, theirs[name])
            if diffs:
                actual[name] = diffs
    assert sorted(actual) == sorted(recorded)
    for name, diffs in actual.items():
        assert recorded[name]["reason"].strip()
        assert sorted(recorded[name]["differences"]) == sorted(diffs), name


def test_image_check_flags_probes_libc_and_libraries_beyond_the_policy():
    policies = {p.name: p for p in policy.load_policies(policy.POLICY_DIR / "manylinux-policy.json")}
    image_dump = {
        "libc": {"name": "glibc", "version": "2.34"},
        "libraries": {"libstdc++.so.6": {"GLIBCXX": ["3.4", "3.4.99"]}, "libfoo.so.1": {"FOO": ["9"]}},
    }
    probes = {
        "c-libc": {"policy": "manylinux_2_5_x86_64"},
        "cxx-format": {"policy": "manylinux_2_39_x86_64"},
        "cxx-jthread": {"skipped": "g++ cannot build it"},
    }
    report, problems = policy.check_image("manylinux_2_36", "x86_64", image_dump, probes, policies)
    assert report == [
        "probe c-libc: manylinux_2_5_x86_64 (ok)",
        "probe cxx-format: manylinux_2_39_x86_64 (NEEDS MORE THAN THE POLICY)",
        "probe cxx-jthread: skipped (g++ cannot build it)",
    ]
    assert problems == [
        "manylinux_2_36: the image's glibc is 2.34, the policy is for 2.36",
        "manylinux_2_36 (x86_64): the image's libstdc++.so.6 defines GLIBCXX 3.4.99, beyond what the policy "
        "allows; wheels built here could need them",
        "probe cxx-format needs manylinux_2_39_x86_64, more than the image's manylinux_2_36",
    ]
