"""check-cpython.py's rules that need no interpreter of an image: what sysconfig must say of the
compilers (pypa's modules-check.py rule, in our words), and which standard-library modules are
not imported. The rules run for real in every build and in tests/image (test_completeness.py,
and pypa's own file in test_pypa_reference.py)."""

from __future__ import annotations

import importlib.util
import sys

from manyforge.spec import REPO_ROOT

_spec = importlib.util.spec_from_file_location("check_cpython", REPO_ROOT / "docker" / "scripts" / "check-cpython.py")
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def _vars(cc: str, cxx: str, suffix: str = "") -> dict[str, object]:
    return {"CC": cc, "CXX": cxx, "LDSHARED": f"{cc} -shared{suffix}", "LDCXXSHARED": f"{cxx} -shared{suffix}"}


def test_before_glibc_2_34_a_native_build_names_pthread():
    assert check.compiler_problems(_vars("gcc -pthread", "g++ -pthread"), (2, 31), False) == []
    assert check.compiler_problems(_vars("gcc -pthread", "g++ -pthread"), (2, 17), False) == []
    problems = check.compiler_problems(_vars("gcc", "g++"), (2, 28), False)
    assert "sysconfig CC is 'gcc', not 'gcc -pthread'" in problems and len(problems) == 4


def test_from_glibc_2_34_and_on_musl_it_does_not():
    assert check.compiler_problems(_vars("gcc", "g++"), (2, 34), False) == []
    assert check.compiler_problems(_vars("gcc", "g++"), (2, 36), False) == []
    assert check.compiler_problems(_vars("gcc", "g++"), None, False) == []
    assert check.compiler_problems(_vars("gcc -pthread", "g++ -pthread"), (2, 36), False) != []


def test_musl_builds_of_3_15_link_with_a_thread_stack_size():
    stack = " -Wl,-z,stack-size=1048576"
    assert check.compiler_problems(_vars("gcc", "g++", stack), None, True) == []
    problems = check.compiler_problems(_vars("gcc", "g++"), None, True)
    assert problems == [
        f"sysconfig LDSHARED is 'gcc -shared', not 'gcc -shared{stack}'",
        f"sysconfig LDCXXSHARED is 'g++ -shared', not 'g++ -shared{stack}'",
    ]


def test_a_cross_toolchain_leaking_into_sysconfig_is_a_problem():
    problems = check.compiler_problems(_vars("s390x-linux-gnu-gcc", "g++"), (2, 36), False)
    assert "sysconfig CC is 's390x-linux-gnu-gcc', not 'gcc'" in problems


def test_the_standard_library_list_is_cpythons_own_less_other_platforms():
    names = check.expected_modules(sys.version_info[:2])
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    assert not {"msvcrt", "winreg", "antigravity", "this", "_ios_support"} & set(names)
    assert {"json", "sqlite3", "tkinter", "test.support"} <= set(names)
    assert stdlib - check.NOT_ON_LINUX - check.IMPORT_HAS_EFFECTS - check.NOT_REQUIRED <= set(names)
    assert len(names) == len(set(names))
