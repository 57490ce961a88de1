"""The scientific example (examples/scientific): an image derived from manylinux_2_36 x86_64
that adds LMDB from Debian's packages and LibYAML built from its pinned source, resolved against
the parent this machine has (by its image ID, never rebuilding it), built, checked, and then
used by unmodified cibuildwheel on real projects' sdists from PyPI that link those libraries:
py-lmdb and PyYAML. auditwheel grafts the libraries into the wheels, and each wheel installs and
passes its project's check in the parent image, which has neither library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from manyforge import engine, parent, pipeline, publish
from manyforge.render import render_derived_dockerfile
from manyforge.sources import SourceCache
from manyforge.spec import load_spec
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "scientific"
HOST_CA = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
# Real third-party projects, one per library, as their sdists on PyPI.
PROJECTS = {
    "lmdb": {
        "sdist": "lmdb==3.0.0",
        "library": "liblmdb",
        # The LMDB it runs with is the image's (Debian 12's 0.9.24), not py-lmdb's bundled copy.
        "check": (
            "import lmdb, tempfile; assert lmdb.version()[:3] == (0, 9, 24), lmdb.version(); "
            "env = lmdb.open(tempfile.mkdtemp()); "
            "txn = env.begin(write=True); txn.put(b'k', b'v'); txn.commit(); "
            "assert env.begin().get(b'k') == b'v'; print('lmdb ok')"
        ),
    },
    "pyyaml": {
        "sdist": "pyyaml==6.0.4",
        "library": "libyaml",
        "check": (
            "import yaml; assert yaml.__with_libyaml__; from yaml import _yaml; "
            "assert _yaml.get_version_string() == '0.2.5', _yaml.get_version_string(); "
            "assert yaml.load(yaml.dump({'a': [1, 2]}, Dumper=yaml.CSafeDumper), Loader=yaml.CSafeLoader) == {'a': [1, 2]}; "
            "print('pyyaml ok')"
        ),
    },
}


PASSWORD = "derived-example"


@pytest.fixture(scope="module")
def key_password() -> str:
    return PASSWORD


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    """The example, copied out of the repository (as a downstream project keeps it), resolved
    against this machine's parent, built."""
    work = tmp_path_factory.mktemp("scientific")
    spec_file = work / "manyforge.yaml"
    shutil.copy(EXAMPLE / "manyforge.yaml", spec_file)
    spec = load_spec(spec_file)
    assert spec.overlay == spec_file and "scientific" in spec.derived and "manylinux_2_36" in spec.images
    parent_target = resolve_target(spec, "manylinux_2_36", "x86_64")
    if not engine.local_image_exists(parent_target.latest_ref):  # a fresh machine: built (and cached) first
        pipeline.build(spec, SourceCache(), parent_target)
    [facts] = pipeline.resolve_derived(spec, "scientific", "x86_64")
    assert (work / parent.LOCK_NAME).exists()
    target = pipeline.derived_target(spec, "scientific", "x86_64")
    result = pipeline.build_derived(spec, SourceCache(), target)
    target = pipeline.derived_target(spec, "scientific", "x86_64")
    assert target.latest_ref in result.tags
    print(f"\n[build] {target.slug}: built in {result.seconds:.0f}s FROM {facts.image_id}", file=sys.stderr)
    return target, result, facts, parent_target.latest_ref


def test_the_parent_is_read_from_the_image_and_pinned(derived):
    target, _, facts, parent_ref = derived
    assert facts.image_id == engine.image_id(parent_ref)
    assert (facts.policy, facts.arch, facts.plat, facts.family) == ("manylinux_2_36", "x86_64", "manylinux_2_36_x86_64", "apt")
    assert "cp39-cp39" in facts.interpreters and facts.sbom
    text = render_derived_dockerfile(target)
    assert f"FROM manyforge-parent/scientific_x86_64:{facts.image_id.removeprefix('sha256:')}\n" in text
    assert render_derived_dockerfile(target) == text  # a pure function of spec and lock


def test_the_derived_image_names_its_parent_and_passes_its_checks(derived):
    target, result, facts, _ = derived
    labels = engine.image_labels(result.tags[0])
    assert labels["io.manyforge.parent-image-id"] == facts.image_id
    assert labels["org.opencontainers.image.base.name"] == facts.ref
    assert labels["io.manyforge.libraries"] == "libyaml-0.2.5"
    # The parent's contract is unchanged: what cibuildwheel reads.
    env = engine.run_in_image(result.tags[0], "x86_64", ["bash", "-c", "echo $AUDITWHEEL_PLAT $LMDB_FORCE_SYSTEM; ls /opt/python"])
    assert env.split()[:2] == ["manylinux_2_36_x86_64", "1"] and set(facts.interpreters) <= set(env.split()[2:])
    assert pipeline.run_checks(target, result.tags[0]) == []


def test_the_sbom_has_the_parents_components_and_every_addition(derived):
    _, result, facts, parent_ref = derived
    sbom = json.loads(engine.read_image_file(result.image_id, "/opt/_internal/sbom.cdx.json", 32 << 20))
    parent_sbom = json.loads(engine.read_image_file(facts.image_id, "/opt/_internal/sbom.cdx.json", 32 << 20))
    refs = {c["bom-ref"]: c for c in sbom["components"]}
    assert refs["parent"]["version"] == facts.image_id
    # Every interpreter the parent's SBOM lists is kept.
    for c in parent_sbom["components"]:
        if c["bom-ref"].startswith("cpython:"):
            assert c["bom-ref"] in refs
    lib = refs["library:libyaml"]
    assert lib["version"] == "0.2.5" and lib["hashes"] == [{"alg": "SHA-256", "content": "fa240dbf262be053f3898006d502d514936c818e422afdcf33921c63bed9bf2e"}]
    lmdb = [c for c in sbom["components"] if c["name"] == "liblmdb-dev"]
    assert lmdb and lmdb[0]["version"] and {"name": "manyforge:added-by", "value": "derived"} in lmdb[0]["properties"]


@pytest.fixture(scope="module")
def wheels(derived, tmp_path_factory):
    """Each project's sdist from PyPI, built, repaired and tested by unmodified cibuildwheel in
    the derived image (the image's own environment makes them link its libraries)."""
    _, result, _, _ = derived
    work = tmp_path_factory.mktemp("wheels")
    out = work / "wheelhouse"
    for name, project in PROJECTS.items():
        sdists = work / "sdists" / name
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(sdists), project["sdist"]],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        [sdist] = sdists.glob("*.tar.gz")
        env = {
            **os.environ,
            "CIBW_MANYLINUX_X86_64_IMAGE": result.tags[0],
            "CIBW_ARCHS": "x86_64",
            "CIBW_BUILD": "cp313-manylinux_x86_64",
            "CIBW_TEST_COMMAND": f'python -c "{project["check"]}"',
            "CIBW_ENVIRONMENT": f"PIP_CERT=/host{HOST_CA}",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "cibuildwheel", "--platform", "linux", "--output-dir", str(out), str(sdist)],
            cwd=work, env=env, capture_output=True, text=True, check=False, timeout=3600,
        )  # fmt: skip
        log = proc.stdout[-5000:] + proc.stderr[-5000:]
        assert proc.returncode == 0, log
        assert re.search(rf"^{name} ok$", proc.stdout + proc.stderr, re.M), log
    return out


def test_cibuildwheel_builds_wheels_that_carry_the_libraries(wheels):
    for name, project in PROJECTS.items():
        [wheel] = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name)]
        assert "manylinux_2_36_x86_64" in wheel.name
        with zipfile.ZipFile(wheel) as whl:
            grafted = [n for n in whl.namelist() if re.search(rf"\.libs/{project['library']}[-.][^/]*\.so", n)]
        assert grafted, f"auditwheel grafted no {project['library']} into {wheel.name}"


def test_the_wheels_pass_their_checks_in_the_parent_which_lacks_the_libraries(derived, wheels):
    _, _, facts, parent_ref = derived
    script = "ldconfig -p | grep -E 'liblmdb|libyaml' && exit 7; " + " && ".join(
        f"/opt/python/cp313-cp313/bin/python -m pip install -q --no-index --no-deps /wheels/{w.name} "
        f"&& /opt/python/cp313-cp313/bin/python -c \"{PROJECTS[_project(w.name)]['check']}\""
        for w in sorted(wheels.glob("*.whl"))
    )
    run = engine.run_container(facts.image_id, "x86_64", ["bash", "-c", script], mounts={str(wheels): "/wheels"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "lmdb ok" in run.stdout and "pyyaml ok" in run.stdout


def _project(wheel_name: str) -> str:
    return next(n for n in PROJECTS if wheel_name.lower().startswith(n))


def _contract(ref: str) -> subprocess.CompletedProcess:
    """The installed `manyforge` command, as a downstream maintainer runs it."""
    command = shutil.which("manyforge", path=str(Path(sys.executable).parent)) or "manyforge"
    return subprocess.run([command, "contract", ref], capture_output=True, text=True, check=False, timeout=600)


def test_the_contract_command_passes_the_derived_image_and_its_parent(derived):
    _, result, _, parent_ref = derived
    for ref in (result.tags[0], parent_ref):
        proc = _contract(ref)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(r"\(x86_64\): (\d+) of \1 contract checks pass$", proc.stdout.strip()), proc.stdout


def test_the_contract_command_fails_an_image_that_is_no_manylinux_image(derived):
    """The parent's bootstrapped Debian base: a Linux image, but none of the contract."""
    _, _, _, parent_ref = derived
    spec = load_spec(EXAMPLE / "manyforge.yaml")
    base = resolve_target(spec, "manylinux_2_36", "x86_64").base_ref()
    proc = _contract(base)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL AUDITWHEEL_PLAT is <policy>_<arch>" in proc.stdout and "FAIL auditwheel runs" in proc.stdout


def _manyforge(*args: str, **kwargs) -> subprocess.CompletedProcess:
    command = shutil.which("manyforge", path=str(Path(sys.executable).parent)) or "manyforge"
    return subprocess.run([command, *args], capture_output=True, text=True, check=False, timeout=1800, **kwargs)


def test_the_tested_derived_image_is_published_signed_and_attested(derived, registry, keys):
    """`manyforge test` records the contract and the checks against the image ID; `manyforge
    publish` then pushes it, signs it and attests its SBOM; cosign verifies both with the public
    key, and the attested SBOM has the parent's interpreters and the library with its hash."""
    target, result, facts, _ = derived
    spec_file = target.spec.source_file
    proc = _manyforge("test", "--spec", str(spec_file), "--image", "scientific", "--arch", "x86_64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = publish.read_test_record(result.image_id)
    assert record.ok and record.slug == "scientific_x86_64" and record.passed == record.collected > 10
    proc = _manyforge("publish", "--spec", str(spec_file), "--image", "scientific", "--registry", f"{registry}/downstream",
                      "--key", str(keys[0]), env={**os.environ, "COSIGN_PASSWORD": PASSWORD})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    catalog = json.loads(proc.stdout)
    entry = catalog["arches"]["x86_64"]
    assert catalog["policy"] == "manylinux_2_36" and entry["libc"] == {"name": "glibc", "version": "2.36"}
    assert set(entry["interpreters"]) == {t for t in facts.interpreters if t.startswith("cp")}
    pinned = f"{entry['repository']}@{entry['digest']}"
    engine.cosign_verify(pinned, keys[1])
    sbom = engine.verified_sbom(pinned, keys[1])
    refs = {c["bom-ref"]: c for c in sbom["components"]}
    assert refs["parent"]["version"] == facts.image_id and refs["library:libyaml"]["version"] == "0.2.5"
    assert engine.remote_config_digest(f"{entry['repository']}:{entry['tags'][0]}", True) == result.image_id
    assert catalog["index"]["arches"] == ["x86_64"]


def test_packages_check_names_a_package_the_parents_repositories_lack(derived, tmp_path):
    """`invoke packages-check` of a derived image asks the parent's own repositories."""
    spec_file = tmp_path / "manyforge.yaml"
    spec_file.write_text(
        "derived:\n  check:\n    from: manylinux_2_36\n    archs: [x86_64]\n    packages: [liblmdb-dev, libmanyforge-nowhere-dev]\n"
    )
    spec = load_spec(spec_file)
    pipeline.resolve_derived(spec, "check", "x86_64")
    missing = pipeline.packages_check_derived(pipeline.derived_target(spec, "check", "x86_64"))
    assert [name for _, name in missing] == ["libmanyforge-nowhere-dev"]


def test_an_autotools_library_and_a_project_script_build_and_reach_the_sbom(derived, tmp_path):
    """The other declared build system (LibYAML's configure.ac, regenerated with the parent's
    autotools: Debian's orig tarball has no configure) and a step of the project's own, mounted
    from its repository, whose declared install is in the SBOM."""
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "vendor.sh").write_text("#!/bin/sh\nset -eu\nmkdir -p /opt/vendor\necho 1.2.3 > /opt/vendor/VERSION\n")
    spec_file = tmp_path / "manyforge.yaml"
    spec_file.write_text(
        "org: example\n"
        "derived:\n"
        "  autotools:\n"
        "    from: manylinux_2_36\n"
        "    archs: [x86_64]\n"
        "    libraries:\n"
        "      libyaml:\n"
        '        version: "0.2.5"\n'
        "        debian: pool/main/liby/libyaml/libyaml_0.2.5.orig.tar.gz\n"
        "        sha256: fa240dbf262be053f3898006d502d514936c818e422afdcf33921c63bed9bf2e\n"
        "        build: autotools\n"
        "        options: [--disable-static]\n"
        "    script: {path: ci/vendor.sh, installs: [{name: vendor-sdk, version: 1.2.3}]}\n"
        "    checks:\n"
        "      - test -e /usr/local/lib/libyaml.so && test ! -e /usr/local/lib/libyaml.a\n"
        "      - test \"$(cat /opt/vendor/VERSION)\" = 1.2.3\n"
    )
    spec = load_spec(spec_file)
    pipeline.resolve_derived(spec, "autotools", "x86_64")
    target = pipeline.derived_target(spec, "autotools", "x86_64")
    result = pipeline.build_derived(spec, SourceCache(), target)  # runs the checks
    sbom = json.loads(engine.read_image_file(result.image_id, "/opt/_internal/sbom.cdx.json", 32 << 20))
    refs = {c["bom-ref"]: c for c in sbom["components"]}
    assert refs["script:vendor-sdk"]["version"] == "1.2.3"
    assert {"name": "manyforge:build", "value": "autotools"} in refs["library:libyaml"]["properties"]
    # The library in the image is the proof that autoreconf ran (the orig tarball has no
    # configure); the build log is not: a warm build cache replays the stage without output.


@pytest.mark.skipif(not os.environ.get("MANYFORGE_TEST_DERIVED_CHANGELOG"), reason="opt-in (about 4 minutes): MANYFORGE_TEST_DERIVED_CHANGELOG=1")
def test_the_changelog_of_a_derived_image_shows_its_parents_changes(derived, registry, keys, tmp_path):
    """Two releases of one derived image, the second on another parent (the scientific image,
    pinned by digest in the registry): the changelog between them names the parent's new parts."""
    _, scientific, _, _ = derived
    digest = engine.push_image(scientific.image_id, f"{registry}/upstream/scientific_x86_64", plain_http=True)
    parents = {"one": "manylinux_2_36", "two": f"{registry}/upstream/scientific_x86_64@{digest}"}
    tags = []
    for release, parent_ref in parents.items():
        work = tmp_path / release
        work.mkdir()
        (work / "manyforge.yaml").write_text(f"org: example\nderived:\n  app:\n    from: {parent_ref}\n    archs: [x86_64]\n")
        spec = load_spec(work / "manyforge.yaml")
        pipeline.resolve_derived(spec, "app", "x86_64")
        target = pipeline.derived_target(spec, "app", "x86_64")
        pipeline.build_derived(spec, SourceCache(), target)
        failed, _ = pipeline.record_derived(pipeline.derived_target(spec, "app", "x86_64"))
        assert not failed
        os.environ["COSIGN_PASSWORD"] = PASSWORD
        try:
            catalog = publish.publish(spec, "app", None, f"{registry}/changelog", keys[0], log=lambda line: None)
        finally:
            del os.environ["COSIGN_PASSWORD"]
        tags.append(catalog["release"])
    log = publish.changelog(spec, f"{registry}/changelog", "app", ["x86_64"], tags[0], tags[1], keys[1])
    packages = log["arches"]["x86_64"]["packages"]
    added = {name for name, _ in packages["added"]}
    assert {"liblmdb-dev", "libyaml", parents["two"]} <= added, packages
    # Nothing went away: the first release's parent is the new parent's own parent, still named.
    assert packages["removed"] == [] and packages["updated"] == [], packages
    subprocess.run(["docker", "image", "rm", "--no-prune", parents["two"]], check=False, capture_output=True)
