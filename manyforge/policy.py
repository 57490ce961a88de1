"""Platform policies: load and validate policies/, derive entries from symbol dumps, compare.

A policy entry has auditwheel's schema (name, aliases, priority, symbol_versions per arch,
lib_whitelist, blacklist). Rules checked on load: every newer policy of a family allows at
least what every older one allows (libraries and symbol versions, per arch), priorities fall
as policies get newer, and every image of images.yaml finds its policy for each of its arches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from manyforge.spec import REPO_ROOT, Spec

POLICY_DIR = REPO_ROOT / "policies"
FAMILY_FILES = {"manylinux": "manylinux-policy.json", "musllinux": "musllinux-policy.json"}


class PolicyError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class PolicyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^(linux|manylinux_2_\d+|musllinux_1_\d+)$")
    aliases: list[str] = []
    priority: int = Field(ge=0, le=100)
    symbol_versions: dict[str, dict[str, list[str]]]
    lib_whitelist: list[str]
    blacklist: dict[str, list[str]] = {}

    @property
    def libc_version(self) -> tuple[int, int]:
        if self.name == "linux":
            return (0, 0)
        _, major, minor = self.name.rsplit("_", 2)
        return (int(major), int(minor))


def version_key(version: str) -> tuple[int, list[int], str]:
    """The order auditwheel's files use: numbers numerically, then names (FLOAT128, TM_1)."""
    if re.fullmatch(r"\d+(\.\d+)*", version):
        return (0, [int(x) for x in version.split(".")], "")
    return (1, [], version)


def load_policies(path: Path) -> list[PolicyEntry]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PolicyError([f"{path.name}: cannot read ({exc})"]) from None
    if not isinstance(raw, list):
        raise PolicyError([f"{path.name}: the top level must be a list of policies"])
    entries, problems = [], []
    for i, item in enumerate(raw):
        try:
            entries.append(PolicyEntry.model_validate(item))
        except ValidationError as exc:
            name = item.get("name", f"[{i}]") if isinstance(item, dict) else f"[{i}]"
            for e in exc.errors():
                where = ".".join(str(p) for p in e["loc"])
                problems.append(f"{path.name}: {name}: {where}: {e['msg']}")
    if problems:
        raise PolicyError(problems)
    problems += check_order(path.name, entries)
    if problems:
        raise PolicyError(problems)
    return entries


def check_order(filename: str, entries: list[PolicyEntry]) -> list[str]:
    """Each newer policy must be a superset of every older one, with a lower priority."""
    problems = []
    ordered = sorted((e for e in entries if e.name != "linux"), key=lambda e: e.libc_version)
    names = [e.name for e in ordered]
    if len(set(names)) != len(names):
        problems.append(f"{filename}: a policy name appears twice: {', '.join(n for n in names if names.count(n) > 1)}")
    for older, newer in zip(ordered, ordered[1:]):
        where = f"{filename}: {newer.name}"
        if newer.priority >= older.priority:
            problems.append(f"{where}: priority {newer.priority} must be below {older.name}'s {older.priority}")
        missing = sorted(set(older.lib_whitelist) - set(newer.lib_whitelist))
        if missing:
            problems.append(f"{where}: lib_whitelist lacks {', '.join(missing)} that older {older.name} allows")
        for arch, prefixes in older.symbol_versions.items():
            if arch not in newer.symbol_versions:
                continue
            for prefix, versions in prefixes.items():
                lacking = [v for v in versions if v not in newer.symbol_versions[arch].get(prefix, [])]
                if lacking:
                    problems.append(
                        f"{where}: {arch}: symbol_versions.{prefix} lacks {', '.join(lacking)} "
                        f"that older {older.name} allows"
                    )
    return problems


def load_all(policy_dir: Path = POLICY_DIR, spec: Spec | None = None) -> dict[str, PolicyEntry]:
    """Every policy of both families; with `spec`, also require each image's policy and arches."""
    out: dict[str, PolicyEntry] = {}
    problems: list[str] = []
    for filename in FAMILY_FILES.values():
        try:
            for entry in load_policies(policy_dir / filename):
                out[entry.name] = entry
        except PolicyError as exc:
            problems += exc.problems
    if spec is not None and not problems:
        problems += check_images_covered(spec, out)
    if problems:
        raise PolicyError(problems)
    return out


def check_images_covered(spec: Spec, policies: dict[str, PolicyEntry]) -> list[str]:
    problems = []
    for name, image in spec.images.items():
        entry = policies.get(image.policy)
        filename = FAMILY_FILES[image.policy.split("_")[0]]
        if entry is None:
            problems.append(f"{filename}: no policy {image.policy}, which images.yaml image {name} declares")
            continue
        for arch in image.archs:
            if arch not in entry.symbol_versions:
                problems.append(f"{filename}: {image.policy}: no symbol_versions for {arch} (image {name} declares it)")
    return problems


def write_policies(path: Path, entries: list[PolicyEntry]) -> None:
    ordered = sorted(entries, key=lambda e: (e.name != "linux", e.libc_version))
    path.write_text(json.dumps([e.model_dump() for e in ordered], indent=1) + "\n")


# --- derivation from dumps ------------------------------------------------------------------


@dataclass(frozen=True)
class Dump:
    label: str
    libc: str
    libc_version: str
    arch: str
    libraries: dict[str, dict[str, list[str]]]

    @classmethod
    def read(cls, path: Path) -> Dump:
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls(
            label=raw.get("label", path.stem),
            libc=raw["libc"]["name"],
            libc_version=raw["libc"]["version"],
            arch=raw["arch"],
            libraries=raw["libraries"],
        )

    def versions(self) -> dict[str, set[str]]:
        """Symbol versions by prefix over all libraries (GLIBC comes from libc, libm, ...)."""
        out: dict[str, set[str]] = {}
        for prefixes in self.libraries.values():
            for prefix, versions in prefixes.items():
                out.setdefault(prefix, set()).update(versions)
        return out


@dataclass
class Derivation:
    entries: list[PolicyEntry]
    report: list[str] = field(default_factory=list)


def policy_name_of(dump: Dump) -> str:
    if dump.libc == "glibc":
        return "manylinux_" + dump.libc_version.replace(".", "_")
    major, minor = dump.libc_version.split(".")[:2]
    return f"musllinux_{major}_{minor}"


def derive(dumps: list[Dump], published: list[PolicyEntry]) -> Derivation:
    """Compute policies from dumps the way perennial manylinux does.

    1. Dumps sharing a libc version are intersected per arch: a version is allowed only if
       every distribution with that libc provides it.
    2. Each policy then also allows everything every older policy allows (older ⊆ newer).
    3. Published policies are never changed; where a dump lacks something a published policy
       allows, that is reported as a contradiction.
    """
    report: list[str] = []
    groups: dict[str, list[Dump]] = {}
    for dump in dumps:
        groups.setdefault(policy_name_of(dump), []).append(dump)
    by_name = {p.name: p for p in published}
    derived: dict[str, PolicyEntry] = {}
    for name, members in groups.items():
        libs = set.intersection(*(set(d.libraries) for d in members))
        symbol_versions: dict[str, dict[str, list[str]]] = {}
        for arch in sorted({d.arch for d in members}):
            of_arch = [d.versions() for d in members if d.arch == arch]
            prefixes = set.intersection(*(set(v) for v in of_arch))
            symbol_versions[arch] = {
                p: sorted(set.intersection(*(v[p] for v in of_arch)), key=version_key) for p in sorted(prefixes)
            }
        minor = int(name.rsplit("_", 1)[1])
        derived[name] = PolicyEntry(
            name=name, priority=max(1, 92 - minor) if name.startswith("manylinux") else max(1, 100 - 10 * (minor - 1)),
            symbol_versions=symbol_versions, lib_whitelist=sorted(libs),
        )  # fmt: skip
        if name in by_name:
            report += _contradictions(by_name[name], members)
    # Superset rule, oldest first, over published and new entries together.
    combined = {**derived, **by_name}
    ordered = sorted((e for e in combined.values() if e.name != "linux"), key=lambda e: e.libc_version)
    result: list[PolicyEntry] = [by_name["linux"]] if "linux" in by_name else []
    previous: PolicyEntry | None = None
    for entry in ordered:
        if entry.name not in by_name and previous is not None and previous.name.split("_")[0] == entry.name.split("_")[0]:
            entry = _widen(entry, previous)
        result.append(entry)
        previous = entry
    return Derivation(result, report)


def _widen(entry: PolicyEntry, older: PolicyEntry) -> PolicyEntry:
    versions = {arch: {p: list(v) for p, v in prefixes.items()} for arch, prefixes in entry.symbol_versions.items()}
    for arch, prefixes in versions.items():
        for prefix, vs in older.symbol_versions.get(arch, {}).items():
            prefixes[prefix] = sorted(set(prefixes.get(prefix, [])) | set(vs), key=version_key)
    whitelist = sorted(set(entry.lib_whitelist) | set(older.lib_whitelist))
    blacklist = {**older.blacklist, **entry.blacklist}
    return entry.model_copy(update={"symbol_versions": versions, "lib_whitelist": whitelist, "blacklist": blacklist})


def _contradictions(published: PolicyEntry, dumps: list[Dump]) -> list[str]:
    out = []
    for dump in dumps:
        allowed = published.symbol_versions.get(dump.arch)
        if allowed is None:
            continue
        have = dump.versions()
        for prefix, versions in allowed.items():
            lacking = [v for v in versions if v not in have.get(prefix, set())]
            if lacking:
                out.append(
                    f"{published.name} ({dump.arch}): dump {dump.label} lacks {prefix} {', '.join(lacking)} "
                    f"that the published policy allows"
                )
    return out


def compare(ours: PolicyEntry, theirs: PolicyEntry) -> list[str]:
    """Every difference between two entries of the same name, one line each."""
    diffs = []
    if ours.priority != theirs.priority:
        diffs.append(f"{ours.name}: priority {ours.priority} vs {theirs.priority}")
    if ours.aliases != theirs.aliases:
        diffs.append(f"{ours.name}: aliases {ours.aliases} vs {theirs.aliases}")
    for lib in sorted(set(ours.lib_whitelist) ^ set(theirs.lib_whitelist)):
        diffs.append(f"{ours.name}: lib_whitelist: {lib} only in {'ours' if lib in ours.lib_whitelist else 'auditwheel'}")
    for arch in sorted(set(ours.symbol_versions) | set(theirs.symbol_versions)):
        a, b = ours.symbol_versions.get(arch), theirs.symbol_versions.get(arch)
        if a is None or b is None:
            diffs.append(f"{ours.name}: {arch}: only in {'ours' if b is None else 'auditwheel'}")
            continue
        for prefix in sorted(set(a) | set(b)):
            only_a = sorted(set(a.get(prefix, [])) - set(b.get(prefix, [])), key=version_key)
            only_b = sorted(set(b.get(prefix, [])) - set(a.get(prefix, [])), key=version_key)
            if only_a:
                diffs.append(f"{ours.name}: {arch}: {prefix} {', '.join(only_a)} only in ours")
            if only_b:
                diffs.append(f"{ours.name}: {arch}: {prefix} {', '.join(only_b)} only in auditwheel")
    if set(ours.blacklist) != set(theirs.blacklist):
        diffs.append(f"{ours.name}: blacklist covers {sorted(ours.blacklist)} vs {sorted(theirs.blacklist)}")
    return diffs


def auditwheel_policies(wheel: Path) -> dict[str, PolicyEntry]:
    """The policies bundled in a pinned auditwheel wheel, read straight from the wheel file."""
    import zipfile

    out = {}
    with zipfile.ZipFile(wheel) as whl:
        for filename in FAMILY_FILES.values():
            for item in json.loads(whl.read(f"auditwheel/policy/{filename}")):
                out[item["name"]] = PolicyEntry.model_validate(item)
    return out


# --- checking a built image against its policy -----------------------------------------------


def policy_version(tag: str, arch: str) -> tuple[int, int]:
    """'manylinux_2_31_x86_64' -> (2, 31): older libc means more compatible."""
    m = re.fullmatch(rf"(?:manylinux|musllinux)_(\d+)_(\d+)_{re.escape(arch)}", tag)
    if not m:
        return (999, 999)  # 'linux_<arch>' or anything unknown: compatible with nothing
    return (int(m.group(1)), int(m.group(2)))


def check_image(
    policy_name: str, arch: str, dump: dict[str, Any], probes: dict[str, dict[str, str]], policies: dict[str, PolicyEntry]
) -> tuple[list[str], list[str]]:
    """Compare an image's dump and probe results with its policy: (report lines, problems)."""
    report, problems = [], []
    entry = policies[policy_name]
    want = ".".join(str(x) for x in entry.libc_version)
    libc = dump["libc"]
    if not libc["version"].startswith(want):
        problems.append(f"{policy_name}: the image's {libc['name']} is {libc['version']}, the policy is for {want}")
    allowed = entry.symbol_versions.get(arch, {})
    for lib, prefixes in sorted(dump["libraries"].items()):
        if lib not in entry.lib_whitelist:
            continue
        for prefix, versions in prefixes.items():
            extra = [v for v in versions if v not in allowed.get(prefix, [])]
            if extra and prefix in allowed:
                problems.append(
                    f"{policy_name} ({arch}): the image's {lib} defines {prefix} {', '.join(extra)}, "
                    f"beyond what the policy allows; wheels built here could need them"
                )
    own = entry.libc_version
    for probe, result in sorted(probes.items()):
        if "policy" in result:
            fits = policy_version(result["policy"], arch) <= own
            report.append(f"probe {probe}: {result['policy']} ({'ok' if fits else 'NEEDS MORE THAN THE POLICY'})")
            if not fits:
                problems.append(f"probe {probe} needs {result['policy']}, more than the image's {policy_name}")
        elif "skipped" in result:
            report.append(f"probe {probe}: skipped ({result['skipped']})")
        else:
            problems.append(f"probe {probe}: {result.get('error')}: {result.get('output', '')[-500:]}")
    return report, problems
