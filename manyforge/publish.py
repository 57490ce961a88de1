"""Stage 5: publish tested images: dated and latest tags, a multi-arch index, signatures, SBOM
attestations, a catalog and a changelog.

Only an image whose exact digest passed a complete run of the image tests is pushed (the tests
write a record per image: tests/image/conftest.py). Every registry and signing operation goes
through the engine; this module decides what to push, under which tag, and what to write.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from manyforge import engine
from manyforge.render import Target, resolve_target
from manyforge.spec import REPO_ROOT, Spec

BUILD_DIR = REPO_ROOT / "build"
RECORD_DIR = BUILD_DIR / "test-records"
RELEASE_DIR = BUILD_DIR / "releases"
SBOM_PATH = "/opt/_internal/sbom.cdx.json"
CATALOG_TYPE = "https://manyforge.dev/attestations/catalog/v1"
REGISTRY = re.compile(
    r"^(?P<host>(?:[a-z0-9-]+\.)*[a-z0-9-]+(?::\d{1,5})?)/(?P<namespace>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)$"
)


class PublishError(Exception):
    pass


# --- test records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestRecord:
    __test__ = False  # not a pytest class

    image_id: str
    slug: str
    ref: str
    spec_revision: str
    passed: int
    failed: int
    skipped: int
    complete: bool

    @property
    def ok(self) -> bool:
        return self.complete and self.failed == 0 and self.passed > 0


def spec_revision(spec: Spec) -> str:
    """A digest of the matrix and its lock: what the image was built from."""
    return spec.revision


def _record_path(image_id: str) -> Path:
    return RECORD_DIR / (image_id.split(":", 1)[-1] + ".json")


def write_test_record(record: TestRecord) -> Path:
    path = _record_path(record.image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(asdict(record), indent=1) + "\n")
    tmp.replace(path)
    return path


def read_test_record(image_id: str) -> TestRecord | None:
    path = _record_path(image_id)
    try:
        return TestRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


# --- what a release is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    host: str
    namespace: str

    @classmethod
    def parse(cls, value: str) -> Destination:
        m = REGISTRY.match(value or "")
        if m is None:
            raise PublishError(f"--registry {value[:100]!r}: expected HOST[:PORT]/NAMESPACE, e.g. 127.0.0.1:5000/manyforge")
        return cls(m.group("host"), m.group("namespace"))

    @property
    def plain_http(self) -> bool:
        """Loopback registries speak plain HTTP (as the engine allows them to)."""
        return self.host.split(":")[0] in ("127.0.0.1", "localhost")

    def repository(self, name: str) -> str:
        return f"{self.host}/{self.namespace}/{name}"


def _dated(tag: str, day: str) -> int | None:
    m = re.fullmatch(rf"{re.escape(day)}-(\d+)", tag)
    return int(m.group(1)) if m else None


def choose_tag(dest: Destination, repos: dict[str, str], image_ids: dict[str, str], index_repo: str, day: str) -> str:
    """The release tag `<day>-<N>`. A tag of the day under which every image to publish is
    either already our exact image or absent is reused (an interrupted publish resumes);
    otherwise N is one more than any tag of the day in the registry (two machines never reuse one)."""
    numbers: set[int] = set()
    for repo in [*repos.values(), index_repo]:
        numbers |= {n for t in engine.registry_tags(repo, dest.plain_http) if (n := _dated(t, day)) is not None}
    for n in sorted(numbers, reverse=True):
        tag = f"{day}-{n}"
        states = [engine.remote_config_digest(f"{repos[a]}:{tag}", dest.plain_http) for a in repos]
        if any(s is not None for s in states) and all(s in (None, image_ids[a]) for a, s in zip(repos, states, strict=True)):
            return tag
    return f"{day}-{max(numbers, default=0) + 1}"


def next_tag(spec: Spec, image_name: str, registry: str, today: dt.date | None = None) -> str:
    """The next free release tag of an image, for parallel jobs that publish one arch each."""
    dest = Destination.parse(registry)
    image = spec.image(image_name)
    repos = [dest.repository(f"{image_name}_{a}") for a in image.archs] + [dest.repository(image_name)]
    day = (today or dt.date.today()).strftime("%Y.%m.%d")
    numbers = {n for repo in repos for t in engine.registry_tags(repo, dest.plain_http) if (n := _dated(t, day)) is not None}
    return f"{day}-{max(numbers, default=0) + 1}"


def publish(
    spec: Spec,
    image_name: str,
    arches: list[str] | None,
    registry: str,
    key: Path,
    subset: bool = False,
    tag: str | None = None,
    index_only: bool = False,
    today: dt.date | None = None,
    log=print,
) -> dict[str, Any]:
    """Push the tested images of one image of images.yaml; returns the release's catalog.

    `tag` publishes under a tag chosen beforehand (parallel jobs share one: `next_tag`); it is
    refused if it already names a different image. `index_only` pushes nothing and makes the
    multi-arch index of what was pushed under `tag`.
    """
    dest = Destination.parse(registry)
    image = spec.image(image_name)
    if tag is not None and not re.fullmatch(r"\d{4}\.\d\d\.\d\d-\d+", tag):
        raise PublishError(f"--tag {tag[:60]!r}: expected YYYY.MM.DD-N")
    if index_only and tag is None:
        raise PublishError("--index-only needs --tag: the release whose arches to gather")
    chosen = [] if index_only else (arches or list(image.archs))
    targets = {arch: resolve_target(spec, image_name, arch) for arch in chosen}
    if not key.is_file():
        raise PublishError(f"--key {key}: no such signing key (cosign generate-key-pair makes one)")
    # Refuse before pushing anything: every image must be built here and have passed its tests.
    image_ids: dict[str, str] = {}
    problems = []
    for arch, target in targets.items():
        try:
            image_ids[arch] = engine.image_id(target.latest_ref)
        except engine.EngineError as exc:
            problems.append(f"{target.slug}: {exc}")
            continue
        record = read_test_record(image_ids[arch])
        if record is None:
            problems.append(f"{target.slug}: image {image_ids[arch][:19]} has no test record; run the image tests on it first")
        elif not record.ok:
            problems.append(
                f"{target.slug}: image {image_ids[arch][:19]} did not pass a complete test run "
                f"({record.passed} passed, {record.failed} failed, complete={record.complete})"
            )
    if problems:
        raise PublishError("nothing pushed:\n  " + "\n  ".join(problems))

    repos = {arch: dest.repository(f"{image_name}_{arch}") for arch in chosen}
    index_repo = dest.repository(image_name)
    day = (today or dt.date.today()).strftime("%Y.%m.%d")
    if tag is None:
        tag = choose_tag(dest, repos, image_ids, index_repo, day)
    else:
        taken = [a for a in repos if engine.remote_config_digest(f"{repos[a]}:{tag}", dest.plain_http) not in (None, image_ids[a])]
        if taken:
            raise PublishError(f"--tag {tag}: already names another image of {', '.join(taken)}; a dated tag never moves")
    log(f"release {image_name}:{tag} to {dest.host}/{dest.namespace} ({', '.join(chosen)})")

    digests: dict[str, str] = {}
    sboms: dict[str, dict] = {}
    for arch, target in targets.items():
        remote = f"{repos[arch]}:{tag}"
        if engine.remote_config_digest(remote, dest.plain_http) == image_ids[arch]:
            digests[arch] = engine.remote_digest(remote, dest.plain_http)
            log(f"  {remote}: already pushed")
        else:
            digests[arch] = engine.push(target.latest_ref, remote)
            log(f"  {remote}: pushed {digests[arch]}")
        engine.push(target.latest_ref, f"{repos[arch]}:latest")
        pinned = f"{repos[arch]}@{digests[arch]}"
        sboms[arch] = json.loads(engine.run_in_image(target.latest_ref, arch, ["cat", SBOM_PATH]))
        with tempfile.TemporaryDirectory() as tmp:
            sbom_file = Path(tmp) / "sbom.cdx.json"
            sbom_file.write_text(json.dumps(sboms[arch]))
            engine.cosign_sign(pinned, key)
            engine.cosign_attest(pinned, key, sbom_file, "cyclonedx")
        log(f"  {pinned}: signed, SBOM attested ({len(sboms[arch].get('components', []))} components)")

    catalog = _catalog(spec, image_name, tag, dest, targets, digests, sboms)
    missing = [
        a for a in image.archs
        if a not in chosen and engine.remote_config_digest(f"{dest.repository(f'{image_name}_{a}')}:{tag}", dest.plain_http) is None
    ]  # fmt: skip
    if missing and not subset:
        log(f"  no index: {', '.join(missing)} not pushed under {tag} (--subset publishes an index of what is)")
    else:
        members = {a: digests.get(a) or engine.remote_digest(f"{dest.repository(f'{image_name}_{a}')}:{tag}", dest.plain_http)
                   for a in image.archs if a not in missing}  # fmt: skip
        annotations = {"org.opencontainers.image.title": image_name, "org.opencontainers.image.version": tag}
        if missing:
            annotations["io.manyforge.subset"] = ",".join(sorted(members))
        refs = [f"{dest.repository(f'{image_name}_{a}')}@{d}" for a, d in members.items()]
        index_digest = engine.create_index([f"{index_repo}:{tag}", f"{index_repo}:latest"], refs, annotations, dest.plain_http)
        catalog["index"] = {"digest": index_digest, "tags": [tag, "latest"], "arches": sorted(members), "subset": bool(missing)}
        with tempfile.TemporaryDirectory() as tmp:
            catalog_file = Path(tmp) / "catalog.json"
            catalog_file.write_text(json.dumps(catalog))
            engine.cosign_sign(f"{index_repo}@{index_digest}", key)
            engine.cosign_attest(f"{index_repo}@{index_digest}", key, catalog_file, CATALOG_TYPE)
        log(f"  {index_repo}:{tag} -> {index_digest} ({', '.join(sorted(members))}), signed, catalog attested")
    out = RELEASE_DIR / image_name / tag
    out.mkdir(parents=True, exist_ok=True)
    (out / "catalog.json").write_text(json.dumps(catalog, indent=1) + "\n")
    log(f"  catalog: {out / 'catalog.json'}")
    if chosen:
        _write_changelog(dest, image_name, chosen, tag, key, out, log)
    return catalog


def previous_release(tags: list[str], tag: str) -> str | None:
    """The newest dated release tag older than `tag`."""
    def key(t: str) -> tuple[str, int]:
        day, _, n = t.rpartition("-")
        return day, int(n)

    older = [t for t in tags if re.fullmatch(r"\d{4}\.\d\d\.\d\d-\d+", t) and key(t) < key(tag)]
    return max(older, key=key, default=None)


def _write_changelog(dest: Destination, image_name: str, arches: list[str], tag: str, key: Path, out: Path, log) -> None:
    """The changelog against the previous release of these arches, beside the catalog."""
    repo = dest.repository(f"{image_name}_{arches[0]}")
    previous = previous_release(engine.registry_tags(repo, dest.plain_http), tag)
    if previous is None:
        log("  changelog: first release, nothing to compare with")
        return
    with tempfile.TemporaryDirectory() as tmp:
        public = engine.cosign_public_key(key, Path(tmp) / "cosign.pub")
        log_data = changelog(f"{dest.host}/{dest.namespace}", image_name, arches, previous, tag, public)
    (out / "changelog.json").write_text(json.dumps(log_data, indent=1) + "\n")
    (out / "changelog.md").write_text(changelog_markdown(log_data))
    log(f"  changelog against {previous}: {out / 'changelog.md'}")


def _catalog(spec, image_name, tag, dest, targets: dict[str, Target], digests, sboms) -> dict[str, Any]:
    image = spec.image(image_name)
    arches = {}
    for arch in targets:
        components = sboms[arch].get("components", [])
        props = lambda c: {p["name"]: p["value"] for p in c.get("properties", [])}  # noqa: E731
        arches[arch] = {
            "repository": dest.repository(f"{image_name}_{arch}"),
            "digest": digests[arch],
            "tags": [tag, "latest"],
            "libc": {"name": image.libc.name, "version": image.libc.version},
            "gcc": next((c["version"] for c in components if c.get("bom-ref") == "toolchain"), None),
            "interpreters": {props(c)["manyforge:interpreter"]: c["version"] for c in components if c["name"] == "cpython"},
            "tools": {c["name"]: c["version"] for c in components if props(c).get("manyforge:installed-in") == "tools"},
        }
    return {"image": image_name, "policy": image.policy, "release": tag, "registry": f"{dest.host}/{dest.namespace}",
            "spec_revision": spec_revision(spec), "arches": arches}  # fmt: skip


# --- changelog -------------------------------------------------------------------------------------------


def _facts(sbom: dict) -> dict[str, dict[str, str]]:
    """The parts of an SBOM a changelog compares: name -> version per section."""
    out: dict[str, dict[str, str]] = {"interpreters": {}, "tools": {}, "frontend": {}, "toolchain": {}, "packages": {}, "base": {}}
    for c in sbom.get("components", []):
        props = {p["name"]: p["value"] for p in c.get("properties", [])}
        where = props.get("manyforge:installed-in")
        if c["name"] == "cpython":
            out["interpreters"][props.get("manyforge:interpreter", c["name"])] = c["version"]
        elif where == "tools":
            out["tools"][c["name"]] = c["version"]
        elif where:
            out["frontend"][f"{where}: {c['name']}"] = c["version"]
        elif c.get("bom-ref") == "toolchain":
            out["toolchain"][props.get("manyforge:toolchain", "gcc")] = c["version"]
        elif c.get("type") == "operating-system":
            out["base"] = {k.removeprefix("manyforge:"): v for k, v in props.items()} | {c["name"]: c.get("version", "")}
        else:
            out["packages"][c["name"]] = c.get("version", "")
    return out


def diff_sboms(old: dict, new: dict) -> dict[str, dict[str, list]]:
    """Per section: added [name, version], removed [name, version], updated [name, old, new]."""
    a, b = _facts(old), _facts(new)
    out = {}
    for section in a:
        before, after = a[section], b[section]
        out[section] = {
            "added": sorted([n, after[n]] for n in after.keys() - before.keys()),
            "removed": sorted([n, before[n]] for n in before.keys() - after.keys()),
            "updated": sorted([n, before[n], after[n]] for n in before.keys() & after.keys() if before[n] != after[n]),
        }
    return out


def changelog(registry: str, image_name: str, arches: list[str], old: str, new: str, public_key: Path) -> dict[str, Any]:
    """What changed between two releases, per arch, from their signed SBOM attestations."""
    dest = Destination.parse(registry)
    per_arch = {}
    for arch in arches:
        repo = dest.repository(f"{image_name}_{arch}")
        sboms = [engine.verified_sbom(f"{repo}:{tag}", public_key) for tag in (old, new)]
        per_arch[arch] = diff_sboms(*sboms)
    return {"image": image_name, "from": old, "to": new, "arches": per_arch}


def changelog_markdown(log: dict[str, Any]) -> str:
    lines = [f"# {log['image']}: {log['from']} → {log['to']}", ""]
    for arch, sections in log["arches"].items():
        lines.append(f"## {arch}")
        changed = False
        for section, change in sections.items():
            items = [f"- added {n} {v}" for n, v in change["added"]]
            items += [f"- removed {n} {v}" for n, v in change["removed"]]
            items += [f"- {n}: {o} → {v}" for n, o, v in change["updated"]]
            if items:
                changed = True
                lines += [f"### {section}", *items]
        if not changed:
            lines.append("no changes")
        lines.append("")
    return "\n".join(lines)
