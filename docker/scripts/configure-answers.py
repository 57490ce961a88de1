"""What CPython's configure cannot find out when it cross-compiles, as the target answers it.

configure answers some checks only by running a test program (AC_RUN_IFELSE); cross-compiling
it cannot, and takes a default that can be wrong for the target (fnv hashing, no computed gotos,
no time.tzset, a "broken" sem_getvalue). Which checks those are is read from the configure
script itself: a cached check whose body runs a test program, or checks for a file on the
target (AC_CHECK_FILE, which refuses to guess). Their values come from a configure run whose
test programs ran on the target (configure-answers.sh: natively, or under QEMU); nothing else
of that run's cache is kept.

    configure-answers.py derive CONFIGURE CONFIG_CACHE   JSON {variable: value} on stdout
    configure-answers.py site ANSWERS_JSON                the same as a CONFIG_SITE file
    configure-answers.py unanswered CONFIGURE ANSWERS_JSON   the checks it runs that they lack
"""

from __future__ import annotations

import json
import re
import shlex
import sys

NAME = re.compile(r"ac_cv_[A-Za-z0-9_]{1,100}")
# A value as configure caches these checks: yes/no, a number, a short word or phrase.
VALUE = re.compile(r"[A-Za-z0-9_.+ -]{0,200}")
RESULT = re.compile(r'result: \$(\w+)"')
FILE_CHECK = re.compile(r"\$\{(ac_cv_file_\w+)\+")
CACHE_LINE = re.compile(r"(\w+)=\$\{\1=(.*)\}")
# Checks every CPython configure since 3.9 runs on the target; a derivation without them failed.
CORE = ("ac_cv_aligned_required", "ac_cv_computed_gotos", "ac_cv_working_tzset", "ac_cv_broken_sem_getvalue")
# How far after a test program the check's result line may be (autoconf prints it right after
# the cached block; a result further away belongs to an uncached check, which no cache answers).
RESULT_WITHIN = 40


def run_test_variables(configure: str) -> set[str]:
    """The cache variables of configure's checks that run a program, or look for a file."""
    lines = configure.splitlines()
    found = set(FILE_CHECK.findall(configure))
    for i, line in enumerate(lines):
        if 'ac_fn_c_try_run "$LINENO"' not in line:
            continue
        for later in lines[i : i + RESULT_WITHIN]:
            m = RESULT.search(later)
            if m:
                if m.group(1).startswith("ac_cv_"):
                    found.add(m.group(1))
                break
    return found


def read_cache(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        m = CACHE_LINE.fullmatch(line.strip())
        if m:
            raw = m.group(2)
            values[m.group(1)] = shlex.split(raw)[0] if raw.startswith(("'", '"')) else raw
    return values


def checked(answers: dict[str, str]) -> dict[str, str]:
    for name, value in answers.items():
        if not NAME.fullmatch(name) or not VALUE.fullmatch(value):
            sys.exit(f"configure-answers: refusing {name[:100]!r}={value[:100]!r} (not a configure cache answer)")
    return answers


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "derive":
        with open(argv[1], encoding="utf-8", errors="replace") as fh:
            wanted = run_test_variables(fh.read())
        with open(argv[2], encoding="utf-8", errors="replace") as fh:
            cache = read_cache(fh.read())
        answers = checked({name: cache[name] for name in sorted(wanted) if name in cache})
        lacking = [name for name in CORE if name not in answers]
        if lacking:
            sys.exit(f"configure-answers: configure's cache has no {', '.join(lacking)}: the run did not answer them")
        json.dump(answers, sys.stdout, indent=1, sort_keys=True)
        print()
    elif len(argv) == 3 and argv[0] == "unanswered":
        with open(argv[1], encoding="utf-8", errors="replace") as fh:
            wanted = run_test_variables(fh.read())
        with open(argv[2], encoding="utf-8") as fh:
            answers = checked(json.load(fh))
        # A check answered only after another said no (-Kpthread after -pthread) may be absent.
        print(" ".join(name for name in CORE if name in wanted and name not in answers))
    elif len(argv) == 2 and argv[0] == "site":
        with open(argv[1], encoding="utf-8") as fh:
            answers = checked(json.load(fh))
        for name, value in sorted(answers.items()):
            print(f"{name}={shlex.quote(value)}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
