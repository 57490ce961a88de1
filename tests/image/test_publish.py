"""The release pipeline against a real registry server on 127.0.0.1 (Debian's docker-registry,
started here on a free port with its storage in a temporary directory), with the images this
session built and tested. Nothing is mocked: pushes go through the engine, signatures and
attestations through cosign, read-backs through the registry's HTTP API.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from registry_server import running_registry

from manyforge import engine, publish
from manyforge.sources import resolve_wheels
from manyforge.spec import DEFAULT_SPEC

# Publishing is exercised with the full x86_64 image; the tests do not apply to other targets
# (deselected at collection: tests/image/conftest.py).
pytestmark = [pytest.mark.image, pytest.mark.applies_to(lambda target: target.arch == "x86_64" and not target.variant_suffix)]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "manyforge-test"  # the throw-away key's password, given to cosign through its environment
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip


@pytest.fixture(scope="module")
def key_password() -> str:
    return PASSWORD


def api(registry: str, path: str) -> dict:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def tags_of(registry: str, repo: str) -> list[str]:
    """Tags of a repository; none while a push has sent blobs but no manifest yet."""
    try:
        return api(registry, f"{repo}/tags/list").get("tags") or []
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def run_invoke(*args: str, env: dict[str, str] | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout,
        env={**os.environ, "COSIGN_PASSWORD": PASSWORD, **(env or {})},
    )  # fmt: skip


def today() -> str:
    return dt.date.today().strftime("%Y.%m.%d")


def test_moving_an_index_between_releases_never_meets_a_registry_race(tmp_path):
    """A release moves its index's tags (dated and latest) again and again. Against a registry that
    keeps its tags on a filesystem, pushing both tags at once failed about once in 27 (a read of a
    tag's link while it was rewritten: 500 or 400); 100 moves in a row, each an index pushed by
    digest and then tagged one tag at a time, must all succeed. It needs only a one-file image
    made here, and runs while the session's second image builds."""
    (tmp_path / "payload").write_text("index race\n")
    tarball = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(tarball), "payload"], check=True)
    (tmp_path / "registry").mkdir()
    with running_registry(tmp_path / "registry") as registry:
        member = "manyforge-test/race-tiny:1"
        subprocess.run(["docker", "import", str(tarball), member], check=True, capture_output=True)
        try:
            pinned = f"{registry}/race/tiny_x86_64@{engine.push_image(engine.image_id(member), f'{registry}/race/tiny_x86_64', True)}"
        finally:
            subprocess.run(["docker", "rmi", member], check=False, capture_output=True)
        assert tags_of(registry, "race/tiny_x86_64") == []  # pushed by digest: no tag names it
        digests = set()
        for move in range(100):  # annotations alternate: each move points the tags at another index
            index = engine.create_index(f"{registry}/race/tiny", [pinned], {"manyforge.test.move": str(move % 2)}, True)
            for name in ("2026.01.01-1", "latest"):
                engine.tag(f"{registry}/race/tiny@{index}", name, True)
            digests.add(index)
        assert len(digests) == 2
        assert api(registry, "race/tiny/manifests/latest")["annotations"] == {"manyforge.test.move": "1"}
        assert sorted(tags_of(registry, "race/tiny")) == ["2026.01.01-1", "latest"]


def test_an_image_without_a_passing_record_is_refused(built_image, registry, keys, tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "RECORD_DIR", tmp_path / "no-records")
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    target = built_image.target
    slug = target.slug
    with pytest.raises(publish.PublishError, match=rf"nothing pushed:\n  {slug}: image sha256:\S+ has no test record"):
        publish.publish(target.spec, target.image_name, ["x86_64"], f"{registry}/refused", keys[0])
    assert api(registry, "_catalog")["repositories"] == []
    # A record of a failed run is refused the same way, and so is a passing one of another target.
    fields = {"image_id": engine.image_id(built_image.ref), "slug": slug, "ref": built_image.ref,
              "spec_revision": publish.spec_revision(target.spec), "collected": 31, "complete": True}  # fmt: skip
    publish.write_test_record(publish.TestRecord(**fields, passed=30, failed=1, skipped=0))
    with pytest.raises(publish.PublishError, match=rf"{slug}: image \S+ did not pass a complete test run \(30 of 31 collected tests passed, 1 failed"):
        publish.publish(target.spec, target.image_name, ["x86_64"], f"{registry}/refused", keys[0])
    publish.write_test_record(publish.TestRecord(**{**fields, "slug": "manylinux_2_31_x86_64"}, passed=31, failed=0, skipped=0))
    with pytest.raises(publish.PublishError, match=rf"{slug}: image \S+ its test record is of manylinux_2_31_x86_64, not {slug}"):
        publish.publish(target.spec, target.image_name, ["x86_64"], f"{registry}/refused", keys[0])
    assert api(registry, "_catalog")["repositories"] == []


def test_publish_pushes_signs_attests_and_catalogs(recorded_image, registry, keys, tmp_path):
    target = recorded_image.target
    omitted = [tag for tag, _ in target.omitted]  # declared, but no origin of this site serves them
    if omitted:  # never published so by accident: the option is explicit, and nothing is pushed without it
        refused = run_invoke("publish", "--registry", f"{registry}/manyforge", "--image", target.image_name, "--arch", "x86_64",
                             "--key", str(keys[0]), "--subset")  # fmt: skip
        assert refused.returncode != 0 and f"x86_64: {', '.join(omitted)}" in refused.stderr and "--allow-omitted" in refused.stderr
        assert api(registry, "_catalog")["repositories"] == []
    started = time.monotonic()
    proc = run_invoke("publish", "--registry", f"{registry}/manyforge", "--image", target.image_name, "--arch", "x86_64",
                      "--key", str(keys[0]), "--subset", "--allow-omitted")  # fmt: skip
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    print(f"\n[publish] one image and its index in {seconds:.0f}s", file=sys.stderr)
    catalog = json.loads(proc.stdout)
    tag = f"{today()}-1"
    assert catalog["release"] == tag
    repo = f"manyforge/{target.image_name}_x86_64"
    assert {tag, "latest"} <= set(api(registry, f"{repo}/tags/list")["tags"])
    manifest = api(registry, f"{repo}/manifests/{tag}")
    assert manifest["config"]["digest"] == engine.image_id(recorded_image.ref)
    # The multi-arch index: published as a declared subset, and it says so.
    index = api(registry, f"manyforge/{target.image_name}/manifests/{tag}")
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]}
    assert platforms == {("linux", "amd64")}
    assert index.get("annotations", {}).get("io.manyforge.subset") == "x86_64"
    assert index.get("annotations", {}).get("io.manyforge.cpython-omitted") == (f"x86_64:{'+'.join(omitted)}" if omitted else None)
    # Pulled by digest under a clean name, it runs.
    digest = catalog["arches"]["x86_64"]["digest"]
    clean = "manyforge-test/pulled:by-digest"
    subprocess.run(["docker", "pull", f"{registry}/{repo}@{digest}"], check=True, capture_output=True)
    subprocess.run(["docker", "tag", f"{registry}/{repo}@{digest}", clean], check=True, capture_output=True)
    try:
        out = engine.run_in_image(clean, "x86_64", ["python3.13", "-c", "import sys; print(sys.version_info[:2])"])
        assert out.strip() == "(3, 13)"
    finally:
        subprocess.run(["docker", "rmi", clean], check=False, capture_output=True)
    # Signature and SBOM verify with the public key; a wrong key does not.
    engine.cosign_verify(f"{registry}/{repo}@{digest}", keys[1])
    sbom = engine.verified_sbom(f"{registry}/{repo}@{digest}", keys[1])
    names = [c["name"] for c in sbom["components"]]
    assert names.count("cpython") == len(target.interpreters)
    assert {"libc6", "gcc", "auditwheel", "build", "pip"} <= set(names)
    print(f"[publish] SBOM of {target.slug}: {len(sbom['components'])} components", file=sys.stderr)
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["cosign", "generate-key-pair"], cwd=other, env=dict(os.environ, COSIGN_PASSWORD="x"), check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
    with pytest.raises(engine.EngineError, match="verifying the signature"):
        engine.cosign_verify(f"{registry}/{repo}@{digest}", other / "cosign.pub")
    catalog_att = engine.verified_attestation(f"{registry}/manyforge/{target.image_name}:{tag}", keys[1], publish.CATALOG_TYPE)
    assert catalog_att["arches"]["x86_64"]["digest"] == digest
    assert catalog_att["arches"]["x86_64"]["interpreters"]
    # Publishing the same image again is a no-op on the dated tag: it is never moved.
    again = run_invoke("publish", "--registry", f"{registry}/manyforge", "--image", target.image_name, "--arch", "x86_64",
                       "--key", str(keys[0]), "--subset", "--allow-omitted")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["release"] == tag and "already pushed" in again.stderr


def test_a_killed_publish_completes_on_rerun(recorded_image, keys, tmp_path):
    """Killed while pushing (a registry of its own: no layer is there yet to mount), then re-run."""
    with running_registry(tmp_path) as registry:
        _killed_then_completed(recorded_image, registry, keys, tmp_path / "data")


def _uploading(storage: Path) -> bool:
    """Whether the registry is receiving a blob (a partial upload of more than 1 MB)."""
    return any(f.stat().st_size > 1 << 20 for f in storage.glob("docker/registry/v2/repositories/**/_uploads/*/data"))


def _killed_then_completed(recorded_image, registry: str, keys: tuple[Path, Path], storage: Path) -> None:
    target = recorded_image.target
    args = ["publish", "--registry", f"{registry}/interrupted", "--image", target.image_name, "--arch", "x86_64",
            "--key", str(keys[0]), "--subset", "--allow-omitted"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=dict(os.environ, COSIGN_PASSWORD=PASSWORD),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600  # the image is saved and compressed before its blobs go out
    while not (uploading := _uploading(storage)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-push of a 1 GB image
    proc.wait()
    assert uploading and proc.returncode == -signal.SIGKILL, f"not killed while the registry received a blob (exit {proc.returncode})"
    repo = f"interrupted/{target.image_name}_x86_64"
    tag = f"{today()}-1"
    # Killed before signing: no tag at all, not even a signature's.
    assert tags_of(registry, repo) == []
    rerun = run_invoke(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["release"] == tag
    assert api(registry, f"{repo}/manifests/{tag}")["config"]["digest"] == engine.image_id(recorded_image.ref)
    assert [t for t in api(registry, f"{repo}/tags/list")["tags"] if t.startswith(today())] == [tag]
    engine.cosign_verify(f"{registry}/{repo}:{tag}", keys[1])


def test_changelog_between_two_releases_that_differ_by_one_tool_pin(recorded_image, registry, keys, tmp_path):
    """A second release whose only change is one tool pin: built, tested (a complete image test
    run of its own), published after the first; the changelog names exactly that change."""
    target = recorded_image.target
    image = target.image_name
    platform = target.spec.wheel_platform(target.image, "x86_64")
    old = next(w for w in target.spec.wheels[platform] if w.name == "ninja")
    new_version = "1.11.1.4"
    spec_data = yaml.safe_load(DEFAULT_SPEC.read_text())
    spec_data["org"] = "manyforge-changelog"  # its own local names: the session's images stay as they are
    spec_data["images"][image]["tool_versions"] = {"ninja": new_version}
    variant_spec = tmp_path / "images.yaml"
    variant_spec.write_text(yaml.safe_dump(spec_data, sort_keys=False))
    lock = json.loads(target.spec.lock_path.read_text())
    pins = [f.model_dump() for f in resolve_wheels(target.spec, target.image, "x86_64", f"ninja=={new_version}")]
    lock["platforms"][platform] = [e for e in lock["platforms"][platform] if e["name"] != "ninja"] + pins
    variant_lock = tmp_path / "wheels.lock.json"
    variant_lock.write_text(json.dumps(lock))
    env = {"MANYFORGE_SPEC": str(variant_spec), "MANYFORGE_LOCK": str(variant_lock), "MANYFORGE_TEST_TARGETS": f"{image}:x86_64"}
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "image"),
         "--ignore", str(ROOT / "tests" / "image" / "test_publish.py")],
        # Only this run's targets: none of the caller's MANYFORGE_TEST_* settings.
        cwd=ROOT, env={**{k: v for k, v in os.environ.items() if not k.startswith("MANYFORGE_TEST_")}, **env},
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout[-3000:]
    first = run_invoke("publish", "--registry", f"{registry}/changes", "--image", image, "--arch", "x86_64",
                       "--key", str(keys[0]), "--subset", "--allow-omitted")  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = run_invoke("publish", "--registry", f"{registry}/changes", "--image", image, "--arch", "x86_64",
                        "--key", str(keys[0]), "--subset", "--allow-omitted", env=env)  # fmt: skip
    assert second.returncode == 0, second.stderr
    tags = [json.loads(p.stdout)["release"] for p in (first, second)]
    assert tags == [f"{today()}-1", f"{today()}-2"]
    # Each publish writes the changelog against the release before it.
    written = json.loads((publish.RELEASE_DIR / image / tags[1] / "changelog.json").read_text())
    assert written["from"] == tags[0] and written["arches"]["x86_64"]["tools"]["updated"] == [["ninja", old.version, new_version]]
    proc = run_invoke("changelog", "--registry", f"{registry}/changes", "--image", image, "--arch", "x86_64",
                      "--from-tag", tags[0], "--to-tag", tags[1], "--public-key", str(keys[1]), "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    changes = json.loads(proc.stdout)["arches"]["x86_64"]
    changed = {section: change for section, change in changes.items() if any(change.values())}
    assert changed == {"tools": {"added": [], "removed": [], "updated": [["ninja", old.version, new_version]]}}
    markdown = run_invoke("changelog", "--registry", f"{registry}/changes", "--image", image, "--arch", "x86_64",
                          "--from-tag", tags[0], "--to-tag", tags[1], "--public-key", str(keys[1]))  # fmt: skip
    assert f"- ninja: {old.version} → {new_version}" in markdown.stdout
