"""Hostile option values and settings, run against the real command line (issue 17): paths the
system refuses (a name too long, a directory that may not be searched), outputs that would block
(a FIFO no process reads), empty values, secrets and control characters in what a message
quotes, a build cache setting found wrong only after the work began, and image-test settings
that would be ignored or would double the session.

Every case ends with one line naming the option, variable or path, a non-zero exit, no
traceback, in bounded time, and nothing left behind. The command lines are independent: they run
side by side (each costs a second or two of start-up), each test checks its own.
"""

from __future__ import annotations

import concurrent.futures
import errno
import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from invoke import Exit

from manyforge import engine, pipeline
from manyforge.spec import DEFAULT_SPEC

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60
SECRET = "Sw0rdf1sh-Unit-Secret"  # COSIGN_PASSWORD of the runs: it must never be echoed
ESC = "\x1b[2J"  # clears the terminal if it reaches it
# Settings of the caller's environment that would change what these command lines do.
OWN_SETTINGS = ("MANYFORGE_TEST_", "MANYFORGE_BUILD_CACHE", "MANYFORGE_LOCK", "MANYFORGE_COSIGN_", "MANYFORGE_CACHE")
DROP = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]  # root, without its override of file modes


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_SETTINGS)}
    return {**env, "COSIGN_PASSWORD": SECRET, **extra}


def run(argv: list[str], env: dict[str, str], drop: bool = False) -> subprocess.CompletedProcess[str]:
    """One real command line (`invoke ...` or `pytest ...`), killed after TIMEOUT seconds: a hang fails it."""
    return subprocess.run(
        [*(DROP if drop else []), sys.executable, "-m", *argv], cwd=ROOT, env=clean_env(env),
        capture_output=True, text=True, check=False, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


class Case(NamedTuple):
    argv: list[str]  # after `python -m`; {w} is the shared work directory, {long} a name too long
    expected: list[str]  # each in the output
    env: dict[str, str] = {}
    drop: bool = False  # run without root's override of file modes (permission-denied cases)
    code: int | None = None  # the exit status, when it matters; any non-zero otherwise


LONG = "b" * 300  # one path component past NAME_MAX (255): ENAMETOOLONG
COLLECT = ["pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/image"]
CHANGELOG = ["invoke", "changelog", "--registry", "127.0.0.1:5000/x", "--from-tag", "2026.01.01-1", "--to-tag", "2026.01.02-1"]
PUBLISH = ["invoke", "publish", "--registry", "127.0.0.1:5000/x"]
TOO_LONG = "File name too long"
# Were the build cache checked late, these would fail at the engine, not run a build.
NO_ENGINE = {"MANYFORGE_CACHE": "{w}/cache", "DOCKER_HOST": "unix://{w}/no.sock", "PATH": "/nonexistent"}

CASES: dict[str, Case] = {
    # 1. Paths the system refuses: the option (or variable) and the system's reason, one line.
    "output-too-long": Case(["invoke", "render", "--output", "{w}/{long}"], ["--output {w}/bbb", TOO_LONG]),
    "from-dir-too-long": Case(["invoke", "fetch", "--from-dir", "{w}/{long}"], ["--from-dir {w}/bbb", TOO_LONG]),
    "dumps-too-long": Case(["invoke", "policy", "derive", "--dumps", "{w}/{long}"], ["--dumps {w}/bbb", TOO_LONG]),
    "dump-output-too-long": Case(["invoke", "policy", "dump", "--suite", "bookworm", "--output", "{w}/{long}"],
                                 ["--output {w}/bbb", TOO_LONG], env={"PATH": "/nonexistent"}),  # no debootstrap, whatever happens
    "key-too-long": Case([*PUBLISH, "--key", "{w}/{long}"], ["--key {w}/bbb", TOO_LONG]),
    "public-key-too-long": Case([*CHANGELOG, "--public-key", "{w}/{long}"], ["--public-key {w}/bbb", TOO_LONG]),
    "lock-env-too-long": Case(["invoke", "render", "--output", "-"], ["MANYFORGE_LOCK={w}/bbb", TOO_LONG],
                              env={"MANYFORGE_LOCK": "{w}/{long}"}),
    # ... and the same behind a directory that may not be searched (mode 000, root's override dropped).
    "output-denied": Case(["invoke", "render", "--output", "{w}/locked/Dockerfile"], ["--output {w}/locked/Dockerfile: Permission denied"], drop=True),
    "from-dir-denied": Case(["invoke", "fetch", "--from-dir", "{w}/locked/seed"], ["--from-dir {w}/locked/seed: Permission denied"], drop=True),
    "from-dir-unreadable": Case(["invoke", "fetch", "--from-dir", "{w}/locked"], ["--from-dir {w}/locked: cannot read (Permission denied)"], drop=True),
    "dumps-denied": Case(["invoke", "policy", "derive", "--dumps", "{w}/locked"], ["--dumps {w}/locked: Permission denied"], drop=True),
    "key-denied": Case([*PUBLISH, "--key", "{w}/locked/cosign.key"], ["--key {w}/locked/cosign.key: Permission denied"], drop=True),
    "lock-env-denied": Case(["invoke", "render", "--output", "-"], ["MANYFORGE_LOCK={w}/locked/wheels.lock.json: Permission denied"],
                            env={"MANYFORGE_LOCK": "{w}/locked/wheels.lock.json"}, drop=True),
    # 2. Outputs that would block or cannot take a file: refused at once, nothing written.
    "output-fifo-no-reader": Case(["invoke", "render", "--output", "{w}/fifo"], ["--output {w}/fifo: a FIFO that no process reads"]),
    "dump-output-fifo-no-reader": Case(["invoke", "policy", "dump", "--suite", "bookworm", "--output", "{w}/fifo"],
                                       ["--output {w}/fifo: a FIFO that no process reads"], env={"PATH": "/nonexistent"}),
    "output-socket": Case(["invoke", "render", "--output", "{w}/socket"], ["--output {w}/socket: not a regular file, a character device or a FIFO"]),
    # 3. An empty value is a mistake, never "the default".
    **{
        f"empty-{option}": Case([*argv, f"--{option}", ""], [f"--{option}: empty"], code=2)
        for argv, option in [
            (["invoke", "render"], "output"), (["invoke", "fetch"], "from-dir"), (["invoke", "render"], "spec"),
            (PUBLISH, "key"), (["invoke", "policy", "dump"], "suite"),
        ]
    },  # fmt: skip
    # 4. A directory of dumps with none in it is named.
    "dumps-empty-dir": Case(["invoke", "policy", "derive", "--dumps", "{w}/no-dumps"], ["--dumps {w}/no-dumps: no *.json dump files in it"]),
    # 5. What a problem quotes is scrubbed: no control character, no secret of the environment.
    "esc-in-dump-name": Case(["invoke", "policy", "derive", "--dumps", "{w}/esc" + ESC + ".json"], ["esc?[2J.json: the file is empty"]),
    "esc-in-spec-name": Case(["invoke", "render", "--spec", "{w}/esc" + ESC + ".yaml"], ["{w}/esc?[2J.yaml: cannot read"]),
    "secret-in-spec-key": Case(["invoke", "render", "--spec", "{w}/secret.yaml"], ["secret.yaml: ***"]),
    # 6. A build cache setting is checked before anything else (no engine, no fetch, no base).
    "build-cache": Case(["invoke", "build", "--image", "manylinux_2_36"], ["MANYFORGE_BUILD_CACHE='bad,ref=x'"],
                        env={"MANYFORGE_BUILD_CACHE": "bad,ref=x", **NO_ENGINE}),
    "benchmark-cache-push": Case(["invoke", "benchmark"], ["MANYFORGE_BUILD_CACHE_PUSH='yes'"],
                                 env={"MANYFORGE_BUILD_CACHE_PUSH": "yes", **NO_ENGINE}),
    # 7. Image-test settings that would be ignored, or would build and test one image twice.
    "test-base-alone": Case(COLLECT, ["MANYFORGE_TEST_BASE is only read with MANYFORGE_TEST_IMAGE or MANYFORGE_TEST_ARCHES"],
                            env={"MANYFORGE_TEST_BASE": "ubi9"}, code=4),
    "test-toolchain-alone": Case(COLLECT, ["MANYFORGE_TEST_TOOLCHAIN is only read with MANYFORGE_TEST_IMAGE"],
                                 env={"MANYFORGE_TEST_TOOLCHAIN": "gcc-toolset-13"}, code=4),
    "test-targets-and-image": Case(COLLECT, ["MANYFORGE_TEST_TARGETS and MANYFORGE_TEST_IMAGE and MANYFORGE_TEST_ARCHES are set together"],
                                   env={"MANYFORGE_TEST_TARGETS": "manylinux_2_36:x86_64", "MANYFORGE_TEST_IMAGE": "manylinux_2_36",
                                        "MANYFORGE_TEST_ARCHES": "i686"}, code=4),
    "test-targets-twice": Case(COLLECT, ["MANYFORGE_TEST_TARGETS='manylinux_2_36:i686,manylinux_2_36:i686': names manylinux_2_36_i686 more than once"],
                               env={"MANYFORGE_TEST_TARGETS": "manylinux_2_36:i686,manylinux_2_36:i686"}, code=4),
    "test-arches-twice": Case(COLLECT, ["MANYFORGE_TEST_ARCHES='x86_64,i686,x86_64': names x86_64 more than once"],
                              env={"MANYFORGE_TEST_ARCHES": "x86_64,i686,x86_64"}, code=4),
    "test-build-cache": Case(COLLECT, ["MANYFORGE_BUILD_CACHE='a,b=c'"], env={"MANYFORGE_BUILD_CACHE": "a,b=c"}, code=4),
}  # fmt: skip


def _prepare(work: Path) -> None:
    """What the cases name, all under `work` (whose whole tree is compared afterwards)."""
    locked = work / "locked"
    (locked / "seed").mkdir(parents=True)
    (locked / "cosign.key").write_text("not read\n")
    locked.chmod(0)
    (work / "no-dumps").mkdir()
    (work / "no-dumps" / ".hidden.json").write_text("{}")
    (work / "no-dumps" / "notes.txt").write_text("no dump\n")
    os.mkfifo(work / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(work / "socket"))
    listener.close()
    (work / f"esc{ESC}.json").write_text("")
    (work / "secret.yaml").write_text(DEFAULT_SPEC.read_text() + f"{SECRET}: x\n")


def _tree(work: Path) -> set[str]:
    return {str(p.relative_to(work)) for p in work.rglob("*")}


def _can_drop() -> bool:
    if os.geteuid() != 0:
        return True  # without root, file modes already apply
    if shutil.which("setpriv") is None:
        return False
    return subprocess.run([*DROP, "true"], capture_output=True, check=False, timeout=TIMEOUT).returncode == 0


class Outcome(NamedTuple):
    proc: subprocess.CompletedProcess[str] | None  # None: it hung, or was skipped (no way to drop root's override)
    seconds: float
    hung: bool = False


class Runs(NamedTuple):
    work: Path
    outcomes: dict[str, Outcome]
    changed: set[str]  # paths under `work` made or removed by the runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    work = tmp_path_factory.mktemp("hostile")
    _prepare(work)
    before = _tree(work)
    can_drop = _can_drop()

    def fill(text: str) -> str:
        return text.replace("{w}", str(work)).replace("{long}", LONG)

    def one(case: Case) -> Outcome:
        if case.drop and not can_drop:
            return Outcome(None, 0.0)
        start = time.monotonic()
        try:
            proc = run([fill(a) for a in case.argv], {k: fill(v) for k, v in case.env.items()}, drop=case.drop and os.geteuid() == 0)
        except subprocess.TimeoutExpired:  # killed: that case fails, the others stand
            return Outcome(None, time.monotonic() - start, hung=True)
        return Outcome(proc, time.monotonic() - start)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
            futures = {name: pool.submit(one, case) for name, case in CASES.items()}
            results = {name: future.result() for name, future in futures.items()}
    finally:
        (work / "locked").chmod(0o700)
    return Runs(work, results, _tree(work) ^ before)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_value_is_refused_in_one_line(runs, name):
    case, outcome = CASES[name], runs.outcomes[name]
    assert not outcome.hung, f"no answer within {TIMEOUT} s"
    if outcome.proc is None:
        pytest.skip("cannot drop root's override of file modes here (setpriv)")
    proc = outcome.proc
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    if case.code is not None:
        assert proc.returncode == case.code, output
    assert "Traceback" not in output, output
    for text in case.expected:
        assert text.replace("{w}", str(runs.work)) in output, output
    assert SECRET not in output and "\x1b" not in output, output
    assert outcome.seconds < TIMEOUT, output
    if case.argv[0] == "invoke":  # pytest's usage error comes with its own blank lines
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 600, proc.stderr


def test_nothing_is_left_behind(runs):
    """No partial output, no cache, no file under a refused name: the work tree is as prepared."""
    assert not runs.changed, f"made or removed: {sorted(runs.changed)}"


def test_a_fifo_with_a_reader_gets_the_dockerfile(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        proc = run(["invoke", "render", "--output", str(fifo)], {})
        text, _ = reader.communicate(timeout=TIMEOUT)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert proc.returncode == 0, proc.stderr
    assert text.startswith("# ") and "\nFROM " in text, text[:300]
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_output_dash_is_stdout_and_a_file_is_written_whole(tmp_path):
    proc = run(["invoke", "render", "--output", "-"], {})
    assert proc.returncode == 0 and "\nFROM " in proc.stdout, proc.stderr
    out = tmp_path / "new" / "Dockerfile"
    proc = run(["invoke", "render", "--output", str(out)], {})
    assert proc.returncode == 0, proc.stderr
    assert "\nFROM " in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["Dockerfile"]  # no .partial left


def test_the_workflows_settings_are_read():
    """What the image workflow passes for a base variant: an empty toolchain is no toolchain."""
    env = {"MANYFORGE_TEST_IMAGE": "manylinux_2_34", "MANYFORGE_TEST_ARCHES": "x86_64", "MANYFORGE_TEST_BASE": "ubi9",
           "MANYFORGE_TEST_TOOLCHAIN": ""}  # fmt: skip
    proc = run(COLLECT, env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "[manylinux_2_34_x86_64-ubi9" in proc.stdout and "manylinux_2_36" not in proc.stdout, proc.stdout[-2000:]


def _tasks_module():
    spec = importlib.util.spec_from_file_location("manyforge_tasks_under_test", ROOT / "tasks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_turns_any_os_error_into_one_scrubbed_line(monkeypatch):
    """The safety net behind every named check: an OSError anywhere is `error: <path>: <reason>`."""
    monkeypatch.setenv("COSIGN_PASSWORD", SECRET)
    tasks = _tasks_module()

    def deep(c):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), f"/tmp/{SECRET}{ESC}/" + LONG)

    with pytest.raises(Exit) as exc:
        tasks._guard(deep)(None)
    message = str(exc.value.message)
    assert exc.value.code == 1
    assert message.startswith("error: /tmp/***?[2J/bbb") and message.endswith(f": {TOO_LONG}"), message
    assert "\n" not in message and len(message) < 600, message


def test_build_and_benchmark_check_the_cache_settings_before_anything(monkeypatch):
    """pipeline.build (which the image tests call too) and pipeline.benchmark: first thing."""
    monkeypatch.setenv("MANYFORGE_BUILD_CACHE", "ghcr.io/org/cache,type=local")

    def too_late(*args, **kwargs):
        raise AssertionError("the engine was asked before the settings were checked")

    monkeypatch.setattr(engine, "check_prerequisites", too_late)
    monkeypatch.setattr(engine, "prune_build_cache", too_late)
    for call in (lambda: pipeline.build(None, None, None), lambda: pipeline.benchmark(None, None, [])):  # type: ignore[arg-type]
        with pytest.raises(engine.EngineError, match="MANYFORGE_BUILD_CACHE="):
            call()
