"""Stage 5: publish tested images: dated and latest tags, a multi-arch index, signatures, SBOM
attestations, a catalog and a changelog.

Only an image whose exact digest passed a complete run of the image tests is pushed (the tests
write a record per image: tests/image/conftest.py). Every registry and signing operation goes
through the engine; this module decides what to push, under which tag, and what to write.

No tag ever names an unsigned image: the key and its password are checked before anything is
pushed; each image and the index are pushed by digest under no tag and signed and attested by
digest; only once all of the release is signed are they given the dated tag and `latest`. A
publish that fails or is killed before that leaves no new release tag; running it again
completes the release (signing nothing twice).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from manyforge import engine
from manyforge.render import Target, resolve_target
from manyforge.spec import REPO_ROOT, Spec

BUILD_DIR = REPO_ROOT / "build"
RECORD_DIR = BUILD_DIR / "test-records"
RELEASE_DIR = BUILD_DIR / "releases"
SBOM_PATH = "/opt/_internal/sbom.cdx.json"
SBOM_MAX_BYTES = 64 * 1024 * 1024
CATALOG_TYPE = "https://manyforge.dev/attestations/catalog/v1"
# HOST[:PORT]/NAMESPACE, ASCII only (the patterns name their characters: `\d` would take any
# Unicode digit). A host starts and ends with a letter or digit, so nothing reaches a tool as an
# option; the port is checked to be 1..65535.
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_COMPONENT = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
REGISTRY = re.compile(rf"(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?/(?P<namespace>{_COMPONENT}(?:/{_COMPONENT})*)")
RELEASE_TAG = re.compile(r"(?P<day>[0-9]{4}\.[0-9]{2}\.[0-9]{2})-(?P<n>[0-9]{1,9})")


class PublishError(Exception):
    pass


class RecordError(PublishError):
    """A test record that cannot be trusted: the reason, for the line of its image."""


# --- test records ---------------------------------------------------------------------------------

# Defined here rather than in spec.py, whose types describe images.yaml: a record is the image
# tests' verdict on one built image, and only this stage and the tests that write it read it.
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")
SLUG = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
LOCAL_REF = re.compile(r"[a-z0-9][a-z0-9._/-]{0,200}(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?")
RECORD_MAX_BYTES = 16 * 1024  # a record is a few hundred bytes
Count = Annotated[int, Field(strict=True, ge=0, le=1_000_000)]


def _matching(pattern: re.Pattern[str], what: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"not {what}")
        return value

    return check


class TestRecord(BaseModel):
    """The outcome of the image tests on one built image, bound to what they judged: the image
    ID, the target's slug and the spec revision it was built from. Complete only when every
    test collected for the image ran; publishable (`ok`) only when each of them passed."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    image_id: str
    slug: str
    ref: str
    spec_revision: str
    collected: Count
    passed: Count
    failed: Count
    skipped: Count
    complete: bool

    _image_id = field_validator("image_id", "spec_revision")(_matching(IMAGE_ID, "sha256:<64 hex digits>"))
    _slug = field_validator("slug")(_matching(SLUG, "an image slug (ASCII letters, digits, . _ -)"))
    _ref = field_validator("ref")(_matching(LOCAL_REF, "a local image reference"))

    @property
    def ok(self) -> bool:
        return (
            self.complete and self.failed == 0 and self.skipped == 0
            and self.passed == self.collected and self.passed > 0
        )  # fmt: skip

    def verdict(self) -> str:
        return (
            f"{self.passed} of {self.collected} collected tests passed, {self.failed} failed, {self.skipped} skipped, "
            f"complete={self.complete}"
        )


def spec_revision(spec: Spec) -> str:
    """A digest of the matrix and its lock: what the image was built from."""
    return spec.revision


def _record_path(image_id: str) -> Path:
    if not IMAGE_ID.fullmatch(image_id):
        raise RecordError(f"not an image ID: {image_id[:80]!r}")
    return RECORD_DIR / (image_id.split(":", 1)[1] + ".json")


def write_test_record(record: TestRecord) -> Path:
    """Write a record (all or nothing: a new file put in place of any old one)."""
    path = _record_path(record.image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".record-", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(record.model_dump_json(indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _strict_json(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("a key appears twice")
        return dict(pairs)

    return json.loads(text, parse_constant=no_constant, object_pairs_hook=no_duplicates)


def read_test_record(image_id: str) -> TestRecord:
    """The record of an image, read as untrusted input: a regular file (never a link to another
    image's record, never a pipe or a device), small, ASCII JSON of exactly the record's fields
    and types. RecordError says why a record is refused."""
    path = _record_path(image_id)
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise RecordError("has no test record; run the image tests on it first") from None
    except OSError as exc:
        raise RecordError(f"its test record {path} cannot be read ({exc.strerror})") from None
    if stat.S_ISLNK(before.st_mode):
        raise RecordError(f"its test record {path} is a symbolic link; a record is a regular file")
    if not stat.S_ISREG(before.st_mode):
        raise RecordError(f"its test record {path} is not a regular file")
    if before.st_size > RECORD_MAX_BYTES:
        raise RecordError(f"its test record {path} is {before.st_size} bytes; a record has at most {RECORD_MAX_BYTES}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise RecordError(f"its test record {path} cannot be opened ({exc.strerror})") from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise RecordError(f"its test record {path} was replaced while it was read")
        data = b""
        while len(data) <= RECORD_MAX_BYTES and (chunk := os.read(fd, RECORD_MAX_BYTES + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > RECORD_MAX_BYTES:
        raise RecordError(f"its test record {path} grew past {RECORD_MAX_BYTES} bytes")
    try:
        raw = _strict_json(data.decode("ascii"))
    except UnicodeDecodeError:
        raise RecordError(f"its test record {path} is not ASCII") from None
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"its test record {path} is not valid JSON ({str(exc)[:120]})") from None
    try:
        return TestRecord.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors()[:3]]
        raise RecordError(f"its test record {path} is malformed ({'; '.join(problems)})") from None


def record_problem(record: TestRecord, image_id: str, slug: str, revision: str) -> str | None:
    """Why a record does not let this exact image be published (None: it does)."""
    if record.image_id != image_id:
        return f"its test record names image {record.image_id[:19]}, not this one"
    if record.slug != slug:
        return f"its test record is of {record.slug}, not {slug}"
    if record.spec_revision != revision:
        return (
            f"its test record is of spec revision {record.spec_revision[:19]}, not the current {revision[:19]} "
            "(images.yaml or its lock changed since the tests ran: build and test again)"
        )
    if not record.ok:
        return f"did not pass a complete test run ({record.verdict()})"
    return None


def check_record(image_id: str, slug: str, revision: str) -> str | None:
    """Why this image may not be published, in one line (None: its record lets it be)."""
    try:
        record = read_test_record(image_id)
    except RecordError as exc:
        return str(exc)
    return record_problem(record, image_id, slug, revision)


# --- what a release is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    host: str
    namespace: str

    @classmethod
    def parse(cls, value: str) -> Destination:
        m = REGISTRY.fullmatch(value or "")
        port = m.group("port") if m else None
        if m is None or len(value) > 200 or (port is not None and not 1 <= int(port) <= 65535):
            raise PublishError(
                f"--registry {value[:100]!r}: expected HOST[:PORT]/NAMESPACE, e.g. 127.0.0.1:5000/manyforge "
                "(ASCII lower-case letters, digits, . - in the host, a port of 1 to 65535)"
            )
        host = m.group("host") + (f":{port}" if port is not None else "")
        return cls(host, m.group("namespace"))

    @property
    def plain_http(self) -> bool:
        """Loopback registries speak plain HTTP (as the engine allows them to)."""
        return self.host.split(":")[0] in ("127.0.0.1", "localhost")

    def repository(self, name: str) -> str:
        return f"{self.host}/{self.namespace}/{name}"


def check_release_tag(tag: str, option: str = "--tag") -> str:
    if not isinstance(tag, str) or not RELEASE_TAG.fullmatch(tag):
        raise PublishError(f"{option} {str(tag)[:60]!r}: expected a release tag YYYY.MM.DD-N")
    return tag


def check_arches(spec: Spec, image_name: str, arches: list[str]) -> list[str]:
    declared = spec.image(image_name).archs
    unknown = [a for a in arches if a not in declared]
    if unknown:
        raise PublishError(f"--arch {', '.join(repr(a[:30]) for a in unknown)}: {image_name} declares {', '.join(declared)}")
    return arches


def _dated(tag: str, day: str) -> int | None:
    m = RELEASE_TAG.fullmatch(tag)
    return int(m.group("n")) if m and m.group("day") == day else None


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


def _read_sbom(image_id: str) -> dict:
    data = engine.read_image_file(image_id, SBOM_PATH, SBOM_MAX_BYTES)
    try:
        sbom = json.loads(data)
    except (ValueError, RecursionError):
        raise PublishError(f"image {image_id[:19]}: {SBOM_PATH} is not valid JSON") from None
    if not isinstance(sbom, dict) or not isinstance(sbom.get("components", []), list):
        raise PublishError(f"image {image_id[:19]}: {SBOM_PATH} is not a CycloneDX document")
    return sbom


def _sign_once(pinned: str, key: Path, public_key: Path, predicate: dict, predicate_type: str, log) -> None:
    """Sign a pushed manifest and attest a predicate, both by digest, unless a signature and an
    attestation of that type already verify with the key (a rerun of an interrupted publish)."""
    if engine.signed_with(pinned, public_key, predicate_type):
        log(f"  {pinned}: already signed and attested")
        return
    with tempfile.TemporaryDirectory() as tmp:
        predicate_file = Path(tmp) / "predicate.json"
        predicate_file.write_text(json.dumps(predicate))
        engine.cosign_sign(pinned, key)
        engine.cosign_attest(pinned, key, predicate_file, predicate_type)
    log(f"  {pinned}: signed, {predicate_type} attested")


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
    if tag is not None:
        check_release_tag(tag)
    if index_only and tag is None:
        raise PublishError("--index-only needs --tag: the release whose arches to gather")
    chosen = [] if index_only else check_arches(spec, image_name, arches or list(image.archs))
    targets = {arch: resolve_target(spec, image_name, arch) for arch in chosen}
    if not key.is_file():
        raise PublishError(f"--key {key}: no such signing key (cosign generate-key-pair makes one)")
    # Before anything is pushed: the key signs (a wrong password or a file that is no key stops
    # here), and every image is built here and passed its tests, by a record that names it.
    with tempfile.TemporaryDirectory() as tmp:
        public_key = Path(tmp) / "cosign.pub"
        public_key.write_text(engine.cosign_check_key(key))
        return _publish(spec, image_name, chosen, targets, dest, key, public_key, subset, tag, today, log)


def _publish(spec, image_name, chosen, targets: dict[str, Target], dest, key, public_key, subset, tag, today, log) -> dict[str, Any]:
    image = spec.image(image_name)
    image_ids: dict[str, str] = {}
    problems = []
    for arch, target in targets.items():
        try:
            image_ids[arch] = engine.image_id(target.latest_ref)
        except engine.EngineError as exc:
            problems.append(f"{target.slug}: {exc}")
            continue
        problem = check_record(image_ids[arch], target.slug, spec_revision(spec))
        if problem is not None:
            problems.append(f"{target.slug}: image {image_ids[arch][:19]} {problem}")
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

    # Push and sign everything by digest first; tag only once every part of the release is signed,
    # so that a failure anywhere before leaves no new release tag at all (and a rerun finds the
    # same tag free and completes it).
    digests: dict[str, str] = {}
    sboms: dict[str, dict] = {}
    for arch in targets:
        remote = f"{repos[arch]}:{tag}"
        sboms[arch] = _read_sbom(image_ids[arch])
        if engine.remote_config_digest(remote, dest.plain_http) == image_ids[arch]:
            digests[arch] = engine.remote_digest(remote, dest.plain_http)
            log(f"  {remote}: already pushed ({digests[arch]})")
        else:
            digests[arch] = engine.push_image(image_ids[arch], repos[arch], dest.plain_http)
            log(f"  {repos[arch]}@{digests[arch]}: pushed, no tag yet")
        _sign_once(f"{repos[arch]}@{digests[arch]}", key, public_key, sboms[arch], "cyclonedx", log)

    catalog = _catalog(spec, image_name, tag, dest, targets, digests, sboms)
    to_tag = [f"{repos[arch]}@{digests[arch]}" for arch in targets]
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
        index_digest = engine.create_index(index_repo, refs, annotations, dest.plain_http)
        catalog["index"] = {"digest": index_digest, "tags": [tag, "latest"], "arches": sorted(members), "subset": bool(missing)}
        log(f"  {index_repo}@{index_digest}: the index of {', '.join(sorted(members))}")
        _sign_once(f"{index_repo}@{index_digest}", key, public_key, catalog, CATALOG_TYPE, log)
        to_tag.append(f"{index_repo}@{index_digest}")
    # The tag was free when chosen; a publish elsewhere may have taken it while this one pushed.
    taken = [a for a in targets if engine.remote_config_digest(f"{repos[a]}:{tag}", dest.plain_http) not in (None, image_ids[a])]
    if taken:
        raise PublishError(f"{tag} was given to another image of {', '.join(taken)} meanwhile; nothing tagged (run again for the next tag)")
    for pinned in to_tag:  # only now: every tag names a signed manifest
        for name in (tag, "latest"):
            engine.tag(pinned, name, dest.plain_http)
        log(f"  {pinned.partition('@')[0]}:{tag}, latest -> {pinned.partition('@')[2]}")
    out = RELEASE_DIR / image_name / tag
    out.mkdir(parents=True, exist_ok=True)
    (out / "catalog.json").write_text(json.dumps(catalog, indent=1) + "\n")
    log(f"  catalog: {out / 'catalog.json'}")
    if chosen:
        _write_changelog(dest, image_name, chosen, tag, public_key, out, log)
    return catalog


def previous_release(tags: list[str], tag: str) -> str | None:
    """The newest dated release tag older than `tag`."""

    def key(t: str) -> tuple[str, int]:
        m = RELEASE_TAG.fullmatch(t)
        assert m is not None
        return m.group("day"), int(m.group("n"))

    check_release_tag(tag)
    older = [t for t in tags if RELEASE_TAG.fullmatch(t) and key(t) < key(tag)]
    return max(older, key=key, default=None)


def _write_changelog(dest: Destination, image_name: str, arches: list[str], tag: str, public_key: Path, out: Path, log) -> None:
    """The changelog against the previous release of these arches, beside the catalog."""
    repo = dest.repository(f"{image_name}_{arches[0]}")
    previous = previous_release(engine.registry_tags(repo, dest.plain_http), tag)
    if previous is None:
        log("  changelog: first release, nothing to compare with")
        return
    log_data = _changelog(dest, image_name, arches, previous, tag, public_key)
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


def changelog(spec: Spec, registry: str, image_name: str, arches: list[str], old: str, new: str, public_key: Path) -> dict[str, Any]:
    """What changed between two releases, per arch, from their signed SBOM attestations."""
    dest = Destination.parse(registry)
    spec.image(image_name)
    check_release_tag(old, "--from-tag")
    check_release_tag(new, "--to-tag")
    check_arches(spec, image_name, arches)
    if not public_key.is_file():
        raise PublishError(f"--public-key {public_key}: no such file")
    return _changelog(dest, image_name, arches, old, new, public_key)


def _changelog(dest: Destination, image_name: str, arches: list[str], old: str, new: str, public_key: Path) -> dict[str, Any]:
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
