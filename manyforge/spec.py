"""Stage 1: load images.yaml (and the wheel lock) into frozen, validated data.

Everything downstream reads these objects; nothing else parses YAML. Loading collects every
problem it finds and raises one SpecError listing them all, each naming the file, the key path
and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version as Version_
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

from manyforge.arches import ARCHES, Arch
from manyforge.quoting import REF_COMPONENT, REGISTRY_HOST

# What the pipeline reads besides the package (images.yaml, docker/, scripts/, policies/,
# configure-answers/): the checkout the package sits in, or, installed from a wheel, the copy
# the wheel carries in manyforge/_data (setup.py puts it there).
_DATA = Path(__file__).resolve().parent / "_data"
REPO_ROOT = _DATA if (_DATA / "images.yaml").is_file() else Path(__file__).resolve().parent.parent
# Where builds, logs, test records and releases go: the checkout's build/, or, installed,
# MANYFORGE_WORK (default ./build of the directory it runs in), never inside site-packages.
WORK_DIR = REPO_ROOT / "build" if REPO_ROOT is not _DATA else Path(os.environ.get("MANYFORGE_WORK") or "build").resolve()
DEFAULT_SPEC = REPO_ROOT / "images.yaml"
DEFAULT_LOCK = REPO_ROOT / "docker" / "wheels.lock.json"


def lock_path_default() -> Path:
    """The wheel lock: MANYFORGE_LOCK if set (a variant matrix with its own lock), else the repository's."""
    return Path(os.environ.get("MANYFORGE_LOCK") or DEFAULT_LOCK)

# Every pattern is ASCII-only ([0-9], never \d, which matches any Unicode digit) and anchored
# at both ends (pydantic matches the whole string with `^...$`, `$` never before a newline there).
Sha256 = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(strict=True, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")]
# A path component of an image reference: <org>/<image>_<arch> must be a valid Docker name.
RefName = Annotated[str, StringConstraints(strict=True, max_length=60, pattern=r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")]
TagPart = Annotated[str, StringConstraints(strict=True, max_length=60, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Version = Annotated[str, StringConstraints(strict=True, max_length=40, pattern=r"^[0-9]+(\.[0-9]+)*$")]
Str = Annotated[str, StringConstraints(strict=True, min_length=1)]
# Anything that reaches a Dockerfile, a shell or a path: no whitespace, no quotes, and no `.`,
# `..` or other component that starts with a dot.
AbsPath = Annotated[str, StringConstraints(strict=True, max_length=200, pattern=r"^(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)+$")]
# A Debian suite as debootstrap and Docker tags take it (bookworm, trixie, sid): no `+`, no
# leading `-` (debootstrap takes no `--`), no path.
Suite = Annotated[str, StringConstraints(strict=True, max_length=40, pattern=r"^[a-z][a-z0-9-]*$")]
# A base's or a toolchain's name: part of image tags, test records and the bootstrapped base's
# repository name, which must be lowercase.
VariantName = Annotated[str, StringConstraints(strict=True, max_length=40, pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")]
# An interpreter directory under /opt/python: <python tag>-<abi tag> as packaging names them.
InterpreterTag = Annotated[
    str, StringConstraints(strict=True, pattern=r"^(cp3[0-9]+-cp3[0-9]+t?|pp3[0-9]+-pypy3[0-9]+_pp[0-9]+|graalpy3[0-9]+-graalpy[0-9]+_3[0-9]+_native)$")
]


class SpecError(Exception):
    """images.yaml (or the wheel lock) is invalid; `problems` has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _no_repeats(self) -> _Model:
        """No list of the matrix names a thing twice (two stages of one library, a package
        installed twice): every tuple field of every model, in one place."""
        for name, value in self:
            if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
                twice = sorted({v for v in value if value.count(v) > 1})
                if twice:
                    raise ValueError(f"{name}: listed twice: {', '.join(twice)}")
        return self


class CPythonSource(_Model):
    url: Annotated[HttpsUrl, StringConstraints(pattern=rf"^https://{_HOST}(?:/{_SEGMENT})*/Python-[0-9]+\.[0-9]+\.[0-9]+\.(tgz|tar\.xz)$")]
    sha256: Sha256

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _port_in_range(value: str) -> str:
    """A URL's port, where it has one, is 1-65535."""
    authority = value.split("://", 1)[1].split("/", 1)[0]
    if ":" in authority and not 1 <= int(authority.rsplit(":", 1)[1]) <= 65535:
        raise ValueError(f"port {authority.rsplit(':', 1)[1]} is not in 1-65535")
    return value


_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?"
_SEGMENT = r"[A-Za-z0-9_~%+-][A-Za-z0-9._~%+-]*"  # no `.`, `..` or dot-file component
_FILE = r"[A-Za-z0-9][A-Za-z0-9._+-]*"  # a downloaded file's name in the cache and the build context
# A file to download: host, plain path components, and a file name that can be a path component
# and a shell word as it is (no query, no fragment, no shell or CSV metacharacter).
HttpsUrl = Annotated[
    str, StringConstraints(strict=True, max_length=500, pattern=rf"^https://{_HOST}(?:/{_SEGMENT})*/{_FILE}$"), AfterValidator(_port_in_range)
]
# A file of Debian's archive, relative to the mirror root (the mirror comes from the host's apt sources).
DebianPoolPath = Annotated[
    str, StringConstraints(strict=True, pattern=r"^pool/main/[a-z0-9]+/[a-z0-9][a-z0-9.+-]*/[A-Za-z0-9][A-Za-z0-9._+~-]*\.tar\.(gz|xz|bz2)$")
]
# A binary package in Debian's archive: pool/main/<prefix>/<source>/<name>_<version>_<arch>.deb
# (the version without its epoch, as Debian's file names spell it).
DebianDebPath = Annotated[
    str,
    StringConstraints(
        strict=True,
        pattern=r"^pool/main/[a-z0-9]+/[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*_[0-9][A-Za-z0-9.+~-]*_(all|amd64|i386|arm64|armhf|ppc64el|s390x|riscv64)\.deb$",
    ),
]
# A Debian package version: [epoch:]upstream-revision (2.73-2, 1:1.19-3).
DebianVersion = Annotated[str, StringConstraints(strict=True, max_length=60, pattern=r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*-[A-Za-z0-9.+~]+$")]
# The libraries docker/scripts/build-library.sh knows how to build.
LibraryName = Literal["openssl", "sqlite", "zstd"]
# The tools docker/scripts/build-tool.sh knows how to build, in the order a base builds them
# (curl before the git that links it, autoconf before automake, Tcl before Tk): tools users
# call, or (Tcl/Tk, libxcrypt) link against, that a base packages older than pypa's images
# carry them. libxcrypt replaces the release's libcrypt in the runtime stage itself.
SOURCE_TOOL_ORDER = ("libxcrypt", "curl", "git", "autoconf", "automake", "libtool", "tcl", "tk")
SourceToolName = Literal["libxcrypt", "curl", "git", "autoconf", "automake", "libtool", "tcl", "tk"]
# Tools one needs the other of, in the same base: Tk's build reads Tcl's tclConfig.sh.
SOURCE_TOOL_NEEDS = {"tk": "tcl"}


class LibrarySource(_Model):
    """A library built from source for the interpreters of bases that lack a recent enough one."""

    version: Version
    sha256: Sha256
    url: HttpsUrl | None = None  # the upstream file, where there is one
    debian: DebianPoolPath | None = None  # the same bytes (or Debian's orig) in Debian's archive

    @model_validator(mode="after")
    def _has_origin(self) -> LibrarySource:
        if self.url is None and self.debian is None:
            raise ValueError("give 'url' (upstream) or 'debian' (a pool/main/... path), or both")
        return self

    @property
    def filename(self) -> str:
        return (self.url or self.debian or "").rsplit("/", 1)[1]


class DebianFile(_Model):
    debian: DebianDebPath
    sha256: Sha256

    @property
    def filename(self) -> str:
        return self.debian.rsplit("/", 1)[1]


class DebianTool(_Model):
    """A package of a newer Debian suite that the Debian bases install over their release's own
    (`debian_tools`): pinned by the sha256 its suite's Packages index gives the .deb, one file
    for every arch (`all`: architecture-independent) or one per arch."""

    version: DebianVersion
    files: dict[Literal["all"] | Arch, DebianFile] = Field(min_length=1)

    @property
    def upstream(self) -> str:
        """The upstream release the package carries (1:1.19-3 carries 1.19)."""
        return self.version.split(":", 1)[-1].rsplit("-", 1)[0]

    @model_validator(mode="after")
    def _one_version(self) -> DebianTool:
        if "all" in self.files and len(self.files) > 1:
            raise ValueError("files: an architecture-independent package has the one file 'all'")
        plain = self.version.split(":", 1)[-1]
        for key, f in self.files.items():
            arch = "all" if key == "all" else ARCHES[key].debian
            if not f.filename.endswith(f"_{plain}_{arch}.deb"):
                raise ValueError(f"files.{key}: {f.filename} is not version {plain} for {arch}")
        return self

    def file_for(self, arch: str) -> DebianFile | None:
        return self.files.get("all") or self.files.get(arch)  # type: ignore[call-overload]


class Interpreter(_Model):
    cpython: Version
    free_threaded: StrictBool = False
    # Older pinned releases of the same minor a site may build instead when none of its origins
    # serves `cpython`: declared in the build output, the image's labels and its manifest.
    fallback: tuple[Version, ...] = ()


class DownloadFile(_Model):
    url: Annotated[HttpsUrl, StringConstraints(pattern=rf"^https://{_HOST}(?:/{_SEGMENT})*/{_FILE}\.tar\.(bz2|gz|xz)$")]
    sha256: Sha256


class Downloadable(_Model):
    """An interpreter `manylinux-interpreters ensure` installs on demand, per arch."""

    implementation: Literal["pypy", "graalpy"]
    version: Version  # of the implementation
    python: Version  # the language version it implements
    files: dict[Arch, DownloadFile] = Field(min_length=1)


def _specifier(value: str) -> str:
    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise ValueError(f"not a version specifier such as '==1.2' or '>=1.2' (got {value[:100]!r})") from None
    return value


Specifier = Annotated[str, StringConstraints(strict=True, min_length=1, pattern=r"^[^\s]*$"), AfterValidator(_specifier)]


def _not_native(value: str) -> str:
    if value == "native":
        raise ValueError("'native' builds for the build machine's own CPU; name the policy's baseline, e.g. x86-64")
    return value


_REF = REF_COMPONENT


PinnedRef = Annotated[
    str,
    StringConstraints(
        strict=True, max_length=300,
        pattern=rf"^(?:{REGISTRY_HOST}/)?{_REF}(?:/{_REF})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?@sha256:[0-9a-f]{{64}}$",
    ),
    AfterValidator(lambda ref: ref if "/" not in ref or _port_in_range("docker://" + ref) else ref),
]  # fmt: skip
MirrorUrl = Annotated[str, StringConstraints(strict=True, max_length=300, pattern=rf"^https://{_HOST}(?:/{_SEGMENT})*$"), AfterValidator(_port_in_range)]


BuildHost = Literal["x86_64", "aarch64", "ppc64le", "s390x", "riscv64"]  # arches.BUILD_HOSTS


class StaticClangFile(_Model):
    url: Annotated[HttpsUrl, StringConstraints(pattern=rf"^https://{_HOST}(?:/{_SEGMENT})*/{_FILE}\.tar\.xz$")]
    sha256: Sha256

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


class GitLfsFile(_Model):
    url: Annotated[HttpsUrl, StringConstraints(pattern=rf"^https://{_HOST}(?:/{_SEGMENT})*/{_FILE}\.tar\.gz$")]
    sha256: Sha256

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


class GitLfs(_Model):
    """git-lfs's own release archives (a static Go binary per arch), for bases whose
    distribution does not package it: checked by sha256 and unpacked into the final image."""

    version: Version
    files: dict[Arch, GitLfsFile] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_release(self) -> GitLfs:
        for arch, f in self.files.items():
            if f"-v{self.version}." not in f.filename:
                raise ValueError(f"files.{arch}: {f.filename} is not a file of git-lfs {self.version}")
        return self


class StaticClang(_Model):
    """A statically linked clang+LLD release, one archive per build host: it runs on any
    distribution of the build host's arch, so a cross stage needs no clang of its own release."""

    version: Version  # the release: LLVM's version plus a build number (22.1.8.1 is LLVM 22.1.8)
    # The release's sha256sums.txt, as pypa/manylinux pins it (static_clang_versions.txt); the
    # archives' own sha256 are its lines.
    sha256sums: Sha256
    files: dict[BuildHost, StaticClangFile] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_release(self) -> StaticClang:
        """Every archive is a file of the one release (its sha256sums.txt lists them)."""
        directories = {f.url.rsplit("/", 1)[0] for f in self.files.values()}
        if len(directories) > 1:
            raise ValueError(f"files: every archive must be a file of the one release; found {len(directories)} directories")
        return self

    @property
    def lld(self) -> tuple[int, int]:
        """The LLD it carries (major, minor)."""
        major, minor = (self.version.split(".") + ["0"])[:2]
        return int(major), int(minor)


# How the cross stages of a base's emulated targets compile where its toolchain names no
# Debian cross GCC: `static-clang` (the matrix's `static_clang` for the build host, pypa's
# route) or `distribution-clang` (the family's clang from the release's own repositories,
# families/<family>.j2 `cross_clang`, whose LLD version `lld` names).
CrossCompiler = Literal["static-clang", "distribution-clang"]


class Base(_Model):
    family: Literal["yum", "dnf", "apk", "apt"]
    # A Docker reference pinned by digest: [host[:port]/]name[/name...][:tag]@sha256:<digest>.
    image: PinnedRef | None = None
    debootstrap: Suite | None = None
    archs: tuple[Arch, ...] = Field(min_length=1)
    # Runtime packages whose names differ between releases of the family (libffi8 or libffi7).
    packages: tuple[Name, ...] = ()
    # Arches whose interpreters build under QEMU rather than cross-compiled: the release's own
    # cross toolchain cannot build them (e.g. LLD before 18 links no s390x).
    emulated: tuple[Arch, ...] = ()
    # Libraries the release lacks in a version the interpreters need: built from `libraries`.
    libraries: tuple[LibraryName, ...] = ()
    # Tools the release packages older than pypa's images carry (or, Tcl/Tk, in a version
    # CPython's tkinter should not link): built from `source_tools` into /usr/local.
    source_tools: tuple[SourceToolName, ...] = ()
    # git-lfs from its release archive (`git_lfs`), where the distribution packages none.
    git_lfs_release: StrictBool = False
    # Packages of a newer Debian suite installed in the final stage over the release's own
    # (`debian_tools`): pypa's autotools where the release's are older and upstream's
    # source is not reachable here.
    debian_tools: tuple[Name, ...] = ()
    # Repositories to enable before installing (e.g. CodeReady Builder, which has gdbm-devel).
    repositories: tuple[Name, ...] = ()
    # Packages of the family's final-stage list (pypa's, for users) this base's repositories do
    # not offer, each with the reason a reader can check; left out of the image and the contract.
    lacks: dict[Name, Annotated[str, StringConstraints(strict=True, min_length=10, max_length=300)]] = {}
    # A Debian root's <suite>-security suite (its security updates), where the site's security
    # mirror serves it; false only with the reason in images.yaml.
    security_suite: StrictBool = True
    # Arches on which EPEL is enabled, from the release's own `epel-release` package, as in
    # pypa's images (which take yasm from it); the family's `epel_packages` come from there.
    epel: tuple[Arch, ...] = ()
    # Where the release's packages live when its own mirrors are gone (CentOS 7: the vault).
    mirror: MirrorUrl | None = None
    # The -march its compilers must default to when the release's own default is newer than
    # the policy's baseline (EL9 builds for x86-64-v2): a wrapper adds it unless one is given.
    # `native` would make the image depend on the build machine's CPU.
    march: dict[Arch, Annotated[str, StringConstraints(strict=True, max_length=40, pattern=r"^[a-z0-9][a-z0-9_.-]*$"), AfterValidator(_not_native)]] = {}
    # The compiler of the cross stages (families without Debian's cross GCC; see CrossCompiler),
    # and, for `distribution-clang`, the version of the release's own LLD.
    cross_compiler: CrossCompiler | None = None
    lld: Version | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Base:
        if (self.image is None) == (self.debootstrap is None):
            raise ValueError("give exactly one of 'image' (name@sha256:<digest>) or 'debootstrap' (a Debian suite)")
        return self

    @model_validator(mode="after")
    def _cross_compiler(self) -> Base:
        if self.family == "apt":
            if self.cross_compiler or self.lld:
                raise ValueError("cross_compiler/lld: family apt cross-compiles with the toolchain's Debian cross GCC (toolchains.<name>.cross)")
        elif self.cross_compiler is None:
            raise ValueError("cross_compiler: required for family " + self.family + ": static-clang or distribution-clang")
        if (self.cross_compiler == "distribution-clang") != (self.lld is not None):
            raise ValueError("lld: give the release's LLD version with cross_compiler: distribution-clang, and only then")
        return self


class Toolchain(_Model):
    family: Literal["yum", "dnf", "apk", "apt"]  # the package family its packages belong to
    gcc: Version
    prefix: AbsPath | None = None
    packages: tuple[Name, ...] = Field(min_length=1)
    # apt family: Debian's cross compiler of the same GCC (package `<cross>-<gnu triplet>`). It
    # runs on the build host's CPU inside emulated builds, where QEMU would run the compiler.
    cross: Name | None = None
    # Per arch, a repository definition (.repo file) to add before installing `packages`, for
    # arches the distribution's own collections never built the toolchain for.
    repo_files: dict[Arch, HttpsUrl] = {}

    @model_validator(mode="after")
    def _family_keys(self) -> Toolchain:
        if self.repo_files and self.family != "yum":
            raise ValueError(f"repo_files: family {self.family} does not use it (only yum)")
        if self.cross and self.family != "apt":
            raise ValueError(f"cross: family {self.family} does not use it (only apt, which has Debian's cross compilers)")
        return self


class Libc(_Model):
    name: Literal["glibc", "musl"]
    version: Version


# Why something the consumer (cibuildwheel) asks for is not built or offered: one line of
# printable ASCII a user can check (no control characters, no newline). It reaches the image only
# inside its JSON catalog, never a template.
Reason = Annotated[str, StringConstraints(strict=True, min_length=10, max_length=400, pattern=r"^[ -~]+$")]


class Image(_Model):
    policy: Annotated[str, StringConstraints(strict=True, pattern=r"^(manylinux_2_[0-9]+|musllinux_1_[0-9]+)$")]
    libc: Libc
    base: VariantName
    base_variants: tuple[VariantName, ...] = ()
    toolchain: VariantName
    toolchain_variants: tuple[VariantName, ...] = ()
    archs: tuple[Arch, ...] = Field(min_length=1)
    interpreters: tuple[Name, ...] = Field(min_length=1)
    tools_interpreter: Name
    tools: tuple[Name, ...] = ()  # must have a wheel on every arch of the image
    optional_tools: tuple[Name, ...] = ()  # installed on the arches their project publishes wheels for
    tool_versions: dict[Name, Version] = {}  # overrides of the top-level tool versions
    downloadable: tuple[InterpreterTag, ...] = ()  # offered by `manylinux-interpreters ensure`
    # Interpreters cibuildwheel asks for that the image neither carries nor offers, and why:
    # its catalog says so, and `ensure` of one fails with the reason.
    not_offered: dict[InterpreterTag, Reason] = {}
    # The toolchain's bin directory before /usr/local/bin on PATH, as pypa's image of the policy
    # has it (its build.sh PREPEND_PATH); otherwise /usr/local/bin comes first.
    toolset_first_on_path: StrictBool = False


# --- derived images: a parent (an image of the matrix, or one pinned by digest) plus additions ---

# An environment variable's name, and its value: one line of printable ASCII, taken literally
# (no `$` expansion: the Dockerfile's ENV gets it quoted).
EnvName = Annotated[str, StringConstraints(strict=True, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, StringConstraints(strict=True, max_length=1000, pattern=r"^[ -~]*$")]
# A check: one shell command line the finished image must run with exit status 0 (bash -c).
CheckCommand = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=1000, pattern=r"^[ -~]+$")]
# One argument of a library's configure (autotools) or cmake (-D entries): a single argv word.
AutotoolsOption = Annotated[str, StringConstraints(strict=True, max_length=200, pattern=r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_./:+,@%-]*)?$")]
CmakeOption = Annotated[
    str, StringConstraints(strict=True, max_length=200, pattern=r"^-D[A-Za-z_][A-Za-z0-9_]*(:(BOOL|STRING|PATH|FILEPATH))?=[A-Za-z0-9_./:+,@%-]*$")
]
# A file of the derived project's own repository, relative to the spec file: no absolute path,
# no `..`, no dot-file component.
ProjectPath = Annotated[
    str, StringConstraints(strict=True, max_length=200, pattern=r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*(/[A-Za-z0-9_+-][A-Za-z0-9_.+-]*)*$")
]
# A version as distributions and projects write them (0.2.5, 1.14.5+repack, 12.4.1-1).
LooseVersion = Annotated[str, StringConstraints(strict=True, max_length=60, pattern=r"^[0-9][A-Za-z0-9.+~-]*$")]


# What each family's installer takes as a package name, and nothing more: no version constraint
# (apk's `name=1.2`), option (`-oAPT::...`), glob, @group, path, provide or `:arch` (a derived
# image installs for its own arch; a foreign one needs `dpkg --add-architecture`, which it does
# not run). The parent's family decides which rule applies: known at load for a parent of the
# matrix, at resolve (the lock) for one pinned by digest.
PACKAGE_NAME_RULES: dict[str, tuple[str, str]] = {
    "apt": (r"[a-z0-9][a-z0-9+.-]+", "a Debian package name (Debian policy 5.6.1): lowercase letters, digits, '+', '-' and '.', "
                                     "at least two characters, starting with a letter or digit, no :arch"),
    "dnf": (r"[A-Za-z0-9][A-Za-z0-9._+-]*", "an RPM package name: letters, digits, '.', '_', '+' and '-', starting with a letter or digit "
                                            "(no version, glob, @group, path or provide)"),
    "apk": (r"[a-z0-9][a-z0-9._+-]*", "an apk package name: lowercase letters, digits, '.', '_', '+' and '-', starting with a letter or digit "
                                      "(no version constraint)"),
}  # fmt: skip
PACKAGE_NAME_RULES["yum"] = PACKAGE_NAME_RULES["dnf"]


def _package_name(value: str) -> str:
    """A name some family's rule takes (which one is checked against the parent's family)."""
    if not any(re.fullmatch(rule, value) for rule, _ in PACKAGE_NAME_RULES.values()):
        raise ValueError(f"{_short(value, 80)} is no package name of any family (letters, digits, '.', '_', '+', '-'; starting with a letter or digit)")
    return value


PackageName = Annotated[str, StringConstraints(strict=True, max_length=100), AfterValidator(_package_name)]


def package_name_problems(family: str, packages: tuple[str, ...], at: str) -> list[str]:
    """The declared packages the parent's family does not take as names; `at` names the key."""
    rule, what = PACKAGE_NAME_RULES[family]
    return [f"{at}[{i}]: {_short(p, 80)} is not {what} (the parent's family is {family})" for i, p in enumerate(packages) if not re.fullmatch(rule, p)]


def _parent_ref(value: str) -> str:
    """`from`: the name of an image of the matrix, or an image reference pinned by digest."""
    from pydantic import TypeAdapter

    if re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", value) and len(value) <= 60:
        return value
    try:
        return TypeAdapter(PinnedRef).validate_python(value)
    except ValidationError:
        raise ValueError(
            "give an image of the matrix by name (e.g. manylinux_2_36) or an image reference pinned by "
            f"digest (name[:tag]@sha256:<64 hex>); got {_short(value, 120)}"
        ) from None


ParentRef = Annotated[str, StringConstraints(strict=True, max_length=300), AfterValidator(_parent_ref)]


class PinnedFile(_Model):
    """A file the build downloads, by its sha256 (into the source cache, like every source)."""

    url: HttpsUrl
    sha256: Sha256

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


class VendorRepository(_Model):
    """A vendor's package repository: its definition (apt .sources/.list, dnf .repo, apk
    repositories line) and its signing key, both pinned by sha256."""

    definition: PinnedFile
    key: PinnedFile


class DerivedLibrary(_Model):
    """A library built from a pinned, sha256-verified source tarball with a declared build
    system, installed (shared) under /usr/local."""

    version: LooseVersion
    sha256: Sha256
    url: HttpsUrl | None = None
    debian: DebianPoolPath | None = None  # a file of Debian's archive, relative to the mirror
    build: Literal["autotools", "cmake"]
    options: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _origin_and_options(self) -> DerivedLibrary:
        if self.url is None and self.debian is None:
            raise ValueError("give 'url' (upstream) or 'debian' (a pool/main/... path), or both")
        from pydantic import TypeAdapter

        kind = AutotoolsOption if self.build == "autotools" else CmakeOption
        form = "--name[=value]" if self.build == "autotools" else "-DNAME[:TYPE]=value"
        for i, option in enumerate(self.options):
            try:
                TypeAdapter(kind).validate_python(option)
            except ValidationError:
                raise ValueError(f"options[{i}]: {_short(option, 80)} is not a {self.build} option ({form}, no spaces or quotes)") from None
        return self

    @property
    def filename(self) -> str:
        return (self.url or self.debian or "").rsplit("/", 1)[1]


class Component(_Model):
    """What a script installs, for the SBOM: a name and a version."""

    name: Name
    version: LooseVersion


class DerivedScript(_Model):
    """A step the declarative parts cannot express: a script of the project's repository,
    mounted into the build (never pasted into the Dockerfile), and what it installs."""

    path: ProjectPath
    installs: tuple[Component, ...] = Field(min_length=1)


class Derived(_Model):
    """An image of its own: a parent plus distribution packages, vendor repositories, libraries
    built from pinned sources, environment variables, and the project's own checks."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    parent: ParentRef = Field(alias="from")
    # The parent's arches this image is built for (default: every arch of a matrix parent;
    # required for an external parent, whose arches are read from it when resolved).
    archs: tuple[Arch, ...] = ()
    packages: tuple[PackageName, ...] = ()
    repositories: dict[VariantName, VendorRepository] = {}
    libraries: dict[VariantName, DerivedLibrary] = {}
    env: dict[EnvName, EnvValue] = {}
    checks: tuple[CheckCommand, ...] = ()
    script: DerivedScript | None = None

    @model_validator(mode="after")
    def _env_keeps_the_contract(self) -> Derived:
        for name in self.env:
            if name.startswith("AUDITWHEEL_") or name in ("_PYTHON_HOST_PLATFORM", "LD_PRELOAD"):
                raise ValueError(f"env.{name}: set by the parent image (its contract); a derived image keeps it")
        return self

    @model_validator(mode="after")
    def _one_file_per_name(self) -> Derived:
        # The source cache and the build context keep each pinned file under its own name: two
        # different files of one name (two vendors' key.asc) would overwrite each other.
        files = [(f"libraries.{n}", lib.filename, lib.sha256) for n, lib in self.libraries.items()]
        for n, repo in self.repositories.items():
            files += [(f"repositories.{n}.{part}", f.filename, f.sha256) for part, f in (("definition", repo.definition), ("key", repo.key))]
        seen: dict[str, tuple[str, str]] = {}
        for where, name, sha256 in files:
            first = seen.setdefault(name, (where, sha256))
            if first[1] != sha256:
                raise ValueError(f"{where}: its file {name} has the name of {first[0]}'s, another file; serve one of them under another name")
        return self

    @property
    def external(self) -> bool:
        """Whether the parent is an image pinned by digest rather than one of the matrix."""
        return "@" in self.parent


class DerivedFile(_Model):
    """A downstream project's own short file: its images, each naming its parent; the matrix
    it derives from is the installed manyforge's images.yaml, never copied."""

    org: RefName | None = None
    derived: dict[RefName, Derived] = Field(min_length=1)


# A runner label as `runs-on` takes it (GitHub's hosted labels, or a self-hosted runner's).
RunnerLabel = Annotated[str, StringConstraints(strict=True, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class Runner(_Model):
    """A kind of machine the GitHub workflow builds on: its labels, its CPU's arch, and which
    arches of the images it builds (natively where its CPU runs them, else cross-compiled)."""

    labels: tuple[RunnerLabel, ...] = Field(min_length=1)
    arch: BuildHost
    builds: tuple[Arch, ...] = Field(min_length=1)


class ImageDefaults(_Model):
    """What every image has unless it says otherwise: the per-image lists that would repeat."""

    interpreters: tuple[Name, ...] = Field(default=(), min_length=1)
    tools_interpreter: Name | None = None
    tools: tuple[Name, ...] = ()
    optional_tools: tuple[Name, ...] = ()
    downloadable: tuple[InterpreterTag, ...] = ()
    not_offered: dict[InterpreterTag, Reason] = {}


# The keys of an image that `defaults` may give.
INHERITED = tuple(ImageDefaults.model_fields)


def _valid_default(key: str, value: Any) -> bool:
    try:
        ImageDefaults.model_validate({key: value})
    except ValidationError:
        return False
    return True


class SpecFile(_Model):
    org: RefName
    cpython: dict[Version, CPythonSource]
    libraries: dict[LibraryName, LibrarySource] = {}
    # Tools built from source for bases whose own are older than pypa's (Base.source_tools).
    source_tools: dict[SourceToolName, LibrarySource] = {}
    git_lfs: GitLfs | None = None
    # Newer Debian packages for the Debian bases (Base.debian_tools).
    debian_tools: dict[Name, DebianTool] = {}
    # The cross stages' compiler where a base chooses `cross_compiler: static-clang`.
    static_clang: StaticClang | None = None
    interpreters: dict[Annotated[str, StringConstraints(pattern=r"^cp3[0-9]+-cp3[0-9]+t?$")], Interpreter]
    frontend: dict[Name, Specifier] = Field(min_length=1)
    downloadable: dict[InterpreterTag, Downloadable] = {}
    tools: dict[Name, Version]
    bases: dict[VariantName, Base]  # variant names become part of image tags and base image names
    toolchains: dict[VariantName, Toolchain]
    # Images derived from a parent (an image above, or one pinned by digest), with additions.
    derived: dict[RefName, Derived] = {}
    # Inherited by every image that does not give the key itself (its own value replaces the
    # default whole; lists are not merged).
    defaults: ImageDefaults | None = None
    images: dict[RefName, Image] = Field(min_length=1)
    # Which runner of the GitHub workflow builds which arch (manyforge/workflow.py).
    runners: dict[VariantName, Runner] = {}
    # Image x arch pairs the pinned cibuildwheel has a default image for (its
    # pinned_docker_images.cfg) that this project does not build, each with its reason.
    unbuilt: dict[RefName, dict[Arch, Reason]] = {}

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any) -> Any:
        """Each image gets the keys of `defaults` it does not give itself, before it is validated
        (a default that is itself invalid is reported under `defaults`, and not copied)."""
        if not isinstance(data, dict) or not isinstance(data.get("defaults"), dict) or not isinstance(data.get("images"), dict):
            return data
        defaults = {k: v for k, v in data["defaults"].items() if k in INHERITED and v is not None and _valid_default(k, v)}
        images = {
            name: {**defaults, **image} if isinstance(image, dict) else image for name, image in data["images"].items()
        }
        return {**data, "images": images}


class LockedFile(_Model):
    """One wheel of the lock: a plain file name whose name and version are the entry's."""

    name: Name
    version: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9][0-9A-Za-z.+!-]*$")]
    filename: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.whl$")]
    sha256: Sha256

    @model_validator(mode="after")
    def _filename_matches(self) -> LockedFile:
        try:
            name, version, _, _ = parse_wheel_filename(self.filename)
        except InvalidWheelFilename as exc:
            raise ValueError(f"not a wheel file name: {exc}") from None
        if name != canonicalize_name(self.name) or str(version) != str(Version_(self.version)):
            raise ValueError(f"file {self.filename!r} is not {self.name} {self.version}")
        return self


class LockFile(_Model):
    comment: str = ""
    platforms: dict[Annotated[str, StringConstraints(pattern=r"^(manylinux|musllinux)_[0-9]+_[0-9]+_[a-z0-9_]+$")], tuple[LockedFile, ...]]
    interpreters: dict[InterpreterTag, tuple[LockedFile, ...]] = {}

    @model_validator(mode="after")
    def _no_duplicates(self) -> LockFile:
        problems = [
            f"platforms.{key}: {key.split('_', 3)[3]} is not an architecture; known: {', '.join(ARCHES)}"
            for key in self.platforms
            if key.split("_", 3)[3] not in ARCHES
        ]
        for section, groups in (("platforms", self.platforms), ("interpreters", self.interpreters)):
            for key, files in groups.items():
                versions: dict[str, set[str]] = {}
                names = [f.filename for f in files]
                for f in files:
                    versions.setdefault(canonicalize_name(f.name), set()).add(f.version)
                twice = sorted({n for n in names if names.count(n) > 1})
                several = sorted(n for n, v in versions.items() if len(v) > 1)
                if twice:
                    problems.append(f"{section}.{key}: listed twice: {', '.join(twice)}")
                if several:
                    problems.append(f"{section}.{key}: more than one version of {', '.join(several)}")
        hashes: dict[str, set[str]] = {}
        for files in (*self.platforms.values(), *self.interpreters.values()):
            for f in files:
                hashes.setdefault(f.filename, set()).add(f.sha256)
        problems += [f"{name}: pinned with {len(h)} different sha256" for name, h in sorted(hashes.items()) if len(h) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class Spec:
    """The validated matrix plus its wheel lock; the input of every later stage."""

    path: Path
    data: SpecFile
    wheels: dict[str, tuple[LockedFile, ...]]  # platform tag -> locked files
    frontend: dict[str, tuple[LockedFile, ...]]  # interpreter tag -> its frontend wheels
    lock_path: Path
    # A downstream project's own file of derived images (DerivedFile) read over `path`, and its org.
    overlay: Path | None = None
    derived_org: str | None = None

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

    @property
    def revision(self) -> str:
        """A digest of the matrix and its lock: what an image is built from."""
        digest = hashlib.sha256(self.path.read_bytes())
        if self.lock_path.exists():
            digest.update(self.lock_path.read_bytes())
        if self.overlay is not None:
            digest.update(self.overlay.read_bytes())
        return "sha256:" + digest.hexdigest()

    @property
    def derived(self) -> dict[str, Derived]:
        return self.data.derived

    @property
    def source_file(self) -> Path:
        """The file the derived images are declared in (the overlay, or the matrix itself):
        their lock and scripts are beside it."""
        return self.overlay or self.path

    def frontend_pins(self, tag: str) -> tuple[LockedFile, ...]:
        """The frontend wheels (pip, build, ...) locked for one interpreter."""
        return self.frontend.get(tag, ())

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


MAX_YAML_NODES = 50_000  # images.yaml has a few thousand; an alias bomb has billions


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (merge keys `<<: *x` still work: an explicit key
    may override a merged one, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        merges = [k for k, _ in node.value if k.tag == "tag:yaml.org,2002:merge"]
        if len(merges) > 1:
            raise _DuplicateKey(f"line {merges[1].start_mark.line + 1}: a second merge key `<<` in one mapping")
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: a key must be a plain name, not a list or a mapping")
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(
                    f"line {key_node.start_mark.line + 1}: duplicate key {_short(key)} "
                    f"(first defined on line {seen[key] + 1})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def _short(value: Any, limit: int = 100) -> str:
    """repr of a value for a message, cut to about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 12] + f"...({len(text)} chars)"


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """How many nodes the document has once every alias is expanded (capped at `limit`)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = limit  # a cycle counts as too big
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total = min(limit, total + _expanded_size(child, memo, limit))
        if total >= limit:
            break
    memo[id(node)] = total
    return total


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The YAML node a pydantic location points at, to quote what the file says."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        elif isinstance(part, str) and part.startswith(("function-", "literal[")):
            continue
        else:
            return None
    return node


def _yaml_hint(node: yaml.Node | None, value: Any) -> str:
    """Say so when YAML turned what the author wrote into a number or a boolean."""
    if not isinstance(node, yaml.ScalarNode) or isinstance(value, str) or node.style:
        return ""
    kind = "a boolean" if isinstance(value, bool) else "a number" if isinstance(value, (int, float)) else ""
    if not kind:
        return ""
    return (
        f" (line {node.start_mark.line + 1}: YAML read {node.value[:40]} as {kind}, {_short(value, 40)}; "
        f'write it in quotes: "{node.value[:40]}")'
    )


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):  # pydantic's validator labels
            continue
        else:
            text = _printable(str(part))
            out += f".{text}" if out else text
    return out or "(top level)"


def _printable(text: str) -> str:
    """A key as a message may show it: control and non-ASCII characters escaped."""
    return text if text.isascii() and text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _allowed_keys(model: type[BaseModel] | None) -> str:
    return ", ".join(model.model_fields) if model else ""


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class a location points into, to list the allowed keys of an unknown key."""
    model: Any = root
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


def _format_pydantic(
    path: Path, err: ValidationError, root: type[BaseModel] | None = None, document: yaml.Node | None = None
) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = f"{path.name}: {_key_path(loc)}"
        hint = _yaml_hint(_node_at(document, loc), e.get("input"))
        if hint:
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}{hint}")
            continue
        if e["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key; allowed keys here: {_allowed_keys(_model_at(loc, root or SpecFile))}")
        elif e["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        elif e["type"] in ("literal_error", "enum"):
            problems.append(f"{where}: {_short(e['input'])} is not allowed; {e['msg'].replace('Input should be', 'expected')}")
        elif e["type"] == "string_pattern_mismatch":
            problems.append(f"{where}: {_short(e['input'])} does not match the required form {e['ctx']['pattern']}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = "input" in e and not isinstance(e["input"], (dict, list, tuple))
            problems.append(f"{where}: {msg} (got {_short(e['input'])})" if shown else f"{where}: {msg}")
    return problems


# --- cross-references -----------------------------------------------------------------------

# Keys only some package-manager families read: set on another family, they would be ignored.
_FAMILY_KEYS = {"repositories": ("dnf",), "mirror": ("yum",), "epel": ("dnf",), "debian_tools": ("apt",)}


def _downloadable_problems(tag: str, entry: Downloadable) -> list[str]:
    """A downloadable interpreter's tag agrees with what it says it is."""
    m = re.fullmatch(r"pp3([0-9]+)-pypy3([0-9]+)_pp([0-9]+)|graalpy3([0-9]+)-graalpy([0-9]+)_3([0-9]+)_native", tag)
    if m is None:
        return []  # the tag's own pattern reports it
    if m.group(1) is not None:
        implementation, minors, impl_version = "pypy", {m.group(1), m.group(2)}, None
    else:
        implementation, minors, impl_version = "graalpy", {m.group(4), m.group(6)}, m.group(5)
    problems = []
    if entry.implementation != implementation:
        problems.append(f"implementation: {entry.implementation} does not match the tag ({implementation})")
    if len(minors) != 1 or entry.python.split(".")[:2] != ["3", next(iter(minors))]:
        problems.append(f"python: {entry.python} does not match the tag (Python 3.{'/'.join(sorted(minors))})")
    if impl_version is not None and "".join(entry.version.split(".")[:2]) != impl_version:
        problems.append(f"version: GraalPy {entry.version} does not match the tag's {impl_version}")
    return problems


def _interpreter_tag_matches(tag: str, interp: Interpreter) -> bool:
    major, minor = interp.cpython.split(".")[:2]
    expected = f"cp{major}{minor}-cp{major}{minor}{'t' if interp.free_threaded else ''}"
    return tag == expected


def frontend_requirements(spec: SpecFile, tag: str) -> dict[str, str]:
    """The frontend (name -> specifier) locked and installed for one interpreter. GraalPy keeps
    the pip it bundles, patched for it (pypa's images install it with ensurepip and never upgrade
    it): no pip pin for it."""
    entry = spec.downloadable.get(tag)
    if entry is not None and entry.implementation == "graalpy":
        return {n: s for n, s in spec.frontend.items() if canonicalize_name(n) != "pip"}
    return dict(spec.frontend)


def _check_frontend_lock(spec: SpecFile, frontend: dict[str, tuple[LockedFile, ...]], lock_path: Path) -> list[str]:
    """Every interpreter an image carries or offers has its frontend locked, matching images.yaml."""
    problems = []
    defined = set(spec.interpreters) | set(spec.downloadable)  # unknown tags are reported elsewhere
    wanted = {t for image in spec.images.values() for t in (*image.interpreters, *image.downloadable) if t in defined}
    for tag in sorted(wanted):
        locked = {canonicalize_name(w.name): w.version for w in frontend.get(tag, ())}
        for name, specifier in frontend_requirements(spec, tag).items():
            version = locked.get(canonicalize_name(name))
            if version is None or not SpecifierSet(specifier).contains(version, prereleases=True):
                problems.append(
                    f"{lock_path.name}: interpreters.{tag}: no pin of {name}{specifier}; run `invoke lock`"
                )
    return problems


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
        if interp.free_threaded and tuple(int(x) for x in interp.cpython.split(".")[:2]) < (3, 13):
            problems.append(f"{f}: interpreters.{tag}.free_threaded: CPython builds free-threaded from 3.13 on, not {interp.cpython}")
        if not _interpreter_tag_matches(tag, interp):
            problems.append(
                f"{f}: interpreters.{tag}: tag does not match CPython {interp.cpython}"
                f"{' (free-threaded)' if interp.free_threaded else ''}"
            )
        for i, older in enumerate(interp.fallback):
            at = f"{f}: interpreters.{tag}.fallback[{i}]"
            if older not in spec.cpython:
                problems.append(f"{at}: no pinned source for CPython {older}; pinned: {', '.join(spec.cpython)}")
            elif older.split(".")[:2] != interp.cpython.split(".")[:2] or Version_(older) >= Version_(interp.cpython):
                problems.append(f"{at}: {older} is not an older release of CPython {'.'.join(interp.cpython.split('.')[:2])}")
    for base_name, declared in spec.bases.items():
        for key, arches in (("march", tuple(declared.march)), ("emulated", declared.emulated), ("epel", declared.epel)):
            for arch in arches:
                if arch not in declared.archs:
                    problems.append(f"{f}: bases.{base_name}.{key}.{arch}: the base has no {arch}; it has: {', '.join(declared.archs)}")
        for key, users in _FAMILY_KEYS.items():
            if getattr(declared, key) and declared.family not in users:
                problems.append(f"{f}: bases.{base_name}.{key}: family {declared.family} does not use it (only {', '.join(users)})")
        if declared.cross_compiler == "static-clang" and spec.static_clang is None:
            problems.append(f"{f}: bases.{base_name}.cross_compiler: static-clang needs a pinned release under static_clang")
        for i, lib in enumerate(declared.libraries):
            if lib not in spec.libraries:
                problems.append(
                    f"{f}: bases.{base_name}.libraries[{i}]: {lib!r} has no pinned source under libraries; "
                    f"pinned: {', '.join(spec.libraries) or 'none'}"
                )
        for i, built in enumerate(declared.source_tools):
            if built not in spec.source_tools:
                problems.append(
                    f"{f}: bases.{base_name}.source_tools[{i}]: {built!r} has no pinned source under source_tools; "
                    f"pinned: {', '.join(spec.source_tools) or 'none'}"
                )
            needed = SOURCE_TOOL_NEEDS.get(built)
            if needed and needed not in declared.source_tools:
                problems.append(f"{f}: bases.{base_name}.source_tools[{i}]: {built} is built against {needed}: list {needed} too")
        for i, name in enumerate(declared.debian_tools):
            deb = spec.debian_tools.get(name)
            if deb is None:
                problems.append(
                    f"{f}: bases.{base_name}.debian_tools[{i}]: {name!r} has no pinned package under debian_tools; "
                    f"pinned: {', '.join(spec.debian_tools) or 'none'}"
                )
                continue
            missing = [a for a in declared.archs if deb.file_for(a) is None]
            if missing:
                problems.append(f"{f}: bases.{base_name}.debian_tools[{i}]: debian_tools.{name}.files has no package for {', '.join(missing)}")
        if declared.git_lfs_release:
            missing = [a for a in declared.archs if spec.git_lfs is None or a not in spec.git_lfs.files]
            if missing:
                problems.append(f"{f}: bases.{base_name}.git_lfs_release: git_lfs.files has no archive for {', '.join(missing)}")
    for tag, offered in spec.downloadable.items():
        problems += [f"{f}: downloadable.{tag}: {p}" for p in _downloadable_problems(tag, offered)]
    for version, source in spec.cpython.items():
        if source.filename.removeprefix("Python-").split(".t")[0] != version:
            problems.append(f"{f}: cpython.{version}.url: names {source.filename}, not CPython {version}")
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
        families = {spec.bases[b].family for _, b in bases if b in spec.bases}
        for key, own, variants in (("base_variants", image.base, image.base_variants), ("toolchain_variants", image.toolchain, image.toolchain_variants)):
            if own in variants:
                problems.append(f"{at}.{key}: {own!r} is the image's own {key.split('_')[0]}, not a variant (it would build the same tags twice)")
        for key, tc in [("toolchain", image.toolchain)] + [
            (f"toolchain_variants[{i}]", t) for i, t in enumerate(image.toolchain_variants)
        ]:
            if tc not in spec.toolchains:
                problems.append(f"{at}.{key}: unknown toolchain {tc!r}; defined: {', '.join(spec.toolchains)}")
                continue
            if families - {spec.toolchains[tc].family}:
                problems.append(
                    f"{at}.{key}: toolchain {tc!r} is of family {spec.toolchains[tc].family}, the image's base of "
                    f"{'/'.join(sorted(families))}"
                )
        if image.toolset_first_on_path:
            for tc in (image.toolchain, *image.toolchain_variants):
                if tc in spec.toolchains and not spec.toolchains[tc].prefix:
                    problems.append(f"{at}.toolset_first_on_path: toolchain {tc!r} installs into /usr (no prefix): there is no toolset directory to put first")
            for _, b in bases:
                if b in spec.bases and spec.bases[b].march:
                    problems.append(f"{at}.toolset_first_on_path: base {b!r} wraps the compilers in /usr/local/bin (march), which must stay first")
        if len(set(image.archs)) != len(image.archs):
            problems.append(f"{at}.archs: an architecture is listed twice")
        for i, tag in enumerate(image.interpreters):
            if tag not in spec.interpreters:
                problems.append(f"{at}.interpreters[{i}]: unknown interpreter {tag!r}; defined: {', '.join(spec.interpreters)}")
        for i, tag in enumerate(image.downloadable):
            entry = spec.downloadable.get(tag)
            if entry is None:
                problems.append(
                    f"{at}.downloadable[{i}]: unknown interpreter {tag!r}; defined under downloadable: "
                    f"{', '.join(spec.downloadable) or 'none'}"
                )
            elif not set(entry.files) & set(image.archs):
                problems.append(f"{at}.downloadable[{i}]: {tag} has a file for none of the image's archs")
        for tag in image.not_offered:
            if tag in image.interpreters or tag in image.downloadable:
                problems.append(f"{at}.not_offered.{tag}: the image carries or offers {tag}; drop the reason or the interpreter")
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
            if not version:
                continue
            if optional:
                # Optional: absent on arches without a wheel, but a pin no arch has is a mistake
                # (the image would silently ship without the tool everywhere).
                if not any((name, version) in {(w.name, w.version) for w in wheels.get(f"{image.policy}_{a}", ())} for a in image.archs):
                    problems.append(
                        f"{at}.optional_tools: no arch of the image has a pin for {name}=={version} in "
                        f"{lock_path.name}; run `invoke lock` or fix the version"
                    )
                continue
            for arch in image.archs:
                platform = f"{image.policy}_{arch}"
                locked = {(w.name, w.version) for w in wheels.get(platform, ())}
                if (name, version) not in locked:
                    problems.append(
                        f"{at}.tools: no pin for {name}=={version} on {platform} in "
                        f"{lock_path.name}; run `invoke lock`"
                    )
    for tc_name, toolchain in spec.toolchains.items():
        consumers = [i for i in spec.images.values() if tc_name in (i.toolchain, *i.toolchain_variants)]
        for arch in toolchain.repo_files:
            if not any(arch in i.archs for i in consumers):
                problems.append(f"{f}: toolchains.{tc_name}.repo_files.{arch}: no image using the toolchain has {arch}")
    problems += _runner_problems(f, spec)
    for name, reasons in spec.unbuilt.items():
        for arch in reasons:
            if name in spec.images and arch in spec.images[name].archs:
                problems.append(f"{f}: unbuilt.{name}.{arch}: images.{name} builds {arch}; drop the reason or the arch")
    problems += _derived_problems(f, spec)
    seen_policies: dict[str, str] = {}
    for name, image in spec.images.items():
        if image.policy in seen_policies:
            problems.append(
                f"{f}: images.{name}.policy: {image.policy} is already produced by image {seen_policies[image.policy]!r}"
            )
        seen_policies[image.policy] = name
    return problems


def _derived_problems(f: str, spec: SpecFile) -> list[str]:
    """Each derived image names a parent that exists, arches it has, and a name of its own."""
    problems = []
    for name, derived in spec.derived.items():
        at = f"{f}: derived.{name}"
        if name in spec.images:
            problems.append(f"{at}: an image of the matrix has this name; a derived image needs its own")
        if derived.external:
            if not derived.archs:
                problems.append(f"{at}.archs: required for a parent pinned by digest (the arches to read from it)")
            continue
        parent = spec.images.get(derived.parent)
        if parent is None:
            problems.append(f"{at}.from: unknown image {derived.parent!r}; images of the matrix: {', '.join(spec.images)}")
            continue
        for i, arch in enumerate(derived.archs):
            if arch not in parent.archs:
                problems.append(f"{at}.archs[{i}]: the parent {derived.parent} has no {arch}; it has: {', '.join(parent.archs)}")
        if parent.base in spec.bases:
            problems += package_name_problems(spec.bases[parent.base].family, derived.packages, f"{at}.packages")
    return problems


def _runner_problems(f: str, spec: SpecFile) -> list[str]:
    """Each arch is built by one runner, and every arch an image has by some runner."""
    problems: list[str] = []
    if not spec.runners:
        return problems
    builder: dict[str, str] = {}
    for name, runner in spec.runners.items():
        for arch in runner.builds:
            if arch in builder:
                problems.append(f"{f}: runners.{name}.builds: {arch} is already built by runner {builder[arch]!r}")
            builder.setdefault(arch, name)
    for name, image in spec.images.items():
        for i, arch in enumerate(image.archs):
            if arch not in builder:
                problems.append(f"{f}: images.{name}.archs[{i}]: no runner builds {arch}; add it to the builds of one of: {', '.join(spec.runners)}")
    return problems


MAX_INPUT_BYTES = 4 << 20  # images.yaml and the lock are a few kB; anything this big is a mistake


def read_input(path: Path, limit: int = MAX_INPUT_BYTES) -> str:
    """The text of an input file, refused with a message if it is not a regular, readable,
    UTF-8 file of sane size (a FIFO would block, a huge file would exhaust memory)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read ({exc.strerror})"]) from None
    if not stat.S_ISREG(st.st_mode):
        raise SpecError([f"{path}: not a regular file"])
    if st.st_size > limit:
        raise SpecError([f"{path}: {st.st_size} bytes is larger than the limit of {limit} bytes"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None


class BadJSON(ValueError):
    """JSON that json.loads would take but no input of ours may hold."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # json.loads would keep the last one silently
            raise BadJSON(f"duplicate key {_short(key)} in an object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a JSON number")


def strict_json(text: str) -> Any:
    """json.loads for untrusted input files (the lock, policies, test records, SBOMs): no key
    twice, no NaN or Infinity. Raises ValueError (BadJSON, json.JSONDecodeError, or int()'s digit
    limit) and RecursionError; callers turn them into their own message."""
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)


def load_lock(lock_path: Path, required: bool = False) -> LockFile | None:
    """The wheel lock; None when there is none yet (before the first `invoke lock`), unless
    `required`."""
    try:
        if not required and not lock_path.exists():
            return None
    except OSError as exc:  # a name too long, a directory that cannot be searched
        raise SpecError([f"{lock_path}: cannot read ({exc.strerror})"]) from None
    text = read_input(lock_path)
    try:
        raw = strict_json(text)
    except json.JSONDecodeError as exc:
        raise SpecError([f"{lock_path.name}: line {exc.lineno}: not valid JSON ({exc.msg}); regenerate it with `invoke lock`"]) from None
    except BadJSON as exc:
        raise SpecError([f"{lock_path.name}: {exc}; regenerate it with `invoke lock`"]) from None
    except RecursionError:
        raise SpecError([f"{lock_path.name}: nested too deeply; regenerate it with `invoke lock`"]) from None
    except ValueError as exc:  # a number past Python's digit limit for int()
        raise SpecError([f"{lock_path.name}: not a lock ({str(exc)[:120]}); regenerate it with `invoke lock`"]) from None
    try:
        return LockFile.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_pydantic(lock_path, exc, LockFile)) from None


def load_spec(path: Path | str = DEFAULT_SPEC, lock_path: Path | str | None = None, check_lock: bool = True) -> Spec:
    """Read and validate images.yaml and the wheel lock beside the Dockerfile templates.

    `check_lock=False` is for `invoke lock` itself, which writes the lock from the spec.
    """
    path = Path(path)
    lock_path = Path(lock_path) if lock_path else lock_path_default()
    text = read_input(path)
    try:
        loader = _StrictLoader(text)
        try:
            document = loader.get_single_node()
            if document is not None and _expanded_size(document, {}, MAX_YAML_NODES) >= MAX_YAML_NODES:
                raise SpecError([
                    f"{path.name}: expands to more than {MAX_YAML_NODES} values (aliases repeated too often?); refused"
                ])
            raw = loader.construct_document(document) if document is not None else None
        finally:
            loader.dispose()
    except _DuplicateKey as exc:
        raise SpecError([f"{path.name}: {exc}"]) from None
    except RecursionError:
        raise SpecError([f"{path.name}: nested too deeply to be a matrix; refused"]) from None
    except ValueError as exc:  # a number past Python's digit limit for int()
        raise SpecError([f"{path.name}: a value YAML cannot read ({str(exc)[:120]})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise SpecError([f"{path.name}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(raw, dict):
        raise SpecError([f"{path.name}: the top level must be a mapping with keys: {_allowed_keys(SpecFile)}"])
    if "derived" in raw and "images" not in raw:  # a downstream file: its images all derived
        return _load_overlay(path, raw, document, lock_path, check_lock)
    # A lock named explicitly (MANYFORGE_LOCK, an argument) must exist, unless `invoke lock` is writing it.
    explicit = check_lock and (lock_path != DEFAULT_LOCK)
    return spec_from_data(raw, path, load_lock(lock_path, required=explicit), lock_path, check_lock, document)


def _load_overlay(path: Path, raw: dict[str, Any], document: yaml.Node | None, lock_path: Path, check_lock: bool) -> Spec:
    """A downstream file of derived images over the installed matrix (MANYFORGE_BASE_SPEC, else
    the images.yaml installed with manyforge): the matrix stays as it is, the file adds images."""
    try:
        overlay = DerivedFile.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_pydantic(path, exc, DerivedFile, document=document)) from None
    base_path = Path(os.environ.get("MANYFORGE_BASE_SPEC") or DEFAULT_SPEC)
    if base_path.resolve() == path.resolve():
        raise SpecError([f"{path.name}: the matrix cannot be its own overlay"])
    base = load_spec(base_path, lock_path, check_lock)
    if base.overlay is not None:
        raise SpecError([f"{base_path.name}: MANYFORGE_BASE_SPEC names an overlay; name the matrix"])
    data = base.data.model_copy(update={"derived": {**base.data.derived, **overlay.derived}})
    problems = [
        p.replace(f"{base_path.name}: derived.", f"{path.name}: derived.")
        for p in _derived_problems(base_path.name, data)
        if any(p.startswith(f"{base_path.name}: derived.{name}") for name in overlay.derived)
    ]
    problems += [f"{path.name}: derived.{n}: the matrix already derives an image of this name" for n in overlay.derived if n in base.data.derived]
    if problems:
        raise SpecError(problems)
    return Spec(path=base.path, data=data, wheels=base.wheels, frontend=base.frontend, lock_path=base.lock_path, overlay=path,
                derived_org=overlay.org)


def spec_from_data(
    raw: dict[str, Any], path: Path, lock: LockFile | None, lock_path: Path, check_lock: bool = True, document: yaml.Node | None = None
) -> Spec:
    """Validate an already parsed matrix (`path` names it in messages) against its lock."""
    try:
        data = SpecFile.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_pydantic(path, exc, document=document)) from None
    wheels = dict(lock.platforms) if lock else {}
    frontend = dict(lock.interpreters) if lock else {}
    problems = _cross_check(path, data, wheels, lock_path, check_lock) + (
        _check_frontend_lock(data, frontend, lock_path) if check_lock else []
    )
    if problems:
        raise SpecError(problems)
    return Spec(path=path, data=data, wheels=wheels, frontend=frontend, lock_path=lock_path)
