"""Stage 3: the only module that talks to Docker.

Checks that the host can build for a platform, bootstraps Debian bases without a registry,
runs `docker buildx build` with progress on the terminal and a kept log, tags the result,
and starts containers for the tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker.errors

import docker
from manyforge.arches import ARCHES
from manyforge.render import Target, bootstrap_base_ref
from manyforge.sources import debootstrap_root
from manyforge.spec import REPO_ROOT, Spec

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
SETUP_HINT = "run `sudo scripts/setup-host.sh` (or `invoke setup`) to install and start it"


class EngineError(Exception):
    pass


def client() -> docker.DockerClient:
    if shutil.which("docker") is None:
        raise EngineError(f"the docker CLI is not installed; {SETUP_HINT}")
    try:
        c = docker.from_env(timeout=600)
        c.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"no Docker engine answers ({exc.__class__.__name__}); {SETUP_HINT}") from None
    return c


def check_prerequisites(arch: str, needs_debootstrap: bool) -> None:
    """Fail early, with the fix, when something the build needs is missing."""
    client()
    if subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode != 0:
        raise EngineError(f"the docker buildx plugin is missing; {SETUP_HINT}")
    qemu = ARCHES[arch].qemu
    if qemu is not None:
        handler = BINFMT_DIR / qemu
        if not handler.exists():
            raise EngineError(f"no binfmt handler for {arch} ({handler} is missing): QEMU emulation is not set up; {SETUP_HINT}")
        flags = re.search(r"flags: *(\S*)", handler.read_text())
        if flags is None or "F" not in flags.group(1):
            raise EngineError(f"binfmt handler {handler} lacks the fix-binary (F) flag that containers need; {SETUP_HINT}")
    if needs_debootstrap and shutil.which("debootstrap") is None:
        raise EngineError(f"debootstrap is not installed; {SETUP_HINT}")


def image_platform(ref: str) -> str | None:
    try:
        attrs = client().images.get(ref).attrs
    except docker.errors.ImageNotFound:
        return None
    variant = attrs.get("Variant")
    return f"{attrs['Os']}/{attrs['Architecture']}" + (f"/{variant}" if variant else "")


def ensure_bootstrap_base(spec: Spec, base_name: str, arch: str) -> str:
    """Create the local base image of a debootstrap base, unless it is already there."""
    ref = bootstrap_base_ref(spec, base_name, arch)
    platform = ARCHES[arch].platform
    if image_platform(ref) == platform:
        return ref
    suite = spec.data.bases[base_name].debootstrap
    assert suite is not None, f"{base_name} is not a debootstrap base"
    print(f"==> bootstrapping {suite} for {arch} from Debian's signed archive", file=sys.stderr)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="manyforge-base-") as tmp:
        debootstrap_root(suite, arch, Path(tmp) / "root.tar")
        shutil.copy(REPO_ROOT / "docker" / "bootstrap-base.Dockerfile", Path(tmp) / "Dockerfile")
        imported = subprocess.run(
            ["docker", "buildx", "build", "--platform", platform, "--load", "--tag", ref, tmp],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if imported.returncode != 0:
            raise EngineError(f"turning the {suite}/{arch} root into an image failed: {imported.stderr[-2000:]}")
    print(f"==> base {ref} ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return ref


def next_tag(repository: str, today: dt.date | None = None) -> str:
    """`YYYY.MM.DD-N`: N counts the builds of the day that produced a new image."""
    day = (today or dt.date.today()).strftime("%Y.%m.%d")
    numbers = []
    for image in client().images.list(name=repository):
        for tag in image.tags:
            m = re.fullmatch(rf"{re.escape(repository)}:{re.escape(day)}-(\d+)", tag)
            if m:
                numbers.append(int(m.group(1)))
    return f"{day}-{max(numbers, default=0) + 1}"


@dataclass(frozen=True)
class BuildResult:
    image_id: str
    tags: list[str]
    seconds: float
    log: Path
    target: Target  # as built: with any CPython fallback the fetch stage chose


CACHE_BUILDER = "manyforge-cache"


def _registry_cache(target: Target) -> list[str]:
    """buildx options for a registry build cache: MANYFORGE_BUILD_CACHE=<registry>/<repository>
    reads it (one tag per image×arch×variant), MANYFORGE_BUILD_CACHE_PUSH=1 also writes it.
    Registry caches need a docker-container builder, which is made on first use; that builder
    cannot see the engine's local images, so images on a bootstrapped base build without it."""
    ref = os.environ.get("MANYFORGE_BUILD_CACHE")
    if not ref:
        return []
    if target.base.debootstrap:
        print(f"==> {target.slug}: its base is bootstrapped here; building without the registry cache", file=sys.stderr)
        return []
    if subprocess.run(["docker", "buildx", "inspect", CACHE_BUILDER], capture_output=True, check=False).returncode != 0:
        _tool(["docker", "buildx", "create", "--name", CACHE_BUILDER, "--driver", "docker-container", "--bootstrap"], "buildx create")
    cache = f"type=registry,ref={ref}:{target.slug}"
    args = ["--builder", CACHE_BUILDER, "--cache-from", cache]
    if target.cross_compiles:  # its native_* stages are the native image's: read that cache too
        args += ["--cache-from", f"type=registry,ref={ref}:{target.native().slug}"]
    if os.environ.get("MANYFORGE_BUILD_CACHE_PUSH") == "1":
        args += ["--cache-to", f"{cache},mode=max"]
    return args


def build(
    target: Target, context: Path, log_dir: Path, no_cache: bool = False, stop: threading.Event | None = None
) -> BuildResult:
    """Build a prepared context with buildx for the target's platform and tag it (the caller
    has run check_prerequisites). Setting `stop` ends buildx within seconds (EngineError)."""
    for arch in target.bootstrap_arches:
        ensure_bootstrap_base(target.spec, target.base_name, arch)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{target.slug}.log"
    suffix = target.tag_suffix
    build_ref = f"{target.repository}:build{suffix}"
    cmd = [
        "docker", "buildx", "build", "--platform", target.platform, "--progress", "plain", "--load",
        "--tag", build_ref, *(["--no-cache"] if no_cache else []), *_registry_cache(target), str(context),
    ]  # fmt: skip
    print(f"==> building {target.slug} ({target.platform}); log: {log}", file=sys.stderr)
    started = time.monotonic()
    with log.open("w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        progress = _Progress(started)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        while True:
            if stop is not None and stop.is_set():
                proc.terminate()
                proc.wait()
                raise EngineError(f"build of {target.slug} stopped after {time.monotonic() - started:.0f}s; its log: {log}")
            try:
                line = lines.get(timeout=2)
            except queue.Empty:
                progress.beat()  # quiet compiles still show that they are alive (once a minute)
                continue
            if line is None:
                break
            log_fh.write(line)
            progress.feed(line)
        reader.join()
        rc = proc.wait()
    seconds = time.monotonic() - started
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise EngineError(f"build of {target.slug} failed after {seconds:.0f}s (exit {rc}); last lines of {log}:\n{tail}")
    image = client().images.get(build_ref)
    tags = _apply_tags(image, target, suffix)
    return BuildResult(image.id, tags, seconds, log, target)


def prune_build_cache() -> None:
    """Empty BuildKit's cache (images in the engine's store, such as bootstrapped bases, stay)."""
    _tool(["docker", "buildx", "prune", "--all", "--force"], "buildx prune")


def probe_build(context: Path, platform: str) -> tuple[int, str]:
    """Build a context only for what its steps print (nothing is kept): exit status and output."""
    proc = subprocess.run(
        ["docker", "buildx", "build", "--platform", platform, "--progress", "plain", "--no-cache", str(context)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def _apply_tags(image, target: Target, suffix: str) -> list[str]:
    repo = target.repository
    existing = [t for t in image.tags if re.fullmatch(rf"{re.escape(repo)}:\d{{4}}\.\d\d\.\d\d-\d+{re.escape(suffix)}", t)]
    dated = existing[0].split(":", 1)[1] if existing else next_tag(repo) + suffix
    tags = [f"{repo}:{dated}", f"{repo}:latest{suffix}"]
    for tag in tags:
        name, _, version = tag.rpartition(":")
        image.tag(name, version)
    return tags


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class _Progress:
    """Condense BuildKit's plain output: each step once when it starts and when it ends, errors,
    and a heartbeat naming the running steps at most once a minute."""

    def __init__(self, started: float):
        self.started = started
        self.names: dict[str, str] = {}
        self.running: set[str] = set()
        self.last_beat = started

    def _say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.0f}s] {text}", file=sys.stderr, flush=True)

    def feed(self, line: str) -> None:
        m = re.match(r"#(\d+) (.*)", line.rstrip())
        if not m:
            return
        step, rest = m.groups()
        if rest.startswith("[") and step not in self.names:
            self.names[step] = rest.split("]", 1)[0] + "]"
            if " RUN " in rest or " COPY " in rest or "FROM" in rest:
                self.running.add(step)
                self._say(f"start {self.names[step]}")
        elif rest.startswith(("DONE", "CACHED", "ERROR")) and step in self.names:
            self.running.discard(step)
            self._say(f"{rest.split()[0].lower():6} {self.names[step]} {rest.split(' ', 1)[1] if ' ' in rest else ''}")
        elif "manyforge:" in rest:
            self._say(rest.split("manyforge:", 1)[1].strip())
        elif "ERROR" in rest or "error:" in rest.lower():
            self._say(rest)
        self.beat()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat > 60 and self.running:
            self.last_beat = now
            self._say("running: " + ", ".join(sorted(self.names[s] for s in self.running)))


# --- containers, for the tests ------------------------------------------------------------------


def image_size(ref: str) -> int:
    return int(client().images.get(ref).attrs["Size"])


def start_container(ref: str, arch: str, mounts: dict[str, str] | None = None):
    """Start a long-lived container of an image (for testinfra); the caller removes it."""
    require_image(ref)
    volumes = {host: {"bind": inside, "mode": "ro"} for host, inside in (mounts or {}).items()}
    return client().containers.run(
        ref, ["sleep", "infinity"], detach=True, platform=ARCHES[arch].platform, volumes=volumes, network_mode="none"
    )


def local_image_exists(ref: str) -> bool:
    try:
        client().images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


@dataclass(frozen=True)
class ContainerRun:
    returncode: int
    stdout: str
    stderr: str


def run_container(
    ref: str,
    arch: str,
    command: list[str],
    mounts: dict[str, str] | None = None,
    writable: tuple[str, ...] = (),
    network: str = "none",
    environment: dict[str, str] | None = None,
) -> ContainerRun:
    """`docker run` a command (through the image's entrypoint) in a throw-away container.

    `mounts` maps host paths to container paths, read-only unless listed in `writable`;
    `network` is "none" (default) or "host" (to reach servers on the host's 127.0.0.1).
    """
    require_image(ref)
    volumes = {h: {"bind": inside, "mode": "rw" if h in writable else "ro"} for h, inside in (mounts or {}).items()}
    try:
        container = client().containers.run(
            ref, command, detach=True, platform=ARCHES[arch].platform, volumes=volumes, network_mode=network,
            environment=environment or {},
        )  # fmt: skip
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot run {ref}: {exc.explanation or exc}") from None
    try:
        status = container.wait(timeout=3600)
        return ContainerRun(
            int(status["StatusCode"]),
            container.logs(stdout=True, stderr=False).decode(errors="replace"),
            container.logs(stdout=False, stderr=True).decode(errors="replace"),
        )
    finally:
        container.remove(force=True)


def run_in_image(ref: str, arch: str, command: list[str], mounts: dict[str, str] | None = None) -> str:
    """Run a command in a throw-away container of an image and return its standard output."""
    result = run_container(ref, arch, command, mounts)
    if result.returncode != 0:
        raise EngineError(f"{' '.join(command)} failed in {ref} (exit {result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def require_image(ref: str) -> None:
    """Containers start only from local images: never let the engine try a registry."""
    if not local_image_exists(ref):
        raise EngineError(f"image {ref} is not built here; build it first with `invoke build`")


# --- registries and signatures, for the publish stage ---------------------------------------------


def image_id(ref: str) -> str:
    """The local image's ID: its config digest, which a registry keeps as the manifest's config."""
    require_image(ref)
    return str(client().images.get(ref).id)


def _tool(args: list[str], what: str, env: dict[str, str] | None = None, input_text: str | None = None) -> str:
    """Run a registry or signing tool; its output on failure, never the environment (which may
    hold the signing key's password)."""
    if shutil.which(args[0]) is None:
        raise EngineError(f"{args[0]} is not installed; {SETUP_HINT}")
    proc = subprocess.run(args, capture_output=True, text=True, check=False, env=env, input=input_text)
    if proc.returncode != 0:
        raise EngineError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


def _http(plain_http: bool) -> list[str]:
    """oras's flag (after its subcommand) for registries that speak plain HTTP."""
    return ["--plain-http"] if plain_http else []


def registry_tags(repository: str, plain_http: bool) -> list[str]:
    """Tags of a repository in a registry (none if the repository does not exist yet)."""
    proc = subprocess.run(["oras", "repo", "tags", *_http(plain_http), repository],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        if "not found" in proc.stderr.lower() or "name unknown" in proc.stderr.lower():
            return []
        raise EngineError(f"cannot list the tags of {repository}: {proc.stderr.strip()[-500:]}")
    return proc.stdout.split()


def _manifest(ref: str, plain_http: bool) -> dict | None:
    proc = subprocess.run(["oras", "manifest", "fetch", *_http(plain_http), ref],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def remote_config_digest(ref: str, plain_http: bool) -> str | None:
    """The config digest of an image manifest in a registry (= the local image ID), or None."""
    manifest = _manifest(ref, plain_http)
    return manifest.get("config", {}).get("digest") if manifest else None


def remote_digest(ref: str, plain_http: bool) -> str:
    return _tool(["oras", "resolve", *_http(plain_http), ref], f"resolving {ref}").strip()


def push(local_ref: str, remote_ref: str) -> str:
    """Push a local image under a remote name; returns the manifest digest. The registry makes
    the tag point at the manifest only once every blob is in: a killed push leaves no tag."""
    repository, _, tag = remote_ref.rpartition(":")
    client().images.get(local_ref).tag(repository, tag)
    digest = None
    for event in client().images.push(repository, tag, stream=True, decode=True):
        if "error" in event:
            raise EngineError(f"push of {remote_ref} failed: {event['error']}")
        digest = (event.get("aux") or {}).get("Digest", digest)
    if digest is None:
        raise EngineError(f"push of {remote_ref} reported no digest")
    return str(digest)


def create_index(tags: list[str], members: list[str], annotations: dict[str, str], plain_http: bool) -> str:
    """A multi-arch index of pushed images under each of `tags` (one repository); returns its
    digest. buildx copies the members into the index's repository and fills in platforms; the
    index is then re-pushed as an OCI index carrying `annotations` (a Docker list has none)."""
    # buildx pushes each --tag in parallel, and a registry keeping tags on a filesystem (its link
    # files are rewritten in place) answers a read that races such a write with 500 or 400: 11
    # of 300 index moves failed so, none of 300 with one tag here and oras tagging the rest below,
    # one at a time (it tags in parallel past the first tag by default).
    _tool(["docker", "buildx", "imagetools", "create", "--tag", tags[0], *members], f"creating the index {tags[0]}")
    index = json.loads(_tool(["oras", "manifest", "fetch", *_http(plain_http), tags[0]], f"reading the index {tags[0]}"))
    media_type = "application/vnd.oci.image.index.v1+json"
    index.update(mediaType=media_type, annotations=annotations)
    repository = tags[0].rpartition(":")[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.json"
        path.write_text(json.dumps(index))
        target = repository + ":" + ",".join(t.rpartition(":")[2] for t in tags)
        _tool(["oras", "manifest", "push", *_http(plain_http), "--concurrency", "1", "--media-type", media_type, target, str(path)],
              f"pushing the index {tags[0]}")  # fmt: skip
    return remote_digest(tags[0], plain_http)


def _cosign_env() -> dict[str, str]:
    # The key's password comes from COSIGN_PASSWORD in the caller's environment; nothing is logged.
    return dict(os.environ, COSIGN_PASSWORD=os.environ.get("COSIGN_PASSWORD", ""))


def cosign_sign(ref: str, key: Path) -> None:
    # No transparency log is reachable here: the signature lives in the registry beside the image.
    _tool(["cosign", "sign", "--key", str(key), "--tlog-upload=false", "--allow-http-registry", "--yes", ref],
          f"signing {ref}", env=_cosign_env())  # fmt: skip


def cosign_attest(ref: str, key: Path, predicate: Path, predicate_type: str) -> None:
    _tool(["cosign", "attest", "--key", str(key), "--tlog-upload=false", "--allow-http-registry", "--yes",
           "--predicate", str(predicate), "--type", predicate_type, ref], f"attesting {ref}", env=_cosign_env())  # fmt: skip


def cosign_public_key(key: Path, dest: Path) -> Path:
    """The public half of a cosign key pair, written to `dest`."""
    dest.write_text(_tool(["cosign", "public-key", "--key", str(key)], "reading the public key", env=_cosign_env()))
    return dest


def cosign_verify(ref: str, public_key: Path) -> list[dict]:
    out = _tool(["cosign", "verify", "--key", str(public_key), "--insecure-ignore-tlog", "--allow-http-registry", ref],
                f"verifying the signature of {ref}")  # fmt: skip
    return json.loads(out)


def verified_attestation(ref: str, public_key: Path, predicate_type: str) -> dict:
    """The predicate of the newest attestation of a type, after checking its signature."""
    out = _tool(["cosign", "verify-attestation", "--key", str(public_key), "--insecure-ignore-tlog", "--allow-http-registry",
                 "--type", predicate_type, ref], f"verifying the {predicate_type} attestation of {ref}")  # fmt: skip
    statements = [json.loads(base64.b64decode(json.loads(line)["payload"])) for line in out.splitlines() if line.strip()]
    return dict(statements[-1]["predicate"])


def verified_sbom(ref: str, public_key: Path) -> dict:
    return verified_attestation(ref, public_key, "cyclonedx")


def image_labels(ref: str) -> dict[str, str]:
    require_image(ref)
    return dict(client().images.get(ref).labels or {})
