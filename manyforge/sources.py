"""Pinned inputs: the source cache, the wheel lock, and the ways to fill the cache.

A file enters the cache only through `SourceCache.add`, which hashes it while copying, and
renames it into place only when the hash equals its pin: a partial or mismatching file never
appears under its final name. Builds read sources only from this cache.
"""

from __future__ import annotations

import contextlib
import email.parser
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

from manyforge.arches import ARCHES
from manyforge.spec import REPO_ROOT, Image, LockedFile, Spec

CHUNK = 1 << 20


class SourceError(Exception):
    pass


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


def wheel_pins(spec: Spec, image: Image, arch: str) -> list[LockedFile]:
    """The locked wheels one image×arch installs: its tools and their dependencies."""
    return list(spec.wheels.get(spec.wheel_platform(image, arch), ()))


def frontend_pins(spec: Spec, tags: Iterable[str]) -> list[LockedFile]:
    """The frontend wheels of some interpreters, each file once."""
    return list({w.filename: w for tag in tags for w in spec.frontend_pins(tag)}.values())


def all_pins(spec: Spec) -> list[Pin]:
    pins = {p.filename: p for p in [*(cpython_pin(spec, v) for v in spec.data.cpython), *library_pins(spec, spec.data.libraries)]}
    for files in [*spec.wheels.values(), *spec.frontend.values()]:
        for w in files:
            pins[w.filename] = Pin(w.filename, w.sha256)
    return list(pins.values())


class SourceCache:
    """A directory of files, each present only if its sha256 equals its pin."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def path(self, pin: Pin | LockedFile) -> Path:
        return self.root / pin.filename

    def has(self, pin: Pin | LockedFile) -> bool:
        """True if the file is there under its pin's name (not re-hashed: see `valid`)."""
        return self.path(pin).is_file()

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
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for partial in self.root.glob(".*.partial"):
                partial.unlink(missing_ok=True)
            yield self

    def verify(self, pin: Pin | LockedFile) -> Path:
        """Path of a cached file after re-checking its hash; a mismatching file is removed."""
        path = self.path(pin)
        if not path.is_file():
            raise SourceError(f"{pin.filename} is not in the source cache {self.root}; run `invoke fetch`")
        try:
            actual = sha256_of(path)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
        if actual != pin.sha256:
            path.unlink()
            raise SourceError(
                f"{path}: sha256 {actual} does not match the pin {pin.sha256}; the file was removed, run `invoke fetch`"
            )
        return path

    def add(self, pin: Pin | LockedFile, stream: BinaryIO, progress: str | None = None) -> Path:
        """Copy a stream into the cache under the pin's name if, and only if, its hash matches."""
        self.prepare()
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
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress and sys.stderr.isatty():
                        print(f"\r  {progress}: {done >> 20} MiB", end="", file=sys.stderr, flush=True)
            if progress and sys.stderr.isatty():
                print(file=sys.stderr)
            if digest.hexdigest() != pin.sha256:
                raise SourceError(
                    f"{pin.filename}: sha256 {digest.hexdigest()} does not match the pin {pin.sha256}; not kept"
                )
            tmp.chmod(0o644)
            tmp.replace(self.path(pin))
        finally:
            tmp.unlink(missing_ok=True)
        return self.path(pin)

    def add_file(self, pin: Pin | LockedFile, source: Path) -> Path:
        try:
            fh = source.open("rb")
        except OSError as exc:
            raise SourceError(f"{source}: cannot read ({exc.strerror})") from None
        with fh:
            return self.add(pin, fh)

    def fetch_url(self, pin: Pin | LockedFile, url: str) -> Path:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - https/http pins only
                return self.add(pin, response, progress=pin.filename)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SourceError(f"{pin.filename}: cannot download {url}: {exc}") from None

    def seed_dir(self, directory: Path, pins: Iterable[Pin | LockedFile]) -> list[str]:
        """Accept any file under `directory` whose hash equals a pin, whatever its name."""
        by_hash = {p.sha256: p for p in pins if not self.valid(p)}
        accepted = []
        for candidate in sorted(directory.rglob("*")):
            if not by_hash or not candidate.is_file():
                continue
            try:
                digest = sha256_of(candidate)
            except OSError as exc:
                print(f"  skipped {candidate}: cannot read ({exc.strerror})", file=sys.stderr)
                continue
            pin = by_hash.get(digest)
            if pin is not None:
                self.add_file(pin, candidate)
                accepted.append(pin.filename)
                del by_hash[pin.sha256]
        return accepted

    def seed_mirror(self, base_url: str, pins: Iterable[Pin | LockedFile]) -> list[str]:
        """Fetch each missing pin from `<base_url>/<filename>`; accepted by hash alone."""
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https", "file") or (parsed.scheme != "file" and not parsed.netloc):
            raise SourceError(f"--mirror {base_url[:100]!r}: not an http(s):// or file:// address")
        accepted = []
        for pin in pins:
            if self.valid(pin):
                continue
            try:
                self.fetch_url(pin, f"{base_url.rstrip('/')}/{pin.filename}")
                accepted.append(pin.filename)
            except SourceError as exc:
                print(f"  skipped: {exc}", file=sys.stderr)
        return accepted


# --- CPython from Debian's source archive -----------------------------------------------------


def debian_mirror() -> str:
    out = subprocess.run(
        [str(REPO_ROOT / "scripts" / "debian-apt.sh"), "--print-mirror"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise SourceError(f"cannot find a Debian mirror in the host's apt sources: {out.stderr.strip()}")
    return out.stdout.strip()


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
        cache.fetch_url(pin, f"{mirror}/{pin.debian}")
        accepted.append(pin.filename)
    return accepted


def fetch_pin(cache: SourceCache, pin: Pin, origin: str, say=print) -> None:
    """Fetch one pinned file from its origins in turn ("auto": upstream, then Debian)."""
    errors = []
    for kind in ("upstream", "debian") if origin == "auto" else (origin,):
        if (pin.url if kind == "upstream" else pin.debian) is None:
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
        except (SourceError, urllib.error.URLError, OSError) as exc:
            errors.append(f"{kind}: {exc}")
    raise SourceError(f"{pin.filename} could not be fetched:\n  " + "\n  ".join(errors))


# --- wheels: lock and fetch through pip, which keeps its own index configuration --------------


def platform_tags(policy: str, arch: str) -> list[str]:
    """Every platform tag a wheel may carry to install under `policy` on `arch`, newest first."""
    kind, _, rest = policy.partition("_")
    major, minor = (int(x) for x in rest.split("_"))
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


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = email.parser.BytesParser().parsebytes(zf.read(meta))
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def resolve_frontend(spec: Spec, tag: str, cache: SourceCache | None = None) -> list[LockedFile]:
    """Lock the frontend (images.yaml `frontend`) for one interpreter.

    pip evaluates environment markers with the interpreter it runs on, not the target's, so
    dependencies are followed here with the target's marker environment: download the chosen
    wheels (small, pure Python), read their Requires-Dist, add what the target needs, repeat
    until nothing changes. The files land in the cache as well, verified by their new pins.
    """
    version, env = _target_python(spec, tag)
    wanted: dict[str, SpecifierSet] = {canonicalize_name(n): SpecifierSet(v) for n, v in spec.data.frontend.items()}
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
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SourceError(f"pip download failed for {what}:\n{out.stderr[-2000:]}")
        for w in missing:
            cache.add_file(w, Path(tmp) / "out" / w.filename)
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
        target = dest / pin.filename
        target.unlink(missing_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
