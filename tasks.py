"""Command line of the project: `invoke --list`. A thin layer: parse, call manyforge, report.

Every error of the input (images.yaml, --image, --arch, ...) ends the command with one line per
problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import docker.errors
import requests.exceptions
from invoke import Exit, task

from manyforge import configure_answers as configure_answers_module
from manyforge import contract_table as contract_module
from manyforge import pipeline, workflow
from manyforge import policy as policy_module
from manyforge import publish as publish_module
from manyforge.arches import ARCHES
from manyforge.engine import EngineError, build_cache_settings, builder_name, scrub
from manyforge.pipeline import shown
from manyforge.policy import PolicyError
from manyforge.render import render_derived_dockerfile, render_dockerfile
from manyforge.sources import SourceCache, SourceError, write_lock
from manyforge.spec import DEFAULT_SPEC, SpecError, load_spec, lock_path_default

ROOT = Path(__file__).resolve().parent


# Options whose task refuses an empty value itself, with a fuller message (the choices, or the
# parser's own words); every other option given as '' is refused by _guard before the task runs.
_OWN_EMPTY_CHECK = {"action", "arch", "image", "python", "dumps"}


def _problems(problems: list[str]) -> str:
    """One line per problem, scrubbed: a key or file name of the input may hold control
    characters (ESC[2J would clear the terminal) or a secret of the environment."""
    return "\n".join("error: " + " ".join(scrub(p).splitlines()) for p in problems)


def _os_error(exc: OSError) -> str:
    """An error of the system about a path: `<path>: <reason>` on one line."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    reason = exc.strerror or str(exc)
    return _problems([f"{' -> '.join(shown(n) for n in names)}: {reason}" if names else reason])


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _guard(fn):
    """Turn the project's own errors into a clean message and exit status."""

    def wrapper(c, *args, **kwargs):
        # SIGTERM (a CI job cancelled, `kill`) unwinds like Ctrl-C: every clean-up (partial files,
        # a push's work directory, a tool's process group) runs before the task exits.
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminated)
        try:
            for name, value in kwargs.items():
                # `--output ''` is a mistake (a variable that expanded to nothing), never "the default".
                if value == "" and name not in _OWN_EMPTY_CHECK:
                    raise SpecError([f"--{name.replace('_', '-')}: empty; give a value or leave the option out"])
            return fn(c, *args, **kwargs)
        except SpecError as exc:
            raise Exit(_problems(exc.problems), code=2) from None
        except PolicyError as exc:
            raise Exit(_problems(exc.problems), code=1) from None
        except (SourceError, EngineError, publish_module.PublishError, pipeline.OutputError) as exc:
            # Scrubbed: no secret of the environment (COSIGN_PASSWORD, registry tokens) is shown.
            raise Exit(f"error: {scrub(str(exc))}", code=1) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            # The Docker engine's API (a timeout, a refused connection): one line, no traceback.
            raise Exit(f"error: the Docker engine: {scrub(str(exc))[:500]}", code=1) from None
        except BrokenPipeError:
            # `invoke matrix | head`: the reader left; say nothing more, like any filter.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=0) from None
        except OSError as exc:
            # A path the system refuses where no check named the option (a name too long, a
            # directory that may not be read): the path and the system's reason, no traceback.
            raise Exit(_os_error(exc), code=1) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


def _path(value: str, what: str) -> Path:
    """A path the user named (`what`: the option or variable): refused, naming it, when the system
    refuses the name itself (too long, a directory on the way that may not be searched). Whether
    it must exist is the caller's check."""
    try:
        os.stat(value)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        sep = " " if what.startswith("--") else "="  # --key PATH, MANYFORGE_LOCK=PATH
        raise SpecError([f"{what}{sep}{shown(value)}: {exc.strerror}"]) from None
    return Path(value)


def _spec_path(spec_path: str | None) -> str | Path:
    lock = os.environ.get("MANYFORGE_LOCK")
    if lock:  # read later by load_spec, which would not name the variable
        _path(lock, "MANYFORGE_LOCK")
    return spec_path or os.environ.get("MANYFORGE_SPEC") or DEFAULT_SPEC


def _spec(spec_path: str | None):
    """The validated matrix; every image's policy must exist in policies/ for all its arches."""
    spec = load_spec(_spec_path(spec_path))
    policy_module.load_all(spec=spec)
    return spec


def _list(value: str | None, option: str) -> list[str] | None:
    """A comma-separated option: None when not given; given but empty is an error."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SpecError([f"--{option}: empty; give a comma-separated list"])
    return items


def _image(spec, image: str | None) -> str:
    if image is not None and not image.strip():
        raise SpecError(["--image: empty; choose one of: " + ", ".join(spec.images)])
    return image or pipeline.default_image(spec)


@task
def setup(c):
    """Install and start what builds need on a Debian host (engine, buildx, QEMU, debootstrap)."""
    c.run(f"{ROOT}/scripts/setup-host.sh", pty=False)


SPEC_HELP = "matrix file (default: $MANYFORGE_SPEC, else images.yaml)"
BUILD_HOST_HELP = "arch of the machine (or builder node) that builds: x86_64, aarch64, ... (default: this machine's)"
BUILDER_HELP = "buildx builder to build on (default: the engine's own); the result is loaded into this engine"


@task(help={"spec": SPEC_HELP})
@_guard
def lock(c, spec=None):
    """Resolve every tool wheel of every image×arch, and every interpreter's frontend
    (pip, build, ...), through pip's own index configuration; write docker/wheels.lock.json."""
    s = load_spec(_spec_path(spec), check_lock=False)
    skipped = write_lock(s, lock_path_default())
    for line in skipped:
        print(f"no wheel: {line}", file=sys.stderr)
    load_spec(_spec_path(spec))  # the new lock must satisfy every required tool


@task(
    help={
        "image": "one image of images.yaml (default: all)",
        "arch": "one architecture (default: all of the image)",
        "origin": "auto (python.org, then Debian's source archive), upstream or debian",
        "from_dir": "seed from this directory: any file whose sha256 is pinned is accepted",
        "mirror": "seed from this address: <mirror>/<file name>, accepted by sha256",
        "spec": SPEC_HELP,
    }
)
@_guard
def fetch(c, image=None, arch=None, origin="auto", from_dir=None, mirror=None, spec=None):
    """Fill the source cache with the pinned, verified inputs of the chosen images."""
    s = _spec(spec)
    targets = pipeline.targets_for(s, image, arch)
    pipeline.fetch(s, SourceCache(), targets, origin, Path(from_dir) if from_dir is not None else None, mirror)


@task(
    help={
        "image": "image of images.yaml (default: the one this machine builds)",
        "arch": "architecture (default: x86_64)",
        "base": "base variant (default: the image's base)",
        "toolchain": "toolchain variant (default: the image's toolchain)",
        "output": "write here instead of build/dockerfiles/<image>_<arch>/Dockerfile; '-' for stdout",
        "build_host": BUILD_HOST_HELP,
        "spec": SPEC_HELP,
    }
)
@_guard
def render(c, image=None, arch="x86_64", base=None, toolchain=None, output=None, build_host=None, spec=None):
    """Write the Dockerfile of one image×arch for inspection, as the build host would build it."""
    # Checked before any work: a directory, a socket or a name the system refuses.
    if output is not None and output != "-":
        pipeline.check_output(Path(output), "--output")
    s = _spec(spec)
    if image in s.derived:  # from the spec and its lock (`invoke resolve` first)
        derived = pipeline.derived_target(s, image, arch, build_host)
        text, slug = render_derived_dockerfile(derived), derived.slug
    else:
        target = pipeline.targets_for(s, _image(s, image), arch, base=base, toolchain=toolchain, build_host=build_host)[0]
        text, slug = render_dockerfile(target), target.slug
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output) if output is not None else pipeline.BUILD_DIR / "dockerfiles" / slug / "Dockerfile"
    pipeline.write_output(path, text, "--output")
    print(path)


@task(
    name="packages-check",
    help={
        "image": "image of images.yaml (default: the one this machine builds)",
        "arch": "architecture (default: x86_64)",
        "base": "base variant, e.g. ubi9",
        "toolchain": "toolchain variant",
        "spec": SPEC_HELP,
    },
)
@_guard
def packages_check(c, image=None, arch="x86_64", base=None, toolchain=None, spec=None):
    """List the packages an image declares that its base's repositories do not offer (run it
    where those repositories are reachable, e.g. before building a UBI variant); exit 1 if any."""
    s = _spec(spec)
    if image in s.derived:
        derived = pipeline.derived_target(s, image, arch)
        missing = pipeline.packages_check_derived(derived)
        for where, name in missing:
            print(f"{derived.slug}: {where} offers no package {name}")
        if missing:
            raise Exit(f"{derived.slug}: {len(missing)} declared package(s) missing from its parent's repositories", code=1)
        print(f"{derived.slug}: its parent's repositories offer every declared package")
        return
    target = pipeline.targets_for(s, _image(s, image), arch, base=base, toolchain=toolchain)[0]
    missing = pipeline.packages_check(target)
    for where, name in missing:
        print(f"{target.slug}: {where} offers no package {name}")
    if missing:
        raise Exit(f"{target.slug}: {len(missing)} declared package(s) missing from the repositories named above", code=1)
    print(f"{target.slug}: {target.base_name}'s repositories offer every declared package")


@task(
    help={
        "image": "image of images.yaml (default: the one this machine builds)",
        "arch": "architecture (default: x86_64)",
        "python": "comma-separated interpreter tags to build (default: all of the image)",
        "base": "base variant",
        "toolchain": "toolchain variant",
        "origin": "where missing inputs come from: auto, upstream or debian",
        "builder": BUILDER_HELP,
        "build_host": BUILD_HOST_HELP,
        "spec": SPEC_HELP,
    }
)
@_guard
def build(c, image=None, arch="x86_64", python=None, base=None, toolchain=None, origin="auto", builder=None, build_host=None, spec=None):
    """Build one image×arch (fetching its inputs first) and tag it <org>/<image>_<arch>:<YYYY.MM.DD>-<N>
    and :latest, e.g. manyforge/manylinux_2_36_x86_64 (a subset of --python adds -partial)."""
    build_cache_settings()  # a mistake in MANYFORGE_BUILD_CACHE(_PUSH) stops it before anything runs
    builder_name(builder)
    s = _spec(spec)
    if image in s.derived:
        if python or base or toolchain:
            raise SpecError(["--python, --base and --toolchain: a derived image has its parent's; resolve another parent instead"])
        derived = pipeline.derived_target(s, image, arch, build_host)
        pipeline.build_derived(s, SourceCache(), derived, origin=origin, builder=builder)
        return
    target = pipeline.targets_for(
        s, _image(s, image), arch, base=base, toolchain=toolchain, interpreters=_list(python, "python"), build_host=build_host
    )[0]
    pipeline.build(s, SourceCache(), target, origin=origin, builder=builder)


@task(
    help={
        "image": "a derived image (images.yaml's `derived`, or the --spec file's)",
        "arch": "one architecture (default: every arch of the derived image)",
        "spec": SPEC_HELP,
    }
)
@_guard
def resolve(c, image, arch=None, spec=None):
    """Read what a derived image's parent is (AUDITWHEEL_*, os-release, /opt/python) from the
    parent itself, by its image ID, and pin it in derived.lock.json beside the spec file."""
    s = _spec(spec)
    pipeline.resolve_derived(s, image, arch)


@task(
    help={
        "image": "a derived image",
        "arch": "architecture (default: x86_64)",
        "spec": SPEC_HELP,
    }
)
@_guard
def check(c, image, arch="x86_64", spec=None):
    """Run a derived image's own checks in its latest build; exit 1 if any fails."""
    s = _spec(spec)
    target = pipeline.derived_target(s, image, arch)
    failed = pipeline.run_checks(target, target.latest_ref)
    if failed:
        raise Exit("error: " + "\nerror: ".join(failed), code=1)
    print(f"{target.slug}: {len(target.derived.checks)} check(s) passed")


@task(
    help={
        "ref": "any image: ours, a derived one, or pypa's (local, or pinned by digest and pulled)",
        "arch": "the image's arch (default: read from the local image)",
    }
)
@_guard
def contract(c, ref, arch=None):
    """Check the image contract (what cibuildwheel and the images' users rely on) of any image;
    exit 1 if it breaks any part."""
    from manyforge import cli

    code = cli.main(["contract", ref, *(["--arch", arch] if arch else [])])
    if code:
        raise Exit(code=code)


@task(
    name="configure-answers",
    help={
        "image": "image of images.yaml (default: the one this machine builds)",
        "arch": "a cross-compiled architecture, e.g. s390x",
        "python": "comma-separated interpreter tags (default: all of the image)",
        "base": "base variant",
        "toolchain": "toolchain variant",
        "write": "record the answers in configure-answers/<base>.json (default: only show what differs)",
        "spec": SPEC_HELP,
    },
)
@_guard
def configure_answers(c, image=None, arch=None, python=None, base=None, toolchain=None, write=False, spec=None):
    """Re-derive what CPython's configure finds on the target for the checks a cross build
    cannot run (its test programs run on the target, under QEMU) and diff it against
    configure-answers/<base>.json; exit 1 if it differs and --write was not given."""
    if not arch:
        raise Exit("--arch is required: the cross-compiled architecture whose answers to derive", code=2)
    s = _spec(spec)
    target = pipeline.targets_for(
        s, _image(s, image), arch, base=base, toolchain=toolchain, interpreters=_list(python, "python")
    )[0]
    new, changed = pipeline.derive_configure_answers(s, SourceCache(), target)
    for line in changed:
        print(line)
    if write:
        print(f"{target.slug}: {len(changed)} answer(s) changed; written to {configure_answers_module.write(new)}")
    elif changed:
        raise Exit(f"{target.slug}: {len(changed)} answer(s) differ from configure-answers/{target.base_name}.json (--write records them)", code=1)
    else:
        print(f"{target.slug}: the recorded configure answers are what the target answers")


@task(
    positional=["action"],
    help={
        "action": "dump (a Debian root), derive (policies from dumps) or check (a built image)",
        "image": "check: image of images.yaml (default: the one this machine builds)",
        "arch": "check/dump: architecture (default: x86_64)",
        "suite": "dump: Debian suite, e.g. bookworm",
        "output": "dump: where to write the JSON (default: tests/data/dumps/debian-<suite>-<arch>.json)",
        "dumps": "derive: comma-separated dump files or directories",
        "write": "derive: add the derived entries to policies/",
        "spec": SPEC_HELP,
    },
)
@_guard
def policy(c, action, image=None, arch="x86_64", suite=None, output=None, dumps=None, write=False, spec=None):
    """Platform policies: `invoke policy dump|derive|check`."""
    if action == "dump":
        if not suite:
            raise Exit("error: policy dump needs --suite (a Debian suite, e.g. bookworm)", code=2)
        if arch not in ARCHES:
            raise Exit(f"error: unknown arch {arch!r}; choose one of: {', '.join(ARCHES)}", code=2)
        out = Path(output) if output is not None else ROOT / "tests" / "data" / "dumps" / f"debian-{suite}-{arch}.json"
        data = pipeline.policy_dump_debian(suite, arch, out)
        print(f"{out}: {data['libc']['name']} {data['libc']['version']} {data['arch']}, {len(data['libraries'])} libraries")
    elif action == "derive":
        paths, problems = [], []
        label = "--dumps " if dumps is not None else ""
        for item in _list(dumps, "dumps") or [str(ROOT / "tests" / "data" / "dumps")]:
            try:
                mode = os.stat(item).st_mode
                if stat.S_ISDIR(mode):
                    found = sorted(Path(item) / n for n in os.listdir(item) if n.endswith(".json") and not n.startswith("."))
                    paths += found
                    if not found:
                        problems.append(f"{label}{shown(item)}: no *.json dump files in it")
                else:
                    paths.append(Path(item))
            except OSError as exc:
                problems.append(f"{label}{shown(item)}: {exc.strerror}")
        if problems:
            raise SpecError(problems)
        for line in pipeline.policy_derive(paths, write):
            print(line)
    elif action == "check":
        s = _spec(spec)
        target = pipeline.targets_for(s, _image(s, image), arch)[0]
        report, problems = pipeline.policy_check(s, target)
        print("\n".join(report))
        if problems:
            raise Exit("error: " + "\nerror: ".join(problems), code=1)
        print(f"{target.slug} agrees with policies/")
    else:
        raise Exit(f"error: unknown action {action!r}; choose one of: dump, derive, check", code=2)


@task(
    help={
        "spec": SPEC_HELP,
        "image": "canary: only this image (with --arch)",
        "arch": "canary: only this arch of --image, in the native leg",
        "estimates": "print each job's expected minutes and disk instead (the README's table)",
    }
)
@_guard
def matrix(c, spec=None, image=None, arch=None, estimates=False):
    """Print the GitHub workflow's matrix as JSON: one entry per image, each with its jobs in
    two legs (`native`, then `cross`) and the runner of each (images.yaml's `runners`)."""
    s = _spec(spec)
    if estimates:
        print(workflow.estimates_table(s), end="")
        return
    if (image is None) != (arch is None):
        raise SpecError(["--image and --arch: give both (one canary job) or neither (the whole matrix)"])
    entries = workflow.matrix(s) if image is None else workflow.canary(s, _image(s, image), arch)
    print(json.dumps({"include": entries}))


@task(
    help={
        "image": "image of images.yaml (default: the one this machine builds)",
        "arch": "comma-separated architectures, the native one first (default: x86_64 and every emulated arch of the image)",
        "python": "comma-separated interpreter tags (default: all of the image)",
        "builder": BUILDER_HELP,
        "build_host": BUILD_HOST_HELP,
        "spec": SPEC_HELP,
    }
)
@_guard
def benchmark(c, image=None, arch=None, python=None, builder=None, build_host=None, spec=None):
    """Build like a release from an empty build cache (native arch cold, then each emulated arch
    right after), rebuild each unchanged, and print times, sizes and emulated/native ratios."""
    build_cache_settings()  # as for build: before the build cache is emptied
    builder_name(builder)
    s = _spec(spec)
    name = _image(s, image)
    arches = _list(arch, "arch") or ["x86_64"] + [a for a in s.image(name).archs if a not in ("x86_64", "i686")]
    targets = [pipeline.targets_for(s, name, a, interpreters=_list(python, "python"), build_host=build_host)[0] for a in arches]
    for entry in pipeline.benchmark(s, SourceCache(), targets, builder=builder):
        print(
            f"{entry['target']}: {entry['interpreters']} interpreters, build {entry['build_s']} s "
            f"({entry['ratio_to_native']}x native), unchanged rebuild {entry['unchanged_rebuild_s']} s "
            f"({entry['rebuild_percent_of_build']}% of the build), image {entry['image_size_mb']} MB",
            flush=True,
        )


@task(
    help={
        "registry": "where to push: HOST[:PORT]/NAMESPACE, e.g. 127.0.0.1:5000/manyforge (credentials: `docker login`)",
        "image": "image of images.yaml (default: the one this machine builds)",
        "arch": "comma-separated architectures (default: all the image declares)",
        "key": "cosign private key (default: $MANYFORGE_COSIGN_KEY); its password in $COSIGN_PASSWORD",
        "subset": "also create the multi-arch index when only some declared arches are pushed (said in its annotations)",
        "allow_omitted": "publish images built without a declared interpreter no origin of the building site served (said in the index's annotations)",
        "tag": "publish under this release tag (YYYY.MM.DD-N, from `invoke release-tag`) instead of the next free one; "
        "a run with --tag makes the index only when it pushes every arch (or with --subset)",
        "index_only": "push no image; make the index of the arches already pushed under --tag, each verified as signed "
        "and attested with this key; fails when a declared arch is missing (unless --subset)",
        "spec": SPEC_HELP,
    }
)
@_guard
def publish(c, registry, image=None, arch=None, key=None, subset=False, tag=None, index_only=False, spec=None, allow_omitted=False):
    """Push tested images: <image>_<arch>:<YYYY.MM.DD>-<N> and :latest, the index <image>:<tag>,
    signatures, SBOM attestations and the release catalog (also written to build/releases/)."""
    key_path = key if key is not None else os.environ.get("MANYFORGE_COSIGN_KEY")
    if not key_path:
        raise Exit("error: --key (or MANYFORGE_COSIGN_KEY): a cosign private key is needed to sign", code=2)
    key_file = _path(key_path, "--key" if key is not None else "MANYFORGE_COSIGN_KEY")
    s = _spec(spec)
    catalog = publish_module.publish(
        s, _image(s, image), _list(arch, "arch"), registry, key_file, subset=subset, tag=tag, index_only=index_only, allow_omitted=allow_omitted,
        log=lambda line: print(scrub(line), file=sys.stderr, flush=True),
    )  # fmt: skip
    print(json.dumps(catalog, indent=1))


@task(help={"registry": "HOST[:PORT]/NAMESPACE", "image": "one image of images.yaml (default: all, as JSON)",
            "spec": SPEC_HELP})  # fmt: skip
@_guard
def release_tag(c, registry, image=None, spec=None):
    """Print the next free release tag of an image in a registry (one tag for parallel publish
    jobs); without --image, a JSON object of every image's."""
    s = _spec(spec)
    if image is not None:
        print(publish_module.next_tag(s, _image(s, image), registry))
    else:
        print(json.dumps({name: publish_module.next_tag(s, name, registry) for name in s.images}))


@task(
    help={
        "registry": "HOST[:PORT]/NAMESPACE the releases were published to",
        "from_tag": "the older release tag, e.g. 2026.11.23-1",
        "to_tag": "the newer release tag",
        "image": "image of images.yaml (default: the one this machine builds)",
        "arch": "comma-separated architectures (default: all the image declares)",
        "public_key": "cosign public key the SBOM attestations are verified with (default: $MANYFORGE_COSIGN_PUB)",
        "format": "markdown (default) or json",
        "spec": SPEC_HELP,
    }
)
@_guard
def changelog(c, registry, from_tag, to_tag, image=None, arch=None, public_key=None, format="markdown", spec=None):
    """What changed between two releases, per arch: interpreters, tools, toolchain, packages, base."""
    s = _spec(spec)
    if format not in ("markdown", "json"):
        raise Exit(f"error: --format {format[:40]!r}: choose markdown or json", code=2)
    pub = public_key if public_key is not None else os.environ.get("MANYFORGE_COSIGN_PUB")
    if not pub:
        raise Exit("error: --public-key (or MANYFORGE_COSIGN_PUB) is needed to verify the SBOMs", code=2)
    pub_file = _path(pub, "--public-key" if public_key is not None else "MANYFORGE_COSIGN_PUB")
    name = _image(s, image)
    arches = _list(arch, "arch") or list(publish_module.release_image(s, name).archs)
    log = publish_module.changelog(s, registry, name, arches, from_tag, to_tag, pub_file)
    print(json.dumps(log, indent=1) if format == "json" else publish_module.changelog_markdown(log))


@task(help={"write": "rewrite README.md's table (else: exit 1 if it differs from tests/contract.yaml)"})
@_guard
def contract_table(c, write=False):
    """README's "image contract, beside pypa's" table, generated from tests/contract.yaml."""
    data = contract_module.load_contract()
    readme = contract_module.README.read_text(encoding="utf-8")
    try:
        wanted = contract_module.readme_with_table(readme, data)
    except contract_module.ContractError as exc:
        raise Exit(f"error: {exc}", code=1) from None
    missing = contract_module.missing_tests(data)
    if missing:
        raise Exit("error: tests/contract.yaml names tests that do not exist:\n  " + "\n  ".join(missing), code=1)
    if wanted == readme:
        print("README.md: the contract table is current")
    elif write:
        contract_module.README.write_text(wanted, encoding="utf-8")
        print("README.md: contract table rewritten from tests/contract.yaml")
    else:
        raise Exit("README.md: the contract table differs from tests/contract.yaml; run `invoke contract-table --write`", code=1)


@task
def constraints(c):
    """Re-resolve the project's and its tests' Python dependencies (pip's own index
    configuration) and pin them in constraints.txt, which scripts/run.sh installs with."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
               "--report", str(report), f"{ROOT}[test]"]  # fmt: skip
        if subprocess.run(cmd, check=False).returncode != 0:
            raise Exit("error: pip could not resolve the project's dependencies", code=1)
        pins = sorted(
            f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in json.loads(report.read_text())["install"]
            if item["metadata"]["name"] != "manyforge"
        )
    (ROOT / "constraints.txt").write_text(
        "# Generated by `invoke constraints`: the project's and its tests' dependencies, pinned.\n" + "\n".join(pins) + "\n"
    )
    print(f"constraints.txt: {len(pins)} pins")


@task(help={"pytest_args": "extra arguments for pytest, e.g. '-k unit'"})
def test(c, pytest_args=""):
    """Run the whole test suite: unit tests, then images built and checked for real."""
    # --durations: the slowest steps (image builds, cibuildwheel runs, publishing) in every run's log.
    proc = subprocess.run([sys.executable, "-m", "pytest", "--durations=25", *pytest_args.split()], cwd=ROOT, check=False)
    if proc.returncode == 5:
        raise Exit("error: pytest collected no tests", code=1)
    if proc.returncode != 0:
        raise Exit(code=proc.returncode)
