"""Stage 3: the only module that talks to Docker.

Checks that the host can build for a platform, bootstraps Debian bases without a registry,
runs `docker buildx build` with progress on the terminal and a kept log, tags the result,
and starts containers for the tests.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import io
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

import docker
from manyforge.arches import ARCHES
from manyforge.render import Target, bootstrap_base_ref
from manyforge.sources import debootstrap_root
from manyforge.spec import REPO_ROOT, Spec

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
SETUP_HINT = "run `sudo scripts/setup-host.sh` (or `invoke setup`) to install and start it"
DOCKER_API_TIMEOUT = 600  # one request of the Docker SDK to the engine (its socket timeout), in seconds
BUILD_TIMEOUT = 6 * 3600  # one buildx build: a cold emulated build of every interpreter takes hours
LOCAL_TIMEOUT = 120  # a question to the local docker CLI (buildx version, inspect)


class EngineError(Exception):
    pass


def client() -> docker.DockerClient:
    if shutil.which("docker") is None:
        raise EngineError(f"the docker CLI is not installed; {SETUP_HINT}")
    try:
        c = docker.from_env(timeout=DOCKER_API_TIMEOUT)
        c.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"no Docker engine answers ({exc.__class__.__name__}); {SETUP_HINT}") from None
    return c


def check_prerequisites(arch: str, needs_debootstrap: bool) -> None:
    """Fail early, with the fix, when something the build needs is missing."""
    client()
    try:
        _tool(["docker", "buildx", "version"], "docker buildx version", tool_timeout(LOCAL_TIMEOUT))
    except EngineError:
        raise EngineError(f"the docker buildx plugin is missing or does not answer; {SETUP_HINT}") from None
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
        _tool(["docker", "buildx", "build", "--platform", platform, "--load", "--tag", ref, "--", tmp],
              f"turning the {suite}/{arch} root into an image", BUILD_TIMEOUT)  # fmt: skip
    print(f"==> base {ref} ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return ref


def next_tag(repository: str, today: dt.date | None = None) -> str:
    """`YYYY.MM.DD-N`: N counts the builds of the day that produced a new image."""
    day = (today or dt.date.today()).strftime("%Y.%m.%d")
    numbers = []
    for image in client().images.list(name=repository):
        for tag in image.tags:
            m = re.fullmatch(rf"{re.escape(repository)}:{re.escape(day)}-([0-9]+)", tag)
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
# MANYFORGE_BUILD_CACHE: a repository in Docker's reference grammar, ASCII, without tag or digest
# (the engine adds one tag per target). It lands inside buildx's `type=registry,ref=...` CSV:
# a `,` or `=` would add options of its own, so nothing outside this grammar is accepted.
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
CACHE_REPOSITORY = re.compile(
    rf"(?:(?P<host>{_HOST_PART}(?:\.{_HOST_PART})*)(?::(?P<port>[0-9]{{1,5}}))?/)?{_PATH_PART}(?:/{_PATH_PART})*"
)
CACHE_PUSH_VALUES = {"1": True, "true": True, "0": False, "false": False, "": False}


def build_cache_settings() -> tuple[str | None, bool]:
    """MANYFORGE_BUILD_CACHE (the cache's repository, or None) and MANYFORGE_BUILD_CACHE_PUSH
    (1/true: also write it; 0/false/unset: only read it), validated."""
    ref = os.environ.get("MANYFORGE_BUILD_CACHE") or None
    push_value = os.environ.get("MANYFORGE_BUILD_CACHE_PUSH", "")
    if push_value not in CACHE_PUSH_VALUES:
        raise EngineError(f"MANYFORGE_BUILD_CACHE_PUSH={push_value[:40]!r}: expected 1 (also write the cache) or 0 (only read it)")
    if ref is not None:
        m = CACHE_REPOSITORY.fullmatch(ref)
        port = m.group("port") if m else None
        if m is None or len(ref) > 200 or (port is not None and not 1 <= int(port) <= 65535):
            raise EngineError(
                f"MANYFORGE_BUILD_CACHE={ref[:100]!r}: expected a registry repository such as ghcr.io/org/cache "
                "(ASCII letters, digits, . _ - and /, an optional :PORT of 1 to 65535; no tag, no , or =)"
            )
    return ref, CACHE_PUSH_VALUES[push_value]


def _registry_cache(target: Target) -> list[str]:
    """buildx options for a registry build cache: MANYFORGE_BUILD_CACHE=<registry>/<repository>
    reads it (one tag per image×arch×variant), MANYFORGE_BUILD_CACHE_PUSH=1 also writes it.
    Registry caches need a docker-container builder, which is made on first use; that builder
    cannot see the engine's local images, so images on a bootstrapped base build without it."""
    ref, push = build_cache_settings()
    if ref is None:
        return []
    if target.base.debootstrap:
        print(f"==> {target.slug}: its base is bootstrapped here; building without the registry cache", file=sys.stderr)
        return []
    try:
        _tool(["docker", "buildx", "inspect", CACHE_BUILDER], f"docker buildx inspect {CACHE_BUILDER}", tool_timeout(LOCAL_TIMEOUT))
    except EngineError:  # made on first use; --bootstrap pulls BuildKit's image
        _tool(["docker", "buildx", "create", "--name", CACHE_BUILDER, "--driver", "docker-container", "--bootstrap"],
              "buildx create", tool_timeout(PUSH_TIMEOUT))  # fmt: skip
    cache = f"type=registry,ref={ref}:{target.slug}"
    args = ["--builder", CACHE_BUILDER, "--cache-from", cache]
    if target.cross_compiles:  # its native_* stages are the native image's: read that cache too
        args += ["--cache-from", f"type=registry,ref={ref}:{target.native().slug}"]
    if push:
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
        "--tag", build_ref, *(["--no-cache"] if no_cache else []), *_registry_cache(target), "--", str(context),
    ]  # fmt: skip
    print(f"==> building {target.slug} ({target.platform}); log: {log}", file=sys.stderr)
    started = time.monotonic()
    with log.open("w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
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
            if time.monotonic() - started > BUILD_TIMEOUT:
                proc.terminate()
                proc.wait()
                raise EngineError(f"build of {target.slug}: docker buildx did not finish within {BUILD_TIMEOUT} s; its log: {log}")
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
    _tool(["docker", "buildx", "prune", "--all", "--force"], "buildx prune", BUILD_TIMEOUT)


def probe_build(context: Path, platform: str) -> tuple[int, str]:
    """Build a context only for what its steps print (nothing is kept): exit status and output."""
    proc = _run(["docker", "buildx", "build", "--platform", platform, "--progress", "plain", "--no-cache", "--", str(context)],
                f"probe build of {context}", BUILD_TIMEOUT)  # fmt: skip
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def _apply_tags(image, target: Target, suffix: str) -> list[str]:
    repo = target.repository
    existing = [t for t in image.tags if re.fullmatch(rf"{re.escape(repo)}:[0-9]{{4}}\.[0-9]{{2}}\.[0-9]{{2}}-[0-9]+{re.escape(suffix)}", t)]
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
        m = re.match(r"#([0-9]+) (.*)", line.rstrip())
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

# How long one call of a tool may take, per kind of call (seconds). A registry that accepts a
# connection and never answers must end a publish, a release-tag or a changelog with an error,
# never hang it. MANYFORGE_TOOL_TIMEOUT (whole seconds) replaces every limit but the build's: a
# test against a stalling registry sets a few seconds.
METADATA_TIMEOUT = 120  # a tag list, a manifest, a tag, a key: one small request or a few
PUSH_TIMEOUT = 1800  # saving an image (a GB and more) and pushing or copying its blobs
SIGN_TIMEOUT = 300  # cosign sign, attest, verify: a few small requests each, with cosign's retries
TOOL_TIMEOUT_ENV = "MANYFORGE_TOOL_TIMEOUT"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what registries accept for a manifest (distribution's limit)
MAX_JSON_DEPTH = 64  # manifests, configs and cosign's output are a few levels deep
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# A remote reference as the publish stage makes them: host[:port]/path[:tag|@digest], ASCII.
REMOTE_REF = re.compile(
    r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})?"
)
# Names of environment variables whose values never reach a message (cosign's key password,
# registry tokens and passwords a CI job holds while it publishes).
SECRET_NAMES = re.compile(r"PASSWORD|PASSPHRASE|TOKEN|SECRET|CREDENTIAL|AUTH", re.IGNORECASE)


def image_id(ref: str) -> str:
    """The local image's ID: its config digest, which a registry keeps as the manifest's config."""
    require_image(ref)
    found = str(client().images.get(ref).id)
    if not DIGEST.fullmatch(found):
        raise EngineError(f"the engine gave {ref} the ID {found[:80]!r}, not a sha256 digest")
    return found


def tool_timeout(default: int) -> int:
    """`default`, unless MANYFORGE_TOOL_TIMEOUT gives another limit (1 to 86400 seconds)."""
    value = os.environ.get(TOOL_TIMEOUT_ENV)
    if value is None or value == "":
        return default
    if not re.fullmatch(r"[0-9]{1,5}", value) or not 1 <= int(value) <= 86400:
        raise EngineError(f"{TOOL_TIMEOUT_ENV}={value[:40]!r}: expected whole seconds, 1 to 86400")
    return int(value)


def scrub(text: str) -> str:
    """Tool output fit for a message: secrets of the environment replaced, control characters
    (a hostile registry's error text reaches the terminal) shown as `?`."""
    # Any value of COSIGN_PASSWORD, however short; other secrets from 6 characters on (a flag such
    # as TOKEN_ENABLED=1 would otherwise blank every digit of a message).
    secrets = {v for k, v in os.environ.items() if (k == "COSIGN_PASSWORD" and v) or (SECRET_NAMES.search(k) and len(v) >= 6)}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "?" for ch in text)


def _detail(proc_output: bytes | str) -> str:
    """A tool's complaint on one line: its distinct non-empty lines, last ones first kept."""
    text = scrub(proc_output.decode(errors="replace") if isinstance(proc_output, bytes) else proc_output)
    lines = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    return "; ".join(lines)[-600:] or "no message"


def _check_ref(ref: str) -> str:
    """Every registry reference a tool gets was built from validated parts: check it again."""
    if not REMOTE_REF.fullmatch(ref):
        raise EngineError(f"not a registry reference: {scrub(ref[:120])!r}")
    return ref


def _run(args: list[str], what: str, timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a tool within `timeout` seconds, its input closed (nothing ever waits for a prompt)."""
    if shutil.which(args[0]) is None:
        raise EngineError(f"{args[0]} is not installed; {SETUP_HINT}")
    try:
        return subprocess.run(args, capture_output=True, check=False, env=env, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        limit = "" if timeout == BUILD_TIMEOUT else f" (the limit is set by {TOOL_TIMEOUT_ENV})"
        raise EngineError(f"{what}: {args[0]} gave no answer within {timeout} s{limit}") from None


def _tool(args: list[str], what: str, timeout: int, env: dict[str, str] | None = None, binary: bool = False) -> Any:
    """Run a registry or signing tool within `timeout` seconds and return its standard output
    (bytes if `binary`). On failure one line naming what it did: the tool's own words with
    secrets scrubbed, never the environment (which may hold the signing key's password)."""
    proc = _run(args, what, timeout, env)
    if proc.returncode != 0:
        raise EngineError(f"{what}: {args[0]} failed (exit {proc.returncode}): {_detail(proc.stderr or proc.stdout)}")
    return proc.stdout if binary else proc.stdout.decode(errors="replace")


def _json(data: bytes | str, what: str) -> Any:
    """JSON a tool or a registry gave, parsed defensively: bounded in size and depth, no NaN."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise EngineError(f"{what}: {len(data)} bytes of JSON, more than the {MAX_MANIFEST_BYTES} allowed")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(data, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise EngineError(f"{what}: not valid JSON ({scrub(str(exc))[:200]})") from None

    def depth(v: Any, level: int = 0) -> None:
        if level > MAX_JSON_DEPTH:
            raise EngineError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        for child in v.values() if isinstance(v, dict) else v if isinstance(v, list) else ():
            depth(child, level + 1)

    depth(value)
    return value


def _http(plain_http: bool) -> list[str]:
    """oras's flag (after its subcommand) for registries that speak plain HTTP."""
    return ["--plain-http"] if plain_http else []


def _not_found(stderr: bytes) -> bool:
    text = stderr.decode(errors="replace").lower()
    return any(s in text for s in (": not found", "name unknown", "manifest unknown", "404 not found"))


def registry_tags(repository: str, plain_http: bool) -> list[str]:
    """Tags of a repository in a registry (none if the repository does not exist yet)."""
    what = f"listing the tags of {repository}"
    proc = _run(["oras", "repo", "tags", *_http(plain_http), "--", _check_ref(repository)], what, tool_timeout(METADATA_TIMEOUT))
    if proc.returncode != 0:
        if _not_found(proc.stderr):
            return []
        raise EngineError(f"{what}: oras failed (exit {proc.returncode}): {_detail(proc.stderr)}")
    return proc.stdout.decode(errors="replace").split()


def _manifest(ref: str, plain_http: bool) -> tuple[bytes, dict] | None:
    """A manifest's bytes and content; None if the registry has no such tag or digest."""
    what = f"reading the manifest of {ref}"
    proc = _run(["oras", "manifest", "fetch", *_http(plain_http), "--", _check_ref(ref)], what, tool_timeout(METADATA_TIMEOUT))
    if proc.returncode != 0:
        if _not_found(proc.stderr):
            return None
        raise EngineError(f"{what}: oras failed (exit {proc.returncode}): {_detail(proc.stderr)}")
    manifest = _json(proc.stdout, f"the manifest of {ref}")
    if not isinstance(manifest, dict):
        raise EngineError(f"the manifest of {ref}: not a JSON object")
    return proc.stdout, manifest


def remote_config_digest(ref: str, plain_http: bool) -> str | None:
    """The config digest of an image manifest in a registry (= the local image ID), or None."""
    found = _manifest(ref, plain_http)
    if found is None:
        return None
    config = found[1].get("config")
    digest = config.get("digest") if isinstance(config, dict) else None
    return digest if isinstance(digest, str) and DIGEST.fullmatch(digest) else None


def remote_digest(ref: str, plain_http: bool) -> str:
    out = _tool(["oras", "resolve", *_http(plain_http), "--", _check_ref(ref)], f"resolving {ref}", tool_timeout(METADATA_TIMEOUT)).strip()
    if not DIGEST.fullmatch(out):
        raise EngineError(f"resolving {ref}: oras answered {scrub(out[:80])!r}, not a digest")
    return out


def _docker_save(image_id: str, archive: Path) -> None:
    _tool(["docker", "save", "--output", str(archive), "--", image_id], f"saving image {image_id[:19]}", tool_timeout(PUSH_TIMEOUT))


def _read_member(archive: Path, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isfile() or member.size > limit:
        raise EngineError(f"docker save wrote {member.name[:80]!r}: not a file of at most {limit} bytes")
    with archive.open("rb") as fh:
        fh.seek(member.offset_data)
        return fh.read(member.size)


GZIP_LEVEL = 6  # docker push's own level: users pull what is pushed many times over
GZIP_MEMBER = 32 << 20  # bytes of a layer per gzip member: members compress in parallel


def _gzip_member(archive: Path, offset: int, length: int) -> tuple[bytes, bytes]:
    """One stretch of a saved layer and its gzip member (no name, no time: the same bytes give
    the same member on every run)."""
    with archive.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise EngineError("docker save's archive ends inside a layer")
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip stream
    return data, compressor.compress(data) + compressor.flush()


def _gzip_layer(archive: Path, member: tarfile.TarInfo, blobs: Path, pool: concurrent.futures.Executor) -> tuple[dict, str]:
    """One layer of a saved image compressed as gzip, as `docker push` sends it: its descriptor and
    the digest of the uncompressed tar (the config's diff_id). The layer is compressed in
    stretches on every core, each a gzip member of its own; a gzip file may hold several members
    in a row (RFC 1952), and Go's reader in the engines and registries reads them all."""
    if not member.isfile():
        raise EngineError(f"docker save wrote layer {member.name[:80]!r} that is not a file")
    raw, packed = hashlib.sha256(), hashlib.sha256()
    size = 0
    stretches = [(member.offset_data + start, min(GZIP_MEMBER, member.size - start)) for start in range(0, member.size, GZIP_MEMBER)]
    with tempfile.NamedTemporaryFile(dir=blobs, delete=False) as out:
        for data, gz in pool.map(lambda stretch: _gzip_member(archive, *stretch), stretches or [(member.offset_data, 0)]):
            raw.update(data)
            packed.update(gz)
            out.write(gz)
            size += len(gz)
    Path(out.name).replace(blobs / packed.hexdigest())
    return {"mediaType": DOCKER_LAYER, "size": size, "digest": "sha256:" + packed.hexdigest()}, "sha256:" + raw.hexdigest()


def _oci_layout(image_id: str, work: Path) -> tuple[Path, str]:
    """The local image as an OCI image layout (a Docker v2 manifest, gzip layers): its directory
    and the manifest's digest. The config's bytes are the image's own (their digest is its ID)."""
    archive = work / "image.tar"
    _docker_save(image_id, archive)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    if "manifest.json" not in members:
        raise EngineError(f"docker save of {image_id[:19]} wrote no manifest.json")
    saved = _json(_read_member(archive, members["manifest.json"], MAX_MANIFEST_BYTES), "docker save's manifest.json")
    if not (isinstance(saved, list) and len(saved) == 1 and isinstance(saved[0], dict)):
        raise EngineError(f"docker save of {image_id[:19]} wrote {len(saved) if isinstance(saved, list) else 'no'} images, not one")
    config_name, layer_names = saved[0].get("Config"), saved[0].get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list) or not all(n in members for n in [config_name, *layer_names]):
        raise EngineError(f"docker save of {image_id[:19]}: its manifest.json names files the archive lacks")
    config_bytes = _read_member(archive, members[config_name], MAX_MANIFEST_BYTES)
    if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != image_id:
        raise EngineError(f"docker save of {image_id[:19]} gave the config of another image")
    config = _json(config_bytes, f"the config of {image_id[:19]}")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # zlib runs outside the GIL
        layers = [_gzip_layer(archive, members[name], blobs, pool) for name in layer_names]
    if diff_ids != [diff_id for _, diff_id in layers]:
        raise EngineError(f"docker save of {image_id[:19]}: its layers are not the ones its config lists")
    archive.unlink()
    (blobs / image_id.split(":", 1)[1]).write_bytes(config_bytes)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config_bytes), "digest": image_id},
        "layers": [descriptor for descriptor, _ in layers],
    }, indent=3).encode()  # fmt: skip
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (blobs / digest.split(":", 1)[1]).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest, "size": len(manifest)}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout, digest


def push_image(image_id: str, repository: str, plain_http: bool) -> str:
    """Push a local image into a repository by digest only, under no tag; returns the manifest's
    digest. Nothing a user pulls by tag can name it until `tag` is called (after signing): a push
    that fails or is killed leaves at most untagged blobs, which the next push reuses."""
    if not DIGEST.fullmatch(image_id):
        raise EngineError(f"not an image ID: {image_id[:80]!r}")
    require_image(image_id)
    with tempfile.TemporaryDirectory(prefix="manyforge-push-") as tmp:
        layout, digest = _oci_layout(image_id, Path(tmp))
        from_layout = "--from-oci-layout"
        to_http = ["--to-plain-http"] if plain_http else []
        _tool(["oras", "cp", from_layout, *to_http, "--", f"{layout}@{digest}", _check_ref(repository)],
              f"pushing image {image_id[:19]} to {repository}", tool_timeout(PUSH_TIMEOUT))  # fmt: skip
    return digest


def tag(pinned: str, name: str, plain_http: bool) -> None:
    """Point a tag at a manifest already in its repository (`repository@digest`)."""
    if "@" not in pinned or not DIGEST.fullmatch(pinned.rpartition("@")[2]) or not TAG.fullmatch(name):
        raise EngineError(f"tagging {scrub(pinned[:120])!r} as {scrub(name[:130])!r}: expected repository@sha256:<digest> and a tag")
    # One tag per call: oras tags in parallel past the first, and a registry keeping tags on a
    # filesystem answers a read racing such a write with 500 (see create_index).
    _tool(["oras", "tag", *_http(plain_http), "--concurrency", "1", "--", _check_ref(pinned), name],
          f"tagging {pinned} as {name}", tool_timeout(METADATA_TIMEOUT))  # fmt: skip


def create_index(repository: str, members: list[str], annotations: dict[str, str], plain_http: bool) -> str:
    """A multi-arch OCI index of pushed images (`repository@digest` each, platforms from their
    configs), pushed into `repository` by digest under no tag; returns its digest. The members
    are copied into the index's repository by digest first. The caller signs the index, then
    tags it with `tag`, one tag at a time: a registry keeping tags on a filesystem (its link
    files are rewritten in place) answered a read racing a parallel tag write with 500 or 400
    (11 of 300 index moves failed when buildx pushed two tags at once, none of 300 one by one)."""
    _check_ref(repository)
    manifests = []
    for member in members:
        found = _manifest(member, plain_http)
        if found is None:
            raise EngineError(f"creating the index {repository}: its member {member} is not in the registry")
        raw, manifest = found
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if not member.endswith("@" + digest):
            raise EngineError(f"creating the index {repository}: {member} answered with a manifest of digest {digest}")
        config = manifest.get("config")
        config_digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(config_digest, str) or not DIGEST.fullmatch(config_digest):
            raise EngineError(f"creating the index {repository}: {member} is not an image manifest")
        member_repo = member.rpartition("@")[0]
        config_bytes = _tool(["oras", "blob", "fetch", *_http(plain_http), "--output", "-", "--", f"{member_repo}@{config_digest}"],
                             f"reading the config of {member}", tool_timeout(METADATA_TIMEOUT), binary=True)  # fmt: skip
        image_config = _json(config_bytes, f"the config of {member}")
        if not isinstance(image_config, dict) or not all(isinstance(image_config.get(k), str) for k in ("os", "architecture")):
            raise EngineError(f"creating the index {repository}: the config of {member} names no platform")
        platform = {"architecture": image_config["architecture"], "os": image_config["os"]}
        if isinstance(image_config.get("variant"), str) and image_config["variant"]:
            platform["variant"] = image_config["variant"]
        media_type = manifest.get("mediaType") if isinstance(manifest.get("mediaType"), str) else DOCKER_MANIFEST
        if member_repo != repository:
            http = ["--from-plain-http", "--to-plain-http"] if plain_http else []
            _tool(["oras", "cp", *http, "--", member, repository], f"copying {member} into {repository}", tool_timeout(PUSH_TIMEOUT))
        manifests.append({"mediaType": media_type, "digest": digest, "size": len(raw), "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests, "annotations": annotations}, indent=1).encode()
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.json"
        path.write_bytes(index)
        _tool(["oras", "manifest", "push", *_http(plain_http), "--media-type", OCI_INDEX, "--", f"{repository}@{digest}", str(path)],
              f"pushing the index {repository}@{digest}", tool_timeout(PUSH_TIMEOUT))  # fmt: skip
    return digest


def _cosign_env() -> dict[str, str]:
    # The key's password comes from COSIGN_PASSWORD in the caller's environment; nothing is logged.
    # Set even when empty: cosign would otherwise ask for it on a terminal.
    return dict(os.environ, COSIGN_PASSWORD=os.environ.get("COSIGN_PASSWORD", ""))


def _pinned(ref: str) -> str:
    """Signatures are made by digest only: a tag may move between resolving and signing."""
    if "@" not in ref or not DIGEST.fullmatch(ref.rpartition("@")[2]):
        raise EngineError(f"signing {scrub(ref[:120])!r}: only a repository@sha256:<digest> reference is signed")
    return _check_ref(ref)


def cosign_check_key(key: Path) -> str:
    """The public half of a cosign private key, which proves that the key is one and that
    COSIGN_PASSWORD opens it: checked before anything is pushed."""
    try:
        out = _tool(["cosign", "public-key", f"--key={key.resolve()}"], f"--key {key}", tool_timeout(METADATA_TIMEOUT), env=_cosign_env())
    except EngineError as exc:
        raise EngineError(f"{exc}; the key must be a cosign private key that COSIGN_PASSWORD opens") from None
    if not out.startswith("-----BEGIN PUBLIC KEY-----"):
        raise EngineError(f"--key {key}: cosign gave no public key for it")
    return out


def cosign_sign(ref: str, key: Path) -> None:
    # No transparency log is reachable here: the signature lives in the registry beside the image.
    _tool(["cosign", "sign", f"--key={key.resolve()}", "--tlog-upload=false", "--allow-http-registry", "--yes", "--", _pinned(ref)],
          f"signing {ref}", tool_timeout(SIGN_TIMEOUT), env=_cosign_env())  # fmt: skip


def cosign_attest(ref: str, key: Path, predicate: Path, predicate_type: str) -> None:
    _tool(["cosign", "attest", f"--key={key.resolve()}", "--tlog-upload=false", "--allow-http-registry", "--yes",
           f"--predicate={predicate.resolve()}", f"--type={predicate_type}", "--", _pinned(ref)],
          f"attesting {ref}", tool_timeout(SIGN_TIMEOUT), env=_cosign_env())  # fmt: skip


def cosign_public_key(key: Path, dest: Path) -> Path:
    """The public half of a cosign key pair, written to `dest`."""
    dest.write_text(cosign_check_key(key))
    return dest


def cosign_verify(ref: str, public_key: Path) -> list[dict]:
    out = _tool(["cosign", "verify", f"--key={public_key.resolve()}", "--insecure-ignore-tlog", "--allow-http-registry", "--", _check_ref(ref)],
                f"verifying the signature of {ref}", tool_timeout(SIGN_TIMEOUT))  # fmt: skip
    verified = _json(out, f"cosign's verification of {ref}")
    if not isinstance(verified, list) or not all(isinstance(v, dict) for v in verified):
        raise EngineError(f"verifying the signature of {ref}: cosign's answer is not a list of objects")
    return verified


def verified_attestation(ref: str, public_key: Path, predicate_type: str) -> dict:
    """The predicate of the newest attestation of a type, after checking its signature."""
    what = f"verifying the {predicate_type} attestation of {ref}"
    out = _tool(["cosign", "verify-attestation", f"--key={public_key.resolve()}", "--insecure-ignore-tlog", "--allow-http-registry",
                 f"--type={predicate_type}", "--", _check_ref(ref)], what, tool_timeout(SIGN_TIMEOUT))  # fmt: skip
    predicates = []
    for line in out.splitlines():
        if not line.strip():
            continue
        envelope = _json(line, what)
        payload = envelope.get("payload") if isinstance(envelope, dict) else None
        try:
            statement = _json(base64.b64decode(payload, validate=True), what) if isinstance(payload, str) else None
        except ValueError:
            statement = None
        if not isinstance(statement, dict) or not isinstance(statement.get("predicate"), dict):
            raise EngineError(f"{what}: cosign gave an attestation without a predicate")
        predicates.append(statement["predicate"])
    if not predicates:
        raise EngineError(f"{what}: cosign verified no attestation")
    return dict(predicates[-1])


def verified_sbom(ref: str, public_key: Path) -> dict:
    return verified_attestation(ref, public_key, "cyclonedx")


def signed_with(ref: str, public_key: Path, predicate_type: str) -> bool:
    """Whether a pushed manifest carries a signature and an attestation of a type that the key
    verifies (a rerun does not sign again what an interrupted run signed)."""
    try:
        cosign_verify(ref, public_key)
        verified_attestation(ref, public_key, predicate_type)
    except EngineError:
        return False
    return True


def read_image_file(image_id: str, path: str, limit: int) -> bytes:
    """A regular file of a local image, read from a container that is created but never started
    (no emulator, and images without a shell work too)."""
    require_image(image_id)
    c = client()
    try:
        container = c.containers.create(image_id, ["/manyforge-never-runs"], network_disabled=True)
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot create a container of image {image_id[:19]}: {scrub(str(exc.explanation or exc))[:300]}") from None
    try:
        stream, _ = container.get_archive(path)
        data = bytearray()
        for chunk in stream:
            data += chunk
            if len(data) > limit + 65536:
                raise EngineError(f"{path} in image {image_id[:19]} is larger than {limit} bytes")
    except docker.errors.NotFound:
        raise EngineError(f"image {image_id[:19]} has no {path}") from None
    except docker.errors.DockerException as exc:
        raise EngineError(f"reading {path} from image {image_id[:19]}: {scrub(str(exc))[:300]}") from None
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        member = tar.next()
        if member is None or not member.isfile() or member.size > limit:
            raise EngineError(f"{path} in image {image_id[:19]} is not a regular file of at most {limit} bytes")
        fh = tar.extractfile(member)
        assert fh is not None
        return fh.read()


def image_labels(ref: str) -> dict[str, str]:
    require_image(ref)
    return dict(client().images.get(ref).labels or {})
