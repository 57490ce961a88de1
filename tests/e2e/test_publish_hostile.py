"""Hostile input never runs, never publishes, never hangs: `invoke publish`, `release-tag` and
`changelog` through the real command line, against a real registry server on 127.0.0.1 (Debian's
docker-registry, its storage in a temporary directory) and a registry that accepts connections
and never answers.

The image published is a tiny one made here (one SBOM file, imported with `docker import`) under
a matrix of its own (images.yaml with one image, a name unique to the run), with a test record
written through the record model: everything but the image's size is what a release is.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from manyforge import engine, publish
from manyforge.spec import DEFAULT_SPEC, load_spec
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).with_name("invoke")
PASSWORD = "hostile-Pa55word-7f3a9c"  # the throw-away key's password: it must never be printed
TIMEOUT = "2"  # MANYFORGE_TOOL_TIMEOUT against the stalling registry, in seconds
SBOM = {
    "bomFormat": "CycloneDX", "specVersion": "1.5",
    "components": [{"name": "cpython", "version": "3.13.5", "properties": [{"name": "manyforge:interpreter", "value": "cp313-cp313"}]}],
}  # fmt: skip


@contextlib.contextmanager
def stalling_registry():
    """HOST:PORT of a server that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


@pytest.fixture(scope="module")
def key_password() -> str:
    return PASSWORD


@dataclass(frozen=True)
class Tiny:
    spec_path: Path
    image: str  # its name in the matrix
    image_id: str


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-image matrix and its tiny image, built here, with a passing test record."""
    work = tmp_path_factory.mktemp("tiny")
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    data = yaml.safe_load(DEFAULT_SPEC.read_text())
    data["org"] = "manyforge-hostile"
    # Only the interpreter its SBOM carries: any other declared one would be left out (--allow-omitted).
    data["images"] = {name: {**data["images"]["manylinux_2_36"], "archs": ["x86_64"], "interpreters": ["cp313-cp313"]}}
    data["images"][name].pop("downloadable", None)
    # Only the image's own toolchains: the matrix refuses settings that no image of it uses.
    used = {data["images"][name]["toolchain"], *data["images"][name].get("toolchain_variants", [])}
    data["toolchains"] = {k: v for k, v in data["toolchains"].items() if k in used}
    spec_path = work / "images.yaml"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(spec_path)
    target = resolve_target(spec, name, "x86_64")
    root = work / "root"
    (root / "opt" / "_internal").mkdir(parents=True)
    (root / "opt" / "_internal" / "sbom.cdx.json").write_text(json.dumps(SBOM))
    (root / "name").write_text(name + "\n")  # an image of its own: its ID is the run's
    with tarfile.open(work / "rootfs.tar", "w") as tar:
        tar.add(root / "opt", "opt")
        tar.add(root / "name", "name")
    subprocess.run(["docker", "import", str(work / "rootfs.tar"), target.latest_ref], check=True, capture_output=True)
    image_id = engine.image_id(target.latest_ref)
    record = publish.write_test_record(publish.TestRecord(
        image_id=image_id, slug=target.slug, ref=target.latest_ref, spec_revision=spec.revision,
        collected=1, passed=1, failed=0, skipped=0, complete=True,
    ))  # fmt: skip
    try:
        yield Tiny(spec_path, name, image_id)
    finally:
        record.unlink(missing_ok=True)
        shutil.rmtree(publish.RELEASE_DIR / name, ignore_errors=True)
        subprocess.run(["docker", "rmi", "--force", image_id], check=False, capture_output=True)


def invoke(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command line as a user runs it; the key's password in the environment."""
    proc = subprocess.run(
        [str(INVOKE), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout,
        env={**os.environ, "COSIGN_PASSWORD": PASSWORD, **(env or {})},
    )  # fmt: skip
    assert PASSWORD not in proc.stdout + proc.stderr, "the key's password was printed"
    return proc


def invoke_all(cases: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, subprocess.CompletedProcess]:
    """Run many command lines side by side (each spends most of its second loading the matrix)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(invoke, *args, env=env) for name, (args, env) in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def all_refused(procs: dict[str, subprocess.CompletedProcess], fragment: str) -> dict[str, str]:
    """`refused` for each case; a failure names the case."""
    messages = {}
    for name, proc in procs.items():
        try:
            messages[name] = refused(proc, fragment)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from None
    return messages


def refused(proc: subprocess.CompletedProcess, fragment: str) -> str:
    """A clean refusal: a non-zero exit, `error:` lines naming the problem after any progress
    lines, no traceback; returns the error lines."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    start = 0 if proc.stderr.startswith("error: ") else proc.stderr.find("\nerror: ") + 1
    assert start >= 0 and proc.stderr[start:].startswith("error: "), proc.stderr
    assert fragment in proc.stderr[start:], proc.stderr
    return proc.stderr[start:]


def tags_of(registry: str, repository: str) -> list[str]:
    """Every tag of a repository (signatures' too), as `oras repo tags` lists them."""
    proc = subprocess.run(["oras", "repo", "tags", "--plain-http", f"{registry}/{repository}"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        assert "name unknown" in proc.stderr or "not found" in proc.stderr, proc.stderr
        return []
    return proc.stdout.split()


def repositories(registry: str) -> list[str]:
    with urllib.request.urlopen(f"http://{registry}/v2/_catalog", timeout=10) as response:
        return json.loads(response.read()).get("repositories") or []


def publish_args(registry: str, namespace: str, tiny: Tiny, key: Path, *more: str) -> list[str]:
    return ["publish", "--registry", f"{registry}/{namespace}", "--image", tiny.image, "--key", str(key), *more]


def spec_env(tiny: Tiny, **more: str) -> dict[str, str]:
    return {"MANYFORGE_SPEC": str(tiny.spec_path), **more}


# --- (1) a key that cannot sign stops the publish before anything is pushed --------------------


def _not_a_key(tmp_path: Path, keys) -> Path:
    path = tmp_path / "text.key"
    path.write_text("this is not a key\n")
    return path


def _empty(tmp_path: Path, keys) -> Path:
    path = tmp_path / "empty.key"
    path.write_text("")
    return path


def _public_half(tmp_path: Path, keys) -> Path:
    return keys[1]


def _password_in_its_path(tmp_path: Path, keys) -> Path:
    """A non-key whose path holds the password: the message names the path, never the password."""
    (tmp_path / PASSWORD).mkdir()
    path = tmp_path / PASSWORD / "cosign.key"
    path.write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    return path


KEY_CASES = {
    "text": (_not_a_key, PASSWORD, "the key must be a cosign private key that COSIGN_PASSWORD opens"),
    "empty": (_empty, PASSWORD, "the key must be a cosign private key that COSIGN_PASSWORD opens"),
    "public-key": (_public_half, PASSWORD, "unsupported pem type"),
    "password-in-path": (_password_in_its_path, PASSWORD, "the key must be a cosign private key that COSIGN_PASSWORD opens"),
    "wrong-password": (lambda tmp_path, keys: keys[0], "not-the-password", "decryption failed"),
    "empty-password": (lambda tmp_path, keys: keys[0], "", "decryption failed"),
    "directory": (lambda tmp_path, keys: tmp_path, PASSWORD, "no such signing key"),
    "missing": (lambda tmp_path, keys: tmp_path / "missing.key", PASSWORD, "no such signing key"),
    "fifo": (lambda tmp_path, keys: (os.mkfifo(tmp_path / "fifo.key"), tmp_path / "fifo.key")[1], PASSWORD, "no such signing key"),
}


def test_a_key_that_cannot_sign_pushes_nothing(registry, tiny, keys, tmp_path):
    """Each publish stops before its first push: the registry has no tag, not even a repository."""
    cases = {}
    for name, (make_key, password, _) in KEY_CASES.items():
        (tmp_path / name).mkdir()
        cases[name] = (publish_args(registry, f"keys-{name}", tiny, make_key(tmp_path / name, keys)), spec_env(tiny, COSIGN_PASSWORD=password))
    procs = invoke_all(cases)
    for name, (_, password, fragment) in KEY_CASES.items():
        message = all_refused({name: procs[name]}, fragment)[name]
        assert len(message.strip().splitlines()) == 1, message
        assert not password or password not in procs[name].stdout + procs[name].stderr
        assert tags_of(registry, f"keys-{name}/{tiny.image}_x86_64") == [] and tags_of(registry, f"keys-{name}/{tiny.image}") == []
    assert not [r for r in repositories(registry) if r.startswith("keys-")]


# --- (2) option and environment values never reach a tool as options ----------------------------

BAD_REGISTRIES = [
    "-h/ns",
    "--help/ns",
    "--plain-http/ns",
    "127.0.0.1:0/ns",
    "127.0.0.1:65536/ns",
    "127.0.0.1:99999/ns",
    "127.0.0.1:-1/ns",
    "127.0.0.1:\u0665\u0660\u0660\u0660/ns",  # Arabic-Indic 5000: a Unicode \d takes it
    "\uff11\uff12\uff17.0.0.1:5000/ns",  # full-width digits
    "127.0.0.1:5000/ns\n",  # `$` matches before a final newline
    "127.0.0.1:5000/ns\u200b",
    "127.0.0.1:5000/-ns",
    "127.0.0.1:5000/ns/../x",
    "127.0.0.1:5000/ns --insecure",
    "host-/ns",
    "127.0.0.1:5000",
    "",
    "127.0.0.1:00000/ns",
    "127.0.0.1:5000/ns-",
    "127.0.0.1:5000/a/_b",
    "127.0.0.1:5000/a.-b",
    "host/ns",  # one label without a port: Docker reads it as a namespace on Docker Hub, not as a host
    "user:tok3n-f00d@127.0.0.1:5000/ns",  # userinfo: refused, and never echoed
]


# Through the command line, one of each kind (every value of BAD_REGISTRIES is checked below
# against the parser itself: each command line costs a second of start-up).
CLI_REGISTRIES = ["-h/ns", "--plain-http/ns", "127.0.0.1:0/ns", "127.0.0.1:65536/ns", "127.0.0.1:\u0665\u0660\u0660\u0660/ns",
                  "\uff11\uff12\uff17.0.0.1:5000/ns", "127.0.0.1:5000/ns\n", "127.0.0.1:5000/ns --insecure"]  # fmt: skip


def test_a_bad_registry_is_refused_by_release_tag_publish_and_changelog(tiny, keys):
    cases = {f"release-tag {v!r}": (["release-tag", "--registry", v, "--image", "manylinux_2_36"], {}) for v in CLI_REGISTRIES}
    for value in ("-h/ns", "127.0.0.1:\u0665\u0660\u0660\u0660/ns"):
        cases[f"publish {value!r}"] = (["publish", "--registry", value, "--image", tiny.image, "--key", str(keys[0])], spec_env(tiny))
        cases[f"changelog {value!r}"] = (["changelog", "--registry", value, "--image", tiny.image, "--from-tag", "2026.01.01-1",
                                          "--to-tag", "2026.01.02-1", "--public-key", str(keys[1])], spec_env(tiny))  # fmt: skip
    token = "tok" + uuid.uuid4().hex  # not in the environment: scrubbing would not hide it
    cases["publish userinfo"] = (["publish", "--registry", f"user:{token}@127.0.0.1:5000/ns", "--image", tiny.image,
                                  "--key", str(keys[0])], spec_env(tiny))  # fmt: skip
    procs = invoke_all(cases)
    messages = all_refused(procs, "error: --registry ")
    assert all(len(m.strip().splitlines()) == 1 for m in messages.values()), messages
    assert token not in procs["publish userinfo"].stdout + procs["publish userinfo"].stderr
    # `=` form too: the value cannot be taken for an option of invoke's either.
    refused(invoke("release-tag", "--registry=-h/ns", "--image", "manylinux_2_36"), "error: --registry '-h/ns'")


def test_the_registry_grammar_takes_what_registries_are():
    """One grammar for hosts and repository components, Docker's (manyforge.quoting's)."""
    good = ["127.0.0.1:5000/ns", "localhost:1/a/b", "ghcr.io/org", "registry.example.com:65535/org/sub-ns", "a-b.c/x_y.z",
            "127.0.0.1:5000/a--b", "localhost/a__b/c---d", "host:5000/ns"]  # fmt: skip
    for value in good:
        dest = publish.Destination.parse(value)
        assert engine.REMOTE_REF.fullmatch(dest.repository("image_x86_64") + ":2026.01.01-1"), value
    assert publish.Destination.parse("Registry.Example.com:443/ns") == publish.Destination("registry.example.com:443", "ns")
    for value in BAD_REGISTRIES:
        with pytest.raises(publish.PublishError, match="^--registry ") as refusal:
            publish.Destination.parse(value)
        assert "tok3n" not in str(refusal.value)


BAD_TAGS = ["2026.11.30-1\n", "\u0662\u0660\u0662\u0666.11.30-1", "--help", "2026.11.30-1 --x", "2026.1.30-1", "latest", "2026.11.30-",
            # the right shape, but no date or no canonical N (`-01` would sort apart from `-1`)
            "2026.13.45-1", "2026.02.30-1", "0000.01.01-1", "2026.01.01-0", "2026.01.01-01", "2026.01.01-1000000000"]  # fmt: skip


def test_a_bad_release_tag_is_refused(registry, tiny, keys):
    cases: dict[str, tuple[list[str], dict[str, str]]] = {}
    for value in ["2026.11.30-1\n", "--help", "2026.13.45-1", "2026.01.01-01"]:  # the command line for a few; the parser for all below
        cases[f"--tag {value!r}"] = (publish_args(registry, "tags", tiny, keys[0], "--tag", value), spec_env(tiny))
    for value in ["\u0662\u0660\u0662\u0666.11.30-1", "2026.02.30-1"]:
        for option, other in (("--from-tag", "--to-tag"), ("--to-tag", "--from-tag")):
            cases[f"{option} {value!r}"] = (["changelog", "--registry", f"{registry}/tags", "--image", tiny.image, option, value,
                                            other, "2026.01.01-1", "--public-key", str(keys[1])], spec_env(tiny))  # fmt: skip
    for name, proc in invoke_all(cases).items():
        all_refused({name: proc}, f"error: {name.split()[0]} ")
    assert not [r for r in repositories(registry) if r.startswith("tags/")]
    for value in BAD_TAGS:
        assert publish.previous_release([value, "2026.01.01-1"], "2026.01.02-1") == "2026.01.01-1"
        with pytest.raises(publish.PublishError, match="^--tag "):
            publish.check_release_tag(value)


def test_an_arch_the_image_does_not_declare_is_refused(registry, tiny, keys):
    cases = {}
    for value in ["x86_64,-h", "s390x"]:
        cases[f"publish {value!r}"] = (publish_args(registry, "arches", tiny, keys[0], "--arch", value), spec_env(tiny))
        cases[f"changelog {value!r}"] = (["changelog", "--registry", f"{registry}/arches", "--image", tiny.image, "--arch", value,
                                          "--from-tag", "2026.01.01-1", "--to-tag", "2026.01.02-1", "--public-key", str(keys[1])],
                                         spec_env(tiny))  # fmt: skip
    all_refused(invoke_all(cases), "error: --arch ")


def test_a_bad_tool_timeout_is_refused(registry, monkeypatch):
    values = ["0", "-1", "abc", "\u0661\u0660", "86401", "1e3", " 5", "5\n"]
    cases = {
        value: (["release-tag", "--registry", f"{registry}/ns", "--image", "manylinux_2_36"], {"MANYFORGE_TOOL_TIMEOUT": value})
        for value in values[:4]
    }
    all_refused(invoke_all(cases), "error: MANYFORGE_TOOL_TIMEOUT=")
    for value in values:
        monkeypatch.setenv("MANYFORGE_TOOL_TIMEOUT", value)
        with pytest.raises(engine.EngineError, match="^MANYFORGE_TOOL_TIMEOUT="):
            engine.tool_timeout(engine.METADATA_TIMEOUT)


@pytest.mark.parametrize(
    "value",
    ["ghcr.io/org/cache,type=local", "ghcr.io/org/cache=x", "-h/cache", "ghcr.io:0/c", "ghcr.io:70000/c", "ghcr.io/Org/cache",
     "ghcr.io/org/cache:tag", "ghcr.io/org/cache@sha256:" + "0" * 64, "ghcr.io/org/\u0441ache", "ghcr.io/org/cache\n", "ghcr.io/org/ cache"],
)  # fmt: skip
def test_a_bad_build_cache_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("MANYFORGE_BUILD_CACHE", value)
    monkeypatch.delenv("MANYFORGE_BUILD_CACHE_PUSH", raising=False)
    with pytest.raises(engine.EngineError, match="^MANYFORGE_BUILD_CACHE="):
        engine.build_cache_settings()


@pytest.mark.parametrize(("value", "push"), [("1", True), ("true", True), ("0", False), ("false", False), ("", False)])
def test_build_cache_push_is_on_or_off(monkeypatch, value, push):
    monkeypatch.setenv("MANYFORGE_BUILD_CACHE", "127.0.0.1:5000/org/cache")
    monkeypatch.setenv("MANYFORGE_BUILD_CACHE_PUSH", value)
    assert engine.build_cache_settings() == ("127.0.0.1:5000/org/cache", push)


@pytest.mark.parametrize("value", ["yes", "TRUE", "on", "2", " 1", "\u0661"])
def test_build_cache_push_refuses_what_it_would_otherwise_read_as_off(monkeypatch, value):
    monkeypatch.setenv("MANYFORGE_BUILD_CACHE_PUSH", value)
    with pytest.raises(engine.EngineError, match="^MANYFORGE_BUILD_CACHE_PUSH="):
        engine.build_cache_settings()


# --- (3) a registry that stalls ends the command within the tool timeout ------------------------


def test_a_stalling_registry_ends_release_tag_publish_and_changelog(tiny, keys, tmp_path):
    env = spec_env(tiny, MANYFORGE_TOOL_TIMEOUT=TIMEOUT)
    with stalling_registry() as stalled:
        commands = {
            "release-tag": (["release-tag", "--registry", f"{stalled}/ns", "--image", tiny.image], "listing the tags of"),
            "publish": (publish_args(stalled, "ns", tiny, keys[0]), "listing the tags of"),
            "publish --tag": (publish_args(stalled, "ns", tiny, keys[0], "--tag", "2026.01.01-1"), "listing the tags of"),
            "changelog": (["changelog", "--registry", f"{stalled}/ns", "--image", tiny.image, "--from-tag", "2026.01.01-1",
                           "--to-tag", "2026.01.02-1", "--public-key", str(keys[1])], "verifying the cyclonedx attestation of"),
        }  # fmt: skip
        def timed(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
            started = time.monotonic()
            return invoke(*args, env=env, timeout=60), time.monotonic() - started

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(commands)) as pool:
            runs = {name: pool.submit(timed, args) for name, (args, _) in commands.items()}
        for name, (_, what) in commands.items():
            proc, seconds = runs[name].result()
            message = refused(proc, what)
            assert f"{stalled}/ns/{tiny.image}" in message and f"gave no answer within {TIMEOUT} s" in message, message
            assert len(message.strip().splitlines()) == 1, message
            assert seconds < 20, f"{name} took {seconds:.1f}s against a stalling registry"
            print(f"[stall] {name}: ended in {seconds:.1f}s: {message.strip()}", file=sys.stderr)


# --- publish order: no tag names an unsigned image, whatever step fails or is killed ------------


def _cosign_shim(tmp_path: Path, script: str) -> dict[str, str]:
    """A PATH whose `cosign` runs `script` (sh) before the real one: a signing step that fails or
    hangs where the real one would not."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    real = shutil.which("cosign")
    (shim / "cosign").write_text(f"#!/bin/sh\n{script}\nexec {real} \"$@\"\n")
    (shim / "cosign").chmod(0o755)
    return {"PATH": f"{shim}:{os.environ['PATH']}"}


def _release_tags(registry: str, repository: str) -> list[str]:
    return [t for t in tags_of(registry, repository) if not t.startswith("sha256-")]


def test_a_publish_killed_or_failing_after_the_push_tags_nothing_and_a_rerun_completes_it(registry, tiny, keys, tmp_path):
    namespace = "interrupted"
    arch_repo, index_repo = f"{namespace}/{tiny.image}_x86_64", f"{namespace}/{tiny.image}"
    args = publish_args(registry, namespace, tiny, keys[0], "--subset")
    # Killed while signing the pushed image: the image is in the registry, under no tag at all.
    marker = tmp_path / "signing"
    env = {**os.environ, "COSIGN_PASSWORD": PASSWORD, **spec_env(tiny),
           **_cosign_shim(tmp_path, f'[ "$1" = sign ] && touch {marker} && sleep 300')}  # fmt: skip
    proc = subprocess.Popen([str(INVOKE), *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    signing = marker.exists()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert signing, "the publish never reached signing"
    assert arch_repo in repositories(registry), "killed before the push: nothing to check"
    assert tags_of(registry, arch_repo) == [] and tags_of(registry, index_repo) == []
    # Attesting fails once signed: the signature's tag is there, no release tag.
    failed = invoke(*args, env={**spec_env(tiny), **_cosign_shim(tmp_path, '[ "$1" = attest ] && echo "attest: refused" >&2 && exit 1')})
    refused(failed, f"attesting {registry}/{arch_repo}@sha256:")
    assert _release_tags(registry, arch_repo) == [] and [t for t in tags_of(registry, arch_repo) if t.endswith(".sig")]
    # The index's catalog attestation fails, the image signed: still no release tag anywhere
    # (a release is tagged only once all of it is signed).
    catalog_fails = f'case "$*" in *"--type={publish.CATALOG_TYPE}"*) echo "attest: refused" >&2; exit 1;; esac'
    failed = invoke(*args, env={**spec_env(tiny), **_cosign_shim(tmp_path, catalog_fails)})
    refused(failed, f"attesting {registry}/{index_repo}@sha256:")
    assert _release_tags(registry, arch_repo) == [] and _release_tags(registry, index_repo) == []
    # The rerun completes the release under the tag it would have had; it signs nothing twice,
    # and every tag names a signed manifest.
    rerun = invoke(*args, env=spec_env(tiny))
    assert rerun.returncode == 0, rerun.stderr
    catalog = json.loads(rerun.stdout)
    tag = catalog["release"]
    assert tag == time.strftime("%Y.%m.%d") + "-1", tag
    assert f"{registry}/{arch_repo}@{catalog['arches']['x86_64']['digest']}: already signed and attested" in rerun.stderr
    assert sorted(_release_tags(registry, arch_repo)) == sorted([tag, "latest"])
    assert sorted(_release_tags(registry, index_repo)) == sorted([tag, "latest"])
    for repository in (arch_repo, index_repo):
        for name in _release_tags(registry, repository):
            engine.cosign_verify(f"{registry}/{repository}:{name}", keys[1])
    index = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://{registry}/v2/{index_repo}/manifests/{tag}", headers={"Accept": engine.OCI_INDEX}), timeout=10).read())  # fmt: skip
    assert [m["platform"] for m in index["manifests"]] == [{"architecture": "amd64", "os": "linux"}]
    assert index["manifests"][0]["digest"] == catalog["arches"]["x86_64"]["digest"]
    config = subprocess.run(["oras", "manifest", "fetch", "--plain-http", f"{registry}/{arch_repo}:{tag}"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert json.loads(config)["config"]["digest"] == tiny.image_id


def test_a_changelog_between_two_releases_and_a_secret_in_the_registry_answer(registry, tiny, keys):
    """Two releases of the tiny image; the changelog verifies both SBOMs. A registry token in
    the environment that a message would carry is scrubbed like the key's password."""
    args = publish_args(registry, "twice", tiny, keys[0])
    first = invoke(*args, env=spec_env(tiny))
    assert first.returncode == 0, first.stderr
    tag = json.loads(first.stdout)["release"]
    proc = invoke("changelog", "--registry", f"{registry}/twice", "--image", tiny.image, "--from-tag", tag, "--to-tag", tag,
                  "--public-key", str(keys[1]), "--format", "json", env=spec_env(tiny))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not any(any(change.values()) for change in json.loads(proc.stdout)["arches"]["x86_64"].values())
    token = "tok" + uuid.uuid4().hex
    missing = "2026.01.01-9"  # releases are dated today: never this one
    proc = invoke("changelog", "--registry", f"{registry}/{token}", "--image", tiny.image, "--from-tag", missing, "--to-tag", missing,
                  "--public-key", str(keys[1]), env=spec_env(tiny, REGISTRY_TOKEN=token))  # fmt: skip
    message = refused(proc, "verifying the cyclonedx attestation of")
    assert token not in proc.stdout + message and f"{registry}/***/" in message
