"""Rendering: every image×arch and variant renders, lints clean, and keeps build-only packages
out of the final stage."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from dockerfile_stages import stages

from manyforge.arches import ARCHES
from manyforge.render import packages_checks, render_dockerfile, write_packages_check
from manyforge.spec import SpecError, load_spec
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec()
TARGETS = [
    resolve_target(SPEC, name, arch, base=base, toolchain=toolchain)
    for name, image in SPEC.images.items()
    for arch in image.archs
    for base in (image.base, *image.base_variants)
    for toolchain in (image.toolchain, *image.toolchain_variants)
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dockerfiles")
    paths = {}
    for target in TARGETS:
        path = out / f"{target.slug}.Dockerfile"
        path.write_text(render_dockerfile(target))
        paths[target.slug] = path
    return paths


def test_every_image_arch_and_variant_renders(rendered):
    assert len(rendered) == len(TARGETS) >= 35
    assert "manylinux_2_34_s390x-ubi9-gcc-toolset-13" in rendered


def test_hadolint_passes_on_every_rendered_file(rendered):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is installed with the test extras"
    files = [*map(str, rendered.values()), str(ROOT / "docker" / "bootstrap-base.Dockerfile")]
    proc = subprocess.run([hadolint, *files], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_passes_on_every_script():
    scripts = sorted((ROOT / "docker" / "scripts").glob("*.sh")) + sorted((ROOT / "scripts").glob("*.sh"))
    scripts += sorted((ROOT / ".ci").glob("*"))
    assert len(scripts) >= 8
    proc = subprocess.run(["shellcheck", "--shell=bash", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("target", TARGETS, ids=[t.slug for t in TARGETS])
def test_stage_layout(target):
    text = render_dockerfile(target)
    parts = stages(text)
    builds = target.interpreter_builds()
    # One stage per interpreter, each built from its own pinned tarball.
    for b in builds:
        compiled = parts.get(f"cross_{b.stage}", parts[b.stage])
        assert f"sources/{b.filename}" in compiled
        assert ("--disable-gil" in compiled) == b.free_threaded
        assert f"COPY --from={b.stage} {b.prefix} {b.prefix}" in parts["final"]
    assert parts["final"].startswith("FROM runtime AS final")
    # The family's build-only packages are installed in the build stage and nowhere else.
    build_pkgs = re.findall(r"\b[\w.+-]+-(?:dev|devel)\b", parts["build"])
    assert build_pkgs
    for stage, body in parts.items():
        if stage not in ("build", "native_build", "cross"):  # the stages that compile
            assert not set(build_pkgs) & set(re.findall(r"\b[\w.+-]+-(?:dev|devel)\b", body)), stage
    assert f"AUDITWHEEL_PLAT={target.auditwheel_policy}_{target.arch}" in parts["final"]
    for package in target.toolchain.packages:
        assert package in parts["runtime"]
    assert target.base_ref() in text.splitlines()[text.splitlines().index(parts["runtime"].splitlines()[0])]


def test_every_interpreter_gets_its_frontend_in_its_own_layer():
    for target in TARGETS[:: max(1, len(TARGETS) // 12)]:
        parts = stages(render_dockerfile(target))
        for b in target.interpreter_builds():
            # compile first, frontend after: a frontend bump keeps CPython's layer. A cross
            # build copies its native twin's frontend (the native_ stage installs it).
            native = parts[f"native_{b.stage}" if target.cross_compiles else b.stage]
            assert f"source=frontend/{b.tag},target=/build/frontend" in native
            body = parts[f"cross_{b.stage}" if target.cross_compiles else b.stage]
            frontend = "copy-frontend.sh /opt/_internal/build-python " if target.cross_compiles else "install-frontend.sh "
            assert body.index("build-cpython.sh /build/") < body.index(frontend + b.prefix)
        for tag in target.downloadable:
            assert f"COPY frontend/{tag} /opt/_internal/frontend/{tag}" in parts["final"]


def test_32bit_images_name_their_platform_for_docker_exec():
    for arch, expected in [("i686", "linux-i686"), ("armv7l", "linux-armv7l"), ("x86_64", None)]:
        final = stages(render_dockerfile(resolve_target(SPEC, "manylinux_2_36", arch)))["final"]
        if expected:
            assert f"ENV _PYTHON_HOST_PLATFORM={expected}" in final
        else:
            assert "_PYTHON_HOST_PLATFORM" not in final


def test_base_is_pinned_by_digest_or_bootstrapped():
    for target in TARGETS:
        ref = target.base_ref()
        assert "@sha256:" in ref or target.base.debootstrap, ref


def test_partial_interpreter_set_keeps_tools_interpreter():
    target = resolve_target(SPEC, "manylinux_2_36", "s390x", interpreters=["cp39-cp39"])
    assert target.interpreters == ("cp39-cp39", "cp313-cp313")
    assert target.slug == "manylinux_2_36_s390x-partial"


def test_render_task_writes_the_file(tmp_path):
    out = tmp_path / "Dockerfile"
    proc = subprocess.run(
        ["invoke", "render", "--image", "musllinux_1_2", "--arch", "aarch64", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "FROM alpine:3.22@sha256:" in text and "apk add --no-cache" in text
    assert "AUDITWHEEL_PLAT=musllinux_1_2_aarch64" in text


def native_chain(text: str) -> str:
    """The native_* stages of an emulated target's Dockerfile, written as the native image's."""
    chain = text[text.index("# --- native_runtime"):text.index("# --- cross:")]
    return chain.replace("native_", "").replace("--platform=linux/amd64 ", "")


@pytest.mark.parametrize("target", [t for t in TARGETS if t.cross_compiles], ids=lambda t: t.slug)
def test_emulated_targets_cross_compile_on_the_build_host(target):
    text = render_dockerfile(target)
    parts = stages(text)
    # The native build's own stages, verbatim: a release's native build has cached them.
    native = render_dockerfile(target.native())
    assert native_chain(text) == native[native.index("# --- runtime"):native.index("# --- tools")]
    assert parts["cross"].startswith("FROM native_build AS cross")
    for b in target.interpreter_builds():
        cross = parts[f"cross_{b.stage}"]
        assert f"from=native_{b.stage},source={b.prefix},target=/opt/_internal/build-python" in cross
        assert "MANYFORGE_CROSS=" in cross
        # The target's headers and libraries: the target's build stage as sysroot, or (Debian)
        # installed multiarch in the cross stage itself, so no emulated stage comes first.
        if target.base.family == "apt":
            assert "MANYFORGE_CROSS_SYSROOT=/ " in cross and f"libc6-dev:{ARCHES[target.arch].debian}" in parts["cross"]
        else:
            assert "target=/sysroot" in cross and "MANYFORGE_CROSS_SYSROOT=/sysroot " in cross
        # The frontend comes from the native twin (same release, same prefix), on the build host.
        assert f"from=native_{b.stage},source={b.prefix},target=/opt/_internal/build-python" in cross[cross.index("copy-frontend.sh"):]
        # The target's own (emulated) stage only copies the result in and checks it.
        assert "build-cpython.sh" not in parts[b.stage] and "install-frontend.sh" not in parts[b.stage]
        assert f"COPY --from=cross_{b.stage} {b.prefix} {b.prefix}" in parts[b.stage]
    # The tools environment is made on the build host, at the image's paths, from its wheels.
    tools = target.interpreter_builds()[target.interpreters.index(target.image.tools_interpreter)]
    assert parts["tools"].startswith("FROM native_build AS tools")
    assert f"COPY --from=native_{tools.stage} {tools.prefix} {tools.prefix}" in parts["tools"]
    assert "/bin/python3 /build/wheels /opt/_internal/tools --cross\n" in parts["tools"]
    for lib in target.library_builds():
        assert parts[f"lib_{lib['name']}"].startswith("FROM cross AS ")
    compiler = "gcc-12-s390x-linux-gnu" if target.toolchain.cross else "clang"
    if target.arch == "s390x":
        assert compiler in parts["cross"]


def test_native_builds_have_no_cross_stages():
    for image, arch in [("manylinux_2_36", "x86_64"), ("manylinux_2_36", "i686"), ("manylinux2014", "i686")]:
        text = render_dockerfile(resolve_target(SPEC, image, arch))
        assert "AS cross" not in text and "MANYFORGE_CROSS" not in text and "native_" not in text, (image, arch)
        assert "copy-frontend.sh" not in text and "--cross" not in text, (image, arch)


@pytest.mark.parametrize("target", [t for t in TARGETS if t.cross_compiles], ids=lambda t: t.slug)
def test_packages_check_asks_for_the_cross_stage_packages_on_the_build_host(target, tmp_path):
    """What the cross stage installs (compiler, the target's multiarch -dev packages) is asked
    for where it is installed: the build host's platform, after the cross stage's own set-up,
    with the build host's stages it starts from."""
    checks = packages_checks(target)
    assert [where.arch for where, _, _ in checks] == [target.arch, target.native().arch]
    where, packages, setup = checks[1]
    found = stages(render_dockerfile(target))
    # The source_tools stage cross-compiles git with the target's libcurl (Debian, multiarch).
    cross = found["cross"] + found.get("source_tools_cross", "")
    native = found["native_runtime"] + found["native_build"]
    assert packages and all(p in cross or p in native for p in packages)
    text = (write_packages_check(where, tmp_path / "ctx", packages, setup) / "Dockerfile").read_text()
    if setup:
        assert f"RUN {shlex.join(setup)}\n" in text and f"RUN {shlex.join(setup)}\n" in cross
    assert all(p in text for p in packages) and where.base_ref() in text


def test_packages_check_of_a_native_image_asks_once():
    assert len(packages_checks(resolve_target(SPEC, "manylinux_2_36", "x86_64"))) == 1


def test_an_interpreter_no_origin_serves_is_left_out_and_announced_everywhere():
    """Issue 19, item 2: the image declares it; the site that cannot fetch it builds without it,
    never silently: Dockerfile header, label, catalog (ensure names the reason), SBOM input; the
    tags stay the image's own (not -partial: the user asked for everything)."""
    from manyforge.render import image_labels, sbom_input

    full = resolve_target(SPEC, "manylinux_2_36", "x86_64")
    why = "no origin of this site serves CPython 3.12.13"
    target = full.without({"cp312-cp312": why})
    assert "cp312-cp312" not in target.interpreters and target.interpreters == tuple(t for t in full.interpreters if t != "cp312-cp312")
    assert target.latest_ref == full.latest_ref
    dockerfile = render_dockerfile(target)
    assert "# OMITTED: cp312-cp312 is not in this image" in dockerfile
    assert "cpython_cp312_cp312" not in dockerfile and "cpython_cp312_cp312" in render_dockerfile(full)
    assert image_labels(target)["io.manyforge.cpython-omitted"] == "cp312-cp312"
    assert "io.manyforge.cpython-omitted" not in image_labels(full)
    assert target.catalog()["not_built"]["cp312-cp312"] == why
    assert sbom_input(target)["omitted"] == [{"tag": "cp312-cp312", "pinned": "3.12.13", "reason": why}]
    # A subset the user chose is still a partial image.
    chosen = resolve_target(SPEC, "manylinux_2_36", "x86_64", interpreters=["cp313-cp313"]).without({"cp312-cp312": why})
    assert chosen.latest_ref.endswith("latest-partial")


def test_auditwheel_policy_is_spelled_as_pypa_spells_it():
    """pypa's manylinux2014 images set AUDITWHEEL_POLICY=manylinux2014 (PEP 599's name; their
    Dockerfile's POLICY); the PEP 600 name elsewhere."""
    old = render_dockerfile(resolve_target(SPEC, "manylinux2014", "x86_64"))
    assert "AUDITWHEEL_POLICY=manylinux2014 " in old and "AUDITWHEEL_PLAT=manylinux2014_x86_64" in old
    new = render_dockerfile(resolve_target(SPEC, "manylinux_2_36", "x86_64"))
    assert "AUDITWHEEL_POLICY=manylinux_2_36 " in new and "AUDITWHEEL_PLAT=manylinux_2_36_x86_64" in new


def test_every_family_upgrades_its_base_before_installing():
    """As pypa's images: the base's packages upgraded (security updates included) in the runtime
    stage, before its install; on Debian from the release's -updates and -security suites."""
    for image in ("manylinux2014", "manylinux_2_28", "manylinux_2_34", "musllinux_1_2", "manylinux_2_36"):
        text = render_dockerfile(resolve_target(SPEC, image, "x86_64"))
        runtime = stages(text)["runtime"]
        upgrade = next(m for m in ("yum update -y", "dnf upgrade -y", "apk upgrade", "apt-get upgrade -y") if m in runtime)
        assert runtime.index(upgrade) < runtime.index("autoconf"), image  # the runtime packages' install
    debian = stages(render_dockerfile(resolve_target(SPEC, "manylinux_2_36", "x86_64")))["runtime"]
    assert "source=apt-updates.list" in debian and "/etc/apt/sources.list.d/updates.list" in debian


def test_the_debian_updates_list_names_the_suites_and_refuses_anything_but_an_address():
    from manyforge.render import apt_updates

    text = apt_updates("bookworm", "http://mirror.example/debian", "https://security.example/debian-security")
    assert text == "deb http://mirror.example/debian bookworm-updates main\ndeb https://security.example/debian-security bookworm-security main\n"
    assert apt_updates("bullseye", "http://mirror.example/debian", None) == "deb http://mirror.example/debian bullseye-updates main\n"
    for bad in ("mirror.example/debian", "http://mirror.example/debian bookworm main\ndeb http://evil", "http://x/ [trusted=yes]"):
        with pytest.raises(SpecError, match="not an http"):
            apt_updates("bookworm", bad, "http://security.example/s")


def test_the_security_mirror_comes_from_the_host_or_its_variable():
    script = ROOT / "scripts" / "debian-apt.sh"
    proc = subprocess.run([str(script), "--print-security-mirror"], capture_output=True, text=True, check=False,
                          env=dict(os.environ, MANYFORGE_DEBIAN_SECURITY_MIRROR="http://security.example/debian-security"))  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "http://security.example/debian-security\n")
    host = subprocess.run([str(script), "--print-security-mirror"], capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "MANYFORGE_DEBIAN_SECURITY_MIRROR"})  # fmt: skip
    sources = " ".join(p.read_text() for p in Path("/etc/apt").rglob("sources.list*") if p.is_file())
    sources += " ".join(p.read_text() for p in Path("/etc/apt/sources.list.d").glob("*.sources"))
    if "-security" in sources:  # a Debian host: its own security mirror
        assert host.returncode == 0 and host.stdout.strip().startswith("http") and host.stdout.strip() in sources
    else:
        assert host.returncode == 1 and "set MANYFORGE_DEBIAN_SECURITY_MIRROR" in host.stderr
