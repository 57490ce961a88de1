"""Derived images: every new field validated, every value through the one quoting point.

A downstream file that uses every field (packages, vendor repositories, libraries of both build
systems, env, checks, a script) is edited one string at a time with the hostile values of
test_hostile_render: each edit is refused by validation with a message naming the file, or the
rendered Dockerfile is the benign one with the value only inside quotes. The parent's facts are
untrusted too: what a parent says about itself is validated before the lock keeps it.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_hostile_render import HOSTILE, assert_only_quoted, strings, variants

from manyforge import parent, quoting
from manyforge.render import render_derived_dockerfile
from manyforge.spec import SpecError, load_spec
from manyforge.target import derived_target_of

ROOT = Path(__file__).resolve().parents[2]
SHA = "fa240dbf262be053f3898006d502d514936c818e422afdcf33921c63bed9bf2e"
FILE = {
    "org": "downstream",
    "derived": {
        "stack": {
            "from": "manylinux_2_36",
            "archs": ["x86_64"],
            "packages": ["liblmdb-dev", "libhdf5-dev"],
            "repositories": {
                "vendor": {
                    "definition": {"url": "https://vendor.example/apt/vendor.sources", "sha256": SHA},
                    "key": {"url": "https://vendor.example/apt/vendor.asc", "sha256": SHA},
                }
            },
            "libraries": {
                "libyaml": {"version": "0.2.5", "debian": "pool/main/liby/libyaml/libyaml_0.2.5.orig.tar.gz", "sha256": SHA,
                            "build": "cmake", "options": ["-DBUILD_SHARED_LIBS=ON"]},
                "zlib-ng": {"version": "2.2.4", "url": "https://example.org/zlib-ng-2.2.4.tar.gz", "sha256": SHA,
                            "build": "autotools", "options": ["--enable-shared", "--with-x=no"]},
            },  # fmt: skip
            "env": {"LMDB_FORCE_SYSTEM": "1", "VENDOR_HOME": "/opt/vendor"},
            "checks": ["pkg-config --exists lmdb"],
            "script": {"path": "ci/vendor-sdk.sh", "installs": [{"name": "vendor-sdk", "version": "12.4.1"}]},
        }
    },
}
# What PROBE prints in a manylinux_2_36 image (its format: parent.PROBE).
PROBE_OUTPUT = """AUDITWHEEL_POLICY=manylinux_2_36
AUDITWHEEL_ARCH=x86_64
AUDITWHEEL_PLAT=manylinux_2_36_x86_64
--- os-release
ID=debian
VERSION_ID="12"
--- opt-python
cp313-cp313
cp39-cp39
--- sbom
yes
"""
IMAGE_ID = "sha256:" + "ab" * 32


def facts(output: str = PROBE_OUTPUT) -> parent.ParentFacts:
    return parent.facts_from_probe("manyforge/manylinux_2_36_x86_64:latest", IMAGE_ID, "x86_64", output)


def render(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "manyforge.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    lock = parent.DerivedLock(images={name: {"x86_64": facts()} for name in spec.derived})
    return "\n".join(render_derived_dockerfile(derived_target_of(spec, lock, "lock", name, "x86_64", "x86_64")) for name in spec.derived)


def edited(path: tuple, value: str) -> dict:
    data = copy.deepcopy(FILE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def test_the_benign_file_renders_every_addition(tmp_path):
    text = render(tmp_path, FILE)
    assert f"FROM manyforge-parent/stack_x86_64:{'ab' * 32}\n" in text
    assert "liblmdb-dev libhdf5-dev" in text
    assert "COPY sources/vendor.asc /etc/apt/keyrings/vendor.asc" in text
    assert "COPY sources/vendor.sources /etc/apt/sources.list.d/vendor.sources" in text
    assert "libyaml cmake /build/libyaml_0.2.5.orig.tar.gz \\\n        -DBUILD_SHARED_LIBS=ON" in text
    assert "zlib-ng autotools /build/zlib-ng-2.2.4.tar.gz \\\n        --enable-shared --with-x=no" in text
    assert "source=project/ci/vendor-sdk.sh" in text and "VENDOR_HOME=/opt/vendor" in text


LEAVES = list(strings(FILE))


@pytest.mark.parametrize("path,original", LEAVES, ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else "")
def test_a_hostile_value_in_a_derived_file_is_refused_or_quoted(tmp_path, path, original):
    benign = render(tmp_path, FILE)
    for hostile in HOSTILE:
        for value in variants(original, hostile):
            try:
                text = render(tmp_path, edited(path, value))
            except SpecError as exc:
                assert str(exc).startswith(("manyforge.yaml: ", "derived.")), str(exc)
                continue
            except quoting.UnquotedValue:
                continue  # refused at render: the value never reached a Dockerfile
            if path[:-1][-1:] == ("env",) and hostile in ("..", ".lock"):
                assert f"{path[-1]}={value}" in text  # a value, never a path: ENV takes it as written
                continue
            assert_only_quoted(text, benign, hostile, f"{value!r} at {'.'.join(map(str, path))}")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["derived"]["stack"].update({"from": "manylinux_9_99"}), "derived.stack.from: unknown image 'manylinux_9_99'"),
        (lambda d: d["derived"]["stack"].update({"from": "registry.example/pypa/manylinux_2_28_x86_64:latest"}), "pinned by digest"),
        (lambda d: d["derived"]["stack"].update({"from": "registry.example/pypa/manylinux_2_28_x86_64@sha256:" + "0" * 64, "archs": []}),
         "derived.stack.archs: required for a parent pinned by digest"),
        (lambda d: d["derived"]["stack"].update(archs=["riscv64"]), "the parent manylinux_2_36 has no riscv64"),
        (lambda d: d["derived"]["stack"]["env"].update(AUDITWHEEL_PLAT="linux_x86_64"), "env.AUDITWHEEL_PLAT: set by the parent image"),
        (lambda d: d["derived"]["stack"]["libraries"]["libyaml"].update(options=["--enable-shared"]), "is not a cmake option"),
        (lambda d: d["derived"]["stack"]["libraries"]["zlib-ng"].update(options=["-DX=1"]), "is not a autotools option"),
        (lambda d: d["derived"]["stack"]["libraries"]["zlib-ng"].update(build="meson"), "'meson' is not allowed"),
        (lambda d: d["derived"]["stack"]["libraries"]["zlib-ng"].pop("url"), "give 'url' (upstream) or 'debian'"),
        (lambda d: d["derived"]["stack"]["script"].update(path="../../etc/passwd"), "derived.stack.script.path"),
        (lambda d: d["derived"]["stack"]["script"].update(installs=[]), "derived.stack.script.installs"),
        (lambda d: d["derived"]["stack"].update(checks=["true\nRUN id"]), "derived.stack.checks[0]"),
        (lambda d: d["derived"]["stack"].update(colour="blue"), "derived.stack.colour: unknown key"),
        (lambda d: d["derived"].update(manylinux_2_31=d["derived"]["stack"]), "an image of the matrix has this name"),
        (lambda d: d.update(cpython={}), "cpython: unknown key; allowed keys here: org, derived"),
        # Two different files of one name would overwrite each other in the source cache.
        (lambda d: d["derived"]["stack"]["repositories"]["vendor"]["key"].update(sha256="0" * 64, url="https://other.example/vendor.sources"),
         "derived.stack: repositories.vendor.key: its file vendor.sources has the name of repositories.vendor.definition's"),
    ],
)
def test_a_broken_derived_file_names_the_key(tmp_path, edit, message):
    data = copy.deepcopy(FILE)
    edit(data)
    with pytest.raises(SpecError) as exc:
        render(tmp_path, data)
    assert any(message in p for p in exc.value.problems), exc.value.problems
    assert all(p.startswith("manyforge.yaml: ") for p in exc.value.problems), exc.value.problems


def test_a_repository_file_the_family_does_not_read_is_refused(tmp_path):
    data = copy.deepcopy(FILE)
    data["derived"]["stack"]["repositories"]["vendor"]["definition"]["url"] = "https://vendor.example/vendor.repo"
    with pytest.raises(SpecError, match=r"repositories.vendor.definition: the parent's family \(apt\) reads a file ending .list or .sources"):
        render(tmp_path, data)


@pytest.mark.parametrize(
    "line,replacement",
    [
        ("AUDITWHEEL_PLAT=manylinux_2_36_x86_64", "AUDITWHEEL_PLAT=manylinux_2_36_x86_64 RUN id"),
        ("AUDITWHEEL_PLAT=manylinux_2_36_x86_64", "AUDITWHEEL_PLAT=$(id)"),
        ("AUDITWHEEL_POLICY=manylinux_2_36", "AUDITWHEEL_POLICY=manylinux_2_36;id"),
        ("AUDITWHEEL_ARCH=x86_64", "AUDITWHEEL_ARCH=aarch64"),
        ("ID=debian", "ID=plan9"),
        ('VERSION_ID="12"', 'VERSION_ID="12 $(id)"'),
        ("cp39-cp39", "cp39-cp39;id"),
        ("cp39-cp39", "../../etc"),
    ],
)
def test_what_a_parent_says_of_itself_is_validated(line, replacement):
    with pytest.raises(SpecError) as exc:
        facts(PROBE_OUTPUT.replace(line, replacement))
    assert all(p.startswith("parent manyforge/manylinux_2_36_x86_64:latest (x86_64): ") for p in exc.value.problems), exc.value.problems


def test_a_lock_is_validated_like_any_input(tmp_path):
    path = tmp_path / parent.LOCK_NAME
    parent.write_lock(path, parent.DerivedLock(images={"stack": {"x86_64": facts()}}))
    assert parent.load_lock(path).images["stack"]["x86_64"] == facts()
    path.write_text(path.read_text().replace(IMAGE_ID, "sha256:$(id)"))
    with pytest.raises(SpecError, match="image_id"):
        parent.load_lock(path)


def test_hadolint_passes_on_derived_dockerfiles(tmp_path):
    """The benign file (every kind of addition) and the example, as rendered."""
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is installed with the test extras"
    files = []
    for name, data in (("every-field", FILE), ("example", yaml.safe_load((ROOT / "examples" / "scientific" / "manyforge.yaml").read_text()))):
        work = tmp_path / name
        work.mkdir()
        (work / f"{name}.Dockerfile").write_text(render(work, data))
        files.append(str(work / f"{name}.Dockerfile"))
    proc = subprocess.run([hadolint, *files], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "name,why",
    [
        ("-oAPT::Get::AllowUnauthenticated=true", "is no package name of any family"),
        ("--allow-unauthenticated", "is no package name of any family"),
        ("liblmdb-dev; rm -rf /", "is no package name of any family"),
        ("$(id)", "is no package name of any family"),
        ("`id`", "is no package name of any family"),
        ("liblmdb-dev\nRUN id", "is no package name of any family"),
        ("liblmdb-dev libhdf5-dev", "is no package name of any family"),
        ("../../etc/passwd", "is no package name of any family"),
        ("libfoo=1.2", "is no package name of any family"),
        ("@development-tools", "is no package name of any family"),
        ("libfoo*", "is no package name of any family"),
        ("x" * 101, "at most 100 characters"),
        # Names other families take, which Debian's does not.
        ("libfoo:i386", "is no package name of any family"),
        ("libX11-devel", "is not a Debian package name"),
        ("lib_foo", "is not a Debian package name"),
        ("a", "is not a Debian package name"),
    ],
)
def test_a_package_name_is_checked_by_the_parents_family(tmp_path, name, why):
    data = copy.deepcopy(FILE)
    data["derived"]["stack"]["packages"] = ["liblmdb-dev", name]
    with pytest.raises(SpecError) as exc:
        render(tmp_path, data)
    [problem] = exc.value.problems
    assert problem.startswith("manyforge.yaml: derived.stack.packages[1]: ") and why in problem, problem
    if "at most" not in why:
        assert repr(name) in problem, problem  # the value, escaped: a newline is shown, never printed


ALMALINUX_8 = PROBE_OUTPUT.replace("ID=debian", 'ID="almalinux"\nID_LIKE="rhel centos fedora"').replace('VERSION_ID="12"', 'VERSION_ID="8.10"')
ALPINE = PROBE_OUTPUT.replace("ID=debian", "ID=alpine").replace('VERSION_ID="12"', "VERSION_ID=3.22.1").replace(
    "AUDITWHEEL_POLICY=manylinux_2_36", "AUDITWHEEL_POLICY=musllinux_1_2").replace("PLAT=manylinux_2_36", "PLAT=musllinux_1_2")  # fmt: skip


@pytest.mark.parametrize(
    "probe,name,refused",
    [
        (ALMALINUX_8, "libX11-devel", None),
        (ALMALINUX_8, "perl-Text-ParseWords", None),
        (ALMALINUX_8, "libfoo:i386", "is no package name of any family"),
        (ALPINE, "py3-yaml", None),
        (ALPINE, "libX11-dev", "is not an apk package name"),
        (PROBE_OUTPUT, "libX11-devel", "is not a Debian package name"),
    ],
)
def test_a_parent_pinned_by_digest_brings_its_familys_rule_when_resolved(tmp_path, probe, name, refused):
    """Its family is known only from the lock: the names are checked when the target is made."""
    data = copy.deepcopy(FILE)
    stack = data["derived"]["stack"]
    stack.update({"from": "registry.example/pypa/manylinux_2_28_x86_64@sha256:" + "0" * 64, "packages": [name]})
    del stack["repositories"]  # a .sources file is apt's; the rule of names is what is tested here
    path = tmp_path / "manyforge.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        spec = load_spec(path)
        lock = parent.DerivedLock(images={"stack": {"x86_64": facts(probe)}})
        target = derived_target_of(spec, lock, "lock", "stack", "x86_64", "x86_64")
    except SpecError as exc:
        assert refused is not None, exc.problems
        [problem] = exc.problems
        assert problem.startswith("manyforge.yaml: derived.stack.packages[0]: ") and refused in problem, problem
        return
    assert refused is None, f"{name!r} was taken"
    assert quoting.shjoin([name]) in render_derived_dockerfile(target)
