"""The images our machines cannot build (their bases cannot be pulled here), read in their
rendered Dockerfiles for each known defect of the seed images (issue 10), plus the shared
mechanisms behind the fixes: fallbacks, from-source libraries, platform triplets."""

from __future__ import annotations

import re

import pytest

from manyforge.arches import configure_build, python_multiarch
from manyforge.render import build_packages, declared_packages, image_labels, render_dockerfile, stage_context
from manyforge.spec import load_spec
from manyforge.target import resolve_target

SPEC = load_spec()


def rendered(image: str, arch: str, **choices) -> str:
    return render_dockerfile(resolve_target(SPEC, image, arch, **choices))


def runtime_stage(text: str) -> str:
    return text.split(" AS build\n")[0]


@pytest.mark.parametrize("arch", SPEC.image("manylinux2014").archs)
def test_centos7_points_every_repository_at_the_vault_before_installing(arch):
    text = rendered("manylinux2014", arch)
    runtime = runtime_stage(text)
    setup = runtime.index("bash /build/yum-repos.sh https://vault.centos.org " + arch)
    assert setup < runtime.index("yum install")
    assert "centos-release-scl-rh" not in text  # the script adds SCL, then fixes its repo files too


def test_centos7_i686_takes_devtoolset_from_copr():
    text = rendered("manylinux2014", "i686")
    assert re.search(r"yum-repos\.sh \S+ i686 https://\S+/mayeut-devtoolset-10-custom-1\.repo\n", text)
    assert not re.search(r"yum-repos\.sh \S+ x86_64 \S+\.repo", rendered("manylinux2014", "x86_64"))


def test_yum_refuses_missing_package_names():
    script = (SPEC.path.parent / "docker" / "scripts" / "yum-repos.sh").read_text()
    assert "skip_missing_names_on_install=False" in script
    assert script.index("centos-release-scl-rh") < script.rindex("to_vault")


@pytest.mark.parametrize("arch", ["x86_64", "i686"])
def test_centos7_builds_openssl_sqlite_zstd_from_source_for_its_interpreters(arch):
    target = resolve_target(SPEC, "manylinux2014", arch)
    text = render_dockerfile(target)
    for lib in ("openssl", "sqlite", "zstd"):
        assert f"FROM build AS lib_{lib}\n" in text
        assert f"COPY --from=lib_{lib} /opt/_internal/lib/usr/local/ /usr/local/" in text
    assert "OPENSSLDIR=/etc/pki/tls" in text
    for b in target.interpreter_builds():
        assert f"FROM cpython_build AS {b.stage}\n" in text
    # Only the built libraries can be found: the distribution's too-old ones are not installed.
    assert "openssl-devel" not in build_packages(target) and "sqlite-devel" not in build_packages(target)
    assert "perl-core" in build_packages(target)


def test_locale_exists_on_each_release():
    assert "LANG=en_US.UTF-8" in rendered("manylinux2014", "x86_64")
    for image in ("manylinux_2_28", "manylinux_2_34", "musllinux_1_2", "manylinux_2_36"):
        assert "LANG=C.UTF-8" in rendered(image, "x86_64")


@pytest.mark.parametrize(("image", "base", "repo"), [
    ("manylinux_2_28", None, "powertools"), ("manylinux_2_34", None, "crb"),
    ("manylinux_2_34", "ubi9", "ubi-9-codeready-builder-rpms"),
])  # fmt: skip
def test_el_images_enable_the_repository_with_gdbm_devel(image, base, repo):
    runtime = runtime_stage(rendered(image, "aarch64", base=base))
    assert runtime.index(f"dnf config-manager --set-enabled {repo}") < runtime.index("dnf install -y -q --allowerasing --setopt")
    assert "gdbm-devel" in rendered(image, "aarch64", base=base).split(" AS build\n")[1]


def test_el9_x86_64_compilers_are_wrapped_to_the_x86_64_baseline():
    for base in ("almalinux9", "ubi9"):
        assert "fix-toolchain.sh --march x86-64 --prefix /opt/rh/gcc-toolset-14/root/usr" in rendered(
            "manylinux_2_34", "x86_64", base=base
        )
    assert "--march" not in runtime_stage(rendered("manylinux_2_34", "aarch64"))
    assert "--march" not in rendered("manylinux_2_28", "x86_64")
    # The wrappers land in /usr/local/bin, which comes before the toolset on PATH.
    assert "PATH=/usr/local/sbin:/usr/local/bin:/opt/rh/gcc-toolset-14/root/usr/bin:" in rendered("manylinux_2_34", "x86_64")


# pypa's build.sh (commit ad3c4539), PREPEND_PATH per policy: manylinux2014 and manylinux_2_28
# "${DEVTOOLSET_ROOTPATH}/usr/bin:", manylinux_2_34 "/usr/local/bin:${DEVTOOLSET_ROOTPATH}/usr/bin:",
# before the base image's PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin).
PYPA_PATH = {
    "manylinux2014": "/opt/rh/devtoolset-10/root/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "manylinux_2_28": "/opt/rh/gcc-toolset-14/root/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "manylinux_2_34": "/usr/local/bin:/opt/rh/gcc-toolset-14/root/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


@pytest.mark.parametrize("image", sorted(PYPA_PATH))
def test_toolset_images_order_path_as_pypa_s(image):
    """The same directories, searched in the same order, as on pypa's image of the policy (pypa's
    2_34 PATH names /usr/local/bin twice: the first of each counts; /usr/local/sbin, empty in
    both, is left out of the comparison)."""

    def order(path: str) -> list[str]:
        return [d for d in dict.fromkeys(path.split(":")) if d != "/usr/local/sbin"]

    for arch in SPEC.image(image).archs:
        text = render_dockerfile(resolve_target(SPEC, image, arch))
        ours = re.search(r"^    PATH=(\S+)$", text, re.M)
        assert ours is not None
        assert order(ours.group(1)) == order(PYPA_PATH[image]), (image, arch)


@pytest.mark.parametrize("image", ["manylinux2014", "manylinux_2_28", "manylinux_2_34"])
def test_toolset_images_fix_the_libstdcxx_linker_script_and_have_libatomic(image):
    target = resolve_target(SPEC, image, "aarch64")
    assert f"fix-toolchain.sh --prefix {target.toolchain.prefix}" in render_dockerfile(target)
    assert any(p.endswith("-libatomic-devel") for p in declared_packages(target))


def test_every_toolchain_links_libatomic():
    for name, toolchain in SPEC.data.toolchains.items():
        family = {"/opt/rh": "rpm"}.get((toolchain.prefix or "")[:7], "other")
        if family == "rpm":
            assert any(p.endswith("-libatomic-devel") for p in toolchain.packages), name


@pytest.mark.parametrize(("arch", "libc", "version", "triplet"), [
    ("x86_64", "musl", (3, 13), "x86_64-linux-musl"), ("i686", "musl", (3, 12), "i386-linux-musl"),
    ("armv7l", "musl", (3, 11), "arm-linux-musleabihf"), ("ppc64le", "musl", (3, 13), "powerpc64le-linux-musl"),
    ("i686", "musl", (3, 10), "i386-linux-gnu"), ("armv7l", "musl", (3, 9), "arm-linux-gnueabihf"),
    ("i686", "glibc", (3, 13), "i386-linux-gnu"), ("armv7l", "glibc", (3, 13), "arm-linux-gnueabihf"),
])  # fmt: skip
def test_platform_triplets_are_cpythons(arch, libc, version, triplet):
    assert python_multiarch(arch, libc, version) == triplet


@pytest.mark.parametrize(("image", "host"), [("manylinux_2_36", "arm-linux-gnueabihf"), ("musllinux_1_2", "arm-linux-musleabihf")])
def test_armv7l_interpreters_are_configured_for_armv7l_whatever_the_host_reports(image, host):
    target = resolve_target(SPEC, image, "armv7l")
    text = render_dockerfile(target)
    # Cross-compiled here: configure is told the target; built on an arm64 host (where linux32
    # reports armv8l) it is told the build machine.
    # (every interpreter, every from-source library the base builds, and git where a multiarch
    # cross stage builds the source tools)
    tools = 1 if "git" in target.base.source_tools and target.base.family == "apt" else 0
    assert text.count(f"MANYFORGE_CROSS={host} ") == len(target.interpreters) + len(target.base.libraries) + tools
    assert stage_context(target)["configure_build"] == configure_build("armv7l", SPEC.image(image).libc.name)
    assert configure_build("armv7l", "glibc") == "armv7l-unknown-linux-gnueabihf"
    assert configure_build("armv7l", "musl") == "arm-linux-musleabihf" and configure_build("aarch64", "glibc") is None
    # `docker exec` skips the entrypoint's linux32: Python still names the image's platform.
    assert "ENV _PYTHON_HOST_PLATFORM=linux-armv7l" in text


def test_every_minor_pins_its_newest_release_and_fallbacks_are_older_releases():
    for tag, interp in SPEC.data.interpreters.items():
        minor = interp.cpython.split(".")[:2]
        for older in interp.fallback:
            assert older.split(".")[:2] == minor, tag
    pinned = {".".join(v.split(".")[:2]) for v in SPEC.data.cpython}
    assert {"3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15"} <= pinned


def test_a_fallback_is_declared_in_the_header_labels_and_manifest():
    target = resolve_target(SPEC, "manylinux_2_36", "x86_64").with_cpython(
        {"cp39-cp39": "3.9.2", "cp311-cp311": "3.11.15", "cp313-cp313": "3.13.15", "cp313-cp313t": "3.13.18"}
    )
    assert target.substitutions == [("cp39-cp39", "3.9.25", "3.9.2"), ("cp313-cp313", "3.13.18", "3.13.15")]
    text = render_dockerfile(target)
    assert "# FALLBACK: cp39-cp39 is built from CPython 3.9.2: no origin of this site serves the pinned 3.9.25." in text
    assert "sources/Python-3.9.2.tar.xz" in text and "sources/Python-3.13.18.tar.xz" in text
    assert image_labels(target)["io.manyforge.cpython-fallbacks"] == (
        "cp39-cp39=3.9.2 (pinned 3.9.25),cp313-cp313=3.13.15 (pinned 3.13.18)"
    )
    assert target.catalog()["fallbacks"]["cp39-cp39"] == {"pinned": "3.9.25", "built": "3.9.2"}
    plain = resolve_target(SPEC, "manylinux_2_36", "x86_64")
    assert "FALLBACK" not in render_dockerfile(plain) and "io.manyforge.cpython-fallbacks" not in image_labels(plain)


def test_header_says_what_the_pinned_base_fixes_per_family():
    assert "packages come from the CentOS 7 vault" in rendered("manylinux2014", "x86_64")
    assert "packages come from the distribution's live repositories" in rendered("manylinux_2_34", "x86_64")
    assert "packages come from Alpine's live repositories" in rendered("musllinux_1_2", "x86_64")
    assert "debootstrapped from Debian's signed archive" in rendered("manylinux_2_36", "x86_64")
    for image in SPEC.images:
        assert "fixes the package set" not in rendered(image, "x86_64")
