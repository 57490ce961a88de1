"""Test records are untrusted input to `invoke publish`: a file in build/test-records that anyone
(or any bug) may have written. Each hostile record here is refused with a one-line reason, and
publish pushes nothing (no Docker: the engine's calls are replaced by stand-ins that fail the
test if publish gets as far as pushing)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from manyforge import engine, publish
from manyforge.spec import DEFAULT_SPEC, load_spec
from manyforge.target import resolve_target

SPEC = load_spec(DEFAULT_SPEC)
IMAGE = "manylinux_2_36"
IMAGE_ID = "sha256:" + "ab" * 32
OTHER_ID = "sha256:" + "cd" * 32
SLUG = resolve_target(SPEC, IMAGE, "x86_64").slug
REVISION = SPEC.revision
GOOD = {
    "image_id": IMAGE_ID, "slug": SLUG, "ref": f"manyforge/{SLUG}:2026.11.30-1", "spec_revision": REVISION,
    "collected": 40, "passed": 40, "failed": 0, "skipped": 0, "complete": True,
}  # fmt: skip


@pytest.fixture(autouse=True)
def records(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(publish, "RECORD_DIR", tmp_path / "records")
    (tmp_path / "records").mkdir()
    return tmp_path / "records"


def path_of(image_id: str, records: Path) -> Path:
    return records / (image_id.split(":", 1)[1] + ".json")


def write_raw(records: Path, text: str | bytes, image_id: str = IMAGE_ID) -> Path:
    path = path_of(image_id, records)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def refusal(image_id: str = IMAGE_ID, slug: str = SLUG, revision: str = REVISION) -> str:
    problem = publish.check_record(image_id, slug, revision)
    assert problem is not None, "the record was accepted"
    assert "\n" not in problem and len(problem) < 400, problem
    return problem


def test_a_good_record_round_trips_and_is_accepted(records):
    path = publish.write_test_record(publish.TestRecord(**GOOD))
    assert path == path_of(IMAGE_ID, records) and path.is_file() and not path.is_symlink()
    assert sorted(p.name for p in records.iterdir()) == [path.name]  # no partial file left
    assert publish.read_test_record(IMAGE_ID) == publish.TestRecord(**GOOD)
    assert publish.check_record(IMAGE_ID, SLUG, REVISION) is None


def test_no_record_is_refused():
    assert refusal() == "has no test record; run the image tests on it first"


# Values the JSON may hold that a lenient reader would take: each is refused, none is a traceback.
HOSTILE_VALUES = [
    ("complete", "false"),  # a non-empty string is truthy
    ("complete", 1),
    ("complete", None),
    ("passed", True),  # bool is an int in Python
    ("passed", "3"),  # was a TypeError traceback
    ("passed", 3.0),
    ("passed", -1),
    ("passed", 10**7),
    ("passed", [40]),
    ("failed", False),
    ("skipped", "0"),
    ("collected", 40.5),
    ("image_id", IMAGE_ID + "\n"),  # `$` would match before a final newline
    ("image_id", IMAGE_ID.upper()),
    ("image_id", "sha256:" + "ab" * 31),
    ("image_id", 12),
    ("slug", SLUG + "\n"),
    ("slug", SLUG.replace("2", "\u0662")),  # an Arabic-Indic two: a Unicode \d would take it
    ("slug", "-" + SLUG),
    ("slug", ""),
    ("spec_revision", REVISION[:-1] + "\u0661"),
    ("spec_revision", "r"),
    ("ref", "--help"),
    ("ref", "manyforge/x:1 ; rm -rf /"),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE_VALUES, ids=[f"{f}={v!r}"[:40] for f, v in HOSTILE_VALUES])
def test_a_field_of_the_wrong_type_or_form_is_refused(records, field, value):
    write_raw(records, json.dumps({**GOOD, field: value}))
    assert refusal().endswith(")") and "is malformed" in refusal() and field in refusal()


@pytest.mark.parametrize("constant", ["Infinity", "-Infinity", "NaN"])
def test_json_constants_outside_the_standard_are_refused(records, constant):
    write_raw(records, json.dumps(GOOD).replace('"passed": 40', f'"passed": {constant}'))
    assert "is not valid JSON" in refusal()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        "null",
        json.dumps([GOOD]),
        json.dumps({k: v for k, v in GOOD.items() if k != "skipped"}),  # a count left out is not 0
        json.dumps({**GOOD, "ok": True}),  # nothing beyond the record's fields
        json.dumps(GOOD)[:-1] + ', "passed": 40}',  # a key twice: which one would count?
        "[" * 8000 + "]" * 8000,  # nesting deeper than the parser's stack, within the size bound
        json.dumps(GOOD) + " trailing",
    ],
    ids=["empty", "truncated", "list", "null", "list-of-record", "missing-field", "extra-field", "duplicate-key", "deep", "trailing"],
)
def test_a_malformed_document_is_refused(records, text):
    write_raw(records, text)
    assert "is not valid JSON" in refusal() or "is malformed" in refusal()


def test_non_ascii_bytes_are_refused(records):
    write_raw(records, json.dumps(GOOD).encode().replace(b'"ref"', b'"r\xc3\xa9f"'))
    assert "is not ASCII" in refusal()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image_id": OTHER_ID}, f"its test record names image {OTHER_ID[:19]}, not this one"),
        ({"slug": "manylinux_2_31_x86_64"}, f"its test record is of manylinux_2_31_x86_64, not {SLUG}"),
        ({"slug": SLUG + "-partial"}, f"its test record is of {SLUG}-partial, not {SLUG}"),
        ({"spec_revision": "sha256:" + "0" * 64}, "its test record is of spec revision sha256:000000000000, not the current"),
    ],
    ids=["other-image", "other-slug", "partial-variant", "other-revision"],
)
def test_a_record_of_something_else_is_refused(records, change, reason):
    # Under this image's name, whoever copied it there: a record speaks for what it names.
    write_raw(records, publish.TestRecord(**{**GOOD, **change}).model_dump_json())
    assert refusal().startswith(reason)


@pytest.mark.parametrize(
    "change",
    [{"failed": 1}, {"skipped": 1}, {"passed": 39}, {"complete": False}, {"passed": 0, "collected": 0}, {"passed": 39, "failed": 1}],
    ids=["failed", "skipped", "one-did-not-run", "incomplete", "nothing-ran", "one-failed"],
)
def test_a_run_that_is_not_complete_and_passing_is_refused(change):
    record = publish.TestRecord(**{**GOOD, **change})
    assert not record.ok
    publish.write_test_record(record)
    assert refusal().startswith("did not pass a complete test run (")


def test_a_symbolic_link_to_another_images_good_record_is_refused(records):
    other = publish.write_test_record(publish.TestRecord(**{**GOOD, "image_id": OTHER_ID}))
    path_of(IMAGE_ID, records).symlink_to(other)
    assert "is a symbolic link" in refusal()
    # Also when the link's target is a record naming this very image: a record is a file.
    publish.write_test_record(publish.TestRecord(**GOOD))  # replaces the link itself, not its target
    assert not path_of(IMAGE_ID, records).is_symlink() and publish.read_test_record(OTHER_ID).image_id == OTHER_ID
    os.replace(path_of(IMAGE_ID, records), records / "elsewhere.json")
    path_of(IMAGE_ID, records).symlink_to(records / "elsewhere.json")
    assert "is a symbolic link" in refusal()


def test_a_dangling_link_is_refused(records):
    path_of(IMAGE_ID, records).symlink_to(records / "nowhere.json")
    assert "is a symbolic link" in refusal()


def test_a_fifo_is_refused_without_waiting_for_a_writer(records):
    os.mkfifo(path_of(IMAGE_ID, records))
    assert "is not a regular file" in refusal()


def test_a_directory_is_refused(records):
    path_of(IMAGE_ID, records).mkdir()
    assert "is not a regular file" in refusal()


def test_a_huge_record_is_refused_without_reading_it(records):
    with path_of(IMAGE_ID, records).open("wb") as fh:
        fh.truncate(8 << 30)  # sparse: 8 GiB that would exhaust memory if read
    assert f"is {8 << 30} bytes; a record has at most" in refusal()


def test_a_record_padded_past_the_bound_is_refused(records):
    write_raw(records, json.dumps(GOOD) + " " * publish.RECORD_MAX_BYTES)
    assert "a record has at most" in refusal()


def test_an_image_id_that_is_not_one_is_refused_before_any_path_is_made():
    for bad in ["sha256:../../etc/passwd", "../" + IMAGE_ID, IMAGE_ID + "/x", ""]:
        assert refusal(image_id=bad).startswith("not an image ID")
    with pytest.raises(publish.RecordError):
        publish.write_test_record(publish.TestRecord.model_construct(**{**GOOD, "image_id": "sha256:../x"}))


def test_the_model_refuses_what_the_reader_refuses():
    for field, value in HOSTILE_VALUES:
        with pytest.raises(ValueError):
            publish.TestRecord(**{**GOOD, field: value})


def test_publish_refuses_hostile_records_one_line_per_image_and_pushes_nothing(records, tmp_path, monkeypatch):
    """Through publish itself: two arches, each with a record that must not let it through."""
    ids = {"x86_64": IMAGE_ID, "i686": OTHER_ID}
    monkeypatch.setattr(engine, "image_id", lambda ref: ids["i686" if "_i686:" in ref else "x86_64"])
    monkeypatch.setattr(engine, "cosign_check_key", lambda key: "-----BEGIN PUBLIC KEY-----\n")

    def no_registry(*args, **kwargs):
        raise AssertionError("publish reached the registry with records it must refuse")

    for name in ("push_image", "tag", "create_index", "registry_tags", "remote_config_digest", "cosign_sign", "cosign_attest"):
        monkeypatch.setattr(engine, name, no_registry)
    key = tmp_path / "cosign.key"
    key.write_text("stand-in")
    write_raw(records, json.dumps({**GOOD, "complete": "false"}))  # x86_64: a string where a bool belongs
    i686_slug = resolve_target(SPEC, IMAGE, "i686").slug
    other = publish.write_test_record(publish.TestRecord(**{**GOOD, "image_id": OTHER_ID, "slug": i686_slug, "skipped": 1}))
    with pytest.raises(publish.PublishError) as caught:
        publish.publish(SPEC, IMAGE, ["x86_64", "i686"], "127.0.0.1:5000/ns", key)
    lines = str(caught.value).splitlines()
    assert lines[0] == "nothing pushed:" and len(lines) == 3, lines
    assert lines[1].startswith(f"  {SLUG}: image {IMAGE_ID[:19]} its test record ") and "complete: Input should be a valid boolean" in lines[1]
    verdict = "40 of 40 collected tests passed, 0 failed, 1 skipped, complete=True"
    assert lines[2] == f"  {i686_slug}: image {OTHER_ID[:19]} did not pass a complete test run ({verdict})"
    # The x86_64 image pointing at i686's record through a link fares no better.
    path_of(IMAGE_ID, records).unlink()
    path_of(IMAGE_ID, records).symlink_to(other)
    with pytest.raises(publish.PublishError, match=rf"  {SLUG}: image \S+ its test record \S+ is a symbolic link"):
        publish.publish(SPEC, IMAGE, ["x86_64"], "127.0.0.1:5000/ns", key)
