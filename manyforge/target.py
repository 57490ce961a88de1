"""What one build is: an image of the spec (or an image derived from a parent) for one
architecture, in one variant, resolved against the command line's choices.

Below render in the pipeline: render, engine, publish, the workflow and the tests read
targets; this module reads only the spec and the source pins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from manyforge.arches import ARCHES, BUILD_HOSTS, host_arch, runs_natively
from manyforge.parent import DerivedLock, ParentFacts, facts_for
from manyforge.sources import Pin, cpython_pin, debian_tool_pins, git_lfs_pins, library_pins, source_tool_pins, static_clang_pins
from manyforge.spec import SOURCE_TOOL_ORDER, Base, Derived, DownloadFile, Image, Spec, SpecError, Toolchain, package_name_problems


@dataclass(frozen=True)
class InterpreterBuild:
    tag: str
    version: str
    free_threaded: bool
    filename: str

    @property
    def stage(self) -> str:
        return "cpython_" + self.tag.replace("-", "_")

    @property
    def prefix(self) -> str:
        return f"/opt/_internal/cpython-{self.version}{'t' if self.free_threaded else ''}"

    @property
    def link(self) -> str:
        return f"/opt/python/{self.tag}"


# PEP 599's names of the manylinux policies that have one (PEP 600 keeps them as aliases).
LEGACY_POLICY_NAMES = {"manylinux_2_5": "manylinux1", "manylinux_2_12": "manylinux2010", "manylinux_2_17": "manylinux2014"}


@dataclass(frozen=True)
class Target:
    """One buildable thing: an image of the spec, for one architecture, in one variant."""

    spec: Spec
    image_name: str
    arch: str
    base_name: str
    toolchain_name: str
    interpreters: tuple[str, ...]
    # Interpreters built from a declared fallback because no origin of this site serves their
    # pinned release: (tag, version) pairs, set by the fetch stage.
    fallbacks: tuple[tuple[str, str], ...] = ()
    # The arch of the machine (or builder node) that runs the build: what it runs natively is
    # built natively, everything else cross-compiled or emulated (see cross_compiles).
    build_host: str = "x86_64"
    # Declared interpreters left out because no origin of this site serves their release nor a
    # fallback: (tag, why) pairs, set by the fetch stage, announced like fallbacks.
    omitted: tuple[tuple[str, str], ...] = ()

    def without(self, omitted: dict[str, str]) -> Target:
        """This target leaving out the given interpreters (tag -> why), which no origin serves."""
        return replace(
            self, interpreters=tuple(t for t in self.interpreters if t not in omitted), omitted=self.omitted + tuple(omitted.items())
        )

    def with_cpython(self, used: dict[str, str]) -> Target:
        """This target building the given CPython release per interpreter tag."""
        pinned = {t: self.spec.data.interpreters[t].cpython for t in self.interpreters}
        return replace(self, fallbacks=tuple((t, v) for t, v in used.items() if v != pinned[t]))

    def cpython_version(self, tag: str) -> str:
        return dict(self.fallbacks).get(tag) or self.spec.data.interpreters[tag].cpython

    @property
    def substitutions(self) -> list[tuple[str, str, str]]:
        """(tag, pinned release, release built instead) for each fallback in use."""
        return [(t, self.spec.data.interpreters[t].cpython, v) for t, v in self.fallbacks]

    @property
    def image(self) -> Image:
        return self.spec.images[self.image_name]

    @property
    def auditwheel_policy(self) -> str:
        """AUDITWHEEL_POLICY as pypa's images spell it: the PEP 599 name where the policy has one
        (manylinux2014 is manylinux_2_17; auditwheel knows both), else the PEP 600/656 one."""
        return LEGACY_POLICY_NAMES.get(self.image.policy, self.image.policy)

    @property
    def base(self) -> Base:
        return self.spec.data.bases[self.base_name]

    @property
    def toolchain(self) -> Toolchain:
        return self.spec.data.toolchains[self.toolchain_name]

    @property
    def platform(self) -> str:
        return ARCHES[self.arch].platform

    @property
    def repository(self) -> str:
        """Image name without tag: <org>/<image>_<arch> (the image's name in images.yaml)."""
        return f"{self.spec.data.org}/{self.image_name}_{self.arch}"

    @property
    def variant_suffix(self) -> str:
        parts = []
        if self.base_name != self.image.base:
            parts.append(self.base_name)
        if self.toolchain_name != self.image.toolchain:
            parts.append(self.toolchain_name)
        left_out = dict(self.omitted)  # what the site cannot build is announced, not a subset of the user's
        if self.interpreters != tuple(t for t in self.image.interpreters if t not in left_out):
            parts.append("partial")
        return "-".join(parts)

    @property
    def tag_suffix(self) -> str:
        return f"-{self.variant_suffix}" if self.variant_suffix else ""

    @property
    def slug(self) -> str:
        return f"{self.image_name}_{self.arch}{self.tag_suffix}"

    @property
    def latest_ref(self) -> str:
        return f"{self.repository}:latest{self.tag_suffix}"

    def base_ref(self, arch: str | None = None) -> str:
        if self.base.image:
            return self.base.image
        return bootstrap_base_ref(self.spec, self.base_name, arch or self.arch)

    is_derived = False

    @property
    def needs_local_images(self) -> bool:
        """Whether its build reads an image of the local engine (a bootstrapped base)."""
        return self.base.debootstrap is not None

    @property
    def cross_compiles(self) -> bool:
        """Targets the build host cannot run itself build CPython and its libraries in stages
        that run on the build host's CPU, next to the same image's own build for the build host
        (see Dockerfile.j2); the rest of them runs under QEMU. Where the image or its base has no
        build for the build host's arch, or the base cannot be cross-built for it, all of it does."""
        return (
            not runs_natively(self.arch, self.build_host) and self.arch not in self.base.emulated
            and self.build_host in self.image.archs and self.build_host in self.base.archs
        )  # fmt: skip

    @property
    def emulated(self) -> bool:
        """Whether anything of this build runs under QEMU on its build host."""
        return not runs_natively(self.arch, self.build_host)

    def native(self) -> Target:
        """The same image, variant and interpreters for the build host's architecture."""
        return replace(self, arch=self.build_host)

    @property
    def bootstrap_arches(self) -> list[str]:
        """Debootstrapped bases this build needs: its own, and the host's for the cross stage."""
        if not self.base.debootstrap:
            return []
        return [self.arch] + ([self.build_host] if self.cross_compiles else [])

    def interpreter_builds(self) -> list[InterpreterBuild]:
        out = []
        for tag in self.interpreters:
            version = self.cpython_version(tag)
            out.append(
                InterpreterBuild(tag, version, self.spec.data.interpreters[tag].free_threaded, self.spec.data.cpython[version].filename)
            )
        return out

    def source_pins(self) -> list[Pin]:
        versions = sorted({self.cpython_version(t) for t in self.interpreters})
        return [cpython_pin(self.spec, v) for v in versions] + library_pins(self.spec, self.base.libraries) + self.tool_pins() + self.compiler_pins()

    def tool_pins(self) -> list[Pin]:
        """The base's from-source tools and, where it takes it from the release, git-lfs for this arch."""
        lfs = git_lfs_pins(self.spec, [self.arch]) if self.base.git_lfs_release else []
        debs = debian_tool_pins(self.spec, self.base.debian_tools, self.arch)
        return source_tool_pins(self.spec, [t["name"] for t in self.tool_builds()]) + lfs + debs

    def debian_tool_files(self) -> list[dict[str, str]]:
        """The newer Debian packages the final stage installs (Base.debian_tools) for this arch:
        name, version (Debian's), upstream release, .deb file, sha256."""
        out = []
        for name in self.base.debian_tools:
            tool = self.spec.data.debian_tools[name]  # type: ignore[index]
            f = tool.file_for(self.arch)
            assert f is not None  # the spec's check: every arch of the base has one
            out.append({"name": name, "version": tool.version, "upstream": tool.upstream, "filename": f.filename, "sha256": f.sha256})
        return out

    def tool_builds(self) -> list[dict[str, str]]:
        """The base's from-source tools in build order (spec.SOURCE_TOOL_ORDER): name, version, source file."""
        tools = self.spec.data.source_tools
        names = [n for n in SOURCE_TOOL_ORDER if n in self.base.source_tools]
        return [{"name": n, "version": tools[n].version, "filename": tools[n].filename, "sha256": tools[n].sha256} for n in names]  # type: ignore[index]

    def git_lfs_file(self) -> dict[str, str] | None:
        """git-lfs's release archive for this arch, where the base takes it from the release."""
        if not self.base.git_lfs_release or self.spec.data.git_lfs is None:
            return None
        f = self.spec.data.git_lfs.files[self.arch]  # type: ignore[index]
        return {"version": self.spec.data.git_lfs.version, "filename": f.filename, "sha256": f.sha256}

    def compiler_pins(self) -> list[Pin]:
        """The cross stage's static clang for the build host, where this target takes that route."""
        if not self.cross_compiles or self.base.cross_compiler != "static-clang":
            return []
        return static_clang_pins(self.spec, [self.build_host])

    def library_builds(self) -> list[dict[str, str]]:
        """The from-source libraries of this base: name, version, source file."""
        libs = self.spec.data.libraries
        return [{"name": n, "version": libs[n].version, "filename": libs[n].filename, "sha256": libs[n].sha256} for n in self.base.libraries]

    @property
    def downloadable(self) -> dict[str, DownloadFile]:
        """Interpreters `manylinux-interpreters ensure` may install on this arch: tag -> file."""
        entries = self.spec.data.downloadable
        return {t: entries[t].files[self.arch] for t in self.image.downloadable if self.arch in entries[t].files}

    def catalog(self) -> dict:
        """What the image's manylinux-interpreters knows beyond /opt/python."""
        entries = self.spec.data.downloadable
        return {
            "downloadable": {
                tag: {
                    "implementation": entries[tag].implementation,
                    "version": entries[tag].version,
                    "python": entries[tag].python,
                    "url": f.url,
                    "sha256": f.sha256,
                }
                for tag, f in self.downloadable.items()
            },
            "frontend_python": f"/opt/python/{self.image.tools_interpreter}/bin/python",
            "fallbacks": {tag: {"pinned": pinned, "built": built} for tag, pinned, built in self.substitutions},
            # What cibuildwheel may ask for that this image does not have, and why.
            "not_built": {**dict(self.image.not_offered), **dict(self.omitted)},
            "libraries": {b["name"]: b["version"] for b in self.library_builds()},
        }


def bootstrap_base_ref(spec: Spec, base_name: str, arch: str) -> str:
    """Local name of a base bootstrapped on this machine (one repository per arch, so that
    images of different platforms never share a name in the engine's store; shared by every
    matrix on the machine, whatever its org)."""
    return f"manyforge/base-{base_name}-{arch}:{spec.data.bases[base_name].debootstrap}"


def resolve_target(
    spec: Spec,
    image_name: str,
    arch: str,
    base: str | None = None,
    toolchain: str | None = None,
    interpreters: list[str] | None = None,
    build_host: str | None = None,
) -> Target:
    """Check command-line choices against the spec; errors list what is allowed. `build_host`
    is the arch of the machine that builds (default: this one)."""
    image = spec.image(image_name)
    problems = []
    if arch not in image.archs:
        problems.append(f"unknown arch {arch!r} for image {image_name}; choose one of: {', '.join(image.archs)}")
    bases = (image.base, *image.base_variants)
    if base is not None and base not in bases:
        problems.append(f"unknown base {base!r} for image {image_name}; choose one of: {', '.join(bases)}")
    toolchains = (image.toolchain, *image.toolchain_variants)
    if toolchain is not None and toolchain not in toolchains:
        problems.append(f"unknown toolchain {toolchain!r} for image {image_name}; choose one of: {', '.join(toolchains)}")
    chosen = image.interpreters
    if interpreters:
        unknown = [t for t in interpreters if t not in image.interpreters]
        if unknown:
            problems.append(
                f"unknown interpreter(s) {', '.join(unknown)} for image {image_name}; "
                f"choose from: {', '.join(image.interpreters)}"
            )
        wanted = set(interpreters) | {image.tools_interpreter}
        chosen = tuple(t for t in image.interpreters if t in wanted)
    if build_host is None:
        try:
            build_host = host_arch()
        except ValueError as exc:
            problems.append(str(exc))
    elif build_host not in BUILD_HOSTS:
        problems.append(f"unknown build host {build_host[:40]!r}; choose one of: {', '.join(BUILD_HOSTS)}")
    if problems:
        raise SpecError(problems)
    base_name = base or image.base
    if arch not in spec.data.bases[base_name].archs:
        raise SpecError([f"base {base_name} has no {arch}; it has: {', '.join(spec.data.bases[base_name].archs)}"])
    return Target(spec, image_name, arch, base_name, toolchain or image.toolchain, chosen, build_host=build_host or "x86_64")




@dataclass(frozen=True)
class DerivedTarget:
    """A derived image for one arch: its declaration in the spec and its parent as resolved
    (parent.ParentFacts from the lock). Built FROM the parent's image ID, never rebuilding it."""

    spec: Spec
    image_name: str
    arch: str
    parent: ParentFacts
    build_host: str = "x86_64"
    # A parent of the matrix as this site built it (with its fallbacks and left-out interpreters),
    # where the caller knows it: what the image tests read of an image and a derived image keeps
    # unchanged (its policy, toolchain, interpreters' releases, offered downloads) comes from it.
    matrix_parent: Target | None = None

    # --- what the image tests read of any image, which a derived image keeps from its parent of
    # the matrix; without one (an external parent) there is nothing to read them from. ---

    def _from_matrix(self, what: str) -> Target:
        if self.matrix_parent is None:
            raise AttributeError(f"{what}: {self.slug} has no parent of the matrix to read it from (its parent is {self.parent.ref})")
        return self.matrix_parent

    @property
    def image(self) -> Image:
        """The parent's image of the matrix (policy, libc, tools interpreter)."""
        return self._from_matrix("image").image

    @property
    def auditwheel_policy(self) -> str:
        return self._from_matrix("auditwheel_policy").auditwheel_policy

    @property
    def base(self) -> Base:
        return self._from_matrix("base").base

    @property
    def base_name(self) -> str:
        return self._from_matrix("base_name").base_name

    @property
    def toolchain(self) -> Toolchain:
        return self._from_matrix("toolchain").toolchain

    @property
    def downloadable(self) -> dict[str, DownloadFile]:
        return self._from_matrix("downloadable").downloadable

    @property
    def omitted(self) -> tuple[tuple[str, str], ...]:
        return self._from_matrix("omitted").omitted

    def cpython_version(self, tag: str) -> str:
        return self._from_matrix("cpython_version").cpython_version(tag)

    def library_builds(self) -> list[dict[str, str]]:
        """The parent's from-source libraries (its base's), which the derived image carries."""
        return self._from_matrix("library_builds").library_builds()

    @property
    def derived(self) -> Derived:
        return self.spec.derived[self.image_name]

    @property
    def is_derived(self) -> bool:
        return True

    @property
    def org(self) -> str:
        return self.spec.derived_org or self.spec.data.org

    @property
    def repository(self) -> str:
        return f"{self.org}/{self.image_name}_{self.arch}"

    @property
    def platform(self) -> str:
        return ARCHES[self.arch].platform

    tag_suffix = ""
    variant_suffix = ""
    cross_compiles = False
    bootstrap_arches: tuple[str, ...] = ()
    # Its parent is an image of the local engine: a builder that sees none cannot build it.
    needs_local_images = True

    @property
    def slug(self) -> str:
        return f"{self.image_name}_{self.arch}"

    @property
    def latest_ref(self) -> str:
        return f"{self.repository}:latest"

    @property
    def emulated(self) -> bool:
        return not runs_natively(self.arch, self.build_host)

    @property
    def interpreters(self) -> tuple[str, ...]:
        """The parent's /opt/python, in the matrix's order where the parent is of the matrix."""
        if self.matrix_parent is not None:
            ordered = [t for t in self.matrix_parent.interpreters if t in self.parent.interpreters]
            return tuple(ordered + [t for t in self.parent.interpreters if t not in ordered])
        return self.parent.interpreters

    @property
    def parent_tag(self) -> str:
        """The local name the build reads the parent by: its image ID in the tag, so the
        Dockerfile names exactly that image (BuildKit resolves no bare image ID)."""
        return f"manyforge-parent/{self.slug}:{self.parent.image_id.removeprefix('sha256:')}"

    def pinned_sources(self) -> dict[str, Pin]:
        """The libraries' sources and the vendor repositories' files, each by its sha256, by the
        key of the spec that pins it (derived.<image>.repositories.<name>.key, ...)."""
        d = self.derived
        at = f"derived.{self.image_name}"
        pins = {f"{at}.libraries.{n}": Pin(lib.filename, lib.sha256, lib.url, lib.debian) for n, lib in d.libraries.items()}
        for name, repo in d.repositories.items():
            for kind, f in (("definition", repo.definition), ("key", repo.key)):
                pins[f"{at}.repositories.{name}.{kind}"] = Pin(f.filename, f.sha256, f.url, None)
        return pins

    def source_pins(self) -> list[Pin]:
        """The libraries' sources and the vendor repositories' files, each by its sha256."""
        return list(self.pinned_sources().values())


def derived_target_of(
    spec: Spec, lock: DerivedLock, lock_file: str, image_name: str, arch: str, build_host: str | None = None, matrix_parent: Target | None = None
) -> DerivedTarget:
    """A derived image of the spec for one arch, with its parent as the lock pins it."""
    if image_name not in spec.derived:
        raise SpecError([f"unknown derived image {image_name!r}; declared: {', '.join(spec.derived) or 'none'}"])
    derived = spec.derived[image_name]
    archs = derived.archs or spec.image(derived.parent).archs
    if arch not in archs:
        raise SpecError([f"unknown arch {arch!r} for derived image {image_name}; choose one of: {', '.join(archs)}"])
    facts = facts_for(lock, image_name, arch, lock_file)
    # A parent pinned by digest shows its family only once resolved: its rule for package names.
    problems = package_name_problems(facts.family, derived.packages, f"{spec.source_file.name}: derived.{image_name}.packages")
    if problems:
        raise SpecError(problems)
    return DerivedTarget(spec, image_name, arch, facts, build_host=build_host or host_arch(), matrix_parent=matrix_parent)


# Anything the engine builds and the tests and publish read.
AnyTarget = Target | DerivedTarget
