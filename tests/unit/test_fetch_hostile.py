"""Hostile sources for the source cache and `invoke fetch`: misbehaving HTTP servers started
here on 127.0.0.1 (raw sockets: they say what a real server would not), FIFOs and devices behind
file:// addresses, malformed addresses, a cache whose entries are not what they should be.

Every case ends with one message naming the address or path, no traceback, in bounded time, and
nothing in the cache but verified files. A few cases run the real command line; the others call
sources.py, which the command line goes through, with a short deadline and a small cap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from manyforge.sources import (
    DEADLINE_ENV,
    MAX_BYTES_ENV,
    MAX_SOURCE_BYTES,
    MAX_WHEEL_BYTES,
    Address,
    Limits,
    Pin,
    SourceCache,
    SourceError,
    checked_filename,
    fetch_pin,
    platform_tags,
    stage_files,
)
from manyforge.spec import LockedFile

ROOT = Path(__file__).resolve().parents[2]
DATA = b"pinned tarball bytes\n" * 4096  # 84 kB
WHEEL = b"pinned wheel bytes\n" * 512
PIN = Pin("Python-3.99.0.tar.xz", hashlib.sha256(DATA).hexdigest())
WHEEL_PIN = Pin("pip-25.3-py3-none-any.whl", hashlib.sha256(WHEEL).hexdigest())
SERVED = {f"/{PIN.filename}": DATA, f"/{WHEEL_PIN.filename}": WHEEL}
DEADLINE = 1.0
CAP = 1 << 20
FAST = Limits(deadline=DEADLINE, max_bytes=CAP)


# --- misbehaving servers ------------------------------------------------------------------------

Behaviour = Callable[[socket.socket, str, threading.Event], None]


class RawServer:
    """A TCP server on 127.0.0.1: reads each request's head, then lets `behaviour` answer
    whatever it likes on the socket (the request path is given). Closing it stops every drip."""

    def __init__(self, behaviour: Behaviour, read_request: bool = True):
        self.behaviour = behaviour
        self.read_request = read_request
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head = b"GET / HTTP/1.1\r\n\r\n" if not self.read_request else b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk or len(head) > 65536:
                        return
                    head += chunk
                path = head.split(b" ", 2)[1].decode("ascii", "replace")
                self.behaviour(conn, path, self.stop)
            except OSError:
                pass  # the client gave up, as it should

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def respond(status: str, body: bytes, headers: str = "") -> Behaviour:
    def answer(conn, path, stop):
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n".encode() + body)

    return answer


def correct(conn, path, stop):
    body = SERVED.get(path)
    respond("200 OK", body)(conn, path, stop) if body is not None else respond("404 Not Found", b"")(conn, path, stop)


def drip_body(conn, path, stop):
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode())
    for byte in DATA:
        if stop.wait(0.05):
            return
        conn.sendall(bytes([byte]))


def drip_headers(conn, path, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not stop.wait(0.05):
        conn.sendall(b"a")


def silent(conn, path, stop):
    stop.wait(30)


def endless(conn, path, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    zeros = b"\0" * 65536
    while not stop.is_set():
        conn.sendall(zeros)


def raw(data: bytes) -> Behaviour:
    def answer(conn, path, stop):
        conn.sendall(data)

    return answer


def hang_up(conn, path, stop):
    pass


def redirect(location: str) -> Behaviour:
    return raw(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())


def tls_drip(conn, path, stop):
    """The start of a TLS record announcing 16 kB, then a byte at a time: no read ever times out."""
    conn.sendall(b"\x16\x03\x03\x40\x00")
    while not stop.wait(0.05):
        conn.sendall(b"\x00")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The servers are local: a proxy configured in the environment must not stand between."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def serve():
    servers: list[RawServer] = []

    def start(behaviour: Behaviour, read_request: bool = True) -> RawServer:
        servers.append(RawServer(behaviour, read_request))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def leftovers(root: Path, pins=(PIN, WHEEL_PIN)) -> list[str]:
    """What the cache holds besides its lock and verified files."""
    if not root.exists():
        return []
    good = {p.filename: p.sha256 for p in pins}
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name == ".lock":
            continue
        if entry.is_symlink() or not entry.is_file() or good.get(entry.name) != hashlib.sha256(entry.read_bytes()).hexdigest():
            out.append(entry.name)
    return out


def bounded(call: Callable[[], object], seconds: float = DEADLINE + 3) -> BaseException | None:
    """Run `call` in a thread; a call still running after `seconds` fails the test (rather than
    hanging it). Returns what it raised."""
    raised: list[BaseException] = []

    def run():
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return raised[0] if raised else None


def one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message and "Traceback" not in message, message
    assert message.isascii() and message.isprintable(), message
    assert len(message) < 600, message


# --- the transport, against each misbehaving server ---------------------------------------------

TRANSPORT_CASES = [
    # (id, behaviour, what the message says)
    ("slow-drip-body", drip_body, "not complete within 1 s"),
    ("slow-drip-headers", drip_headers, "not complete within 1 s"),
    ("silent", silent, "not complete within 1 s"),
    ("endless-body", endless, f"more than {CAP} bytes, the cap of a source file"),
    ("announces-too-much", raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n" + DATA), "announces 1000000000000 bytes"),
    ("bad-status-line", raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "not an HTTP answer"),
    ("binary-status-line", raw(b"\x1b[31m\x00\xff garbage\r\n\r\n"), "not an HTTP answer"),
    ("hang-up", hang_up, "closed the connection without an answer"),
    ("broken-chunking", raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"), "chunked encoding is broken"),
    ("too-many-headers", raw(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n"), "got more than 100 headers"),
    ("header-too-long", raw(b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n"), "a line of the answer is too long"),
    ("short-body", raw(f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode() + DATA[:100]), f"ended after 100 of {len(DATA)} bytes"),
    ("wrong-bytes", respond("200 OK", b"evil twin"), "does not match the pin"),
    ("right-bytes-and-more", respond("200 OK", DATA + b"x"), "does not match the pin"),
    ("not-found", respond("404 Not Found", b"nope"), "HTTP 404 Not Found"),
    ("control-chars-in-reason", respond("500 \x1b]0;pwned\x07", b""), "HTTP 500"),
    ("partial-content", respond("206 Partial Content", DATA), "HTTP 206"),
    ("redirect-to-file", redirect("file:///etc/passwd"), "Redirection to url 'file:///etc/passwd' is not allowed"),
    ("redirect-to-ftp", redirect("ftp://127.0.0.1/x"), "only http(s) redirects"),
    ("redirect-with-credentials", redirect("http://user:secret@127.0.0.1:1/x"), "credentials in the address are not supported"),
    ("redirect-loop", redirect("/loop"), "HTTP 302"),
]


@pytest.mark.parametrize(("behaviour", "expected"), [c[1:] for c in TRANSPORT_CASES], ids=[c[0] for c in TRANSPORT_CASES])
def test_misbehaving_server_fails_cleanly_and_leaves_nothing(tmp_path, serve, behaviour, expected):
    server = serve(behaviour)
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    url = server.url(f"/{PIN.filename}")
    error = bounded(lambda: cache.fetch_url(PIN, url))
    assert isinstance(error, SourceError), error
    message = str(error)
    one_line(message)
    assert message.startswith(f"{PIN.filename}: ") and url in message and expected in message, message
    assert "secret" not in message  # escape sequences arrive escaped: one_line checks the message is printable
    assert leftovers(cache.root) == []


def test_tls_handshake_trickle_ends_at_the_deadline(tmp_path, serve):
    server = serve(tls_drip, read_request=False)
    url = f"https://127.0.0.1:{server.port}/{PIN.filename}"
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    error = bounded(lambda: cache.fetch_url(PIN, url))
    assert isinstance(error, SourceError) and f"cannot download {url}: not complete within 1 s" in str(error), error
    assert leftovers(cache.root) == []


def test_connection_refused_names_the_address(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{PIN.filename}"
    with pytest.raises(SourceError, match=f"cannot download {url}: Connection refused"):
        SourceCache(tmp_path / "cache", limits=FAST).fetch_url(PIN, url)


def test_a_pin_with_one_origin_names_only_that_origins_failure(tmp_path):
    """A pin with no Debian path fails on its upstream alone: no 'debian: no address' noise."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    pin = Pin(PIN.filename, PIN.sha256, f"http://127.0.0.1:{port}/{PIN.filename}", None)
    with pytest.raises(SourceError) as exc:
        fetch_pin(SourceCache(tmp_path / "cache", limits=FAST), pin, "auto", say=lambda line: None)
    assert str(exc.value).splitlines()[1:] == [f"  upstream: {pin.filename}: cannot download {pin.url}: Connection refused"]
    with pytest.raises(SourceError, match="debian: no address"):  # asked for that origin alone
        fetch_pin(SourceCache(tmp_path / "cache", limits=FAST), pin, "debian", say=lambda line: None)


def test_correct_server_file_lands_verified(tmp_path, serve):
    server = serve(correct)
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    assert cache.seed_mirror(server.url(), [PIN, WHEEL_PIN]) == [PIN.filename, WHEEL_PIN.filename]
    assert cache.verify(PIN).read_bytes() == DATA and cache.verify(WHEEL_PIN).read_bytes() == WHEEL
    assert leftovers(cache.root) == []


def test_a_redirect_to_a_signed_address_is_followed(tmp_path, serve):
    target = serve(correct)
    server = serve(redirect(target.url(f"/{PIN.filename}?X-Signature=abc&expires=1")))
    target.behaviour = lambda conn, path, stop: correct(conn, path.split("?")[0], stop)
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    assert cache.fetch_url(PIN, server.url(f"/{PIN.filename}")).read_bytes() == DATA


def test_partial_bytes_never_appear_under_the_final_name(tmp_path, serve):
    """While a download runs, the pinned name does not exist; only a dot file does."""
    server = serve(drip_body)
    cache = SourceCache(tmp_path / "cache", limits=Limits(deadline=DEADLINE))
    seen: list[list[str]] = []

    def watch():
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if cache.root.exists():
                seen.append(sorted(p.name for p in cache.root.iterdir()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(SourceError, match="not complete within"):
        cache.fetch_url(PIN, server.url(f"/{PIN.filename}"))
    watcher.join()
    assert any(names and names[0].startswith(f".{PIN.filename}.") and names[0].endswith(".partial") for names in seen), seen
    assert all(PIN.filename not in names for names in seen), seen
    assert leftovers(cache.root) == []


class _Interrupted(io.RawIOBase):
    """A stream interrupted by Ctrl-C half way."""

    def __init__(self):
        self.sent = False

    def readable(self):
        return True

    def read(self, n=-1):
        if self.sent:
            raise KeyboardInterrupt
        self.sent = True
        return DATA[: len(DATA) // 2]


def test_ctrl_c_leaves_no_partial_file(tmp_path):
    cache = SourceCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        cache.add(PIN, _Interrupted())
    assert list(cache.root.iterdir()) == []


def test_wheel_and_source_caps_are_documented_and_lowered_only():
    wheel = LockedFile(name="pip", version="25.3", filename=WHEEL_PIN.filename, sha256=WHEEL_PIN.sha256)
    assert Limits().cap(PIN) == MAX_SOURCE_BYTES == 256 << 20
    assert Limits().cap(wheel) == Limits().cap(WHEEL_PIN) == MAX_WHEEL_BYTES
    assert Limits(max_bytes=1 << 40).cap(PIN) == MAX_SOURCE_BYTES
    assert Limits(max_bytes=10).cap(wheel) == 10


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({DEADLINE_ENV: "abc"}, f"{DEADLINE_ENV} 'abc': not a whole number"),
        ({DEADLINE_ENV: "0"}, f"{DEADLINE_ENV} '0'"),
        ({DEADLINE_ENV: "\u0663"}, f"{DEADLINE_ENV} '\\u0663'"),  # an Arabic-Indic 3: int() would take it
        ({DEADLINE_ENV: "5\n"}, f"{DEADLINE_ENV} '5\\n'"),
        ({DEADLINE_ENV: "99999999"}, "from 1 to 86400"),
        ({MAX_BYTES_ENV: "-1"}, f"{MAX_BYTES_ENV} '-1'"),
        ({MAX_BYTES_ENV: "1e6"}, f"{MAX_BYTES_ENV} '1e6'"),
    ],
    ids=["word", "zero", "non-ascii-digit", "trailing-newline", "too-long", "negative", "float"],
)
def test_bad_limit_environment_is_refused(env, expected):
    with pytest.raises(SourceError, match="not a whole number") as err:
        Limits.from_environment(env)
    assert expected in str(err.value)
    one_line(str(err.value))


# --- file:// sources and --mirror values --------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _devzero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.mkdir()


def _sparse_huge(path: Path) -> None:
    with path.open("wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB of nothing: refused by its size, never read


def _missing(path: Path) -> None:
    pass


FILE_CASES = [
    ("fifo", _fifo, "a FIFO, not a regular file; not read"),
    ("link-to-dev-zero", _devzero, "a character device, not a regular file; not read"),
    ("directory", _directory, "a directory, not a regular file; not read"),
    ("sparse-64-GiB", _sparse_huge, f"{64 << 30} bytes, more than the cap of {CAP}; not read"),
    ("missing", _missing, "No such file or directory"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_file_mirror_reads_regular_files_only(tmp_path, make, expected):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make(mirror / PIN.filename)
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    url = f"file://{mirror}/{PIN.filename}"
    with pytest.raises(SourceError) as err:
        cache.fetch_url(PIN, url)
    one_line(str(err.value))
    assert url in str(err.value) and expected in str(err.value), str(err.value)
    assert leftovers(cache.root) == []


def test_file_address_of_a_device_is_refused_unopened(tmp_path):
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    with pytest.raises(SourceError, match="file:///dev/zero: a character device, not a regular file; not read"):
        cache.fetch_url(PIN, "file:///dev/zero")


MIRROR_CASES = [
    ("dev-zero-fragment", "file:///dev/zero#", "a query (?) or fragment (#) is not allowed"),
    ("query", "http://127.0.0.1/x?file=", "a query (?) or fragment (#) is not allowed"),
    ("unclosed-ipv6", "http://[::1", "not a valid address (Invalid IPv6 URL)"),
    ("bad-port", "http://127.0.0.1:99999/", "not a valid address"),
    ("word-port", "http://127.0.0.1:http/", "not a valid address"),
    ("no-host", "http:///path", "no host"),
    ("remote-file", "file://otherhost/x", "a file:// address is a local absolute path"),
    ("ftp", "ftp://127.0.0.1/", "not an http(s):// or file:// address"),
    ("javascript", "javascript:alert(1)", "not an http(s):// or file:// address"),
    ("relative", "mirror/dir", "not an http(s):// or file:// address"),
    ("empty", "", "not an http(s):// or file:// address"),
    ("space", "http://127.0.0.1/a b", "only printable ASCII characters"),
    ("newline", "http://127.0.0.1/\nRUN evil", "only printable ASCII characters"),
    ("trailing-newline", "http://127.0.0.1/mirror\n", "only printable ASCII characters"),
    ("escape", "http://127.0.0.1/\x1b[2J", "only printable ASCII characters"),
    ("nul", "file:///tmp/\x00", "only printable ASCII characters"),
    ("non-ascii-host", "http://\u0435xample.org/", "only printable ASCII characters"),
    ("too-long", "http://127.0.0.1/" + "a" * 5000, "at most 2000"),
    ("credentials", "https://user:hunter2@127.0.0.1/", "credentials in the address are not supported"),
]


@pytest.mark.parametrize(("value", "expected"), [c[1:] for c in MIRROR_CASES], ids=[c[0] for c in MIRROR_CASES])
def test_bad_mirror_is_refused_naming_the_option_and_value(tmp_path, value, expected):
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    with pytest.raises(SourceError) as err:
        cache.seed_mirror(value, [PIN])
    message = str(err.value)
    one_line(message)
    shown = value.replace("user:hunter2@", "***@")  # credentials are never repeated
    assert message.startswith(f"--mirror {ascii(shown[:100])[:-1]}") and expected in message, message
    assert "hunter2" not in message
    assert not cache.root.exists()


def test_percent_encoded_nul_in_a_file_mirror_is_an_error(tmp_path, capsys):
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    assert cache.seed_mirror(f"file://{tmp_path}/%00", [PIN]) == []  # skipped with a message, not a traceback
    assert f"skipped: {PIN.filename}: cannot download file://{tmp_path}/%00/{PIN.filename}: ValueError: embedded null byte" in capsys.readouterr().err


def test_mirror_is_parsed_once_into_a_value():
    address = Address.parse("https://127.0.0.1:8443/mirror/", "--mirror")
    assert address.scheme == "https"
    assert str(address.join(PIN.filename)) == f"https://127.0.0.1:8443/mirror/{PIN.filename}"
    with pytest.raises(SourceError, match="not a plain file name"):
        address.join("../etc/passwd")


# --- the cache's own entries ---------------------------------------------------------------------


def _dir_at(cache: Path, name: str) -> None:
    (cache / name).mkdir()


def _fifo_at(cache: Path, name: str) -> None:
    os.mkfifo(cache / name)


def _good_link_at(cache: Path, name: str) -> None:
    outside = cache.parent / "outside"
    outside.write_bytes(DATA)  # the right bytes, but not in the cache
    (cache / name).symlink_to(outside)


def _dangling_link_at(cache: Path, name: str) -> None:
    (cache / name).symlink_to(cache.parent / "nowhere")


CACHE_ENTRY_CASES = [
    ("pinned-name-is-a-directory", PIN.filename, _dir_at, "a directory where the source cache keeps only verified files"),
    ("pinned-name-is-a-fifo", PIN.filename, _fifo_at, "a FIFO where the source cache keeps only verified files"),
    ("pinned-name-is-a-link", PIN.filename, _good_link_at, "a symbolic link where the source cache keeps only verified files"),
    ("pinned-name-is-a-dangling-link", PIN.filename, _dangling_link_at, "a symbolic link where"),
    ("lock-is-a-directory", ".lock", _dir_at, "the source cache's lock file (Is a directory)"),
    ("lock-is-a-link", ".lock", _good_link_at, "the source cache's lock file (Too many levels of symbolic links)"),
    ("lock-is-a-fifo", ".lock", _fifo_at, "the source cache's lock file is a FIFO"),
    ("partial-is-a-directory", f".{PIN.filename}.x.partial", _dir_at, "cannot remove what an interrupted download left"),
]


@pytest.mark.parametrize(("name", "make", "expected"), [c[1:] for c in CACHE_ENTRY_CASES], ids=[c[0] for c in CACHE_ENTRY_CASES])
def test_odd_cache_entries_are_named_not_followed(tmp_path, serve, name, make, expected):
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    cache.prepare()
    make(cache.root, name)
    server = serve(correct)
    start = time.monotonic()
    with pytest.raises(SourceError) as err:
        with cache.filling():
            cache.seed_mirror(server.url(), [PIN])
    assert time.monotonic() - start < 5  # a FIFO is never opened for reading
    message = str(err.value)
    one_line(message)
    assert str(cache.root / name) in message and expected in message, message
    assert (cache.root / name).exists() or (cache.root / name).is_symlink()  # reported, left to the user


@pytest.mark.parametrize("method", ["has", "valid", "verify", "add"])
def test_every_cache_entry_point_refuses_a_directory_under_a_pinned_name(tmp_path, method):
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    cache.prepare()
    (cache.root / PIN.filename).mkdir()
    call = {"has": cache.has, "valid": cache.valid, "verify": cache.verify, "add": lambda p: cache.add(p, io.BytesIO(DATA))}[method]
    with pytest.raises(SourceError, match="a directory where the source cache keeps only verified files"):
        call(PIN)
    assert sorted(p.name for p in cache.root.iterdir()) == [PIN.filename]


def test_cache_that_is_a_file_is_named_by_every_entry_point(tmp_path):
    (tmp_path / "cache").write_text("not a directory")
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    for call in (cache.has, cache.valid, lambda p: cache.add(p, io.BytesIO(DATA)), lambda p: cache.seed_mirror("http://127.0.0.1:1/", [p])):
        with pytest.raises(SourceError, match=f"source cache {tmp_path / 'cache'}: "):
            call(PIN)


@pytest.mark.parametrize(
    "name",
    [".", "..", ".lock", ".x.partial", "a/b", "../escape.tar.xz", "/etc/passwd", "", "-rf", "x\n", "Python-3.99.0.tar.xz\n",
     "\u0663.tar.xz", "caf\u00e9.tar.xz", "a" * 201],
    ids=["dot", "dotdot", "lock", "partial", "slash", "traversal", "absolute", "empty", "option", "newline", "trailing-newline",
         "non-ascii-digit", "non-ascii", "too-long"],
)  # fmt: skip
def test_a_pin_whose_name_is_not_a_plain_file_name_never_becomes_a_path(tmp_path, serve, name):
    pin = Pin(name, PIN.sha256)
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    server = serve(correct)
    offered = tmp_path / "offered"
    offered.mkdir()
    (offered / "any").write_bytes(DATA)
    for call in (cache.path, cache.has, cache.valid, cache.verify, lambda p: cache.add(p, io.BytesIO(DATA)),
                 lambda p: cache.seed_mirror(server.url(), [p]), lambda p: cache.seed_dir(offered, [p]),
                 lambda p: cache.fetch_url(p, server.url("/x")), lambda p: stage_files(cache, [p], tmp_path / "context")):  # fmt: skip
        with pytest.raises(SourceError, match="not a plain file name"):
            call(pin)
    assert not (tmp_path / "escape.tar.xz").exists()
    assert leftovers(cache.root) == []


def test_checked_names_are_plain_ascii_components():
    for name in ("Python-3.13.18.tar.xz", "libzstd_1.5.7+dfsg.orig.tar.xz", "python3.9_3.9.2~rc1.orig.tar.xz", "pip-25.3-py3-none-any.whl"):
        assert checked_filename(name) == name


def test_policy_parsing_is_anchored_and_ascii():
    assert platform_tags("manylinux_2_17", "x86_64")[0] == "manylinux_2_17_x86_64"
    for policy in ("manylinux_2_17\n", "manylinux_2_\u0661\u0667", "manylinux_2_17_x", "foolinux_1_2"):
        with pytest.raises(SourceError, match="not manylinux_X_Y or musllinux_X_Y"):
            platform_tags(policy, "x86_64")


# --- --from-dir ----------------------------------------------------------------------------------


def test_seed_dir_skips_fifos_devices_and_huge_files_unread(tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    os.mkfifo(seed / "a-fifo")
    (seed / "b-zero").symlink_to("/dev/zero")
    with (seed / "c-huge").open("wb") as fh:
        fh.truncate(64 << 30)
    (seed / "d-loop").symlink_to(seed)
    (seed / "e-good").write_bytes(DATA)
    cache = SourceCache(tmp_path / "cache", limits=FAST)
    start = time.monotonic()
    assert cache.seed_dir(seed, [PIN]) == [PIN.filename]
    assert time.monotonic() - start < 5
    assert cache.verify(PIN).read_bytes() == DATA and leftovers(cache.root) == []


# --- the real command line -----------------------------------------------------------------------


def write_matrix(tmp: Path) -> dict[str, str]:
    """A one-interpreter matrix whose only origin refuses connections, and its lock: `invoke
    fetch --origin upstream` then needs nothing but what the mirror offers."""
    spec = tmp / "images.yaml"
    spec.write_text(f"""\
org: hostile
cpython:
  "3.99.0":
    url: https://127.0.0.1:1/{PIN.filename}
    sha256: {PIN.sha256}
interpreters:
  cp399-cp399: {{cpython: "3.99.0"}}
frontend:
  pip: "==25.3"
tools: {{}}
bases:
  debian12: {{family: apt, debootstrap: bookworm, archs: [x86_64]}}
toolchains:
  debian-gcc-12: {{family: apt, gcc: "12", packages: [gcc]}}
images:
  manylinux_2_36:
    policy: manylinux_2_36
    libc: {{name: glibc, version: "2.36"}}
    base: debian12
    toolchain: debian-gcc-12
    archs: [x86_64]
    interpreters: [cp399-cp399]
    tools_interpreter: cp399-cp399
""")
    lock = tmp / "wheels.lock.json"
    wheel = {"name": "pip", "version": "25.3", "filename": WHEEL_PIN.filename, "sha256": WHEEL_PIN.sha256}
    lock.write_text(json.dumps({"platforms": {}, "interpreters": {"cp399-cp399": [wheel]}}))
    return {"MANYFORGE_SPEC": str(spec), "MANYFORGE_LOCK": str(lock), "MANYFORGE_CACHE": str(tmp / "cache")}


def fetch_cli(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "fetch", "--origin", "upstream", *args], cwd=ROOT,
        env={**os.environ, **write_matrix(tmp), **(env or {})}, capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip


def assert_clean_failure(proc: subprocess.CompletedProcess, cache: Path, *expected: str, planted: str = "") -> None:
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    for line in proc.stderr.splitlines():
        assert len(line) < 600 and line.isascii() and line.isprintable(), line
    assert leftovers(cache) == ([planted] if planted else [])


def test_cli_fetches_from_a_correct_mirror(tmp_path, serve):
    server = serve(correct)
    proc = fetch_cli(tmp_path, "--mirror", server.url())
    assert proc.returncode == 0, proc.stderr
    assert f"accepted 2 file(s) from {server.url()}" in proc.stderr
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == [".lock", PIN.filename, WHEEL_PIN.filename]
    assert (cache / PIN.filename).read_bytes() == DATA and (cache / WHEEL_PIN.filename).read_bytes() == WHEEL


CLI_SERVER_CASES = [
    ("slow-drip", drip_body, {DEADLINE_ENV: "1"}, "not complete within 1 s"),
    ("endless-body", endless, {MAX_BYTES_ENV: str(CAP)}, f"more than {CAP} bytes"),
    ("bad-status-line", raw(b"garbage\r\n\r\n"), {}, "not an HTTP answer"),
    ("broken-chunking", raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), {}, "chunked encoding is broken"),
    ("too-many-headers", raw(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n"), {}, "got more than 100 headers"),
    ("wrong-bytes", respond("200 OK", b"evil twin"), {}, "does not match the pin"),
]


@pytest.mark.parametrize(("behaviour", "env", "expected"), [c[1:] for c in CLI_SERVER_CASES], ids=[c[0] for c in CLI_SERVER_CASES])
def test_cli_against_a_misbehaving_mirror(tmp_path, serve, behaviour, env, expected):
    server = serve(behaviour)
    proc = fetch_cli(tmp_path, "--mirror", server.url(), env=env)
    # The mirror's failure is reported per file, then the origin (refusing) fails the fetch.
    assert_clean_failure(proc, tmp_path / "cache", f"{server.url()}/{PIN.filename}", expected, "cannot download https://127.0.0.1:1/")


def test_cli_mirror_of_fifos_and_devices(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.mkfifo(mirror / PIN.filename)
    (mirror / WHEEL_PIN.filename).symlink_to("/dev/zero")
    proc = fetch_cli(tmp_path, "--mirror", f"file://{mirror}", timeout=10)
    assert_clean_failure(proc, tmp_path / "cache", f"file://{mirror}/{PIN.filename}: a FIFO", f"{WHEEL_PIN.filename}: a character device")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--mirror", "http://[::1"], {}, "error: --mirror 'http://[::1': not a valid address"),
        (["--mirror", "file:///dev/zero#"], {}, "error: --mirror 'file:///dev/zero#': a query (?) or fragment (#) is not allowed"),
        (["--mirror", "http://127.0.0.1/\x1b[2J"], {}, "error: --mirror 'http://127.0.0.1/\\x1b[2J': only printable ASCII"),
        ([], {DEADLINE_ENV: "soon"}, f"error: {DEADLINE_ENV} 'soon': not a whole number from 1 to 86400"),
    ],
    ids=["unclosed-ipv6", "dev-zero-fragment", "escape-sequence", "bad-deadline-env"],
)
def test_cli_refuses_bad_values(tmp_path, args, env, expected):
    proc = fetch_cli(tmp_path, *args, env=env)
    assert_clean_failure(proc, tmp_path / "cache", expected)


@pytest.mark.parametrize(("name", "expected"), [(".lock", "lock file (Is a directory)"), (PIN.filename, "a directory where")], ids=["lock", "pinned"])
def test_cli_names_a_directory_in_the_cache(tmp_path, serve, name, expected):
    (tmp_path / "cache" / name).mkdir(parents=True)
    proc = fetch_cli(tmp_path, "--mirror", serve(correct).url())
    assert_clean_failure(proc, tmp_path / "cache", f"error: {tmp_path / 'cache' / name}", expected, planted=name if name != ".lock" else "")


def test_cli_ctrl_c_mid_download_leaves_no_partial_file(tmp_path, serve):
    server = serve(drip_body)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "fetch", "--origin", "upstream", "--mirror", server.url()], cwd=ROOT,
        env={**os.environ, **write_matrix(tmp_path)}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        end = time.monotonic() + 10
        while not any(p.name.endswith(".partial") for p in (cache.iterdir() if cache.exists() else ())):
            assert time.monotonic() < end and proc.poll() is None, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert leftovers(cache) == []
