"""What users of pypa's images rely on beyond the interpreters: the build frontend in every
interpreter, the tools on PATH, manylinux-interpreters, and 32-bit behaviour on a 64-bit host.

Each test runs inside containers of the images built for real (see conftest.py).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shlex
import threading
import zipfile
from pathlib import Path

import pytest
from consumer import gaps, wanted
from packaging.version import Version

from manyforge import engine
from manyforge.contract_table import load_contract
from manyforge.render import final_packages

pytestmark = pytest.mark.image

SAMPLE = Path(__file__).parent / "sample"


def run(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command!r} failed ({result.rc}):\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def platform_tags(wheel_name: str) -> list[str]:
    return wheel_name.removesuffix(".whl").split("-")[-1].split(".")


def test_frontend_builds_a_wheel_offline_in_every_interpreter(host, built_image, interpreter):
    """cibuildwheel's default frontend (`python -m build`) and `build[uv]`, with no network
    (the test container has none): everything comes from the image."""
    python = f"/opt/python/{interpreter}/bin/python"
    work = f"/tmp/frontend-{interpreter}"
    run(host, f"rm -rf {work} && cp -r /sample {work}")
    run(host, f"cd {work} && {python} -m build --wheel --outdir {work}/dist .")
    wheels = run(host, f"ls {work}/dist").split()
    assert len(wheels) == 1 and wheels[0].startswith("manyforge_sample-1.0-"), wheels
    assert platform_tags(wheels[0]) == [f"linux_{built_image.target.arch}"]
    if host.exists("uv"):
        run(host, f"cd {work} && {python} -m build --installer=uv --wheel --outdir {work}/dist-uv .")
        assert run(host, f"ls {work}/dist-uv").split() == wheels
    for name in ("pip", "build", "packaging", "pyproject_hooks"):
        run(host, f"{python} -c 'import {name}'")
    assert run(host, f"PATH=/opt/python/{interpreter}/bin:$PATH which pip") == f"/opt/python/{interpreter}/bin/pip"


def test_tools_users_rely_on_are_on_path(host, built_image):
    target = built_image.target
    locked = {w.name for w in target.spec.wheels.get(target.spec.wheel_platform(target.image, target.arch), ())}
    wanted = ["git", "pkg-config", "autoconf", "automake", "libtool", "libtoolize", "swig", "make",
              "auditwheel", "patchelf", "pipx", "abi3audit", "manylinux-interpreters"]  # fmt: skip
    # Optional tools are there wherever their project publishes a wheel for the platform.
    wanted += [t for t in ("cmake", "ninja", "uv") if t in locked]
    missing = [tool for tool in wanted if not host.exists(tool)]
    assert not missing, f"not on PATH: {missing}"
    for tool in wanted:
        flag = {"manylinux-interpreters": "--help", "swig": "-version"}.get(tool, "--version")
        run(host, f"{tool} {flag} >/dev/null")


def test_image_environment_matches_pypas(host, built_image):
    env = dict(line.split("=", 1) for line in run(host, "env").splitlines() if "=" in line)
    # pypa's locale, and its data: setlocale succeeds (glibc fails without the compiled locale).
    assert env["LANG"] == env["LC_ALL"] == env["LANGUAGE"] == "en_US.UTF-8"
    python = f"/opt/python/{built_image.target.interpreters[0]}/bin/python"  # a partial image may lack cp39
    probe = "import locale; print(locale.setlocale(locale.LC_ALL, ''), locale.getpreferredencoding())"
    assert run(host, f"{python} -c {shlex.quote(probe)}").lower() == "en_us.utf-8 utf-8"
    # Certificates: certifi's bundle, as pypa's SSL_CERT_FILE; OpenSSL's default context loads it.
    assert env["SSL_CERT_FILE"] == "/opt/_internal/certs.pem"
    assert run(host, "/opt/_internal/tools/bin/python -c 'import certifi; print(certifi.where())'") == run(host, "readlink -f /opt/_internal/certs.pem")
    probe = "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])"
    assert int(run(host, f"{python} -c {shlex.quote(probe)}")) > 100
    assert env["PIPX_DISABLE_SHARED_LIBS_AUTO_UPGRADE"] == "1"
    # pypa's: the toolset's root where the compilers come from one (its bin holds gcc), else empty.
    root = env["DEVTOOLSET_ROOTPATH"]
    assert root == (built_image.target.toolchain.prefix or "").removesuffix("/usr")
    assert not root or run(host, "command -v gcc") == f"{root}/usr/bin/gcc"
    assert env["SHELL"] == "/bin/bash"
    assert env["PKG_CONFIG_PATH"] == "/usr/local/lib/pkgconfig"
    assert run(host, "getent passwd root").endswith(":/bin/bash")  # Alpine's default is ash
    assert env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"
    assert env["PIP_ROOT_USER_ACTION"] == "ignore"
    assert env["PIPX_BIN_DIR"] == "/usr/local/bin"


def test_autotools_and_libtool_build_a_shared_library(host):
    work = "/tmp/autotools"
    files = {
        "configure.ac": "AC_INIT([greet], [1.0])\nAM_INIT_AUTOMAKE([foreign])\nLT_INIT\nAC_PROG_CC\n"
        "AC_CONFIG_FILES([Makefile])\nAC_OUTPUT\n",
        "Makefile.am": "lib_LTLIBRARIES = libgreet.la\nlibgreet_la_SOURCES = greet.c\n"
        "bin_PROGRAMS = greet\ngreet_SOURCES = main.c\ngreet_LDADD = libgreet.la\n",
        "greet.c": "int answer(void) { return 42; }\n",
        "main.c": '#include <stdio.h>\nint answer(void);\nint main(void) { printf("%d\\n", answer()); return 0; }\n',
    }
    run(host, f"rm -rf {work} && mkdir -p {work}")
    for name, text in files.items():
        run(host, f"printf '%s' {shlex.quote(text)} > {work}/{name}")
    run(host, f"cd {work} && autoreconf -fi >/dev/null 2>&1 && ./configure --quiet && make --quiet >/dev/null 2>&1")
    assert run(host, f"cd {work} && ./greet") == "42"
    assert host.file(f"{work}/.libs/libgreet.so").exists


def test_libltdl_and_its_macros_are_there_as_in_pypa_s_images(host):
    """pypa's images install libtool whole (install-libtool.sh: libtoolize, libtool, its macros
    with ltdl.m4, libltdl): a project that loads modules with libltdl (LTDL_INIT, and
    LT_SYS_SYMBOL_USCORE as libxcrypt's configure.ac calls it) autoreconfs, builds and runs, and
    no second libtool.m4 of another release is found first."""
    work = "/tmp/ltdl-project"
    files = {
        "configure.ac": "AC_INIT([loader], [1.0])\nAC_CONFIG_MACRO_DIRS([m4])\nAM_INIT_AUTOMAKE([foreign])\nAC_PROG_CC\n"
        "LT_INIT([dlopen])\nLT_SYS_SYMBOL_USCORE\nLTDL_INIT\nAC_CONFIG_FILES([Makefile])\nAC_OUTPUT\n",
        "Makefile.am": "ACLOCAL_AMFLAGS = -I m4\nbin_PROGRAMS = loader\nloader_SOURCES = loader.c\nloader_LDADD = $(LIBLTDL)\n",
        "loader.c": '#include <ltdl.h>\n#include <stdio.h>\nint main(void) { if (lt_dlinit()) return 1; puts("ltdl"); return lt_dlexit(); }\n',
    }
    run(host, f"rm -rf {work} && mkdir -p {work}/m4")
    for name, text in files.items():
        run(host, f"printf '%s' {shlex.quote(text)} > {work}/{name}")
    run(host, f"cd {work} && autoreconf -fi >/dev/null 2>&1 && ./configure --quiet && make --quiet >/dev/null 2>&1")
    assert run(host, f"cd {work} && ./loader") == "ltdl"
    # The macros aclocal finds are the libtoolize's own release (no version-mismatch error above).
    libtoolize = _first_version(run(host, "libtoolize --version"))
    assert f"macro_version='{libtoolize}'" in run(host, f"cat {work}/m4/ltversion.m4")


def test_cmake_with_ninja_builds_a_project(host, built_image):
    if not host.exists("cmake") or not host.exists("ninja"):
        pytest.skip(f"cmake/ninja publish no wheel for {built_image.target.slug}")
    work = "/tmp/cmake-project"
    cmakelists = "cmake_minimum_required(VERSION 3.15)\nproject(hello CXX)\nadd_executable(hello hello.cpp)\n"
    source = '#include <iostream>\nint main() { std::cout << "hello" << std::endl; }\n'
    run(host, f"rm -rf {work} && mkdir -p {work}")
    run(host, f"printf '%s' {shlex.quote(cmakelists)} > {work}/CMakeLists.txt")
    run(host, f"printf '%s' {shlex.quote(source)} > {work}/hello.cpp")
    run(host, f"cmake -S {work} -B {work}/build -G Ninja >/dev/null && cmake --build {work}/build >/dev/null")
    assert run(host, f"{work}/build/hello") == "hello"


def _app_wheel(directory: Path) -> Path:
    """A tiny pure-Python application with a console script, as a wheel."""
    name = "manyforge_hello-1.0-py3-none-any.whl"
    files = {
        "manyforge_hello.py": "def main():\n    print('hello from pipx')\n",
        "manyforge_hello-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: manyforge-hello\nVersion: 1.0\n",
        "manyforge_hello-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "manyforge_hello-1.0.dist-info/entry_points.txt": "[console_scripts]\nmanyforge-hello = manyforge_hello:main\n",
    }
    path = directory / name
    with zipfile.ZipFile(path, "w") as whl:
        for arcname, text in files.items():
            whl.writestr(arcname, text)
        whl.writestr("manyforge_hello-1.0.dist-info/RECORD", "")
    return path


def test_pipx_installs_apps_onto_path(built_image, tmp_path):
    _app_wheel(tmp_path)
    script = "pipx install --pip-args='--no-index --find-links /apps' manyforge-hello >/dev/null && manyforge-hello"
    result = engine.run_container(
        built_image.ref, built_image.target.arch, ["bash", "-c", script], mounts={str(tmp_path): "/apps"},
        environment={"PIP_NO_INDEX": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from pipx"


# --- manylinux-interpreters ---------------------------------------------------------------------


def test_manylinux_interpreters_lists_and_ensures_the_installed_ones(host, built_image):
    target = built_image.target
    installed = run(host, "manylinux-interpreters list --installed").split()
    assert sorted(installed) == sorted(target.interpreters)
    everything = run(host, "manylinux-interpreters list").split()
    assert set(everything) == set(target.interpreters) | set(target.downloadable)
    entries = json.loads(run(host, "manylinux-interpreters list --format json"))
    assert {e["identifier"] for e in entries} == set(everything)
    for entry in entries:
        assert set(entry) == {"identifier", "installed", "python_version", "implementation", "implementation_version", "install_path"}
        assert entry["installed"] == (entry["identifier"] in target.interpreters)
        assert entry["install_path"] == f"/opt/python/{entry['identifier']}"
    by_tag = {e["identifier"]: e for e in entries}
    cpython = by_tag[target.image.tools_interpreter]
    assert cpython["implementation"] == "cpython"
    assert cpython["python_version"] == target.cpython_version(target.image.tools_interpreter)
    # What cibuildwheel does before each build: every installed tag succeeds, and changes nothing.
    out = run(host, "manylinux-interpreters ensure " + " ".join(target.interpreters))
    assert "already installed" in out
    unknown = host.run("manylinux-interpreters ensure cp27-cp27mu")
    assert unknown.rc != 0
    assert "cp27-cp27mu" in unknown.stderr and target.image.tools_interpreter in unknown.stderr


class _Server:
    """A static HTTP server on 127.0.0.1 serving one directory."""

    def __init__(self, directory: Path):
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **kw)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_built_image_answers_every_identifier_of_cibuildwheel(host, built_image):
    """What the pinned cibuildwheel asks of this image (tests/consumer.py, from cibuildwheel
    itself), against what the built image has: /opt/python, and its catalog (what `ensure` offers
    on this arch, and what it declares as not built here). A subset build (`--python`) leaves out
    the declared interpreters it was asked to leave out, and only those."""
    target = built_image.target
    catalog = json.loads(run(host, "cat /opt/_internal/manylinux-interpreters.json"))
    carried = set(run(host, "manylinux-interpreters list --installed").split())
    want = [w for w in wanted(target.image.libc.name, target.arch) if w.tag in target.interpreters or w.tag not in target.image.interpreters]
    assert not gaps(want, carried, catalog, target.arch)
    offered = set(run(host, "manylinux-interpreters list").split()) - carried
    assert offered == set(catalog["downloadable"]) == set(target.downloadable)


@pytest.mark.applies_to.with_args(lambda t: t.image.policy.startswith("manylinux"))
def test_auditwheel_finds_libraries_a_before_all_step_installs_under_usr_local(host, built_image):
    """pypa's images put /usr/local/lib and /usr/local/lib64 in the loader's configuration: a
    library a project's before-all step builds there is found by auditwheel repair (which reads
    ld.so.conf) and by the loader, with no LD_LIBRARY_PATH."""
    work = "/tmp/usrlocal"
    lddtree = "from auditwheel.lddtree import load_ld_paths; from auditwheel.libc import Libc; print(*load_ld_paths(Libc.GLIBC)['conf'])"
    out = run(host, f"mkdir -p {work} /usr/local/lib64 && cd {work} && printf 'int answer(void) {{ return 42; }}\\n' > a.c && "
                    "gcc -shared -fPIC -o /usr/local/lib64/libmanyforgeprobe.so a.c && ldconfig && "
                    f"/opt/_internal/tools/bin/python -c \"{lddtree}\" && ldconfig -p | grep libmanyforgeprobe; rc=$?; "
                    "rm -f /usr/local/lib64/libmanyforgeprobe.so; ldconfig; exit $rc")
    searched = out.splitlines()[0].split()
    assert {"/usr/local/lib", "/usr/local/lib64"} <= set(searched), searched
    assert "/usr/local/lib64/libmanyforgeprobe.so" in out


def test_what_pypa_s_images_carry_for_users_is_here(host, built_image):
    """The headers projects build against and the tools they call in pypa's images
    (install-runtime-packages.sh: MANYLINUX_DEPS, BASE_TOOLS; git-lfs where the distribution
    packages it): found by pkg-config and on PATH."""
    modules = ["glib-2.0", "x11", "xext", "xrender", "gl", "ice", "sm", "zlib", "expat"]
    missing = [m for m in modules if host.run(f"pkg-config --exists {m}").rc != 0]
    assert not missing, f"pkg-config finds no {', '.join(missing)}"
    tools = ["curl --version", "gpg --version", "bison --version", "git lfs version"]
    failing = [t for t in tools if host.run(t).rc != 0]
    assert not failing, failing
    # The git on PATH (built from source on some bases) reads the filters git-lfs installed, so
    # a clone of a repository with LFS files gets their content, not pointer files.
    assert run(host, "git config --get filter.lfs.process") == "git-lfs filter-process"
    target = built_image.target
    # What the final stage installs for users (diffutils, hostname, uuid, yasm on x86_64, ...).
    absent = [p for p in final_packages(target) if not host.package(p).is_installed]
    assert not absent, absent
    if target.base.git_lfs_release:  # the release's archive, not a package: its pinned version
        assert f"git-lfs/{target.spec.data.git_lfs.version} " in run(host, "git lfs version")


def _first_version(text: str) -> str:
    """The version a tool's `--version` prints on its first line, e.g. '2.55.0'."""
    first = text.splitlines()[0]
    return next(w for w in reversed(first.replace("(", " ").replace(")", " ").split()) if w[:1].isdigit())


def test_build_tools_are_the_declared_ones(host, built_image):
    """git and the autotools: where the base builds them from source, the pinned release in
    /usr/local/bin, first on PATH; where it installs a newer Debian suite's package
    (debian_tools), that package, as dpkg records it, in /usr/bin; where it keeps its
    release's (tests/contract.yaml release_tools), that release's version. Never older than
    pypa's (tests/contract.yaml pypa_versions, from pypa's Dockerfile)."""
    target = built_image.target
    commands = {"git": "git --version", "autoconf": "autoconf --version", "automake": "automake --version",
                "libtool": "libtoolize --version"}  # fmt: skip
    contract = load_contract()
    kept = contract.release_tools.get(target.base_name, {})
    for tool, command in commands.items():
        version = _first_version(run(host, command))
        if tool in target.base.source_tools or tool in target.base.debian_tools:
            assert Version(version) >= Version(contract.pypa_versions[tool]), (tool, version)
        if tool in target.base.source_tools:
            assert version == target.spec.data.source_tools[tool].version, (tool, version)
            if tool == "git":  # built for the image's CPU, natively or cross-compiled: as `uname -m` names it
                assert f"cpu: {target.arch}" in run(host, "git version --build-options").splitlines()
            assert run(host, f"command -v {command.split()[0]}") == f"/usr/local/bin/{command.split()[0]}"
        elif tool in target.base.debian_tools:
            package = target.spec.data.debian_tools[tool]
            assert version == package.upstream, (tool, version)
            assert run(host, f"command -v {command.split()[0]}") == f"/usr/bin/{command.split()[0]}"
            assert run(host, f"dpkg-query -W -f '${{Version}}' {tool}") == package.version
        else:
            assert tool in kept, f"{tool}: neither built from source nor declared kept for {target.base_name}"
            assert version == kept[tool] or version.startswith(kept[tool] + "."), (tool, version, kept[tool])


def test_tkinter_links_tk_8_6(host, built_image, interpreter):
    """tkinter links Tk 8.6, as in pypa's images: the release's, or (CentOS 7, whose Tk is 8.5)
    the Tcl/Tk built from source into /usr/local."""
    python = f"/opt/python/{interpreter}/bin/python"
    out = run(host, f"{python} -c 'import _tkinter; print(_tkinter.TK_VERSION, _tkinter.TCL_VERSION, _tkinter.__file__)'")
    tk, tcl, module = out.split()
    assert (tk, tcl) == ("8.6", "8.6"), out
    if "tk" in built_image.target.base.source_tools:
        assert "/usr/local/lib/libtk8.6.so" in run(host, f"ldd {module}")


# What the served archive stands for, per implementation: the real archives (python.org,
# GitHub) cannot be downloaded on our machines, so a real interpreter of the image, laid out
# like a release of each (one top directory; GraalPy's without pip or build, which its own
# ensurepip and the locked frontend bring), is served on 127.0.0.1 and pinned in a catalog.
SERVED = {
    "pypy": "cp -a $(readlink -f /opt/python/{tools}) /tmp/interp-1.0",
    "graalpy": "cp -a $(readlink -f /opt/python/{tools}) /tmp/interp-1.0 && rm -rf /tmp/interp-1.0/lib/python3*/site-packages/*"
               " /tmp/interp-1.0/bin/pip* && mv /tmp/interp-1.0/bin/python3 /tmp/interp-1.0/bin/graalpy && rm /tmp/interp-1.0/bin/python",
}


def _offers(target, implementation: str) -> list[str]:
    return [t for t in target.downloadable if target.spec.data.downloadable[t].implementation == implementation]


def test_manylinux_interpreters_downloads_only_what_its_pin_matches(built_image, tmp_path):
    """The download path for real: a PyPy-like archive served on 127.0.0.1 and pinned by sha256
    in the catalog is installed under /opt/python with its frontend; a tampered copy is refused
    and leaves nothing behind. (The real archives are not reachable here; their pins are checked
    against cibuildwheel in tests/unit/test_cibuildwheel_reference.py.)"""
    _served_ensure(built_image, tmp_path, "pypy")


@pytest.mark.applies_to.with_args(lambda t: bool(_offers(t, "graalpy")))
def test_manylinux_interpreters_installs_graalpy_with_its_own_pip(built_image, tmp_path):
    """The same for a GraalPy-like archive (no pip, no build in it): its own ensurepip brings
    pip, the locked frontend the rest."""
    _served_ensure(built_image, tmp_path, "graalpy")


def _served_ensure(built_image, tmp_path, implementation: str) -> None:
    target = built_image.target
    offered = _offers(target, implementation)
    assert offered, f"{target.slug} offers no {implementation} interpreter"
    tag = offered[-1]  # the newest: pp312-pypy312_pp80, graalpy312-graalpy250_312_native
    tools = target.image.tools_interpreter
    served = tmp_path / "served"
    served.mkdir()
    tmp_path.chmod(0o777)
    served.chmod(0o777)
    pack = SERVED[implementation].format(tools=tools) + " && tar -C /tmp -czf /w/served/interp.tar.gz interp-1.0"
    packed = engine.run_container(built_image.ref, target.arch, ["bash", "-c", pack], mounts={str(tmp_path): "/w"}, writable=(str(tmp_path),))
    assert packed.returncode == 0, packed.stderr
    archive = served / "interp.tar.gz"
    good = archive.read_bytes()
    server = _Server(served)
    try:
        catalog = {
            "downloadable": {
                tag: {"implementation": implementation, "version": "1.0", "python": target.spec.data.downloadable[tag].python,
                      "url": f"http://127.0.0.1:{server.port}/interp.tar.gz",
                      "sha256": hashlib.sha256(good).hexdigest()}  # fmt: skip
            },
            "frontend_python": f"/opt/python/{tools}/bin/python",
        }
        (tmp_path / "catalog.json").write_text(json.dumps(catalog))
        env = {"MANYLINUX_INTERPRETERS_CATALOG": "/w/catalog.json"}
        state = "ls -a /opt/python /opt/_internal | md5sum"

        def ensure() -> engine.ContainerRun:
            python = f"/opt/python/{tag}/bin/python"
            script = (
                f"{state}; manylinux-interpreters ensure {tag} 2>&1; rc=$?; {state}; "
                f"if [ $rc = 0 ]; then {python} -m pip --version; {python} -m build --version; fi; exit $rc"
            )
            return engine.run_container(
                built_image.ref, target.arch, ["bash", "-c", script], mounts={str(tmp_path): "/w"}, network="host",
                environment=env,
            )  # fmt: skip

        archive.write_bytes(good[:-100] + bytes(100))  # tampered: same name, other bytes
        refused = ensure()
        assert refused.returncode != 0, refused.stdout
        assert "does not match the pin" in refused.stdout
        before, after = [line for line in refused.stdout.splitlines() if line.endswith("  -")]
        assert before == after, "a refused download left something behind"

        archive.write_bytes(good)
        accepted = ensure()
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        assert f"installing '{tag}'" in accepted.stdout
        pip, build = accepted.stdout.strip().splitlines()[-2:]
        assert build.startswith("build ")
        locked = {f.name: f.version for f in target.spec.frontend_pins(tag)}
        if implementation == "graalpy":  # its own pip, from its ensurepip; none locked
            assert "pip" not in locked and pip.startswith("pip ")
        else:
            assert pip.startswith(f"pip {locked['pip']} ")
    finally:
        server.close()


# --- 32-bit images on a 64-bit host ----------------------------------------------------------


def test_32bit_image_tags_wheels_with_its_own_arch_for_docker_run_and_exec(host, built_image):
    """`docker run` goes through the entrypoint (linux32); `docker exec` does not, and still
    builds a wheel for the image's architecture."""
    target = built_image.target
    python = f"/opt/python/{target.image.tools_interpreter}/bin/python"
    build = f"cp -r /sample /tmp/s && cd /tmp/s && {python} -m build --wheel --outdir /tmp/s/dist . >/dev/null && ls /tmp/s/dist"
    via_run = engine.run_container(built_image.ref, target.arch, ["bash", "-c", f"uname -m; {build}"], mounts={str(SAMPLE): "/sample"})
    assert via_run.returncode == 0, via_run.stderr
    machine, wheel = via_run.stdout.split()
    via_exec = run(host, f"rm -rf /tmp/s && {build}")
    if target.arch not in ("i686", "armv7l"):
        assert machine == target.arch
        return
    assert machine == target.arch, "the entrypoint runs 32-bit images under linux32"
    assert platform_tags(wheel) == [f"linux_{target.arch}"]
    assert platform_tags(via_exec) == [f"linux_{target.arch}"]


def test_labels_follow_the_oci_annotation_keys(built_image):
    labels = engine.image_labels(built_image.ref)
    target = built_image.target
    for key in ("title", "version", "revision", "created"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["io.manyforge.policy"] == target.image.policy
    assert labels["io.manyforge.arch"] == target.arch
    assert labels["io.manyforge.spec-digest"] == target.spec.revision


def test_debian_images_take_the_release_s_updates(host, built_image):
    """The Debian roots name only the release's suite; the image adds its -updates and -security
    suites (their security updates installed when built, and a user's apt sees them)."""
    target = built_image.target
    if not target.base.debootstrap:
        pytest.skip("not a Debian root: its distribution's own repositories, upgraded the same way")
    suites = [line.split()[2] for line in host.file("/etc/apt/sources.list.d/updates.list").content_string.splitlines() if line.startswith("deb ")]
    wanted = [f"{target.base.debootstrap}-updates"] + ([f"{target.base.debootstrap}-security"] if target.base.security_suite else [])
    assert suites == wanted
