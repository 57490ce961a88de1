"""manylinux-interpreters against hostile input, run for real: the script as the image runs it, a
hand-written HTTP server on 127.0.0.1 that misbehaves, crafted tar archives, FIFOs, a catalog and
an /opt/python it did not make. Each refusal must be a non-zero exit with one line naming what
was refused, no traceback, in bounded time, and nothing left behind."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "scripts" / "manylinux-interpreters.py"
TAG = "pp311-pypy311_pp73"
TOP = "pypy3.11-v7.3.20-linux64"
PROBE_ANSWER = {"python_version": "3.11.13", "implementation": "pypy", "implementation_version": "7.3.20"}
FAKE_PYTHON = f"#!/bin/sh\necho '{json.dumps(PROBE_ANSWER)}'\n".encode()
SECRET = "s3cr3t-pw"


# --- the script, its directories and its catalog ---------------------------------------------


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("MANYLINUX_INTERPRETERS_")}
    env.update(
        MANYLINUX_INTERPRETERS_PYTHON_DIR=str(tmp_path / "opt" / "python"),
        MANYLINUX_INTERPRETERS_CATALOG=str(tmp_path / "catalog.json"),
        MANYLINUX_INTERPRETERS_TIMEOUT="5",
    )
    env.update(extra)
    return env


# The script as an interpreter whose tarfile predates extraction filters (3.9.16, 3.10.11, 3.11.3)
# runs it: no data_filter, and extractall trusts every member.
OLD_TARFILE = (
    "import runpy, sys, tarfile; del tarfile.data_filter; "
    "tarfile.TarFile.extraction_filter = staticmethod(tarfile.fully_trusted_filter); "
    f"sys.argv[0] = {str(SCRIPT)!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run(tmp_path: Path, *args: str, timeout: float = 30, old_tarfile: bool = False, **extra: str) -> subprocess.CompletedProcess:
    script = ["-c", OLD_TARFILE] if old_tarfile else [str(SCRIPT)]
    return subprocess.run(
        [sys.executable, *script, *args], env=environment(tmp_path, **extra), capture_output=True, text=True, timeout=timeout,
        check=False, umask=0o022,
    )  # fmt: skip


@pytest.fixture(params=[False, True], ids=["data-filter", "old-tarfile"])
def old_tarfile(request) -> bool:
    return request.param


def state(tmp_path: Path) -> list[str]:
    """Everything under the image's /opt (python and _internal), links included."""
    opt = tmp_path / "opt"
    found = []
    for dirpath, dirnames, filenames in os.walk(opt):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), opt))
    return sorted(found)


@pytest.fixture
def opt(tmp_path: Path) -> Path:
    (tmp_path / "opt" / "python").mkdir(parents=True)
    (tmp_path / "opt" / "_internal").mkdir()
    return tmp_path


def write_catalog(tmp_path: Path, url: str, sha256: str = "0" * 64, tag: str = TAG) -> None:
    entry = {"implementation": "pypy", "version": "7.3.20", "python": "3.11", "url": url, "sha256": sha256}
    (tmp_path / "catalog.json").write_text(json.dumps({"downloadable": {tag: entry}, "frontend_python": "/opt/python/cp313-cp313/bin/python"}))


def assert_refused(proc: subprocess.CompletedProcess, *named: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("manylinux-interpreters: error: "), output
    for name in named:
        assert name in lines[0], output


# --- a server that misbehaves ------------------------------------------------------------------


Route = Callable[[socket.socket, "Server"], None]


class Server:
    """HTTP on 127.0.0.1 written by hand, so that it can break the protocol as http.server will not."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.asked = threading.Event()
        self.closing = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                request = head.decode("latin-1")
                self.requests.append(request)
                self.asked.set()
                self.routes.get(request.split(" ")[1], status(404, "Not Found"))(conn, self)
            except OSError:
                pass

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def body(data: bytes) -> Route:
    return lambda conn, srv: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)


def raw(data: bytes) -> Route:
    return lambda conn, srv: conn.sendall(data)


def status(code: int, reason: str, *headers: str) -> Route:
    head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{h}\r\n" for h in headers) + "Content-Length: 0\r\nConnection: close\r\n\r\n"
    return raw(head.encode())


def drip(head: bytes) -> Route:
    """`head`, then one byte every 0.1 s for as long as the client listens."""

    def route(conn: socket.socket, srv: Server) -> None:
        conn.sendall(head)
        while not srv.closing.wait(0.1):
            conn.sendall(b"x")

    return route


def endless(conn: socket.socket, srv: Server) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    block = bytes(1 << 16)
    while not srv.closing.is_set():
        conn.sendall(block)


def serve(server: Server, tmp_path: Path, data: bytes, path: str = "/interp.tar.gz", userinfo: str = "") -> str:
    """Serve `data` at `path` and offer it, pinned, as TAG in the catalog; its URL."""
    server.routes[path] = body(data)
    url = server.url(path, userinfo)
    write_catalog(tmp_path, url, hashlib.sha256(data).hexdigest())
    return url


# --- archives ----------------------------------------------------------------------------------


def member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, linkname, len(data)
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info, data


def interpreter(python: bytes | None = FAKE_PYTHON, *extra: tuple) -> list[tuple]:
    """The members of an archive laid out like PyPy's: one top directory, bin/ and lib/."""
    members = [member(TOP, kind=tarfile.DIRTYPE), member(f"{TOP}/bin", kind=tarfile.DIRTYPE), member(f"{TOP}/lib", kind=tarfile.DIRTYPE)]
    members.append(member(f"{TOP}/lib/site.py", b"# site\n"))
    if python is not None:
        members.append(member(f"{TOP}/bin/python", python, mode=0o755))
    return members + list(extra)


def tar_bytes(members: list[tuple], mode: Literal["w:gz", "w:bz2", "w:xz"] = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


# --- the positive cases: what the refusals must not break --------------------------------------


def test_a_served_archive_installs_and_is_listed(opt, server, old_tarfile):
    archive = tar_bytes(
        interpreter(
            FAKE_PYTHON,
            member(f"{TOP}/bin/python3", kind=tarfile.SYMTYPE, linkname="python"),
            member(f"{TOP}/bin/pypy3", kind=tarfile.SYMTYPE, linkname="../bin/./python"),
            member(f"{TOP}/lib/copy.py", kind=tarfile.LNKTYPE, linkname=f"{TOP}/lib/site.py"),
        ),
        mode="w:bz2",
    )  # fmt: skip
    serve(server, opt, archive, "/interp.tar.bz2")
    proc = run(opt, "ensure", TAG, old_tarfile=old_tarfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"installing '{TAG}'" in proc.stdout
    link = opt / "opt" / "python" / TAG
    assert link.is_symlink() and Path(os.readlink(link)) == opt / "opt" / "_internal" / TAG
    for path in (link, link / "bin", link / "lib"):  # every user of the image runs it
        assert path.stat().st_mode & 0o777 == 0o755, path
    assert (link / "lib" / "site.py").stat().st_mode & 0o777 == 0o644
    assert (link / "lib" / "copy.py").read_text() == "# site\n"
    assert state(opt) == sorted(["python", "_internal", f"python/{TAG}", f"_internal/{TAG}"] + [
        f"_internal/{TAG}/{p}" for p in ("bin", "lib", "bin/python", "bin/python3", "bin/pypy3", "lib/site.py", "lib/copy.py")
    ])  # fmt: skip

    listed = run(opt, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"identifier": TAG, "installed": True, **PROBE_ANSWER, "install_path": str(link)}]
    assert run(opt, "list", "--installed").stdout.split() == [TAG]
    again = run(opt, "ensure", TAG)
    assert again.returncode == 0 and "already installed" in again.stdout, again.stderr


def test_an_archive_naming_its_interpreter_pypy3_gets_a_bin_python(opt, server):
    members = interpreter(None, member(f"{TOP}/bin/pypy3.11", FAKE_PYTHON, mode=0o755), member(f"{TOP}/bin/pypy3", kind=tarfile.SYMTYPE, linkname="pypy3.11"))
    serve(server, opt, tar_bytes(members, mode="w:xz"))
    proc = run(opt, "ensure", TAG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.readlink(opt / "opt" / "_internal" / TAG / "bin" / "python") == "pypy3"


GRAALPY = "graalpy312-graalpy250_312_native"


def test_graalpy_keeps_its_own_pip_and_gets_the_rest_of_its_frontend(opt, server):
    """GraalPy's bin/graalpy gets a bin/python; its frontend is installed by its own bundled pip
    (ensurepip first, as pypa's images do), not by the image's pip, offline and hash-checked."""
    log = opt / "calls.log"
    fake = (f"#!/bin/sh\nif [ \"$1\" = -c ]; then echo '{json.dumps(PROBE_ANSWER)}'; else echo \"$*\" >> {log}; fi\n").encode()
    top = "graalpy-25.0.3-linux-amd64"
    members = [member(top, kind=tarfile.DIRTYPE), member(f"{top}/bin", kind=tarfile.DIRTYPE), member(f"{top}/bin/graalpy", fake, mode=0o755)]
    data = tar_bytes(members)
    server.routes["/graalpy.tar.gz"] = body(data)
    url, sha256 = server.url("/graalpy.tar.gz"), hashlib.sha256(data).hexdigest()
    entry = {"implementation": "graalpy", "version": "25.0.3", "python": "3.12", "url": url, "sha256": sha256}
    helper = opt / "helper-python"  # the image's own pip must not be the one that runs
    helper.write_text(f"#!/bin/sh\necho helper \"$*\" >> {log}\nexit 1\n")
    helper.chmod(0o755)
    (opt / "catalog.json").write_text(json.dumps({"downloadable": {GRAALPY: entry}, "frontend_python": str(helper)}))
    frontend = opt / "opt" / "_internal" / "frontend" / GRAALPY
    frontend.mkdir(parents=True)
    (frontend / "requirements.txt").write_text("build==1.6.1 --hash=sha256:" + "0" * 64 + "\n")
    proc = run(opt, "ensure", GRAALPY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.readlink(opt / "opt" / "_internal" / GRAALPY / "bin" / "python") == "graalpy"
    assert log.read_text().splitlines() == [
        "-m ensurepip --default-pip",
        f"-m pip install --quiet --no-index --find-links {frontend} --require-hashes -r {frontend}/requirements.txt",
    ]
    listed = json.loads(run(opt, "list", "--format", "json").stdout)
    assert [i["identifier"] for i in listed] == [GRAALPY] and listed[0]["installed"] is True


def test_ensure_of_an_interpreter_the_image_does_not_build_names_the_reason(opt):
    reason = "GraalPy 25.3.4.1 for Linux: no public sha256 of its archives was found here"
    (opt / "catalog.json").write_text(json.dumps({"downloadable": {}, "not_built": {"graalpy313-graalpy253_313_native": reason}}))
    proc = run(opt, "ensure", "graalpy313-graalpy253_313_native")
    assert_refused(proc, "graalpy313-graalpy253_313_native is not built in this image: " + reason)
    assert run(opt, "list").stdout.split() == []  # not offered, so not listed
    assert state(opt) == ["_internal", "python"]


def test_credentials_in_the_url_go_to_the_server_and_nowhere_else(opt, server):
    archive = tar_bytes(interpreter())
    token = "Basic " + base64.b64encode(f"mirror:{SECRET}".encode()).decode()

    def guarded(conn: socket.socket, srv: Server) -> None:
        authorized = any(line.lower() == f"authorization: {token.lower()}" for line in srv.requests[-1].split("\r\n"))
        (body(archive) if authorized else status(401, "Unauthorized", 'WWW-Authenticate: Basic realm="m"'))(conn, srv)

    server.routes["/private.tar.gz"] = guarded
    write_catalog(opt, server.url("/private.tar.gz", f"mirror:{SECRET}@"), hashlib.sha256(archive).hexdigest())
    proc = run(opt, "ensure", TAG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


# --- 1. extraction: members that would land outside, or be more than files --------------------

ARCHIVES = {
    "absolute-path": (interpreter(FAKE_PYTHON, member("/etc/cron.d/evil", b"x")), "/etc/cron.d/evil"),
    "dot-dot": (interpreter(FAKE_PYTHON, member(f"{TOP}/../../evil", b"x")), f"{TOP}/../../evil"),
    "symlink-out": (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/etc", kind=tarfile.SYMTYPE, linkname="../../../etc")), f"{TOP}/lib/etc"),
    "symlink-absolute": (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/pw", kind=tarfile.SYMTYPE, linkname="/etc/passwd")), f"{TOP}/lib/pw"),
    "symlink-chain": (
        interpreter(FAKE_PYTHON, member(f"{TOP}/here", kind=tarfile.SYMTYPE, linkname="."), member(f"{TOP}/up", kind=tarfile.SYMTYPE, linkname="here/..")),
        f"{TOP}/up",
    ),
    "through-a-symlink": (
        interpreter(FAKE_PYTHON, member(f"{TOP}/lib/alias", kind=tarfile.SYMTYPE, linkname="."), member(f"{TOP}/lib/alias/x.py", b"x")),
        f"{TOP}/lib/alias/x.py",
    ),
    "hardlink-out": (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/pw", kind=tarfile.LNKTYPE, linkname="/etc/passwd")), f"{TOP}/lib/pw"),
    "hardlink-dot-dot": (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/pw", kind=tarfile.LNKTYPE, linkname=f"{TOP}/../etc/passwd")), f"{TOP}/lib/pw"),
    "char-device": (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/null", kind=tarfile.CHRTYPE)), f"{TOP}/lib/null"),
    "block-device": (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/sda", kind=tarfile.BLKTYPE)), f"{TOP}/lib/sda"),
    "fifo": (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/pipe", kind=tarfile.FIFOTYPE)), f"{TOP}/lib/pipe"),
    "setuid": (interpreter(FAKE_PYTHON, member(f"{TOP}/bin/su", b"#!/bin/sh\n", mode=0o4755)), f"{TOP}/bin/su"),
    "second-top-directory": (interpreter(FAKE_PYTHON, member("elsewhere/x.py", b"x")), "elsewhere/x.py"),
    "no-top-directory": ([member("python", FAKE_PYTHON, mode=0o755)], "python"),
    "twice": (interpreter(FAKE_PYTHON, member(f"{TOP}/bin/python", kind=tarfile.SYMTYPE, linkname="../lib/site.py")), f"{TOP}/bin/python"),
}


def test_a_member_thousands_of_directories_deep_is_refused(opt, server):
    """Not a RecursionError: the depth is bounded before anything walks the path."""
    url = serve(server, opt, tar_bytes(interpreter(FAKE_PYTHON, member(f"{TOP}/" + "d/" * 2000 + "x.py", b"x"))))
    before = state(opt)
    assert_refused(run(opt, "ensure", TAG), url, "nested more than 64 directories deep")
    assert state(opt) == before


@pytest.mark.parametrize("members, name", ARCHIVES.values(), ids=ARCHIVES.keys())
def test_members_that_leave_the_tree_or_are_not_plain_are_refused(opt, server, old_tarfile, members, name):
    url = serve(server, opt, tar_bytes(members))
    before = state(opt)
    assert_refused(run(opt, "ensure", TAG, old_tarfile=old_tarfile), url, f"member {name!r}")
    assert state(opt) == before


@pytest.mark.parametrize(
    "members, limit, message",
    [
        (interpreter(FAKE_PYTHON, *(member(f"{TOP}/lib/m{i}.py") for i in range(30))), {"MANYLINUX_INTERPRETERS_MAX_MEMBERS": "20"}, "more than 20 members"),
        (interpreter(FAKE_PYTHON, member(f"{TOP}/lib/big", bytes(200_000))), {"MANYLINUX_INTERPRETERS_MAX_UNPACKED": "100000"}, "more than 100000 bytes"),
    ],
    ids=["too-many-members", "too-large-unpacked"],
)
def test_extraction_is_bounded(opt, server, members, limit, message):
    url = serve(server, opt, tar_bytes(members))
    before = state(opt)
    assert_refused(run(opt, "ensure", TAG, **limit), url, message)
    assert state(opt) == before


# --- 2. the archive must hold the interpreter it promises --------------------------------------

GOOD = tar_bytes(interpreter())
BROKEN = {
    "zero-bytes": (b"", "an empty file, not an archive"),
    "not-a-tar": (b"this is no archive\n" * 100, "not a tar archive"),
    "truncated-gzip": (GOOD[: len(GOOD) // 2], "cannot unpack"),
    "no-bin-python": (tar_bytes(interpreter(None, member(f"{TOP}/bin/pypy-c", FAKE_PYTHON, mode=0o755))), "holds no bin/python"),
    "dangling-bin-python": (tar_bytes(interpreter(None, member(f"{TOP}/bin/python", kind=tarfile.SYMTYPE, linkname="pypy3.11"))), "holds no bin/python"),
    "bin-python-a-directory": (tar_bytes(interpreter(None, member(f"{TOP}/bin/python", kind=tarfile.DIRTYPE))), "holds no bin/python"),
    "bin-python-not-executable": (tar_bytes(interpreter(None, member(f"{TOP}/bin/python", FAKE_PYTHON, mode=0o644))), "holds no bin/python"),
    "bin-python-fails": (tar_bytes(interpreter(b"#!/bin/sh\nexit 3\n")), "exits with status 3"),
    "bin-python-says-nonsense": (tar_bytes(interpreter(b"#!/bin/sh\necho 'Python 3.11'\n")), "does not print what an interpreter prints"),
    "bin-python-hangs": (tar_bytes(interpreter(b"#!/bin/sh\nexec sleep 60\n")), "does not answer within 1.5 s"),
}


@pytest.mark.parametrize("archive, message", BROKEN.values(), ids=BROKEN.keys())
def test_an_archive_without_a_working_interpreter_is_refused(opt, server, archive, message):
    url = serve(server, opt, archive)
    before = state(opt)
    started = time.monotonic()
    assert_refused(run(opt, "ensure", TAG, MANYLINUX_INTERPRETERS_TIMEOUT="1.5"), url, message)
    assert time.monotonic() - started < 10
    assert state(opt) == before


# --- 3. downloads: deadline, size cap, every broken transport ----------------------------------

HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
SERVERS = {
    "slow-drip-body": (drip(HEAD_OK), "not done within 1.5 s"),
    "slow-drip-headers": (drip(b"HTTP/1.1 200 OK\r\nX-Slow: "), "not done within 1.5 s"),
    "endless-body": (endless, "more than 1048576 bytes"),
    "huge-content-length": (raw(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\nxx"), "more than 1048576 bytes"),
    "bad-status-line": (raw(b"HTTX/1.1 banana\r\n\r\n"), "broken HTTP response"),
    "status-line-with-escapes": (raw(b"HTTP/1.1 200\x1b[2J\rOK\r\n\r\n"), "broken HTTP response"),
    "broken-chunking": (raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"), "cannot download"),
    "short-chunk": (raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\nabc"), "broken HTTP response"),
    "short-body": (raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc"), "sent 3 of the 1000 bytes"),
    "too-many-headers": (raw(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n"), "more than 100 headers"),
    "header-too-long": (raw(b"HTTP/1.1 200 OK\r\nX-Long: " + b"y" * 70_000 + b"\r\n\r\n"), "broken HTTP response"),
    "no-answer": (raw(b""), "broken HTTP response"),
    "not-found": (status(404, "Not Found"), "404"),
    "no-content": (status(204, "No Content"), "204"),
    "redirect-to-a-file": (status(302, "Found", "Location: file:///etc/passwd"), "cannot download"),
    "wrong-bytes": (body(b"not what was pinned"), "does not match the pin"),
}


@pytest.mark.parametrize("route, message", SERVERS.values(), ids=SERVERS.keys())
def test_a_misbehaving_server_fails_the_download_in_bounded_time(opt, server, route, message):
    server.routes["/interp.tar.gz"] = route
    url = server.url("/interp.tar.gz")
    write_catalog(opt, url, hashlib.sha256(b"something else").hexdigest())
    before = state(opt)
    started = time.monotonic()
    proc = run(opt, "ensure", TAG, MANYLINUX_INTERPRETERS_TIMEOUT="1.5", MANYLINUX_INTERPRETERS_MAX_BYTES=str(1 << 20))
    assert time.monotonic() - started < 10
    assert_refused(proc, url, message)
    assert "\x1b" not in proc.stderr
    assert state(opt) == before


def test_a_closed_port_fails_the_download(opt):
    with socket.create_server(("127.0.0.1", 0)) as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/interp.tar.gz"
    write_catalog(opt, url)
    before = state(opt)
    assert_refused(run(opt, "ensure", TAG), url, "refused")
    assert state(opt) == before


# --- 4. nothing left behind on Ctrl-C or SIGTERM -----------------------------------------------


def _interrupt_when(opt: Path, ready: Callable[[], bool], signum: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "ensure", TAG], env=environment(opt, MANYLINUX_INTERPRETERS_TIMEOUT="30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Python then turns it into KeyboardInterrupt
    )  # fmt: skip
    try:
        end = time.monotonic() + 10
        while not ready() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        assert ready(), "the install never got there"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_download_leaves_nothing_behind(opt, server, signum):
    server.routes["/interp.tar.gz"] = drip(HEAD_OK)
    write_catalog(opt, server.url("/interp.tar.gz"))
    before = state(opt)
    proc = _interrupt_when(opt, server.asked.is_set, signum)
    assert proc.returncode == 128 + signum, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr
    assert state(opt) == before


def test_an_interrupt_while_the_new_interpreter_is_probed_removes_it(opt, server):
    serve(server, opt, tar_bytes(interpreter(b"#!/bin/sh\nexec sleep 60\n")))
    before = state(opt)
    proc = _interrupt_when(opt, (opt / "opt" / "_internal" / TAG).exists, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr
    assert state(opt) == before


# --- 5. a catalog and an /opt/python it did not make -------------------------------------------


def test_list_tolerates_what_it_did_not_make_under_opt_python(opt):
    python_dir = opt / "opt" / "python"

    def fake(tag: str, script: bytes) -> None:
        (python_dir / tag / "bin").mkdir(parents=True)
        (python_dir / tag / "bin" / "python").write_bytes(script)
        (python_dir / tag / "bin" / "python").chmod(0o755)

    fake("cp312-cp312", FAKE_PYTHON)
    fake("cp310-cp310", b"#!/bin/sh\necho not json\n")
    fake("cp311-cp311", b"#!/bin/sh\nexit 1\n")
    fake("cp313-cp313", b"#!/bin/sh\nexec sleep 60\n")
    overreach = json.dumps({"identifier": "evil", "installed": False, "install_path": "/etc", **PROBE_ANSWER})
    fake("cp314-cp314", f"#!/bin/sh\necho '{overreach}'\n".encode())
    fake("not-a-tag", FAKE_PYTHON)
    (python_dir / "cp39-cp39").symlink_to(opt / "nowhere")
    (python_dir / "cp38-cp38").write_text("a file\n")
    (python_dir / "cp37-cp37m").mkdir()
    (python_dir / "cp315-cp315" / "bin" / "python").mkdir(parents=True)
    write_catalog(opt, "https://example.invalid/pypy.tar.bz2")
    listed = ["cp310-cp310", "cp311-cp311", "cp312-cp312", "cp313-cp313", "cp314-cp314"]

    text = run(opt, "list", MANYLINUX_INTERPRETERS_TIMEOUT="1")
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    assert text.stdout.split() == [*listed, TAG]
    installed = run(opt, "list", "--installed", MANYLINUX_INTERPRETERS_TIMEOUT="1")
    assert installed.stdout.split() == listed, installed.stderr
    as_json = run(opt, "list", "--format", "json", MANYLINUX_INTERPRETERS_TIMEOUT="1")
    assert as_json.returncode == 0 and "Traceback" not in as_json.stderr, as_json.stderr
    entries = {e["identifier"]: e for e in json.loads(as_json.stdout)}
    assert list(entries) == [*listed, TAG]
    for tag in ("cp312-cp312", "cp314-cp314"):  # what a probe says beyond its three answers is not taken
        assert entries[tag] == {"identifier": tag, "installed": True, **PROBE_ANSWER, "install_path": str(python_dir / tag)}
    for tag in ("cp310-cp310", "cp311-cp311", "cp313-cp313"):
        assert entries[tag]["installed"] is True and entries[tag]["python_version"] == "", entries[tag]
        assert f"{tag}/bin/python" in as_json.stderr
    verbose = run(opt, "list", "-v", MANYLINUX_INTERPRETERS_TIMEOUT="1")
    assert verbose.returncode == 0 and "Traceback" not in verbose.stderr, verbose.stderr
    assert "cp313-cp313/bin/python does not answer within 1 s" in verbose.stderr


def test_ensure_leaves_alone_what_it_did_not_make(opt):
    (opt / "opt" / "python" / TAG).mkdir()
    write_catalog(opt, "https://example.invalid/pypy.tar.bz2")
    before = state(opt)
    assert_refused(run(opt, "ensure", TAG), str(opt / "opt" / "python" / TAG), "is not an interpreter this command installed")
    assert state(opt) == before


@pytest.mark.parametrize("command", [["list"], ["ensure", TAG]], ids=["list", "ensure"])
def test_a_python_dir_that_is_a_file_is_refused(tmp_path, command):
    (tmp_path / "python").write_text("not a directory\n")
    assert_refused(run(tmp_path, *command, MANYLINUX_INTERPRETERS_PYTHON_DIR=str(tmp_path / "python")), str(tmp_path / "python"), "not a directory")


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


CATALOG_FILES = {
    "fifo": (lambda p: _fifo(p / "fifo.json"), "not a regular file"),
    "directory": (lambda p: (p / "dir.json").mkdir() or p / "dir.json", "not a regular file"),
    "device": (lambda p: Path(os.devnull), "not a regular file"),
    "huge": (lambda p: (p / "huge.json").write_text(" " * (2 << 20)) and p / "huge.json", "larger than 1048576 bytes"),
    "nested-too-deep": (lambda p: (p / "deep.json").write_text("[" * 300_000) and p / "deep.json", "nested too deeply"),
    "not-json": (lambda p: (p / "bad.json").write_text("{'downloadable': {}}") and p / "bad.json", "cannot read the catalog"),
    "not-utf8": (lambda p: (p / "latin1.json").write_bytes(b'{"downloadable": {"\xe9": 1}}') and p / "latin1.json", "cannot read the catalog"),
    "tag-twice": (lambda p: (p / "twice.json").write_text('{"downloadable": {"TAG": {}, "TAG": {}}}'.replace("TAG", TAG)) and p / "twice.json", "given twice"),
}


@pytest.mark.parametrize("make, message", CATALOG_FILES.values(), ids=CATALOG_FILES.keys())
def test_a_catalog_that_is_no_small_json_file_is_refused_without_hanging(opt, make, message):
    catalog = make(opt)
    assert_refused(run(opt, "list", timeout=10, MANYLINUX_INTERPRETERS_CATALOG=str(catalog)), str(catalog), message)


def _entry(**change: object) -> dict:
    entry: dict[str, object] = {"implementation": "pypy", "version": "7.3.20", "python": "3.11", "url": "https://example.invalid/p.tar.bz2", "sha256": "a" * 64}
    entry.update(change)
    return entry


CATALOGS = {
    "a-list": ([], "expected an object"),
    "downloadable-a-list": ({"downloadable": []}, "expected an object"),
    "entry-a-string": ({"downloadable": {TAG: "https://example.invalid/p.tar.bz2"}}, "expected an object with a url"),
    "tag-with-a-newline": ({"downloadable": {"pp311-pypy311_pp80\n": _entry()}}, "not an interpreter tag"),
    "tag-with-arabic-digits": ({"downloadable": {"cp3\u0661\u0663-cp3\u0661\u0663": _entry()}}, "not an interpreter tag"),
    "url-a-number": ({"downloadable": {TAG: _entry(url=42)}}, "url: expected a string"),
    "url-with-a-newline": ({"downloadable": {TAG: _entry(url="https://example.invalid/p.tar.bz2\n")}}, "url: expected printable ASCII"),
    "url-unclosed-ipv6": ({"downloadable": {TAG: _entry(url="http://[::1")}}, "http://[::1 is not a URL"),
    "url-port-out-of-range": ({"downloadable": {TAG: _entry(url="http://127.0.0.1:99999/p")}}, "is not a URL"),
    "url-without-host": ({"downloadable": {TAG: _entry(url="http:///p.tar.bz2")}}, "names no host"),
    "url-file-fifo": ({"downloadable": {TAG: _entry(url="file://{fifo}")}}, "is not an http or https URL"),
    "url-ftp-with-password": ({"downloadable": {TAG: _entry(url=f"ftp://mirror:{SECRET}@example.invalid/p")}}, "ftp://example.invalid/p is not an http"),
    "sha256-uppercase": ({"downloadable": {TAG: _entry(sha256="A" * 64)}}, "sha256: expected 64 lowercase hex digits"),
    "sha256-with-a-newline": ({"downloadable": {TAG: _entry(sha256="a" * 64 + "\n")}}, "sha256: expected 64 lowercase hex digits"),
    "version-a-number": ({"downloadable": {TAG: _entry(version=7.3)}}, "version: expected a short line of text"),
    "frontend-a-number": ({"downloadable": {}, "frontend_python": 3}, "frontend_python: expected an absolute path"),
    "not-built-a-list": ({"downloadable": {}, "not_built": ["x"]}, "not_built: expected a mapping"),
    "not-built-bad-tag": ({"downloadable": {}, "not_built": {"../x": "some reason"}}, "not an interpreter tag"),
    "not-built-newline": ({"downloadable": {}, "not_built": {TAG: "a\nb"}}, "expected one line of text"),
}


@pytest.mark.parametrize("data, message", CATALOGS.values(), ids=CATALOGS.keys())
def test_a_catalog_of_the_wrong_shape_is_refused(opt, data, message):
    fifo = _fifo(opt / "fifo")
    text = json.dumps(data).replace("{fifo}", str(fifo))
    (opt / "catalog.json").write_text(text)
    for command in (["list"], ["ensure", TAG]):
        proc = run(opt, *command, timeout=10)
        assert_refused(proc, str(opt / "catalog.json"), message)
        assert SECRET not in proc.stderr
    assert state(opt) == ["_internal", "python"]


BAD_LIMITS = [
    ("MANYLINUX_INTERPRETERS_TIMEOUT", "soon"),
    ("MANYLINUX_INTERPRETERS_TIMEOUT", "0"),
    ("MANYLINUX_INTERPRETERS_TIMEOUT", "-1"),
    ("MANYLINUX_INTERPRETERS_TIMEOUT", "nan"),
    ("MANYLINUX_INTERPRETERS_TIMEOUT", "inf"),
    ("MANYLINUX_INTERPRETERS_TIMEOUT", "\u0663"),
    ("MANYLINUX_INTERPRETERS_TIMEOUT", "10000000"),
    ("MANYLINUX_INTERPRETERS_MAX_BYTES", "99999999999999999999999"),
    ("MANYLINUX_INTERPRETERS_MAX_BYTES", "1.5"),
    ("MANYLINUX_INTERPRETERS_MAX_BYTES", "1e9"),
    ("MANYLINUX_INTERPRETERS_MAX_MEMBERS", "0"),
    ("MANYLINUX_INTERPRETERS_MAX_UNPACKED", "12\n"),
]


@pytest.mark.parametrize("name, value", BAD_LIMITS)
def test_a_bad_limit_in_the_environment_is_refused(opt, name, value):
    write_catalog(opt, "https://example.invalid/pypy.tar.bz2")
    assert_refused(run(opt, "ensure", TAG, **{name: value}), name)
    assert state(opt) == ["_internal", "python"]


# --- 6. secrets ---------------------------------------------------------------------------------


def test_credentials_in_the_url_are_never_printed(opt, server):
    server.routes["/interp.tar.gz"] = status(403, "Forbidden")
    write_catalog(opt, server.url("/interp.tar.gz", f"mirror:{SECRET}@"))
    proc = run(opt, "ensure", TAG)
    assert_refused(proc, server.url("/interp.tar.gz"), "403")
    assert SECRET not in proc.stdout + proc.stderr and "mirror" not in proc.stdout + proc.stderr


# --- the interpreter that runs it ---------------------------------------------------------------


def test_the_script_parses_as_python_3_9():
    """Some images' tools interpreter may be CPython 3.9: no `match`, no 3.10+ grammar."""
    ast.parse(SCRIPT.read_text(), feature_version=(3, 9))
