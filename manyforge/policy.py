"""Platform policies: load and validate policies/, derive entries from symbol dumps, compare.

A policy entry has auditwheel's schema (name, aliases, priority, symbol_versions per arch,
lib_whitelist, blacklist). Rules checked on load: every newer policy of a family allows at
least what every older one allows (libraries and symbol versions, per arch), priorities fall
as policies get newer, and every image of images.yaml finds its policy for each of its arches.

Policy files and dumps are checked where they are read (`load_policies`, `Dump.read`): a file that
is not a sane, UTF-8 JSON file of the right shape gives a PolicyError naming the file, the key
path and what is expected, so nothing after loading re-checks them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator

from manyforge.arches import Arch
from manyforge.spec import REPO_ROOT, BadJSON, Spec, SpecError, read_input, strict_json

POLICY_DIR = REPO_ROOT / "policies"
FAMILY_FILES = {"manylinux": "manylinux-policy.json", "musllinux": "musllinux-policy.json"}
# Policy files are ~100 kB and dumps a few kB; anything this big is a mistake (or an attack).
MAX_INPUT_BYTES = 16 << 20
QUOTE_LIMIT = 100  # characters of an offending value quoted in a message


class PolicyError(Exception):
    """A policy file or dump is unusable, or policies contradict; one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# The words error messages use for each pattern below (a regular expression says little to a user).
_FORMS: dict[str, str] = {}


def _form(pattern: str, described: str) -> StringConstraints:
    _FORMS[pattern] = described
    return StringConstraints(strict=True, pattern=pattern)


_POLICY_NAME = r"^(linux|manylinux_2_\d+|musllinux_1_\d+)$"
PolicyName = Annotated[str, _form(_POLICY_NAME, "linux, manylinux_2_<minor> or musllinux_1_<minor>")]
ArchName = Annotated[str, _form(r"^[a-z][a-z0-9_]*$", "an architecture such as x86_64")]
Alias = Annotated[str, _form(r"^(manylinux|musllinux)[a-z0-9_]*$", "a platform tag such as manylinux2014")]
Soname = Annotated[str, _form(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.so(\.\d+)*$", "a library soname such as libc.so.6")]
VersionPrefix = Annotated[str, _form(r"^[A-Z]+$", "a version prefix in capitals such as GLIBC or CXXABI")]
SymbolVersion = Annotated[str, _form(r"^[A-Za-z0-9][A-Za-z0-9_.]*$", "a symbol version such as 2.17, 3.4.30 or TM_1")]
SymbolName = Annotated[str, _form(r"^[A-Za-z_][A-Za-z0-9_.]*$", "a symbol name such as __cxa_thread_atexit_impl")]
LibcVersion = Annotated[str, _form(r"^\d+(\.\d+)+$", "a version such as 2.36 or 1.2.5")]
Label = Annotated[str, _form(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", "a name such as debian-bookworm-x86_64")]
MuslLoader = Annotated[str, _form(r"^ld-musl-[a-z0-9_]+\.so\.1$", "a musl loader file name such as ld-musl-x86_64.so.1")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PolicyEntry(_Strict):
    name: PolicyName
    aliases: list[Alias] = []
    priority: int = Field(ge=0, le=100)
    symbol_versions: dict[ArchName, dict[VersionPrefix, list[SymbolVersion]]]
    lib_whitelist: list[Soname]
    blacklist: dict[Soname, list[SymbolName]] = {}

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


# --- reading input files: every check happens here, once ------------------------------------


def _parse_json(text: str, filename: str) -> Any:
    if not text.strip():
        raise PolicyError([f"{filename}: the file is empty; expected JSON"])
    try:
        return strict_json(text)
    except json.JSONDecodeError as exc:
        raise PolicyError([f"{filename}: line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"]) from None
    except BadJSON as exc:
        raise PolicyError([f"{filename}: not valid JSON ({exc})"]) from None
    except RecursionError:
        raise PolicyError([f"{filename}: not usable JSON (nested too deeply)"]) from None
    except ValueError:  # Python refuses to convert integers of thousands of digits
        raise PolicyError([f"{filename}: not usable JSON (a number has too many digits)"]) from None


def _read_json(path: Path) -> Any:
    """A JSON input file, refused with a message naming it if it is not a regular, sanely sized,
    UTF-8 file holding one JSON value."""
    try:
        text = read_input(path, MAX_INPUT_BYTES)
    except SpecError as exc:
        raise PolicyError(exc.problems) from None
    return _parse_json(text, path.name)


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 3] + "..."


def _key_path(loc: tuple[Any, ...]) -> str:
    """('libraries', 'libc.so.6', 'GLIBC', 3) -> "libraries['libc.so.6'].GLIBC[3]"."""
    out = ""
    for part in loc:
        if part == "[key]" or str(part).startswith(("function-", "literal[")):  # pydantic's labels
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,39}", part):
            out += f".{part}" if out else part
        else:
            out += f"[{_quote(part)}]"
    return out


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    model = root
    for part in loc[:-1]:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = info.annotation if info else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return ", ".join(model.model_fields)


def _format_errors(prefix: str, err: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem: '<file>: <key path>: <what is wrong and what is expected>'."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = f"{prefix}: {_key_path(loc) or '(top level)'}"
        got = _quote(e.get("input"))
        if loc and loc[-1] == "[key]":
            got = f"the key {got}"
        if e["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key; allowed keys here: {_allowed_keys(root, loc)}")
        elif e["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        elif e["type"] == "literal_error":
            problems.append(f"{where}: {got} is not allowed; {e['msg'].replace('Input should be', 'expected')}")
        elif e["type"] == "model_type":  # not an object where one is expected
            problems.append(f"{where}: expected an object with keys {_allowed_keys(root, (*loc, ''))} (got {got})")
        elif e["type"] == "string_pattern_mismatch":
            pattern = e["ctx"]["pattern"]
            problems.append(f"{where}: {got} is not {_FORMS.get(pattern, f'of the form {pattern}')}")
        else:
            msg = e["msg"].removeprefix("Value error, ").replace(" after validation", "")
            problems.append(f"{where}: {msg} (got {got})")
    return problems


def _policy_entries(filename: str, raw: Any) -> list[PolicyEntry]:
    if not isinstance(raw, list) or not raw:
        raise PolicyError([f"{filename}: the top level must be a non-empty list of policies (got {_quote(raw)})"])
    entries, problems = [], []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            keys = ", ".join(PolicyEntry.model_fields)
            problems.append(f"{filename}: [{i}]: a policy must be an object with keys {keys} (got {_quote(item)})")
            continue
        try:
            entries.append(PolicyEntry.model_validate(item))
        except ValidationError as exc:
            name = item.get("name")
            label = name if isinstance(name, str) and re.match(_POLICY_NAME, name) else f"[{i}]"
            problems += _format_errors(f"{filename}: {label}", exc, PolicyEntry)
    if problems:
        raise PolicyError(problems)
    return entries


def load_policies(path: Path) -> list[PolicyEntry]:
    entries = _policy_entries(path.name, _read_json(path))
    problems = check_order(path.name, entries)
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
    for older, newer in pairwise(ordered):
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
            problems.append(f"{filename}: no policy {image.policy}, which {spec.path.name} image {name} declares")
            continue
        for arch in image.archs:
            if arch not in entry.symbol_versions:
                problems.append(f"{filename}: {image.policy}: no symbol_versions for {arch} (image {name} declares it)")
    return problems


def write_policies(path: Path, entries: list[PolicyEntry]) -> None:
    ordered = sorted(entries, key=lambda e: (e.name != "linux", e.libc_version))
    path.write_text(json.dumps([e.model_dump() for e in ordered], indent=1) + "\n")


# --- derivation from dumps ------------------------------------------------------------------


class DumpLibc(_Strict):
    name: Literal["glibc", "musl"]
    version: LibcVersion
    loader: MuslLoader | None = None  # musl: the loader the version was read from

    @field_validator("version")
    @classmethod
    def _names_a_policy(cls, version: str, info: ValidationInfo) -> str:
        """The version must give a policy name: glibc 2.36 -> manylinux_2_36, musl 1.2.5 -> musllinux_1_2."""
        name = info.data.get("name")
        if name == "glibc" and not re.fullmatch(r"2\.\d+", version):
            raise ValueError("a glibc version is 2.<minor>, such as 2.36")
        if name == "musl" and not re.fullmatch(r"1\.[1-9]\d*\.\d+", version):
            raise ValueError("a musl version is 1.<minor>.<patch> with minor 1 or more, such as 1.2.5")
        return version


class DumpFile(_Strict):
    """What scripts/calculate_symbol_versions.py writes."""

    label: Label | None = None
    libc: DumpLibc
    arch: Arch
    libraries: dict[Soname, dict[VersionPrefix, list[SymbolVersion]]] = Field(min_length=1)


@dataclass(frozen=True)
class Dump:
    label: str
    libc: str
    libc_version: str
    arch: str
    libraries: dict[str, dict[str, list[str]]]

    @classmethod
    def read(cls, path: Path) -> Dump:
        """A dump file, validated; PolicyError names the file and the key path of each problem."""
        return cls.from_data(_read_json(path), path.name, default_label=path.stem)

    @classmethod
    def from_data(cls, raw: Any, source: str, default_label: str = "dump") -> Dump:
        if not isinstance(raw, dict):
            keys = ", ".join(DumpFile.model_fields)
            raise PolicyError([f"{source}: the top level must be an object with keys {keys} (got {_quote(raw)})"])
        try:
            data = DumpFile.model_validate(raw)
        except ValidationError as exc:
            raise PolicyError(_format_errors(source, exc, DumpFile)) from None
        return cls(
            label=data.label or default_label,
            libc=data.libc.name,
            libc_version=data.libc.version,
            arch=data.arch,
            libraries=data.libraries,
        )

    def versions(self) -> dict[str, set[str]]:
        """Symbol versions by prefix over all libraries (GLIBC comes from libc, libm, ...)."""
        out: dict[str, set[str]] = {}
        for prefixes in self.libraries.values():
            for prefix, versions in prefixes.items():
                out.setdefault(prefix, set()).update(versions)
        return out


def read_dumps(paths: list[Path]) -> list[Dump]:
    """Every dump, with the problems of all files reported together."""
    dumps, problems = [], []
    for path in paths:
        try:
            dumps.append(Dump.read(path))
        except PolicyError as exc:
            problems += exc.problems
    if problems:
        raise PolicyError(problems)
    return dumps


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
            text = whl.read(f"auditwheel/policy/{filename}").decode("utf-8")
            for entry in _policy_entries(f"{wheel.name}:{filename}", _parse_json(text, f"{wheel.name}:{filename}")):
                out[entry.name] = entry
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
