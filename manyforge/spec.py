"""Stage 1: load images.yaml (and the wheel lock) into frozen, validated data.

Everything downstream reads these objects; nothing else parses YAML. Loading collects every
problem it finds and raises one SpecError listing them all, each naming the file, the key path
and what is allowed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError, model_validator

from manyforge.arches import Arch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "images.yaml"
DEFAULT_LOCK = REPO_ROOT / "docker" / "wheels.lock.json"

Sha256 = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")]
Version = Annotated[str, StringConstraints(strict=True, pattern=r"^\d+(\.\d+)*$")]
Str = Annotated[str, StringConstraints(strict=True, min_length=1)]


class SpecError(Exception):
    """images.yaml (or the wheel lock) is invalid; `problems` has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CPythonSource(_Model):
    url: Annotated[str, StringConstraints(strict=True, pattern=r"^https://\S+/Python-\d+\.\d+\.\d+\.(tgz|tar\.xz)$")]
    sha256: Sha256

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


class Interpreter(_Model):
    cpython: Version
    free_threaded: StrictBool = False


class Base(_Model):
    family: Literal["yum", "dnf", "apk", "apt"]
    image: Annotated[str, StringConstraints(strict=True, pattern=r"^[^@\s]+@sha256:[0-9a-f]{64}$")] | None = None
    debootstrap: Name | None = None
    archs: tuple[Arch, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> Base:
        if (self.image is None) == (self.debootstrap is None):
            raise ValueError("give exactly one of 'image' (name@sha256:<digest>) or 'debootstrap' (a Debian suite)")
        return self


class Toolchain(_Model):
    gcc: Version
    prefix: Str | None = None
    packages: tuple[Name, ...] = Field(min_length=1)
    # apt family: Debian's cross compiler of the same GCC (package `<cross>-<gnu triplet>`). It
    # runs on the build host's CPU inside emulated builds, where QEMU would run the compiler.
    cross: Name | None = None


class Libc(_Model):
    name: Literal["glibc", "musl"]
    version: Version


class Image(_Model):
    policy: Annotated[str, StringConstraints(strict=True, pattern=r"^(manylinux_2_\d+|musllinux_1_\d+)$")]
    libc: Libc
    base: Name
    base_variants: tuple[Name, ...] = ()
    toolchain: Name
    toolchain_variants: tuple[Name, ...] = ()
    archs: tuple[Arch, ...] = Field(min_length=1)
    interpreters: tuple[Name, ...] = Field(min_length=1)
    tools_interpreter: Name
    tools: tuple[Name, ...] = ()  # must have a wheel on every arch of the image
    optional_tools: tuple[Name, ...] = ()  # installed on the arches their project publishes wheels for
    tool_versions: dict[Name, Version] = {}  # overrides of the top-level tool versions


class SpecFile(_Model):
    org: Name
    cpython: dict[Version, CPythonSource]
    interpreters: dict[Annotated[str, StringConstraints(pattern=r"^cp3\d+-cp3\d+t?$")], Interpreter]
    tools: dict[Name, Version]
    bases: dict[Name, Base]
    toolchains: dict[Name, Toolchain]
    images: dict[Name, Image] = Field(min_length=1)


@dataclass(frozen=True)
class LockedFile:
    name: str  # distribution name
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Spec:
    """The validated matrix plus its wheel lock; the input of every later stage."""

    path: Path
    data: SpecFile
    wheels: dict[str, tuple[LockedFile, ...]]  # platform tag -> locked files

    @property
    def images(self) -> dict[str, Image]:
        return self.data.images

    def image(self, name: str) -> Image:
        if name not in self.data.images:
            raise SpecError([f"unknown image {name!r}; choose one of: {', '.join(self.data.images)}"])
        return self.data.images[name]

    def wheel_platform(self, image: Image, arch: str) -> str:
        """The lock key for an image×arch: its own policy tag."""
        return f"{image.policy}_{arch}"

    def tool_requirements(self, image: Image) -> list[tuple[str, str, bool]]:
        """(name, version, optional) of every tool an image installs."""
        return tool_requirements(self.data, image)


def tool_requirements(spec: SpecFile, image: Image) -> list[tuple[str, str, bool]]:
    out = []
    for names, optional in ((image.tools, False), (image.optional_tools, True)):
        for name in names:
            out.append((name, image.tool_versions.get(name, spec.tools.get(name, "")), optional))
    return out


# --- YAML with duplicate-key detection ------------------------------------------------------


class _DuplicateKey(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                    f"(first defined on line {seen[key] + 1})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):  # pydantic's validator labels
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _allowed_keys(model: type[BaseModel] | None) -> str:
    return ", ".join(model.model_fields) if model else ""


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class a location points into, to list the allowed keys of an unknown key."""
    model: Any = SpecFile
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            model = annotation
            args = getattr(annotation, "__args__", ())
            if args and getattr(annotation, "__origin__", None) is dict:
                model = args[1]
            continue
        if isinstance(model, type) and issubclass(model, BaseModel):
            continue  # a dict key: stay on the value model
        return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_pydantic(path: Path, err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = f"{path.name}: {_key_path(loc)}"
        if e["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key; allowed keys here: {_allowed_keys(_model_at(loc))}")
        elif e["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        elif e["type"] in ("literal_error", "enum"):
            problems.append(f"{where}: {e['input']!r} is not allowed; {e['msg'].replace('Input should be', 'expected')}")
        elif e["type"] == "string_pattern_mismatch":
            problems.append(f"{where}: {e['input']!r} does not match the required form {e['ctx']['pattern']}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg} (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else f"{where}: {msg}")
    return problems


# --- cross-references -----------------------------------------------------------------------


def _interpreter_tag_matches(tag: str, interp: Interpreter) -> bool:
    major, minor = interp.cpython.split(".")[:2]
    expected = f"cp{major}{minor}-cp{major}{minor}{'t' if interp.free_threaded else ''}"
    return tag == expected


def _cross_check(
    path: Path, spec: SpecFile, wheels: dict[str, tuple[LockedFile, ...]], lock_path: Path, check_lock: bool
) -> list[str]:
    f = path.name
    problems: list[str] = []
    for tag, interp in spec.interpreters.items():
        if interp.cpython not in spec.cpython:
            problems.append(
                f"{f}: interpreters.{tag}.cpython: no pinned source for CPython {interp.cpython}; "
                f"pinned: {', '.join(spec.cpython)}"
            )
        if not _interpreter_tag_matches(tag, interp):
            problems.append(
                f"{f}: interpreters.{tag}: tag does not match CPython {interp.cpython}"
                f"{' (free-threaded)' if interp.free_threaded else ''}"
            )
    for name, image in spec.images.items():
        at = f"{f}: images.{name}"
        kind, _, number = image.policy.partition("_")
        want_libc = "glibc" if kind == "manylinux" else "musl"
        if image.libc.name != want_libc:
            problems.append(f"{at}.libc.name: {image.policy} needs {want_libc}, not {image.libc.name}")
        elif not (image.libc.version == number.replace("_", ".") or image.libc.version.startswith(number.replace("_", ".") + ".")):
            problems.append(f"{at}.libc.version: {image.libc.version} does not match policy {image.policy}")
        bases = [("base", image.base)] + [(f"base_variants[{i}]", b) for i, b in enumerate(image.base_variants)]
        for key, base_name in bases:
            base = spec.bases.get(base_name)
            if base is None:
                problems.append(f"{at}.{key}: unknown base {base_name!r}; defined bases: {', '.join(spec.bases)}")
                continue
            if base.family != spec.bases.get(image.base, base).family:
                problems.append(f"{at}.{key}: variant {base_name!r} is of family {base.family}, the image's base is not")
            for i, arch in enumerate(image.archs):
                if arch not in base.archs:
                    problems.append(
                        f"{at}.archs[{i}]: base {base_name!r} has no {arch}; it has: {', '.join(base.archs)}"
                    )
        for key, tc in [("toolchain", image.toolchain)] + [
            (f"toolchain_variants[{i}]", t) for i, t in enumerate(image.toolchain_variants)
        ]:
            if tc not in spec.toolchains:
                problems.append(f"{at}.{key}: unknown toolchain {tc!r}; defined: {', '.join(spec.toolchains)}")
        if len(set(image.archs)) != len(image.archs):
            problems.append(f"{at}.archs: an architecture is listed twice")
        for i, tag in enumerate(image.interpreters):
            if tag not in spec.interpreters:
                problems.append(f"{at}.interpreters[{i}]: unknown interpreter {tag!r}; defined: {', '.join(spec.interpreters)}")
        if image.tools_interpreter not in image.interpreters:
            problems.append(f"{at}.tools_interpreter: {image.tools_interpreter!r} is not among the image's interpreters")
        elif spec.interpreters.get(image.tools_interpreter, Interpreter(cpython="3")).free_threaded:
            problems.append(f"{at}.tools_interpreter: use a default (not free-threaded) interpreter")
        listed = list(image.tools) + list(image.optional_tools)
        for i, tool in enumerate(listed):
            key = f"tools[{i}]" if i < len(image.tools) else f"optional_tools[{i - len(image.tools)}]"
            if tool not in spec.tools and tool not in image.tool_versions:
                problems.append(f"{at}.{key}: unknown tool {tool!r}; defined: {', '.join(spec.tools)}")
        for tool in image.tool_versions:
            if tool not in listed:
                problems.append(f"{at}.tool_versions.{tool}: not among the image's tools or optional_tools")
        if len(set(listed)) != len(listed):
            problems.append(f"{at}.tools: a tool is listed twice")
        for name, version, optional in tool_requirements(spec, image) if check_lock else ():
            if optional or not version:
                continue
            for arch in image.archs:
                platform = f"{image.policy}_{arch}"
                locked = {(w.name, w.version) for w in wheels.get(platform, ())}
                if (name, version) not in locked:
                    problems.append(
                        f"{at}.tools: no pin for {name}=={version} on {platform} in "
                        f"{lock_path.name}; run `invoke lock`"
                    )
    seen_policies: dict[str, str] = {}
    for name, image in spec.images.items():
        if image.policy in seen_policies:
            problems.append(
                f"{f}: images.{name}.policy: {image.policy} is already produced by image {seen_policies[image.policy]!r}"
            )
        seen_policies[image.policy] = name
    return problems


def _load_lock(lock_path: Path) -> tuple[dict[str, tuple[LockedFile, ...]], list[str]]:
    if not lock_path.exists():
        return {}, []
    try:
        raw = json.loads(lock_path.read_text())
        wheels = {
            platform: tuple(LockedFile(**entry) for entry in entries)
            for platform, entries in raw["platforms"].items()
        }
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return {}, [f"{lock_path.name}: unreadable lock ({exc}); regenerate it with `invoke lock`"]
    bad = [
        f"{lock_path.name}: platforms.{p}: {w.filename}: sha256 is not 64 hex digits"
        for p, files in wheels.items()
        for w in files
        if not re.fullmatch(r"[0-9a-f]{64}", w.sha256)
    ]
    return wheels, bad


def load_spec(path: Path | str = DEFAULT_SPEC, lock_path: Path | str | None = None, check_lock: bool = True) -> Spec:
    """Read and validate images.yaml and the wheel lock beside the Dockerfile templates.

    `check_lock=False` is for `invoke lock` itself, which writes the lock from the spec.
    """
    path = Path(path)
    lock_path = Path(lock_path) if lock_path else DEFAULT_LOCK
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except _DuplicateKey as exc:
        raise SpecError([f"{path.name}: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise SpecError([f"{path.name}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(raw, dict):
        raise SpecError([f"{path.name}: the top level must be a mapping with keys: {_allowed_keys(SpecFile)}"])
    try:
        data = SpecFile.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_pydantic(path, exc)) from None
    wheels, lock_problems = _load_lock(lock_path)
    problems = lock_problems + _cross_check(path, data, wheels, lock_path, check_lock)
    if problems:
        raise SpecError(problems)
    return Spec(path=path, data=data, wheels=wheels)
