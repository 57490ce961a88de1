"""The GitHub workflow's matrix, derived from images.yaml: which runner builds each image×arch,
in which leg, and how long and how much disk each job is expected to take.

Each image is one run of .github/workflows/image.yml with two legs: `native` (every arch its
runner's CPU runs, and anything built wholly under QEMU) and, after it, `cross` (the arches
cross-compiled on a runner from the image's stages for the runner's own arch, read from the
native leg's registry cache). Nothing here runs anything: it is data for the workflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from manyforge.arches import ARCHES, runs_natively
from manyforge.render import CROSS_COMPILED_TOOLS, tools_cross_compiled
from manyforge.spec import REPO_ROOT, Runner, Spec, SpecError
from manyforge.target import Target, resolve_target

JOB_BUDGET_MINUTES = 240  # every job must stay under 4 hours (GitHub stops a job at 6)
RUNNER_DISK_GB = 14.0  # free disk of a GitHub-hosted Linux runner

# Measured on two cores here (README, "What builds where"), cold, per image×arch build:
NATIVE_S_PER_INTERPRETER = 200.0  # manylinux_2_36 x86_64, 4 interpreters: 818 s
I686_S_PER_INTERPRETER = 326.0  # manylinux_2_36 i686, 2 interpreters: 652 s
# The from-source libraries build in parallel stages before the interpreters: a base waits for
# its slowest. OpenSSL: manylinux_2_31 x86_64, 1 interpreter + OpenSSL, SQLite, zstd: 392 s;
# SQLite and zstd: manylinux_2_36 x86_64's stages of 2026-11-30 (73 s and 44 s; both done at 82 s).
LIBRARY_S = {"openssl": 192.0, "sqlite": 82.0, "zstd": 44.0}
CROSS_FIXED_S = 206.0  # manylinux_2_36 s390x, 1 interpreter cross-built, native stages cached: 406 s
BOOTSTRAP_S = 41.0  # debootstrap of the base, native
EMULATION_FACTOR = 10.0  # a compile under QEMU against the same compile run natively
# Assumed, not measured (no RHEL or Alpine base can be pulled here): two-core seconds of each
# tool a base builds from source (images.yaml source_tools), natively; under QEMU for an
# emulated target (those stages are not cross-compiled), EMULATION_FACTOR times that.
# git measured here (2026-12-01): 55 s natively in manylinux_2_36 x86_64's stage, 51 s cross-compiled
# for s390x in its cross stage (a multiarch cross build compiles CROSS_COMPILED_TOOLS at native
# speed); libtool under QEMU for s390x took 246 s with other builds running, within the model.
SOURCE_TOOL_S = {"libxcrypt": 60.0, "curl": 90.0, "git": 55.0, "autoconf": 20.0, "automake": 20.0, "libtool": 40.0, "tcl": 100.0, "tk": 80.0}
# Assumptions, not measurements: a 4-core runner does the 2-core work in 0.65 of the time (the
# interpreters' stages run in parallel, configure is serial); the image tests take 3 min plus 1
# per interpreter natively, five times that under QEMU; each job spends 4 min on set-up.
FOUR_CORE_FACTOR = 0.65
SETUP_MIN = 4.0

# Disk, from this machine's `docker system df` and the layers of manylinux_2_36 x86_64 (1127 MB
# with 4 interpreters: base 117, runtime packages 647, 43-54 per interpreter, tools 161):
STAGES_GB = 1.0  # base, build and tools stages in BuildKit's cache
INTERPRETER_STAGE_GB = 0.35  # one interpreter's build stage (source tree, objects, prefix)
IMAGE_GB = 0.95  # the loaded image without interpreters
IMAGE_INTERPRETER_GB = 0.05
SCRATCH_GB = 1.0  # sources, test containers, wheels the tests build


@dataclass(frozen=True)
class JobEstimate:
    """Expected minutes of one image×arch job on a 4-core hosted runner, with the registry
    cache of its native leg (pushes to main) and without it (pull requests), and its disk."""

    minutes_cached: float
    minutes_uncached: float
    disk_gb: float


def runner_for(spec: Spec, arch: str) -> tuple[str, Runner]:
    """The runner images.yaml names for an arch."""
    for name, runner in spec.data.runners.items():
        if arch in runner.builds:
            return name, runner
    raise SpecError([f"{spec.path.name}: runners: no runner builds {arch}; the workflow needs one for every arch of every image"])


def leg(target: Target) -> str:
    """`native` when nothing of it needs another job's stages, `cross` when it is cross-compiled
    from the image's stages for its build host (built by the native leg before it)."""
    return "cross" if target.cross_compiles else "native"


def estimate(target: Target) -> JobEstimate:
    """The expected time and disk of one job, from the measured stage times above."""
    n = len(target.interpreters)
    libraries = max((LIBRARY_S[name] for name in target.base.libraries), default=0.0)
    tools = sum(SOURCE_TOOL_S[t] for t in target.base.source_tools)
    tcltk = sum(SOURCE_TOOL_S[t] for t in target.base.source_tools if t in ("tcl", "tk"))  # also a native stage
    bootstrap = BOOTSTRAP_S if target.base.debootstrap else 0.0
    per = I686_S_PER_INTERPRETER if ARCHES[target.arch].bits == 32 else NATIVE_S_PER_INTERPRETER
    tests = 3.0 + n
    if runs_natively(target.arch, target.build_host):
        build = bootstrap + libraries + tools + n * per
        cached = uncached = build
    elif target.cross_compiles:
        crossed = sum(SOURCE_TOOL_S[t] for t in target.base.source_tools if t in CROSS_COMPILED_TOOLS) if tools_cross_compiled(target) else 0.0
        own = (bootstrap + tools - crossed) * EMULATION_FACTOR + crossed + CROSS_FIXED_S + libraries + n * NATIVE_S_PER_INTERPRETER
        native = bootstrap + libraries + tcltk + n * NATIVE_S_PER_INTERPRETER
        cached, uncached = own, own + native
        tests *= 5
    else:  # wholly under QEMU
        cached = uncached = (bootstrap + tools + CROSS_FIXED_S + libraries + n * NATIVE_S_PER_INTERPRETER) * EMULATION_FACTOR
        tests *= 5
    stages = STAGES_GB + n * INTERPRETER_STAGE_GB
    disk = stages * (2 if target.cross_compiles else 1) + IMAGE_GB + n * IMAGE_INTERPRETER_GB + SCRATCH_GB
    return JobEstimate(
        minutes_cached=round(SETUP_MIN + tests + cached * FOUR_CORE_FACTOR / 60),
        minutes_uncached=round(SETUP_MIN + tests + uncached * FOUR_CORE_FACTOR / 60),
        disk_gb=round(disk, 1),
    )


def derived_on(spec: Spec, image: str, arch: str) -> list[str]:
    """The derived images the spec declares on this image×arch. They are built in their parent's
    job, after it and on its engine: a derived image is built FROM the parent's local image ID,
    which no other job has."""
    return [name for name, d in spec.derived.items() if not d.external and d.parent == image and arch in (d.archs or spec.image(image).archs)]


def _spec_argument(spec: Spec) -> str:
    """The file declaring the derived images as the workflow's steps name it (from the checkout)."""
    path = spec.source_file.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def entry(spec: Spec, image: str, arch: str, base: str | None = None, toolchain: str | None = None) -> dict:
    """One job of the matrix: what image.yml's steps read (all strings, the labels a list)."""
    name, runner = runner_for(spec, arch)
    target = resolve_target(spec, image, arch, base=base, toolchain=toolchain, build_host=runner.arch)
    needs_qemu = not runs_natively(arch, runner.arch)
    # Derived images ride on the job of the parent as released (no variant), where the runner
    # runs the arch itself: they are not built emulated or cross-compiled.
    derived = derived_on(spec, image, arch) if not target.variant_suffix and not needs_qemu else []
    return {
        "image": image, "arch": arch, "base": target.base_name, "toolchain": target.toolchain_name,
        "slug": target.slug, "variant": target.variant_suffix, "runner": list(runner.labels), "runner_name": name,
        "build_host": runner.arch, "leg": leg(target),
        # The binfmt handler the runner must have (empty: none), and whether it bootstraps a Debian base.
        "qemu": arch if needs_qemu else "", "debootstrap": "true" if target.base.debootstrap else "",
        # Built and tested after the parent (tests/image: MANYFORGE_TEST_DERIVED), published with it.
        "derived": ",".join(f"{_spec_argument(spec)}:{d}:{arch}" for d in derived), "derived_images": " ".join(derived),
    }  # fmt: skip


def image_entries(spec: Spec, image: str) -> list[dict]:
    """Every job of one image: each arch, and each base or toolchain variant on the arches its
    base has (`variant` is empty for what a release publishes)."""
    declared = spec.image(image)
    choices = [(declared.base, declared.toolchain)] + [(b, declared.toolchain) for b in declared.base_variants]
    choices += [(declared.base, t) for t in declared.toolchain_variants]
    return [
        entry(spec, image, arch, base, toolchain)
        for base, toolchain in choices
        for arch in declared.archs
        if arch in spec.data.bases[base].archs
    ]


def _debootstraps(jobs: list[dict]) -> bool:
    """Whether any job of an image bootstraps a Debian base (and so needs a Debian mirror): a
    pull request without the mirror variable (from a fork) skips the image's jobs."""
    return any(j["debootstrap"] for j in jobs)


def matrix(spec: Spec) -> list[dict[str, str | bool]]:
    """The top-level matrix: one entry per image, its two legs as JSON matrices (an empty leg
    is "": its job is skipped), and whether it bootstraps a Debian base."""
    out: list[dict[str, str | bool]] = []
    _all_derived_have_jobs(spec)
    for name in spec.images:
        jobs = image_entries(spec, name)
        legs = {key: [j for j in jobs if j["leg"] == key] for key in ("native", "cross")}
        out.append({"image": name, **{key: json.dumps({"include": js}) if js else "" for key, js in legs.items()},
                    "debootstrap": _debootstraps(jobs)})  # fmt: skip
    return out


def _all_derived_have_jobs(spec: Spec) -> None:
    """Every derived image of the spec on every arch it declares rides on some job: none is
    silently left unbuilt."""
    problems = []
    for name, d in spec.derived.items():
        if d.external:
            problems.append(f"derived.{name}: its parent is pinned by digest, and the workflow builds derived images in their parent's job; "
                            "build it with `manyforge build` (or give it a parent of the matrix)")
            continue
        archs = d.archs or spec.image(d.parent).archs
        if len(archs) > 1:  # its index is made by the job that publishes its one arch, where its lock is
            problems.append(f"derived.{name}: the workflow publishes derived images of one arch; {len(archs)} declared ({', '.join(archs)})")
        for arch in archs:
            _, runner = runner_for(spec, arch)
            if not runs_natively(arch, runner.arch):
                problems.append(f"derived.{name}: {arch} is cross-built or emulated on its runner ({runner.arch}); derived images build only natively")
    if problems:
        raise SpecError([f"{spec.source_file.name}: {p}" for p in problems])


def canary(spec: Spec, image: str, arch: str) -> list[dict[str, str | bool]]:
    """One image×arch as a one-image matrix (the manual canary run): its job in the native leg,
    so it never waits for another; a cross-compiled arch then builds its native stages itself."""
    job = entry(spec, image, arch)
    return [{"image": image, "native": json.dumps({"include": [job]}), "cross": "", "debootstrap": _debootstraps([job])}]


def estimates(spec: Spec) -> list[tuple[str, str, str, JobEstimate]]:
    """(image, arch, leg, estimate) of every job the workflow runs for the images' own bases."""
    out: list[tuple[str, str, str, JobEstimate]] = []
    for name, image in spec.images.items():
        for arch in image.archs:
            _, runner = runner_for(spec, arch)
            target = resolve_target(spec, name, arch, build_host=runner.arch)
            out.append((name, arch, leg(target), estimate(target)))
    return out


def estimates_table(spec: Spec) -> str:
    """Every job's estimate as the README's markdown table (`invoke matrix --estimates`)."""
    lines = ["| image | arch | leg | minutes (main, cached) | minutes (pull request) | disk GB |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {a} | {leg} | {e.minutes_cached} | {e.minutes_uncached} | {e.disk_gb} |" for name, a, leg, e in estimates(spec)]
    return "\n".join(lines) + "\n"
