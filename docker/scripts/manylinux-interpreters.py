#!/usr/bin/env python3
"""manylinux-interpreters: list the image's interpreters and install the downloadable ones.

The command line of pypa's images, which cibuildwheel drives (`--help`, then `ensure TAG`):

    manylinux-interpreters list [--installed] [--format text|json] [--verbose]
    manylinux-interpreters ensure TAG [TAG ...]
    manylinux-interpreters ensure-all

Downloadable interpreters come from the catalog the image was built with
(/opt/_internal/manylinux-interpreters.json, or MANYLINUX_INTERPRETERS_CATALOG): a pinned URL
and sha256 per tag. A download is accepted only when its sha256 matches; it is unpacked beside
the final place and appears under /opt/python/<tag> only once complete, so a failure (or Ctrl-C,
or SIGTERM) leaves nothing behind. Standard library only: it runs with the image's tools
interpreter, which may be as old as CPython 3.9.

Nothing it reads is trusted to be well formed: the catalog, the entries of /opt/python, the
server and the archive. Each is bounded, and each refusal is one line naming what was refused.
The bounds, each overridable by an environment variable (a positive number):

    MANYLINUX_INTERPRETERS_TIMEOUT        seconds one download may take in all (1800); a probe
                                          of an interpreter gets 60 s at most, or less if this is less
    MANYLINUX_INTERPRETERS_MAX_BYTES      bytes one download may have (512 MiB)
    MANYLINUX_INTERPRETERS_MAX_MEMBERS    members one archive may have (200000)
    MANYLINUX_INTERPRETERS_MAX_UNPACKED   bytes one archive may unpack to (2 GiB)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Iterator, NamedTuple

try:
    import lzma

    _LZMA_ERRORS: tuple[type[Exception], ...] = (lzma.LZMAError,)
except ImportError:  # an interpreter built without liblzma still reads .tar.gz and .tar.bz2
    _LZMA_ERRORS = ()

# What a damaged archive raises while it is read (truncated streams raise EOFError, zlib.error...).
_ARCHIVE_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, *_LZMA_ERRORS)

PYTHON_DIR = os.environ.get("MANYLINUX_INTERPRETERS_PYTHON_DIR", "/opt/python")
INTERNAL_DIR = os.path.dirname(os.path.realpath(PYTHON_DIR)) + "/_internal"
CATALOG = os.environ.get("MANYLINUX_INTERPRETERS_CATALOG", "/opt/_internal/manylinux-interpreters.json")

# Patterns are ASCII ([0-9], not \d, which takes any Unicode digit) and used with fullmatch
# (`$` would accept a trailing newline).
TAG = re.compile(r"cp3[0-9]+-cp3[0-9]+t?|pp3[0-9]+-pypy3[0-9]+_pp[0-9]+|graalpy3[0-9]+-graalpy[0-9]+_3[0-9]+_native", re.ASCII)
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
URL_TEXT = re.compile(r"[!-~]+", re.ASCII)  # printable ASCII, no spaces
SHORT_TEXT = re.compile(r"[ -~]{0,100}", re.ASCII)
REASON = re.compile(r"[ -~]{1,400}", re.ASCII)
USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")

PROBE = (
    "import json, platform, sys; impl = sys.implementation; v = impl.version; "
    "print(json.dumps({'python_version': platform.python_version(), 'implementation': impl.name, "
    "'implementation_version': '%d.%d.%d' % (v.major, v.minor, v.micro)}))"
)
PROBE_FIELDS = ("python_version", "implementation", "implementation_version")

DEFAULT_TIMEOUT = 1800.0  # seconds for one whole download, however slowly the bytes come
IDLE_TIMEOUT = 120.0  # seconds a connection may stay silent
PROBE_TIMEOUT = 60.0  # seconds an interpreter gets to answer the probe
DEFAULT_MAX_BYTES = 512 << 20  # the largest interpreter archives (GraalPy) are ~350 MiB
DEFAULT_MAX_MEMBERS = 200_000  # PyPy and GraalPy hold tens of thousands
DEFAULT_MAX_UNPACKED = 2 << 30  # GraalPy unpacks to ~1 GiB
MAX_DEPTH = 64  # directories a member may lie under
MAX_CATALOG_BYTES = 1 << 20  # the real catalog is a few KiB
MAX_PROBE_OUTPUT = 64 << 10
MAX_MESSAGE = 2000


class Failure(Exception):
    pass


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that cleanups run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _DeadlineExceeded(BaseException):
    """Raised by SIGALRM; a BaseException so that no `except Exception` in a library eats it."""


class Limits(NamedTuple):
    timeout: float
    max_bytes: int
    max_members: int
    max_unpacked: int

    @property
    def probe_timeout(self) -> float:
        return min(PROBE_TIMEOUT, self.timeout)


def _env_limit(name: str, default: float, integer: bool) -> float:
    """A bound from the environment: a plain decimal number (ASCII digits), above 0 and below a
    million seconds or 2**62 bytes (what timers and sizes hold)."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    pattern = r"[0-9]{1,19}" if integer else r"[0-9]{1,7}(?:\.[0-9]{0,6})?|\.[0-9]{1,6}"
    value = (int(raw) if integer else float(raw)) if re.fullmatch(pattern, raw, re.ASCII) else 0
    if not 0 < value < (1 << 62 if integer else 1e6):
        what = "a whole number above 0 and below 2**62" if integer else "a number of seconds above 0 and below 1000000"
        raise Failure(f"{name}={raw!r}: expected {what}")
    return value


def read_limits() -> Limits:
    return Limits(
        timeout=_env_limit("MANYLINUX_INTERPRETERS_TIMEOUT", DEFAULT_TIMEOUT, integer=False),
        max_bytes=int(_env_limit("MANYLINUX_INTERPRETERS_MAX_BYTES", DEFAULT_MAX_BYTES, integer=True)),
        max_members=int(_env_limit("MANYLINUX_INTERPRETERS_MAX_MEMBERS", DEFAULT_MAX_MEMBERS, integer=True)),
        max_unpacked=int(_env_limit("MANYLINUX_INTERPRETERS_MAX_UNPACKED", DEFAULT_MAX_UNPACKED, integer=True)),
    )


# --- messages ----------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """A URL as messages name it: without the credentials it may carry."""
    return USERINFO.sub("", url)


def one_line(text: str) -> str:
    """Text fit for one line of a terminal: credentials out, control characters escaped, bounded."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in USERINFO.sub("", text))
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _warn(text: str) -> None:
    print(f"manylinux-interpreters: warning: {one_line(text)}", file=sys.stderr)


def _reason(exc: BaseException) -> str:
    """What went wrong, in words: the exception's text, or its name when it has none."""
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
        return f"the server answered {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _reason(exc.reason)
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    text = str(exc) if not isinstance(exc, OSError) or not exc.strerror else exc.strerror
    if isinstance(exc, http.client.HTTPException):
        return f"a broken HTTP response ({type(exc).__name__}: {text})"
    return text or type(exc).__name__


# --- signals -----------------------------------------------------------------------------------


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def catch_termination() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so that a partial install is removed."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_interrupted)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Cleanups run to their end: an interrupt arriving meanwhile is delivered after them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise _DeadlineExceeded once `seconds` have passed: a socket timeout alone bounds each
    read, not a server sending one byte a second."""

    def expire(signum: int, frame: object) -> None:
        raise _DeadlineExceeded()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- the catalog -------------------------------------------------------------------------------


def _read_small_file(path: str, limit: int) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes, None if there is none. Anything else
    (a FIFO, a device, a directory) is refused before it is opened, and checked again once open."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Failure(f"{path}: not a regular file; refusing to read it")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Failure(f"cannot read {path}: {_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Failure(f"{path}: not a regular file; refusing to read it")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Failure(f"cannot read {path}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise Failure(f"{path}: larger than {limit} bytes; refusing to read it")
    return b"".join(chunks)


def _url_problem(url: object) -> str | None:
    if not isinstance(url, str):
        return f"expected a string, not {type(url).__name__}"
    if not URL_TEXT.fullmatch(url):
        return "expected printable ASCII without spaces"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is no port
    except ValueError as exc:
        return f"{shown_url(url)} is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{shown_url(url)} is not an http or https URL"
    if not parts.hostname:
        return f"{shown_url(url)} names no host"
    return None


def _unique_keys(pairs: list) -> dict:
    """json's object hook refusing a key given twice (json keeps the last one silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:60]!r} given twice")
        out[key] = value
    return out


def load_catalog() -> dict:
    """The downloadable interpreters of this image for its architecture, checked."""
    raw = _read_small_file(CATALOG, MAX_CATALOG_BYTES)
    if raw is None:
        return {"downloadable": {}, "frontend_python": None}
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise Failure(f"{CATALOG}: nested too deeply") from None
    except ValueError as exc:
        raise Failure(f"cannot read the catalog {CATALOG}: {exc}") from None
    entries = data.get("downloadable") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise Failure(f"{CATALOG}: expected an object with a 'downloadable' mapping")
    for tag, entry in entries.items():
        where = f"{CATALOG}: downloadable.{tag[:60]!r}"
        if not TAG.fullmatch(tag):
            raise Failure(f"{where}: not an interpreter tag (cp3X-cp3X[t], pp3X-pypy3X_ppN, graalpy3X-graalpyN_3X_native)")
        if not isinstance(entry, dict):
            raise Failure(f"{where}: expected an object with a url (http/https) and a sha256 (64 hex digits)")
        problem = _url_problem(entry.get("url"))
        if problem:
            raise Failure(f"{where}.url: {problem}")
        if not (isinstance(entry.get("sha256"), str) and SHA256.fullmatch(entry["sha256"])):
            raise Failure(f"{where}.sha256: expected 64 lowercase hex digits")
        for key in ("implementation", "version", "python"):
            if key in entry and not (isinstance(entry[key], str) and SHORT_TEXT.fullmatch(entry[key])):
                raise Failure(f"{where}.{key}: expected a short line of text")
    not_built = data.get("not_built", {})
    if not isinstance(not_built, dict):
        raise Failure(f"{CATALOG}: not_built: expected a mapping of interpreter tag to reason")
    for tag, why in not_built.items():
        if not TAG.fullmatch(tag):
            raise Failure(f"{CATALOG}: not_built.{tag[:60]!r}: not an interpreter tag")
        if not (isinstance(why, str) and REASON.fullmatch(why)):
            raise Failure(f"{CATALOG}: not_built.{tag}: expected one line of text")
    helper = data.get("frontend_python")
    if helper is not None and not (isinstance(helper, str) and helper.startswith("/") and URL_TEXT.fullmatch(helper)):
        raise Failure(f"{CATALOG}: frontend_python: expected an absolute path")
    return data


# --- what is installed -------------------------------------------------------------------------


def check_python_dir() -> None:
    if os.path.lexists(PYTHON_DIR) and not os.path.isdir(PYTHON_DIR):
        raise Failure(f"{PYTHON_DIR} (MANYLINUX_INTERPRETERS_PYTHON_DIR) is not a directory")


def installed_tags() -> list[str]:
    """Tags under /opt/python with a bin/python; whatever else lies there is not an interpreter."""
    try:
        names = os.listdir(PYTHON_DIR)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise Failure(f"cannot list {PYTHON_DIR}: {_reason(exc)}") from None
    return sorted(t for t in names if TAG.fullmatch(t) and os.path.isfile(os.path.join(PYTHON_DIR, t, "bin", "python")))


def sort_key(tag: str) -> tuple:
    impl = {"cp": 0, "pp": 1, "gr": 2}[tag[:2]]
    digits = re.match(r"[a-z]+3([0-9]+)", tag)
    return (impl, int(digits.group(1)) if digits else 0, tag)


def probe(python: str, timeout: float) -> dict:
    """What the interpreter says it is, or a Failure saying why it does not answer. Its output is
    bounded, and it runs in its own session so that what it starts is stopped with it."""
    try:
        proc = subprocess.Popen(
            [python, "-c", PROBE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        raise Failure(f"does not start ({_reason(exc)})") from None
    assert proc.stdout is not None
    out = b""
    end = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while len(out) <= MAX_PROBE_OUTPUT and time.monotonic() < end:
                if selector.select(end - time.monotonic()):
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    out += chunk
            else:
                if len(out) > MAX_PROBE_OUTPUT:
                    raise Failure(f"prints more than {MAX_PROBE_OUTPUT} bytes")
                raise Failure(f"does not answer within {timeout:g} s")
        status = proc.wait(max(end - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        raise Failure(f"does not answer within {timeout:g} s") from None
    finally:
        if proc.returncode is None:  # not reaped yet, so its process group is still its own
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    if status != 0:
        raise Failure(f"exits with status {status}")
    try:
        info = json.loads(out.decode("utf-8"))
    except (ValueError, RecursionError):
        info = None
    if not (isinstance(info, dict) and all(isinstance(info.get(k), str) and SHORT_TEXT.fullmatch(info[k]) for k in PROBE_FIELDS)):
        raise Failure("does not print what an interpreter prints")
    return {k: info[k] for k in PROBE_FIELDS}


def describe(tag: str, catalog: dict, installed: list[str], limits: Limits) -> dict:
    path = os.path.join(PYTHON_DIR, tag)
    if tag in installed:
        info = dict.fromkeys(PROBE_FIELDS, "")
        python = os.path.join(path, "bin", "python")
        try:
            info.update(probe(python, limits.probe_timeout))
        except Failure as exc:
            _warn(f"{python} {exc}; listed without its versions")
        return {"identifier": tag, "installed": True, **info, "install_path": path}
    entry = catalog["downloadable"][tag]
    return {
        "identifier": tag,
        "installed": False,
        "python_version": entry.get("python", ""),
        "implementation": entry.get("implementation", ""),
        "implementation_version": entry.get("version", ""),
        "install_path": path,
    }


def known_tags(catalog: dict) -> list[str]:
    return sorted(set(installed_tags()) | set(catalog["downloadable"]), key=sort_key)


def cmd_list(args: argparse.Namespace, catalog: dict, limits: Limits) -> int:
    installed = installed_tags()
    tags = sorted(installed if args.installed else known_tags(catalog), key=sort_key)
    if args.format == "json":
        json.dump([describe(t, catalog, installed, limits) for t in tags], sys.stdout, indent=2)
        print()
        return 0
    for tag in tags:
        if not args.verbose:
            print(tag)
            continue
        info = describe(tag, catalog, installed, limits)
        print(f"{tag}:")
        print(f"  installed:              {'yes' if info['installed'] else 'no'}")
        print(f"  python version:         {info.get('python_version', '')}")
        print(f"  implementation:         {info.get('implementation', '')}")
        print(f"  implementation version: {info.get('implementation_version', '')}")
        print(f"  install_path:           {info['install_path']}")
    return 0


# --- downloading -------------------------------------------------------------------------------


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError(f"redirected to {shown_url(newurl)!r}, which is not http or https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(url: str) -> tuple[urllib.request.OpenerDirector, str]:
    """An opener for http and https only (no file:, ftp: or data:, even through a redirect), and
    the URL without its credentials, which go to that host and port only, as basic auth."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):  # fmt: skip
        opener.add_handler(handler)
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return opener, url
    netloc = parts.netloc.rpartition("@")[2]
    passwords = urllib.request.HTTPPasswordMgrWithPriorAuth()
    user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    passwords.add_password(None, f"{parts.scheme}://{netloc}/", user, password, is_authenticated=True)
    opener.add_handler(urllib.request.HTTPBasicAuthHandler(passwords))
    return opener, urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _fetch(url: str, dest: str, limits: Limits) -> str:
    """Write what `url` serves to `dest`, within the size cap; the sha256 of what was written."""
    shown = shown_url(url)
    too_big = f"cannot download {shown}: more than {limits.max_bytes} bytes (MANYLINUX_INTERPRETERS_MAX_BYTES); nothing installed"
    opener, bare = _opener(url)
    digest = hashlib.sha256()
    done = 0
    with opener.open(bare, timeout=min(IDLE_TIMEOUT, limits.timeout)) as response, open(dest, "xb") as out:
        status = getattr(response, "status", 200)
        if status != 200:
            raise Failure(f"cannot download {shown}: the server answered {status}, not 200; nothing installed")
        length = response.headers.get("Content-Length", "")
        expected = int(length) if re.fullmatch(r"[0-9]{1,30}", length, re.ASCII) else None
        if expected is not None and expected > limits.max_bytes:
            raise Failure(too_big)
        for chunk in iter(lambda: response.read(1 << 16), b""):
            done += len(chunk)
            if done > limits.max_bytes:
                raise Failure(too_big)
            digest.update(chunk)
            out.write(chunk)
            if sys.stderr.isatty():
                print(f"\r  {done >> 20} MiB", end="", file=sys.stderr, flush=True)
        if expected is not None and done != expected:  # http.client reads a short body silently
            raise Failure(f"cannot download {shown}: the server sent {done} of the {expected} bytes it announced; nothing installed")
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return digest.hexdigest()


def download(url: str, dest: str, expected: str, limits: Limits) -> None:
    shown = shown_url(url)
    try:
        with _deadline(limits.timeout):
            actual = _fetch(url, dest, limits)
    except _DeadlineExceeded:
        raise Failure(f"cannot download {shown}: not done within {limits.timeout:g} s (MANYLINUX_INTERPRETERS_TIMEOUT); nothing installed") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise Failure(f"cannot download {shown}: {_reason(exc)}; nothing installed") from None
    if actual != expected:
        raise Failure(f"{shown}: sha256 {actual} does not match the pin {expected}; nothing installed")


# --- unpacking ---------------------------------------------------------------------------------


def _stays_inside(links: dict[str, str], base: list[str], target: str) -> bool:
    """Whether `target`, read from directory `base` of the unpacked tree, resolves inside it once
    every symlink of the archive (`links`, by path) is there: '..' and links are followed as the
    kernel would, so that a chain of links each harmless alone cannot climb out."""
    path = list(base)
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not path:
                return False
            path.pop()
            continue
        path.append(part)
        link = links.get("/".join(path))
        if link is not None:
            hops += 1
            if hops > 40 or link.startswith("/"):
                return False
            path.pop()
            pending.extend(reversed(link.split("/")))
    return True


def checked_members(tar: tarfile.TarFile, shown: str, limits: Limits) -> list[tarfile.TarInfo]:
    """The archive's members renamed below its one top directory, after refusing any that would
    land outside the unpacked tree or make more than plain files, directories and links there."""

    def refuse(original: str, why: str) -> Failure:
        name = original if len(original) <= 200 else f"{original[:200]}...({len(original)} chars)"
        return Failure(f"{shown}: member {name!r} {why}; nothing installed")

    top = None
    kinds: dict[str, str] = {}  # path below the top directory -> "dir", "file" or "link"
    links: dict[str, str] = {}  # symlink path -> its target
    members: list[tuple[str, tarfile.TarInfo]] = []
    count = unpacked = 0
    for member in tar:
        original = member.name
        count += 1
        if count > limits.max_members:
            raise Failure(f"{shown}: more than {limits.max_members} members (MANYLINUX_INTERPRETERS_MAX_MEMBERS); nothing installed")
        if original.startswith("/"):
            raise refuse(original, "is an absolute path")
        parts = [p for p in original.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise refuse(original, "climbs out with '..'")
        if len(parts) > MAX_DEPTH:  # interpreters nest a dozen deep; thousands would exhaust recursion
            raise refuse(original, f"is nested more than {MAX_DEPTH} directories deep")
        if not parts:
            if member.isdir():
                continue
            raise refuse(original, "has no name")
        if top is not None and parts[0] != top:
            raise refuse(original, f"lies outside the archive's top directory {top!r}")
        top = parts[0]
        path = "/".join(parts[1:])
        if member.isdir():
            if not path:
                continue
            kind = "dir"
        elif not path:
            raise refuse(original, "is not inside a top directory")
        elif member.isreg():
            kind = "file"
            unpacked += member.size
            if unpacked > limits.max_unpacked:
                raise Failure(f"{shown}: unpacks to more than {limits.max_unpacked} bytes (MANYLINUX_INTERPRETERS_MAX_UNPACKED); nothing installed")
        elif member.issym():
            if not member.linkname or member.linkname.startswith("/"):
                raise refuse(original, f"is a symlink to {member.linkname!r}, not to a relative path")
            kind = "link"
            links[path] = member.linkname
        elif member.islnk():
            target = [p for p in member.linkname.split("/") if p not in ("", ".")]
            below = "/".join(target[1:])
            if member.linkname.startswith("/") or ".." in target or target[:1] != [top] or kinds.get(below) != "file":
                raise refuse(original, f"is a hard link to {member.linkname!r}, not to a file of the archive before it")
            kind = "file"
            member.linkname = below
        elif member.ischr() or member.isblk():
            raise refuse(original, "is a device node")
        elif member.isfifo():
            raise refuse(original, "is a FIFO")
        else:
            raise refuse(original, "is neither a file, a directory nor a link")
        if kinds.get(path, kind) != kind or (path in kinds and kind != "dir"):
            raise refuse(original, "appears twice")
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            raise refuse(original, "is setuid or setgid")
        kinds[path] = kind
        member.name = path
        # What the "data" filter does, for interpreters whose tarfile lacks it: no high bits, no
        # group/other write, the owner may always read (and list or remove) it, nobody's ownership.
        if member.isdir():
            member.mode = (member.mode & 0o755) | 0o700
        elif not member.issym():
            member.mode = (member.mode & 0o755 if member.mode & 0o100 else member.mode & 0o644) | 0o600
        member.uid, member.gid, member.uname, member.gname = os.geteuid(), os.getegid(), "", ""
        members.append((original, member))
    for original, member in members:
        parts = member.name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in links:
                raise refuse(original, f"lies under the symlink {'/'.join(parts[:depth])!r}")
        if member.issym() and not _stays_inside(links, parts[:-1], member.linkname):
            raise refuse(original, f"is a symlink to {member.linkname!r}, which leads outside the archive")
    return [member for _, member in members]


def unpack(archive: str, dest: str, shown: str, limits: Limits) -> None:
    """Unpack without the archive's top directory: checked_members first, then tarfile's own
    "data" filter where this tarfile has one (3.12, and 3.9.17, 3.10.12, 3.11.4 on)."""
    try:
        if os.path.getsize(archive) == 0:
            raise Failure(f"{shown}: an empty file, not an archive; nothing installed")
        try:
            tar = tarfile.open(archive)
        except tarfile.ReadError:
            raise Failure(f"{shown}: not a tar archive (plain, gzip, bzip2 or xz); nothing installed") from None
        with tar:
            members = checked_members(tar, shown, limits)
            os.mkdir(dest)  # readable by all (umask permitting), as the interpreter must be
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except _ARCHIVE_ERRORS as exc:
        raise Failure(f"cannot unpack {shown}: {_reason(exc)}; nothing installed") from None


def find_python(root: str, shown: str) -> None:
    """Make sure bin/python of the unpacked tree is a program inside it (PyPy and GraalPy name it
    bin/pypy3 or bin/graalpy: a bin/python link to that is added)."""
    python = os.path.join(root, "bin", "python")
    if not os.path.lexists(python):
        for name in ("python3", "pypy3", "graalpy"):
            if os.path.isfile(os.path.join(root, "bin", name)):
                os.symlink(name, python)
                break
    real = os.path.realpath(python)
    if not (real.startswith(os.path.realpath(root) + os.sep) and os.path.isfile(real) and os.access(real, os.X_OK)):
        raise Failure(f"{shown}: the archive holds no bin/python (nor bin/python3, bin/pypy3, bin/graalpy) to run; nothing installed")


# --- installing --------------------------------------------------------------------------------


def _links_to(link: str, target: str) -> bool:
    try:
        return os.readlink(link) == target
    except OSError:
        return False


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.unlink(path)


def install(tag: str, entry: dict, catalog: dict, limits: Limits) -> None:
    final = os.path.join(INTERNAL_DIR, tag)
    link = os.path.join(PYTHON_DIR, tag)
    tmp_link = os.path.join(PYTHON_DIR, f".{tag}.link")
    shown = shown_url(entry["url"])
    if os.path.lexists(link) and not os.path.islink(link):
        raise Failure(f"{link} is there and is not an interpreter this command installed; remove it to install {tag}")
    print(f"installing {tag!r} at {link!r}", flush=True)
    try:
        os.makedirs(INTERNAL_DIR, exist_ok=True)
        work = tempfile.mkdtemp(prefix=f".{tag}.", dir=INTERNAL_DIR)
    except OSError as exc:
        raise Failure(f"cannot install {tag} in {INTERNAL_DIR}: {_reason(exc)}") from None
    moved = False
    try:
        try:
            archive = os.path.join(work, "download")
            download(entry["url"], archive, entry["sha256"], limits)
            root = os.path.join(work, "root")
            unpack(archive, root, shown, limits)
            os.unlink(archive)
            find_python(root, shown)
            _remove(final)
            moved = True  # before the rename: an interrupt right after it must still remove it
            os.rename(root, final)  # scripts pip writes must name the final path
            python = os.path.join(final, "bin", "python")
            try:
                probe(python, limits.probe_timeout)
            except Failure as exc:
                raise Failure(f"{shown}: its bin/python {exc}; nothing installed") from None
            frontend = os.path.join(INTERNAL_DIR, "frontend", tag)
            helper = catalog.get("frontend_python")
            requirements = os.path.join(frontend, "requirements.txt")
            if entry.get("implementation") == "graalpy" and os.path.isfile(requirements):
                # GraalPy keeps the pip it bundles, patched for it (as pypa's images do): its
                # ensurepip installs it, then that pip installs the rest of the locked frontend.
                for cmd in ([python, "-m", "ensurepip", "--default-pip"],
                            [python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", frontend,
                             "--require-hashes", "-r", requirements]):  # fmt: skip
                    if subprocess.run(cmd, check=False).returncode != 0:
                        raise Failure(f"{tag}: installing its own pip and build into it failed")
            elif helper and os.path.isfile(requirements):
                # The image's own pip installs the locked, hash-pinned frontend offline.
                cmd = [helper, "-m", "pip", "--python", python, "install", "--quiet", "--no-index",
                       "--find-links", frontend, "--require-hashes", "-r", requirements]  # fmt: skip
                if subprocess.run(cmd, check=False).returncode != 0:
                    raise Failure(f"{tag}: installing pip and build into it failed")
            os.makedirs(PYTHON_DIR, exist_ok=True)
            with _signals_held():  # the link appears whole, or not at all
                if os.path.lexists(tmp_link):
                    os.unlink(tmp_link)
                os.symlink(final, tmp_link)
                os.replace(tmp_link, link)
        except OSError as exc:
            raise Failure(f"cannot install {tag}: {_reason(exc)}; nothing installed") from None
    except BaseException:
        with _signals_held():
            if os.path.islink(tmp_link):
                os.unlink(tmp_link)
            # Unless the link was in place when the interrupt came: the install is complete.
            if moved and not _links_to(link, final):
                _remove(final)
        raise
    finally:
        with _signals_held():
            shutil.rmtree(work, ignore_errors=True)


def cmd_ensure(tags: list[str], catalog: dict, limits: Limits) -> int:
    known = known_tags(catalog)
    not_built = catalog.get("not_built", {})
    missing = [t for t in tags if t not in known and t in not_built]
    if missing:
        raise Failure("; ".join(f"{t} is not built in this image: {not_built[t]}" for t in missing))
    unknown = [t for t in tags if t not in known]
    if unknown:
        raise Failure(f"unknown interpreter(s): {', '.join(unknown)}; this image knows: {', '.join(known)}")
    for tag in tags:
        if tag in installed_tags():
            print(f"{tag!r} already installed at {os.path.join(PYTHON_DIR, tag)!r}")
        else:
            install(tag, catalog["downloadable"][tag], catalog, limits)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="manylinux-interpreters", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the interpreters this image has or can install")
    p_list.add_argument("-v", "--verbose", action="store_true", help="describe each interpreter")
    p_list.add_argument("-i", "--installed", action="store_true", help="only the installed ones")
    p_list.add_argument("--format", choices=["text", "json"], default="text")
    p_ensure = sub.add_parser("ensure", help="make sure the interpreters are installed")
    p_ensure.add_argument("tags", metavar="TAG", nargs="+")
    sub.add_parser("ensure-all", help="install every interpreter this image offers")
    args = parser.parse_args(argv)
    try:
        catch_termination()
        limits = read_limits()
        check_python_dir()
        catalog = load_catalog()
        if args.command == "list":
            return cmd_list(args, catalog, limits)
        if args.command == "ensure":
            return cmd_ensure(args.tags, catalog, limits)
        return cmd_ensure(known_tags(catalog), catalog, limits)
    except Failure as exc:
        print(f"manylinux-interpreters: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("manylinux-interpreters: interrupted", file=sys.stderr)
        return 128 + int(signal.SIGINT)
    except Interrupted as exc:
        print(f"manylinux-interpreters: interrupted by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:  # `list | head`: the reader has gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # the last guard: one line, not a traceback
        print(f"manylinux-interpreters: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except RecursionError:  # e.g. an archive member thousands of directories deep
        print("manylinux-interpreters: error: the input is nested too deeply", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
