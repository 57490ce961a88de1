#!/usr/bin/env python3
"""manylinux-interpreters: list the image's interpreters and install the downloadable ones.

The command line of pypa's images, which cibuildwheel drives (`--help`, then `ensure TAG`):

    manylinux-interpreters list [--installed] [--format text|json] [--verbose]
    manylinux-interpreters ensure TAG [TAG ...]
    manylinux-interpreters ensure-all

Downloadable interpreters come from the catalog the image was built with
(/opt/_internal/manylinux-interpreters.json, or MANYLINUX_INTERPRETERS_CATALOG): a pinned URL
and sha256 per tag. A download is accepted only when its sha256 matches; it is unpacked beside
the final place and appears under /opt/python/<tag> only once complete, so a failure leaves
nothing behind. Standard library only: it runs with the image's tools interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

PYTHON_DIR = os.environ.get("MANYLINUX_INTERPRETERS_PYTHON_DIR", "/opt/python")
INTERNAL_DIR = os.path.dirname(os.path.realpath(PYTHON_DIR)) + "/_internal"
CATALOG = os.environ.get("MANYLINUX_INTERPRETERS_CATALOG", "/opt/_internal/manylinux-interpreters.json")
TAG = re.compile(r"^(cp3\d+-cp3\d+t?|pp3\d+-pypy3\d+_pp\d+|graalpy3\d+-graalpy\d+_3\d+_native)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
PROBE = (
    "import json, platform, sys; impl = sys.implementation; v = impl.version; "
    "print(json.dumps({'python_version': platform.python_version(), 'implementation': impl.name, "
    "'implementation_version': f'{v.major}.{v.minor}.{v.micro}'}))"
)


class Failure(Exception):
    pass


def load_catalog() -> dict:
    """The downloadable interpreters of this image for its architecture, checked."""
    try:
        with open(CATALOG, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {"downloadable": {}, "frontend_python": None}
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read the catalog {CATALOG}: {exc}") from None
    entries = data.get("downloadable") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise Failure(f"{CATALOG}: expected an object with a 'downloadable' mapping")
    for tag, entry in entries.items():
        ok = (
            TAG.match(tag)
            and isinstance(entry, dict)
            and isinstance(entry.get("url"), str)
            and re.match(r"^https?://\S+$", entry["url"])
            and isinstance(entry.get("sha256"), str)
            and SHA256.match(entry["sha256"])
        )
        if not ok:
            raise Failure(f"{CATALOG}: downloadable.{tag[:60]}: needs a url (http/https) and a sha256 (64 hex digits)")
    return data


def installed_tags() -> list[str]:
    if not os.path.isdir(PYTHON_DIR):
        return []
    return sorted(t for t in os.listdir(PYTHON_DIR) if os.path.exists(os.path.join(PYTHON_DIR, t, "bin", "python")))


def sort_key(tag: str) -> tuple:
    impl = {"cp": 0, "pp": 1, "gr": 2}[tag[:2]]
    digits = re.match(r"^[a-z]+3(\d+)", tag)
    return (impl, int(digits.group(1)) if digits else 0, tag)


def describe(tag: str, catalog: dict) -> dict:
    path = os.path.join(PYTHON_DIR, tag)
    if tag in installed_tags():
        out = subprocess.run([os.path.join(path, "bin", "python"), "-c", PROBE], capture_output=True, text=True)
        info = json.loads(out.stdout) if out.returncode == 0 else {}
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


def cmd_list(args: argparse.Namespace, catalog: dict) -> int:
    tags = installed_tags() if args.installed else known_tags(catalog)
    tags = sorted(tags, key=sort_key)
    if args.format == "json":
        json.dump([describe(t, catalog) for t in tags], sys.stdout, indent=2)
        print()
        return 0
    for tag in tags:
        if not args.verbose:
            print(tag)
            continue
        info = describe(tag, catalog)
        print(f"{tag}:")
        print(f"  installed:              {'yes' if info['installed'] else 'no'}")
        print(f"  python version:         {info.get('python_version', '')}")
        print(f"  implementation:         {info.get('implementation', '')}")
        print(f"  implementation version: {info.get('implementation_version', '')}")
        print(f"  install_path:           {info['install_path']}")
    return 0


def _download(url: str, dest: str, expected: str) -> None:
    digest = hashlib.sha256()
    done = 0
    with urllib.request.urlopen(url, timeout=120) as response, open(dest, "wb") as out:  # noqa: S310
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
            done += len(chunk)
            if sys.stderr.isatty():
                print(f"\r  {done >> 20} MiB", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if digest.hexdigest() != expected:
        raise Failure(f"{url}: sha256 {digest.hexdigest()} does not match the pin {expected}; nothing installed")


def _unpack(archive: str, dest: str) -> None:
    """Unpack without the archive's top directory, refusing members that leave `dest`."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not parts[1]:
                continue
            member.name = parts[1]
            if member.islnk():
                member.linkname = member.linkname.split("/", 1)[-1]
            members.append(member)
        tar.extractall(dest, members=members, filter="tar")


def install(tag: str, entry: dict, catalog: dict) -> None:
    final = os.path.join(INTERNAL_DIR, tag)
    link = os.path.join(PYTHON_DIR, tag)
    print(f"installing {tag!r} at {link!r}", flush=True)
    os.makedirs(INTERNAL_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{tag}.", dir=INTERNAL_DIR)
    moved = False
    try:
        archive = os.path.join(work, "download")
        try:
            _download(entry["url"], archive, entry["sha256"])
        except OSError as exc:
            raise Failure(f"cannot download {entry['url']}: {exc}") from None
        root = os.path.join(work, "root")
        _unpack(archive, root)
        os.unlink(archive)
        python = os.path.join(root, "bin", "python")
        if not os.path.lexists(python):
            for name in ("python3", "pypy3", "graalpy"):
                if os.path.exists(os.path.join(root, "bin", name)):
                    os.symlink(name, python)
                    break
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(root, final)  # scripts pip writes must name the final path
        moved = True
        python = os.path.join(final, "bin", "python")
        if subprocess.run([python, "-c", "import sys"], check=False).returncode != 0:
            raise Failure(f"{tag}: the unpacked interpreter does not start")
        frontend = os.path.join(INTERNAL_DIR, "frontend", tag)
        helper = catalog.get("frontend_python")
        if helper and os.path.isfile(os.path.join(frontend, "requirements.txt")):
            # The image's own pip installs the locked, hash-pinned frontend offline.
            cmd = [helper, "-m", "pip", "--python", python, "install", "--quiet", "--no-index",
                   "--find-links", frontend, "--require-hashes", "-r", os.path.join(frontend, "requirements.txt")]  # fmt: skip
            if subprocess.run(cmd, check=False).returncode != 0:
                raise Failure(f"{tag}: installing pip and build into it failed")
        tmp_link = os.path.join(PYTHON_DIR, f".{tag}.link")
        os.makedirs(PYTHON_DIR, exist_ok=True)
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(final, tmp_link)
        os.replace(tmp_link, link)
    except BaseException:
        if moved:
            shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cmd_ensure(tags: list[str], catalog: dict) -> int:
    known = known_tags(catalog)
    unknown = [t for t in tags if t not in known]
    if unknown:
        raise Failure(f"unknown interpreter(s): {', '.join(unknown)}; this image knows: {', '.join(known)}")
    for tag in tags:
        if tag in installed_tags():
            print(f"{tag!r} already installed at {os.path.join(PYTHON_DIR, tag)!r}")
        else:
            install(tag, catalog["downloadable"][tag], catalog)
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
        catalog = load_catalog()
        if args.command == "list":
            return cmd_list(args, catalog)
        if args.command == "ensure":
            return cmd_ensure(args.tags, catalog)
        return cmd_ensure(known_tags(catalog), catalog)
    except Failure as exc:
        print(f"manylinux-interpreters: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
