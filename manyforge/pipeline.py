"""The stages chained: what `invoke fetch`, `invoke render` and `invoke build` run.

tasks.py only parses arguments and calls these functions; the tests call them too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from manyforge import configure_answers, contract, engine, parent, policy, publish
from manyforge.arches import ARCHES
from manyforge.render import (
    packages_checks,
    render_dockerfile,
    write_context,
    write_derived_context,
    write_derived_packages_check,
    write_packages_check,
)
from manyforge.sources import (
    Address,
    Pin,
    SourceCache,
    SourceError,
    all_pins,
    check_static_clang_listed,
    cpython_pin,
    debootstrap_root,
    fetch_frontend,
    fetch_pin,
    fetch_wheels,
    library_pins,
    static_clang_sums_pin,
)
from manyforge.spec import REPO_ROOT, WORK_DIR, Spec, SpecError, Suite, strict_json
from manyforge.target import DerivedTarget, Target, derived_target_of, resolve_target

BUILD_DIR = WORK_DIR
ORIGINS = ("auto", "upstream", "debian")
# Interpreters an image is never built without, whatever a site's origins serve: cibuildwheel's
# helper (it runs /opt/python/cp39-cp39 whatever it builds). The tools interpreter neither.
REQUIRED_INTERPRETERS = ("cp39-cp39",)


class OutputError(Exception):
    """A file the user named for output cannot take it: one line naming the option and path."""


def shown(value: Path | str, limit: int = 200) -> str:
    """A path or value the user gave, fit for one line of a message (scrubbed, cut if very long)."""
    text = engine.scrub(str(value))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def check_output(path: Path, option: str) -> os.stat_result | None:
    """Whether `path` can be written as an output, before any work is done: None for a file yet to
    be made; its status for a regular file, a character device (/dev/stdout, /dev/null) or a FIFO.
    A directory, a socket, a block device or a name the system refuses is an OutputError."""
    if path.name in ("", ".", ".."):
        raise OutputError(f"{option} {shown(path)}: is a directory; give a file name")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None  # its directories are made when it is written
    except OSError as exc:
        raise OutputError(f"{option} {shown(path)}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{option} {shown(path)}: is a directory; give a file name")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise OutputError(f"{option} {shown(path)}: not a regular file, a character device or a FIFO")
    return st


@contextlib.contextmanager
def output_file(path: Path, option: str) -> Iterator[Callable[[str], None]]:
    """The output the user named, checked on entry (before the work that makes its text); yields
    the function that writes the text. A regular file is written all or nothing (a temporary
    beside it, renamed over it: never a half-written file), through a symbolic link to the file it
    names. A character device (/dev/stdout, /dev/null) or a FIFO is written in place, never
    replaced, and opened on entry: a FIFO that no process reads is refused at once (opened without
    blocking) instead of waiting forever, and one that has a reader keeps it until the text comes."""
    st = check_output(path, option)
    if st is None or stat.S_ISREG(st.st_mode):
        yield lambda text: _replace(path, text, option)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        os.set_blocking(fd, True)
    except OSError as exc:
        if stat.S_ISFIFO(st.st_mode) and exc.errno == errno.ENXIO:
            raise OutputError(f"{option} {shown(path)}: a FIFO that no process reads; nothing written") from None
        raise OutputError(f"{option} {shown(path)}: cannot write ({exc.strerror})") from None

    def write(text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        try:
            while data:  # unbuffered: an error is raised here, not again when the file is closed
                data = data[os.write(fd, data) :]
        except OSError as exc:
            raise OutputError(f"{option} {shown(path)}: cannot write ({exc.strerror})") from None

    try:
        yield write
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _replace(path: Path, text: str, option: str) -> None:
    real = Path(os.path.realpath(path))  # the file a link names is replaced, not the link
    tmp = real.with_name(f".{real.name[:200]}.partial")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(real)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"{option} {shown(path)}: cannot write ({exc.strerror})") from None


def write_output(path: Path, text: str, option: str) -> None:
    """Write `text` to the output the user named (see output_file)."""
    with output_file(path, option) as write:
        write(text)


def default_image(spec: Spec) -> str:
    """The first image whose base this machine can make without a registry."""
    for name, image in spec.images.items():
        if spec.data.bases[image.base].debootstrap:
            return name
    return next(iter(spec.images))


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def fetch(
    spec: Spec,
    cache: SourceCache,
    targets: list[Target],
    origin: str = "auto",
    seed_dir: Path | None = None,
    mirror: str | None = None,
) -> list[Target]:
    """Fill the cache with every input the targets need; returns the targets as they will be
    built (with any declared CPython fallback a site's origins forced).

    origin: "upstream" (python.org and pip's index), "debian" (CPython from Debian's source
    archive, byte-identical to python.org), or "auto" (upstream, then Debian). Every file already
    in the cache is re-hashed: a bad one is removed and fetched again from whatever origin is
    offered; what a killed download left behind is removed first.
    """
    if origin not in ORIGINS:
        raise SourceError(f"--origin {origin[:100]!r}: unknown; choose one of: {', '.join(ORIGINS)}")
    if seed_dir is not None:
        try:
            is_dir = stat.S_ISDIR(os.stat(seed_dir).st_mode)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise SourceError(f"--from-dir {shown(seed_dir)}: {exc.strerror}") from None
            is_dir = False
        if not is_dir:
            raise SourceError(f"--from-dir {shown(seed_dir)}: not a directory")
        try:
            os.listdir(seed_dir)  # every file under it is read: one that may not be is refused now
        except OSError as exc:
            raise SourceError(f"--from-dir {shown(seed_dir)}: cannot read ({exc.strerror})") from None
    # Parsed before the cache is touched: a bad --mirror leaves nothing behind.
    address = Address.parse(mirror, "--mirror") if mirror is not None else None
    with cache.filling():
        return _fetch(spec, cache, targets, origin, seed_dir, address)


def buildable(spec: Spec, cache: SourceCache, targets: list[Target], origin: str = "auto") -> list[Target]:
    """The targets as this site can build them: their CPython and library sources fetched, with
    the declared fallbacks and left-out interpreters its origins force (what `fetch` returns,
    without the wheels, and without the from-source tools' files: they change no interpreter, and
    a site that reaches none of their origins still knows which interpreters it would build)."""
    with cache.filling():
        return _fetch_sources(spec, cache, targets, origin, tools=False)


def _fetch(
    spec: Spec, cache: SourceCache, targets: list[Target], origin: str, seed_dir: Path | None, mirror: Address | None
) -> list[Target]:
    if seed_dir is not None:
        accepted = cache.seed_dir(seed_dir, all_pins(spec))
        log(f"accepted {len(accepted)} file(s) from {seed_dir} by hash")
    if mirror is not None:
        accepted = cache.seed_mirror(mirror, all_pins(spec))
        log(f"accepted {len(accepted)} file(s) from {mirror} by hash")
    resolved = _fetch_sources(spec, cache, targets, origin)
    for target in targets:
        got = fetch_wheels(spec, cache, target.image, target.arch)
        if got:
            log(f"fetched {len(got)} wheel(s) for {target.slug}")
    frontend_tags = sorted({t for target in resolved for t in (*target.interpreters, *target.downloadable)})
    got = fetch_frontend(spec, cache, frontend_tags)
    if got:
        log(f"fetched {len(got)} frontend wheel(s) for {', '.join(frontend_tags)}")
    log(f"source cache {cache.root} has every input of {', '.join(t.slug for t in targets)}")
    return resolved


def _fetch_sources(spec: Spec, cache: SourceCache, targets: list[Target], origin: str, tools: bool = True) -> list[Target]:
    """Fetch every CPython and library source of the targets; an interpreter whose pinned
    release no origin serves falls back, loudly, to the newest of its declared fallbacks that
    one does. Returns the targets with what they will actually build."""
    outcome: dict[str, str | None] = {}  # file name -> None if in the cache, else why not

    def get(pin: Pin) -> str | None:
        if pin.filename not in outcome:
            try:
                if not cache.valid(pin):
                    fetch_pin(cache, pin, origin, say=log)
                outcome[pin.filename] = None
            except SourceError as exc:
                outcome[pin.filename] = str(exc)
        return outcome[pin.filename]

    resolved = []
    for target in targets:
        compiler = target.compiler_pins()
        sums = static_clang_sums_pin(spec) if compiler else None
        for pin in [*library_pins(spec, target.base.libraries), *(target.tool_pins() if tools else []), *compiler, *([sums] if sums else [])]:
            if (error := get(pin)) is not None:
                raise SourceError(error)
        if sums:
            check_static_clang_listed(cache, sums, compiler)
        used, omitted = {}, {}
        for tag in target.interpreters:
            interp = spec.data.interpreters[tag]
            errors = []
            for version in (interp.cpython, *interp.fallback):
                error = get(cpython_pin(spec, version))
                if error is None:
                    used[tag] = version
                    break
                errors.append(error)
            else:
                versions = ", ".join((interp.cpython, *interp.fallback))
                if tag in REQUIRED_INTERPRETERS or tag == target.image.tools_interpreter:
                    raise SourceError(f"{tag}: no source of CPython {versions} could be fetched:\n" + "\n".join(errors))
                omitted[tag] = f"no origin of this site serves CPython {versions}"
        target = target.without(omitted).with_cpython(used)
        for tag, why in target.omitted:
            log(f"WARNING: {target.slug}: {tag}: {why}; the image is built without it "
                f"(recorded in its Dockerfile header, labels, catalog and SBOM; publishing it needs --allow-omitted)")  # fmt: skip
        for tag, pinned, version in target.substitutions:
            log(f"WARNING: {target.slug}: {tag}: CPython {pinned} is served by none of this site's origins; "
                f"building {version}, its declared fallback (recorded in the image's labels and manifest)")  # fmt: skip
        resolved.append(target)
    return resolved


def build(
    spec: Spec, cache: SourceCache, target: Target, origin: str = "auto", no_cache: bool = False,
    stop: threading.Event | None = None, builder: str | None = None,
) -> engine.BuildResult:
    """fetch → context → buildx; nothing is left half-done: the context is rewritten each time.
    Setting `stop` ends the build (engine.build); `builder` names a buildx builder to build on."""
    engine.build_cache_settings()  # a mistake in MANYFORGE_BUILD_CACHE(_PUSH): before the fetch and the base
    engine.builder_name(builder)
    engine.check_prerequisites(
        target.arch, needs_debootstrap=target.base.debootstrap is not None, host=target.build_host, local_builder=builder is None
    )
    target = fetch(spec, cache, [target], origin=origin)[0]
    context = write_context(target, cache, BUILD_DIR / "contexts" / target.slug)
    result = engine.build(target, context, BUILD_DIR / "logs", no_cache=no_cache, stop=stop, builder=builder)
    log(f"built {target.slug} in {result.seconds:.0f}s: {', '.join(result.tags)}")
    return result


def derive_configure_answers(spec: Spec, cache: SourceCache, target: Target, origin: str = "auto") -> tuple[configure_answers.BaseAnswers, list[str]]:
    """Run CPython's configure for every interpreter of a cross-compiled target with its test
    programs running on the target (QEMU), and keep only the answers to the checks that run a
    program (configure-answers.py). Returns the base's answers with this arch's replaced, and
    what changed against configure-answers/<base>.json (nothing is written here)."""
    if not target.cross_compiles:
        raise SpecError([f"{target.slug} is not cross-compiled on this host: its configure runs on the target itself"])
    engine.check_prerequisites(target.arch, needs_debootstrap=target.base.debootstrap is not None)
    target = fetch(spec, cache, [target], origin=origin)[0]
    context = write_context(target, cache, BUILD_DIR / "contexts" / f"{target.slug}-answers")
    (context / "Dockerfile").write_text(render_dockerfile(target, derive_answers=True))
    for arch in target.bootstrap_arches:
        engine.ensure_bootstrap_base(spec, target.base_name, arch)
    out = BUILD_DIR / "configure-answers" / target.slug
    seconds = engine.export_stage(target, context, "configure_answers", out, BUILD_DIR / "logs")
    derived = {}
    for build in target.interpreter_builds():
        path = out / f"{build.stage}.json"
        try:
            answers = spec_json(path)
        except (OSError, ValueError) as exc:
            raise engine.EngineError(f"{target.slug}: the derivation wrote no usable {path.name}: {str(exc)[:200]}") from None
        minor = ".".join(build.version.split(".")[:2])
        derived[(minor, build.version, build.free_threaded)] = answers
    base = target.base
    provenance = {
        "base": f"debootstrap {base.debootstrap} ({target.base_ref()})" if base.debootstrap else str(base.image),
        "qemu": engine.qemu_version(target.arch),
        "derived_with": f"invoke configure-answers --image {target.image_name} --arch {target.arch}",
    }
    previous = configure_answers.load(target.base_name)
    new = configure_answers.merged(previous, target.base_name, target.arch, provenance, derived)
    log(f"derived configure answers of {target.slug} in {seconds:.0f}s")
    return new, configure_answers.differences(previous, new, target.arch)


def spec_json(path: Path) -> dict[str, str]:
    """A JSON object of strings, read strictly (configure answers a derivation wrote)."""
    data = strict_json(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError("not an object of strings")
    return data


def _ask_repositories(context: Path, platform: str, what: str) -> set[str]:
    """Run a packages-check build; the packages it reports missing (exit 1 when it could not ask)."""
    rc, output = engine.probe_build(context, platform)
    found = {m.group(1) for m in re.finditer(r"manyforge-missing: ([A-Za-z0-9][A-Za-z0-9._+:-]*)$", output, re.M)}
    if rc != 0 and not found:
        tail = "\n".join(output.splitlines()[-20:])
        raise engine.EngineError(f"packages check of {what} failed before it could ask (exit {rc}):\n{tail}")
    return found


def packages_check(target: Target) -> list[tuple[str, str]]:
    """The declared packages the base's repositories (set up as the image sets them up) lack,
    as (repositories, package): the image's own, and for a cross-compiled image those of its
    cross stage too, which the build host's repositories must offer."""
    engine.check_prerequisites(target.arch, needs_debootstrap=target.base.debootstrap is not None, host=target.build_host)
    for arch in target.bootstrap_arches:
        engine.ensure_bootstrap_base(target.spec, target.base_name, arch)
    missing: set[tuple[str, str]] = set()
    for where, packages, setup in packages_checks(target):
        cross = where is not target
        stage = f" ({where.platform}, for the cross stage)" if cross else ""
        context = write_packages_check(where, BUILD_DIR / "packages-check" / f"{target.slug}{'-cross' if cross else ''}", packages, setup)
        log(f"asking the repositories of {where.base_name}{stage or f' ({where.platform})'} for {len(packages)} packages")
        found = _ask_repositories(context, where.platform, f"{target.slug}{stage}")
        missing |= {(f"{where.base_name}{stage}", name) for name in found}
    return sorted(missing)


def benchmark(spec: Spec, cache: SourceCache, targets: list[Target], builder: str | None = None) -> list[dict[str, float | str]]:
    """Build as a release does, from an empty BuildKit cache: the first target (the native
    arch) cold, then each other one right after, reusing only what it shares with the builds
    before it (the native stages its cross stages start from); then each again with nothing
    changed. Bootstrapping a base is not counted. The figures the speed targets are judged by."""
    engine.build_cache_settings()  # before any base is bootstrapped or the cache emptied
    engine.builder_name(builder)
    for target in targets:
        engine.check_prerequisites(
            target.arch, needs_debootstrap=target.base.debootstrap is not None, host=target.build_host, local_builder=builder is None
        )
        for arch in target.bootstrap_arches:
            engine.ensure_bootstrap_base(spec, target.base_name, arch)
    log("emptying BuildKit's cache: every build below starts cold but for what an earlier one built")
    engine.prune_build_cache(builder)
    figures: list[dict[str, float | str]] = []
    for target in targets:
        result = build(spec, cache, target, builder=builder)
        figures.append({
            "target": target.slug, "interpreters": len(target.interpreters), "build_s": round(result.seconds, 1),
            "image_size_mb": round(engine.image_size(result.tags[0]) / 1e6, 1),
        })  # fmt: skip
    for entry, target in zip(figures, targets, strict=True):
        again = build(spec, cache, target, builder=builder)
        entry["unchanged_rebuild_s"] = round(again.seconds, 1)
        entry["rebuild_percent_of_build"] = round(100 * again.seconds / float(entry["build_s"]), 2)
        entry["ratio_to_native"] = round(float(entry["build_s"]) / float(figures[0]["build_s"]), 2)
    return figures


def targets_for(spec: Spec, image: str | None, arch: str | None, **choices) -> list[Target]:
    """All image×arch pairs that match; `None` means every one (validated against the spec)."""
    names = [image] if image is not None else list(spec.images)
    return [
        resolve_target(spec, name, a, **choices)
        for name in names
        for a in ([arch] if arch is not None else spec.image(name).archs)
    ]


# --- policies -------------------------------------------------------------------------------

SCRIPTS = REPO_ROOT / "scripts"
POLICY_LIBRARIES = "libatomic1,libexpat1"  # whitelisted libraries with symbol versions beyond minbase


def policy_dump_debian(suite: str, arch: str, output: Path) -> dict:
    """debootstrap a Debian root and dump its libc and symbol versions (for `policy derive`).

    The suite is validated here, since debootstrap takes no `--`: a suite such as
    `--print-debs` or `../../x` would be read as an option or a script path."""
    try:
        suite = TypeAdapter(Suite).validate_python(suite)
    except ValidationError:
        raise SpecError([f"--suite {suite[:60]!r}: not a Debian suite name (lowercase letters, digits and '-', e.g. bookworm)"]) from None
    if arch not in ARCHES:
        raise SpecError([f"--arch {arch[:40]!r}: unknown; choose one of: {', '.join(ARCHES)}"])
    # Opened before the bootstrap, which takes minutes: a FIFO no process reads fails now.
    with output_file(output, "--output") as write, tempfile.TemporaryDirectory(prefix="manyforge-dump-") as tmp:
        tarball = Path(tmp) / "root.tar"
        log(f"bootstrapping {suite} for {arch}")
        debootstrap_root(suite, arch, tarball, include=POLICY_LIBRARIES)
        root = Path(tmp) / "root"
        root.mkdir()
        with tarfile.open(tarball) as tar:
            tar.extractall(root, filter="tar")
        dump = subprocess.run(
            [sys.executable, str(SCRIPTS / "calculate_symbol_versions.py"), "--root", str(root),
             "--label", f"debian-{suite}-{arch}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if dump.returncode != 0:
            raise SourceError(f"symbol dump of {suite}/{arch} failed: {dump.stderr.strip()}")
        write(dump.stdout)
    return json.loads(dump.stdout)


def policy_derive(dump_paths: list[Path], write: bool) -> list[str]:
    """Derive policies from dumps; with `write`, add the new entries to policies/."""
    dumps = policy.read_dumps(dump_paths)  # every broken file reported at once
    lines = []
    for family, filename in policy.FAMILY_FILES.items():
        mine = [d for d in dumps if (d.libc == "glibc") == (family == "manylinux")]
        if not mine:
            continue
        path = policy.POLICY_DIR / filename
        published = policy.load_policies(path)
        result = policy.derive(mine, published)
        known = {p.name for p in published}
        for entry in result.entries:
            if entry.name not in known:
                lines.append(f"derived {entry.name}: archs {', '.join(sorted(entry.symbol_versions))}")
            elif any(d for d in mine if policy.policy_name_of(d) == entry.name):
                lines.append(f"kept published {entry.name} (immutable)")
        lines += [f"contradiction: {r}" for r in result.report]
        problems = policy.check_order(filename, result.entries)
        if problems:
            raise policy.PolicyError(problems)
        if write:
            policy.write_policies(path, result.entries)
            lines.append(f"wrote {path.relative_to(REPO_ROOT)}")
    return lines


def policy_check(spec: Spec, target: Target, ref: str | None = None) -> tuple[list[str], list[str]]:
    """Dump the built image and build probes in it; compare both with its policy."""
    policies = policy.load_all(spec=spec)
    ref = ref or target.latest_ref
    python = f"/opt/python/{target.image.tools_interpreter}/bin/python"
    mounts = {str(SCRIPTS): "/manyforge-scripts"}
    dump = json.loads(engine.run_in_image(ref, target.arch, [python, "/manyforge-scripts/calculate_symbol_versions.py"], mounts))
    policy.Dump.from_data(dump, f"symbol dump of {ref}")  # its shape is checked like any dump's
    probes = json.loads(engine.run_in_image(ref, target.arch, [python, "/manyforge-scripts/policy_probes.py"], mounts))
    report = [f"{ref}: {dump['libc']['name']} {dump['libc']['version']}, policy {target.image.policy}"]
    more, problems = policy.check_image(target.image.policy, target.arch, dump, probes["probes"], policies)
    return report + more, problems


# --- derived images ------------------------------------------------------------------------------


def derived_lock_file(spec: Spec) -> Path:
    """The lock of the derived images: beside the file that declares them."""
    return parent.lock_path_of(spec.source_file)


def derived_archs(spec: Spec, name: str) -> tuple[str, ...]:
    if name not in spec.derived:
        raise SpecError([f"unknown derived image {name!r}; declared: {', '.join(spec.derived) or 'none'}"])
    d = spec.derived[name]
    return d.archs or spec.image(d.parent).archs


def parent_ref(spec: Spec, name: str, arch: str) -> str:
    """What a derived image's parent is read from: an image of the matrix by its local name
    (built and tested here first), or the reference pinned by digest."""
    d = spec.derived[name]
    if d.external:
        return d.parent
    return resolve_target(spec, d.parent, arch).latest_ref


def resolve_derived(spec: Spec, name: str, arch: str | None = None) -> list[parent.ParentFacts]:
    """Read each parent (its AUDITWHEEL_* environment, os-release, /opt/python) from the image
    itself, by its image ID, and pin the result in the lock beside the spec: rendering reads only
    the spec and the lock. An external parent pinned by digest is pulled first."""
    archs = derived_archs(spec, name)
    if arch is not None and arch not in archs:
        raise SpecError([f"unknown arch {arch!r} for derived image {name}; choose one of: {', '.join(archs)}"])
    lock_file = derived_lock_file(spec)
    lock = parent.load_lock(lock_file)
    found = []
    for a in [arch] if arch else archs:
        ref = parent_ref(spec, name, a)
        image_id = engine.ensure_parent(ref, a)
        output = engine.probe_parent(ref, a, parent.PROBE)
        facts = parent.facts_from_probe(ref, image_id, a, output)
        per_arch = dict(lock.images.get(name, {}))
        per_arch[a] = facts  # type: ignore[index]  # an arch of the derived image: validated above
        images = {**lock.images, name: per_arch}
        lock = lock.model_copy(update={"images": images})
        log(f"{name}_{a}: parent {ref} is {image_id[:19]}, {facts.policy} on {facts.os_id} {facts.os_version} ({facts.family}), "
            f"{len(facts.interpreters)} interpreters{', with its SBOM' if facts.sbom else ''}")  # fmt: skip
        found.append(facts)
    parent.write_lock(lock_file, lock)
    log(f"pinned in {lock_file}")
    return found


def derived_target(spec: Spec, name: str, arch: str, build_host: str | None = None, matrix_parent: Target | None = None) -> DerivedTarget:
    """A derived image×arch with its parent as the lock pins it (and, where given, its parent of
    the matrix as this site built it)."""
    lock_file = derived_lock_file(spec)
    return derived_target_of(spec, parent.load_lock(lock_file), str(lock_file), name, arch, build_host, matrix_parent)


def build_derived(spec: Spec, cache: SourceCache, target: DerivedTarget, origin: str = "auto", stop: threading.Event | None = None,
                  builder: str | None = None, network: str = "default") -> engine.BuildResult:  # fmt: skip
    """sources → context → buildx FROM the parent's image ID → the project's own checks.
    `network` "host": the build's steps reach servers on the host's 127.0.0.1 (a vendor
    repository or a proxy there)."""
    engine.build_cache_settings()
    engine.builder_name(builder)
    engine.check_prerequisites(target.arch, needs_debootstrap=False, host=target.build_host, local_builder=builder is None)
    with cache.filling():
        for where, pin in target.pinned_sources().items():
            try:
                if not cache.valid(pin):
                    fetch_pin(cache, pin, origin, say=log)
            except SourceError as exc:  # which key of the spec pinned it, not only the file's name
                raise SourceError(f"{target.spec.source_file.name}: {where}: {exc}") from None
    context = write_derived_context(target, cache, BUILD_DIR / "contexts" / target.slug)
    result = engine.build(target, context, BUILD_DIR / "logs", stop=stop, builder=builder, network=network)
    log(f"built {target.slug} in {result.seconds:.0f}s: {', '.join(result.tags)}")
    failed = run_checks(target, result.tags[0])
    if failed:
        raise engine.EngineError(f"{target.slug}: {len(failed)} of its checks failed:\n" + "\n".join(failed))
    return result


def run_checks(target: DerivedTarget, ref: str) -> list[str]:
    """Run the derived image's own checks (bash -c, one container each); what failed, with its output."""
    failed = []
    for command in target.derived.checks:
        run = engine.run_container(ref, target.arch, ["bash", "-c", command])
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        log(f"check {command!r}: {status}")
        if run.returncode != 0:
            failed.append(f"{command!r} (exit {run.returncode}): {(run.stdout + run.stderr)[-1500:]}")
    return failed


def record_derived(target: DerivedTarget) -> tuple[list[str], publish.TestRecord]:
    """The image contract and the image's own checks on its latest build, bound to its image ID
    in a test record (what `publish` requires): every part ran, and it is publishable only when
    each passed. Returns what failed and the record written."""
    ref = target.latest_ref
    image_id = engine.image_id(ref)
    _, findings = contract.check_image(ref, target.arch)
    failed = [f"contract: {f.check} ({f.detail})" for f in findings if not f.ok] + run_checks(target, ref)
    collected = len(findings) + len(target.derived.checks)
    record = publish.TestRecord(
        image_id=image_id, slug=target.slug, ref=ref, spec_revision=publish.spec_revision(target.spec),
        collected=collected, passed=collected - len(failed), failed=len(failed), skipped=0, complete=True,
    )  # fmt: skip
    publish.write_test_record(record)
    log(f"{target.slug}: {record.verdict()}; test record of {image_id[:19]} written")
    return failed, record


def packages_check_derived(target: DerivedTarget) -> list[tuple[str, str]]:
    """The derived image's packages its parent's repositories do not offer (vendor repositories
    are not set up for the question: their packages are checked by the build itself)."""
    engine.check_prerequisites(target.arch, needs_debootstrap=False, host=target.build_host)
    engine.tag_parent(target)
    if not target.derived.packages:
        return []
    context = write_derived_packages_check(target, BUILD_DIR / "packages-check" / target.slug)
    log(f"asking the repositories of {target.parent.ref} ({target.platform}) for {len(target.derived.packages)} packages")
    found = _ask_repositories(context, target.platform, target.slug)
    return sorted((target.parent.ref, name) for name in found)
