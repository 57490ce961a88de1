"""Policy files and symbol dumps are checked where they are read: every broken file gives a
PolicyError naming the file (and the key path), never a traceback or a hang."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from manyforge import policy
from manyforge.policy import Dump, PolicyError

ROOT = Path(__file__).resolve().parents[2]
GOOD_DUMP = json.loads((ROOT / "tests" / "data" / "dumps" / "debian-bookworm-x86_64.json").read_text())
GOOD_POLICIES = json.loads((policy.POLICY_DIR / "manylinux-policy.json").read_text())


def changed(base, edit):
    data = copy.deepcopy(base)
    edit(data)
    return data


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def dump_problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as err:
        Dump.read(path)
    assert err.value.problems, "a PolicyError must say what is wrong"
    return err.value.problems


def policy_problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as err:
        policy.load_policies(path)
    assert err.value.problems, "a PolicyError must say what is wrong"
    return err.value.problems


def test_the_unbroken_inputs_load(tmp_path):
    """The corpus below breaks these files one way at a time; unbroken, they load."""
    loaded = Dump.read(write(tmp_path / "good.json", GOOD_DUMP))
    assert (loaded.libc, loaded.libc_version, loaded.arch) == ("glibc", "2.36", "x86_64")
    assert loaded.label == "debian-bookworm-x86_64"
    unlabelled = Dump.read(write(tmp_path / "my-distro.json", changed(GOOD_DUMP, lambda d: d.pop("label"))))
    assert unlabelled.label == "my-distro"
    musl = {"arch": "x86_64", "libc": {"name": "musl", "version": "1.2.5", "loader": "ld-musl-x86_64.so.1"},
            "libraries": {"libc.so": {}}}  # fmt: skip
    assert policy.policy_name_of(Dump.read(write(tmp_path / "alpine.json", musl))) == "musllinux_1_2"
    path = write(tmp_path / "manylinux-policy.json", GOOD_POLICIES)
    assert [e.name for e in policy.load_policies(path)] == [e["name"] for e in GOOD_POLICIES]


# --- dumps: (file name, content, a fragment one problem line must hold after "<file>: ") ----------

BROKEN_DUMPS = [
    ("empty.json", "", "the file is empty; expected JSON"),
    ("blank.json", " \n\t\n", "the file is empty; expected JSON"),
    ("not-json.json", "libc: glibc\n", "line 1 column 1: not valid JSON (Expecting value)"),
    ("truncated.json", json.dumps(GOOD_DUMP)[:-20], "not valid JSON"),
    ("bom.json", "\ufeff" + json.dumps(GOOD_DUMP), "not valid JSON (Unexpected UTF-8 BOM"),
    ("array.json", json.dumps([GOOD_DUMP]), "the top level must be an object with keys label, libc, arch, libraries"),
    ("string.json", '"debian"', "the top level must be an object with keys label, libc, arch, libraries (got 'debian')"),
    ("duplicate-key.json", '{"arch": "x86_64", "arch": "i686"}', "not valid JSON (duplicate key 'arch' in an object)"),
    ("nan.json", '{"arch": NaN}', "not valid JSON (NaN is not a JSON number)"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "not usable JSON (nested too deeply)"),
    ("long-number.json", '{"arch": ' + "9" * 5000 + "}", "not usable JSON (a number has too many digits)"),
    ("no-libc.json", changed(GOOD_DUMP, lambda d: d.pop("libc")), "libc: required key is missing"),
    ("no-libraries.json", changed(GOOD_DUMP, lambda d: d.pop("libraries")), "libraries: required key is missing"),
    ("no-libc-version.json", changed(GOOD_DUMP, lambda d: d["libc"].pop("version")), "libc.version: required key is missing"),
    ("libc-number.json", changed(GOOD_DUMP, lambda d: d.update(libc=5)),
     "libc: expected an object with keys name, version, loader (got 5)"),
    ("extra-key.json", changed(GOOD_DUMP, lambda d: d.update(distro="debian")),
     "distro: unknown key; allowed keys here: label, libc, arch, libraries"),
    ("extra-libc-key.json", changed(GOOD_DUMP, lambda d: d["libc"].update(vendor="gnu")),
     "libc.vendor: unknown key; allowed keys here: name, version, loader"),
    ("uclibc.json", changed(GOOD_DUMP, lambda d: d["libc"].update(name="uclibc")),
     "libc.name: 'uclibc' is not allowed; expected 'glibc' or 'musl'"),
    ("version-number.json", changed(GOOD_DUMP, lambda d: d["libc"].update(version=2.36)),
     "libc.version: Input should be a valid string (got 2.36)"),
    ("glibc-3.json", changed(GOOD_DUMP, lambda d: d["libc"].update(version="3.1")),
     "libc.version: a glibc version is 2.<minor>, such as 2.36 (got '3.1')"),
    ("glibc-patch.json", changed(GOOD_DUMP, lambda d: d["libc"].update(version="2.36.1")),
     "libc.version: a glibc version is 2.<minor>, such as 2.36 (got '2.36.1')"),
    ("musl-1-0.json", changed(GOOD_DUMP, lambda d: d.update(libc={"name": "musl", "version": "1.0.5"})),
     "libc.version: a musl version is 1.<minor>.<patch> with minor 1 or more, such as 1.2.5 (got '1.0.5')"),
    ("version-word.json", changed(GOOD_DUMP, lambda d: d["libc"].update(version="latest")),
     "libc.version: 'latest' is not a version such as 2.36 or 1.2.5"),
    ("unknown-machine.json", changed(GOOD_DUMP, lambda d: d.update(arch="machine-258")),
     "arch: 'machine-258' is not allowed; expected 'x86_64', 'i686', 'aarch64'"),
    ("arch-null.json", changed(GOOD_DUMP, lambda d: d.update(arch=None)), "arch: None is not allowed; expected 'x86_64'"),
    ("libraries-list.json", changed(GOOD_DUMP, lambda d: d.update(libraries=["libc.so.6"])),
     "libraries: Input should be a valid dictionary (got ['libc.so.6'])"),
    ("no-library.json", changed(GOOD_DUMP, lambda d: d.update(libraries={})), "libraries: Dictionary should have at least 1 item"),
    ("bad-soname.json", changed(GOOD_DUMP, lambda d: d["libraries"].update({"lib c": {}})),
     "libraries['lib c']: the key 'lib c' is not a library soname such as libc.so.6"),
    ("lowercase-prefix.json", changed(GOOD_DUMP, lambda d: d["libraries"]["libc.so.6"].update(glibc=["2.17"])),
     "libraries['libc.so.6'].glibc: the key 'glibc' is not a version prefix in capitals"),
    ("versions-string.json", changed(GOOD_DUMP, lambda d: d["libraries"]["libc.so.6"].update(GLIBC="2.17")),
     "libraries['libc.so.6'].GLIBC: Input should be a valid list (got '2.17')"),
    ("version-int.json", changed(GOOD_DUMP, lambda d: d["libraries"]["libc.so.6"]["GLIBC"].insert(3, 17)),
     "libraries['libc.so.6'].GLIBC[3]: Input should be a valid string (got 17)"),
    ("version-empty.json", changed(GOOD_DUMP, lambda d: d["libraries"]["libm.so.6"]["GLIBC"].append("")),
     "is not a symbol version such as 2.17, 3.4.30 or TM_1"),
    ("version-space.json", changed(GOOD_DUMP, lambda d: d["libraries"]["libc.so.6"]["GLIBC"].append("2.17 ; rm")),
     "'2.17 ; rm' is not a symbol version"),
    ("label-path.json", changed(GOOD_DUMP, lambda d: d.update(label="../etc")), "label: '../etc' is not a name"),
    ("non-utf8.json", json.dumps(GOOD_DUMP).encode().replace(b"bookworm", b"bookw\xf6rm"), "not UTF-8 text"),
]  # fmt: skip


@pytest.mark.parametrize(("filename", "content", "expected"), BROKEN_DUMPS, ids=[c[0] for c in BROKEN_DUMPS])
def test_broken_dump_is_refused_naming_file_and_key(tmp_path, filename, content, expected):
    path = write(tmp_path / filename, content)
    problems = dump_problems(path)
    assert all(p.startswith((f"{filename}: ", f"{path}: ")) for p in problems), problems
    assert any(expected in p for p in problems), problems


def test_dump_problems_are_all_reported_with_their_key_paths(tmp_path):
    data = changed(GOOD_DUMP, lambda d: d.update(arch="sparc", extra=1, libc={"name": "glibc"}))
    data["libraries"]["libc.so.6"]["GLIBC"][0] = 2
    problems = dump_problems(write(tmp_path / "debian-x.json", data))
    assert problems == [
        "debian-x.json: libc.version: required key is missing",
        "debian-x.json: arch: 'sparc' is not allowed; expected 'x86_64', 'i686', 'aarch64', 'ppc64le', 's390x', 'armv7l' or 'riscv64'",
        "debian-x.json: libraries['libc.so.6'].GLIBC[0]: Input should be a valid string (got 2)",
        "debian-x.json: extra: unknown key; allowed keys here: label, libc, arch, libraries",
    ]


def test_long_offending_values_are_quoted_short(tmp_path):
    huge = "x" * 100_000
    data = changed(GOOD_DUMP, lambda d: d.update(arch=huge, label=huge + " "))
    data["libraries"][huge + " .so"] = {}
    problems = dump_problems(write(tmp_path / "long.json", data))
    assert len(problems) == 3
    for line in problems:
        assert line.startswith("long.json: ")
        assert len(line) < 400, line
        assert "xxx..." in line


def test_several_dump_files_are_reported_together(tmp_path):
    good = write(tmp_path / "good.json", GOOD_DUMP)
    one = write(tmp_path / "one.json", "")
    two = write(tmp_path / "two.json", changed(GOOD_DUMP, lambda d: d.pop("arch")))
    with pytest.raises(PolicyError) as err:
        policy.read_dumps([one, good, two])
    assert err.value.problems == ["one.json: the file is empty; expected JSON", "two.json: arch: required key is missing"]


# --- files that are not regular, readable files of sane size ------------------------------------


def test_directory_is_refused(tmp_path):
    path = tmp_path / "dumps.json"
    path.mkdir()
    assert dump_problems(path) == [f"{path}: not a regular file"]
    assert policy_problems(path) == [f"{path}: not a regular file"]


def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "fifo.json"
    os.mkfifo(path)

    def hung(signum, frame):
        raise AssertionError("reading a FIFO blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        assert dump_problems(path) == [f"{path}: not a regular file"]
        assert policy_problems(path) == [f"{path}: not a regular file"]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:  # sparse: no disk space, no time
        fh.truncate(policy.MAX_INPUT_BYTES + 1)
    expected = [f"{path}: {policy.MAX_INPUT_BYTES + 1} bytes is larger than the limit of {policy.MAX_INPUT_BYTES} bytes"]
    assert dump_problems(path) == expected
    assert policy_problems(path) == expected


def test_missing_and_looping_files_are_refused(tmp_path):
    missing = tmp_path / "missing.json"
    assert dump_problems(missing) == [f"{missing}: cannot read (No such file or directory)"]
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    assert policy_problems(loop) == [f"{loop}: cannot read (Too many levels of symbolic links)"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_refused(tmp_path):
    path = write(tmp_path / "secret.json", GOOD_DUMP)
    path.chmod(0)
    assert dump_problems(path) == [f"{path}: cannot read (Permission denied)"]


# --- policy files -------------------------------------------------------------------------------

ENTRY = {"name": "manylinux_2_31", "priority": 61, "symbol_versions": {"x86_64": {"GLIBC": ["2.2.5"]}},
         "lib_whitelist": ["libc.so.6"]}  # fmt: skip

BROKEN_POLICIES = [
    ("empty", "", "the file is empty; expected JSON"),
    ("not-json", "[{'name': 'linux'}]", "line 1 column 3: not valid JSON (Expecting property name enclosed in double quotes)"),
    ("non-utf8", b'[{"name": "manylinux_2_31\xff"}]', "not UTF-8 text (byte 25)"),
    ("object", {"policies": []}, "the top level must be a non-empty list of policies (got {'policies': []})"),
    ("empty-list", [], "the top level must be a non-empty list of policies (got [])"),
    ("entry-not-object", [ENTRY, "linux"], "[1]: a policy must be an object with keys name, aliases, priority"),
    ("priority-string", [{**ENTRY, "priority": "61"}], "manylinux_2_31: priority: Input should be a valid integer (got '61')"),
    ("priority-bool", [{**ENTRY, "priority": True}], "manylinux_2_31: priority: Input should be a valid integer (got True)"),
    ("priority-float", [{**ENTRY, "priority": 61.5}], "manylinux_2_31: priority: Input should be a valid integer"),
    ("priority-high", [{**ENTRY, "priority": 101}], "manylinux_2_31: priority: Input should be less than or equal to 100"),
    ("bad-name", [{**ENTRY, "name": "manylinux2014"}],
     "[0]: name: 'manylinux2014' is not linux, manylinux_2_<minor> or musllinux_1_<minor>"),
    ("name-object", [{**ENTRY, "name": {"x": 1}}], "[0]: name: Input should be a valid string (got {'x': 1})"),
    ("missing-key", [{k: v for k, v in ENTRY.items() if k != "lib_whitelist"}],
     "manylinux_2_31: lib_whitelist: required key is missing"),
    ("unknown-key", [{**ENTRY, "comment": "x"}],
     "manylinux_2_31: comment: unknown key; allowed keys here: name, aliases, priority, symbol_versions, lib_whitelist, blacklist"),
    ("whitelist-string", [{**ENTRY, "lib_whitelist": "libc.so.6"}],
     "manylinux_2_31: lib_whitelist: Input should be a valid list (got 'libc.so.6')"),
    ("whitelist-path", [{**ENTRY, "lib_whitelist": ["/lib/libc.so.6"]}],
     "manylinux_2_31: lib_whitelist[0]: '/lib/libc.so.6' is not a library soname such as libc.so.6"),
    ("version-number", [{**ENTRY, "symbol_versions": {"x86_64": {"GLIBC": [2.17]}}}],
     "manylinux_2_31: symbol_versions.x86_64.GLIBC[0]: Input should be a valid string (got 2.17)"),
    ("arch-key", [{**ENTRY, "symbol_versions": {"x86 64": {}}}],
     "manylinux_2_31: symbol_versions['x86 64']: the key 'x86 64' is not an architecture such as x86_64"),
    ("blacklist-symbol", [{**ENTRY, "blacklist": {"libz.so.1": ["a b"]}}],
     "manylinux_2_31: blacklist['libz.so.1'][0]: 'a b' is not a symbol name"),
    ("alias-number", [{**ENTRY, "aliases": [2014]}], "manylinux_2_31: aliases[0]: Input should be a valid string (got 2014)"),
    ("alias-tag", [{**ENTRY, "aliases": ["linux_x86_64 "]}], "manylinux_2_31: aliases[0]: 'linux_x86_64 ' is not a platform tag"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "content", "expected"), BROKEN_POLICIES, ids=[c[0] for c in BROKEN_POLICIES])
def test_broken_policy_file_is_refused_naming_file_and_key(tmp_path, case, content, expected):
    path = write(tmp_path / "manylinux-policy.json", content)
    problems = policy_problems(path)
    assert all(p.startswith(("manylinux-policy.json: ", f"{path}: ")) for p in problems), problems
    assert any(expected in p for p in problems), problems


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("broken-dump.json", {"libc": 5}, "error: broken-dump.json: libc: expected an object"),
        ("garbage.json", b"\x00\xff\xfe", "not UTF-8 text"),
    ],
)
def test_policy_derive_refuses_a_broken_dump_without_traceback(tmp_path, filename, content, expected):
    path = write(tmp_path / filename, content)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "policy", "derive", "--dumps", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert filename in proc.stderr
    assert expected in proc.stderr
