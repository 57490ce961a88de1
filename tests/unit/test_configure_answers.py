"""Configure answers: which checks are taken from the target (read from CPython's own configure),
how they are kept (configure-answers/<base>.json), and how a cross build gets them."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from manyforge import configure_answers
from manyforge.render import recorded_answers, render_dockerfile
from manyforge.sources import SourceCache, cpython_pin
from manyforge.spec import REPO_ROOT, SpecError, load_spec
from manyforge.target import resolve_target

SCRIPT = REPO_ROOT / "docker" / "scripts" / "configure-answers.py"
_spec = importlib.util.spec_from_file_location("configure_answers_script", SCRIPT)
assert _spec and _spec.loader
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

SPEC = load_spec()
# The checks CPython's configure answers only by running a program, which a cross build got
# wrong on every target (the equivalence issue): they must be among the derived ones.
WRONG_WHEN_GUESSED = {"ac_cv_aligned_required", "ac_cv_computed_gotos", "ac_cv_working_tzset", "ac_cv_broken_sem_getvalue"}

# autoconf 2.69 (CPython 3.9/3.10) and 2.71 (3.11+) as they expand AC_CACHE_CHECK + AC_RUN_IFELSE.
AUTOCONF_269 = """
{ $as_echo "$as_me:${as_lineno-$LINENO}: checking for working tzset()" >&5
$as_echo_n "checking for working tzset()... " >&6; }
if ${ac_cv_working_tzset+:} false; then :
  $as_echo_n "(cached) " >&6
else
  if test "$cross_compiling" = yes; then :
  ac_cv_working_tzset=no
else
  cat confdefs.h - <<_ACEOF >conftest.$ac_ext
_ACEOF
if ac_fn_c_try_run "$LINENO"; then :
  ac_cv_working_tzset=yes
else
  ac_cv_working_tzset=no
fi
fi
fi
{ $as_echo "$as_me:${as_lineno-$LINENO}: result: $ac_cv_working_tzset" >&5
$as_echo "$ac_cv_working_tzset" >&6; }
"""
AUTOCONF_271 = """
printf %s "checking for broken sem_getvalue... " >&6; }
if test ${ac_cv_broken_sem_getvalue+y}
then :
  printf %s "(cached) " >&6
else $as_nop
  if test "$cross_compiling" = yes
then :
  ac_cv_broken_sem_getvalue=yes
else $as_nop
if ac_fn_c_try_run "$LINENO"
then :
  ac_cv_broken_sem_getvalue=no
else $as_nop
  ac_cv_broken_sem_getvalue=yes
fi
fi
fi
{ printf "%s\\n" "$as_me:${as_lineno-$LINENO}: result: $ac_cv_broken_sem_getvalue" >&5
printf "%s\\n" "$ac_cv_broken_sem_getvalue" >&6; }
printf %s "checking for sizeof int... " >&6; }
if test ${ac_cv_sizeof_int+y}
then :
  printf %s "(cached) " >&6
else $as_nop
  if ac_fn_c_compute_int "$LINENO" "(long int) (sizeof (int))" "ac_cv_sizeof_int" "$ac_includes_default"
then :
fi
fi
{ printf "%s\\n" "$as_me:${as_lineno-$LINENO}: result: $ac_cv_sizeof_int" >&5
as_ac_File=`printf "%s\\n" "ac_cv_file_/dev/ptmx" | $as_tr_sh`
if test ${ac_cv_file__dev_ptmx+y}
"""


def test_checks_that_run_a_program_are_found_in_both_autoconf_styles():
    found = script.run_test_variables(AUTOCONF_269 + AUTOCONF_271)
    # a compile-only check (sizeof) is not one of them; a file check is
    assert found == {"ac_cv_working_tzset", "ac_cv_broken_sem_getvalue", "ac_cv_file__dev_ptmx"}


@pytest.mark.parametrize("version", ["3.9.2", "3.11.2", "3.13.15"])
def test_cpythons_own_configure_names_the_checks_a_cross_build_guessed_wrong(version, tmp_path):
    """Against the real configure scripts (from the source cache: the default run's image
    builds fetch them; a unit-only run on a fresh machine fetches the three from Debian)."""
    cache = SourceCache()
    pin = cpython_pin(SPEC, version)
    if not cache.valid(pin):
        proc = subprocess.run([sys.executable, "-m", "invoke", "fetch", "--origin", "debian"], cwd=REPO_ROOT, capture_output=True, check=False)
        assert cache.valid(pin), proc.stderr.decode()[-2000:]
    with tarfile.open(cache.path(pin)) as tar:
        member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/configure"))
        configure = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    found = script.run_test_variables(configure)
    assert WRONG_WHEN_GUESSED <= found
    assert {"ac_cv_pthread_is_default", "ac_cv_wchar_t_signed", "ac_cv_file__dev_ptmx"} <= found
    assert not any(name.startswith("ac_cv_sizeof_") for name in found), found


def _configure(*names: str) -> str:
    """A configure with one cached run check per name (autoconf 2.69's expansion)."""
    return "".join(AUTOCONF_269.replace("ac_cv_working_tzset", name) for name in names)


def test_only_those_answers_leave_the_cache(tmp_path):
    (tmp_path / "configure").write_text(_configure(*script.CORE) + AUTOCONF_271)
    cache = "".join(f"{name}=${{{name}=yes}}\n" for name in script.CORE)
    (tmp_path / "config.cache").write_text(
        cache + "ac_cv_sizeof_int=${ac_cv_sizeof_int=4}\n"
        "ac_cv_file__dev_ptmx=${ac_cv_file__dev_ptmx='yes'}\n"
        "ac_cv_env_CC_value=${ac_cv_env_CC_value='s390x-linux-gnu-gcc --sysroot=/x'}\n"
    )
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "derive", str(tmp_path / "configure"), str(tmp_path / "config.cache")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {**dict.fromkeys(script.CORE, "yes"), "ac_cv_file__dev_ptmx": "yes"}


def test_a_run_that_answered_none_of_the_core_checks_fails(tmp_path):
    """configure stopped early, or autoconf changed how it prints results: not an empty record."""
    (tmp_path / "configure").write_text(_configure(*script.CORE))
    (tmp_path / "config.cache").write_text("ac_cv_working_tzset=${ac_cv_working_tzset=yes}\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "derive", str(tmp_path / "configure"), str(tmp_path / "config.cache")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "ac_cv_computed_gotos" in proc.stderr and proc.stdout == ""


def test_answers_from_another_release_that_lack_a_check_are_named(tmp_path):
    (tmp_path / "configure").write_text(_configure(*script.CORE))
    (tmp_path / "a.json").write_text(json.dumps(dict.fromkeys(script.CORE[:2], "yes")))
    out = subprocess.run([sys.executable, str(SCRIPT), "unanswered", str(tmp_path / "configure"), str(tmp_path / "a.json")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.split() == list(script.CORE[2:])


@pytest.mark.parametrize(
    "answers",
    [{"ac_cv_x": "yes; rm -rf /"}, {"ac_cv_x": "$(id)"}, {"x; id": "yes"}, {"ac_cv_x": "a\nb"}, {"ac_cv_x": "`id`"}],
)
def test_a_site_file_is_written_only_from_answers_that_look_like_answers(answers, tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(answers))
    proc = subprocess.run([sys.executable, str(SCRIPT), "site", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "refusing" in proc.stderr and proc.stdout == ""


def test_a_site_file_quotes_what_it_writes(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"ac_cv_c_compiler": "gnu c 12", "ac_cv_working_tzset": "yes"}))
    out = subprocess.run([sys.executable, str(SCRIPT), "site", str(path)], capture_output=True, text=True, check=True).stdout
    assert out == "ac_cv_c_compiler='gnu c 12'\nac_cv_working_tzset=yes\n"
    # and a shell reads back exactly the values
    shown = subprocess.run(["bash", "-c", '. /dev/stdin; echo "$ac_cv_c_compiler"'], input=out, capture_output=True, text=True, check=True).stdout
    assert shown == "gnu c 12\n"


def _record(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "debian12.json").write_text(json.dumps(data))
    return tmp_path


GOOD = {
    "base": "debian12",
    "arches": {
        "s390x": {
            "provenance": {"qemu": "qemu-s390x version 7.2", "base": "debootstrap bookworm"},
            "cpython": {
                "3.13": {"release": "3.13.15", "answers": {"ac_cv_working_tzset": "yes", "ac_cv_pthread_is_default": "yes"}},
                "3.13t": {"release": "3.13.15", "answers": {"ac_cv_working_tzset": "yes"}},
            },
        }
    },
}


def test_recorded_answers_are_found_per_arch_minor_and_build(tmp_path):
    data = configure_answers.load("debian12", _record(tmp_path, GOOD))
    assert configure_answers.for_interpreter(data, "s390x", "3.13.18", False) == {"ac_cv_working_tzset": "yes", "ac_cv_pthread_is_default": "yes"}
    assert configure_answers.for_interpreter(data, "s390x", "3.13.18", True) == {"ac_cv_working_tzset": "yes"}
    assert configure_answers.for_interpreter(data, "s390x", "3.11.2", False) is None
    assert configure_answers.for_interpreter(data, "aarch64", "3.13.18", False) is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["arches"]["s390x"]["cpython"]["3.13"]["answers"].update({"ac_cv_x": "$(id)"}), "answers.ac_cv_x"),
        (lambda d: d["arches"]["s390x"]["cpython"]["3.13"]["answers"].update({"CC": "yes"}), "answers.CC"),
        (lambda d: d["arches"]["s390x"]["cpython"].update({"3.13; id": d["arches"]["s390x"]["cpython"]["3.13"]}), "cpython.3.13; id"),
        (lambda d: d["arches"]["s390x"]["provenance"].update({"qemu": "x\ny"}), "provenance.qemu"),
        (lambda d: d.update({"base": "debian11"}), "names base 'debian11'"),
        (lambda d: d.update({"extra": 1}), "extra"),
    ],
)
def test_a_broken_answers_file_is_refused_with_its_key(tmp_path, edit, message):
    data = json.loads(json.dumps(GOOD))
    edit(data)
    with pytest.raises(SpecError, match="debian12.json") as err:
        configure_answers.load("debian12", _record(tmp_path, data))
    assert message in str(err.value)


def test_a_key_twice_is_refused(tmp_path):
    (tmp_path / "debian12.json").write_text('{"base": "debian12", "base": "debian12", "arches": {}}')
    with pytest.raises(SpecError, match="cannot be read"):
        configure_answers.load("debian12", tmp_path)


def test_merging_keeps_other_arches_and_minors_and_drops_a_same_free_threaded_build():
    old = configure_answers.BaseAnswers.model_validate(GOOD)
    same = {"ac_cv_working_tzset": "yes"}
    new = configure_answers.merged(
        old, "debian12", "s390x", {"qemu": "q"}, {("3.11", "3.11.2", False): same, ("3.13", "3.13.15", True): {**same, "ac_cv_pthread_is_default": "yes"}}
    )
    cpython = new.arches["s390x"].cpython
    assert set(cpython) == {"3.11", "3.13"}  # 3.13t answers as 3.13 now: not kept apart
    lines = configure_answers.differences(old, new, "s390x")
    assert "s390x 3.11 ac_cv_working_tzset: (none) -> yes" in lines
    assert "s390x 3.13t ac_cv_working_tzset: yes -> (none)" in lines


def test_the_recorded_answers_cover_every_cross_built_interpreter_of_their_base():
    """A base with recorded answers (configure-answers/<base>.json; Debian 12's today) has them for
    every interpreter of every image on it that this host cross-compiles and this site can build
    (a release of its minor is served by Debian's archive: a declared fallback): none of those
    builds guesses, and none re-derives in the build. Bases with none recorded, and minors only
    python.org serves (cp310, cp312, cp314, cp315 here), derive theirs in their build until a
    site that reaches python.org records them."""
    recorded = {path.stem for path in configure_answers.ANSWERS_DIR.glob("*.json")}
    assert recorded, "no configure answers are recorded at all"
    missing = []
    for name, image in SPEC.images.items():
        if image.base not in recorded:
            continue
        for arch in image.archs:
            target = resolve_target(SPEC, name, arch, build_host="x86_64")
            if not target.cross_compiles:
                continue
            answers = recorded_answers(target)
            for build in target.interpreter_builds():
                if not SPEC.data.interpreters[build.tag].fallback:
                    continue
                if build.stage not in answers:
                    missing.append(f"{target.slug} {build.tag}")
                elif not WRONG_WHEN_GUESSED <= set(answers[build.stage]):
                    missing.append(f"{target.slug} {build.tag}: lacks {WRONG_WHEN_GUESSED - set(answers[build.stage])}")
    assert not missing, "no recorded configure answers (invoke configure-answers --write): " + ", ".join(missing)


def test_a_cross_build_mounts_its_answers_and_one_without_derives_them(tmp_path):
    target = resolve_target(SPEC, "manylinux_2_36", "s390x")
    text = render_dockerfile(target)
    assert "source=configure-answers/cpython_cp313_cp313.json,target=/build/configure-answers.json" in text
    assert "MANYFORGE_CONFIGURE_ANSWERS=/build/configure-answers.json" in text
    seed = render_dockerfile(resolve_target(SPEC, "musllinux_1_2", "s390x"))
    assert "MANYFORGE_CONFIGURE_ANSWERS" not in seed
    assert "none recorded for this base and arch: found on the target (QEMU) first, in this build" in seed
    derive = render_dockerfile(target, derive_answers=True)
    assert "FROM scratch AS configure_answers" in derive and "MANYFORGE_DERIVE_ANSWERS=/answers/cpython_cp313_cp313.json" in derive
    with pytest.raises(SpecError, match="not cross-compiled"):
        render_dockerfile(resolve_target(SPEC, "manylinux_2_36", "x86_64"), derive_answers=True)


def test_32_bit_targets_run_every_step_under_linux32_on_a_64_bit_host():
    i686 = render_dockerfile(resolve_target(SPEC, "manylinux_2_31", "i686"))
    runtime = i686.split(" AS runtime\n", 1)[1]
    assert runtime.splitlines()[3] == 'SHELL ["linux32", "/bin/sh", "-c"]'
    assert i686.index('SHELL ["linux32"') < re.search(r"^RUN ", i686, re.M).start()  # type: ignore[union-attr]
    for name, arch in (("manylinux_2_36", "x86_64"), ("manylinux_2_36", "s390x")):
        assert "linux32" not in render_dockerfile(resolve_target(SPEC, name, arch)).split("ENTRYPOINT")[0]
