"""The workflows' job graph, run as GitHub would run it on the real matrix of images.yaml.

A small simulator reads .github/workflows/images.yml and image.yml as they are: it expands each
job's matrix (from `invoke matrix`'s data), calls image.yml once per image with the `with:`
inputs, decides each job by its `needs` and its `if` (GitHub's rules: an `if` without a status
function is `success() && (...)`, a job whose condition is false is skipped, a failed matrix
entry with `continue-on-error` does not fail its job), and each step by its own `if`. The
scenarios fail chosen image×arch jobs and assert which jobs and publish steps run.

Nothing is mocked but the outcome of the build-and-test step; the conditions, needs and
matrices are the files' and images.yaml's own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from manyforge import workflow
from manyforge.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SPEC = load_spec()
MATRIX = {"include": workflow.matrix(SPEC)}

# --- GitHub's expression language, the part these workflows use -------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||[!().,])|(?P<word>[A-Za-z_][A-Za-z0-9_.-]*))")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read expression at {text[pos:]!r}")
        out.append(m.group(m.lastgroup or 0))
        pos = m.end()
    return out


class Expr:
    """Evaluates `${{ }}` expressions: literals, contexts (a.b.c), ==, !=, !, &&, ||, (), and
    the status functions success(), failure(), cancelled(), always(), plus fromJSON()."""

    STATUS = {"success", "failure", "cancelled", "always"}

    def __init__(self, text: str, context: dict[str, Any], status: dict[str, bool]):
        self.toks = _tokens(text)
        self.i = 0
        self.context = context
        self.status = status

    def uses_status(self) -> bool:
        return any(t in self.STATUS and self.toks[n + 1 : n + 2] == ["("] for n, t in enumerate(self.toks))

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.toks[self.i]
        if want is not None and tok != want:
            raise ValueError(f"expected {want!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.or_()
        if self.peek() is not None:
            raise ValueError(f"trailing {self.peek()!r}")
        return value

    def or_(self) -> Any:
        value = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            value = value if _truthy(value) else right
        return value

    def and_(self) -> Any:
        value = self.cmp()
        while self.peek() == "&&":
            self.take()
            right = self.cmp()
            value = right if _truthy(value) else value
        return value

    def cmp(self) -> Any:
        value = self.unary()
        while self.peek() in ("==", "!="):
            op = self.take()
            right = self.unary()
            equal = _equal(value, right)
            value = equal if op == "==" else not equal
        return value

    def unary(self) -> Any:
        if self.peek() == "!":
            self.take()
            return not _truthy(self.unary())
        return self.atom()

    def atom(self) -> Any:
        tok = self.take()
        if tok == "(":
            value = self.or_()
            self.take(")")
            return value
        if tok.startswith("'"):
            return tok[1:-1].replace("''", "'")
        if tok in ("true", "false"):
            return tok == "true"
        if self.peek() == "(":
            self.take("(")
            args = []
            while self.peek() != ")":
                args.append(self.or_())
                if self.peek() == ",":
                    self.take()
            self.take(")")
            if tok in self.STATUS:
                return self.status[tok]
            if tok == "fromJSON":
                return json.loads(args[0])
            raise ValueError(f"unknown function {tok}")
        value: Any = self.context
        for part in tok.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


def _truthy(value: Any) -> bool:
    return value not in (None, False, "", 0)


def _equal(a: Any, b: Any) -> bool:
    """GitHub's `==`: strings without regard to case; values of different types as numbers
    (null and '' are 0, so an unset variable equals ''; false 0, true 1; a string that is no
    number is NaN, equal to nothing)."""
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b):
        return a == b
    return _number(a) == _number(b)


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip() or 0)
        except ValueError:
            return float("nan")
    return float("nan")


def evaluate(text: Any, context: dict[str, Any], status: dict[str, bool] | None = None) -> Any:
    """A value of the workflow: a literal, or text with `${{ }}` (one whole expression, or pieces)."""
    if not isinstance(text, str):
        return text
    status = status or {"success": True, "failure": False, "cancelled": False, "always": True}
    whole = re.fullmatch(r"\s*\$\{\{(.*)\}\}\s*", text, re.S)
    if whole:
        return Expr(whole.group(1), context, status).parse()
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(Expr(m.group(1), context, status).parse()), text)


def condition(text: Any, context: dict[str, Any], status: dict[str, bool]) -> bool:
    """A job's or step's `if`: without a status function it is `success() && (...)`."""
    if text is None:
        return status["success"]
    body = str(text).strip()
    m = re.fullmatch(r"\$\{\{(.*)\}\}", body, re.S)
    body = m.group(1) if m else body
    expr = Expr(body, context, status)
    value = _truthy(expr.parse())
    return value if expr.uses_status() else status["success"] and value


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """What happened: each job's result by its path, and the publishing steps that ran."""

    results: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, str]] = field(default_factory=list)  # (job path, step name)
    failed_steps: list[tuple[str, str]] = field(default_factory=list)

    def ran(self, path: str) -> bool:
        return self.results.get(path) in ("success", "failure")

    def published(self) -> set[str]:
        """The image×arch jobs whose publish step ran (`<image>:<leg>/<slug>`)."""
        return {path for path, name in self.steps if name.startswith("publish this arch")}

    def indexes(self) -> set[str]:
        """The images whose index was published."""
        return {path.split(":")[0] for path, name in self.steps if name.startswith("publish the index")}


def _load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _status(needs: list[str], results: dict[str, str], ancestors: set[str]) -> dict[str, bool]:
    # success(): no job this one depends on, directly or not, failed, was cancelled or skipped.
    chain = [results[n] for n in ancestors]
    return {
        "success": all(r == "success" for r in chain),
        "failure": any(r == "failure" for r in chain),
        "cancelled": False,
        "always": True,
    }


def _ancestors(jobs: dict, name: str) -> set[str]:
    needs = jobs[name].get("needs", [])
    needs = [needs] if isinstance(needs, str) else needs
    out = set(needs)
    for n in needs:
        out |= _ancestors(jobs, n)
    return out


def _order(jobs: dict) -> list[str]:
    done: list[str] = []
    while len(done) < len(jobs):
        for name, job in jobs.items():
            needs = job.get("needs", [])
            needs = [needs] if isinstance(needs, str) else needs
            if name not in done and all(n in done for n in needs):
                done.append(name)
    return done


def simulate(file: str, context: dict[str, Any], fails: set[str], run: Run, prefix: str = "") -> str:
    """Run one workflow: each job in `needs` order; `fails` holds the slugs (matrix.slug) and job
    paths whose build or job fails. Returns the workflow's result."""
    data = _load(file)
    jobs = data["jobs"]
    results: dict[str, str] = {}
    for name in _order(jobs):
        job = jobs[name]
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        ctx = {**context, "needs": {n: {"result": results[n], "outputs": {}} for n in needs}}
        status = _status(needs, results, _ancestors(jobs, name))
        path = f"{prefix}{name}"
        if not condition(job.get("if"), ctx, status):
            results[name] = run.results[path] = "skipped"
            continue
        entries = [{}]
        if "strategy" in job:
            entries = evaluate(job["strategy"]["matrix"], ctx)["include"]
        failed = False
        for entry in entries:
            mctx = {**ctx, "matrix": entry}
            entry_path = f"{path}/{entry['slug']}" if "slug" in entry else path
            if "uses" in job:
                inputs = {k: evaluate(v, mctx) for k, v in job.get("with", {}).items()}
                called = {**context, "inputs": inputs}
                result = simulate(job["uses"].rsplit("/", 1)[1], called, fails, run, prefix=f"{entry_path}:")
            else:
                result = _steps(job, mctx, entry, fails, run, entry_path)
                if result == "failure" and evaluate(job.get("continue-on-error", False), mctx) is True:
                    result = "success"
            if entry_path != path:
                run.results[entry_path] = result
            failed |= result == "failure"
        results[name] = run.results[path] = "failure" if failed else "success"
    return "failure" if "failure" in results.values() else "success"


def _steps(job: dict, ctx: dict, entry: dict, fails: set[str], run: Run, path: str) -> str:
    """A job's steps: the build-and-test step (or the whole job) fails when the scenario says, as
    does a step with an id named `<slug>@<id>` in the scenario, and a `run:` that ends in
    `exit 1`. A failing step with `continue-on-error` does not fail the job; later steps read
    its outcome (`steps.<id>.outcome`)."""
    if path.rsplit(":", 1)[-1].split("/")[0] in fails or path in fails:
        return "failure"
    result = "success"
    steps: dict[str, dict[str, str]] = {}
    for step in job["steps"]:
        status = {"success": result == "success", "failure": result == "failure", "cancelled": False, "always": True}
        sctx = {**ctx, "steps": steps}
        if not condition(step.get("if"), sctx, status):
            if "id" in step:
                steps[step["id"]] = {"outcome": "skipped", "conclusion": "skipped"}
            continue
        name = step.get("name", step.get("uses", step.get("run", "")))
        script = str(step.get("run", "")).strip().splitlines()
        if name.startswith("build, then test") and entry.get("slug") in fails:
            outcome = "failure"
        elif "id" in step and f"{entry.get('slug')}@{step['id']}" in fails or script[-1:] == ["exit 1"]:
            outcome = "failure"
        else:
            outcome = "success"
            run.steps.append((path, name))
        if outcome == "failure":
            run.failed_steps.append((path, name))
        tolerated = outcome == "failure" and evaluate(step.get("continue-on-error", False), sctx) is True
        if "id" in step:
            steps[step["id"]] = {"outcome": outcome, "conclusion": "success" if tolerated else outcome}
        if outcome == "failure" and not tolerated:
            result = "failure"
    return result


# The repository variables the workflows read, as the upstream repository sets them (their
# values are never read by the graph, only whether they are set). A pull request from a fork
# gets none: `vars={}`.
VARS = {"MANYFORGE_REGISTRY": "<set>", "DEBIAN_MIRROR": "<set>"}


def run_event(event: str, fails: set[str] = frozenset(), inputs: dict | None = None, vars: dict | None = None) -> Run:  # type: ignore[assignment]
    ref = "refs/heads/main" if event == "push" else "refs/pull/1/merge"
    run = Run()
    matrix = MATRIX if event != "workflow_dispatch" else {"include": workflow.canary(SPEC, inputs["image"], inputs["arch"])}  # type: ignore[index]
    context = {"github": {"event_name": event, "ref": ref}, "inputs": inputs or {}, "vars": VARS if vars is None else vars}
    data = _load("images.yml")
    # The matrix job's output is what `invoke matrix` prints.
    data_outputs = json.dumps(matrix)
    jobs = data["jobs"]
    results: dict[str, str] = {}
    for name in _order(jobs):
        job = jobs[name]
        needs = job.get("needs", [])
        ctx = {**context, "needs": {n: {"result": results[n], "outputs": {"matrix": data_outputs}} for n in needs}}
        status = _status(needs, results, _ancestors(jobs, name))
        if not condition(job.get("if"), ctx, status):
            results[name] = run.results[name] = "skipped"
            continue
        if "uses" not in job:
            results[name] = run.results[name] = "failure" if name in fails else "success"
            continue
        failed = False
        for entry in evaluate(job["strategy"]["matrix"], ctx)["include"]:
            mctx = {**ctx, "matrix": entry}
            inputs_ = {k: evaluate(v, mctx) for k, v in job.get("with", {}).items()}
            result = simulate("image.yml", {**context, "inputs": inputs_}, fails, run, prefix=f"{entry['image']}:")
            run.results[entry["image"]] = result
            failed |= result == "failure"
        results[name] = run.results[name] = "failure" if failed else "success"
    return run


def index_ran(run: Run) -> set[str]:
    return run.indexes()


IMAGES = set(SPEC.images)


def _jobs(image: str) -> list[dict]:
    return workflow.image_entries(SPEC, image)


# --- the scenarios -------------------------------------------------------------------------------


def test_the_expression_reader_follows_githubs_rules():
    ctx = {"inputs": {"cross": "", "publish": True}, "needs": {"a": {"result": "skipped"}}}
    ok = {"success": True, "failure": False, "cancelled": False, "always": True}
    assert condition("inputs.publish", ctx, {**ok, "success": False}) is False  # implicit success()
    assert condition("${{ !cancelled() && inputs.cross == '' }}", ctx, {**ok, "success": False}) is True
    assert condition("needs.a.result == 'skipped' && inputs.publish", ctx, ok) is True
    assert condition("inputs.cross != ''", ctx, ok) is False
    # An unset variable is null, which equals '' (both are 0 as numbers); a set one does not.
    assert condition("vars.DEBIAN_MIRROR == ''", {"vars": {}}, ok) is True
    assert condition("vars.DEBIAN_MIRROR != ''", {"vars": {"DEBIAN_MIRROR": "x"}}, ok) is True
    assert condition("inputs.debootstrap == 'x'", {"inputs": {"debootstrap": True}}, ok) is False
    assert evaluate("${{ matrix.variant != '' }}", {"matrix": {"variant": "ubi9"}}) is True


def test_push_to_main_with_everything_passing_publishes_every_arch_and_every_index():
    run = run_event("push")
    assert run.results["image"] == "success" and run.results["image-check"] == "skipped"
    assert index_ran(run) == IMAGES
    released = {f"{image}:{job['leg']}/{job['slug']}" for image in IMAGES for job in _jobs(image) if not job["variant"]}
    assert run.published() == released


def test_one_failing_arch_blocks_only_its_own_images_index():
    run = run_event("push", fails={"manylinux_2_28_s390x"})
    assert index_ran(run) == IMAGES - {"manylinux_2_28"}
    # The image's other arches were built, tested and pushed under their dated tags.
    assert "manylinux_2_28:native/manylinux_2_28_x86_64" in run.published()
    assert "manylinux_2_28:cross/manylinux_2_28_ppc64le" in run.published()
    assert run.results["manylinux_2_28:index"] == "skipped"


def test_a_failing_native_arch_still_runs_the_images_cross_leg_but_not_its_index():
    run = run_event("push", fails={"manylinux2014_x86_64"})
    assert run.results["manylinux2014:native"] == "failure"
    assert run.results["manylinux2014:cross/manylinux2014_ppc64le"] == "success"
    assert run.results["manylinux2014:index"] == "skipped"
    assert index_ran(run) == IMAGES - {"manylinux2014"}


def test_a_failing_variant_holds_no_release():
    variant = next(j["slug"] for j in _jobs("manylinux_2_34") if j["variant"] == "ubi9" and j["arch"] == "aarch64")
    run = run_event("push", fails={variant})
    assert run.results[f"manylinux_2_34:native/{variant}"] == "success"  # continue-on-error
    assert index_ran(run) == IMAGES
    # Variants are never published, failing or not.
    assert not any(j["slug"] in p for p in run.published() for j in _jobs("manylinux_2_34") if j["variant"])


def test_a_failing_release_tag_stops_that_images_publishing_not_its_builds_nor_other_images():
    run = run_event("push", fails={"musllinux_1_2:release-tag"})
    assert run.results["musllinux_1_2:release-tag"] == "failure"
    assert run.results["musllinux_1_2:native/musllinux_1_2_x86_64"] == "success"
    assert run.results["musllinux_1_2:cross/musllinux_1_2_s390x"] == "success"
    assert not any(p.startswith("musllinux_1_2:") for p in run.published())
    assert index_ran(run) == IMAGES - {"musllinux_1_2"}


def test_an_image_with_no_cross_leg_gets_its_index():
    assert workflow.matrix(SPEC)[[m["image"] for m in workflow.matrix(SPEC)].index("manylinux_2_31")]["cross"] == ""
    run = run_event("push")
    assert run.results["manylinux_2_31:cross"] == "skipped"
    assert "manylinux_2_31" in index_ran(run)


def test_pull_requests_build_and_test_everything_and_publish_nothing():
    run = run_event("pull_request", fails={"manylinux_2_36_x86_64"})
    assert run.results["image"] == "skipped" and run.results["image-check"] == "failure"
    assert not run.published() and not index_ran(run)
    assert not any(path.endswith(":release-tag") and r != "skipped" for path, r in run.results.items())
    # The failed native job does not stop the image's cross leg, nor any other image.
    assert run.results["manylinux_2_36:cross/manylinux_2_36_s390x"] == "success"
    every = {f"{image}:{job['leg']}/{job['slug']}" for image in IMAGES for job in _jobs(image)}
    assert {p for p in every if run.ran(p)} == every


def test_failing_unit_tests_build_nothing():
    run = run_event("push", fails={"unit"})
    assert run.results["image"] == "skipped" and not run.published()


@pytest.mark.parametrize(("image", "arch"), [("manylinux_2_28", "aarch64"), ("manylinux_2_36", "s390x")])
def test_the_manual_canary_builds_one_image_arch_and_publishes_nothing(image, arch):
    run = run_event("workflow_dispatch", inputs={"image": image, "arch": arch})
    built = [p for p, r in run.results.items() if "/" in p and ":" in p and r == "success"]
    assert built == [f"{image}:native/{image}_{arch}"]
    assert not run.published() and not index_ran(run)


def test_every_job_runs_on_the_runner_images_yaml_names_for_its_arch():
    image_yml = _load("image.yml")
    for leg in ("native", "cross"):
        assert image_yml["jobs"][leg]["runs-on"] == "${{ matrix.runner }}"
    runners = {arch: runner.labels for runner in SPEC.data.runners.values() for arch in runner.builds}
    for image in IMAGES:
        for job in _jobs(image):
            assert tuple(job["runner"]) == runners[job["arch"]]
            # aarch64 and armv7l on arm64 runners need no QEMU; the x86_64 runner's foreign arches do.
            assert (job["qemu"] == "") == (job["arch"] in ("x86_64", "i686", "aarch64", "armv7l")), job["slug"]


# --- repository variables: a fork's pull request, a registry not set, a login that fails -------

DEBIAN_IMAGES = {m["image"] for m in workflow.matrix(SPEC) if m["debootstrap"]}


def test_the_matrix_says_which_images_bootstrap_a_debian_base():
    assert DEBIAN_IMAGES == {"manylinux_2_36", "manylinux_2_31"}
    assert DEBIAN_IMAGES == {i for i in IMAGES if any(j["debootstrap"] for j in _jobs(i))}


def test_a_fork_pull_request_skips_the_debian_images_with_a_notice_and_builds_the_rest():
    run = run_event("pull_request", vars={})
    for image in IMAGES:
        jobs = {f"{image}:{job['leg']}/{job['slug']}" for job in _jobs(image)}
        noticed = (f"{image}:no-debian-mirror", "say that this image is not built") in run.steps
        if image in DEBIAN_IMAGES:
            assert run.results[f"{image}:native"] == "skipped" and not any(run.ran(p) for p in jobs), image
            assert noticed and run.results[f"{image}:no-debian-mirror"] == "success"
        else:
            assert all(run.ran(p) for p in jobs) and not noticed, image
    assert run.results["image-check"] == "success" and not run.published()


def test_a_pull_request_with_the_mirror_builds_the_debian_images_and_says_nothing():
    run = run_event("pull_request", vars={"DEBIAN_MIRROR": "<set>"})
    assert run.results["manylinux_2_36:native/manylinux_2_36_x86_64"] == "success"
    assert run.results["manylinux_2_36:cross/manylinux_2_36_s390x"] == "success"
    assert all(run.results[f"{image}:no-debian-mirror"] == "skipped" for image in IMAGES)


def test_a_push_to_main_without_a_registry_builds_and_tests_and_publishes_nothing():
    # A fork's main, or upstream before MANYFORGE_REGISTRY is set: the check-only path.
    run = run_event("push", vars={"DEBIAN_MIRROR": "<set>"})
    assert run.results["image"] == "skipped" and run.results["image-check"] == "success"
    assert not run.published() and not index_ran(run)
    assert not any(path.endswith(":release-tag") and r != "skipped" for path, r in run.results.items())
    every = {f"{image}:{job['leg']}/{job['slug']}" for image in IMAGES for job in _jobs(image)}
    assert {p for p in every if run.ran(p)} == every


def test_a_failed_login_still_builds_and_tests_then_stops_that_arch_and_its_images_index():
    run = run_event("push", fails={"manylinux_2_28_aarch64@login"})
    path = "manylinux_2_28:native/manylinux_2_28_aarch64"
    built = [name for p, name in run.steps if p == path]
    assert any(name.startswith("build, then test") for name in built)  # without the cache
    assert not any(name.startswith("publish") for name in built)
    assert (path, "stop, not logged in to the registry") in run.failed_steps
    assert run.results[path] == "failure" and run.results["manylinux_2_28:index"] == "skipped"
    assert index_ran(run) == IMAGES - {"manylinux_2_28"}
    assert "manylinux_2_28:native/manylinux_2_28_x86_64" in run.published()
