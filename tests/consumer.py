"""What the pinned cibuildwheel asks of an image, from cibuildwheel itself.

The identifiers come from cibuildwheel's own `resources/build-platforms.toml` through its own
selector (`BuildSelector` with every enable group) and `get_python_configurations`, and the
pinned images from its `pinned_docker_images.cfg` through its own reader: bumping cibuildwheel
to a release that adds an interpreter, an arch or a pinned image changes what these return,
never a list of ours. Shared by the unit test (rendered catalogs) and the image tests (a built
image's catalog and /opt/python).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import cibuildwheel
from cibuildwheel.architecture import Architecture
from cibuildwheel.options import _get_pinned_container_images
from cibuildwheel.platforms.linux import get_python_configurations
from cibuildwheel.selector import BuildSelector, EnableGroup

VERSION = cibuildwheel.__version__
EVERYTHING = BuildSelector(build_config="*", skip_config="", enable=EnableGroup.all_groups())


@dataclass(frozen=True)
class Wanted:
    """One build identifier of cibuildwheel for an image's arch and libc."""

    identifier: str  # e.g. pp311-manylinux_x86_64
    python: str  # the language version cibuildwheel expects, e.g. 3.11
    path: str  # where it looks for it, /opt/python/<tag>

    @property
    def tag(self) -> str:
        return PurePosixPath(self.path).name


def wanted(libc: str, arch: str) -> list[Wanted]:
    """Every Linux identifier (all groups enabled) cibuildwheel builds on this arch and libc."""
    platform = "manylinux" if libc == "glibc" else "musllinux"
    return [
        Wanted(c.identifier, c.version, c.path_str)
        for c in get_python_configurations(EVERYTHING, {Architecture(arch)})
        if c.identifier.split("-", 1)[1] == f"{platform}_{arch}"
    ]


def pinned_images() -> dict[tuple[str, str], str]:
    """(image, arch) -> the reference cibuildwheel pins, over all its sections (pypy_x86_64 is x86_64)."""
    pinned = _get_pinned_container_images()
    return {
        (image, section.removeprefix("pypy_")): ref
        for section in pinned.sections()
        for image, ref in pinned[section].items()
    }


def gaps(want: list[Wanted], carried: set[str], catalog: dict[str, Any], arch: str) -> list[str]:
    """What cibuildwheel would fail on: identifiers the image neither carries in /opt/python, nor
    offers to `manylinux-interpreters ensure` on this arch (with the Python version cibuildwheel
    expects), nor declares as not built at this site (catalog `not_built`)."""
    offered = catalog.get("downloadable", {})
    not_built = catalog.get("not_built", {})
    problems = []
    for w in want:
        if PurePosixPath(w.path).parent != PurePosixPath("/opt/python"):
            problems.append(f"{w.identifier}: cibuildwheel looks in {w.path}, not under /opt/python")
        elif w.tag in carried:
            continue
        elif w.tag in offered:
            entry = offered[w.tag]
            if entry.get("python") != w.python:
                problems.append(f"{w.identifier}: {w.tag} is offered as Python {entry.get('python')}, cibuildwheel expects {w.python}")
            if not entry.get("url") or not entry.get("sha256"):
                problems.append(f"{w.identifier}: {w.tag} has no pinned file for {arch}")
        elif w.tag in not_built:
            continue
        else:
            problems.append(f"{w.identifier}: no {w.path}: neither carried, nor offered by ensure, nor declared as not built")
    return problems
