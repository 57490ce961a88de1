"""The one quoting point of every rendered file: each context a value can land in has one filter.

The Dockerfile templates are rendered by an environment (`template_environment`) whose
`finalize` hook refuses every value that did not pass one of these filters: a plain string,
number or list reaching `{{ ... }}` is a render error, not a Dockerfile. So a field added to
images.yaml later cannot reach a shell, a `--mount` option, a `FROM` line or a label unquoted:
whoever writes it into a template must say which context it lands in.

The filters return `Quoted`, a string that the template engine's autoescaping treats as already
safe. Autoescaping is on only for that bookkeeping: HTML escaping never applies, since nothing
but `Quoted` and the output of the templates' own macros passes `finalize`, and the filters
that would escape or mark text (`e`, `escape`, `safe`, `replace`, `format`, ...) are removed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup


class Quoted(Markup):
    """Text already escaped for the context it is written into."""


class Literal(Quoted):
    """Text the template itself spells out: trusted, and neutral when joined with `~`."""


class UnquotedValue(jinja2.TemplateError):
    """A template wrote a value without saying which context it lands in."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A token every Dockerfile context takes as it is: no space, quote, `$`, `,`, `=`, glob or backslash.
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+:@/-]*")
# A Docker image reference: [host[:port]/]name[/name...][:tag][@sha256:digest]
REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # a path component of an image name
# A registry host is told from a first path component by a `.` or a port, or is localhost.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
REGISTRY_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})+(?::[0-9]{{1,5}})?|{_LABEL}:[0-9]{{1,5}}|localhost)"
_REF_HOST = rf"(?:{REGISTRY_HOST}/)?"
IMAGE_REF = re.compile(
    rf"{_REF_HOST}{REF_COMPONENT}(?:/{REF_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?"
)
_STAGE = re.compile(r"[a-z_][a-z0-9_.-]*")
# A path in a COPY line or a --mount field: absolute or relative, no `.`/`..`/dot components.
_PATH_COMPONENT = r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*"
_PATH = re.compile(rf"/?(?:{_PATH_COMPONENT})(?:/{_PATH_COMPONENT})*/?|/")


def _text(value: Any, context: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UnquotedValue(f"{context}: expected a string, got {type(value).__name__} {str(value)[:80]!r}")
    text = str(value)
    if not text.isascii():
        raise UnquotedValue(f"{context}: non-ASCII text refused: {text[:80]!r}")
    return text


def sh(value: Any) -> Quoted:
    """One shell word (a RUN line is run by /bin/sh -c): quoted unless it needs none."""
    text = _text(value, "shell word")
    if _CONTROL.search(text):
        raise UnquotedValue(f"shell word: control character refused in {text[:80]!r}")
    return Quoted(shlex.quote(text))


def shjoin(values: Iterable[Any]) -> Quoted:
    """Several shell words, one space apart."""
    return Quoted(" ".join(sh(v) for v in _items(values)))


def shwrap(values: Iterable[Any], width: int = 80, indent: str = "        ") -> Quoted:
    """Shell words wrapped onto continuation lines of about `width` columns."""
    lines: list[list[str]] = [[]]
    for word in (sh(v) for v in _items(values)):
        if lines[-1] and len(" ".join([*lines[-1], word])) > width:
            lines.append([])
        lines[-1].append(word)
    return Quoted(f" \\\n{indent}".join(" ".join(line) for line in lines))


def _items(values: Any) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise UnquotedValue(f"expected a list of words, got {type(values).__name__}")
    return list(values)


def word(value: Any) -> Quoted:
    """A token written bare where no quoting exists (instruction arguments, stage prefixes,
    package names in a comment): refused unless it needs none. The empty word is allowed."""
    text = _text(value, "word")
    if text and not _WORD.fullmatch(text):
        raise UnquotedValue(f"word: {text[:80]!r} is not a plain token ([A-Za-z0-9_.+:@/-])")
    return Quoted(text)


def path(value: Any) -> Quoted:
    """A path in a COPY line or a BuildKit --mount field (CSV: `,` and `=` separate options)."""
    text = _text(value, "path")
    if not _PATH.fullmatch(text):
        raise UnquotedValue(f"path: {text[:80]!r} is not a plain path without ./.. or dot-components")
    return Quoted(text)


def ref(value: Any) -> Quoted:
    """An image reference in a FROM line."""
    text = _text(value, "image reference")
    if not IMAGE_REF.fullmatch(text):
        raise UnquotedValue(f"image reference: {text[:100]!r} is not a Docker image reference")
    return Quoted(text)


def stage(value: Any) -> Quoted:
    """A build stage's name (FROM ... AS, --from=)."""
    text = _text(value, "stage name")
    if not _STAGE.fullmatch(text):
        raise UnquotedValue(f"stage name: {text[:80]!r} is not a stage name")
    return Quoted(text)


def dq(value: Any) -> Quoted:
    """A double-quoted value of ENV or LABEL: the Dockerfile expands `$` there, and a newline
    would end the instruction."""
    text = _text(value, "ENV/LABEL value")
    if _CONTROL.search(text):
        raise UnquotedValue(f"ENV/LABEL value: control character refused in {text[:80]!r}")
    return Quoted('"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"')


def env(value: Any) -> Quoted:
    """An ENV value: bare when it is a plain token (as Dockerfiles usually write them), else `dq`."""
    text = _text(value, "ENV value")
    return Quoted(text) if re.fullmatch(r"[A-Za-z0-9_./:+@%-]*", text) else dq(text)


def comment(value: Any) -> Quoted:
    """Text inside a `#` comment: one line, nothing that could start an instruction."""
    text = _text(value, "comment")
    if _CONTROL.search(text):
        raise UnquotedValue(f"comment: control character refused in {text[:80]!r}")
    return Quoted(text)


FILTERS = {
    "sh": sh, "shjoin": shjoin, "shwrap": shwrap, "word": word, "path": path, "ref": ref,
    "stage": stage, "dq": dq, "env": env, "comment": comment,
}  # fmt: skip
# Filters that keep a Quoted value Quoted (or give a plain value, which finalize refuses).
_KEPT_FILTERS = {"trim", "list", "length", "first", "last", "sort", "unique", "default", "d"}


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup):  # a filter's Quoted, a template literal, or a macro's output
        return value
    if isinstance(value, jinja2.Undefined):  # `{{ x if c }}` with c false: empty (Strict raises)
        return Quoted(str(value))
    if value is None:
        return Quoted("")
    raise UnquotedValue(
        f"a value reached the template without a context filter ({' '.join(sorted(FILTERS))}): {str(value)[:100]!r}"
    )


class _CodeGenerator(CodeGenerator):
    """Template literals are Quoted (the template's author wrote them); `~` refuses to join a
    Quoted part with one that is not (markupsafe would HTML-escape it, which quotes nothing)."""

    def visit_Const(self, node: nodes.Const, frame: Frame) -> None:
        if isinstance(node.value, str):
            self.write(f"environment.literal({node.value!r})")
        else:
            super().visit_Const(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.quoted_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Environment(SandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "%", "*"})

    @staticmethod
    def literal(text: str) -> Literal:
        return Literal(text)

    @staticmethod
    def quoted_concat(parts: tuple[Any, ...]) -> Any:
        """Literals join either kind; a filtered part and an unfiltered one never join (the
        result would look quoted and be raw). Without a filtered part the result is plain."""
        plain = [p for p in parts if not isinstance(p, Markup)]
        filtered = [p for p in parts if isinstance(p, Markup) and not isinstance(p, Literal)]
        if plain and filtered:
            raise UnquotedValue(f"`~` joins quoted text with a value that passed no context filter: {str(plain[0])[:100]!r}")
        text = "".join(str.__str__(p) if isinstance(p, str) else str(p) for p in parts)
        return text if plain else Quoted(text)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if isinstance(left, Markup) or isinstance(right, Markup):
            raise UnquotedValue(f"`{operator}` on template text: use `~` and context filters")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # String methods (format, join, replace, ...) would build text no filter has seen.
        return not isinstance(obj, str) and super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> None:
        return None

    def join_path(self, template: str, parent: str) -> str:
        """A template name built with `~` is Quoted; Jinja writes the name into the imported
        template's code by repr(), which must be a plain string's (`Quoted('...')` is no name
        there: an import compiled first from a template failed with a NameError)."""
        return str.__str__(template)


def template_environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """The environment every Dockerfile is rendered with (see the module's docstring)."""
    environment = _Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=True,  # bookkeeping of what is Quoted; see the module docstring
        finalize=_finalize,
    )
    environment.filters = {name: f for name, f in environment.filters.items() if name in _KEPT_FILTERS}
    environment.filters.update(FILTERS)
    return environment
