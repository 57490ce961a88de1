"""Stage 2: turn one image×arch of the spec into a Dockerfile and a build context.

The build context holds only the Dockerfile, the in-image scripts, and the verified source
and wheel files that this image×arch needs, taken from the source cache.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import jinja2

from manyforge import configure_answers
from manyforge.arches import ARCHES, LLD_LINKS_SINCE, configure_build, python_multiarch
from manyforge.quoting import template_environment
from manyforge.sources import SourceCache, debian_mirror, debian_security_mirror, stage_files, wheel_pins
from manyforge.spec import REPO_ROOT, LockedFile, SpecError
from manyforge.target import DerivedTarget, Target

DOCKER_DIR = REPO_ROOT / "docker"


@functools.cache
def _environment() -> jinja2.Environment:
    """Every template renders through the quoting environment: a value reaches the Dockerfile
    only through the filter of the context it lands in (manyforge/quoting.py)."""
    return template_environment(jinja2.FileSystemLoader(DOCKER_DIR))


@functools.cache
def _checkout() -> dict[str, str]:
    """The project's own revision, commit time and origin, when built from a git checkout."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    remote = git("remote", "get-url", "origin")
    return {
        "revision": git("rev-parse", "HEAD") or "unknown",
        # The commit's time, not the build's: an unchanged rebuild keeps its image ID.
        "created": git("log", "-1", "--format=%cI") or "1970-01-01T00:00:00Z",
        "source": remote if re.fullmatch(r"https://[A-Za-z0-9._/-]+", remote) else "",
    }


def image_labels(target: Target) -> dict[str, str]:
    """OCI annotation keys plus the image's own facts, as image labels."""
    checkout = _checkout()
    labels = {
        "org.opencontainers.image.title": f"{target.image_name}_{target.arch}",
        "org.opencontainers.image.version": f"{target.image.policy}-{target.spec.revision[7:19]}",
        "org.opencontainers.image.revision": checkout["revision"],
        "org.opencontainers.image.created": checkout["created"],
        "io.manyforge.policy": target.image.policy,
        "io.manyforge.arch": target.arch,
        "io.manyforge.base": target.base_name,
        "io.manyforge.toolchain": target.toolchain_name,
        "io.manyforge.spec-digest": target.spec.revision,
    }
    if checkout["source"]:
        labels["org.opencontainers.image.source"] = checkout["source"]
    if target.base.libraries:
        labels["io.manyforge.libraries"] = ",".join(f"{b['name']}-{b['version']}" for b in target.library_builds())
    if target.substitutions:
        # Never silent: an interpreter older than images.yaml pins says so on the image itself.
        labels["io.manyforge.cpython-fallbacks"] = ",".join(f"{t}={v} (pinned {p})" for t, p, v in target.substitutions)
    if target.omitted:
        labels["io.manyforge.cpython-omitted"] = ",".join(tag for tag, _ in target.omitted)
    return labels


def build_packages(target: Target, cross: bool = False) -> list[str]:
    """The family's build-stage packages, with the development package of each library built
    from source left out (so CPython can only find the built one) and what its build needs added.
    Headers the final image carries too (zlib, expat) come with the runtime stage the build stage
    starts from; a cross stage still installs the target's own."""
    family = vars(family_layer(target.base.family))
    replaced = {p for lib in target.base.libraries for p in family["library_packages"][lib]["replaces"]}
    replaced |= set() if cross else set(family["runtime_packages"])
    needed = [p for lib in target.base.libraries for p in family["library_packages"][lib]["needs"]]
    # Tcl/Tk, built before the interpreters: what their build needs, and the distribution's
    # development package a from-source one replaces (Tk 8.5's, so that CPython's tkinter can
    # only find the built Tk 8.6). The other tools build in their own stage (tool_packages).
    tool_packages = family.get("source_tool_packages", {})
    for tool in target.base.source_tools:
        if tool in BEFORE_INTERPRETERS:
            replaced |= set(tool_packages.get(tool, {}).get("replaces", []))
            needed += tool_packages.get(tool, {}).get("needs", [])
    packages = [p for p in family["build_packages"] if p not in replaced]
    return packages + [p for p in dict.fromkeys(needed) if p not in packages]


# From-source tools the interpreters build against (tkinter links Tk): built before them, in the
# build stage's packages. libxcrypt replaces the release's libcrypt for everything, in the
# runtime stage itself. The rest build after, in the source_tools stage, for the final image.
BEFORE_INTERPRETERS = ("tcl", "tk")
IN_RUNTIME = ("libxcrypt",)


# Tools whose cross-compiled build is the one a native build makes (git's Makefile probes nothing
# of the target): a multiarch family's cross stage builds them. The others (libtool records the
# compiler's and the loader's search paths it finds at configure time) build on the target.
CROSS_COMPILED_TOOLS = ("git",)


def tools_cross_compiled(target: Target) -> bool:
    """Whether the cross stage builds CROSS_COMPILED_TOOLS: a cross build of a family that installs
    the target's development packages next to the build host's (Debian, multiarch)."""
    return target.cross_compiles and bool(vars(family_layer(target.base.family)).get("cross_multiarch"))


def replaced_release_packages(target: Target) -> list[str]:
    """The release's packages the final stage removes because a from-source tool takes their place
    and their copy would be found first (Debian's libtool.m4 before /usr/local's)."""
    packages = vars(family_layer(target.base.family)).get("source_tool_packages", {})
    return list(dict.fromkeys(p for t in target.base.source_tools for p in packages.get(t, {}).get("removes", [])))


def tool_packages(target: Target, arch_suffix: str = "", cross: bool | None = None) -> list[str]:
    """What the source_tools stages install for their builds (git: libcurl's headers), kept out
    of the build stage so that adding a tool never rebuilds an interpreter. cross=True: the cross
    stage's (CROSS_COMPILED_TOOLS; `arch_suffix` ":s390x" names the target's multiarch package),
    cross=False: the target's stage's (the rest), None: every tool's."""
    packages = vars(family_layer(target.base.family)).get("source_tool_packages", {})
    tools = [t for t in target.base.source_tools if t not in BEFORE_INTERPRETERS + IN_RUNTIME]
    if cross is not None:
        tools = [t for t in tools if (t in CROSS_COMPILED_TOOLS) == cross]
    needed = [p for t in tools for p in packages.get(t, {}).get("needs", [])]
    return [p + arch_suffix for p in dict.fromkeys(needed)]


def toolchain_fixes(target: Target) -> list[str]:
    """Arguments of fix-toolchain.sh for this image (none: the toolchain is right as installed)."""
    fixes = []
    if target.arch in target.base.march:
        fixes += ["--march", target.base.march[target.arch]]
    if target.toolchain.prefix:
        fixes += ["--prefix", target.toolchain.prefix]
    return fixes


def repositories(target: Target) -> dict:
    """What the family's setup_repositories macro needs to know."""
    return {
        "enable": list(target.base.repositories),
        "epel": target.arch in target.base.epel,
        "mirror": target.base.mirror,
        "arch": target.arch,
        "repo_file": target.toolchain.repo_files.get(target.arch),  # type: ignore[call-overload]
    }


def final_packages(target: Target) -> list[str]:
    """What the final stage installs for users (pypa's packages no interpreter's build needs):
    the family's, its arch's (yasm on x86_64, as pypa's), and EPEL's where the base enables it."""
    family = vars(family_layer(target.base.family))
    epel = family.get("epel_packages", {}).get(target.arch, []) if target.arch in target.base.epel else []
    wanted = [*family["final_packages"], *family.get("arch_packages", {}).get(target.arch, []), *epel]
    stray = [p for p in target.base.lacks if p not in family["final_packages"]]
    if stray:
        where = f"{target.spec.path.name}: bases.{target.base_name}.lacks"
        raise SpecError([f"{where}.{p}: not a package the {target.base.family} family's final stage installs" for p in stray])
    return [p for p in dict.fromkeys(wanted) if p not in target.base.lacks]


def declared_packages(target: Target, final: bool = True) -> list[str]:
    """Every distribution package the image's Dockerfile installs, in its stages' order (without
    the final stage's with final=False: the stages a cross build's native leg runs)."""
    family = vars(family_layer(target.base.family))
    packages = [*family["runtime_packages"], *target.base.packages, *target.toolchain.packages, *build_packages(target)]
    # The source_tools stage's (a stage of the final image only): on the target's platform unless
    # it cross-compiles them (multiarch), where packages_checks asks for them.
    packages += tool_packages(target, cross=False if tools_cross_compiled(target) else None) if final else []
    packages += final_packages(target) if final else []
    return list(dict.fromkeys(packages))


def packages_checks(target: Target) -> list[tuple[Target, list[str], list[str] | None]]:
    """What `invoke packages-check` asks, as (where it asks, packages, set-up first): the
    image's packages on its own platform (its runtime, toolchain and build stages: for a
    cross-compiled image also the sysroot of its cross stages); for a cross-compiled image also
    the cross stage's on the build host's platform, where it installs them: the build host's
    stages it starts from, plus its compiler and the target's development packages."""
    checks: list[tuple[Target, list[str], list[str] | None]] = [(target, declared_packages(target), None)]
    if target.cross_compiles:
        cross = cross_compiler(target)
        native = target.native()
        checks.append((native, list(dict.fromkeys([*declared_packages(native, final=False), *cross["packages"], *cross["tool_packages"]])), cross["setup"]))
    return checks


def write_packages_check(target: Target, dest: Path, packages: list[str], setup: list[str] | None = None) -> Path:
    """A build context that asks the base's repositories (set up as the image sets them up,
    then `setup`) for `packages`, on the target's platform."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    text = _environment().get_template("packages-check.j2").render(
        family=target.base.family, base_ref=target.base_ref(), repositories=repositories(target),
        packages=packages, then=setup,
    )  # fmt: skip
    (dest / "Dockerfile").write_text(text)
    shutil.copytree(DOCKER_DIR / "scripts", dest / "scripts")
    return dest


def stage_context(target: Target) -> dict:
    """What the template's stage macros need of one image×arch."""
    builds = target.interpreter_builds()
    tools = target.tool_builds()
    after = [t for t in tools if t["name"] not in BEFORE_INTERPRETERS + IN_RUNTIME]  # the source_tools stages'
    crossed = CROSS_COMPILED_TOOLS if tools_cross_compiled(target) else ()
    return {
        "policy": target.image.policy,
        "auditwheel_policy": target.auditwheel_policy,
        "arch": target.arch,
        "platform": target.platform,
        "family": target.base.family,
        "base_name": target.base_name,
        "base_ref": target.base_ref(),
        "base_packages": list(target.base.packages),
        "final_packages": final_packages(target),
        # pypa's DEVTOOLSET_ROOTPATH: the toolset's root (its prefix without /usr), empty without one.
        "devtoolset_root": (target.toolchain.prefix or "").removesuffix("/usr"),
        "locale_setup": vars(family_layer(target.base.family))["locale_setup"],
        "toolchain_name": target.toolchain_name,
        "toolset_first_on_path": target.image.toolset_first_on_path,
        "toolchain": target.toolchain,
        "repositories": repositories(target),
        "toolchain_fixes": toolchain_fixes(target),
        "build_packages": build_packages(target),
        "libraries": target.library_builds(),
        # From-source tools: Tcl/Tk build before the interpreters (tkinter links them), the
        # rest after, for the final image only.
        "runtime_tools": [t for t in tools if t["name"] in IN_RUNTIME],
        "tcltk": [t for t in tools if t["name"] in BEFORE_INTERPRETERS],
        "tools": after,
        # A multiarch cross build splits them: what cross-compiles in the cross stage, the rest on the target.
        "tools_cross": [t for t in after if t["name"] in crossed],
        "tools_cross_names": ", ".join(t["name"] for t in after if t["name"] in crossed),
        "tools_target": [t for t in after if t["name"] not in crossed],
        "tool_packages": tool_packages(target, cross=False if crossed else None),
        "tools_replace": replaced_release_packages(target),
        # Newer Debian packages over the release's own (pypa's autotools), final stage only.
        "debian_tools": target.debian_tool_files(),
        "debian_tool_paths": [f"/build/debs/{d['filename']}" for d in target.debian_tool_files()],
        # /usr/local/lib in the loader's path from the runtime stage on where a stage installs Tk
        # there (glibc; musl's loader looks there itself); the final stage's finalize.sh writes it on every glibc image.
        "usr_local_loader": target.image.libc.name == "glibc" and any(t["name"] == "tk" for t in target.tool_builds()),
        "tools_shipped": ", ".join(f"{t['name']} {t['version']}" for t in target.tool_builds() if t["name"] not in ("tcl", "tk", "curl", *IN_RUNTIME)),
        "git_lfs": target.git_lfs_file(),
        "configure_build": configure_build(target.arch, target.image.libc.name),
        # A 32-bit target on the 64-bit host of its own CPU family: every step under linux32.
        "personality": "linux32" if ARCHES[target.arch].host64 == target.build_host else None,
        "personality_host": target.build_host,
        "interpreters": builds,
        "tools_interpreter": next(b for b in builds if b.tag == target.image.tools_interpreter),
    }


def cross_compiler(target: Target) -> dict:
    """How the cross stages compile for the target.

    The compiler: the toolchain's own GCC as Debian's cross compiler where it names one
    (`cross`), else clang with --target (and the toolset's GCC installation for the runtime):
    the base's `cross_compiler`, either the pinned static clang+LLD built for the build host
    (pypa's route; unpacked from the source cache) or the family's clang from the release's
    repositories. A clang whose LLD cannot link the target arch (arches.LLD_LINKS_SINCE) is
    refused here. The target's headers and libraries: where the family can install them
    multiarch next to the host's (Debian), in the cross stage itself, with no QEMU at all;
    else the target's own build stage, mounted as sysroot."""
    family = vars(family_layer(target.base.family))
    libc = target.image.libc.name
    gnu = ARCHES[target.arch].gnu_triplet
    host = python_multiarch(target.arch, libc, (3, 99)) if libc == "musl" else gnu
    multiarch = bool(family.get("cross_multiarch"))
    out: dict = {"host": host, "sysroot_stage": not multiarch, "setup": None, "packages": [], "tool_packages": [], "no_multiarch": False, "unpack": None}
    if multiarch:
        arch = ARCHES[target.arch].debian
        out["setup"] = ["dpkg", "--add-architecture", arch]
        # The target's development packages only; what a library's build runs (perl) is the host's.
        family_libs = family["library_packages"]
        host_tools = {p for lib in target.base.libraries for p in family_libs[lib]["needs"]}
        out["packages"] = [f"{p}:{arch}" for p in ["libc6-dev", *build_packages(target, cross=True)] if p not in host_tools]
        # The from-source tools cross-compile here too (source_tools), with the target's packages.
        out["tool_packages"] = tool_packages(target, f":{arch}", cross=True)
    if target.toolchain.cross:
        version = target.toolchain.cross.rsplit("-", 1)[-1]
        # Debian's package names spell the triplet with `-` for `_` (gcc-12-x86-64-linux-gnu, the
        # cross compiler to x86_64 that an arm64 build host installs); the commands keep it.
        pkg = gnu.replace("_", "-")
        out["packages"] = [f"{target.toolchain.cross}-{pkg}", f"g++-{version}-{pkg}", *out["packages"]]
        return {**out, "cc": f"{gnu}-gcc-{version}", "cxx": f"{gnu}-g++-{version}", "tools": f"{gnu}-"}
    clang = family["cross_clang"]
    route = target.base.cross_compiler
    if route == "static-clang":
        release = target.spec.data.static_clang
        if release is None or target.build_host not in release.files:
            raise SpecError([
                f"{target.slug}: no static clang pinned for a {target.build_host} build host (images.yaml "
                f"static_clang.files has: {', '.join(release.files) if release else 'none'})"
            ])
        lld, what = release.lld, f"the static clang+LLD {release.version} for {target.build_host}"
        # The archive's own layout (pypa unpacks it into /opt): bin/ has clang, ld.lld and the
        # binutils under their plain names (ar, nm, readelf, ...), with no llvm-readelf.
        bindir, tools = "/opt/clang/bin", "/opt/clang/bin/"
        out["unpack"] = release.files[target.build_host].filename  # type: ignore[index]
    else:
        assert target.base.lld is not None  # the spec requires it with this route
        major, minor = (target.base.lld.split(".") + ["0"])[:2]
        lld = (int(major), int(minor))
        what = f"{target.base_name}'s own clang (LLD {target.base.lld})"
        bindir, tools = clang["bindir"], f"{clang['bindir']}/llvm-"
        out["packages"] = [*clang["packages"], *out["packages"]]
    need = LLD_LINKS_SINCE[target.arch]
    if lld < need:
        raise SpecError([
            f"{target.slug}: {what} cannot link {target.arch} (LLD links it from {need[0]}.{need[1]}): choose "
            f"bases.{target.base_name}.cross_compiler: static-clang, list {target.arch} under the base's emulated, or build on a {target.arch} host"
        ])
    # clang finds the target's GCC installation (crt files, libgcc) by the triplet it was built
    # for, vendor included (s390x-redhat-linux, aarch64-alpine-linux-musl): the family's names.
    target_triplet = clang.get("targets", {}).get(target.arch, host)
    flags = f"--target={target_triplet} -fuse-ld=lld" + (f" --gcc-toolchain=/sysroot{target.toolchain.prefix}" if target.toolchain.prefix else "")
    # Where clang's defaults for the target differ from the family's own GCC (the family file cites each).
    if clang.get("flags", {}).get(target.arch):
        flags += " " + clang["flags"][target.arch]
    return {
        **out, "cc": f"{bindir}/clang {flags}", "cxx": f"{bindir}/clang++ {flags}", "tools": tools,
        "no_multiarch": True, "lld": lld,
    }  # fmt: skip


def recorded_answers(target: Target) -> dict[str, dict[str, str]]:
    """Per interpreter stage of a cross build: configure's answers recorded for its base, arch
    and CPython minor (configure-answers/); a stage with none recorded derives its own."""
    if not target.cross_compiles:
        return {}
    data = configure_answers.load(target.base_name)
    out = {}
    for build in target.interpreter_builds():
        found = configure_answers.for_interpreter(data, target.arch, build.version, build.free_threaded)
        if found is not None:
            out[build.stage] = found
    return out


def render_dockerfile(target: Target, derive_answers: bool = False) -> str:
    """The Dockerfile of one image×arch; `derive_answers` adds the stages `invoke
    configure-answers` builds (configure's test programs run on the target)."""
    bits = ARCHES[target.arch].bits
    cross = target.cross_compiles
    if derive_answers and not cross:
        raise SpecError([f"{target.slug} is not cross-compiled here: its configure runs on the target itself"])
    return (
        _environment()
        .get_template("Dockerfile.j2")
        .render(
            t=stage_context(target),
            native=stage_context(target.native()) if cross else None,
            cross=cross_compiler(target) if cross else None,
            substitutions=target.substitutions,
            omitted=[tag for tag, _ in target.omitted],
            labels=image_labels(target),
            downloadable=list(target.downloadable),
            answers=recorded_answers(target),
            derive_answers=derive_answers,
            # 32-bit images on a 64-bit host: whatever way a user enters (docker exec skips the
            # entrypoint's linux32), Python names the image's own platform in wheel tags.
            host_platform=f"linux-{target.arch}" if bits == 32 else None,
        )
    )


def hashed_requirements(files: list[LockedFile] | tuple[LockedFile, ...], comment: str) -> str:
    """A requirements file pinning every version by the sha256 of each of its files."""
    by_name: dict[str, list[str]] = {}
    versions = {}
    for w in files:
        by_name.setdefault(w.name, []).append(w.sha256)
        versions[w.name] = w.version
    lines = [f"# {comment}"]
    for name in sorted(by_name):
        hashes = " ".join(f"--hash=sha256:{h}" for h in by_name[name])
        lines.append(f"{name}=={versions[name]} {hashes}")
    return "\n".join(lines) + "\n"


def tools_requirements(target: Target) -> str:
    """requirements.txt for the tools venv: every locked file of this platform, hash-pinned."""
    optional_missing = set()
    locked = wheel_pins(target.spec, target.image, target.arch)
    names = {w.name for w in locked}
    for name, _version, optional in target.spec.tool_requirements(target.image):
        if optional and name not in names:
            optional_missing.add(name)
    missing = ", ".join(sorted(optional_missing)) or "none"
    return hashed_requirements(locked, f"tools for {target.slug}; not published for this platform: {missing}")


def family_layer(family: str):
    """The family file's exported data (package lists, the package query of the SBOM)."""
    return _environment().get_template(f"families/{family}.j2").module


def sbom_input(target: Target) -> dict:
    """What the image's SBOM records besides what it reads in the image itself."""
    spec = target.spec
    family = family_layer(target.base.family)
    return {
        "image": {"org": spec.data.org, "name": target.image_name, "policy": target.image.policy, "arch": target.arch},
        "base": {"name": target.base_name, "family": target.base.family, "image": target.base.image,
                 "debootstrap": target.base.debootstrap},  # fmt: skip
        "toolchain": {"name": target.toolchain_name, "gcc": target.toolchain.gcc, "packages": list(target.toolchain.packages)},
        "cpython": [
            {"tag": b.tag, "version": b.version, "free_threaded": b.free_threaded, "filename": b.filename,
             "sha256": spec.data.cpython[b.version].sha256, "url": spec.data.cpython[b.version].url,
             "pinned": spec.data.interpreters[b.tag].cpython}  # fmt: skip
            for b in target.interpreter_builds()
        ],
        "libraries": target.library_builds(),
        "source_tools": target.tool_builds() + [{"name": "git-lfs", **lfs} for lfs in [target.git_lfs_file()] if lfs],
        "omitted": [{"tag": tag, "pinned": spec.data.interpreters[tag].cpython, "reason": why} for tag, why in target.omitted],
        "wheels": {
            "tools": [w.model_dump() for w in wheel_pins(spec, target.image, target.arch)],
            "frontend": {tag: [w.model_dump() for w in spec.frontend_pins(tag)] for tag in target.interpreters},
        },
        "package_query": str(vars(family)["package_query"]),
        "purl_type": str(vars(family)["purl_type"]),
    }


# The Debian roots' suites besides the release's own (their sources.list): its updates and its
# security updates, which the runtime stage upgrades to and the image's users' apt sees.
APT_UPDATES = "apt-updates.list"


def apt_updates(suite: str, mirror: str, security: str | None) -> str:
    """The sources.list.d file of a Debian root's <suite>-updates and (unless None) <suite>-security."""
    for url in (mirror, security or mirror):
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)*/?", url):
            raise SpecError([f"Debian mirror {url[:100]!r}: not an http(s) address of host and path"])
    return f"deb {mirror} {suite}-updates main\n" + (f"deb {security} {suite}-security main\n" if security else "")


def write_context(target: Target, cache: SourceCache, dest: Path) -> Path:
    """Write a complete build context for `target` into `dest` (replaced if present)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "Dockerfile").write_text(render_dockerfile(target))
    shutil.copytree(DOCKER_DIR / "scripts", dest / "scripts")
    stage_files(cache, target.source_pins(), dest / "sources")
    stage_files(cache, wheel_pins(target.spec, target.image, target.arch), dest / "wheels")
    (dest / "wheels" / "tools.txt").write_text(tools_requirements(target))
    for tag in (*target.interpreters, *target.downloadable):
        pins = target.spec.frontend_pins(tag)
        stage_files(cache, pins, dest / "frontend" / tag)
        (dest / "frontend" / tag / "requirements.txt").write_text(hashed_requirements(pins, f"frontend of {tag}"))
    (dest / "manylinux-interpreters.json").write_text(json.dumps(target.catalog(), indent=1) + "\n")
    (dest / "sbom-input.json").write_text(json.dumps(sbom_input(target), indent=1) + "\n")
    if target.base.debootstrap:
        security = debian_security_mirror().url if target.base.security_suite else None
        (dest / APT_UPDATES).write_text(apt_updates(target.base.debootstrap, debian_mirror().url, security))
    answers = recorded_answers(target)
    if answers:
        (dest / "configure-answers").mkdir()
        for stage, values in answers.items():
            (dest / "configure-answers" / f"{stage}.json").write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    return dest


# --- derived images ------------------------------------------------------------------------------

# Where a vendor repository's files go, per family: (definition suffixes, its directory; key
# suffixes, its directory). apk's definition is a line appended to /etc/apk/repositories.
_VENDOR_FILES = {
    "apt": ((".list", ".sources"), "/etc/apt/sources.list.d", (".asc", ".gpg"), "/etc/apt/keyrings"),
    "dnf": ((".repo",), "/etc/yum.repos.d", (".asc", ".gpg", ".key"), "/etc/pki/rpm-gpg"),
    "yum": ((".repo",), "/etc/yum.repos.d", (".asc", ".gpg", ".key"), "/etc/pki/rpm-gpg"),
    "apk": ((".repositories", ".list"), "/etc/apk", (".rsa.pub",), "/etc/apk/keys"),
}


# What `apt-cache policy` said of the declared packages before they were installed, where vendor
# repositories are declared: the SBOM names the repository each one came from.
DERIVED_PACKAGE_SOURCES = "/opt/_internal/derived-package-sources.txt"


def _vendor_repositories(target: DerivedTarget) -> list[dict[str, str]]:
    """Each vendor repository's files and where the family reads them (the definition names the
    key by that path: /etc/apt/keyrings/<name>.asc, /etc/pki/rpm-gpg/<name>.asc, ...)."""
    family = target.parent.family
    def_suffixes, def_dir, key_suffixes, key_dir = _VENDOR_FILES[family]
    out, problems = [], []
    for name, repo in target.derived.repositories.items():
        d_ext = next((s for s in def_suffixes if repo.definition.filename.endswith(s)), None)
        k_ext = next((s for s in key_suffixes if repo.key.filename.endswith(s)), None)
        where = f"derived.{target.image_name}.repositories.{name}"
        if d_ext is None:
            problems.append(f"{where}.definition: the parent's family ({family}) reads a file ending {' or '.join(def_suffixes)}")
        if k_ext is None:
            problems.append(f"{where}.key: the parent's family ({family}) reads a key ending {' or '.join(key_suffixes)}")
        if d_ext and k_ext:
            out.append({
                "name": name, "definition_file": repo.definition.filename, "key_file": repo.key.filename,
                "definition_dest": f"{def_dir}/{name}{d_ext}" if family != "apk" else f"/tmp/manyforge-{name}{d_ext}",
                "key_dest": f"{key_dir}/{name}{k_ext}",
            })  # fmt: skip
    if problems:
        raise SpecError(problems)
    return out


def _derived_python(target: DerivedTarget) -> str:
    """An interpreter of the parent to run the SBOM script with (cibuildwheel's contract:
    /opt/python holds CPythons)."""
    for tag in target.parent.interpreters:
        if re.fullmatch(r"cp3[0-9]+-cp3[0-9]+", tag):
            return f"/opt/python/{tag}/bin/python"
    raise SpecError([f"{target.slug}: its parent {target.parent.ref} has no CPython under /opt/python to run the image's steps"])


def derived_labels(target: DerivedTarget) -> dict[str, str]:
    """The OCI base-image annotations (the parent) and the image's own facts, as labels."""
    checkout = _checkout()
    parent = target.parent
    labels = {
        "org.opencontainers.image.title": target.slug,
        "org.opencontainers.image.version": f"{target.image_name}-{target.spec.revision[7:19]}",
        "org.opencontainers.image.revision": checkout["revision"],
        "org.opencontainers.image.created": checkout["created"],
        "org.opencontainers.image.base.name": parent.ref,
        "io.manyforge.parent-image-id": parent.image_id,
        "io.manyforge.policy": parent.pep600_policy,
        "io.manyforge.arch": target.arch,
        "io.manyforge.derived": target.image_name,
        "io.manyforge.spec-digest": target.spec.revision,
    }
    if "@sha256:" in parent.ref:  # a parent pinned by digest: its manifest's digest
        labels["org.opencontainers.image.base.digest"] = parent.ref.rsplit("@", 1)[1]
    libs = target.derived.libraries
    if libs:
        labels["io.manyforge.libraries"] = ",".join(f"{n}-{lib.version}" for n, lib in libs.items())
    return labels


def derived_context(target: DerivedTarget) -> dict:
    d = target.derived
    parent = target.parent
    return {
        "name": target.image_name, "arch": target.arch, "family": parent.family,
        "parent_ref": parent.ref, "parent_id": parent.image_id, "parent_tag": target.parent_tag,
        "policy": parent.policy, "os": f"{parent.os_id} {parent.os_version}",
        "spec_file": target.spec.source_file.name,
        "repositories": _vendor_repositories(target),
        "packages": list(d.packages),
        "libraries": [
            {"name": n, "version": lib.version, "filename": lib.filename, "sha256": lib.sha256, "build": lib.build, "options": list(lib.options)}
            for n, lib in d.libraries.items()
        ],
        "script": d.script.path if d.script else None,
        "package_sources": DERIVED_PACKAGE_SOURCES,
        "env": dict(d.env),
        "python": _derived_python(target),
        "labels": derived_labels(target),
    }  # fmt: skip


def render_derived_dockerfile(target: DerivedTarget) -> str:
    """The Dockerfile of a derived image×arch: a pure function of the spec and the lock."""
    return _environment().get_template("derived.Dockerfile.j2").render(d=derived_context(target))


def derived_sbom_input(target: DerivedTarget) -> dict:
    """What the derived image's SBOM records besides what it reads in the image itself."""
    d = target.derived
    family = vars(family_layer(target.parent.family))
    return {
        "image": {"org": target.org, "name": target.image_name, "arch": target.arch, "policy": target.parent.pep600_policy},
        "parent": target.parent.model_dump(),
        "packages": list(d.packages),
        "repositories": {
            r["name"]: {"definition": {**d.repositories[r["name"]].definition.model_dump(), "path": r["definition_dest"]},
                        "key": {**d.repositories[r["name"]].key.model_dump(), "path": r["key_dest"]}}
            for r in _vendor_repositories(target)
        },  # fmt: skip
        "package_sources": DERIVED_PACKAGE_SOURCES,
        "libraries": [
            {"name": n, "version": lib.version, "sha256": lib.sha256, "filename": lib.filename,
             "url": lib.url, "debian": lib.debian, "build": lib.build}  # fmt: skip
            for n, lib in d.libraries.items()
        ],
        "script": {"path": d.script.path, "installs": [c.model_dump() for c in d.script.installs]} if d.script else None,
        "package_query": str(family["package_query"]),
        "purl_type": str(family["purl_type"]),
    }


def write_derived_context(target: DerivedTarget, cache: SourceCache, dest: Path) -> Path:
    """A complete build context of a derived image: its Dockerfile, the two scripts it runs, its
    verified sources, and the project's own script (copied from beside the spec file)."""
    text = render_derived_dockerfile(target)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "scripts").mkdir(parents=True)
    (dest / "Dockerfile").write_text(text)
    for name in ("build-derived-library.sh", "write-derived-sbom.py"):
        shutil.copy2(DOCKER_DIR / "scripts" / name, dest / "scripts" / name)
    stage_files(cache, target.source_pins(), dest / "sources")
    script = target.derived.script
    if script is not None:
        root = target.spec.source_file.resolve().parent
        source = (root / script.path).resolve()
        if not source.is_relative_to(root) or not source.is_file():
            raise SpecError([f"derived.{target.image_name}.script.path: {script.path} is not a file of the project ({root})"])
        (dest / "project" / script.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / "project" / script.path)
    (dest / "derived-input.json").write_text(json.dumps(derived_sbom_input(target), indent=1) + "\n")
    return dest


def write_derived_packages_check(target: DerivedTarget, dest: Path) -> Path:
    """A build context that asks the parent's own repositories (as the parent has them set up)
    for the derived image's packages, on its platform."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    text = _environment().get_template("packages-check.j2").render(
        family=target.parent.family, base_ref=target.parent_tag,
        repositories={"enable": [], "mirror": None, "arch": target.arch, "repo_file": None},
        packages=list(target.derived.packages), then=None,
    )  # fmt: skip
    (dest / "Dockerfile").write_text(text)
    return dest
