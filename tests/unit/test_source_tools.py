"""Tools pypa's images carry newer than a release packages them (issue 19, item 5): git,
autoconf, automake, libtool and (manylinux2014) Tcl/Tk built from their pins, git-lfs from its
release archive where the distribution has none. Read from the rendered Dockerfiles, per family."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dockerfile_stages import stages
from packaging.version import Version

from manyforge.contract_table import load_contract
from manyforge.render import build_packages, family_layer, render_dockerfile
from manyforge.spec import SOURCE_TOOL_ORDER, load_spec
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec()
CONTRACT = load_contract()
BUILD_TOOLS = ("git", "autoconf", "automake", "libtool")
# One image of each base (its own arch first, then a cross-compiled one), every variant base too.
TARGETS = [
    resolve_target(SPEC, name, arch, base=base)
    for name, image in SPEC.images.items()
    for base in (image.base, *image.base_variants)
    for arch in dict.fromkeys([image.archs[0], image.archs[-1]])
]


def tool_runs(stage_text: str) -> list[tuple[str, str]]:
    """(tool, source file) of every build-tool.sh step of a stage, in order."""
    return re.findall(r"bash /build/build-tool\.sh (\S+) /build/(\S+) ", stage_text)


def test_every_base_builds_or_declares_its_build_tools():
    """No base carries git or an autotool older than pypa's unless tests/contract.yaml says
    that it keeps its release's, and why; a built one, or one from a newer Debian suite's
    package, is never older than pypa's (tests/contract.yaml pypa_versions, read from pypa's
    Dockerfile)."""
    assert CONTRACT.release_tools_why.strip() or not CONTRACT.release_tools
    for name, base in SPEC.data.bases.items():
        for tool in BUILD_TOOLS:
            assert not (tool in base.source_tools and tool in base.debian_tools), f"{name}: {tool} both built and installed as a package"
            if tool in base.source_tools or tool in base.debian_tools:
                pinned = SPEC.data.source_tools[tool].version if tool in base.source_tools else SPEC.data.debian_tools[tool].upstream
                assert Version(pinned) >= Version(CONTRACT.pypa_versions[tool]), (name, tool, pinned)
                assert tool not in CONTRACT.release_tools.get(name, {}), f"{name}: {tool} both provided and kept"
            else:
                kept = CONTRACT.release_tools.get(name, {}).get(tool)
                assert kept, f"{name}: {tool} is neither built from source nor declared kept in tests/contract.yaml"
                # Kept on purpose means older than pypa's: otherwise the row would not differ.
                assert Version(kept) < Version(CONTRACT.pypa_versions[tool]), (name, tool, kept)
    for name in CONTRACT.release_tools:
        assert name in SPEC.data.bases, f"tests/contract.yaml release_tools: no base {name}"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.slug)
def test_rendered_dockerfile_builds_the_base_s_tools_from_their_pins(target):
    text = render_dockerfile(target)
    parts = stages(text)
    built = [n for n in SOURCE_TOOL_ORDER if n in target.base.source_tools and n not in ("tcl", "tk", "libxcrypt")]
    staged = {p.filename: p for p in target.source_pins()}
    if not built:
        assert "source_tools" not in parts and "COPY --from=source_tools" not in text
        return
    # A multiarch cross build (Debian) cross-compiles git in its own stage, the rest on the target.
    both = parts.get("source_tools_cross", "") + parts["source_tools"]
    runs = tool_runs(both)
    assert sorted(name for name, _ in runs) == sorted(built)
    for name, filename in runs:
        pin = SPEC.data.source_tools[name]
        # The file the step reads is the pinned one, staged into the context by its sha256.
        assert filename == pin.filename and filename in staged and staged[filename].sha256 == pin.sha256
        assert f"sources/{filename},target=/build/{filename}" in both
        assert f"sha256 {pin.sha256}" in both  # the Dockerfile says what it builds
    final = parts["final"]
    assert "COPY --from=source_tools /opt/_internal/source-tools/usr/local/ /usr/local/" in final
    assert final.index("COPY --from=source_tools") < final.index("finalize.sh")  # before ldconfig
    # curl is built for git's link only (CentOS 7): it never reaches /usr/local of the image.
    if "curl" in built:
        assert built.index("curl") < built.index("git")
        assert "for git's build only: static, not shipped" in parts["source_tools"]
    # What git's build needs of the family (libcurl's headers where the release's libcurl is new
    # enough) is installed in the source_tools stage, never in the build stage the interpreters
    # start from: adding a tool must not rebuild an interpreter.
    needs = vars(family_layer(target.base.family)).get("source_tool_packages", {}).get("git", {}).get("needs", [])
    if "git" in built and needs:
        assert not set(needs) & set(build_packages(target)), needs
        install = (parts.get("source_tools_cross") or parts["source_tools"]).split("bash /build/build-tool.sh")[0]
        for p in needs:
            # Cross-compiled with multiarch packages (Debian): the target's own, e.g. libcurl4-openssl-dev:s390x.
            assert re.search(rf"\s{re.escape(p)}(:[a-z0-9]+)?\s", install), (p, install)


@pytest.mark.parametrize("target", [t for t in TARGETS if t.base.family == "apt"], ids=lambda t: t.slug)
def test_debian_images_build_git_natively_or_cross_compiled_never_under_qemu(target):
    """The Debian images' git: from the build stage natively, and on a cross-built arch in a
    stage of the cross environment (the target's gcc, its libcurl as a multiarch package), so no
    compile of it runs under QEMU; the image's `git --version --build-options` names the target's CPU."""
    parts = stages(render_dockerfile(target))
    tools = parts["source_tools"]
    debian_arch = {"x86_64": "amd64", "i686": "i386", "aarch64": "arm64", "armv7l": "armhf", "ppc64le": "ppc64el"}.get(target.arch, target.arch)
    if target.cross_compiles:
        crossed = parts["source_tools_cross"]
        assert crossed.startswith("FROM cross AS source_tools_cross")
        assert [n for n, _ in tool_runs(crossed)] == ["git"]
        assert f"libcurl4-openssl-dev:{debian_arch}" in crossed
        assert "MANYFORGE_CROSS=" in crossed and "target=/build/cross-env.sh" in crossed
        # libtool on the target (its configure records the target's own search paths), under QEMU.
        assert tools.startswith("FROM runtime AS source_tools") and "MANYFORGE_CROSS=" not in tools
        assert [n for n, _ in tool_runs(tools)] == ["libtool"]
        assert "COPY --from=source_tools_cross /opt/_internal/source-tools/ /opt/_internal/source-tools/" in tools
    else:
        assert "source_tools_cross" not in parts and "MANYFORGE_CROSS=" not in tools
        assert re.search(r"\slibcurl4-openssl-dev\s", tools)
        assert [n for n, _ in tool_runs(tools)] == ["git", "libtool"]
    # The release's libtool goes; aclocal (the release's automake) searches /usr/local's macros.
    final = parts["final"]
    assert "apt-get purge -y -qq libtool libtool-bin" in final
    assert "acdir=$(aclocal --print-ac-dir) && test -d \"$acdir\"" in final
    assert "/usr/local/share/aclocal >> \"$acdir/dirlist\"" in final


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.slug)
def test_newer_debian_packages_install_from_their_pins(target):
    """debian_tools: each .deb the final stage installs is the one pinned for the arch (or `all`),
    staged into the context by its sha256, mounted and installed by path; nothing elsewhere."""
    text = render_dockerfile(target)
    parts = stages(text)
    names = target.base.debian_tools
    if not names:
        assert "/build/debs/" not in text
        return
    final = parts["final"]
    staged = {p.filename: p for p in target.source_pins()}
    for name in names:
        f = SPEC.data.debian_tools[name].file_for(target.arch)
        assert f is not None and f.filename in staged and staged[f.filename].sha256 == f.sha256
        assert f.filename.endswith(("_all.deb", f"_{ {'x86_64': 'amd64', 'i686': 'i386', 'aarch64': 'arm64', 'armv7l': 'armhf', 'ppc64le': 'ppc64el'}.get(target.arch, target.arch)}.deb"))  # noqa: E501
        assert f"source=sources/{f.filename},target=/build/debs/{f.filename}" in final
        assert f"/build/debs/{f.filename}" in final.split("apt-get install", 1)[1]
        assert f"sha256 {f.sha256}" in final
    # After the source_tools copy, before finalize.sh (whose SBOM then lists their versions).
    assert final.index("/build/debs/") < final.index("finalize.sh")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.slug)
def test_every_family_installs_git_lfs(target):
    """git-lfs is in every image: the distribution's package where it has one (Debian, Alpine),
    else the release archive of the image's arch, sha256-pinned, unpacked in the final stage."""
    text = render_dockerfile(target)
    parts = stages(text)
    family = vars(family_layer(target.base.family))
    if target.base.git_lfs_release:
        lfs = SPEC.data.git_lfs
        f = lfs.files[target.arch]
        assert (f"bash /build/build-tool.sh git-lfs /build/{f.filename} /") in parts["final"]
        assert f"sha256 {f.sha256}" in parts["final"]
        assert any(p.filename == f.filename and p.sha256 == f.sha256 for p in target.source_pins())
        assert f"-{ {'x86_64': 'amd64', 'i686': '386', 'aarch64': 'arm64', 'armv7l': 'arm'}.get(target.arch, target.arch)}-" in f.filename
        assert "git-lfs" not in family["runtime_packages"]
    else:
        assert "git-lfs" in family["runtime_packages"] and "build-tool.sh git-lfs" not in text
        assert target.base.family in ("apt", "apk")


def test_manylinux2014_links_tkinter_against_the_built_tk():
    """CentOS 7's Tk is 8.5: Tcl/Tk 8.6 (pypa's version) build before the interpreters, the
    release's Tk headers are not in the build stage, and the final image carries the built Tk."""
    for arch in SPEC.image("manylinux2014").archs:
        target = resolve_target(SPEC, "manylinux2014", arch)
        assert target.base.family == "yum" and {"tcl", "tk"} <= set(target.base.source_tools)
        assert Version(SPEC.data.source_tools["tk"].version) >= Version(CONTRACT.pypa_versions["tk"])
        text = render_dockerfile(target)
        parts = stages(text)
        assert [n for n, _ in tool_runs(parts["tcltk"])] == ["tcl", "tk"]
        assert parts["tcltk"].startswith("FROM build AS tcltk")
        assert "tk-devel" not in build_packages(target) and "tcl-devel" not in build_packages(target)
        assert "libXft-devel" in build_packages(target)  # Tk 8.6 with Xft fonts, as pypa's
        assert "COPY --from=tcltk /opt/_internal/tcltk/usr/local/ /usr/local/" in parts["cpython_build"]
        assert "COPY --from=tcltk /opt/_internal/tcltk/usr/local/ /usr/local/" in parts["final"]
        # The loader finds the built libtcl/libtk from the runtime stage on, which every stage
        # that builds or checks an interpreter starts from (CentOS 7 does not search /usr/local).
        assert "/etc/ld.so.conf.d/00-manylinux.conf && ldconfig" in parts["runtime"]
        # Every interpreter (or, cross-compiled, its sysroot) starts from the stage with Tk 8.6;
        # a cross-compiled one's check on the target (tkinter's import) has it too.
        for b in target.interpreter_builds():
            stage = parts.get(f"cross_{b.stage}") if target.cross_compiles else parts[b.stage]
            assert stage is not None
            if target.cross_compiles:
                assert "from=cpython_build,target=/sysroot" in stage
                check = parts[b.stage]
                assert check.index("COPY --from=tcltk /opt/_internal/tcltk/usr/local/ /usr/local/") < check.index("check-cpython.py")
            else:
                assert stage.startswith(f"FROM cpython_build AS {b.stage}")
    # No other image builds Tk: their releases' Tk is 8.6.
    for name, image in SPEC.images.items():
        if name != "manylinux2014":
            assert "tk" not in SPEC.data.bases[image.base].source_tools


def test_build_tool_script_has_a_recipe_for_every_tool():
    script = (ROOT / "docker" / "scripts" / "build-tool.sh").read_text()
    recipes = {n.strip() for arm in re.findall(r"^    ([a-z| -]+)\)$", script, re.M) for n in arm.split("|")}
    assert set(SOURCE_TOOL_ORDER) | {"git-lfs"} <= recipes, recipes


def test_the_time_model_counts_the_tools_under_qemu_for_an_emulated_target():
    """The workflow's time estimates count the from-source tools: natively once, ten times that
    for an emulated target (its source_tools and tcltk stages run under QEMU)."""
    import copy

    import yaml

    from manyforge import workflow
    from manyforge.spec import DEFAULT_SPEC, spec_from_data

    raw = copy.deepcopy(yaml.safe_load(DEFAULT_SPEC.read_text()))
    raw["bases"]["almalinux8"]["source_tools"] = []
    bare = spec_from_data(raw, DEFAULT_SPEC, None, SPEC.lock_path, check_lock=False)
    tools = sum(workflow.SOURCE_TOOL_S[t] for t in SPEC.data.bases["almalinux8"].source_tools)
    for arch, factor in (("x86_64", 1), ("s390x", workflow.EMULATION_FACTOR)):
        with_tools = workflow.estimate(resolve_target(SPEC, "manylinux_2_28", arch, build_host="x86_64"))
        without = workflow.estimate(resolve_target(bare, "manylinux_2_28", arch, build_host="x86_64"))
        added = with_tools.minutes_cached - without.minutes_cached
        assert added == pytest.approx(tools * factor * workflow.FOUR_CORE_FACTOR / 60, abs=1), (arch, added)
        assert with_tools.minutes_uncached < workflow.JOB_BUDGET_MINUTES


def test_manylinux2014_replaces_glibc_s_libcrypt_with_libxcrypt_in_the_runtime_stage():
    """pypa's manylinux2014 carries libxcrypt 4.5.2 (libcrypt.so.2, a glibc-compatible
    libcrypt.so.1) in place of glibc's libcrypt, from its runtime stage on, so the interpreters
    and every later stage link it: ours builds it from pypa's pin in the runtime stage, after the
    loader searches /usr/local, and no other image does. (Only the workflow builds manylinux2014:
    the recipe's own checks, both sonames in /usr/local/lib and none of glibc's left, run there.)"""
    assert Version(SPEC.data.source_tools["libxcrypt"].version) >= Version(CONTRACT.pypa_versions["libxcrypt"])
    for name, image in SPEC.images.items():
        for arch in image.archs:
            target = resolve_target(SPEC, name, arch)
            runtime = stages(render_dockerfile(target))["runtime"]
            if name != "manylinux2014":
                assert "libxcrypt" not in target.base.source_tools and "build-tool.sh libxcrypt" not in runtime
                continue
            pin = SPEC.data.source_tools["libxcrypt"]
            assert f"bash /build/build-tool.sh libxcrypt /build/{pin.filename} /" in runtime
            assert f"sha256 {pin.sha256}" in runtime
            assert runtime.index("00-manylinux.conf && ldconfig") < runtime.index("build-tool.sh libxcrypt")
            assert any(p.filename == pin.filename and p.sha256 == pin.sha256 for p in target.source_pins())
