"""Build the images under test for real (cached by BuildKit when nothing changed), start one
container of each, and hand testinfra hosts to the tests.

Which images (DEFAULT_TARGETS): the default image (the first bootstrappable base in
images.yaml) for x86_64 with all its interpreters; secondary targets with a subset, to keep a
cold CI run within its hour: its i686 image (cp39, which cibuildwheel's helper needs, and the
tools interpreter), its s390x image (the tools interpreter, cross-compiled on the build host
from the x86_64 build's cached native stages: the cross path, big-endian, under QEMU) and
manylinux_2_31 for i686 (cp39 and the tools interpreter, with its from-source libraries, every
step under linux32; it replaced manylinux_2_31 x86_64, whose stages are the same but for the
arch). The GitHub workflow tests every arch with all interpreters.

MANYFORGE_TEST_DERIVED="FILE:IMAGE[:ARCH],..." adds derived images (a downstream file of them,
e.g. examples/scientific/manyforge.yaml:scientific): each is resolved against its parent as the
session builds it (by image ID), built, and checked by the whole suite, plus its own checks.

MANYFORGE_TEST_TARGETS="image:arch[:tag+tag...],..." chooses others (no tags: all of them);
MANYFORGE_TEST_IMAGE=<image> with MANYFORGE_TEST_ARCHES=a,b tests every interpreter of one
image (the GitHub workflow tests each image×arch that way), MANYFORGE_TEST_BASE and
MANYFORGE_TEST_TOOLCHAIN one of its variants.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from manyforge import engine, pipeline, publish
from manyforge.sources import SourceCache, SourceError, wheel_pins
from manyforge.spec import DEFAULT_SPEC, Spec, SpecError, load_spec
from manyforge.target import AnyTarget, DerivedTarget, Target, resolve_target

SAMPLE = Path(__file__).parent / "sample"
HERE = Path(__file__).resolve().parent
NATIVE = ("x86_64", "i686")  # what runs on this host without QEMU


@dataclass(frozen=True)
class BuiltImage:
    target: AnyTarget
    ref: str


def _default_targets(spec: Spec) -> str:
    image = pipeline.default_image(spec)
    return f"{image}:x86_64,{image}:i686:cp39-cp39,{image}:s390x:,manylinux_2_31:i686:cp39-cp39"


def _targets(spec: Spec) -> list[Target]:
    """The session's targets from MANYFORGE_TEST_*: either MANYFORGE_TEST_IMAGE/_ARCHES (with
    _BASE/_TOOLCHAIN, which only they read) or MANYFORGE_TEST_TARGETS, never both; a setting that
    would be ignored, or a target named twice, is a usage error naming the variables."""
    # Empty is unset for these (the workflow passes an empty base or toolchain for no variant) ...
    env = {k: os.environ.get(f"MANYFORGE_TEST_{k}") or None for k in ("IMAGE", "ARCHES", "BASE", "TOOLCHAIN")}
    targets = os.environ.get("MANYFORGE_TEST_TARGETS")  # ... but an empty list of targets is a mistake
    chosen = [f"MANYFORGE_TEST_{k}" for k in ("IMAGE", "ARCHES") if env[k]]
    variant = [f"MANYFORGE_TEST_{k}" for k in ("BASE", "TOOLCHAIN") if env[k]]
    if chosen and targets is not None:
        raise pytest.UsageError(
            f"MANYFORGE_TEST_TARGETS and {' and '.join(chosen)} are set together: choose the targets one way, not both"
        )
    if variant and not chosen:
        raise pytest.UsageError(
            f"{' and '.join(variant)} {'is' if len(variant) == 1 else 'are'} only read with MANYFORGE_TEST_IMAGE or MANYFORGE_TEST_ARCHES: set one of them"
            + (" instead of MANYFORGE_TEST_TARGETS" if targets is not None else "")
        )
    if chosen:
        image = env["IMAGE"] or pipeline.default_image(spec)
        arches = (env["ARCHES"] or "x86_64").split(",")
        twice = sorted({a for a in arches if arches.count(a) > 1})
        if twice:
            raise pytest.UsageError(f"MANYFORGE_TEST_ARCHES={str(env['ARCHES'])[:100]!r}: names {', '.join(twice)} more than once")
        return [resolve_target(spec, image, arch, base=env["BASE"], toolchain=env["TOOLCHAIN"]) for arch in arches]
    if targets is None:
        # The defaults may name one target twice (a MANYFORGE_SPEC whose first image is manylinux_2_31): once is enough.
        first: dict[str, Target] = {}
        for target in _parse_targets(spec, _default_targets(spec)):
            first.setdefault(target.slug, target)
        return list(first.values())
    return _unique(_parse_targets(spec, targets), targets)


def _parse_targets(spec: Spec, value: str) -> list[Target]:
    out = []
    for item in value.split(","):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise pytest.UsageError(f"MANYFORGE_TEST_TARGETS: {item[:100]!r} is not image:arch[:tag+tag...]")
        image, arch = parts[:2]
        if len(parts) == 2:
            out.append(resolve_target(spec, image, arch))
        else:
            # "image:arch:" keeps only the tools interpreter, which every build has.
            subset = [t for t in parts[2].split("+") if t] or [spec.image(image).tools_interpreter]
            out.append(resolve_target(spec, image, arch, interpreters=subset))
    return out


def _unique(targets: list[Target], value: str) -> list[Target]:
    """Each image once: one named twice (also as another subset of its interpreters) would be
    built and tested twice under the same tags."""
    slugs = [t.slug for t in targets]
    twice = sorted({s for s in slugs if slugs.count(s) > 1})
    if twice:
        raise pytest.UsageError(f"MANYFORGE_TEST_TARGETS={value[:100]!r}: names {', '.join(twice)} more than once")
    return targets


TARGETS: list[AnyTarget] = []  # filled once the configuration is read (pytest_configure)


def _derived_targets(parents: list[Target]) -> list[AnyTarget]:
    """MANYFORGE_TEST_DERIVED's images: each with its parent of the matrix as this site builds it
    (a session target, or resolved like one), and the parent's facts as last resolved; the build
    resolves the parent again first, so it derives from the parent the session built."""
    value = os.environ.get("MANYFORGE_TEST_DERIVED")
    if not value:
        return []
    out: list[AnyTarget] = []
    for item in value.split(","):
        parts = item.rsplit(":", 2) if item.count(":") >= 2 else item.rsplit(":", 1)
        if len(parts) < 2:
            raise pytest.UsageError(f"MANYFORGE_TEST_DERIVED: {item[:100]!r} is not FILE:IMAGE[:ARCH]")
        path, name, arch = (parts + ["x86_64"])[:3]
        spec = load_spec(path)
        derived = spec.derived.get(name)
        if derived is None or derived.external:
            raise pytest.UsageError(f"MANYFORGE_TEST_DERIVED: {name!r} is no derived image of {path} with a parent of the matrix")
        matrix_parent = next((t for t in parents if t.image_name == derived.parent and t.arch == arch), None)
        if matrix_parent is None:
            [matrix_parent] = pipeline.buildable(spec, SourceCache(), [resolve_target(spec, derived.parent, arch)])
        if not engine.local_image_exists(matrix_parent.latest_ref) and not any(t.slug == matrix_parent.slug for t in parents):
            raise pytest.UsageError(f"MANYFORGE_TEST_DERIVED: its parent {matrix_parent.latest_ref} is neither built nor a target of this session")
        try:
            target = pipeline.derived_target(spec, name, arch, matrix_parent=matrix_parent)
        except SpecError:  # never resolved here: resolve against the parent as it is now, if it is built
            if not engine.local_image_exists(matrix_parent.latest_ref):
                raise pytest.UsageError(f"MANYFORGE_TEST_DERIVED: resolve {name} first (`invoke resolve`), or build its parent") from None
            pipeline.resolve_derived(spec, name, arch)
            target = pipeline.derived_target(spec, name, arch, matrix_parent=matrix_parent)
        out.append(target)
    return out


def _load_targets() -> None:
    """The session's targets; a mistake in MANYFORGE_SPEC or MANYFORGE_TEST_* is pytest's one-line
    usage error naming the variable, not a traceback from importing this file."""
    try:
        spec = load_spec(os.environ.get("MANYFORGE_SPEC") or DEFAULT_SPEC)
        # As this site builds them: an interpreter no origin serves is left out of the image
        # (announced), so no test of it is collected.
        TARGETS[:] = pipeline.buildable(spec, SourceCache(), _targets(spec))
        TARGETS.extend(_derived_targets([t for t in TARGETS if isinstance(t, Target)]))
    except SourceError as exc:
        raise pytest.UsageError(f"the images' sources: {exc}"[:2000]) from None
    except SpecError as exc:
        chosen = {k: v for k, v in os.environ.items() if k == "MANYFORGE_SPEC" or k.startswith("MANYFORGE_TEST_")}
        where = ", ".join(f"{k}={v[:100]!r}" for k, v in sorted(chosen.items()))
        raise pytest.UsageError(f"{where or 'images.yaml'}: " + "; ".join(exc.problems)[:2000]) from None


def pytest_generate_tests(metafunc):
    """One build per target for the whole session; interpreter tests fan out per interpreter."""
    if "interpreter" in metafunc.fixturenames:
        pairs = [(t, tag) for t in TARGETS for tag in t.interpreters]
        metafunc.parametrize(
            ["built_image", "interpreter"], pairs, indirect=["built_image"], scope="session",
            ids=[f"{t.slug}-{tag}" for t, tag in pairs],
        )  # fmt: skip
    elif "built_image" in metafunc.fixturenames:
        metafunc.parametrize("built_image", TARGETS, indirect=True, scope="session", ids=[t.slug for t in TARGETS])


def _key(target: AnyTarget) -> tuple:
    return (target.slug, tuple(target.interpreters))


def _item_target(item) -> AnyTarget | None:
    """The image a collected test checks (None for tests of no image)."""
    target = item.callspec.params.get("built_image") if hasattr(item, "callspec") else None
    return target if isinstance(target, (Target, DerivedTarget)) else None


# One worker builds every image the session's tests need, in the order they need them, one after
# the other: while the tests of one image run, the next image builds (a build's single-threaded
# phases — package installs, configure, byte-compiling, emulated steps — leave a core free).
_BUILDER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-build")
_BUILDS: dict[tuple, concurrent.futures.Future[BuiltImage]] = {}  # built once per session
_STOP = threading.Event()  # set when the session ends: a build still running then is ended
_BUILD_TIMES: list[str] = []  # for the summary: a build's own lines may land in a test's capture


def pytest_terminal_summary(terminalreporter):
    if _BUILD_TIMES:
        terminalreporter.section("image builds")
        for line in _BUILD_TIMES:
            terminalreporter.write_line(line)


def _build(spec: Spec, target: AnyTarget) -> BuiltImage:
    # Its progress reaches the terminal while a test waits for it, and the running test's
    # captured output otherwise; the build log (build/logs/) has all of it.
    print(f"\n[build] {target.slug}", file=sys.stderr)
    if isinstance(target, DerivedTarget):
        # The parent as this session built it (an earlier target in the builder's order).
        pipeline.resolve_derived(target.spec, target.image_name, target.arch)
        target = pipeline.derived_target(target.spec, target.image_name, target.arch, matrix_parent=target.matrix_parent)
        result = pipeline.build_derived(target.spec, SourceCache(), target, stop=_STOP)
        _BUILD_TIMES.append(f"{target.slug}: built in {result.seconds:.0f}s FROM {target.parent.image_id[:19]}")
        return BuiltImage(target, result.tags[0])
    result = pipeline.build(spec, SourceCache(), target, stop=_STOP)
    size = engine.image_size(result.tags[0])
    _BUILD_TIMES.append(f"{target.slug}: built in {result.seconds:.0f}s, {size / 1e6:.0f} MB")
    print(f"[build] {_BUILD_TIMES[-1]}", file=sys.stderr)
    # The target as built: an interpreter may come from a declared CPython fallback.
    return BuiltImage(result.target, result.tags[0])


def _session_targets(session) -> list[AnyTarget]:
    """The targets the collected tests use, in the order they first appear."""
    seen: dict[tuple, AnyTarget] = {}
    for item in session.items:
        if (target := _item_target(item)) is not None:
            seen.setdefault(_key(target), target)
    return list(seen.values())


@pytest.fixture(scope="session")
def built_image(request, spec) -> BuiltImage:
    """Built once per session: pytest sets a parametrized session fixture up again whenever the
    test order interleaves its parameters, and each rebuild, however cached, took a new tag."""
    target: AnyTarget = request.param
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        # The first image asked for queues every image of the session, in the order of its tests.
        for queued in [target, *(_session_targets(request.session) if not _BUILDS else [])]:
            if _key(queued) not in _BUILDS:
                _BUILDS[_key(queued)] = _BUILDER.submit(_build, spec, queued)
        future = _BUILDS[_key(target)]
        if not future.done():
            print(f"\n[build] waiting for {target.slug}", file=sys.stderr)
        return future.result()


@pytest.fixture(scope="session")
def host(built_image: BuiltImage):
    container = engine.start_container(built_image.ref, built_image.target.arch, mounts={str(SAMPLE): "/sample"})
    try:
        yield testinfra.get_host(f"docker://{container.id}")
    finally:
        container.remove(force=True)


# --- test records: what `invoke publish` requires of an image --------------------------------

_RESULTS: dict[str, dict] = {}  # image id -> its target, ref and each test's outcome


@functools.cache
def _image_id(ref: str) -> str:
    return engine.image_id(ref)


def _publishing(item) -> bool:
    """Publishing tests are not the image's own: they need its record, they do not make it."""
    return "recorded_image" in getattr(item, "fixturenames", ())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    built = item.funcargs.get("built_image") if hasattr(item, "funcargs") else None
    if not isinstance(built, BuiltImage) or _publishing(item):
        return
    # By image ID: pytest may set a session fixture up again (a new dated tag for the same,
    # cached image); the tests of one image count together whatever tag they ran against.
    entry = _RESULTS.setdefault(_image_id(built.ref), {"target": built.target, "outcomes": {}})
    entry["ref"] = built.ref
    # One outcome per test, the worst of its phases: a failure anywhere (setup, call, teardown)
    # fails it; a skip is not a pass (a test that does not apply is deselected at collection).
    outcomes = entry["outcomes"]
    if report.failed:
        outcomes[item.nodeid] = "failed"
    elif report.skipped and outcomes.get(item.nodeid) != "failed":
        outcomes[item.nodeid] = "skipped"
    elif report.when == "call" and item.nodeid not in outcomes:
        outcomes[item.nodeid] = "passed"


def _collected(session, target: AnyTarget) -> int:
    """How many of the session's tests check this image (publishing ones aside)."""
    return sum(1 for item in session.items if getattr(_item_target(item), "slug", None) == target.slug and not _publishing(item))


def _whole_suite(session) -> bool:
    """Whether the session selected every image test: all of this folder's test modules (the
    publishing one aside), no -k, -m, --deselect or --last-failed, no single tests named by node
    ID, and nothing deselected by anyone but us (--stepwise, another plugin)."""
    option = session.config.option
    if option.keyword or option.markexpr or option.deselect or getattr(option, "lf", False):
        return False
    if any("::" in str(arg) for arg in session.config.args) or session.config.stash.get(_FOREIGN_DESELECT, False):
        return False
    wanted = {p.name for p in HERE.glob("test_*.py")} - {"test_publish.py"}
    return wanted <= session.config.stash.get(_MODULES, set())


def _record(session, ref: str, entry: dict) -> publish.TestRecord:
    outcomes = list(entry["outcomes"].values())
    collected = _collected(session, entry["target"])
    return publish.TestRecord(
        image_id=engine.image_id(ref), slug=entry["target"].slug, ref=ref,
        spec_revision=publish.spec_revision(entry["target"].spec), collected=collected,
        passed=outcomes.count("passed"), failed=outcomes.count("failed"), skipped=outcomes.count("skipped"),
        complete=_whole_suite(session) and len(outcomes) == collected,
    )  # fmt: skip


def pytest_sessionfinish(session, exitstatus):
    """Record, per image tested, its exact digest, the spec revision and the outcome; only a
    complete, passing run (every test of the image ran and passed, nothing skipped or
    deselected) lets `invoke publish` push it."""
    # E.g. after -x or Ctrl-C: build nothing more, and end a running build (pytest would wait).
    _STOP.set()
    _BUILDER.shutdown(wait=False, cancel_futures=True)
    for entry in _RESULTS.values():
        ref = entry["ref"]
        try:
            record = _record(session, ref, entry)
            if not record.complete and record.failed == 0 and _passing_record(record.image_id):
                continue  # a partial run that failed nothing keeps the image's complete, passing record
            publish.write_test_record(record)
        except (engine.EngineError, publish.PublishError, ValueError, OSError) as exc:
            sys.stderr.write(f"\nno test record for {entry['target'].slug}: {engine.scrub(str(exc))[:300]}\n")


def _passing_record(image_id: str) -> bool:
    try:
        return publish.read_test_record(image_id).ok
    except publish.PublishError:
        return False


@pytest.fixture
def recorded_image(request, built_image: BuiltImage) -> BuiltImage:
    """The built image once every other test of it in this session has passed, with its test
    record written (what publishing requires). Fails when any did not run or did not pass."""
    entry = _RESULTS.get(_image_id(built_image.ref))
    record = _record(request.session, built_image.ref, entry) if entry else None
    if record is None or not record.ok:
        verdict = record.verdict() if record else "none of its tests ran"
        pytest.fail(f"{built_image.target.slug}: its image tests did not all run and pass in this session ({verdict}): not publishable")
    publish.write_test_record(record)
    return built_image


# --- tests that do not apply to an image ---------------------------------------------------------

# A test that does not apply to an image is deselected at collection, never skipped when it runs:
# a skip counts against the image's record. `@pytest.mark.applies_to(predicate)` on a test (or
# an entry here, for modules that do not carry the marker) names the targets it applies to; each
# predicate reads only the target: its arch, image, interpreters and locked wheels.
Applies = Callable[[AnyTarget], bool]
_MODULES = pytest.StashKey[set[str]]()  # this folder's test modules the session collected
_OWN_DESELECT = pytest.StashKey[set[str]]()  # node IDs this file deselected as not applying
_FOREIGN_DESELECT = pytest.StashKey[bool]()  # an image test was deselected by something else


def pytest_deselected(items):
    """Anything deselecting an image test but our own not-applicable rule (--stepwise drops
    every test before the last failure, a plugin may drop more) makes the session's records
    incomplete: a record counts only what was selected."""
    for item in items:
        config = item.config
        if _item_target(item) is not None and item.nodeid not in config.stash.get(_OWN_DESELECT, set()):
            config.stash[_FOREIGN_DESELECT] = True


def _locked(target: AnyTarget, *names: str) -> bool:
    return set(names) <= {w.name for w in wheel_pins(target.spec, target.image, target.arch)}


APPLIES_TO: dict[str, Applies] = {
    # cibuildwheel runs the native images here, points CIBW_MANYLINUX_* at the image, and runs
    # its helpers with cp39 (CI subsets without it do not apply).
    "test_cibuildwheel.py::test_cibuildwheel_builds_repairs_and_tests_every_interpreter": lambda t: (
        t.arch in NATIVE and t.image.policy.startswith("manylinux") and "cp39-cp39" in t.interpreters
    ),
    "test_completeness.py::test_compilers_default_to_the_baseline_march": lambda t: t.arch == "x86_64",
    "test_completeness.py::test_fix_toolchain_wraps_a_compiler_that_defaults_to_x86_64_v2": lambda t: t.arch == "x86_64",
    # cmake and ninja are optional tools: installed where they publish wheels for the platform.
    "test_dropin.py::test_cmake_with_ninja_builds_a_project": lambda t: _locked(t, "cmake", "ninja"),
    "test_dropin.py::test_manylinux_interpreters_downloads_only_what_its_pin_matches": lambda t: bool(t.downloadable),
    # Publishing a derived image (manyforge publish: its own record, catalog and SBOM) is tested in
    # tests/e2e/test_derived.py; these publish and vary images of the matrix.
    "test_publish.py::test_publish_pushes_signs_attests_and_catalogs": lambda t: not t.is_derived,
    "test_publish.py::test_a_killed_publish_completes_on_rerun": lambda t: not t.is_derived,
    "test_publish.py::test_changelog_between_two_releases_that_differ_by_one_tool_pin": lambda t: not t.is_derived,
}


def pytest_configure(config):
    config.addinivalue_line("markers", "applies_to(predicate): the image targets (target.Target -> bool) a test applies to")
    _load_targets()
    try:  # every image builds with these: a mistake stops the session before the first build
        engine.build_cache_settings()
    except engine.EngineError as exc:
        raise pytest.UsageError(str(exc)) from None


def _applies(item) -> Applies | None:
    marker = item.get_closest_marker("applies_to")
    if marker is not None:
        return marker.args[0]
    if Path(str(item.path)).resolve().parent != HERE:
        return None
    return APPLIES_TO.get(f"{Path(str(item.path)).name}::{getattr(item, 'originalname', item.name)}")


def _deselect_what_does_not_apply(config, items: list) -> None:
    modules = {}
    for item in items:
        if Path(str(item.path)).resolve().parent == HERE:
            modules.setdefault(Path(str(item.path)).name, item.module)
    config.stash[_MODULES] = set(modules)
    stale = [key for key in APPLIES_TO if key.split("::")[0] in modules and not hasattr(modules[key.split("::")[0]], key.split("::")[1])]
    if stale:
        raise pytest.UsageError(f"tests/image/conftest.py APPLIES_TO names tests that do not exist: {', '.join(stale)}")
    kept, deselected = [], []
    for item in items:
        target, applies = _item_target(item), _applies(item)
        (deselected if target is not None and applies is not None and not applies(target) else kept).append(item)
    if deselected:
        config.stash[_OWN_DESELECT] = {item.nodeid for item in deselected}
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.hookimpl(trylast=True)  # after pytest's own reordering, which it would undo
def pytest_collection_modifyitems(session, config, items):
    """Image by image, in the order of TARGETS: pytest alone interleaves them (per interpreter),
    so a test would soon wait for the next image's build rather than run beside it. Publishing
    tests run last: they need every other test of their image to have passed. Tests of no image
    run after the first image's tests, beside the second one's build (the first image's build
    starts only when its first test asks for it). Tests that do not apply to an image are
    deselected first."""
    _deselect_what_does_not_apply(config, items)
    index = {_key(t): i for i, t in enumerate(TARGETS)}

    def order(item) -> tuple[bool, float]:
        target = _item_target(item)
        return _publishing(item), 0.5 if target is None else index.get(_key(target), -1)

    items.sort(key=order)
