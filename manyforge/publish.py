"""Stage 5: publish tested images: dated and latest tags, a multi-arch index, signatures, SBOM
attestations, a catalog and a changelog.

Only an image whose exact digest passed a complete run of the image tests is pushed (the tests
write a record per image: tests/image/conftest.py). Every registry and signing operation goes
through the engine; this module decides what to push, under which tag, and what to write.

Before anything is pushed: the key and its password sign; every image has a passing record, and
an SBOM that the catalog and the changelog can read (`Sbom`), of which its line of the catalog is
made; the release tag may be this release's (no arch's dated tag names another image, and an
index already tagged means a complete release that takes no arch it lacks); and every member of
the index that this run does not push verifies, signature and SBOM attestation, with the public
half of the key (the index's catalog is made of those attested SBOMs). Then each image and the
index are pushed by digest under no tag, and signed and attested by digest. No tag ever names an
unsigned manifest.

The workflow's parallel jobs share a tag: a job given `--tag` for some arches makes no index
(unless `--subset`); `--index-only` makes it of every declared arch, once all are pushed.

Tags come last, one call each, and the tagging itself can be interrupted between two of them.
They are set in the order that leaves least behind: the arches' dated tags, then the index's
dated tag, then the `latest` tags. `latest` moves only with an index, for every member of it and
the index together: a run that makes no index (a workflow job of one arch, whose image may still
fail on another arch) sets dated tags only, and the index's run moves each member's `latest`, then
the index's. A kill before the first leaves no new release tag; a kill
later leaves dated tags that each name a signed manifest of this release, and running the same
publish again completes it (it pushes and signs nothing twice, and the tags it sets name what
they already name). A dated tag never moves, the index's included: a publish whose tag names
anything else is refused, and is a new release. `latest` moves only to a release at least as
new as every dated release of its repository.
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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from manyforge import engine, parent
from manyforge.quoting import REF_COMPONENT, REGISTRY_HOST
from manyforge.spec import WORK_DIR, Spec, strict_json
from manyforge.target import AnyTarget, derived_target_of, resolve_target

BUILD_DIR = WORK_DIR
RECORD_DIR = BUILD_DIR / "test-records"
RELEASE_DIR = BUILD_DIR / "releases"
SBOM_PATH = "/opt/_internal/sbom.cdx.json"
SBOM_MAX_BYTES = 64 * 1024 * 1024
SBOM_TYPE = "cyclonedx"
CATALOG_TYPE = "https://manyforge.dev/attestations/catalog/v1"
# HOST[:PORT]/NAMESPACE in the grammar of Docker image references (manyforge.quoting's, ASCII): a
# host is told by a `.` or a port, or is localhost, and starts and ends with a letter or digit, so
# nothing reaches a tool as an option; the port is checked to be 1..65535. No user name, no password.
REGISTRY = re.compile(rf"(?P<host>{REGISTRY_HOST})/(?P<namespace>{REF_COMPONENT}(?:/{REF_COMPONENT})*)")
# The shape of a release tag; `release_key` also checks that its day is a date and N canonical.
RELEASE_TAG = re.compile(r"(?P<day>[0-9]{4}\.[0-9]{2}\.[0-9]{2})-(?P<n>[1-9][0-9]{0,8})")
NEVER_MOVES = "a dated tag never moves; publish a new release"


class PublishError(Exception):
    pass


class RecordError(PublishError):
    """A test record that cannot be trusted: the reason, for the line of its image."""


# --- test records ---------------------------------------------------------------------------------

# Defined here rather than in spec.py, whose types describe images.yaml: a record is the image
# tests' verdict on one built image, and only this stage and the tests that write it read it.
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

    _image_id = field_validator("image_id", "spec_revision")(_matching(engine.DIGEST, "sha256:<64 hex digits>"))
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
    if not engine.DIGEST.fullmatch(image_id):
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
        raw = strict_json(data.decode("ascii"))
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
        if isinstance(value, str) and "@" in value:
            # user:token@host: the value is not echoed (it would show the token).
            raise PublishError("--registry holds a user name or password (USER[:PASSWORD]@): give HOST[:PORT]/NAMESPACE and log in with `docker login`")
        m = REGISTRY.fullmatch(value) if isinstance(value, str) else None
        port = m.group("host").rpartition(":")[2] if m and ":" in m.group("host") else None
        if m is None or len(value) > 200 or (port is not None and not 1 <= int(port) <= 65535):
            raise PublishError(
                f"--registry {str(value)[:100]!r}: expected HOST[:PORT]/NAMESPACE, e.g. 127.0.0.1:5000/manyforge "
                "(a host with a . or a port, or localhost; a port of 1 to 65535; ASCII lower-case letters, digits, "
                "and . _ - between them in the namespace)"
            )
        # Host names are case-insensitive: the references the engine is given are lower-case.
        return cls(m.group("host").lower(), m.group("namespace"))

    @property
    def plain_http(self) -> bool:
        """Loopback registries speak plain HTTP (as the engine allows them to)."""
        return self.host.split(":")[0] in ("127.0.0.1", "localhost")

    def repository(self, name: str) -> str:
        return f"{self.host}/{self.namespace}/{name}"


def release_key(tag: object) -> tuple[dt.date, int] | None:
    """(day, N) of a release tag `YYYY.MM.DD-N` (None for anything else): the one reader of release
    tags, for every option that takes one and every tag read from a registry. The day is a date of
    the calendar, N a positive integer without leading zeros (`-01` would sort apart from `-1`)."""
    m = RELEASE_TAG.fullmatch(tag) if isinstance(tag, str) else None
    if m is None:
        return None
    try:
        day = dt.datetime.strptime(m.group("day"), "%Y.%m.%d").date()
    except ValueError:
        return None
    return day, int(m.group("n"))


def check_release_tag(tag: str, option: str = "--tag") -> str:
    if release_key(tag) is None:
        raise PublishError(f"{option} {str(tag)[:60]!r}: expected a release tag YYYY.MM.DD-N (a date, N from 1, no leading zeros)")
    return tag


@dataclass(frozen=True)
class ReleaseImage:
    """What a release needs to know of an image of the matrix or a derived one: its arches,
    policy, libc and interpreters (a derived image's, as its lock pins its parent)."""

    archs: tuple[str, ...]
    policy: str
    libc: tuple[str, str]
    interpreters: tuple[str, ...]
    derived: bool = False


def release_image(spec: Spec, image_name: str) -> ReleaseImage:
    if image_name in spec.derived:
        d = spec.derived[image_name]
        archs = d.archs or spec.image(d.parent).archs
        lock = parent.load_lock(parent.lock_path_of(spec.source_file))
        facts = [parent.facts_for(lock, image_name, a, str(parent.lock_path_of(spec.source_file))) for a in archs]
        policy = facts[0].pep600_policy
        kind, _, number = policy.partition("_")
        libc = ("glibc" if kind == "manylinux" else "musl", number.replace("_", "."))
        return ReleaseImage(tuple(archs), policy, libc, facts[0].interpreters, derived=True)
    image = spec.image(image_name)
    return ReleaseImage(tuple(image.archs), image.policy, (image.libc.name, image.libc.version), tuple(image.interpreters))


def release_target(spec: Spec, image_name: str, arch: str) -> AnyTarget:
    if image_name in spec.derived:
        lock_file = parent.lock_path_of(spec.source_file)
        return derived_target_of(spec, parent.load_lock(lock_file), str(lock_file), image_name, arch, "x86_64")
    return resolve_target(spec, image_name, arch)


def check_arches(spec: Spec, image_name: str, arches: list[str]) -> list[str]:
    declared = release_image(spec, image_name).archs
    unknown = [a for a in arches if a not in declared]
    if unknown:
        raise PublishError(f"--arch {', '.join(repr(a[:30]) for a in unknown)}: {image_name} declares {', '.join(declared)}")
    return arches


def _dated(tag: str, day: dt.date) -> int | None:
    key = release_key(tag)
    return key[1] if key is not None and key[0] == day else None


def _day(today: dt.date | None) -> dt.date:
    return today or dt.date.today()


def _tag_name(day: dt.date, n: int) -> str:
    return f"{day:%Y.%m.%d}-{n}"


def _tagged(repo: str, tag: str, plain_http: bool) -> str | None:
    """The digest of the manifest a tag of a repository names (an image or an index), or None."""
    if tag not in engine.registry_tags(repo, plain_http):
        return None
    return engine.remote_digest(f"{repo}:{tag}", plain_http)


def _tag_problems(
    dest: Destination, repos: dict[str, str], image_ids: dict[str, str], index_repo: str, tag: str
) -> tuple[list[str], dict[str, str | None]]:
    """Why `tag` cannot be this release's (none: it can), and what each arch's tag names now (the
    image's config digest, "" for a manifest that is no image, None where untagged). A dated tag
    never moves: each arch's must be absent or already this exact image; and once the index's is
    set the release is complete, so a run may only come back to the arches it already holds (an
    arch added later needs a new release)."""
    states: dict[str, str | None] = {}
    for arch, repo in repos.items():
        tagged = tag in engine.registry_tags(repo, dest.plain_http)
        states[arch] = (engine.remote_config_digest(f"{repo}:{tag}", dest.plain_http) or "") if tagged else None
    problems = [f"{repos[a]}:{tag} already names another image" for a, s in states.items() if s not in (None, image_ids[a])]
    if tag in engine.registry_tags(index_repo, dest.plain_http):
        late = [a for a, s in states.items() if s is None]
        if late:
            problems.append(f"the index {index_repo}:{tag} is already released without {', '.join(late)}")
    return problems, states


def choose_tag(dest: Destination, repos: dict[str, str], image_ids: dict[str, str], index_repo: str, day: dt.date) -> str:
    """The release tag `<day>-<N>`. A tag of the day that already holds some of these exact images
    and that this release may complete (`_tag_problems`) is reused (an interrupted publish
    resumes); otherwise N is one more than any tag of the day in the registry (two machines never
    reuse one). A tag whose index is released without one of these arches is never reused."""
    numbers: set[int] = set()
    for repo in [*repos.values(), index_repo]:
        numbers |= {n for t in engine.registry_tags(repo, dest.plain_http) if (n := _dated(t, day)) is not None}
    for n in sorted(numbers, reverse=True):
        tag = _tag_name(day, n)
        problems, states = _tag_problems(dest, repos, image_ids, index_repo, tag)
        if not problems and any(states[a] == image_ids[a] for a in repos):
            return tag
    return _tag_name(day, max(numbers, default=0) + 1)


def next_tag(spec: Spec, image_name: str, registry: str, today: dt.date | None = None) -> str:
    """The next free release tag of an image, for parallel jobs that publish one arch each."""
    dest = Destination.parse(registry)
    image = release_image(spec, image_name)
    repos = [dest.repository(f"{image_name}_{a}") for a in image.archs] + [dest.repository(image_name)]
    day = _day(today)
    numbers = {n for repo in repos for t in engine.registry_tags(repo, dest.plain_http) if (n := _dated(t, day)) is not None}
    return _tag_name(day, max(numbers, default=0) + 1)


# --- SBOMs -------------------------------------------------------------------------------------------------


class SbomProperty(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    name: str
    value: str


class SbomComponent(BaseModel):
    """The fields of a CycloneDX component that the catalog and the changelog read."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    version: str | None = None
    type: str | None = None
    bom_ref: str | None = Field(default=None, alias="bom-ref")
    properties: list[SbomProperty] = []

    @property
    def props(self) -> dict[str, str]:
        return {p.name: p.value for p in self.properties}

    @model_validator(mode="after")
    def _readable(self) -> SbomComponent:
        names = [p.name for p in self.properties]
        if len(set(names)) != len(names):
            raise ValueError(f"component {self.name[:60]!r} has a property twice")
        props = self.props
        if self.name == "cpython" and "manyforge:interpreter" not in props:
            raise ValueError("a cpython component without its manyforge:interpreter property")
        if self.version is None and (self.name == "cpython" or "manyforge:installed-in" in props or self.bom_ref == "toolchain"):
            raise ValueError(f"component {self.name[:60]!r} has no version")
        return self


class Sbom(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    components: list[SbomComponent] = []

    @model_validator(mode="after")
    def _unique(self) -> Sbom:
        for what, names in (
            ("interpreter", [c.props["manyforge:interpreter"] for c in self.components if c.name == "cpython"]),
            ("tool", [c.name for c in self.components if c.props.get("manyforge:installed-in") == "tools"]),
            ("toolchain", [c.name for c in self.components if c.bom_ref == "toolchain"]),
        ):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what} {twice[0][:60]!r} appears twice")
        return self


def parse_sbom(data: Any, where: str) -> Sbom:
    """An SBOM as the catalog and the changelog read it; PublishError in one line naming `where`."""
    if not isinstance(data, dict):
        raise PublishError(f"{where}: not a CycloneDX document (a JSON object)")
    try:
        return Sbom.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in exc.errors()[:3]]
        raise PublishError(f"{where}: not a CycloneDX document this stage reads ({'; '.join(problems)[:400]})") from None


def _read_sbom(image_id: str) -> tuple[dict, Sbom]:
    """The SBOM inside a local image: the document (attested as it is) and what it says."""
    where = f"image {image_id[:19]}: {SBOM_PATH}"
    data = engine.read_image_file(image_id, SBOM_PATH, SBOM_MAX_BYTES)
    try:
        document = strict_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PublishError(f"{where} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise PublishError(f"{where} is not valid JSON ({str(exc)[:120]})") from None
    return document, parse_sbom(document, where)


def _verified_member(repo: str, digest: str, public_key: Path) -> Sbom:
    """A member of the index that this run did not push: its signature and its SBOM attestation
    verify with the key, and the SBOM is one the catalog can read."""
    pinned = f"{repo}@{digest}"
    engine.cosign_verify(pinned, public_key)
    return parse_sbom(engine.verified_sbom(pinned, public_key), f"the SBOM attested on {pinned}")


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _sign_once(pinned: str, key: Path, public_key: Path, predicate: dict, predicate_type: str, log) -> None:
    """Sign a pushed manifest and attest a predicate, both by digest, unless a signature verifies
    with the key and the newest attestation of that type that verifies says exactly this (a rerun of
    an interrupted publish); an attestation saying anything else is followed by this one."""
    try:
        engine.cosign_verify(pinned, public_key)
        signed = True
    except engine.EngineError:
        signed = False
    try:
        attested = engine.verified_attestation(pinned, public_key, predicate_type) == _as_json(predicate)
    except engine.EngineError:
        attested = False
    if signed and attested:
        log(f"  {pinned}: already signed and attested")
        return
    if not signed:
        engine.cosign_sign(pinned, key)
    if not attested:
        with tempfile.TemporaryDirectory() as tmp:
            predicate_file = Path(tmp) / "predicate.json"
            predicate_file.write_text(json.dumps(predicate))
            engine.cosign_attest(pinned, key, predicate_file, predicate_type)
    log(f"  {pinned}: {'signed, ' if not signed else ''}{predicate_type} attested")


def _catalog_entry(spec: Spec, image_name: str, dest: Destination, arch: str, tag: str, sbom: Sbom) -> dict[str, Any]:
    """An arch's line of the catalog; its digest is filled in once it is pushed."""
    image = release_image(spec, image_name)
    components = sbom.components
    return {
        "repository": dest.repository(f"{image_name}_{arch}"),
        "digest": None,
        "tags": [tag],
        "libc": {"name": image.libc[0], "version": image.libc[1]},
        "gcc": next((c.version for c in components if c.bom_ref == "toolchain"), None),
        "interpreters": {c.props["manyforge:interpreter"]: c.version for c in components if c.name == "cpython"},
        "tools": {c.name: c.version for c in components if c.props.get("manyforge:installed-in") == "tools"},
    }


# --- publishing ----------------------------------------------------------------------------------------


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
    allow_omitted: bool = False,
    log=print,
) -> dict[str, Any]:
    """Push the tested images of one image of images.yaml; returns the release's catalog.

    `tag` publishes under a tag chosen beforehand (parallel jobs share one: `next_tag`); it is
    refused if it already names anything else. A run given `tag` makes no index unless it pushes
    every declared arch or `subset` is set: `index_only` (pushing no image) makes the index of
    every declared arch pushed under `tag`, each verified, and fails if one is missing (with
    `subset`: the index of those that are, said in its annotations). An image built without a
    declared interpreter (no origin of its site served it) is published only with `allow_omitted`,
    and the index says which in its annotations (io.manyforge.cpython-omitted).
    """
    dest = Destination.parse(registry)
    image = release_image(spec, image_name)
    if tag is not None:
        check_release_tag(tag)
    if index_only and tag is None:
        raise PublishError("--index-only needs --tag: the release whose arches to gather")
    chosen = [] if index_only else check_arches(spec, image_name, arches or list(image.archs))
    targets = {arch: release_target(spec, image_name, arch) for arch in chosen}
    if not key.is_file():
        raise PublishError(f"--key {key}: no such signing key (cosign generate-key-pair makes one)")
    # Before anything is pushed: the key signs (a wrong password or a file that is no key stops here).
    with tempfile.TemporaryDirectory() as tmp:
        public_key = Path(tmp) / "cosign.pub"
        public_key.write_text(engine.cosign_check_key(key))
        release = _Release(spec, image_name, dest, key, public_key, subset, log, allow_omitted)
        return release.publish(targets, tag, index_only, _day(today))


class _Release:
    """One publish: what it checked before pushing, then pushes, signs and tags."""

    def __init__(self, spec: Spec, image_name: str, dest: Destination, key: Path, public_key: Path, subset: bool, log, allow_omitted: bool = False):
        self.spec, self.image_name, self.dest, self.key, self.public_key, self.subset, self.log = (
            spec, image_name, dest, key, public_key, subset, log)  # fmt: skip
        self.allow_omitted = allow_omitted
        self.declared = list(release_image(spec, image_name).archs)
        self.index_repo = dest.repository(image_name)

    def repo(self, arch: str) -> str:
        return self.dest.repository(f"{self.image_name}_{arch}")

    def publish(self, targets: dict[str, AnyTarget], tag: str | None, index_only: bool, day: dt.date) -> dict[str, Any]:
        spec, dest, log = self.spec, self.dest, self.log
        chosen = list(targets)
        # Every image is built here and passed its tests, by a record that names it; its SBOM is
        # one the catalog reads.
        image_ids: dict[str, str] = {}
        sboms: dict[str, tuple[dict, Sbom]] = {}
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
                continue
            try:
                sboms[arch] = _read_sbom(image_ids[arch])
            except (PublishError, engine.EngineError) as exc:
                problems.append(f"{target.slug}: {exc}")
        if problems:
            raise PublishError("nothing pushed:\n  " + "\n  ".join(problems))

        repos = {arch: self.repo(arch) for arch in chosen}
        given_tag = tag is not None and not index_only  # a job of a release that others complete
        if tag is None:
            tag = choose_tag(dest, repos, image_ids, self.index_repo, day)
        else:
            taken, _ = _tag_problems(dest, repos, image_ids, self.index_repo, tag)
            if taken:
                raise PublishError(f"--tag {tag}: {'; '.join(taken)}; {NEVER_MOVES}")
        log(f"release {self.image_name}:{tag} to {dest.host}/{dest.namespace} ({', '.join(chosen) or 'index only'})")
        catalog: dict[str, Any] = {
            "image": self.image_name, "policy": release_image(spec, self.image_name).policy, "release": tag,
            "registry": f"{dest.host}/{dest.namespace}", "spec_revision": spec_revision(spec),
            "arches": {a: _catalog_entry(spec, self.image_name, dest, a, tag, sboms[a][1]) for a in chosen},
        }  # fmt: skip
        others = self._index_members(chosen, tag, index_only, given_tag)
        if others is not None:  # the index's other members verified: their lines of the catalog
            for arch, (digest, sbom) in others.items():
                catalog["arches"][arch] = _catalog_entry(spec, self.image_name, dest, arch, tag, sbom) | {"digest": digest}
            catalog["arches"] = {a: catalog["arches"][a] for a in self.declared if a in catalog["arches"]}
        omitted = self._omitted(catalog)
        if omitted and not self.allow_omitted:
            raise PublishError(
                "nothing pushed: built without declared interpreters (no origin of the building site served them): "
                + "; ".join(f"{a}: {', '.join(tags)}" for a, tags in omitted.items())
                + "; --allow-omitted publishes them so, said in the index's annotations (io.manyforge.cpython-omitted)"
            )
        if omitted:
            catalog["omitted"] = omitted
            log(f"  publishing without declared interpreters (--allow-omitted): {catalog['omitted']}")

        # Push and sign everything by digest; no tag yet.
        for arch in chosen:
            remote = f"{repos[arch]}:{tag}"
            if engine.remote_config_digest(remote, dest.plain_http) == image_ids[arch]:
                digest = engine.remote_digest(remote, dest.plain_http)
                log(f"  {remote}: already pushed ({digest})")
            else:
                digest = engine.push_image(image_ids[arch], repos[arch], dest.plain_http)
                log(f"  {repos[arch]}@{digest}: pushed, no tag yet")
            catalog["arches"][arch]["digest"] = digest
            _sign_once(f"{repos[arch]}@{digest}", self.key, self.public_key, sboms[arch][0], SBOM_TYPE, log)
        index_digest = None
        if others is not None:
            index_digest = self._make_index(catalog, tag, missing=[a for a in self.declared if a not in catalog["arches"]])

        self._tag(catalog, chosen, repos, image_ids, tag, index_digest)
        out = RELEASE_DIR / self.image_name / tag
        out.mkdir(parents=True, exist_ok=True)
        (out / "catalog.json").write_text(json.dumps(catalog, indent=1) + "\n")
        log(f"  catalog: {out / 'catalog.json'}")
        if chosen:
            try:
                _write_changelog(dest, self.image_name, chosen, tag, self.public_key, out, log)
            except (PublishError, engine.EngineError) as exc:
                # The release is complete and tagged: a changelog that cannot be made is no reason to fail it.
                log(f"  warning: no changelog written: {exc}")
        return catalog

    def _index_members(self, chosen: list[str], tag: str, index_only: bool, given_tag: bool) -> dict[str, tuple[str, Sbom]] | None:
        """The index's members that this run does not push (digest, verified SBOM), or None when
        this run makes no index. Decided, and every such member verified, before anything is pushed."""
        others = [a for a in self.declared if a not in chosen]
        if given_tag and others and not self.subset:
            self.log(f"  index: made by `invoke publish --tag {tag} --index-only` once every arch is pushed under {tag}")
            return None
        present = {a: d for a in others if (d := _tagged(self.repo(a), tag, self.dest.plain_http)) is not None}
        missing = [a for a in others if a not in present]
        if missing and not self.subset:
            if index_only:
                raise PublishError(
                    f"--index-only --tag {tag}: {', '.join(missing)} of {self.image_name} not pushed under {tag}; "
                    "the index needs every declared arch (--subset makes one of those that are)"
                )
            self.log(f"  no index: {', '.join(missing)} not pushed under {tag} (--subset publishes an index of what is)")
            return None
        if not chosen and not present:
            raise PublishError(f"--index-only --tag {tag}: no arch of {self.image_name} is pushed under {tag}")
        verified: dict[str, tuple[str, Sbom]] = {}
        problems: list[str] = []
        for arch, digest in present.items():
            try:
                verified[arch] = (digest, _verified_member(self.repo(arch), digest, self.public_key))
            except (PublishError, engine.EngineError) as exc:
                problems.append(f"{arch}: {exc}")
        if problems:
            raise PublishError(
                f"the index {self.index_repo}:{tag} takes only members signed by this key with their SBOM attested; "
                "nothing pushed:\n  " + "\n  ".join(problems)
            )
        return verified

    def _omitted(self, catalog: dict[str, Any]) -> dict[str, list[str]]:
        """Per arch of the release, the declared interpreters its image does not carry (its SBOM)."""
        declared = release_image(self.spec, self.image_name).interpreters
        out = {}
        for arch, entry in catalog["arches"].items():
            lacking = [t for t in declared if t not in entry["interpreters"]]
            if lacking:
                out[arch] = lacking
        return out

    def _make_index(self, catalog: dict[str, Any], tag: str, missing: list[str]) -> str:
        dest = self.dest
        members = catalog["arches"]
        annotations = {"org.opencontainers.image.title": self.image_name, "org.opencontainers.image.version": tag}
        if missing:
            annotations["io.manyforge.subset"] = ",".join(sorted(members))
        if catalog.get("omitted"):
            annotations["io.manyforge.cpython-omitted"] = ",".join(f"{a}:{'+'.join(tags)}" for a, tags in catalog["omitted"].items())
        refs = [f"{self.repo(a)}@{entry['digest']}" for a, entry in members.items()]
        index_digest = engine.create_index(self.index_repo, refs, annotations, dest.plain_http)
        catalog["index"] = {"digest": index_digest, "tags": [tag], "arches": sorted(members), "subset": bool(missing)}
        self.log(f"  {self.index_repo}@{index_digest}: the index of {', '.join(sorted(members))}")
        _sign_once(f"{self.index_repo}@{index_digest}", self.key, self.public_key, catalog, CATALOG_TYPE, self.log)
        return index_digest

    def _tag(self, catalog, chosen, repos, image_ids, tag: str, index_digest: str | None) -> None:
        """Every part is signed: the dated tags, the arches' first and the index's last, then, with
        an index only, `latest` of each of its members and of the index."""
        dest, log = self.dest, self.log
        # The tag was free when chosen; a publish elsewhere may have taken it while this one pushed.
        taken, _ = _tag_problems(dest, repos, image_ids, self.index_repo, tag)
        pins = {repos[a]: catalog["arches"][a]["digest"] for a in chosen}
        if index_digest is not None:
            pins[self.index_repo] = index_digest
        for repo, digest in pins.items():  # exactly these manifests (the same image may have others)
            current = _tagged(repo, tag, dest.plain_http)
            if current not in (None, digest):
                what = "the index" if repo == self.index_repo else "the manifest"
                taken.append(f"{repo}:{tag} names {what} {current}, not this release's {digest}")
        if taken:
            raise PublishError(f"{tag}: {'; '.join(taken)}; nothing tagged: {NEVER_MOVES}")
        for repo, digest in pins.items():  # the index's dated tag last of them: it completes the release
            engine.tag(f"{repo}@{digest}", tag, dest.plain_http)
            log(f"  {repo}:{tag} -> {digest}")
        if index_digest is None:
            log(f"  latest: not moved; it moves with the index of {tag}, once every arch is in")
            return
        # Every member of the index (those this run pushed and those earlier jobs did), the index last.
        latest = {self.repo(a): entry["digest"] for a, entry in catalog["arches"].items()} | {self.index_repo: index_digest}
        for repo, digest in latest.items():
            newer = _newer_release(repo, tag, dest.plain_http)
            if newer is None:
                engine.tag(f"{repo}@{digest}", "latest", dest.plain_http)
                log(f"  {repo}:latest -> {digest}")
            else:
                log(f"  {repo}:latest stays: {newer} is a newer release than {tag}")


def _newer_release(repo: str, tag: str, plain_http: bool) -> str | None:
    """The newest dated release tag of a repository if it is newer than `tag` (else None)."""
    ours = release_key(tag)
    assert ours is not None
    dated = [(k, t) for t in engine.registry_tags(repo, plain_http) if (k := release_key(t)) is not None]
    newest = max(dated, default=None)
    return newest[1] if newest is not None and newest[0] > ours else None


def previous_release(tags: list[str], tag: str) -> str | None:
    """The newest dated release tag older than `tag`."""
    check_release_tag(tag)
    ours = release_key(tag)
    assert ours is not None
    older = [(k, t) for t in tags if (k := release_key(t)) is not None and k < ours]
    return max(older)[1] if older else None


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


# --- changelog -------------------------------------------------------------------------------------------


def _facts(sbom: dict | Sbom, where: str = "SBOM") -> dict[str, dict[str, str]]:
    """The parts of an SBOM a changelog compares: name -> version per section."""
    model = sbom if isinstance(sbom, Sbom) else parse_sbom(sbom, where)
    out: dict[str, dict[str, str]] = {"interpreters": {}, "tools": {}, "frontend": {}, "toolchain": {}, "packages": {}, "base": {}}
    for c in model.components:
        props = c.props
        where_installed = props.get("manyforge:installed-in")
        version = c.version if c.version is not None else ""
        if c.name == "cpython":
            out["interpreters"][props["manyforge:interpreter"]] = version
        elif where_installed == "tools":
            out["tools"][c.name] = version
        elif where_installed:
            out["frontend"][f"{where_installed}: {c.name}"] = version
        elif c.bom_ref == "toolchain":
            out["toolchain"][props.get("manyforge:toolchain", "gcc")] = version
        elif c.type == "operating-system":
            out["base"] = {k.removeprefix("manyforge:"): v for k, v in props.items()} | {c.name: version}
        else:
            out["packages"][c.name] = version
    return out


def diff_sboms(old: dict | Sbom, new: dict | Sbom) -> dict[str, dict[str, list]]:
    """Per section: added [name, version], removed [name, version], updated [name, old, new]."""
    a, b = _facts(old, "the older SBOM"), _facts(new, "the newer SBOM")
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
    release_image(spec, image_name)
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
        refs = [f"{repo}:{tag}" for tag in (old, new)]
        sboms = [parse_sbom(engine.verified_sbom(ref, public_key), f"the SBOM attested on {ref}") for ref in refs]
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
