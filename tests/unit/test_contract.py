"""README's contract table is generated from tests/contract.yaml, and every row of that file
names tests that exist (the table says what the tests check, not what someone wrote)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from manyforge.contract import BEGIN, END, ContractError, load_contract, missing_tests, readme_with_table, render_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_with_table(readme, load_contract()) == readme, "run `invoke contract --write`"
    # The table sits under its heading, and holds one row per item.
    section = readme[readme.index("### The image contract, beside pypa's"):]
    table = section[section.index(BEGIN):section.index(END)]
    assert table.count("\n| ") == len(load_contract().items) + 1


def test_every_row_names_existing_tests():
    contract = load_contract()
    assert not missing_tests(contract)
    assert all(item.checked for item in contract.items)


def test_a_changed_row_or_a_missing_test_is_found(tmp_path):
    contract = load_contract()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    changed = replace(contract, items=(replace(contract.items[0], ours="something else"), *contract.items[1:]))
    assert readme_with_table(readme, changed) != readme
    assert "something else" in render_table(changed)
    ghost = replace(contract, items=(replace(contract.items[0], checked=("tests/unit/test_render.py::test_no_such_test",)),))
    assert missing_tests(ghost) == [f"{contract.items[0].what}: tests/unit/test_render.py::test_no_such_test does not exist"]
    with pytest.raises(ContractError):
        readme_with_table(readme.replace(END, ""), contract)


def test_pipes_in_a_cell_do_not_split_the_row():
    contract = load_contract()
    row = render_table(replace(contract, items=(replace(contract.items[0], ours="a|b"),))).splitlines()[2]
    assert row.count(" | ") == 4 and "a\\|b" in row


def test_contract_task_checks_and_fails_on_a_difference(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "invoke", "contract"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "current" in proc.stdout
