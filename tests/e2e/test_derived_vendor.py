"""A derived image with a vendor's package repository, built for real: a signed apt repository made
here at test time (a small .deb by dpkg-deb, its index by dpkg-scanpackages, its Release signed
with a throw-away gpg key), served over HTTP on 127.0.0.1. The repository's definition and key are
served over HTTPS on 127.0.0.1 (a certificate made here, trusted through SSL_CERT_FILE) and pinned
in the derived spec by the sha256 computed here; the build's steps reach the repository through
the host's network (`manyforge build --network host`). The vendor's package is installed, its
files work, and the SBOM names the repository it came from. A key pinned by another sha256 stops
the build before anything is built, with an error naming the key in the spec.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from email.utils import formatdate
from pathlib import Path

import pytest

from manyforge import engine, pipeline
from manyforge.sources import SourceCache
from manyforge.spec import load_spec
from manyforge.target import resolve_target

HOST_CA = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
CONTROL = """\
Package: vendor-hello
Version: 1.0-1
Architecture: amd64
Maintainer: manyforge tests <tests@invalid>
Section: libdevel
Priority: optional
Description: a vendor's SDK, for manyforge's tests
 A tool, a header and its pkg-config file.
"""


def _run(*argv: str, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_deb(work: Path) -> Path:
    root = work / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(CONTROL)
    (root / "usr" / "bin").mkdir(parents=True)
    tool = root / "usr" / "bin" / "vendor-hello"
    tool.write_text('#!/bin/sh\necho "vendor-hello 1.0"\n')
    tool.chmod(0o755)
    (root / "usr" / "include" / "vendor-hello").mkdir(parents=True)
    (root / "usr" / "include" / "vendor-hello" / "hello.h").write_text("#define VENDOR_HELLO 42\n")
    (root / "usr" / "share" / "pkgconfig").mkdir(parents=True)
    (root / "usr" / "share" / "pkgconfig" / "vendor-hello.pc").write_text(
        "Name: vendor-hello\nDescription: a vendor's SDK\nVersion: 1.0\nCflags: -I/usr/include/vendor-hello\n"
    )
    deb = work / "vendor-hello_1.0-1_amd64.deb"
    _run("dpkg-deb", "--root-owner-group", "--build", str(root), str(deb))
    return deb


def _make_repository(work: Path, deb: Path, gnupg: Path) -> Path:
    """A signed apt repository (suite `stable`, component `main`) holding the .deb."""
    repo = work / "repo"
    (repo / "pool" / "main").mkdir(parents=True)
    shutil.copy(deb, repo / "pool" / "main" / deb.name)
    index = repo / "dists" / "stable" / "main" / "binary-amd64"
    index.mkdir(parents=True)
    (index / "Packages").write_text(_run("dpkg-scanpackages", "--arch", "amd64", "pool", cwd=repo))
    packages = index / "Packages"
    release = repo / "dists" / "stable" / "Release"
    release.write_text(
        "Origin: manyforge-tests\nLabel: manyforge-tests\nSuite: stable\nCodename: stable\n"
        f"Date: {formatdate(usegmt=True)}\nArchitectures: amd64\nComponents: main\n"
        f"SHA256:\n {_sha256(packages)} {packages.stat().st_size} main/binary-amd64/Packages\n"
    )
    _run("gpg", "--homedir", str(gnupg), "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
         "--clearsign", "--output", str(release.with_name("InRelease")), str(release))  # fmt: skip
    return repo


@contextlib.contextmanager
def _serving(directory: Path, tls: ssl.SSLContext | None = None):
    """An HTTP(S) server of `directory` on 127.0.0.1: its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    """The repository served on 127.0.0.1, its definition and key served over HTTPS, and a
    downstream project naming both by their sha256: (project dir, key sha256, repository URL)."""
    work = tmp_path_factory.mktemp("vendor")
    gnupg = work / "gnupg"
    gnupg.mkdir(mode=0o700)
    _run("gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
         "--quick-generate-key", "manyforge test vendor <vendor@invalid>", "ed25519", "sign", "1d")  # fmt: skip
    try:
        repo = _make_repository(work, _make_deb(work), gnupg)
        pinned = work / "pinned"
        pinned.mkdir()
        (pinned / "acme.asc").write_text(_run("gpg", "--homedir", str(gnupg), "--armor", "--export"))
    finally:
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], check=False, capture_output=True)
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(work / "tls.key"), "-out", str(work / "tls.crt"))  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(work / "tls.crt", work / "tls.key")
    bundle = work / "ca-bundle.crt"
    bundle.write_text(Path(HOST_CA).read_text() + (work / "tls.crt").read_text())
    with _serving(repo) as repo_url, _serving(pinned, tls) as files_url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_CERT_FILE", str(bundle))  # the host's fetch trusts the files' server
        (pinned / "acme.sources").write_text(
            f"Types: deb\nURIs: {repo_url}/\nSuites: stable\nComponents: main\nSigned-By: /etc/apt/keyrings/acme.asc\n"
        )
        project = work / "project"
        project.mkdir()
        key_sha = _sha256(pinned / "acme.asc")
        (project / "manyforge.yaml").write_text(_spec(files_url, _sha256(pinned / "acme.sources"), key_sha))
        yield project, key_sha, repo_url, files_url


def _spec(files_url: str, definition_sha: str, key_sha: str) -> str:
    return (
        "org: example\n"
        "derived:\n"
        "  vendored:\n"
        "    from: manylinux_2_36\n"
        "    archs: [x86_64]\n"
        "    packages: [vendor-hello, liblmdb-dev]\n"
        "    repositories:\n"
        "      acme:\n"
        f"        definition: {{url: {files_url}/acme.sources, sha256: {definition_sha}}}\n"
        f"        key: {{url: {files_url}/acme.asc, sha256: {key_sha}}}\n"
        "    checks:\n"
        "      - test \"$(vendor-hello)\" = 'vendor-hello 1.0'\n"
        "      - printf '#include <hello.h>\\nint main(void) { return VENDOR_HELLO - 42; }\\n' > /tmp/t.c"
        " && gcc $(pkg-config --cflags vendor-hello) /tmp/t.c -o /tmp/t && /tmp/t\n"
    )


@pytest.fixture(scope="module")
def built(vendor, tmp_path_factory):
    project, key_sha, repo_url, _ = vendor
    spec = load_spec(project / "manyforge.yaml")
    parent_target = resolve_target(spec, "manylinux_2_36", "x86_64")
    if not engine.local_image_exists(parent_target.latest_ref):  # a fresh machine: built (and cached) first
        pipeline.build(spec, SourceCache(), parent_target)
    pipeline.resolve_derived(spec, "vendored", "x86_64")
    target = pipeline.derived_target(spec, "vendored", "x86_64")
    cache = SourceCache(tmp_path_factory.mktemp("cache"))  # the pinned files are fetched, not seeded
    result = pipeline.build_derived(spec, cache, target, network="host")  # runs the checks
    print(f"\n[build] {target.slug}: built in {result.seconds:.0f}s", file=sys.stderr)
    return result, key_sha, repo_url


def test_the_vendor_package_is_installed_and_its_files_work(built):
    result, _, _ = built
    out = engine.run_in_image(result.tags[0], "x86_64", ["bash", "-c",
                              "dpkg-query -W -f '${Version}\\n' vendor-hello; vendor-hello; pkg-config --modversion vendor-hello"])  # fmt: skip
    assert out.split("\n")[:3] == ["1.0-1", "vendor-hello 1.0", "1.0"], out


def test_the_sbom_names_the_vendor_repository_of_the_package(built):
    result, key_sha, repo_url = built
    sbom = json.loads(engine.read_image_file(result.image_id, "/opt/_internal/sbom.cdx.json", 32 << 20))
    refs = {c["bom-ref"]: c for c in sbom["components"]}
    [hello] = [c for c in sbom["components"] if c["name"] == "vendor-hello"]
    props = {p["name"]: p["value"] for p in hello["properties"]}
    assert hello["version"] == "1.0-1" and props["manyforge:added-by"] == "derived"
    assert props["manyforge:repository"] == "acme" and props["manyforge:source"].startswith(f"{repo_url} stable/main"), props
    # A package of the parent's own repositories is named as such.
    [lmdb] = [c for c in sbom["components"] if c["name"] == "liblmdb-dev"]
    assert {"name": "manyforge:repository", "value": "parent"} in lmdb["properties"]
    assert refs["repository:acme:key"]["hashes"] == [{"alg": "SHA-256", "content": key_sha}]
    assert {"name": "manyforge:path", "value": "/etc/apt/keyrings/acme.asc"} in refs["repository:acme:key"]["properties"]


def test_a_key_pinned_by_another_sha256_stops_the_build_naming_the_key(vendor, tmp_path):
    """The downstream maintainer's command, with the key's pin changed: nothing is built."""
    project, key_sha, _, files_url = vendor
    wrong = tmp_path / "project"
    shutil.copytree(project, wrong)
    text = (wrong / "manyforge.yaml").read_text()
    bad = hashlib.sha256(b"another key").hexdigest()
    (wrong / "manyforge.yaml").write_text(text.replace(f"sha256: {key_sha}", f"sha256: {bad}"))
    command = shutil.which("manyforge", path=str(Path(sys.executable).parent)) or "manyforge"
    _run(command, "resolve", "--spec", "manyforge.yaml", "--image", "vendored", "--arch", "x86_64", cwd=wrong)
    proc = subprocess.run([command, "build", "--spec", "manyforge.yaml", "--image", "vendored", "--network", "host"], cwd=wrong,
                          env={**os.environ, "MANYFORGE_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: manyforge.yaml: derived.vendored.repositories.acme.key: acme.asc could not be fetched:"], proc.stderr
    assert f"does not match the pin {bad}" in proc.stderr and "building" not in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "acme.asc").exists()
