"""A real registry server on 127.0.0.1 for the tests that publish (Debian's docker-registry)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_registry(work: Path) -> Iterator[str]:
    """HOST:PORT of a registry server with its storage in `work`, stopped on exit."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed; run scripts/setup-host.sh")
    port = free_port()
    config = {"version": 0.1, "log": {"level": "warn"}, "http": {"addr": f"127.0.0.1:{port}"},
              "storage": {"filesystem": {"rootdirectory": str(work / "data")}, "delete": {"enabled": True}}}  # fmt: skip
    (work / "config.yml").write_text(yaml.safe_dump(config))
    with (work / "registry.log").open("w") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the registry did not start: {(work / 'registry.log').read_text()[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cosign_key_pair(work: Path, password: str) -> tuple[Path, Path]:
    """A new cosign key pair in `work` (private key encrypted with `password`): (cosign.key, cosign.pub)."""
    subprocess.run(["cosign", "generate-key-pair"], cwd=work, env={**os.environ, "COSIGN_PASSWORD": password},
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return work / "cosign.key", work / "cosign.pub"
