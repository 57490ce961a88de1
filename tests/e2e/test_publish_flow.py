"""How a release comes together, against a real registry server on 127.0.0.1: the workflow's
parallel jobs (one arch each under a shared tag, then the index), an index that takes only
members signed by this key, dated tags that never move (the index's included), `latest` that
never moves back, tagging interrupted between two tags, and SBOMs checked before the first push.

Tiny images made here (one SBOM file each, `docker import`) under a two-arch matrix of their own,
with test records written through the record model. Publishes run in this process (the
command line costs seconds of start-up on a loaded host); the command line is used where its
exit status is the point.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from manyforge import engine, publish
from manyforge.spec import DEFAULT_SPEC, Spec, load_spec
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).with_name("invoke")
PASSWORD = "flow-Pa55word-2c81e0"  # the throw-away key's password
ARCHES = ["x86_64", "aarch64"]
MANIFEST_TYPES = ", ".join([engine.OCI_INDEX, "application/vnd.oci.image.manifest.v1+json", engine.DOCKER_MANIFEST])


def sbom(python: str) -> dict:
    return {
        "bomFormat": "CycloneDX", "specVersion": "1.6",
        "components": [
            {"type": "application", "name": "cpython", "version": python,
             "properties": [{"name": "manyforge:interpreter", "value": "cp313-cp313"}]},
            {"type": "library", "name": "ninja", "version": "1.13.0", "properties": [{"name": "manyforge:installed-in", "value": "tools"}]},
            {"type": "application", "name": "gcc", "version": "12.2.0", "bom-ref": "toolchain",
             "properties": [{"name": "manyforge:toolchain", "value": "debian-gcc-12"}]},
        ],
    }  # fmt: skip


# Each image: (arch whose record it gets or None, its SBOM). Distinct CPython versions tell from
# the catalog which SBOM each line was made of.
IMAGES = {
    "A-x86_64": ("x86_64", sbom("3.13.5")),
    "A-aarch64": ("aarch64", sbom("3.13.4")),
    "B-x86_64": ("x86_64", sbom("3.13.6")),  # a newer release of x86_64
    "untested": (None, sbom("3.13.0")),  # no record: never published, never signed
    "nameless": ("x86_64", {"components": [{"version": "1"}]}),
    "numeric": ("aarch64", {"components": [{"name": "cpython", "version": 3.13, "properties": [
        {"name": "manyforge:interpreter", "value": "cp313-cp313"}]}]}),  # fmt: skip
}


@dataclass
class Matrix:
    spec_path: Path
    spec: Spec
    image: str
    ids: dict[str, str]  # IMAGES' names -> image IDs

    def use(self, name: str) -> None:
        """Make an image the one built here for its arch (the one publish picks up)."""
        arch = IMAGES[name][0]
        assert arch is not None
        ref = resolve_target(self.spec, self.image, arch).latest_ref
        subprocess.run(["docker", "tag", self.ids[name], ref], check=True, capture_output=True)


@pytest.fixture(scope="module")
def key_password() -> str:
    return PASSWORD


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    work = tmp_path_factory.mktemp("flow")
    name = f"flow_{uuid.uuid4().hex[:8]}"
    data = yaml.safe_load(DEFAULT_SPEC.read_text())
    data["org"] = "manyforge-flow"
    # The interpreters these stand-in images' SBOMs carry: any other declared one would be one
    # the image was built without (publish refuses that without --allow-omitted).
    image = {**data["images"]["manylinux_2_36"], "archs": ARCHES, "interpreters": ["cp313-cp313"]}
    image.pop("downloadable", None)
    data["images"] = {name: image}
    used = {image["toolchain"], *image.get("toolchain_variants", [])}  # unused settings are refused
    data["toolchains"] = {k: v for k, v in data["toolchains"].items() if k in used}
    spec_path = work / "images.yaml"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(spec_path)
    ids: dict[str, str] = {}
    records: list[Path] = []
    try:
        for label, (arch, document) in IMAGES.items():
            root = work / label
            (root / "opt" / "_internal").mkdir(parents=True)
            (root / "opt" / "_internal" / "sbom.cdx.json").write_text(json.dumps(document))
            (root / "name").write_text(f"{name} {label}\n")  # an image of its own
            with tarfile.open(work / f"{label}.tar", "w") as tar:
                tar.add(root / "opt", "opt")
                tar.add(root / "name", "name")
            out = subprocess.run(["docker", "import", str(work / f"{label}.tar")], check=True, capture_output=True, text=True)
            ids[label] = out.stdout.strip()
            if arch is not None:
                target = resolve_target(spec, name, arch)
                records.append(publish.write_test_record(publish.TestRecord(
                    image_id=ids[label], slug=target.slug, ref=target.latest_ref, spec_revision=spec.revision,
                    collected=1, passed=1, failed=0, skipped=0, complete=True,
                )))  # fmt: skip
        found = Matrix(spec_path, spec, name, ids)
        found.use("A-x86_64")
        found.use("A-aarch64")
        yield found
    finally:
        for record in records:
            record.unlink(missing_ok=True)
        shutil.rmtree(publish.RELEASE_DIR / name, ignore_errors=True)
        refs = [resolve_target(spec, name, arch).latest_ref for arch in ARCHES]
        subprocess.run(["docker", "rmi", "--force", *refs, *ids.values()], check=False, capture_output=True)


@pytest.fixture(autouse=True)
def password(monkeypatch):
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)


def run(matrix: Matrix, registry: str, namespace: str, key: Path, arches: list[str] | None = None, **options) -> tuple[dict, list[str]]:
    """`invoke publish` in this process: the catalog and the log lines."""
    lines: list[str] = []
    catalog = publish.publish(matrix.spec, matrix.image, arches, f"{registry}/{namespace}", key, log=lines.append, **options)
    return catalog, lines


def invoke(matrix: Matrix, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(INVOKE), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "COSIGN_PASSWORD": PASSWORD, "MANYFORGE_SPEC": str(matrix.spec_path)})  # fmt: skip
    assert PASSWORD not in proc.stdout + proc.stderr
    return proc


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """A refusal's lines from `error:` on: a non-zero exit, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    start = proc.stderr.find("error: ")
    assert start >= 0, proc.stderr
    return proc.stderr[start:].strip().splitlines()


def request(registry: str, path: str, method: str = "GET") -> urllib.request.Request:
    return urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": MANIFEST_TYPES}, method=method)


def tags(registry: str, repository: str) -> list[str]:
    """A repository's tags but its signatures' and attestations'."""
    try:
        with urllib.request.urlopen(request(registry, f"{repository}/tags/list"), timeout=10) as response:
            found = json.loads(response.read()).get("tags") or []
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return sorted(t for t in found if not t.startswith("sha256-"))


def digest_of(registry: str, repository: str, tag: str) -> str:
    with urllib.request.urlopen(request(registry, f"{repository}/manifests/{tag}", "HEAD"), timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def manifest(registry: str, repository: str, tag: str) -> dict[str, Any]:
    with urllib.request.urlopen(request(registry, f"{repository}/manifests/{tag}"), timeout=10) as response:
        return json.loads(response.read())


def repositories(registry: str) -> list[str]:
    with urllib.request.urlopen(f"http://{registry}/v2/_catalog", timeout=10) as response:
        return json.loads(response.read()).get("repositories") or []


def today(n: int) -> str:
    return f"{dt.date.today():%Y.%m.%d}-{n}"


# --- the workflow: one job per arch under a shared tag, then the index job ----------------------


def test_the_index_job_indexes_every_arch_with_a_catalog_of_all_of_them(matrix, registry, keys, tmp_path):
    ns, image = "ci", matrix.image
    index_repo, x86_repo, arm_repo = f"{ns}/{image}", f"{ns}/{image}_x86_64", f"{ns}/{image}_aarch64"
    tag = publish.next_tag(matrix.spec, image, f"{registry}/{ns}")
    x86, _ = run(matrix, registry, ns, keys[0], ["x86_64"], tag=tag)
    # A job of one arch makes no index: with the arches of one job, its catalog would be wrong.
    # Nor does its `latest` move: another arch of the image may still fail.
    assert "index" not in x86 and tags(registry, index_repo) == [] and tags(registry, x86_repo) == [tag]
    # The index job before every arch is in: an error naming the missing arch (it was exit 0).
    lines = error_lines(invoke(matrix, "publish", "--registry", f"{registry}/{ns}", "--image", image, "--key", str(keys[0]),
                               "--tag", tag, "--index-only"))  # fmt: skip
    assert len(lines) == 1 and f"aarch64 of {image} not pushed under {tag}" in lines[0], lines
    assert tags(registry, index_repo) == []
    arm, _ = run(matrix, registry, ns, keys[0], ["aarch64"], tag=tag)
    assert "index" not in arm and tags(registry, index_repo) == [] and tags(registry, arm_repo) == [tag]
    catalog, _ = run(matrix, registry, ns, keys[0], tag=tag, index_only=True)
    # The index job moves every arch's `latest` with the index's, to the members it indexed.
    assert tags(registry, x86_repo) == [tag, "latest"] and tags(registry, arm_repo) == [tag, "latest"]
    # The index's catalog covers every member, each line made of that member's own SBOM.
    digests = {"x86_64": x86["arches"]["x86_64"]["digest"], "aarch64": arm["arches"]["aarch64"]["digest"]}
    assert {a: e["digest"] for a, e in catalog["arches"].items()} == digests
    assert {a: e["interpreters"] for a, e in catalog["arches"].items()} == {"x86_64": {"cp313-cp313": "3.13.5"},
                                                                            "aarch64": {"cp313-cp313": "3.13.4"}}  # fmt: skip
    assert catalog["arches"]["aarch64"] == arm["arches"]["aarch64"] and catalog["arches"]["x86_64"] == x86["arches"]["x86_64"]
    assert catalog["index"]["arches"] == sorted(ARCHES) and catalog["index"]["subset"] is False
    index_digest = catalog["index"]["digest"]
    assert tags(registry, index_repo) == [tag, "latest"] and digest_of(registry, index_repo, tag) == index_digest
    assert digest_of(registry, index_repo, "latest") == index_digest
    assert {a: digest_of(registry, r, "latest") for a, r in (("x86_64", x86_repo), ("aarch64", arm_repo))} == digests
    assert [m["digest"] for m in manifest(registry, index_repo, tag)["manifests"]] == [digests["x86_64"], digests["aarch64"]]
    pinned = f"{registry}/{index_repo}@{index_digest}"
    assert engine.verified_attestation(pinned, keys[1], publish.CATALOG_TYPE) == catalog
    # An attestation on the index that says something else is not taken for this catalog: the
    # rerun attests the catalog again.
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**catalog, "arches": {}}))
    engine.cosign_attest(pinned, keys[0], wrong, publish.CATALOG_TYPE)
    assert engine.verified_attestation(pinned, keys[1], publish.CATALOG_TYPE)["arches"] == {}
    again, lines = run(matrix, registry, ns, keys[0], tag=tag, index_only=True)
    assert again == catalog and f"  {pinned}: {publish.CATALOG_TYPE} attested" in lines, lines
    assert engine.verified_attestation(pinned, keys[1], publish.CATALOG_TYPE) == catalog
    assert digest_of(registry, index_repo, tag) == index_digest


# --- members: only what this key signed, with its SBOM attested ---------------------------------


def test_an_index_takes_only_members_signed_by_this_key_and_its_dated_tag_never_moves(matrix, registry, keys):
    ns, image = "red--team", matrix.image  # `--` inside a namespace: Docker's grammar takes it
    index_repo, x86_repo, arm_repo = f"{registry}/{ns}/{image}", f"{registry}/{ns}/{image}_x86_64", f"{registry}/{ns}/{image}_aarch64"
    # An earlier release someone else pushed: neither signed nor attested by this key.
    earlier = engine.push_image(matrix.ids["untested"], x86_repo, True)
    engine.tag(f"{x86_repo}@{earlier}", today(1), True)
    tag = publish.next_tag(matrix.spec, image, f"{registry}/{ns}")
    assert tag == today(2)
    x86, lines = run(matrix, registry, ns, keys[0], ["x86_64"], tag=tag)
    # Its changelog cannot be made: a warning, the release itself is complete (every rerun failed).
    assert [line for line in lines if "warning: no changelog written" in line and f"{x86_repo}:{today(1)}" in line], lines
    assert tags(registry, f"{ns}/{image}_x86_64") == [today(1), tag]  # no index, so no `latest`
    # Someone pointed the index's dated tag at another index: it is never moved.
    planted = engine.create_index(index_repo, [f"{x86_repo}@{x86['arches']['x86_64']['digest']}"], {"planted": "yes"}, True)
    engine.tag(f"{index_repo}@{planted}", tag, True)
    with pytest.raises(publish.PublishError, match=f"{index_repo}:{tag} names the index {planted}, not .*a dated tag never moves"):
        run(matrix, registry, ns, keys[0], tag=tag, index_only=True, subset=True)
    assert tags(registry, f"{ns}/{image}") == [tag] and digest_of(registry, f"{ns}/{image}", tag) == planted
    # The red team's reproducer, under a tag of its own: an untested, unsigned image under the
    # aarch64 tag, then the index of what the tag holds.
    red = today(3)
    unsigned = engine.push_image(matrix.ids["untested"], arm_repo, True)
    engine.tag(f"{arm_repo}@{unsigned}", red, True)
    lines = error_lines(invoke(matrix, "publish", "--registry", f"{registry}/{ns}", "--image", image, "--key", str(keys[0]),
                               "--tag", red, "--index-only", "--subset"))  # fmt: skip
    assert "takes only members signed by this key" in lines[0] and "nothing pushed" in lines[0] and len(lines) == 2, lines
    assert lines[1].startswith(f"  aarch64: verifying the signature of {arm_repo}@{unsigned}: cosign failed"), lines
    # A publish of x86_64 with --subset gathers the same member: refused before its push.
    with pytest.raises(publish.PublishError, match=f"(?s)takes only members .*\n  aarch64: verifying the signature of {arm_repo}@{unsigned}"):
        run(matrix, registry, ns, keys[0], ["x86_64"], tag=red, subset=True)
    assert red not in tags(registry, f"{ns}/{image}_x86_64")
    # Signed by this key, but without its SBOM attested: refused all the same.
    engine.cosign_sign(f"{arm_repo}@{unsigned}", keys[0])
    with pytest.raises(publish.PublishError) as refusal:
        run(matrix, registry, ns, keys[0], tag=red, index_only=True, subset=True)
    assert str(refusal.value).splitlines()[1].startswith(f"  aarch64: verifying the cyclonedx attestation of {arm_repo}@{unsigned}")
    assert tags(registry, f"{ns}/{image}") == [tag] and digest_of(registry, f"{ns}/{image}", tag) == planted


def test_a_finished_subset_release_never_takes_a_new_arch(matrix, registry, keys):
    ns, image = "subset", matrix.image
    first, _ = run(matrix, registry, ns, keys[0], ["x86_64"], subset=True)
    assert first["release"] == today(1) and first["index"]["subset"] is True
    index_digest = first["index"]["digest"]
    # Its index is tagged: the release is complete, and aarch64 cannot join it (before any push).
    with pytest.raises(publish.PublishError, match=f"--tag {today(1)}: the index .*:{today(1)} is already released without aarch64"):
        run(matrix, registry, ns, keys[0], ["aarch64"], tag=today(1))
    assert f"{ns}/{image}_aarch64" not in repositories(registry)
    # Every arch, without a tag: a new release (the tag of the day holding this x86_64 image is not reused).
    second, _ = run(matrix, registry, ns, keys[0])
    assert second["release"] == today(2) and second["index"]["subset"] is False and second["index"]["arches"] == sorted(ARCHES)
    assert digest_of(registry, f"{ns}/{image}", today(1)) == index_digest
    assert digest_of(registry, f"{ns}/{image}", "latest") == second["index"]["digest"]


# --- tags: interrupted between two of them, and `latest` --------------------------------------


def _oras_refusing(tmp_path: Path, pattern: str) -> str:
    """A PATH whose `oras` fails the calls whose arguments match a shell pattern."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "oras").write_text(f'#!/bin/sh\ncase "$*" in {pattern}) echo "oras: refused" >&2; exit 1;; esac\nexec {shutil.which("oras")} "$@"\n')
    (shim / "oras").chmod(0o755)
    return f"{shim}:{os.environ['PATH']}"


def test_tagging_stopped_between_tags_is_completed_and_latest_never_moves_back(matrix, registry, keys, tmp_path, monkeypatch):
    ns, image = "order", matrix.image
    index_repo, x86_repo = f"{ns}/{image}", f"{ns}/{image}_x86_64"
    path = os.environ["PATH"]
    # The index's dated tag fails: the arch's dated tag is set, no `latest` anywhere yet.
    monkeypatch.setenv("PATH", _oras_refusing(tmp_path, f'"tag "*"/{index_repo}@sha256:"*'))
    with pytest.raises(engine.EngineError, match=f"tagging {registry}/{index_repo}@sha256:[0-9a-f]+ as {today(1)}"):
        run(matrix, registry, ns, keys[0], ["x86_64"], subset=True)
    assert tags(registry, x86_repo) == [today(1)] and tags(registry, index_repo) == []
    monkeypatch.setenv("PATH", path)
    first, _ = run(matrix, registry, ns, keys[0], ["x86_64"], subset=True)  # the rerun completes the release
    assert first["release"] == today(1) and tags(registry, x86_repo) == [today(1), "latest"] and tags(registry, index_repo) == [today(1), "latest"]
    try:
        matrix.use("B-x86_64")
        second, _ = run(matrix, registry, ns, keys[0], ["x86_64"], subset=True)
    finally:
        matrix.use("A-x86_64")
    assert second["release"] == today(2)
    newest = {x86_repo: second["arches"]["x86_64"]["digest"], index_repo: second["index"]["digest"]}
    assert {repo: digest_of(registry, repo, "latest") for repo in newest} == newest
    # The older release again, with its tag (a rerun of an older workflow run) and without one:
    # it is complete, and `latest` stays with the newer release.
    for options in ({"tag": today(1)}, {}):
        again, lines = run(matrix, registry, ns, keys[0], ["x86_64"], subset=True, **options)
        assert again["release"] == today(1) and again["index"]["digest"] == first["index"]["digest"]
        for repo in newest:
            assert f"  {registry}/{repo}:latest stays: {today(2)} is a newer release than {today(1)}" in lines, lines
        assert {repo: digest_of(registry, repo, "latest") for repo in newest} == newest


# --- SBOMs are checked before anything is pushed ---------------------------------------------------


def test_a_bad_sbom_stops_the_publish_before_anything_is_pushed(matrix, registry, keys):
    ns = "sbom"
    try:
        matrix.use("nameless")
        matrix.use("numeric")
        with pytest.raises(publish.PublishError) as refusal:
            run(matrix, registry, ns, keys[0])
    finally:
        matrix.use("A-x86_64")
        matrix.use("A-aarch64")
    lines = str(refusal.value).splitlines()
    assert lines[0] == "nothing pushed:" and len(lines) == 3, lines
    for line, arch, problem in zip(lines[1:], ARCHES, ("components.0.name: Field required", "components.0.version: Input should be a valid string"),
                                   strict=True):  # fmt: skip
        assert line.startswith(f"  {resolve_target(matrix.spec, matrix.image, arch).slug}: image sha256:") and publish.SBOM_PATH in line, line
        assert problem in line, line
    assert not [r for r in repositories(registry) if r.startswith(f"{ns}/")]


BAD_SBOMS = [
    ([], "a JSON object"),
    ({"components": {}}, "components: Input should be a valid list"),
    ({"components": [{"version": "1"}]}, "components.0.name: Field required"),
    ({"components": [{"name": ""}]}, "components.0.name: String should have at least 1 character"),
    ({"components": [{"name": "cpython", "version": "3.13.5"}]}, "without its manyforge:interpreter property"),
    ({"components": [{"name": "gcc", "bom-ref": "toolchain"}]}, "component 'gcc' has no version"),
    ({"components": [{"name": "ninja", "properties": [{"name": "manyforge:installed-in", "value": "tools"}]}]}, "component 'ninja' has no version"),
    ({"components": [{"name": "x", "properties": [{"name": "a", "value": 1}]}]}, "components.0.properties.0.value: Input should be a valid string"),
    ({"components": [{"name": "x", "properties": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}]}, "has a property twice"),
    ({"components": [sbom("3.13.5")["components"][0], sbom("3.13.6")["components"][0]]}, "interpreter 'cp313-cp313' appears twice"),
]


@pytest.mark.parametrize(("document", "problem"), BAD_SBOMS)
def test_an_sbom_the_catalog_or_the_changelog_cannot_read_is_one_line(document, problem):
    with pytest.raises(publish.PublishError) as refusal:
        publish.parse_sbom(document, "the SBOM of x")
    message = str(refusal.value)
    assert message.startswith("the SBOM of x: ") and problem in message and "\n" not in message, message
    if isinstance(document, dict):  # the changelog's reader too (it raised KeyError on a nameless component)
        with pytest.raises(publish.PublishError, match="^the newer SBOM: "):
            publish.diff_sboms(sbom("3.13.5"), document)
