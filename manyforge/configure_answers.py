"""Configure answers: what CPython's configure finds on a target for the checks it can only
answer by running a program there (docker/scripts/configure-answers.py says which).

Cross builds take them from configure-answers/<base>.json, the way policies come from real
roots: derived by `invoke configure-answers` (configure's test programs run on the target,
under QEMU), kept with their provenance, re-derived and diffed on demand. A base × arch with
none recorded (the bases that cannot be pulled here) derives them in its own build.

    {"base": "debian12",
     "arches": {"s390x": {"provenance": {"qemu": "...", "base": "...", "derived_with": "..."},
                          "cpython": {"3.13": {"release": "3.13.15", "answers": {"ac_cv_...": "yes"}},
                                      "3.13t": {...}}}}}

A free-threaded key ("3.13t") is kept only where its answers differ from the default build's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from manyforge.spec import REPO_ROOT, SpecError, strict_json

ANSWERS_DIR = REPO_ROOT / "configure-answers"

CacheName = Annotated[str, StringConstraints(pattern=r"^ac_cv_[A-Za-z0-9_]{1,100}$")]
CacheValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.+ -]{0,200}$")]
Minor = Annotated[str, StringConstraints(pattern=r"^3\.[0-9]{1,2}t?$")]
Release = Annotated[str, StringConstraints(pattern=r"^3\.[0-9]{1,2}\.[0-9]{1,3}$")]
Note = Annotated[str, StringConstraints(pattern=r"^[\x20-\x7e]{0,300}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MinorAnswers(_Strict):
    release: Release
    answers: dict[CacheName, CacheValue]


class ArchAnswers(_Strict):
    provenance: dict[Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}$")], Note]
    cpython: dict[Minor, MinorAnswers]


class BaseAnswers(_Strict):
    base: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")]
    arches: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,20}$")], ArchAnswers]


def answers_path(base: str, root: Path = ANSWERS_DIR) -> Path:
    return root / f"{base}.json"


def load(base: str, root: Path = ANSWERS_DIR) -> BaseAnswers | None:
    """The recorded answers of a base, or None where none are recorded."""
    path = answers_path(base, root)
    if not path.exists():
        return None
    try:
        data = BaseAnswers.model_validate(strict_json(path.read_text()))
    except ValidationError as exc:  # before ValueError, whose subclass it is
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError([f"{path}: {where}: {first['msg']}"]) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SpecError([f"{path}: cannot be read: {str(exc)[:200]}"]) from None
    if data.base != base:
        raise SpecError([f"{path}: names base {data.base!r}, not {base!r}"])
    return data


def for_interpreter(data: BaseAnswers | None, arch: str, version: str, free_threaded: bool) -> dict[str, str] | None:
    """The answers a cross build of CPython `version` for `arch` takes, or None (none recorded)."""
    if data is None or arch not in data.arches:
        return None
    minor = ".".join(version.split(".")[:2])
    cpython = data.arches[arch].cpython
    entry = cpython.get(minor + "t") if free_threaded else None
    entry = entry or cpython.get(minor)
    return dict(entry.answers) if entry else None


def merged(
    previous: BaseAnswers | None, base: str, arch: str, provenance: dict[str, str], derived: dict[tuple[str, str, bool], dict[str, str]]
) -> BaseAnswers:
    """`previous` with this arch's answers for the derived minors replaced by `derived` ((minor,
    release, free-threaded) → answers); a free-threaded build is recorded only where it answers
    differently from the default build of its minor."""
    before = previous.arches.get(arch) if previous else None
    cpython: dict[str, MinorAnswers] = dict(before.cpython) if before else {}
    for (minor, release, free_threaded), answers in sorted(derived.items(), key=lambda kv: kv[0][2]):
        key = minor + "t" if free_threaded else minor
        if free_threaded and minor in cpython and cpython[minor].answers == answers:
            cpython.pop(key, None)
            continue
        cpython[key] = MinorAnswers(release=release, answers=answers)
    arches = dict(previous.arches) if previous else {}
    arches[arch] = ArchAnswers(provenance=provenance, cpython=dict(sorted(cpython.items())))
    return BaseAnswers(base=base, arches=dict(sorted(arches.items())))


def differences(old: BaseAnswers | None, new: BaseAnswers, arch: str) -> list[str]:
    """One line per answer of `arch` that is new, gone or changed."""
    before = old.arches.get(arch) if old else None
    lines = []
    minors = sorted(set(before.cpython if before else {}) | set(new.arches[arch].cpython))
    for minor in minors:
        a = before.cpython[minor].answers if before and minor in before.cpython else {}
        b = new.arches[arch].cpython[minor].answers if minor in new.arches[arch].cpython else {}
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                lines.append(f"{arch} {minor} {name}: {a.get(name, '(none)')} -> {b.get(name, '(none)')}")
    return lines


def write(data: BaseAnswers, root: Path = ANSWERS_DIR) -> Path:
    path = answers_path(data.base, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data.model_dump(), indent=1, sort_keys=False) + "\n")
    return path
