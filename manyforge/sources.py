"""Pinned inputs: the source cache, the wheel lock, and the ways to fill the cache.

A file enters the cache only through `SourceCache.add`, which hashes it while copying, and
renames it into place only when the hash equals its pin: a partial or mismatching file never
appears under its final name. Builds read sources only from this cache.

Whatever serves a file (an origin, `--mirror`, `--from-dir`) is not trusted to behave: every
download ends by a deadline and at a size cap (`Limits`), reads only regular files, and fails
with one line naming the address, never a traceback.
"""

from __future__ import annotations

import contextlib
import email.parser
import fcntl
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

from manyforge.arches import ARCHES
from manyforge.spec import REPO_ROOT, Image, LockedFile, Spec, frontend_requirements

CHUNK = 1 << 20

# What one download may take. A pinned file larger than its kind's cap is not the file pinned
# (CPython's tarballs are about 20-30 MiB, the largest pinned wheels about 30 MiB), so a body
# past the cap is cut off, never stored. The deadline covers the whole download (connection,
# headers, redirects, body): a server that sends a byte a second fails at it. 30 minutes fetch
# a full-size source tarball at 150 kB/s.
MAX_SOURCE_BYTES = 256 << 20  # a source tarball (CPython, a library, an interpreter download)
MAX_WHEEL_BYTES = 128 << 20  # a wheel (PyPI's default upload limit is 100 MB)
DOWNLOAD_DEADLINE = 1800  # seconds
IDLE_TIMEOUT = 60.0  # seconds one network operation may wait for the peer
# Environment overrides (validated): a shorter deadline or a lower cap, for tests and small disks.
DEADLINE_ENV = "MANYFORGE_FETCH_DEADLINE"
MAX_BYTES_ENV = "MANYFORGE_FETCH_MAX_BYTES"
MAX_DEADLINE = 86400

# A file name in the cache and the build context: a letter or digit first, so never `.`, `..`,
# a dot file (the cache's `.lock`, a `.partial` download) or an option; no `/`; ASCII only.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,199}", re.ASCII)
_URL_START = re.compile(r"(https?|file)://", re.ASCII | re.IGNORECASE)
_URL_CHARS = re.compile(r"[!-~]{1,8000}", re.ASCII)  # printable ASCII: no whitespace, control or non-ASCII
MAX_ADDRESS = 2000  # characters of an address we are given (a redirect, e.g. a signed one, may be longer)
_USERINFO = re.compile(r"(?<=//)[^/?#@]*@", re.ASCII)
_POLICY = re.compile(r"(manylinux|musllinux)_([0-9]{1,3})_([0-9]{1,3})", re.ASCII)


class SourceError(Exception):
    pass


class _Refused(SourceError):
    """The bytes offered are not the pinned file (wrong hash, too large): `why` says how."""

    def __init__(self, filename: str, why: str):
        self.why = why
        super().__init__(f"{filename}: {why}")


class _DownloadError(Exception):
    """A download failed for a reason of ours (deadline, size, status): the message says which."""


def default_cache_dir() -> Path:
    env = os.environ.get("MANYFORGE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "manyforge" / "sources"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_filename(name: str) -> str:
    """A pin's file name, refused unless it is one plain path component (see FILE_NAME): the
    spec refuses such names at load already, this module does not rely on it."""
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        raise SourceError(
            f"pinned file name {_quoted(str(name), 100)}: not a plain file name "
            "(a letter or digit, then letters, digits and . _ + ~ -; at most 200)"
        )
    return name


def _printable(text: str, limit: int = 200) -> str:
    """Text from outside (a server's answer, an exception) made one short printable line."""
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" if ord(c) < 256 else "?" for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _quoted(text: str, limit: int = 100) -> str:
    """A value in quotes for a message, ASCII only (escapes for the rest), cut to `limit`."""
    return ascii(text if len(text) <= limit else text[:limit] + "...")


def _redact(text: str) -> str:
    """An address as a message may show it: no user name or password."""
    return _USERINFO.sub("***@", text, count=1)


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return kind
    return "not a regular file"


@dataclass(frozen=True)
class Address:
    """A download address, checked once: http, https or file; printable ASCII without whitespace;
    no credentials (they would be printed, and urllib would pass them on to a redirect's host),
    no query and no fragment (`<mirror>#` would cut off the file name appended to it). Where a
    server redirects to may have a query (signed download links do)."""

    url: str
    scheme: str

    @classmethod
    def parse(cls, text: str, what: str, redirect: bool = False) -> Address:
        def refuse(why: str) -> SourceError:
            return SourceError(f"{what} {_quoted(_redact(text), 100)}: {why}")

        if not isinstance(text, str) or not _URL_START.match(text):
            raise refuse("not an http(s):// or file:// address")
        if not _URL_CHARS.fullmatch(text) or (len(text) > MAX_ADDRESS and not redirect):
            raise refuse(f"only printable ASCII characters are allowed, no whitespace, at most {MAX_ADDRESS}")
        if not redirect and ("#" in text or "?" in text):
            raise refuse("a query (?) or fragment (#) is not allowed: file names are appended to the path")
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError as exc:
            raise refuse(f"not a valid address ({_printable(str(exc), 80)})") from None
        if "@" in parts.netloc:
            raise refuse("credentials in the address are not supported")
        scheme = parts.scheme.lower()
        if scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise refuse("a file:// address is a local absolute path: file:///path")
        elif not parts.hostname:
            raise refuse("no host")
        return cls(text, scheme)

    def join(self, relative: str) -> Address:
        """The address of a file under this one; each component must be a plain file name."""
        for part in relative.split("/"):
            checked_filename(part)
        return Address(f"{self.url.rstrip('/')}/{relative}", self.scheme)

    @property
    def local_path(self) -> Path:
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(self.url).path))

    def __str__(self) -> str:
        return self.url


def _positive_env(env: Mapping[str, str], name: str, maximum: int) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,12}", value, re.ASCII) or not 1 <= int(value) <= maximum:
        raise SourceError(f"{name} {_quoted(value, 40)}: not a whole number from 1 to {maximum}")
    return int(value)


@dataclass(frozen=True)
class Limits:
    """Bounds of one download: `deadline` seconds in all, at most `max_bytes` (which can only
    lower the cap of a file's kind, MAX_SOURCE_BYTES or MAX_WHEEL_BYTES)."""

    deadline: float = DOWNLOAD_DEADLINE
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.deadline <= MAX_DEADLINE or (self.max_bytes is not None and self.max_bytes < 1):
            raise SourceError(f"download limits out of range: deadline {self.deadline} s, max_bytes {self.max_bytes}")

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Limits:
        deadline = _positive_env(env, DEADLINE_ENV, MAX_DEADLINE)
        return cls(deadline=DOWNLOAD_DEADLINE if deadline is None else deadline, max_bytes=_positive_env(env, MAX_BYTES_ENV, MAX_SOURCE_BYTES))

    def cap(self, pin: Pin | LockedFile) -> int:
        cap = MAX_WHEEL_BYTES if _is_wheel(pin) else MAX_SOURCE_BYTES
        return cap if self.max_bytes is None else min(cap, self.max_bytes)

    @staticmethod
    def kind(pin: Pin | LockedFile) -> str:
        return "wheel" if _is_wheel(pin) else "source file"


def _is_wheel(pin: Pin | LockedFile) -> bool:
    return isinstance(pin, LockedFile) or pin.filename.endswith(".whl")


class _NotRegular(Exception):
    pass


@contextlib.contextmanager
def _open_regular(path: Path, follow: bool) -> Iterator[tuple[io.BufferedReader, int]]:
    """A regular file opened for reading, with its size; anything else raises _NotRegular
    without being read (O_NONBLOCK: a FIFO swapped in after the check does not block the open)."""
    st = os.stat(path, follow_symlinks=follow)
    if not stat.S_ISREG(st.st_mode):
        raise _NotRegular(_kind_of(st.st_mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise _NotRegular("replaced while it was opened")
        yield fh, now.st_size


# --- the transport: one download, bounded in time and size -----------------------------------


class _Deadline:
    """The end of one download, whatever the server does. It is checked between reads; a read
    that never times out because bytes keep trickling in (a status line or header a byte at a
    time, a proxy's answer to CONNECT) is woken by a timer that shuts down every socket the
    download opened. Sockets are watched through a duplicate descriptor: shutdown acts on the
    connection, which TLS takes over from the plain socket it wraps."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self.expired = self.expired or time.monotonic() >= self.end
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            watched = sock.dup()
            self._sockets.append(watched)
            if self.expired:
                with contextlib.suppress(OSError):
                    watched.shutdown(socket.SHUT_RDWR)
        return sock

    def remaining(self) -> float:
        return max(0.01, self.end - time.monotonic())

    def check(self) -> None:
        if self.expired or time.monotonic() >= self.end:
            self.expired = True
            raise _DownloadError(self.message())

    def message(self) -> str:
        return f"not complete within {self.seconds:g} s (the download deadline; {DEADLINE_ENV} sets it)"


def _watched_create(deadline: _Deadline) -> Callable[..., socket.socket]:
    """socket.create_connection under the deadline: http.client opens its socket through this
    hook, then any proxy tunnel and TLS over it, so the deadline watches all of them."""

    def create(address: tuple[str, int], timeout: object = None, source_address: tuple[str, int] | None = None) -> socket.socket:
        deadline.check()
        wait = min(timeout if isinstance(timeout, (int, float)) else IDLE_TIMEOUT, deadline.remaining())
        return deadline.watch(socket.create_connection(address, wait, source_address))

    return create


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, *, deadline: _Deadline, **kwargs):
        super().__init__(host, **kwargs)
        self._create_connection = _watched_create(deadline)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, *, deadline: _Deadline, **kwargs):
        super().__init__(host, **kwargs)
        self._create_connection = _watched_create(deadline)


class _Handler(urllib.request.AbstractHTTPHandler):
    """http and https through watched connections (urllib's HTTPHandler and HTTPSHandler, but
    for the connection class)."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline
        self._tls = ssl.create_default_context()

    def http_open(self, req):
        return self.do_open(_WatchedHTTPConnection, req, deadline=self._deadline)

    def https_open(self, req):
        return self.do_open(_WatchedHTTPSConnection, req, deadline=self._deadline, context=self._tls)

    http_request = urllib.request.AbstractHTTPHandler.do_request_
    https_request = urllib.request.AbstractHTTPHandler.do_request_


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Redirects go to http(s) addresses only (urllib would follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not re.match(r"https?://", newurl, re.ASCII | re.IGNORECASE):
            raise _DownloadError(f"redirected to {_quoted(_redact(newurl), 100)}: only http(s) redirects are followed")
        try:
            Address.parse(newurl, "redirected to", redirect=True)
        except SourceError as exc:
            raise _DownloadError(str(exc)) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's opener for http and https only: proxies from the environment, redirects, and
    errors as HTTPError; no ftp, no file, no data: URLs."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(), _Handler(deadline), _RedirectHandler(), urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler(),
    ):  # fmt: skip
        opener.add_handler(handler)
    return opener


class _Body:
    """What `SourceCache.add` reads from a download: short reads before the deadline, and a body
    that ends before its announced length is an error, not a short file."""

    def __init__(self, read1: Callable[[int], bytes], expected: int | None, deadline: _Deadline):
        self._read1 = read1
        self._expected = expected
        self._deadline = deadline
        self._done = 0

    def read(self, n: int = CHUNK) -> bytes:
        self._deadline.check()
        data = self._read1(n)
        self._deadline.check()
        self._done += len(data)
        if not data and self._expected is not None and self._done < self._expected:
            raise _DownloadError(f"the body ended after {self._done} of {self._expected} bytes")
        return data


@contextlib.contextmanager
def _open_local(address: Address, cap: int, deadline: _Deadline) -> Iterator[_Body]:
    """A file:// address: a regular file only, checked before it is opened (opening a FIFO
    blocks, a device may never end, or act on being opened)."""
    try:
        with _open_regular(address.local_path, follow=True) as (fh, size):
            if size > cap:
                raise _DownloadError(f"{size} bytes, more than the cap of {cap}; not read")
            yield _Body(fh.read1, size, deadline)
    except _NotRegular as exc:
        raise _DownloadError(f"{exc}, not a regular file; not read") from None


@contextlib.contextmanager
def _open_remote(address: Address, cap: int, deadline: _Deadline) -> Iterator[_Body]:
    request = urllib.request.Request(address.url)
    with _opener(deadline).open(request, timeout=min(IDLE_TIMEOUT, deadline.remaining())) as response:
        if response.status != 200:
            raise _DownloadError(f"HTTP {response.status} {_printable(response.reason, 60)}, not 200 with the whole file")
        expected = response.length
        if expected is not None and expected > cap:
            raise _DownloadError(f"announces {expected} bytes, more than the cap of {cap}; not read")
        yield _Body(response.read1, expected, deadline)


def _why(exc: BaseException) -> str:
    """One line on what went wrong in a transport, for a message that names the address."""
    if isinstance(exc, _DownloadError):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        with contextlib.suppress(Exception):
            exc.close()
        return f"HTTP {exc.code} {_printable(str(exc.reason), 80)}"
    if isinstance(exc, urllib.error.URLError):
        return _why(exc.reason) if isinstance(exc.reason, BaseException) else _printable(str(exc.reason))
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    if isinstance(exc, http.client.LineTooLong):
        return f"a line of the answer is too long ({_printable(str(exc), 80)})"
    if isinstance(exc, http.client.BadStatusLine):
        return f"not an HTTP answer (status line {_printable(str(exc), 60)})"
    if isinstance(exc, http.client.IncompleteRead):
        return "the body ended early, or its chunked encoding is broken"
    if isinstance(exc, http.client.HTTPException):
        return f"a broken HTTP answer ({type(exc).__name__}: {_printable(str(exc), 80)})"
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, OSError):
        return _printable(exc.strerror or str(exc) or type(exc).__name__)
    return _printable(f"{type(exc).__name__}: {exc}")


# Everything a transport raises for what the other side does (OSError covers socket, TLS and
# file errors; ValueError a malformed answer or address).
_TRANSPORT_ERRORS = (_DownloadError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


@dataclass(frozen=True)
class Pin:
    filename: str
    sha256: str
    url: str | None = None  # upstream address, when there is one
    debian: str | None = None  # the same file in Debian's archive, relative to the mirror root


def cpython_pin(spec: Spec, version: str) -> Pin:
    source = spec.data.cpython[version]
    return Pin(source.filename, source.sha256, source.url, debian_cpython_path(source.filename))


def library_pins(spec: Spec, names: Iterable[str]) -> list[Pin]:
    libs = spec.data.libraries
    return [Pin(libs[n].filename, libs[n].sha256, libs[n].url, libs[n].debian) for n in names]  # type: ignore[index]


def source_tool_pins(spec: Spec, names: Iterable[str]) -> list[Pin]:
    tools = spec.data.source_tools
    return [Pin(tools[n].filename, tools[n].sha256, tools[n].url, tools[n].debian) for n in names]  # type: ignore[index]


def debian_tool_pins(spec: Spec, names: Iterable[str], arch: str) -> list[Pin]:
    """The .deb of each newer Debian package (images.yaml `debian_tools`) for one arch."""
    files = [spec.data.debian_tools[n].file_for(arch) for n in names]  # type: ignore[index]
    return [Pin(f.filename, f.sha256, None, f.debian) for f in files if f is not None]


def git_lfs_pins(spec: Spec, arches: Iterable[str]) -> list[Pin]:
    """git-lfs's release archive for each arch (images.yaml `git_lfs`)."""
    files = spec.data.git_lfs.files if spec.data.git_lfs else {}
    return [Pin(files[a].filename, files[a].sha256, files[a].url) for a in arches if a in files]  # type: ignore[index]


def static_clang_pins(spec: Spec, build_hosts: Iterable[str]) -> list[Pin]:
    """The static clang+LLD archive of each build host (images.yaml `static_clang`)."""
    release = spec.data.static_clang
    files = release.files if release else {}
    return [Pin(files[h].filename, files[h].sha256, files[h].url) for h in build_hosts if h in files]  # type: ignore[index]


def static_clang_sums_pin(spec: Spec) -> Pin | None:
    """The static clang release's sha256sums.txt, pinned by the sha256 pypa/manylinux pins it by:
    the archives' own pins must be lines of it (check_static_clang_listed)."""
    release = spec.data.static_clang
    if release is None:
        return None
    directory = next(iter(release.files.values())).url.rsplit("/", 1)[0]
    return Pin(f"static-clang-{release.version}-sha256sums.txt", release.sha256sums, f"{directory}/sha256sums.txt")


def check_static_clang_listed(cache: SourceCache, sums: Pin, archives: Iterable[Pin]) -> None:
    """Each archive's pin is a line of the release's own sha256sums.txt (from the cache, verified)."""
    lines = set(cache.verify(sums).read_bytes().decode("ascii", "replace").splitlines())
    for pin in archives:
        if f"{pin.sha256}  {pin.filename}" not in lines:
            raise SourceError(f"{pin.filename}: its pinned sha256 is not the one the release's {sums.filename} lists; fix images.yaml static_clang")


def wheel_pins(spec: Spec, image: Image, arch: str) -> list[LockedFile]:
    """The locked wheels one image×arch installs: its tools and their dependencies."""
    return list(spec.wheels.get(spec.wheel_platform(image, arch), ()))


def frontend_pins(spec: Spec, tags: Iterable[str]) -> list[LockedFile]:
    """The frontend wheels of some interpreters, each file once."""
    return list({w.filename: w for tag in tags for w in spec.frontend_pins(tag)}.values())


def all_pins(spec: Spec) -> list[Pin]:
    clang = static_clang_pins(spec, spec.data.static_clang.files if spec.data.static_clang else ())
    sums = static_clang_sums_pin(spec)
    clang += [sums] if sums else []
    tools = [*source_tool_pins(spec, spec.data.source_tools), *git_lfs_pins(spec, spec.data.git_lfs.files if spec.data.git_lfs else ())]
    pins = {
        p.filename: p
        for p in [*(cpython_pin(spec, v) for v in spec.data.cpython), *library_pins(spec, spec.data.libraries), *tools, *clang]
    }
    for files in [*spec.wheels.values(), *spec.frontend.values()]:
        for w in files:
            pins[w.filename] = Pin(w.filename, w.sha256)
    return list(pins.values())


class SourceCache:
    """A directory of files, each present only if its sha256 equals its pin.

    Only regular files live under pinned names: a directory, a link or a FIFO there is reported,
    never followed, replaced or read."""

    def __init__(self, root: Path | None = None, limits: Limits | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.limits = limits if limits is not None else Limits.from_environment()

    def path(self, pin: Pin | LockedFile) -> Path:
        return self.root / checked_filename(pin.filename)

    def _entry(self, pin: Pin | LockedFile) -> Path | None:
        """The pinned file's path if a regular file is there, None if nothing is."""
        path = self.path(pin)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise SourceError(f"source cache {self.root}: not a directory; set MANYFORGE_CACHE") from None
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{path}: {_kind_of(st.st_mode)} where the source cache keeps only verified files; remove it")
        return path

    def has(self, pin: Pin | LockedFile) -> bool:
        """True if the file is there under its pin's name (not re-hashed: see `valid`)."""
        return self._entry(pin) is not None

    def valid(self, pin: Pin | LockedFile) -> bool:
        """True if the file is there and its content matches the pin; a file that does not
        (truncated, tampered) is removed, so that any origin can replace it."""
        if not self.has(pin):
            return False
        try:
            self.verify(pin)
        except SourceError as exc:
            print(f"  {exc}", file=sys.stderr)
            return False
        return True

    def prepare(self) -> None:
        """Make sure the cache is a writable directory."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(f"source cache {self.root}: cannot create it ({exc.strerror}); set MANYFORGE_CACHE") from None
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise SourceError(f"source cache {self.root}: not a writable directory; set MANYFORGE_CACHE")

    @contextlib.contextmanager
    def filling(self) -> Iterator[SourceCache]:
        """Exclusive use of the cache while filling it: what a killed download left behind is
        removed first, and two fetches never race on one file."""
        self.prepare()
        lock_path = self.root / ".lock"
        try:
            # No O_CREAT on a link's target, no blocking open of a FIFO.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SourceError(f"{lock_path}: cannot open the source cache's lock file ({exc.strerror}); remove it") from None
        with os.fdopen(fd, "r+b", buffering=0) as lock:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise SourceError(f"{lock_path}: the source cache's lock file is {_kind_of(mode)}; remove it")
            fcntl.flock(lock, fcntl.LOCK_EX)
            for partial in self.root.glob(".*.partial"):
                try:
                    partial.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise SourceError(f"{partial}: cannot remove what an interrupted download left ({exc.strerror}); remove it") from None
            yield self

    def verify(self, pin: Pin | LockedFile) -> Path:
        """Path of a cached file after re-checking its hash; a mismatching file is removed."""
        path = self._entry(pin)
        if path is None:
            raise SourceError(f"{pin.filename} is not in the source cache {self.root}; run `invoke fetch`")
        try:
            with _open_regular(path, follow=False) as (fh, _):
                digest = hashlib.sha256()
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
        actual = digest.hexdigest()
        if actual != pin.sha256:
            path.unlink()
            raise SourceError(
                f"{path}: sha256 {actual} does not match the pin {pin.sha256}; the file was removed, run `invoke fetch`"
            )
        return path

    def add(self, pin: Pin | LockedFile, stream: BinaryIO | _Body, progress: str | None = None) -> Path:
        """Copy a stream into the cache under the pin's name if, and only if, its hash matches;
        at most the cap of the pin's kind is read. The stream's own errors reach the caller, who
        knows where it comes from; nothing but the verified file is left in any case."""
        self.prepare()
        final = self.path(pin)
        self._entry(pin)  # a directory or link there is reported before anything is read
        cap = self.limits.cap(pin)
        digest = hashlib.sha256()
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{pin.filename}.", suffix=".partial", dir=self.root)
        except OSError as exc:
            raise SourceError(f"source cache {self.root}: cannot write ({exc.strerror}); set MANYFORGE_CACHE") from None
        tmp = Path(tmp_name)
        try:
            done = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: stream.read(CHUNK), b""):
                    if done + len(chunk) > cap:
                        raise _Refused(pin.filename, f"more than {cap} bytes, the cap of a {Limits.kind(pin)}; not kept")
                    digest.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise SourceError(f"source cache {self.root}: cannot write {pin.filename} ({exc.strerror})") from None
                    done += len(chunk)
                    if progress and sys.stderr.isatty():
                        print(f"\r  {progress}: {done >> 20} MiB", end="", file=sys.stderr, flush=True)
                if progress and sys.stderr.isatty():
                    print(file=sys.stderr)
                try:
                    out.flush()
                except OSError as exc:
                    raise SourceError(f"source cache {self.root}: cannot write {pin.filename} ({exc.strerror})") from None
            if digest.hexdigest() != pin.sha256:
                raise _Refused(pin.filename, f"sha256 {digest.hexdigest()} does not match the pin {pin.sha256}; not kept")
            self._entry(pin)  # nothing but a regular file may be replaced
            try:
                tmp.chmod(0o644)
                tmp.replace(final)
            except OSError as exc:
                raise SourceError(f"{final}: cannot write ({exc.strerror})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def add_file(self, pin: Pin | LockedFile, source: Path) -> Path:
        """Copy a local file into the cache (verified as `add` does); only a regular file is
        read, and one larger than the pin's cap is refused unread."""
        try:
            with _open_regular(source, follow=True) as (fh, size):
                if size > self.limits.cap(pin):
                    raise _Refused(pin.filename, f"{source} has {size} bytes, more than the cap of a {Limits.kind(pin)}; not read")
                return self.add(pin, fh)
        except _NotRegular as exc:
            raise SourceError(f"{source}: {exc}; not read") from None
        except OSError as exc:
            raise SourceError(f"{source}: cannot read ({exc.strerror})") from None

    def fetch_url(self, pin: Pin | LockedFile, url: str | Address) -> Path:
        """Download one pinned file into the cache, within the cache's `limits`."""
        address = url if isinstance(url, Address) else Address.parse(url, f"{pin.filename}: address")
        cap = self.limits.cap(pin)
        self._entry(pin)  # a directory or link under the pin's name: said before any download
        deadline = _Deadline(self.limits.deadline)
        opener = _open_local if address.scheme == "file" else _open_remote
        try:
            with deadline, opener(address, cap, deadline) as body:
                return self.add(pin, body, progress=pin.filename)
        except _Refused as exc:
            if deadline.expired:  # what a connection cut at the deadline looked like is beside the point
                raise SourceError(f"{pin.filename}: cannot download {address}: {deadline.message()}") from None
            raise SourceError(f"{pin.filename}: refused what {address} served: {exc.why}") from None
        except _TRANSPORT_ERRORS as exc:
            why = deadline.message() if deadline.expired else _why(exc)
            raise SourceError(f"{pin.filename}: cannot download {address}: {why}") from None

    def seed_dir(self, directory: Path, pins: Iterable[Pin | LockedFile]) -> list[str]:
        """Accept any file under `directory` whose hash equals a pin, whatever its name. Only
        regular files are read; an empty one (what /proc shows) or one larger than any pin may
        be is skipped unread."""
        by_hash = {p.sha256: p for p in pins if not self.valid(p)}
        largest = max((self.limits.cap(p) for p in by_hash.values()), default=0)
        accepted = []
        for candidate in sorted(directory.rglob("*")):
            if not by_hash:
                break
            try:
                with _open_regular(candidate, follow=True) as (fh, size):
                    if not 0 < size <= largest:
                        continue
                    digest = hashlib.sha256()
                    for chunk in iter(lambda: fh.read(CHUNK), b""):  # noqa: B023 - consumed in this iteration
                        digest.update(chunk)
            except _NotRegular:
                continue
            except OSError as exc:
                print(f"  skipped {candidate}: cannot read ({exc.strerror})", file=sys.stderr)
                continue
            pin = by_hash.get(digest.hexdigest())
            if pin is not None:
                self.add_file(pin, candidate)
                accepted.append(pin.filename)
                del by_hash[pin.sha256]
        return accepted

    def seed_mirror(self, base_url: str | Address, pins: Iterable[Pin | LockedFile]) -> list[str]:
        """Fetch each missing pin from `<base_url>/<filename>`; accepted by hash alone."""
        base = base_url if isinstance(base_url, Address) else Address.parse(base_url, "--mirror")
        accepted = []
        for pin in pins:
            if self.valid(pin):
                continue
            try:
                self.fetch_url(pin, base.join(pin.filename))
                accepted.append(pin.filename)
            except SourceError as exc:
                print(f"  skipped: {exc}", file=sys.stderr)
        return accepted


# --- CPython from Debian's source archive -----------------------------------------------------


def _host_apt_mirror(flag: str, what: str, variable: str) -> Address:
    """A mirror named by the host's apt sources (scripts/debian-apt.sh FLAG), or its variable."""
    try:
        out = subprocess.run([str(REPO_ROOT / "scripts" / "debian-apt.sh"), flag], capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"cannot find a {what} in the host's apt sources: {_printable(str(exc))}") from None
    if out.returncode != 0 or not out.stdout.strip():
        raise SourceError(f"cannot find a {what} in the host's apt sources: {_printable(out.stderr.strip(), 500)}")
    return Address.parse(out.stdout.strip(), f"the {what} of the host's apt sources (or {variable})")


def debian_mirror() -> Address:
    """The host's Debian mirror (from its apt sources, or MANYFORGE_DEBIAN_MIRROR)."""
    return _host_apt_mirror("--print-mirror", "Debian mirror", "MANYFORGE_DEBIAN_MIRROR")


def debian_security_mirror() -> Address:
    """The host's mirror of Debian's security archive (from its apt sources, or
    MANYFORGE_DEBIAN_SECURITY_MIRROR), for a Debian root's <suite>-security suite."""
    return _host_apt_mirror("--print-security-mirror", "Debian security mirror", "MANYFORGE_DEBIAN_SECURITY_MIRROR")


def debian_cpython_path(filename: str) -> str:
    """Debian ships python.org's tarball unchanged as the orig tarball of python3.X."""
    version = filename.removeprefix("Python-").removesuffix(".tgz").removesuffix(".tar.xz")
    series = ".".join(version.split(".")[:2])
    ext = "tar.gz" if filename.endswith(".tgz") else "tar.xz"
    return f"pool/main/p/python{series}/python{series}_{version}.orig.{ext}"


def seed_from_debian(cache: SourceCache, pins: Iterable[Pin]) -> list[str]:
    """Fetch pinned files from Debian's archive (the host's apt mirror), checked by hash."""
    mirror = debian_mirror()
    accepted = []
    for pin in pins:
        if cache.valid(pin):
            continue
        if pin.debian is None:
            raise SourceError(f"{pin.filename}: not in Debian's archive")
        cache.fetch_url(pin, mirror.join(pin.debian))
        accepted.append(pin.filename)
    return accepted


def fetch_pin(cache: SourceCache, pin: Pin, origin: str, say=print) -> None:
    """Fetch one pinned file from its origins in turn ("auto": upstream, then Debian)."""
    errors = []
    kinds = ("upstream", "debian") if origin == "auto" else (origin,)
    for kind in kinds:
        if (pin.url if kind == "upstream" else pin.debian) is None:
            # An origin the pin names no address on is no failure, unless it is the only one asked.
            if len(kinds) == 1 or (pin.url is None and pin.debian is None):
                errors.append(f"{kind}: no address")
            continue
        try:
            say(f"fetching {pin.filename} from {kind}")
            if kind == "upstream":
                assert pin.url is not None
                cache.fetch_url(pin, pin.url)
            else:
                seed_from_debian(cache, [pin])
            return
        except SourceError as exc:
            errors.append(f"{kind}: {exc}")
    raise SourceError(f"{pin.filename} could not be fetched:\n  " + "\n  ".join(errors))


# --- wheels: lock and fetch through pip, which keeps its own index configuration --------------


def platform_tags(policy: str, arch: str) -> list[str]:
    """Every platform tag a wheel may carry to install under `policy` on `arch`, newest first."""
    parsed = _POLICY.fullmatch(policy)
    if parsed is None:
        raise SourceError(f"policy {_quoted(policy, 60)}: not manylinux_X_Y or musllinux_X_Y")
    kind, major, minor = parsed[1], int(parsed[2]), int(parsed[3])
    if kind == "musllinux":
        return [f"musllinux_{major}_{m}_{arch}" for m in range(minor, -1, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for m in range(minor, 4, -1):
        tags.append(f"manylinux_{major}_{m}_{arch}")
        if m in legacy:
            tags.append(f"{legacy[m]}_{arch}")
    return tags


def _pip_platform_args(spec: Spec, image: Image, arch: str) -> list[str]:
    tools_version = spec.data.interpreters[image.tools_interpreter].cpython
    args = ["--only-binary=:all:", "--python-version", ".".join(tools_version.split(".")[:2])]
    for tag in platform_tags(image.policy, arch):
        args += ["--platform", tag]
    return args


def resolve_wheels(spec: Spec, image: Image, arch: str, requirement: str) -> list[LockedFile]:
    """Ask pip which files it would install for one requirement on an image×arch, with hashes.

    pip reads the dependency metadata from the index, so nothing large is downloaded.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
            "--target", str(Path(tmp) / "target"), "--report", str(report),
            *_pip_platform_args(spec, image, arch), requirement,
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SourceError(f"pip cannot resolve {requirement} for {image.policy}_{arch}")
        data = json.loads(report.read_text())
    files = []
    for item in data["install"]:
        info = item["download_info"]
        files.append(
            LockedFile(
                name=item["metadata"]["name"].lower().replace("_", "-"),
                version=item["metadata"]["version"],
                filename=info["url"].rsplit("/", 1)[1].split("#")[0],
                sha256=info["archive_info"]["hashes"]["sha256"],
            )
        )
    return files


def _target_python(spec: Spec, tag: str) -> tuple[str, dict[str, str]]:
    """(Python version, marker environment) of an interpreter the frontend is locked for."""
    if tag in spec.data.interpreters:
        version, impl = spec.data.interpreters[tag].cpython, "cpython"
    else:
        version, impl = spec.data.downloadable[tag].python, spec.data.downloadable[tag].implementation
    env = {
        "python_version": ".".join(version.split(".")[:2]),
        "python_full_version": version,
        "implementation_name": impl,
        "platform_python_implementation": {"cpython": "CPython", "pypy": "PyPy", "graalpy": "GraalVM"}[impl],
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
    }
    return version, env


MAX_METADATA_BYTES = 1 << 20  # a wheel's METADATA is a few kB; its declared size bounds the read


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(i for i in zf.infolist() if i.filename.endswith(".dist-info/METADATA") and i.filename.count("/") == 1)
            if meta.file_size > MAX_METADATA_BYTES:
                raise SourceError(f"{wheel.name}: METADATA of {meta.file_size} bytes; refused")
            message = email.parser.BytesParser().parsebytes(zf.read(meta))
        return [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    except (zipfile.BadZipFile, StopIteration, InvalidRequirement, OSError, ValueError) as exc:
        raise SourceError(f"{wheel.name}: not a wheel whose requirements can be read ({_printable(str(exc), 100)})") from None


def resolve_frontend(spec: Spec, tag: str, cache: SourceCache | None = None) -> list[LockedFile]:
    """Lock the frontend (images.yaml `frontend`) for one interpreter.

    pip evaluates environment markers with the interpreter it runs on, not the target's, so
    dependencies are followed here with the target's marker environment: download the chosen
    wheels (small, pure Python), read their Requires-Dist, add what the target needs, repeat
    until nothing changes. The files land in the cache as well, verified by their new pins.
    """
    version, env = _target_python(spec, tag)
    wanted: dict[str, SpecifierSet] = {canonicalize_name(n): SpecifierSet(v) for n, v in frontend_requirements(spec.data, tag).items()}
    for _ in range(20):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--python-version", ".".join(version.split(".")[:2]), "--implementation",
                "pp" if env["implementation_name"] == "pypy" else "cp", "-d", tmp,
                *(f"{name}{spec_set}" for name, spec_set in sorted(wanted.items())),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SourceError(f"pip cannot resolve the frontend for {tag}: {out.stderr.strip()[-500:]}")
            before = dict(wanted)
            files = []
            for wheel in sorted(Path(tmp).glob("*.whl")):
                name, wheel_version, _, _ = parse_wheel_filename(wheel.name)
                files.append(LockedFile(name=name, version=str(wheel_version), filename=wheel.name, sha256=sha256_of(wheel)))
                for req in _wheel_requirements(wheel):
                    if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                        continue
                    key = canonicalize_name(req.name)
                    wanted[key] = wanted.get(key, SpecifierSet()) & req.specifier
            if wanted == before:
                if cache is not None:
                    for f in files:
                        cache.add_file(f, Path(tmp) / f.filename)
                return sorted(files, key=lambda f: f.name)
    raise SourceError(f"the frontend for {tag} does not settle: {', '.join(wanted)}")


def write_lock(spec: Spec, path: Path, jobs: int = 8) -> list[str]:
    """Resolve every tool of every image×arch and write the lock; returns what has no wheel."""
    work = [
        (spec.wheel_platform(image, arch), image, arch, f"{name}=={version}", optional)
        for image in spec.images.values()
        for arch in image.archs
        for name, version, optional in spec.tool_requirements(image)
    ]

    def resolve(item: tuple[str, Image, str, str, bool]) -> tuple[str, str, bool, list[LockedFile] | None]:
        key, image, arch, requirement, optional = item
        try:
            return key, requirement, optional, resolve_wheels(spec, image, arch, requirement)
        except SourceError:
            return key, requirement, optional, None

    platforms: dict[str, dict[str, LockedFile]] = {}
    unavailable: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for n, (key, requirement, optional, files) in enumerate(pool.map(resolve, work), 1):
            print(f"\r  resolved {n}/{len(work)}", end="", file=sys.stderr, flush=True)
            slot = platforms.setdefault(key, {})
            if files is None:
                unavailable.append(f"{requirement} on {key}{' (optional: skipped)' if optional else ''}")
                continue
            for f in files:
                slot[f.filename] = f
    print(file=sys.stderr)
    tags = sorted({t for image in spec.images.values() for t in (*image.interpreters, *image.downloadable)})
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        frontend = dict(zip(tags, pool.map(lambda t: resolve_frontend(spec, t), tags), strict=True))
    text = json.dumps(
        {
            "comment": "Generated by `invoke lock` from the tools and frontend in images.yaml; do not edit.",
            "platforms": {
                k: [f.model_dump() for f in sorted(v.values(), key=lambda f: f.name)] for k, v in sorted(platforms.items())
            },
            "interpreters": {tag: [f.model_dump() for f in files] for tag, files in frontend.items()},
        },
        indent=1,
    )
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return unavailable


def fetch_wheels(spec: Spec, cache: SourceCache, image: Image, arch: str) -> list[str]:
    """Download the locked wheels of an image×arch through pip (hash-checked), into the cache."""
    return _pip_download(cache, wheel_pins(spec, image, arch), _pip_platform_args(spec, image, arch), f"{image.policy}_{arch}")


def fetch_frontend(spec: Spec, cache: SourceCache, tags: Iterable[str]) -> list[str]:
    """Download the locked frontend wheels of interpreters (pure Python) into the cache."""
    got = []
    for tag in tags:
        version, env = _target_python(spec, tag)
        args = ["--only-binary=:all:", "--python-version", ".".join(version.split(".")[:2]),
                "--implementation", "pp" if env["implementation_name"] == "pypy" else "cp"]  # fmt: skip
        got += _pip_download(cache, spec.frontend_pins(tag), args, tag)
    return got


def _pip_download(cache: SourceCache, pins: Sequence[LockedFile], platform_args: list[str], what: str) -> list[str]:
    """pip downloads (through its own index configuration, hash-checked) into a temporary
    directory, in at most the cache's download deadline; the files enter the cache by `add_file`."""
    missing = [w for w in pins if not cache.valid(w)]
    if not missing:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in missing))
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
            "-d", str(Path(tmp) / "out"), "-r", str(reqs), *platform_args,
        ]  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=cache.limits.deadline)
        except subprocess.TimeoutExpired:
            raise SourceError(f"pip download for {what}: not complete within {cache.limits.deadline:g} s (the download deadline)") from None
        if out.returncode != 0:
            raise SourceError(f"pip download failed for {what}:\n{out.stderr[-2000:]}")
        for w in missing:
            cache.add_file(w, Path(tmp) / "out" / checked_filename(w.filename))
    return [w.filename for w in missing]


def debootstrap_root(suite: str, arch: str, tarball: Path, include: str = "") -> None:
    """A minimal Debian root from the signed archive, as a tarball (scripts/debootstrap-base.sh);
    `include` adds packages (comma-separated)."""
    env = dict(os.environ, MANYFORGE_DEBOOTSTRAP_INCLUDE=include)
    proc = subprocess.run(
        [str(REPO_ROOT / "scripts" / "debootstrap-base.sh"), suite, ARCHES[arch].debian, str(tarball)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SourceError(f"debootstrap of {suite}/{arch} failed:\n{proc.stderr[-3000:]}")


def stage_files(cache: SourceCache, pins: Iterable[Pin | LockedFile], dest: Path) -> None:
    """Put verified cache files into a build context (hard links when possible)."""
    dest.mkdir(parents=True, exist_ok=True)
    for pin in pins:
        src = cache.verify(pin)
        target = dest / checked_filename(pin.filename)
        try:
            target.unlink(missing_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
        except OSError as exc:
            raise SourceError(f"{target}: cannot write ({exc.strerror})") from None
