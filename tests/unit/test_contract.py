"""README's contract table is generated from tests/contract.yaml, and every row of that file
names tests that exist (the table says what the tests check, not what someone wrote)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from manyforge.contract_table import BEGIN, END, ContractError, load_contract, missing_tests, readme_with_table, render_table
from manyforge.render import family_layer, final_packages, render_dockerfile
from manyforge.spec import SpecError, load_spec
from manyforge.target import resolve_target

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec()


def test_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_with_table(readme, load_contract()) == readme, "run `invoke contract-table --write`"
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
    proc = subprocess.run([sys.executable, "-m", "invoke", "contract-table"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "current" in proc.stdout


def _runtime_packages(target) -> set[str]:
    """What the image's runtime stage (the final image's base) installs, as rendered."""
    family = vars(family_layer(target.base.family))
    return {*family["runtime_packages"], *target.base.packages, *target.toolchain.packages}


def _image_packages(target) -> set[str]:
    """What the final image carries: the runtime stage's packages and the final stage's own."""
    return _runtime_packages(target) | set(final_packages(target))


TARGETS = [
    resolve_target(SPEC, name, "x86_64" if "x86_64" in image.archs else image.archs[0], base=base)
    for name, image in SPEC.images.items()
    for base in (image.base, *image.base_variants)
]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.slug)
def test_every_image_carries_pypas_packages_or_says_why(target):
    """Read against pypa's lists (install-runtime-packages.sh, recorded in tests/contract.yaml):
    each of its packages for this image is installed by the rendered runtime stage, under its
    own name or the one `same_as` gives, or `not_carried` gives the reason."""
    contract = load_contract()
    carried = _image_packages(target)
    assert carried, target.slug
    gaps = contract.pypa_package_gaps(target.base.family, target.image_name, target.arch, carried, dict(target.base.lacks))
    assert not gaps, f"{target.slug}: pypa's images carry {', '.join(gaps)}; add them or say why in tests/contract.yaml"
    rendered = render_dockerfile(target)
    stages = {
        "runtime": (rendered[rendered.index("AS runtime"):rendered.index("AS build")], _runtime_packages(target)),
        "final": (rendered[rendered.index("AS final"):], set(final_packages(target))),
    }
    for stage, (text, packages) in stages.items():
        for package in packages:
            assert re.search(rf"(?<![\w.+-]){re.escape(package)}(?![\w.+-])", text), (target.slug, stage, package)


def test_a_dropped_package_is_a_gap():
    contract = load_contract()
    target = resolve_target(SPEC, "manylinux_2_34", "x86_64")
    carried = _image_packages(target)
    assert not contract.pypa_package_gaps("dnf", "manylinux_2_34", "x86_64", carried)
    assert contract.pypa_package_gaps("dnf", "manylinux_2_34", "x86_64", carried - {"libxcrypt-compat"}) == ["libxcrypt-compat"]
    assert contract.pypa_package_gaps("dnf", "manylinux_2_34", "x86_64", carried - {"ncurses"}) == ["ncurses"]
    # A package the base lacks, with its reason, is no gap; without the reason it is one.
    assert not contract.pypa_package_gaps("dnf", "manylinux_2_34", "x86_64", carried - {"libnsl"}, {"libnsl": "UBI offers none"})
    assert contract.pypa_package_gaps("dnf", "manylinux_2_34", "x86_64", carried - {"libnsl"}) == ["libnsl"]


@pytest.mark.parametrize(("base", "epel"), [("almalinux8", True), ("almalinux9", True), ("ubi9", False), ("centos7", False)])
def test_epel_is_enabled_as_pypa_enables_it_and_yasm_comes_from_it(base, epel):
    """pypa's install-runtime-packages.sh installs epel-release on EL8/EL9 (every arch but i686 and
    riscv64) and takes yasm from it on x86_64; UBI offers no epel-release, and CentOS 7's archived
    EPEL has no pinnable release package (tests/contract.yaml not_carried)."""
    image = next(name for name, i in SPEC.images.items() if base in (i.base, *i.base_variants))
    target = resolve_target(SPEC, image, "x86_64", base=base)
    rendered = render_dockerfile(target)
    runtime = rendered[rendered.index("AS runtime"):rendered.index("AS build")]
    final = rendered[rendered.index("AS final"):]
    assert ("epel-release" in runtime) == epel, base
    assert ("yasm" in final) == epel, base
    assert "yasm" not in runtime, "a package only users need belongs to the final stage (no interpreter rebuild)"


def test_a_package_the_base_lacks_is_left_out_of_its_final_stage_only():
    """UBI 9 offers no libnsl (images.yaml bases.ubi9.lacks): its image leaves it out; AlmaLinux 9's has it."""
    ubi = render_dockerfile(resolve_target(SPEC, "manylinux_2_34", "x86_64", base="ubi9"))
    alma = render_dockerfile(resolve_target(SPEC, "manylinux_2_34", "x86_64", base="almalinux9"))
    assert "libnsl" not in ubi[ubi.index("AS final"):] and "libnsl" in alma[alma.index("AS final"):]


def test_a_lacking_package_the_family_never_installs_is_refused(tmp_path):
    """A name under `lacks` that the family's final stage does not install would silently do nothing."""
    text = (ROOT / "images.yaml").read_text()
    text = text.replace("      libnsl: \"UBI 9's", "      libnsll: \"UBI 9's", 1)
    (tmp_path / "images.yaml").write_text(text)
    spec = load_spec(tmp_path / "images.yaml")
    with pytest.raises(SpecError, match=r"images.yaml: bases.ubi9.lacks.libnsll: not a package the dnf family's final stage installs"):
        render_dockerfile(resolve_target(spec, "manylinux_2_34", "x86_64", base="ubi9"))
