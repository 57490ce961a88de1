"""The image contract beside pypa's: tests/contract.yaml, and README's table made from it.

The data file is the one source: each row says what our images do, what pypa's do, where ours
differ on purpose and why, and which tests check it. README.md's table is written from it
(`invoke contract-table --write`), never by hand; tests/unit/test_contract.py fails when they differ.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import yaml

from manyforge.spec import REPO_ROOT

CONTRACT = REPO_ROOT / "tests" / "contract.yaml"
README = REPO_ROOT / "README.md"
BEGIN = "<!-- contract: generated from tests/contract.yaml by `invoke contract-table --write`; edit that file, not this table -->"
END = "<!-- /contract -->"
ITEM_KEYS = {"what", "ours", "pypa", "differs", "checked"}


class ContractError(ValueError):
    pass


@dataclass(frozen=True)
class Item:
    what: str
    ours: str
    pypa: str
    differs: str
    checked: tuple[str, ...]


@dataclass(frozen=True)
class Contract:
    items: tuple[Item, ...]
    pypa_versions: dict[str, str]
    release_tools: dict[str, dict[str, str]]
    release_tools_why: str
    pypa_packages: dict
    same_as: dict[str, dict[str, str]]
    not_carried: dict[str, dict[str, str]]

    def pypa_package_gaps(self, family: str, image: str, arch: str, carried: set[str], lacks: dict[str, str] | None = None) -> list[str]:
        """pypa's packages for one image x arch that `carried` lacks with no reason given (here,
        or in `lacks`: what the base's repositories do not offer, images.yaml bases.<b>.lacks)."""
        wanted = [*self.pypa_packages["families"][family], *self.pypa_packages["images"].get(image, ())]
        wanted += self.pypa_packages.get(arch, [])
        reasons = {**self.not_carried.get(family, {}), **self.not_carried.get(f"{arch}-{family}", {}), **(lacks or {})}
        same = self.same_as.get(family, {})
        return [p for p in dict.fromkeys(wanted) if same.get(p, p) not in carried and not reasons.get(p, "").strip()]


def load_contract(path: Path = CONTRACT) -> Contract:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ContractError(f"{path.name}: a mapping with an `items` list is expected")
    items = []
    for i, raw in enumerate(data["items"]):
        if not isinstance(raw, dict) or set(raw) - ITEM_KEYS or not {"what", "ours", "pypa", "checked"} <= set(raw):
            raise ContractError(f"{path.name}: items[{i}]: keys what, ours, pypa, checked (and differs) are expected")
        if not raw["checked"] or not all(isinstance(t, str) for t in raw["checked"]):
            raise ContractError(f"{path.name}: items[{i}] ({raw['what']}): `checked` must name at least one test")
        items.append(Item(str(raw["what"]), str(raw["ours"]), str(raw["pypa"]), str(raw.get("differs", "")), tuple(raw["checked"])))
    versions = {str(k): str(v) for k, v in (data.get("pypa_versions") or {}).items()}
    kept = {str(b): {str(k): str(v) for k, v in tools.items()} for b, tools in (data.get("release_tools") or {}).items()}
    mapping = {str(k): {str(a): str(b) for a, b in (v or {}).items()} for k, v in (data.get("same_as") or {}).items()}
    reasons = {str(k): {str(a): str(b) for a, b in (v or {}).items()} for k, v in (data.get("not_carried") or {}).items()}
    return Contract(tuple(items), versions, kept, str(data.get("release_tools_why", "")), dict(data.get("pypa_packages") or {}), mapping, reasons)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _test_name(ref: str) -> str:
    path, _, function = ref.partition("::")
    return f"`{Path(path).stem}::{function}`"


def render_table(contract: Contract) -> str:
    lines = [
        "| what | ours | pypa/manylinux | differs on purpose because | checked by |",
        "|---|---|---|---|---|",
    ]
    for item in contract.items:
        checked = ", ".join(_test_name(t) for t in item.checked)
        lines.append(f"| {_cell(item.what)} | {_cell(item.ours)} | {_cell(item.pypa)} | {_cell(item.differs) or '—'} | {checked} |")
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str, contract: Contract) -> str:
    """README's text with the table between the markers replaced by the generated one."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ContractError(f"README.md: expected the markers {BEGIN!r} and {END!r} once each, in that order")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{render_table(contract)}{END}{tail}"


def missing_tests(contract: Contract, root: Path = REPO_ROOT) -> list[str]:
    """Every `checked` reference whose test function does not exist."""
    defined: dict[str, set[str]] = {}
    missing = []
    for item in contract.items:
        for ref in item.checked:
            path, sep, function = ref.partition("::")
            if not sep or not path.startswith("tests/") or not path.endswith(".py"):
                missing.append(f"{item.what}: {ref!r} is not tests/<dir>/<file>.py::<test function>")
                continue
            if path not in defined:
                file = root / path
                tree = ast.parse(file.read_text(encoding="utf-8")) if file.is_file() else ast.Module(body=[], type_ignores=[])
                defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
            if function not in defined[path]:
                missing.append(f"{item.what}: {ref} does not exist")
    return missing
