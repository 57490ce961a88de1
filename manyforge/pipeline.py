"""The stages chained: what `invoke fetch`, `invoke render` and `invoke build` run.

tasks.py only parses arguments and calls these functions; the tests call them too.
"""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

from manyforge import engine
from manyforge.render import Target, resolve_target, write_context
from manyforge.sources import (
    SourceCache,
    SourceError,
    all_pins,
    cpython_pins,
    fetch_wheels,
    seed_cpython_from_debian,
)
from manyforge.spec import REPO_ROOT, Spec, SpecError

BUILD_DIR = REPO_ROOT / "build"


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
) -> None:
    """Fill the cache with every input the targets need.

    origin: "upstream" (python.org and pip's index), "debian" (CPython from Debian's source
    archive, byte-identical to python.org), or "auto" (upstream, then Debian).
    """
    if seed_dir is not None:
        if not seed_dir.is_dir():
            raise SourceError(f"--from-dir {seed_dir}: not a directory")
        accepted = cache.seed_dir(seed_dir, all_pins(spec))
        log(f"accepted {len(accepted)} file(s) from {seed_dir} by hash")
    if mirror is not None:
        accepted = cache.seed_mirror(mirror, all_pins(spec))
        log(f"accepted {len(accepted)} file(s) from {mirror} by hash")
    tags = sorted({t for target in targets for t in target.interpreters})
    missing = [p for p in cpython_pins(spec, tags) if not cache.has(p)]
    for pin in missing:
        errors = []
        for kind in ("upstream", "debian") if origin == "auto" else (origin,):
            try:
                log(f"fetching {pin.filename} from {kind}")
                if kind == "upstream":
                    assert pin.url is not None
                    cache.fetch_url(pin, pin.url)
                else:
                    seed_cpython_from_debian(cache, [pin])
                break
            except (SourceError, urllib.error.URLError) as exc:
                errors.append(f"{kind}: {exc}")
        else:
            raise SourceError(f"{pin.filename} could not be fetched:\n  " + "\n  ".join(errors))
    for target in targets:
        got = fetch_wheels(spec, cache, target.image, target.arch)
        if got:
            log(f"fetched {len(got)} wheel(s) for {target.slug}")
    log(f"source cache {cache.root} has every input of {', '.join(t.slug for t in targets)}")


def build(spec: Spec, cache: SourceCache, target: Target, origin: str = "auto") -> engine.BuildResult:
    """fetch → context → buildx; nothing is left half-done: the context is rewritten each time."""
    engine.check_prerequisites(target.arch, needs_debootstrap=target.base.debootstrap is not None)
    fetch(spec, cache, [target], origin=origin)
    context = write_context(target, cache, BUILD_DIR / "contexts" / target.slug)
    result = engine.build(target, context, BUILD_DIR / "logs")
    log(f"built {target.slug} in {result.seconds:.0f}s: {', '.join(result.tags)}")
    return result


def targets_for(spec: Spec, image: str | None, arch: str | None, **choices) -> list[Target]:
    """All image×arch pairs that match; `None` means every one (validated against the spec)."""
    names = [image] if image else list(spec.images)
    out = []
    for name in names:
        img = spec.image(name)
        if arch is not None and arch not in img.archs:
            raise SpecError([f"unknown arch {arch!r} for image {name}; choose one of: {', '.join(img.archs)}"])
        for a in [arch] if arch else img.archs:
            out.append(resolve_target(spec, name, a, **choices))
    return out


def ci_matrix(spec: Spec) -> list[dict[str, str]]:
    """Every image×arch, for the GitHub workflow's build matrix."""
    return [
        {"image": name, "arch": arch, "platform": t.platform, "slug": t.slug}
        for name, image in spec.images.items()
        for arch in image.archs
        for t in [resolve_target(spec, name, arch)]
    ]
