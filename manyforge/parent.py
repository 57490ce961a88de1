"""What a derived image's parent is, read from the parent itself and pinned in a lock file.

The resolve step (pipeline.resolve_derived) runs PROBE in a container of the parent and hands
its output to `facts_from_probe`; the result goes into `derived.lock.json` beside the file that
declares the derived images. Rendering reads only the spec and this lock, so a derived image's
Dockerfile is a pure function of both. The parent is untrusted input like any other: every fact
is validated before it is kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import StringConstraints, ValidationError

from manyforge.spec import Arch, InterpreterTag, SpecError, _format_pydantic, _Model, read_input, strict_json

LOCK_NAME = "derived.lock.json"

Digest = Annotated[str, StringConstraints(strict=True, pattern=r"^sha256:[0-9a-f]{64}$")]
Policy = Annotated[str, StringConstraints(strict=True, pattern=r"^(manylinux_2_[0-9]+|musllinux_1_[0-9]+|manylinux1|manylinux2010|manylinux2014)$")]
Platform = Annotated[str, StringConstraints(strict=True, max_length=60, pattern=r"^(manylinux|musllinux)[0-9_]*_[a-z0-9_]+$")]
OsField = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
# An image reference as the lock keeps it (validated again by the `ref` filter where it is used).
LockedRef = Annotated[str, StringConstraints(strict=True, max_length=300, pattern=r"^[a-z0-9][a-z0-9._:/@-]*$")]
Family = Literal["apt", "dnf", "yum", "apk"]

# Run by /bin/sh in the parent (through its entrypoint): its contract's environment, its release,
# its interpreters and whether it carries an SBOM of ours.
PROBE = (
    "printf 'AUDITWHEEL_POLICY=%s\\nAUDITWHEEL_ARCH=%s\\nAUDITWHEEL_PLAT=%s\\n' "
    '"${AUDITWHEEL_POLICY-}" "${AUDITWHEEL_ARCH-}" "${AUDITWHEEL_PLAT-}"; '
    "echo '--- os-release'; cat /etc/os-release; "
    "echo '--- opt-python'; ls -1 /opt/python; "
    "echo '--- sbom'; if test -f /opt/_internal/sbom.cdx.json; then echo yes; else echo no; fi"
)

# PEP 599's names, as AUDITWHEEL_POLICY spells them on the old policies.
_LEGACY = {"manylinux1": "manylinux_2_5", "manylinux2010": "manylinux_2_12", "manylinux2014": "manylinux_2_17"}


class ParentFacts(_Model):
    """One parent, one arch: what it is, by its image ID."""

    ref: LockedRef  # what was read: the matrix image's local name, or the pinned reference
    image_id: Digest  # the config digest: what the derived image is built FROM
    policy: Policy  # AUDITWHEEL_POLICY
    arch: Arch  # AUDITWHEEL_ARCH
    plat: Platform  # AUDITWHEEL_PLAT
    os_id: OsField
    os_version: OsField
    family: Family
    interpreters: tuple[InterpreterTag, ...]
    sbom: bool  # whether it carries our SBOM (/opt/_internal/sbom.cdx.json)

    @property
    def pep600_policy(self) -> str:
        return _LEGACY.get(self.policy, self.policy)


class DerivedLock(_Model):
    comment: str = ""
    images: dict[Annotated[str, StringConstraints(strict=True, max_length=60, pattern=r"^[a-z0-9][a-z0-9._-]*$")], dict[Arch, ParentFacts]] = {}


def _family(os_id: str, like: str, version: str) -> Family | None:
    ids = {os_id, *like.split()}
    if ids & {"debian", "ubuntu"}:
        return "apt"
    if "alpine" in ids:
        return "apk"
    if ids & {"rhel", "centos", "fedora", "almalinux", "rocky"}:
        return "yum" if version.split(".")[0] == "7" else "dnf"
    return None


def _sections(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {"env": []}
    current = "env"
    for line in output.splitlines():
        if line.startswith("--- "):
            current = line[4:].strip()
            sections[current] = []
        else:
            sections.setdefault(current, []).append(line)
    return sections


def _os_release(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.fullmatch(r"([A-Z_]+)=(.*)", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip().strip("\"'")
    return out


def facts_from_probe(ref: str, image_id: str, arch: str, output: str) -> ParentFacts:
    """The parent's facts from PROBE's output; a parent that does not keep the image contract
    (no AUDITWHEEL_* of the arch asked for, no /opt/python) is refused with what it said."""
    sections = _sections(output)
    env = dict(line.split("=", 1) for line in sections.get("env", []) if "=" in line)
    release = _os_release(sections.get("os-release", []))
    problems = []
    if env.get("AUDITWHEEL_ARCH") != arch:
        problems.append(f"AUDITWHEEL_ARCH is {env.get('AUDITWHEEL_ARCH', '')[:40]!r}, not {arch} (is it a manylinux/musllinux image of {arch}?)")
    family = _family(release.get("ID", ""), release.get("ID_LIKE", ""), release.get("VERSION_ID", ""))
    if family is None:
        problems.append(f"os-release names {release.get('ID', '')[:40]!r}, a distribution of no package family known here (apt, dnf, yum, apk)")
    interpreters = tuple(sorted(line.strip() for line in sections.get("opt-python", []) if line.strip()))
    if not interpreters:
        problems.append("/opt/python is empty or missing")
    if problems:
        raise SpecError([f"parent {ref} ({arch}): {p}" for p in problems])
    data = {
        "ref": ref, "image_id": image_id, "policy": env.get("AUDITWHEEL_POLICY", ""), "arch": arch,
        "plat": env.get("AUDITWHEEL_PLAT", ""), "os_id": release.get("ID", ""), "os_version": release.get("VERSION_ID", "") or "none",
        "family": family, "interpreters": interpreters, "sbom": sections.get("sbom", ["no"])[:1] == ["yes"],
    }  # fmt: skip
    try:
        facts = ParentFacts.model_validate(data)
    except ValidationError as exc:
        raise SpecError([f"parent {ref} ({arch}): {p}" for p in _format_pydantic(Path("parent"), exc, ParentFacts)]) from None
    if facts.plat != f"{facts.policy}_{arch}" and facts.plat != f"{facts.pep600_policy}_{arch}":
        raise SpecError([f"parent {ref} ({arch}): AUDITWHEEL_PLAT {facts.plat} is not {facts.policy}_{arch}"])
    return facts


def lock_path_of(spec_file: Path) -> Path:
    return spec_file.parent / LOCK_NAME


def load_lock(path: Path) -> DerivedLock:
    """The derived images' lock; an empty one when there is none yet."""
    if not path.exists():
        return DerivedLock()
    try:
        raw = strict_json(read_input(path))
    except (ValueError, RecursionError) as exc:
        raise SpecError([f"{path.name}: not a lock ({str(exc)[:120]}); run `invoke resolve` again"]) from None
    try:
        return DerivedLock.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_pydantic(path, exc, DerivedLock)) from None


def write_lock(path: Path, lock: DerivedLock) -> None:
    data = lock.model_dump()
    data["comment"] = "What each derived image's parent is, read from it by `invoke resolve`; rendering reads only this and the spec."
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def facts_for(lock: DerivedLock, name: str, arch: str, lock_file: str) -> ParentFacts:
    found = lock.images.get(name, {}).get(arch)  # type: ignore[call-overload]
    if found is None:
        raise SpecError([f"derived.{name}: no parent resolved for {arch} in {lock_file}; run `invoke resolve --image {name} --arch {arch}`"])
    return found
