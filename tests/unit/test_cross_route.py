"""The compiler of the RHEL-family and Alpine cross stages, per base × arch × build host: the
static clang+LLD pinned in images.yaml (pypa/manylinux's route), mounted from the source cache
by its sha256 and never downloaded in a build step; a clang whose LLD cannot link the target
arch refused at render time; and what `invoke packages-check` asks the repositories for (UBI's
cannot be reached here: the real check is the GitHub workflow's). No Docker."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
import yaml

from manyforge.arches import LLD_LINKS_SINCE
from manyforge.render import cross_compiler, packages_checks, render_dockerfile
from manyforge.sources import Pin, SourceCache, SourceError, all_pins, check_static_clang_listed, static_clang_sums_pin
from manyforge.spec import DEFAULT_SPEC, Spec, SpecError, load_spec, spec_from_data
from manyforge.target import Target, resolve_target

SPEC = load_spec()
RAW = yaml.safe_load(DEFAULT_SPEC.read_text())
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # the release's file names (pypa's helper script)


def variant(edit) -> Spec:
    raw = copy.deepcopy(RAW)
    edit(raw)
    return spec_from_data(raw, DEFAULT_SPEC, None, SPEC.lock_path, check_lock=False)


def problems(edit) -> str:
    with pytest.raises(SpecError) as caught:
        variant(edit)
    return "\n".join(caught.value.problems)


def cross_targets(spec: Spec = SPEC) -> list[Target]:
    """Every cross-compiled image × base variant × arch of a non-Debian base, on both kinds of runner."""
    out = []
    for name, image in spec.images.items():
        for base in (image.base, *image.base_variants):
            if spec.data.bases[base].family == "apt":
                continue
            for arch in image.archs:
                for host in ("x86_64", "aarch64"):
                    target = resolve_target(spec, name, arch, base=base, build_host=host)
                    if target.cross_compiles:
                        out.append(target)
    return out


TARGETS = cross_targets()


def stage(dockerfile: str, name: str) -> str:
    found = re.search(rf"^FROM (?:--platform=\S+ )?\S+ AS {name}\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S)
    assert found, name
    return found.group(1)


def test_the_cross_targets_cover_every_rhel_and_alpine_base_on_both_runners():
    covered = {(t.base_name, t.arch, t.build_host) for t in TARGETS}
    for base in ("centos7", "almalinux8", "almalinux9", "ubi9", "alpine312", "alpine322"):
        assert any(b == base and h == "x86_64" for b, _, h in covered), base
        assert any(b == base and h == "aarch64" for b, _, h in covered), base
    assert ("ubi9", "s390x", "x86_64") in covered and ("centos7", "ppc64le", "x86_64") in covered
    assert ("alpine322", "riscv64", "x86_64") in covered and ("alpine312", "x86_64", "aarch64") in covered


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t.slug}-on-{t.build_host}")
def test_the_cross_stage_compiles_with_the_pinned_static_clang_for_the_build_host(target):
    release = SPEC.data.static_clang
    assert release is not None and target.base.cross_compiler == "static-clang"
    pinned = release.files[target.build_host]
    assert pinned.filename == f"static-clang-linux-{GO_ARCH[target.build_host]}.tar.xz"
    cross = cross_compiler(target)
    triplet = re.escape(cross["cc"].split("--target=")[1].split()[0])
    # clang with the family's own GCC triplet (the toolset's GCC installation in the sysroot), LLD.
    assert re.fullmatch(rf"/opt/clang/bin/clang --target={triplet} -fuse-ld=lld( --gcc-toolchain=/sysroot/opt/rh/\S+/root/usr)?( -mthumb)?", cross["cc"])
    assert cross["cxx"] == cross["cc"].replace("/clang ", "/clang++ ", 1) and cross["tools"] == "/opt/clang/bin/"
    assert cross["lld"] >= LLD_LINKS_SINCE[target.arch]
    # Nothing of the compiler comes from the release's repositories.
    assert not [p for p in cross["packages"] if "clang" in p or "lld" in p or "llvm" in p]

    text = render_dockerfile(target)
    cross_stage = stage(text, "cross")
    mount = f"--mount=type=bind,source=sources/{pinned.filename},target=/build/{pinned.filename}"
    assert mount in cross_stage and f"tar -C /opt -xJf /build/{pinned.filename}" in cross_stage
    assert "MANYFORGE_CROSS_CC='/opt/clang/bin/clang --target=" in text
    # Pinned, fetched into the source cache by its sha256, and never downloaded in a build step.
    assert (pinned.filename, pinned.sha256, pinned.url) in {(p.filename, p.sha256, p.url) for p in target.source_pins()}
    assert target.compiler_pins() == [p for p in target.source_pins() if p.filename == pinned.filename]
    assert pinned.url not in text and "github.com" not in text
    assert not re.search(r"https?://", cross_stage)
    for run in re.findall(r"^RUN .*?(?<!\\)\n", text, re.M | re.S):
        assert not re.search(r"\b(curl|wget)\s+(-|\S*://)", run), run
    assert text.count(pinned.filename) == 3  # the mount's source and target, and tar's argument


def test_only_the_build_hosts_archive_is_mounted_and_every_archive_can_be_seeded():
    x86 = resolve_target(SPEC, "manylinux_2_34", "s390x", base="ubi9", build_host="x86_64")
    arm = resolve_target(SPEC, "manylinux_2_34", "x86_64", base="ubi9", build_host="aarch64")
    assert [p.filename for p in x86.compiler_pins()] == ["static-clang-linux-amd64.tar.xz"]
    assert [p.filename for p in arm.compiler_pins()] == ["static-clang-linux-arm64.tar.xz"]
    assert "static-clang-linux-arm64" not in render_dockerfile(x86)
    native = resolve_target(SPEC, "manylinux_2_34", "x86_64", base="ubi9", build_host="x86_64")
    assert native.compiler_pins() == [] and "clang" not in render_dockerfile(native)
    seeded = {p.filename: p.sha256 for p in all_pins(SPEC)}
    assert SPEC.data.static_clang is not None
    for f in SPEC.data.static_clang.files.values():
        assert seeded[f.filename] == f.sha256


def test_the_archives_pins_are_checked_against_the_releases_sha256sums(tmp_path):
    """pypa pins the release's sha256sums.txt, not the archives: `invoke fetch` fetches that file
    by pypa's sha256 too and refuses an archive pin it does not list."""
    sums = static_clang_sums_pin(SPEC)
    assert sums is not None and sums.sha256 == "8b399744aeb49c70048b379b9b3ffc651d86fde808551c8cc4138c4fadc5308e"
    assert sums.url == "https://github.com/mayeut/static-clang-images/releases/download/v22.1.8.1/sha256sums.txt"
    assert sums.filename in {p.filename for p in all_pins(SPEC)}
    archive = resolve_target(SPEC, "manylinux_2_34", "s390x", build_host="x86_64").compiler_pins()[0]
    text = f"{'1' * 64}  static-clang-linux-386.tar.xz\n{archive.sha256}  {archive.filename}\n".encode()
    (tmp_path / "sums").write_bytes(text)
    fake = Pin(sums.filename, hashlib.sha256(text).hexdigest(), sums.url)
    cache = SourceCache(tmp_path / "cache")
    with cache.filling():
        cache.add_file(fake, tmp_path / "sums")
    check_static_clang_listed(cache, fake, [archive])
    with pytest.raises(SourceError, match="static-clang-linux-amd64.tar.xz: its pinned sha256 is not the one"):
        check_static_clang_listed(cache, fake, [Pin(archive.filename, "2" * 64, archive.url)])


def test_the_debian_images_keep_debians_cross_gcc():
    target = resolve_target(SPEC, "manylinux_2_36", "s390x", build_host="x86_64")
    cross = cross_compiler(target)
    assert cross["cc"] == "s390x-linux-gnu-gcc-12" and cross["unpack"] is None and target.compiler_pins() == []
    assert "static-clang" not in render_dockerfile(target)


# --- a clang whose LLD cannot link the arch is refused at render time -------------------------


def distribution(base: str, lld: str):
    def edit(raw):
        raw["bases"][base]["cross_compiler"] = "distribution-clang"
        raw["bases"][base]["lld"] = lld
    return edit


@pytest.mark.parametrize(("image", "base", "arch", "lld", "need"), [
    ("musllinux_1_2", "alpine322", "s390x", "17", "18.0"),   # LLD gained SystemZ in 18
    ("manylinux_2_28", "almalinux8", "s390x", "17.0", "18.0"),
    ("manylinux_2_34", "ubi9", "s390x", "16", "18.0"),
    ("musllinux_1_2", "alpine322", "riscv64", "14", "15.0"),
])  # fmt: skip
def test_a_distribution_clang_whose_lld_cannot_link_the_arch_is_refused(image, base, arch, lld, need):
    spec = variant(distribution(base, lld))
    target = resolve_target(spec, image, arch, base=base, build_host="x86_64")
    with pytest.raises(SpecError, match=rf"cannot link {arch} \(LLD links it from {re.escape(need)}\)"):
        render_dockerfile(target)
    with pytest.raises(SpecError, match=f"bases.{base}.cross_compiler: static-clang"):
        packages_checks(target)


def test_a_distribution_clang_that_links_the_arch_installs_from_the_repositories():
    spec = variant(distribution("alpine312", "10"))
    target = resolve_target(spec, "musllinux_1_1", "ppc64le", build_host="x86_64")
    cross = cross_compiler(target)
    assert cross["cc"].startswith("/usr/bin/clang --target=powerpc64le-alpine-linux-musl ") and cross["unpack"] is None
    assert cross["packages"] == ["clang", "lld", "llvm"] and target.compiler_pins() == []
    text = render_dockerfile(target)
    assert "clang lld llvm" in stage(text, "cross") and "static-clang" not in text
    assert all(p in packages_checks(target)[1][1] for p in ("clang", "lld", "llvm"))
    s390x = resolve_target(variant(distribution("alpine322", "20")), "musllinux_1_2", "s390x", build_host="x86_64")
    assert cross_compiler(s390x)["lld"] == (20, 0)  # Alpine 3.22's LLD 20 links s390x


def test_a_static_clang_release_older_than_lld_18_is_refused_for_s390x_only():
    def edit(raw):
        raw["static_clang"]["version"] = "17.0.6.0"
    spec = variant(edit)
    with pytest.raises(SpecError, match=r"the static clang\+LLD 17.0.6.0 for x86_64 cannot link s390x"):
        render_dockerfile(resolve_target(spec, "manylinux_2_34", "s390x", build_host="x86_64"))
    render_dockerfile(resolve_target(spec, "manylinux_2_34", "ppc64le", build_host="x86_64"))


def test_a_build_host_with_no_pinned_archive_is_refused_with_what_is_pinned():
    def edit(raw):
        del raw["static_clang"]["files"]["aarch64"]
    target = resolve_target(variant(edit), "manylinux_2_28", "x86_64", build_host="aarch64")
    with pytest.raises(SpecError, match=r"no static clang pinned for a aarch64 build host .*has: x86_64, ppc64le, s390x, riscv64"):
        render_dockerfile(target)


# --- the spec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda raw: raw["bases"]["ubi9"].pop("cross_compiler"), "bases.ubi9: cross_compiler: required for family dnf"),
    (lambda raw: raw["bases"]["ubi9"].update(cross_compiler="gcc"), "bases.ubi9.cross_compiler"),
    (lambda raw: raw["bases"]["ubi9"].update(cross_compiler="distribution-clang"), "bases.ubi9: lld: give the release's LLD version"),
    (lambda raw: raw["bases"]["ubi9"].update(lld="18"), "bases.ubi9: lld: give the release's LLD version"),
    (lambda raw: raw["bases"]["debian12"].update(cross_compiler="static-clang"), "bases.debian12: cross_compiler/lld: family apt"),
    (lambda raw: raw.pop("static_clang"), "bases.centos7.cross_compiler: static-clang needs a pinned release under static_clang"),
    (lambda raw: raw["static_clang"]["files"].update(armv7l=raw["static_clang"]["files"]["x86_64"]), "static_clang.files.armv7l"),
    (lambda raw: raw["static_clang"]["files"]["x86_64"].update(sha256="0" * 63), "static_clang.files.x86_64.sha256"),
    (lambda raw: raw["static_clang"]["files"]["x86_64"].update(url="https://example.org/clang.zip"), "static_clang.files.x86_64.url"),
    (lambda raw: raw["static_clang"].update(version="22.1.8.1; curl"), "static_clang.version"),
    (lambda raw: raw["static_clang"]["files"]["s390x"].update(url="https://github.com/other/x/static-clang-linux-s390x.tar.xz"),
     "static_clang: files: every archive must be a file of the one release"),
])  # fmt: skip
def test_the_route_is_validated(edit, expected):
    assert expected in problems(edit)


# --- invoke packages-check: UBI's cross stages -------------------------------------------------


@pytest.mark.parametrize("arch", ["aarch64", "ppc64le", "s390x"])
@pytest.mark.parametrize("toolchain", ["gcc-toolset-14", "gcc-toolset-13"])
def test_packages_check_for_ubi_asks_for_the_sysroot_and_the_cross_stage(arch, toolchain):
    """`invoke packages-check --image manylinux_2_34 --base ubi9 --arch <arch>` on x86_64: the
    target's own stages (which are the cross stages' sysroot) on the target's platform, and the
    cross stage (the build host's runtime and build stages; the compiler comes from the source
    cache) on the build host's."""
    target = resolve_target(SPEC, "manylinux_2_34", arch, base="ubi9", toolchain=toolchain, build_host="x86_64")
    (own, own_packages, own_setup), (host, host_packages, host_setup) = packages_checks(target)
    assert (own.arch, own.base_name, host.arch, host.base_name) == (arch, "ubi9", "x86_64", "ubi9")
    assert own_setup is None and host_setup is None
    sysroot = [f"{toolchain}-gcc", f"{toolchain}-gcc-c++", f"{toolchain}-gcc-gfortran", f"{toolchain}-libatomic-devel",
               "tk-devel", "gdbm-devel", "openssl-devel", "libffi-devel", "readline-devel", "sqlite-devel"]  # fmt: skip
    assert all(p in own_packages for p in sysroot), [p for p in sysroot if p not in own_packages]
    # The cross stage: the build host's own stages (tar and xz unpack the static clang), no clang.
    assert all(p in host_packages for p in (*sysroot, "tar", "xz"))
    assert not [p for p in host_packages if re.match(r"(clang|lld|llvm)\b", p)]
    # Both lists are what the Dockerfile installs, stage by stage.
    text = render_dockerfile(target)
    own_stages = stage(text, "runtime") + stage(text, "build") + stage(text, "source_tools") + stage(text, "final")
    host_stages = stage(text, "native_runtime") + stage(text, "native_build")
    assert all(p in own_stages for p in own_packages) and all(p in host_stages for p in host_packages)


def test_packages_check_with_ubis_own_clang_asks_ubi_for_clang_lld_llvm():
    target = resolve_target(variant(distribution("ubi9", "19")), "manylinux_2_34", "aarch64", base="ubi9", build_host="x86_64")
    host_packages = packages_checks(target)[1][1]
    assert {"clang", "lld", "llvm"} <= set(host_packages) and "gcc-toolset-14-gcc" in host_packages
