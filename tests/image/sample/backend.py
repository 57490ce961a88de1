"""A minimal PEP 517 backend for the sample project: compiles the two extension modules with
the interpreter's own compiler settings (sysconfig), so the image's toolchain and headers are
what is tested, and needs nothing from an index (no setuptools)."""

import base64
import hashlib
import os
import shlex
import subprocess
import sysconfig
import tempfile
import zipfile

NAME, VERSION = "manyforge_sample", "1.0"
HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = {"_c": ("src/sample_c.c", "CC"), "_cpp": ("src/sample_cpp.cpp", "CXX")}


def _tag():
    major_minor = sysconfig.get_config_var("py_version_nodot")
    abi = "cp" + major_minor + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"cp{major_minor}-{abi}-{platform}"


def _compile(source, compiler_var, output):
    compiler = shlex.split(sysconfig.get_config_var(compiler_var) or "c++")
    flags = shlex.split(sysconfig.get_config_var("CFLAGS") or "") + shlex.split(sysconfig.get_config_var("CCSHARED") or "")
    if compiler_var == "CXX":
        flags = [f for f in flags if f not in ("-Wstrict-prototypes",) and not f.startswith("-std=c")] + ["-std=c++17"]
    include = ["-I", sysconfig.get_path("include")]
    subprocess.run([*compiler, *flags, *include, "-shared", os.path.join(HERE, source), "-o", output], check=True)


def _record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    tag = _tag()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    files = {f"{NAME}/__init__.py": b"from ._c import add\nfrom ._cpp import sorted_words\n"}
    with tempfile.TemporaryDirectory() as tmp:
        for module, (source, compiler_var) in MODULES.items():
            out = os.path.join(tmp, module + suffix)
            _compile(source, compiler_var, out)
            with open(out, "rb") as fh:
                files[f"{NAME}/{module}{suffix}"] = fh.read()
    dist_info = f"{NAME}-{VERSION}.dist-info"
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode()
    files[f"{dist_info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: manyforge-sample\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()
    )
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    filename = f"{NAME}-{VERSION}-{tag}.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as whl:
        for name, data in files.items():
            whl.writestr(name, data)
    return filename
