"""Stage 3: the only module that talks to Docker.

Checks that the host can build for a platform, bootstraps Debian bases without a registry,
runs `docker buildx build` with progress on the terminal and a kept log, tags the result,
and starts containers for the tests.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import io
import json
import os
import posixpath
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import docker.errors
import requests.exceptions

import docker
from manyforge.arches import ARCHES, QEMU_HANDLER, host_arch, runs_natively
from manyforge.sources import debootstrap_root
from manyforge.spec import REPO_ROOT, WORK_DIR, Spec
from manyforge.target import AnyTarget, DerivedTarget, Target, bootstrap_base_ref

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
SETUP_HINT = "run `sudo scripts/setup-host.sh` (or `invoke setup`) to install and start it"
DOCKER_API_TIMEOUT = 600  # one request of the Docker SDK to the engine (its socket timeout), in seconds
BUILD_TIMEOUT = 6 * 3600  # one buildx build: a cold emulated build of every interpreter takes hours
LOCAL_TIMEOUT = 120  # a question to the local docker CLI (buildx version, inspect)
KILL_GRACE = 10  # seconds a stopped buildx has to cancel its build before its process group is killed
# The network a build's steps use: the engine's default (a bridge: everything the host reaches
# but its loopback), or the host's own (a vendor repository or proxy served on 127.0.0.1).
BUILD_NETWORKS = ("default", "host")


class EngineError(Exception):
    pass


_P = ParamSpec("_P")
_R = TypeVar("_R")
# What the Docker SDK raises: its own errors, and those of the HTTP library under it (a refused
# connection, a read that timed out), which it passes on as they are.
DOCKER_API_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def _one_line(exc: BaseException) -> str:
    """An exception of a library as a short line, secrets scrubbed."""
    text = " ".join(scrub(str(exc)).split())
    return f"{exc.__class__.__name__}: {text[:300]}" if text else exc.__class__.__name__


def _docker_api(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A function calling the Docker engine's API ends with one EngineError line, never with a
    traceback of the SDK (an error answer, a refused connection, a request that timed out).
    Errors it expects, such as ImageNotFound, it catches itself first."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except DOCKER_API_ERRORS as exc:
            raise EngineError(f"the Docker engine ({fn.__name__}): {_one_line(exc)}") from None

    return wrapper


def client() -> docker.DockerClient:
    if shutil.which("docker") is None:
        raise EngineError(f"the docker CLI is not installed; {SETUP_HINT}")
    try:
        c = docker.from_env(timeout=DOCKER_API_TIMEOUT)
        c.ping()
    except DOCKER_API_ERRORS as exc:
        raise EngineError(f"no Docker engine answers ({exc.__class__.__name__}); {SETUP_HINT}") from None
    return c


def check_prerequisites(arch: str, needs_debootstrap: bool, host: str | None = None, local_builder: bool = True) -> None:
    """Fail early, with the fix, when something the build needs is missing. `host`: the build
    host's arch (default: this machine's); `local_builder` False: the build runs on a builder
    elsewhere (--builder), whose own emulation is its business."""
    client()
    try:
        _tool(["docker", "buildx", "version"], "docker buildx version", tool_timeout(LOCAL_TIMEOUT))
    except EngineError:
        raise EngineError(f"the docker buildx plugin is missing or does not answer; {SETUP_HINT}") from None
    try:
        host = host or host_arch()
    except ValueError as exc:  # this machine's CPU is no build host we know
        raise EngineError(str(exc)) from None
    qemu = None if runs_natively(arch, host) or not local_builder else QEMU_HANDLER[arch]
    if qemu is not None:
        handler = BINFMT_DIR / qemu
        if not handler.exists():
            raise EngineError(f"no binfmt handler for {arch} ({handler} is missing): QEMU emulation is not set up; {SETUP_HINT}")
        flags = re.search(r"flags: *(\S*)", handler.read_text())
        if flags is None or "F" not in flags.group(1):
            raise EngineError(f"binfmt handler {handler} lacks the fix-binary (F) flag that containers need; {SETUP_HINT}")
    if needs_debootstrap and shutil.which("debootstrap") is None:
        raise EngineError(f"debootstrap is not installed; {SETUP_HINT}")


@_docker_api
def image_platform(ref: str) -> str | None:
    try:
        attrs = client().images.get(ref).attrs
    except docker.errors.ImageNotFound:
        return None
    variant = attrs.get("Variant")
    return f"{attrs['Os']}/{attrs['Architecture']}" + (f"/{variant}" if variant else "")


def tarball_epoch(tarball: Path) -> int:
    """The time of a bootstrapped root's tarball: that of its first entry, the root itself
    (scripts/debootstrap-base.sh gives every entry the same time)."""
    with tarfile.open(tarball) as tar:
        first = tar.next()
    return max(0, int(first.mtime)) if first is not None else 0


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
    try:
        with tempfile.TemporaryDirectory(prefix="manyforge-base-") as tmp:
            debootstrap_root(suite, arch, Path(tmp) / "root.tar")
            shutil.copy(REPO_ROOT / "docker" / "bootstrap-base.Dockerfile", Path(tmp) / "Dockerfile")
            # The tarball is reproducible (scripts/debootstrap-base.sh); its time, as the image's
            # creation time, makes the image reproducible too: stages built on it in another job
            # find their registry cache.
            epoch = f"SOURCE_DATE_EPOCH={tarball_epoch(Path(tmp) / 'root.tar')}"
            _tool(["docker", "buildx", "build", "--platform", platform, "--build-arg", epoch, "--load", "--tag", ref, "--", tmp],
                  f"turning the {suite}/{arch} root into an image", BUILD_TIMEOUT)  # fmt: skip
    except OSError as exc:  # a full disk under the temporary directory
        raise EngineError(f"bootstrapping {suite} for {arch}: {_one_line(exc)}") from None
    print(f"==> base {ref} ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return ref


@_docker_api
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
    target: AnyTarget  # as built: with any CPython fallback the fetch stage chose


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


# A buildx builder's name (`docker buildx create --name`, `docker buildx ls`): it reaches buildx
# only as `--builder=NAME`, so it may not start with `-`; no `,`, `=` or space either.
BUILDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
BUILDER_DRIVERS = ("docker", "docker-container", "remote", "kubernetes")


@dataclass(frozen=True)
class Builder:
    """The buildx builder a build runs on. `name` None: the engine's own (default) builder."""

    name: str | None
    driver: str
    # The docker driver writes a registry cache, and sees the engine's images, only on an engine
    # whose image store is containerd's; every other driver writes caches but sees no local image.
    containerd_store: bool = False
    # A docker-driver builder is a docker context's engine: buildx takes it only as
    # `docker --context=NAME buildx ...` (it refuses --builder for a context other than the current).
    context: str | None = None

    @property
    def exports_cache(self) -> bool:
        return self.driver != "docker" or self.containerd_store

    @property
    def sees_local_images(self) -> bool:
        return self.driver == "docker"

    @property
    def argv(self) -> list[str]:
        """buildx's options that choose this builder."""
        return [f"--builder={self.name}"] if self.name and self.driver != "docker" else []

    @property
    def docker_argv(self) -> list[str]:
        """The docker CLI's options that choose it (a docker-driver builder's context)."""
        return [f"--context={self.context}"] if self.name and self.driver == "docker" and self.context else []


def builder_name(value: str | None, what: str = "--builder") -> str | None:
    """A builder name as an option gives it, validated (None: the engine's default builder)."""
    if value is None:
        return None
    if not BUILDER_NAME.fullmatch(value):
        raise EngineError(
            f"{what} {scrub(value)[:64]!r}: not a buildx builder name (ASCII letters, digits, _ . -, "
            "starting with a letter or digit, at most 63 characters); see `docker buildx ls`"
        )
    return value


def inspect_builder(name: str | None) -> Builder:
    """Ask buildx for a builder's driver (the default builder's when `name` is None)."""
    name = builder_name(name)
    what = f"docker buildx inspect {name or '(default builder)'}"
    try:
        out = _tool(["docker", "buildx", "inspect", *(["--", name] if name else [])], what, tool_timeout(LOCAL_TIMEOUT))
    except EngineError as exc:
        if name is None:
            raise
        raise EngineError(f"--builder {name}: no buildx builder of that name answers ({exc}); `docker buildx ls` lists them") from None
    fields = dict(re.findall(r"^([A-Za-z ]+):[ \t]+(\S+)", out, re.M))
    driver = fields.get("Driver", "")
    if driver not in BUILDER_DRIVERS:
        raise EngineError(f"{what}: unknown driver {driver[:40]!r}; expected one of: {', '.join(BUILDER_DRIVERS)}")
    containerd = False
    if driver == "docker":
        # The engine this builder is: the docker context named as its endpoint.
        context = fields.get("Endpoint", "default")
        if not BUILDER_NAME.fullmatch(context):
            raise EngineError(f"{what}: endpoint {context[:64]!r} is not a docker context name")
        status = _tool(["docker", f"--context={context}", "info", "--format", "{{json .DriverStatus}}"],
                       f"docker --context={context} info", tool_timeout(LOCAL_TIMEOUT))  # fmt: skip
        containerd = "io.containerd.snapshotter" in status
    return Builder(name, driver, containerd, fields.get("Endpoint") if driver == "docker" else None)


def cache_options(builder: Builder, target: AnyTarget, ref: str | None, push: bool, default_builder: bool) -> list[str]:
    """buildx options for the build of `target` on `builder` with the registry cache `ref`
    (MANYFORGE_BUILD_CACHE; one tag per image×arch×variant), written too when `push`.

    A cross-compiled target also reads the cache of its build host's image, whose stages it
    contains verbatim. A builder that cannot export a cache (the docker driver on the classic
    image store) only reads it. `default_builder`: no --builder was given, so a builder that
    can may be chosen: the engine's own when it can export, else a docker-container builder
    made on first use (CACHE_BUILDER), which cannot see a base bootstrapped into the engine."""
    args = list(builder.argv)
    if ref is None:
        return args
    if default_builder and not builder.exports_cache:
        if target.needs_local_images:
            print(f"==> {target.slug}: its base or parent is an image of the engine, which a docker-container builder "
                  "cannot see; building without the registry cache", file=sys.stderr)  # fmt: skip
            return args
        builder = Builder(CACHE_BUILDER, "docker-container")
        args = list(builder.argv)
    cache = f"type=registry,ref={ref}:{target.slug}"
    args += ["--cache-from", cache]
    if isinstance(target, Target) and target.cross_compiles:
        args += ["--cache-from", f"type=registry,ref={ref}:{target.native().slug}"]
    if push and builder.exports_cache:
        args += ["--cache-to", f"{cache},mode=max"]
    elif push:
        print(f"==> {target.slug}: builder {builder.name or 'default'} (docker driver, classic image store) "
              "cannot write a registry cache; only reading it", file=sys.stderr)  # fmt: skip
    return args


def check_builder(builder: Builder, target: AnyTarget) -> None:
    """Refuse, before anything is built, what the builder cannot build."""
    if target.needs_local_images and not builder.sees_local_images:
        raise EngineError(
            f"{target.slug}: its base (bootstrapped) or parent is an image of the local engine, which builder {builder.name} "
            f"({builder.driver} driver) cannot see; use a docker-driver builder for Debian-based and derived images"
        )


def _registry_cache(target: AnyTarget, builder_name_: str | None) -> tuple[list[str], list[str]]:
    """The docker CLI's and buildx's options of one build: the builder and the cache (see
    cache_options)."""
    ref, push = build_cache_settings()
    builder = inspect_builder(builder_name_) if builder_name_ or ref else Builder(None, "docker")
    if builder_name_:
        check_builder(builder, target)
    args = cache_options(builder, target, ref, push, default_builder=builder_name_ is None)
    if f"--builder={CACHE_BUILDER}" in args:
        try:
            _tool(["docker", "buildx", "inspect", CACHE_BUILDER], f"docker buildx inspect {CACHE_BUILDER}", tool_timeout(LOCAL_TIMEOUT))
        except EngineError:  # made on first use; --bootstrap pulls BuildKit's image
            _tool(["docker", "buildx", "create", "--name", CACHE_BUILDER, "--driver", "docker-container", "--bootstrap"],
                  "buildx create", tool_timeout(PUSH_TIMEOUT))  # fmt: skip
    return builder.docker_argv, args


@_docker_api
def build(
    target: AnyTarget, context: Path, log_dir: Path, no_cache: bool = False, stop: threading.Event | None = None,
    builder: str | None = None, network: str = "default",
) -> BuildResult:
    """Build a prepared context with buildx for the target's platform and tag it (the caller
    has run check_prerequisites). Setting `stop` ends buildx within seconds (EngineError).
    `builder`: a buildx builder's name (default: the engine's own); its result is loaded into
    the local engine, where the tests and publish find it. `network`: one of BUILD_NETWORKS."""
    if network not in BUILD_NETWORKS:
        raise EngineError(f"build network {network[:40]!r}: unknown; choose one of: {', '.join(BUILD_NETWORKS)}")
    if isinstance(target, DerivedTarget):
        tag_parent(target)
    else:
        for arch in target.bootstrap_arches:
            ensure_bootstrap_base(target.spec, target.base_name, arch)
    log = log_dir / f"{target.slug}.log"
    suffix = target.tag_suffix
    build_ref = f"{target.repository}:build{suffix}"
    docker_args, buildx_args = _registry_cache(target, builder)
    cmd = [
        "docker", *docker_args, "buildx", "build", "--platform", target.platform, "--progress", "plain", "--load",
        "--tag", build_ref, *(["--no-cache"] if no_cache else []), *(["--network", network] if network != "default" else []),
        *buildx_args, "--", str(context),
    ]  # fmt: skip
    print(f"==> building {target.slug} ({target.platform}); log: {log}", file=sys.stderr)
    started = time.monotonic()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        rc = _run_build(cmd, target, log, started, stop)
    except OSError as exc:  # the log cannot be written
        raise EngineError(f"build of {target.slug}: {_one_line(exc)}") from None
    seconds = time.monotonic() - started
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise EngineError(f"build of {target.slug} failed after {seconds:.0f}s (exit {rc}); last lines of {log}:\n{tail}")
    image = client().images.get(build_ref)
    tags = _apply_tags(image, target, suffix)
    return BuildResult(image.id, tags, seconds, log, target)


def _run_build(cmd: list[str], target: AnyTarget, log: Path, started: float, stop: threading.Event | None) -> int:
    """Run buildx, its output condensed on the terminal and kept whole in `log`: its exit status.
    buildx runs in a session of its own (it is a child of the docker CLI): a stop, the time
    limit, Ctrl-C or a SIGTERM of this process end the whole group (_stop_build)."""
    with log.open("w") as log_fh, _signals_unwind():
        proc = _start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        assert proc.stdout is not None
        progress = _Progress(started)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            while True:
                if stop is not None and stop.is_set():
                    _stop_build(proc, reader)
                    raise EngineError(f"build of {target.slug} stopped after {time.monotonic() - started:.0f}s; its log: {log}")
                if time.monotonic() - started > BUILD_TIMEOUT:
                    _stop_build(proc, reader)
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
        except BaseException:
            _stop_build(proc, reader)
            raise
        reader.join()
        return proc.wait()


def _stop_build(proc: subprocess.Popen, reader: threading.Thread) -> None:
    """End a running buildx: SIGTERM to its group first (buildx cancels its build in BuildKit),
    SIGKILL to whatever of it is left once its output has not ended within KILL_GRACE seconds."""
    if proc.returncode is None:
        _signal_group(proc, signal.SIGTERM)
        reader.join(KILL_GRACE)  # the output ends when the docker CLI and buildx have both exited
        _stop_group(proc)


def prune_build_cache(builder: str | None = None) -> None:
    """Empty BuildKit's cache (images in the engine's store, such as bootstrapped bases, stay)
    of the engine's builder, or of the builder named."""
    chosen = inspect_builder(builder) if builder else Builder(None, "docker")
    argv = ["docker", *chosen.docker_argv, "buildx", "prune", *chosen.argv, "--all", "--force"]
    _tool(argv, "buildx prune", BUILD_TIMEOUT)


def probe_build(context: Path, platform: str) -> tuple[int, str]:
    """Build a context only for what its steps print (nothing is kept): exit status and output."""
    proc = _run(["docker", "buildx", "build", "--platform", platform, "--progress", "plain", "--no-cache", "--", str(context)],
                f"probe build of {context}", BUILD_TIMEOUT)  # fmt: skip
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def export_stage(target: Target, context: Path, stage: str, dest: Path, log_dir: Path) -> float:
    """Build one stage of a prepared context and write its files into `dest` (replaced): no
    image is kept. The seconds it took."""
    log = log_dir / f"{target.slug}-{stage}.log"
    cmd = [
        "docker", "buildx", "build", "--platform", target.platform, "--progress", "plain", "--target", stage,
        "--output", f"type=local,dest={dest}", "--", str(context),
    ]  # fmt: skip
    print(f"==> building stage {stage} of {target.slug} ({target.platform}); log: {log}", file=sys.stderr)
    started = time.monotonic()
    try:
        if dest.exists():
            shutil.rmtree(dest)
        log_dir.mkdir(parents=True, exist_ok=True)
        rc = _run_build(cmd, target, log, started, None)
    except OSError as exc:
        raise EngineError(f"build of {target.slug} ({stage}): {_one_line(exc)}") from None
    seconds = time.monotonic() - started
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise EngineError(f"build of {target.slug} ({stage}) failed after {seconds:.0f}s (exit {rc}); last lines of {log}:\n{tail}")
    return seconds


def qemu_version(arch: str) -> str:
    """The version line of the QEMU that runs `arch`'s programs here (its binfmt handler's
    interpreter), for the provenance of what was found by running them."""
    if runs_natively(arch, host_arch()):
        return "none: the host runs it natively"
    handler = QEMU_HANDLER[arch]
    try:
        fields = dict(line.split(" ", 1) for line in (BINFMT_DIR / handler).read_text().splitlines() if " " in line)
        # (a -binfmt-P name links to the emulator, which answers --version only by its own name)
        interpreter = os.path.realpath(fields["interpreter"].strip())
    except (OSError, KeyError) as exc:
        raise EngineError(f"no binfmt handler for {arch}: {_one_line(exc)}; {SETUP_HINT}") from None
    out = _tool([interpreter, "--version"], f"{interpreter} --version", LOCAL_TIMEOUT)
    return str(out).splitlines()[0].strip()


def _apply_tags(image, target: AnyTarget, suffix: str) -> list[str]:
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


# --- parents of derived images ---------------------------------------------------------------


@_docker_api
def ensure_parent(ref: str, arch: str) -> str:
    """The image ID of a derived image's parent: a local image as it is, an image pinned by
    digest pulled first (for the arch's platform) when the engine does not have it yet."""
    if not local_image_exists(ref):
        if "@sha256:" not in ref:
            raise EngineError(f"parent {ref} is not an image of this engine; build it first (`invoke build`), or name one pinned by digest")
        print(f"==> pulling parent {ref} ({ARCHES[arch].platform})", file=sys.stderr)
        _tool(["docker", "pull", "--platform", ARCHES[arch].platform, "--", ref], f"docker pull {ref}", tool_timeout(PUSH_TIMEOUT))
    return image_id(ref)


def probe_parent(ref: str, arch: str, probe: str) -> str:
    """Run the parent's probe (parent.PROBE) by /bin/sh in a throw-away container of it."""
    return run_in_image(ref, arch, ["/bin/sh", "-c", probe])


@_docker_api
def tag_parent(target: DerivedTarget) -> None:
    """Give the parent, found by the image ID the lock pins, the local name its Dockerfile reads
    it by; a parent rebuilt or removed since it was resolved is an error, never another image."""
    try:
        image = client().images.get(target.parent.image_id)
    except docker.errors.ImageNotFound:
        raise EngineError(
            f"{target.slug}: its parent {target.parent.ref} ({target.parent.image_id}) is no longer an image of this "
            "engine; resolve again (`invoke resolve`) to derive from the parent as it is now"
        ) from None
    name, _, tag = target.parent_tag.rpartition(":")
    # One name per derived image×arch: an earlier parent's is dropped (only the name: the image
    # stays while anything else names or uses it), so no parent is kept alive by it alone.
    for other in client().images.list(name=name):
        for old in other.tags:
            if old.startswith(f"{name}:") and old != target.parent_tag:
                client().images.remove(old, noprune=True)
    image.tag(name, tag)


# --- containers, for the tests ------------------------------------------------------------------


@_docker_api
def image_size(ref: str) -> int:
    return int(client().images.get(ref).attrs["Size"])


@_docker_api
def start_container(ref: str, arch: str, mounts: dict[str, str] | None = None):
    """Start a long-lived container of an image (for testinfra); the caller removes it."""
    require_image(ref)
    volumes = {host: {"bind": inside, "mode": "ro"} for host, inside in (mounts or {}).items()}
    return client().containers.run(
        ref, ["sleep", "infinity"], detach=True, platform=ARCHES[arch].platform, volumes=volumes, network_mode="none"
    )


@_docker_api
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


@_docker_api
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
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
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


@_docker_api
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


def _tool_env() -> dict[str, str]:
    """The environment of every tool: this process's, without the signing key's password, which
    only cosign gets (_cosign_env), and only where it signs."""
    return {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}


def _start(args: list[str], env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Start a tool in a session of its own, so that _stop_group ends it with all its children
    (`docker buildx` is a child of the docker CLI). A session of its own also means that a Ctrl-C
    or a SIGTERM of the terminal's process group no longer reaches it: whoever starts a tool must
    end its group on any exception (and hold _signals_unwind, so that SIGTERM is one)."""
    try:
        return subprocess.Popen(args, env=_tool_env() if env is None else env, start_new_session=True, **popen)
    except OSError as exc:
        raise EngineError(f"cannot start {args[0]}: {_one_line(exc)}") from None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal a tool's process group, only while the tool has not been waited for: until then its
    process ID, which is the group's, cannot have been given to another process."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _stop_group(proc: subprocess.Popen) -> None:
    """End a tool and every process of its group (SIGKILL: a child that ignores SIGTERM goes
    too) and wait for the tool."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While it is held, SIGTERM and SIGHUP end this process by an exception (SystemExit, status
    128 + the signal) instead of on the spot, so that cleanups run: the tools' groups are ended and
    the push's work files removed (a cancelled CI job sends SIGTERM). Only in the main thread, and
    only where nobody has set a handler of their own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _unwind)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            signal.signal(sig, signal.SIG_DFL)


def _unwind(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _run(args: list[str], what: str, timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a tool within `timeout` seconds, its input closed (nothing ever waits for a prompt),
    in an environment without COSIGN_PASSWORD unless `env` is given. On the time limit, Ctrl-C or
    SIGTERM its whole process group is killed."""
    if shutil.which(args[0]) is None:
        raise EngineError(f"{args[0]} is not installed; {SETUP_HINT}")
    with _signals_unwind():
        proc = _start(args, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            limit = "" if timeout == BUILD_TIMEOUT else f" (the limit is set by {TOOL_TIMEOUT_ENV})"
            raise EngineError(f"{what}: {args[0]} gave no answer within {timeout} s{limit}") from None
        finally:
            if proc.returncode is None:  # timed out or interrupted
                _stop_group(proc)
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


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
COPY_CHUNK = 1 << 20  # bytes of a layer read at a time
MAX_LINK_HOPS = 8  # links followed from one name of docker save's archive
# The push's scratch space: the saved image and its compressed layers, as large as the image.
PUSH_WORK = WORK_DIR / "push-work"


def _saved_member(members: dict[str, tarfile.TarInfo], name: str, image_id: str) -> tarfile.TarInfo:
    """The file of docker save's archive that a name of its manifest.json stands for. Docker
    before 25 writes a layer that an image holds twice only once, and the second place as a
    symbolic link to the first (`../<id>/layer.tar`). Links are followed only to other members
    of the same archive, never into the file system."""
    member = members.get(name)
    for _ in range(MAX_LINK_HOPS + 1):
        if member is None:
            raise EngineError(f"docker save of {image_id[:19]}: {name[:80]!r} names no file of its archive")
        if member.isfile():
            return member
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
        elif member.islnk():  # a hard link names its target from the archive's root
            target = posixpath.normpath(member.linkname)
        else:
            raise EngineError(f"docker save of {image_id[:19]} wrote {member.name[:80]!r}, which is not a file")
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise EngineError(f"docker save of {image_id[:19]}: {member.name[:80]!r} links outside its archive")
        member = members.get(target)
    raise EngineError(f"docker save of {image_id[:19]}: {name[:80]!r} is a chain of more than {MAX_LINK_HOPS} links")


def _chunks(src: IO[bytes], length: int, digest: Any) -> Iterator[bytes]:
    """`length` bytes of a file from where it stands, a chunk at a time, added to `digest`."""
    left = length
    while left:
        chunk = src.read(min(COPY_CHUNK, left))
        if not chunk:
            raise EngineError("docker save's archive ends inside a layer")
        digest.update(chunk)
        left -= len(chunk)
        yield chunk


def _file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


def _gzip_layer(archive: Path, member: tarfile.TarInfo, out: Path, pigz: str | None) -> tuple[str, int, str]:
    """One layer of docker save's archive compressed into `out`, as `docker push` sends it: the
    blob's digest and size, and the digest of the uncompressed tar (the config's diff_id).

    The blob is ONE gzip stream. A gzip file may hold several members in a row (RFC 1952), but
    some readers take only the first (soci-snapshotter, composefs-rs and Rust's GzDecoder did);
    pigz compresses on every core and still writes one stream (Python's zlib, without pigz, on
    one core). No name and no time in its header: the same layer gives the same blob on every
    run (with the same compressor: pigz's bytes are not zlib's)."""
    raw = hashlib.sha256()
    with archive.open("rb") as src, out.open("wb") as sink:
        src.seek(member.offset_data)
        chunks = _chunks(src, member.size, raw)
        if pigz is not None:
            _pigz(pigz, chunks, sink, out.parent)
        else:
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip stream, mtime 0, no name
            for chunk in chunks:
                sink.write(compressor.compress(chunk))
            sink.write(compressor.flush())
    packed, size = _file_digest(out)
    return packed, size, "sha256:" + raw.hexdigest()


def _pigz(pigz: str, chunks: Iterator[bytes], sink: IO[bytes], work: Path) -> None:
    """Feed `chunks` through pigz into `sink`, within the push's time limit: past it, or on any
    exception (Ctrl-C, SIGTERM), pigz's process group is killed."""
    timeout = tool_timeout(PUSH_TIMEOUT)
    too_long = f"compressing a layer: pigz gave no answer within {timeout} s (the limit is set by {TOOL_TIMEOUT_ENV})"
    expired = threading.Event()
    with tempfile.TemporaryFile(dir=work) as errors:
        proc = _start([pigz, "--no-name", "--no-time", f"-{GZIP_LEVEL}", "--stdout"], stdin=subprocess.PIPE, stdout=sink, stderr=errors)
        assert proc.stdin is not None

        def expire() -> None:
            expired.set()
            _signal_group(proc, signal.SIGKILL)

        timer = threading.Timer(timeout, expire)
        timer.start()
        started = time.monotonic()
        try:
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:  # pigz ended early: its status says why
                pass
            timer.cancel()
            timer.join()  # from here on only this thread signals or waits for pigz
            rc = proc.wait(max(0.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            raise EngineError(too_long) from None
        finally:
            timer.cancel()
            timer.join()
            if proc.returncode is None:
                _stop_group(proc)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        if expired.is_set():
            raise EngineError(too_long)
        if rc != 0:
            errors.seek(0)
            raise EngineError(f"compressing a layer: pigz failed (exit {rc}): {_detail(errors.read(4096))}")


def _oci_layout(image_id: str, work: Path) -> tuple[Path, str]:
    """The local image as an OCI image layout (a Docker v2 manifest, gzip layers) in `work`: its
    directory and the manifest's digest. The config's bytes are the image's own (their digest is
    its ID)."""
    archive = work / "image.tar"
    _docker_save(image_id, archive)
    try:
        with tarfile.open(archive) as tar:
            members = {m.name: m for m in tar.getmembers()}
    except tarfile.TarError as exc:
        raise EngineError(f"docker save of {image_id[:19]} wrote no readable archive ({_one_line(exc)})") from None
    if "manifest.json" not in members:
        raise EngineError(f"docker save of {image_id[:19]} wrote no manifest.json")
    saved = _json(_read_member(archive, members["manifest.json"], MAX_MANIFEST_BYTES), "docker save's manifest.json")
    if not (isinstance(saved, list) and len(saved) == 1 and isinstance(saved[0], dict)):
        raise EngineError(f"docker save of {image_id[:19]} wrote {len(saved) if isinstance(saved, list) else 'no'} images, not one")
    config_name, layer_names = saved[0].get("Config"), saved[0].get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
        raise EngineError(f"docker save of {image_id[:19]}: its manifest.json names no config and layers")
    config_bytes = _read_member(archive, _saved_member(members, config_name, image_id), MAX_MANIFEST_BYTES)
    if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != image_id:
        raise EngineError(f"docker save of {image_id[:19]} gave the config of another image")
    config = _json(config_bytes, f"the config of {image_id[:19]}")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    pigz = shutil.which("pigz")
    if pigz is None and layer_names:
        print("==> pigz is not installed (scripts/setup-host.sh installs it): compressing on one core with Python's gzip", file=sys.stderr)
    compressed: dict[str, tuple[dict, str]] = {}  # by archive member: a layer held twice is compressed once
    layers = []
    for name in layer_names:
        member = _saved_member(members, name, image_id)
        if member.name not in compressed:
            partial = work / "layer.gz"
            packed, size, diff_id = _gzip_layer(archive, member, partial, pigz)
            partial.replace(blobs / packed.split(":", 1)[1])
            compressed[member.name] = ({"mediaType": DOCKER_LAYER, "size": size, "digest": packed}, diff_id)
        layers.append(compressed[member.name])
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


def _empty(directory: Path) -> None:
    """Remove everything in a directory (links themselves, never what they point to)."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


@contextlib.contextmanager
def _push_work() -> Iterator[Path]:
    """PUSH_WORK (build/push-work), empty: what a killed push left there is removed when the next
    push starts, and what this one writes when it ends, however it ends (a SIGTERM too: see
    _signals_unwind). A lock on the directory makes a second push of the same checkout wait."""
    try:
        PUSH_WORK.mkdir(parents=True, exist_ok=True)
        fd = os.open(PUSH_WORK, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise EngineError(f"the push's work directory {PUSH_WORK}: {_one_line(exc)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"==> waiting for another push of this checkout to finish (it works in {PUSH_WORK})", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _empty(PUSH_WORK)
        except OSError as exc:
            raise EngineError(f"emptying the push's work directory {PUSH_WORK}: {_one_line(exc)}") from None
        try:
            yield PUSH_WORK
        finally:
            with contextlib.suppress(OSError):  # the next push tries again
                _empty(PUSH_WORK)
    finally:
        os.close(fd)


def push_image(image_id: str, repository: str, plain_http: bool) -> str:
    """Push a local image into a repository by digest only, under no tag; returns the manifest's
    digest. Nothing a user pulls by tag can name it until `tag` is called (after signing): a push
    that fails or is killed leaves at most untagged blobs, which the next push reuses. Its work
    files (as large as the image) are in build/push-work, and gone when it ends (_push_work)."""
    if not DIGEST.fullmatch(image_id):
        raise EngineError(f"not an image ID: {image_id[:80]!r}")
    require_image(image_id)
    _check_ref(repository)
    with _signals_unwind(), _push_work() as work:
        try:
            layout, digest = _oci_layout(image_id, work)
        except OSError as exc:  # a full disk, a file that went away
            raise EngineError(f"pushing image {image_id[:19]}: writing its layout in {work}: {_one_line(exc)}") from None
        from_layout = "--from-oci-layout"
        to_http = ["--to-plain-http"] if plain_http else []
        _tool(["oras", "cp", from_layout, *to_http, "--", f"{layout}@{digest}", repository],
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
        media_type = _manifest_media_type(manifest, config)
        if media_type is None:
            raise EngineError(f"creating the index {repository}: {member} is neither a Docker nor an OCI image manifest")
        if member_repo != repository:
            http = ["--from-plain-http", "--to-plain-http"] if plain_http else []
            _tool(["oras", "cp", *http, "--", member, repository], f"copying {member} into {repository}", tool_timeout(PUSH_TIMEOUT))
        manifests.append({"mediaType": media_type, "digest": digest, "size": len(raw), "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests, "annotations": annotations}, indent=1).encode()
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    try:
        with tempfile.TemporaryDirectory(prefix="manyforge-index-") as tmp:
            path = Path(tmp) / "index.json"
            path.write_bytes(index)
            _tool(["oras", "manifest", "push", *_http(plain_http), "--media-type", OCI_INDEX, "--", f"{repository}@{digest}", str(path)],
                  f"pushing the index {repository}@{digest}", tool_timeout(PUSH_TIMEOUT))  # fmt: skip
    except OSError as exc:
        raise EngineError(f"pushing the index {repository}@{digest}: writing it to a temporary file: {_one_line(exc)}") from None
    return digest


# The manifest type that goes with a config type: a member's manifest may omit its mediaType.
MANIFEST_OF_CONFIG = {DOCKER_CONFIG: DOCKER_MANIFEST, OCI_CONFIG: OCI_MANIFEST}


def _manifest_media_type(manifest: dict, config: Any) -> str | None:
    """An image manifest's media type: its own, or (a field it may omit) the one that goes with
    its config's; None if it is not an image manifest of Docker's or the OCI's."""
    media_type = manifest.get("mediaType")
    if media_type is None:
        config_type = config.get("mediaType") if isinstance(config, dict) else None
        media_type = MANIFEST_OF_CONFIG.get(config_type) if isinstance(config_type, str) else None
    return media_type if isinstance(media_type, str) and media_type in MANIFEST_OF_CONFIG.values() else None


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


def loopback_registry(ref: str) -> bool:
    """Whether a reference's registry is a loopback one (127.0.0.1 or localhost, any port): the
    only registries taken to speak plain HTTP, as publish's --registry takes them."""
    return ref.split("/", 1)[0].split(":", 1)[0] in ("127.0.0.1", "localhost")


def _cosign_argv(command: str, options: list[str], ref: str, plain_http: bool | None = None) -> list[str]:
    """cosign's command line for a registry reference. --allow-http-registry only for a registry
    that speaks plain HTTP (`plain_http`; None: a loopback one): with it, cosign's registry library
    falls back to plain HTTP when HTTPS fails, which would let an attacker on the way downgrade a
    remote registry's connection."""
    http = loopback_registry(ref) if plain_http is None else plain_http
    return ["cosign", command, *options, *(["--allow-http-registry"] if http else []), "--", ref]


def cosign_sign(ref: str, key: Path, *, plain_http: bool | None = None) -> None:
    # No transparency log is reachable here: the signature lives in the registry beside the image.
    _tool(_cosign_argv("sign", [f"--key={key.resolve()}", "--tlog-upload=false", "--yes"], _pinned(ref), plain_http),
          f"signing {ref}", tool_timeout(SIGN_TIMEOUT), env=_cosign_env())  # fmt: skip


def cosign_attest(ref: str, key: Path, predicate: Path, predicate_type: str, *, plain_http: bool | None = None) -> None:
    options = [f"--key={key.resolve()}", "--tlog-upload=false", "--yes", f"--predicate={predicate.resolve()}", f"--type={predicate_type}"]
    _tool(_cosign_argv("attest", options, _pinned(ref), plain_http), f"attesting {ref}", tool_timeout(SIGN_TIMEOUT), env=_cosign_env())


def cosign_verify(ref: str, public_key: Path, *, plain_http: bool | None = None) -> list[dict]:
    out = _tool(_cosign_argv("verify", [f"--key={public_key.resolve()}", "--insecure-ignore-tlog"], _check_ref(ref), plain_http),
                f"verifying the signature of {ref}", tool_timeout(SIGN_TIMEOUT))  # fmt: skip
    verified = _json(out, f"cosign's verification of {ref}")
    if not isinstance(verified, list) or not all(isinstance(v, dict) for v in verified):
        raise EngineError(f"verifying the signature of {ref}: cosign's answer is not a list of objects")
    return verified


def verified_attestation(ref: str, public_key: Path, predicate_type: str, *, plain_http: bool | None = None) -> dict:
    """The predicate of the newest attestation of a type, after checking its signature."""
    what = f"verifying the {predicate_type} attestation of {ref}"
    options = [f"--key={public_key.resolve()}", "--insecure-ignore-tlog", f"--type={predicate_type}"]
    out = _tool(_cosign_argv("verify-attestation", options, _check_ref(ref), plain_http), what, tool_timeout(SIGN_TIMEOUT))
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


def verified_sbom(ref: str, public_key: Path, *, plain_http: bool | None = None) -> dict:
    return verified_attestation(ref, public_key, "cyclonedx", plain_http=plain_http)


def signed_with(ref: str, public_key: Path, predicate_type: str, *, plain_http: bool | None = None) -> bool:
    """Whether a pushed manifest carries a signature and an attestation of a type that the key
    verifies (a rerun does not sign again what an interrupted run signed)."""
    try:
        cosign_verify(ref, public_key, plain_http=plain_http)
        verified_attestation(ref, public_key, predicate_type, plain_http=plain_http)
    except EngineError:
        return False
    return True


@_docker_api
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
    except DOCKER_API_ERRORS as exc:
        raise EngineError(f"reading {path} from image {image_id[:19]}: {_one_line(exc)}") from None
    finally:
        container.remove(force=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
            member = tar.next()
            if member is None or not member.isfile() or member.size > limit:
                raise EngineError(f"{path} in image {image_id[:19]} is not a regular file of at most {limit} bytes")
            fh = tar.extractfile(member)
            assert fh is not None
            return fh.read()
    except (tarfile.TarError, OSError) as exc:  # the engine's answer is no archive, or a cut one
        raise EngineError(f"reading {path} from image {image_id[:19]}: the engine's archive of it is unreadable ({_one_line(exc)})") from None


@_docker_api
def image_labels(ref: str) -> dict[str, str]:
    require_image(ref)
    return dict(client().images.get(ref).labels or {})
