"""Hostile values in images.yaml never reach a Dockerfile raw.

Every string of the real images.yaml is replaced, one at a time, by hostile values (shell
substitutions, quotes, newlines, `..`, CSV separators, non-ASCII), alone and inside a value of
the original's shape. Each edited matrix is either refused by validation, or every Dockerfile it
renders (every image, arch and variant) is the benign render with the value appearing only as
one quoted argument (or in a comment line): replacing the quoted hostile value by the quoted
original gives back the benign render exactly.

Then the quoting environment itself: a template that writes a value without a context filter,
or mixes raw text into quoted text, is a render error.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import jinja2
import pytest
import yaml

from manyforge import quoting
from manyforge.render import render_dockerfile, write_packages_check
from manyforge.spec import DEFAULT_SPEC, Spec, SpecError, load_lock, lock_path_default, spec_from_data
from manyforge.target import resolve_target

RAW = yaml.safe_load(DEFAULT_SPEC.read_text())
LOCK_PATH = lock_path_default()
LOCK = load_lock(LOCK_PATH)
HOSTILE = [
    "$(touch${IFS}/tmp/PWNED)",
    "`id`",
    "a;id",
    "a|id",
    "a&&id",
    "a>b",
    "x\nRUN id",
    "a b",
    '"q"',
    "'q'",
    "${HOME}",
    "..",
    ".lock",
    "x,target=/",
    "x=y",
    "\\n",
    "é",
]


def strings(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(key path, value) of every string leaf."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, (*path, i))
    elif isinstance(node, str):
        yield path, node


def with_value(path: tuple[Any, ...], value: str) -> dict:
    data = copy.deepcopy(RAW)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def variants(original: str, hostile: str) -> list[str]:
    """The hostile value alone, appended, and as a URL's path component or file name."""
    out = [hostile, original + hostile]
    if original.startswith("https://"):
        head, _, name = original.rpartition("/")
        out += [f"{head}/{hostile}", f"{head}/{hostile}/{name}"]
    return out


def renders(spec: Spec) -> dict[str, str]:
    """Every Dockerfile of the matrix (all images, arches, base and toolchain variants), and
    every packages-check Dockerfile, by name."""
    out = {}
    for name, image in spec.images.items():
        for base in (image.base, *image.base_variants):
            for toolchain in (image.toolchain, *image.toolchain_variants):
                for arch in image.archs:
                    if arch not in spec.data.bases[base].archs:
                        continue
                    target = resolve_target(spec, name, arch, base=base, toolchain=toolchain)
                    out[target.slug] = render_dockerfile(target)
    return out


BENIGN = renders(spec_from_data(RAW, DEFAULT_SPEC, LOCK, LOCK_PATH))


METACHARACTERS = set("$`;|&<>(){}'\"\\ \n")


def instructions(text: str) -> list[tuple[str, str]]:
    """(keyword, whole instruction) of a Dockerfile, comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    continued = False
    for line in text.split("\n"):
        if not continued and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if continued:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
        else:
            out.append((line.split(" ", 1)[0], line))
        continued = line.endswith("\\")
    return out


def quote_states(text: str) -> list[str]:
    """Per character: '' outside quotes, "'" inside single quotes, '"' inside double quotes."""
    states, state, escaped = [], "", False
    for ch in text:
        if escaped:
            escaped = False
        elif state == "" and ch in "'\"":
            state = ch
        elif state == "" and ch == "\\" or state == '"' and ch == "\\":
            escaped = True
        elif ch == state:
            state = ""
            states.append("'" if ch == "'" else '"')
            continue
        states.append(state)
    return states


def assert_only_quoted(rendered: str, benign: str, hostile: str, where: str) -> None:
    """The render has the benign render's instructions, and the hostile part appears only
    inside quotes: single quotes (a shell word), or double quotes where Docker itself reads them
    (ENV, LABEL); never in a --mount option, whose CSV knows no shell quoting."""
    got, want = instructions(rendered), instructions(benign)
    assert [k for k, _ in got] == [k for k, _ in want], f"{where}: the instructions changed"
    for keyword, text in got:
        if hostile in ("..", ".lock"):
            parts = re.split(r"[\s,=/'\"]+", text)
            assert ".." not in parts and ".lock" not in parts, f"{where}: {hostile!r} became a path component in {text[:200]!r}"
            continue
        if not set(hostile) & METACHARACTERS:
            continue
        states = quote_states(text)
        for m in re.finditer(re.escape(hostile), text):
            inside = set(states[m.start() : m.end()])
            allowed = {"'", '"'} if keyword in ("ENV", "LABEL") else {"'"}
            assert inside <= allowed, f"{where}: {hostile!r} reached {keyword} unquoted: {text[:300]!r}"
            option = text.rfind(" ", 0, m.start())
            assert not text[option + 1 : m.start()].startswith("--mount="), f"{where}: {hostile!r} reached a --mount option"


LEAVES = list(strings(RAW))


def test_the_corpus_covers_every_string_of_the_matrix():
    assert len(LEAVES) > 150, len(LEAVES)


@pytest.mark.parametrize("path,original", LEAVES, ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else "")
def test_a_hostile_value_is_refused_or_lands_as_one_quoted_argument(path, original):
    refused = accepted = 0
    for hostile in HOSTILE:
        for value in variants(original, hostile):
            try:
                spec = spec_from_data(with_value(path, value), DEFAULT_SPEC, LOCK, LOCK_PATH)
            except SpecError as exc:
                assert str(exc).startswith(DEFAULT_SPEC.name), str(exc)
                refused += 1
                continue
            accepted += 1
            try:
                rendered = renders(spec)
            except (quoting.UnquotedValue, SpecError):
                continue  # refused at render: the value never reached a Dockerfile
            for slug, text in rendered.items():
                assert_only_quoted(text, BENIGN[slug], hostile, f"{slug}: {value!r} at {'.'.join(map(str, path))}")
    assert refused + accepted == len(HOSTILE) * len(variants(original, "x"))


def test_every_render_is_free_of_html_escapes():
    """Autoescaping only keeps track of what is quoted: no HTML entity ever reaches a Dockerfile."""
    for slug, text in BENIGN.items():
        assert not re.search(r"&(amp|lt|gt|quot|#[0-9]+);", text), slug


def test_packages_check_renders_through_the_same_quoting(tmp_path):
    spec = spec_from_data(RAW, DEFAULT_SPEC, LOCK, LOCK_PATH)
    target = resolve_target(spec, "manylinux_2_36", "s390x")
    text = (write_packages_check(target, tmp_path / "ctx", ["libc6-dev", "$(id)"], ["dpkg", "--add-architecture", "a;b"]) / "Dockerfile").read_text()
    assert "'$(id)'" in text and "'a;b'" in text and "$(id) " not in text.replace("'$(id)'", "")


def render_string(source: str, **values: Any) -> str:
    return quoting.template_environment(jinja2.DictLoader({"t": source})).get_template("t").render(**values)


@pytest.mark.parametrize(
    "source",
    [
        "RUN echo {{ x }}",  # no filter
        "RUN echo {{ x ~ 'a' }}",  # still no filter
        "RUN echo {{ (x | sh) ~ y }}",  # quoted text joined with raw text
        "RUN echo {{ (x | sh) + y }}",
        "RUN echo {{ '%s' % y }}",
        "RUN echo {{ [x, y] }}",
        "RUN echo {{ n }}",
    ],
)
def test_a_value_without_a_context_filter_is_a_render_error(source):
    with pytest.raises(quoting.UnquotedValue):
        render_string(source, x="a", y="$(id)", n=3)


@pytest.mark.parametrize(
    "source",
    ["{{ 'a {}'.format(y) }}", "{{ x.replace('a', y) }}", "{{ ' '.join([y]) }}"],
)
def test_string_methods_cannot_build_text_behind_the_filters(source):
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_string(source, x="a", y="$(id)")


@pytest.mark.parametrize("name", ["safe", "e", "escape", "forceescape", "format", "replace", "join", "wordwrap", "indent"])
def test_filters_that_would_mark_or_build_text_are_gone(name):
    with pytest.raises(jinja2.TemplateAssertionError):
        render_string("{{ x | " + name + " }}", x="a")


@pytest.mark.parametrize(
    "source,value,expected",
    [
        ("RUN echo {{ x | sh }}", "$(id)", "RUN echo '$(id)'"),
        ("RUN echo {{ x | shjoin }}", ["a b", "c"], "RUN echo 'a b' c"),
        ('LABEL k={{ x | dq }}', 'a"$HOME\\', 'LABEL k="a\\"\\$HOME\\\\"'),
        ("ENV K={{ x | env }}", "/opt/a b", 'ENV K="/opt/a b"'),
        ("FROM {{ x | ref }}", "127.0.0.1:5000/a/b:t@sha256:" + "0" * 64, "FROM 127.0.0.1:5000/a/b:t@sha256:" + "0" * 64),
        ("{{ 'a ' ~ (x | sh) }}", "b c", "a 'b c'"),
        ("{{ ('/opt/' ~ x) | sh }}", "b c", "'/opt/b c'"),
    ],
)
def test_context_filters_quote_for_their_context(source, value, expected):
    assert render_string(source, x=value) == expected


@pytest.mark.parametrize(
    "source,value",
    [
        ("--mount=source={{ x | path }}", "a,target=/"),
        ("--mount=source={{ x | path }}", "sources/.."),
        ("--mount=source={{ x | path }}", ".lock"),
        ("FROM {{ x | ref }}", "a/../../x@sha256:" + "0" * 64),
        ("FROM {{ x | ref }}", "Upper/x"),
        ("FROM {{ x | stage }}", "a b"),
        ("# {{ x | comment }}", "a\nRUN id"),
        ("RUN {{ x | sh }}", "a\nb"),
        ("LABEL k={{ x | dq }}", "a\nb"),
        ("RUN {{ x | sh }}", "é"),
        ("RUN {{ x | word }}", "$(id)"),
        ("RUN {{ x | sh }}", True),
    ],
)
def test_context_filters_refuse_what_their_context_cannot_hold(source, value):
    with pytest.raises(quoting.UnquotedValue):
        render_string(source, x=value)
