"""A build asked to stop (the image tests' builder at the end of a session, e.g. after -x or
Ctrl-C) ends its buildx promptly, leaves no image behind, and says so."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import docker.errors
import pytest

from manyforge import engine, pipeline
from manyforge.spec import DEFAULT_SPEC, load_spec
from manyforge.target import resolve_target


def test_a_stopped_build_ends_buildx_and_tags_nothing(tmp_path):
    spec = load_spec(DEFAULT_SPEC)
    target = resolve_target(spec, pipeline.default_image(spec), "x86_64")
    engine.check_prerequisites(target.arch, needs_debootstrap=True)
    base = engine.ensure_bootstrap_base(spec, target.base_name, target.arch)
    # A build of its own (nothing the image tests build is touched), busy for ten minutes.
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN echo {tmp_path.name} && sleep 600\n")
    build_ref = f"{target.repository}:build{target.tag_suffix}"  # what a finished build tags
    before = _image(build_ref)
    event = threading.Event()
    threading.Timer(5, event.set).start()
    started = time.monotonic()
    with pytest.raises(engine.EngineError, match=rf"build of {re.escape(target.slug)} stopped after \d+s"):
        engine.build(target, context, tmp_path / "logs", stop=event)
    assert time.monotonic() - started < 20
    assert "sleep 600" in (tmp_path / "logs" / f"{target.slug}.log").read_text()
    assert _image(build_ref) == before
    # BuildKit cancels the build when its client goes: the step's processes are gone too.
    deadline = time.monotonic() + 20
    while _processes_naming(tmp_path.name) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _processes_naming(tmp_path.name)


def _processes_naming(word: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if word in text and "sleep 600" in text:
            found.append(text)
    return found


def _image(ref: str) -> str | None:
    try:
        return str(engine.client().images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None
