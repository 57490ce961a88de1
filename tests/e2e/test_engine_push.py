"""The engine's push path and its tool runner, against a real registry server on 127.0.0.1.

An image holding the same layer twice (which Docker 20.10's `docker save` writes as a symbolic
link) is pushed by digest and pulled back; every layer pushed is one gzip stream, the same bytes on
every run; cosign is never told to allow plain HTTP for a remote registry; no tool but cosign sees
COSIGN_PASSWORD; a timeout or a SIGTERM ends a tool with all its children; a failed or killed push
leaves no work files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.request
import uuid
import zlib
from pathlib import Path

import pytest
import requests.exceptions
from registry_server import free_port, running_registry

from manyforge import engine

ROOT = Path(__file__).resolve().parents[2]
LAYER_BYTES = 36 * 1024 * 1024  # past the 32 MiB stretches the engine once gzipped as members of their own
DIGEST_OF_ZEROS = "sha256:" + "0" * 64
MANIFEST_TYPES = ", ".join([engine.DOCKER_MANIFEST, engine.OCI_MANIFEST])


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture(scope="module")
def twin_image(tmp_path_factory) -> str:
    """The ID of a tiny image made here whose two layers are the same (one file copied twice to the
    same place): Docker's classic builder, whose result does not depend on BuildKit's settings."""
    context = tmp_path_factory.mktemp("twin")
    (context / "a").write_bytes(os.urandom(LAYER_BYTES))  # an image of its own: its ID is the run's
    (context / "Dockerfile").write_text("FROM scratch\nCOPY a /a\nCOPY a /a\n")
    ref = f"manyforge-test-twin:{uuid.uuid4().hex[:12]}"
    proc = subprocess.run(["docker", "build", "--quiet", "--tag", ref, str(context)], capture_output=True, text=True, check=False,
                          env={**os.environ, "DOCKER_BUILDKIT": "0"}, stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    image_id = engine.image_id(ref)
    try:
        yield image_id
    finally:
        subprocess.run(["docker", "rmi", "--force", image_id], check=False, capture_output=True)


@pytest.fixture(autouse=True)
def push_work(tmp_path, monkeypatch) -> Path:
    """The push's work directory, in the test's own place (a publish of this checkout may run)."""
    work = tmp_path / "push-work"
    monkeypatch.setattr(engine, "PUSH_WORK", work)
    return work


def _get(registry: str, path: str, accept: str = "*/*") -> bytes:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def _pushed_layers(registry: str, repository: str, digest: str) -> tuple[dict, list[bytes]]:
    manifest = json.loads(_get(registry, f"{repository}/manifests/{digest}", MANIFEST_TYPES))
    return manifest, [_get(registry, f"{repository}/blobs/{layer['digest']}") for layer in manifest["layers"]]


def _one_gzip_stream(blob: bytes) -> bytes:
    """The data of a blob that must be exactly one gzip member, with no name and no time."""
    assert blob[:3] == b"\x1f\x8b\x08" and blob[3] == 0 and blob[4:8] == b"\0\0\0\0", "a gzip header with a name or a time"
    inflater = zlib.decompressobj(31)
    data = inflater.decompress(blob)
    assert inflater.eof and inflater.unused_data == b"", "the first gzip member does not take the whole blob"
    return data


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"  # exited, and not reaped yet by its new parent


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _gone(pid)


# --- items 1 and 2: a layer held twice, one gzip stream per layer, the same blobs on a rerun -------


def test_an_image_holding_one_layer_twice_is_pushed_and_pulled_back(registry, twin_image, tmp_path):
    # The case is the one of old engines: docker save links the second layer to the first.
    subprocess.run(["docker", "save", "--output", str(tmp_path / "saved.tar"), twin_image], check=True, capture_output=True)
    with tarfile.open(tmp_path / "saved.tar") as tar:
        assert any(m.issym() and m.name.endswith("layer.tar") for m in tar.getmembers()), "docker save wrote no linked layer"
    (tmp_path / "saved.tar").unlink()

    repository = "twins/image"
    digest = engine.push_image(twin_image, f"{registry}/{repository}", plain_http=True)
    manifest, blobs = _pushed_layers(registry, repository, digest)
    assert manifest["config"]["digest"] == twin_image
    assert len(blobs) == 2 and manifest["layers"][0] == manifest["layers"][1]
    config = json.loads(_get(registry, f"{repository}/blobs/{twin_image}"))
    for blob, diff_id in zip(blobs, config["rootfs"]["diff_ids"], strict=True):
        assert len(blob) > 32 << 20
        assert "sha256:" + hashlib.sha256(_one_gzip_stream(blob)).hexdigest() == diff_id

    # A rerun (a publish run again after a failure) makes the same blobs, so the same manifest.
    assert engine.push_image(twin_image, f"{registry}/twins/again", plain_http=True) == digest

    # What a user pulls by digest is the image: the engine checks every layer against the config.
    subprocess.run(["docker", "rmi", "--force", twin_image], check=True, capture_output=True)
    pull = subprocess.run(["docker", "pull", f"{registry}/{repository}@{digest}"], capture_output=True, text=True, check=False, timeout=300)
    assert pull.returncode == 0, pull.stderr
    assert engine.image_id(f"{registry}/{repository}@{digest}") == twin_image


def test_without_pigz_each_layer_is_still_one_gzip_stream(registry, twin_image, monkeypatch, capfd):
    which = shutil.which
    monkeypatch.setattr(engine.shutil, "which", lambda name, *args, **kwargs: None if name == "pigz" else which(name, *args, **kwargs))
    digest = engine.push_image(twin_image, f"{registry}/twins/no-pigz", plain_http=True)
    assert "pigz is not installed" in capfd.readouterr().err
    manifest, blobs = _pushed_layers(registry, "twins/no-pigz", digest)
    assert manifest["config"]["digest"] == twin_image
    for blob in blobs:
        assert len(_one_gzip_stream(blob)) > LAYER_BYTES


# --- item 3: --allow-http-registry only for plain-HTTP (loopback) registries -----------------------


REMOTE = "registry.example.org/org/image@" + DIGEST_OF_ZEROS


def test_cosign_allows_plain_http_only_for_loopback_registries():
    argv = engine._cosign_argv("verify", ["--key=/k.pub"], REMOTE)
    assert "--allow-http-registry" not in argv
    assert argv[-2:] == ["--", REMOTE]
    for loopback in ("127.0.0.1:5000/org/image", "localhost:5000/org/image", "localhost/org/image"):
        argv = engine._cosign_argv("sign", [], f"{loopback}@{DIGEST_OF_ZEROS}")
        assert argv.index("--allow-http-registry") < argv.index("--")
    assert "--allow-http-registry" not in engine._cosign_argv("sign", [], f"127.0.0.1:5000/org/image@{DIGEST_OF_ZEROS}", plain_http=False)
    assert "--allow-http-registry" in engine._cosign_argv("sign", [], REMOTE, plain_http=True)


def test_every_cosign_call_to_a_remote_registry_leaves_plain_http_out(monkeypatch, tmp_path):
    calls: list[tuple[list[str], dict[str, str] | None]] = []

    def tool(args, what, timeout, env=None, binary=False):
        calls.append((args, env))
        raise engine.EngineError("recorded")

    monkeypatch.setattr(engine, "_tool", tool)
    monkeypatch.setenv("COSIGN_PASSWORD", "the-key-password")
    key = tmp_path / "cosign.key"
    for call in (
        lambda: engine.cosign_sign(REMOTE, key),
        lambda: engine.cosign_attest(REMOTE, key, tmp_path / "sbom.json", "cyclonedx"),
        lambda: engine.cosign_verify(REMOTE, key),
        lambda: engine.verified_sbom(REMOTE, key),
    ):
        with pytest.raises(engine.EngineError, match="recorded"):
            call()
    assert not engine.signed_with(REMOTE, key, "cyclonedx")
    assert [args[1] for args, _ in calls] == ["sign", "attest", "verify", "verify-attestation", "verify"]
    assert all("--allow-http-registry" not in args for args, _ in calls)
    # The password goes to cosign where it signs, nowhere else.
    assert [bool(env and env.get("COSIGN_PASSWORD")) for _, env in calls] == [True, True, False, False, False]


# --- item 4: no tool but cosign gets the key's password ---------------------------------------------


def test_tools_run_without_the_key_password(monkeypatch):
    monkeypatch.setenv("COSIGN_PASSWORD", "the-key-password")
    monkeypatch.setenv("MANYFORGE_TEST_KEPT", "kept")
    seen = engine._tool(["env"], "listing the environment", 30)
    assert "MANYFORGE_TEST_KEPT=kept" in seen.splitlines()
    assert "COSIGN_PASSWORD" not in seen and "the-key-password" not in seen
    assert engine._cosign_env()["COSIGN_PASSWORD"] == "the-key-password"


# --- item 5: a timeout or a SIGTERM ends the tool with its children -------------------------------

# A tool whose child ignores SIGTERM (as `docker buildx` is the docker CLI's child); it says its
# child's process ID in a file, then waits for it.
STUBBORN = "(trap '' TERM; exec sleep 60) & echo $! > \"$0\"; wait"


def test_a_tool_past_its_time_limit_is_ended_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(engine.EngineError, match=r"^waiting: sh gave no answer within 1 s"):
        engine._run(["sh", "-c", STUBBORN, str(pid_file)], "waiting", 1)
    assert time.monotonic() - started < 10
    assert _wait_gone(int(pid_file.read_text()))


SIGTERMED_PUSH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from manyforge import engine

    engine.PUSH_WORK = Path(sys.argv[1])

    def save(image_id, archive):  # a push busy in a tool, its work files written
        archive.write_bytes(bytes(1 << 20))
        engine._run(["sh", "-c", sys.argv[2], sys.argv[3]], "saving", 120)

    engine._docker_save = save
    engine.require_image = lambda ref: None
    engine.push_image("sha256:" + "0" * 64, "127.0.0.1:9/org/image", True)
""")


def test_a_sigterm_ends_the_push_and_its_tools_and_leaves_no_work_files(push_work, tmp_path):
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERMED_PUSH, str(push_work), STUBBORN, str(pid_file)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        child = int(pid_file.read_text())
        assert (push_work / "image.tar").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode(errors="replace")
    assert b"Traceback" not in err
    assert _wait_gone(child)
    assert list(push_work.iterdir()) == []


# --- item 6: a failed push leaves nothing behind, a killed one's leftovers go on the next push -----


def test_a_failed_push_leaves_no_work_files(push_work, twin_image, monkeypatch):
    push_work.mkdir()
    (push_work / "image.tar").write_bytes(bytes(1 << 20))  # what a killed push left
    (push_work / "layout").mkdir()
    seen: list[list[str]] = []
    save = engine._docker_save

    def watched_save(image_id, archive):
        seen.append(sorted(p.name for p in push_work.iterdir()))
        save(image_id, archive)

    monkeypatch.setattr(engine, "_docker_save", watched_save)
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(engine.EngineError, match=rf"pushing image {twin_image[:19]} to {closed}/org/image: oras failed"):
        engine.push_image(twin_image, f"{closed}/org/image", plain_http=True)
    assert seen == [[]]
    assert list(push_work.iterdir()) == []


# --- item 7: an index member's media type, when its manifest omits it -----------------------------


def test_an_oci_member_without_a_media_type_is_an_oci_manifest_in_the_index(registry, tmp_path):
    repository = f"{registry}/members/oci"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    (tmp_path / "config.json").write_bytes(config)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    subprocess.run(["oras", "blob", "push", "--plain-http", f"{repository}@{config_digest}", str(tmp_path / "config.json")],
                   check=True, capture_output=True)  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2,  # no mediaType: the OCI's specification allows leaving it out
        "config": {"mediaType": engine.OCI_CONFIG, "digest": config_digest, "size": len(config)}, "layers": [],
    }).encode()  # fmt: skip
    (tmp_path / "manifest.json").write_bytes(manifest)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    subprocess.run(["oras", "manifest", "push", "--plain-http", "--media-type", engine.OCI_MANIFEST, f"{repository}@{digest}",
                    str(tmp_path / "manifest.json")], check=True, capture_output=True)  # fmt: skip
    index_digest = engine.create_index(repository, [f"{repository}@{digest}"], {}, plain_http=True)
    index = json.loads(_get(registry, f"members/oci/manifests/{index_digest}", engine.OCI_INDEX))
    assert index["manifests"][0]["mediaType"] == engine.OCI_MANIFEST
    assert index["manifests"][0]["digest"] == digest


# --- item 8: what the Docker SDK raises ends as one line ------------------------------------------


class _Container:
    def get_archive(self, path):
        return [b"no tar archive at all"], {}

    def remove(self, force=False):
        pass


class _Client:
    class containers:  # noqa: N801 - the SDK's attribute
        @staticmethod
        def create(*args, **kwargs):
            return _Container()

    class images:  # noqa: N801
        @staticmethod
        def get(ref):
            raise requests.exceptions.ConnectionError("('Connection aborted.', ConnectionResetError(104, 'reset by peer'))")


def test_engine_answers_that_break_become_one_line(monkeypatch):
    monkeypatch.setattr(engine, "client", lambda: _Client())
    monkeypatch.setattr(engine, "require_image", lambda ref: None)
    with pytest.raises(engine.EngineError, match="the engine's archive of it is unreadable"):
        engine.read_image_file(DIGEST_OF_ZEROS, "/etc/os-release", 4096)
    with pytest.raises(engine.EngineError, match=r"^the Docker engine \(image_labels\): ConnectionError: .*reset by peer"):
        engine.image_labels("some/image:tag")
