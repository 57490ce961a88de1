"""The image contract, checked against any image reference: ours, a derived one, or pypa's.

What cibuildwheel and the users of manylinux images rely on (DESIGN.md, "The image contract"),
read from one run of PROBE in a container of the image (through its entrypoint, which must exec
its arguments), and judged here: a maintainer can check an image before pinning it. The image's
answers are untrusted text; they are only compared, never executed or rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from manyforge import engine
from manyforge.arches import ARCHES

# Tools users of pypa's images call (pypa/manylinux's install-runtime-packages.sh and its tests).
TOOLS = ("auditwheel", "patchelf", "git", "pkg-config", "autoconf", "automake", "libtool", "make", "gcc", "g++", "cmake", "swig")
THIRTY_TWO_BIT = ("i686", "armv7l")

PROBE = r"""
printf 'env AUDITWHEEL_POLICY=%s\nenv AUDITWHEEL_ARCH=%s\nenv AUDITWHEEL_PLAT=%s\n' "${AUDITWHEEL_POLICY-}" "${AUDITWHEEL_ARCH-}" "${AUDITWHEEL_PLAT-}"
for d in /opt/python/*; do
    [ -e "$d" ] || continue
    tag=${d##*/}
    if "$d/bin/python" -c 'import sys' >/dev/null 2>&1; then echo "python $tag runs"; else echo "python $tag broken"; fi
    for m in pip build; do
        if "$d/bin/python" -c "import $m" >/dev/null 2>&1; then echo "module $tag $m"; fi
    done
done
for t in TOOLS linux32 manylinux-interpreters; do
    if command -v "$t" >/dev/null 2>&1; then echo "tool $t"; fi
done
if command -v manylinux-interpreters >/dev/null 2>&1 && manylinux-interpreters --help >/dev/null 2>&1; then echo "interpreters-help ok"; fi
if command -v auditwheel >/dev/null 2>&1 && auditwheel --version >/dev/null 2>&1; then echo "auditwheel-version ok"; fi
echo "probe done"
""".replace("TOOLS", " ".join(TOOLS))


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str


def judge(output: str, arch: str) -> list[Finding]:
    """The contract's checks on PROBE's output for an image of `arch`."""
    lines = output.splitlines()
    env = dict(line[4:].split("=", 1) for line in lines if line.startswith("env ") and "=" in line)
    pythons = {m.group(1): m.group(2) for line in lines if (m := re.fullmatch(r"python (\S+) (runs|broken)", line))}
    modules = {tuple(line.split()[1:3]) for line in lines if re.fullmatch(r"module \S+ \S+", line)}
    tools = {line.split()[1] for line in lines if re.fullmatch(r"tool \S+", line)}
    policy, plat = env.get("AUDITWHEEL_POLICY", ""), env.get("AUDITWHEEL_PLAT", "")
    cpythons = sorted(t for t in pythons if re.fullmatch(r"cp3[0-9]+-cp3[0-9]+t?", t))
    lacking = [f"{t}:{m}" for t in cpythons for m in ("pip", "build") if (t, m) not in modules]
    findings = [
        Finding("the entrypoint runs its arguments", "probe done" in lines, "the probe ran to its end" if "probe done" in lines else "the probe did not run"),
        Finding("AUDITWHEEL_POLICY is a manylinux/musllinux policy", bool(re.fullmatch(r"(manylinux|musllinux)[0-9_]+", policy)), repr(policy[:60])),
        Finding(f"AUDITWHEEL_ARCH is {arch}", env.get("AUDITWHEEL_ARCH") == arch, repr(env.get("AUDITWHEEL_ARCH", "")[:40])),
        Finding("AUDITWHEEL_PLAT is <policy>_<arch>", bool(policy) and plat == f"{policy}_{arch}", repr(plat[:60])),
        Finding(
            "/opt/python/cp39-cp39/bin/python (cibuildwheel's helper) runs", pythons.get("cp39-cp39") == "runs", pythons.get("cp39-cp39", "absent")
        ),
        Finding("every /opt/python interpreter runs", bool(pythons) and all(v == "runs" for v in pythons.values()),
                ", ".join(f"{t}: {v}" for t, v in sorted(pythons.items())) or "no /opt/python"),  # fmt: skip
        Finding("pip and build (cibuildwheel's default frontend) in every CPython", bool(cpythons) and not lacking,
                "missing: " + (", ".join(lacking) or "none") if cpythons else "no CPython under /opt/python"),  # fmt: skip
        Finding("auditwheel runs", "auditwheel-version ok" in lines, "auditwheel --version"),
    ]  # fmt: skip
    missing = [t for t in TOOLS if t not in tools]
    findings.append(Finding("the tools users call are on PATH", not missing, "missing: " + (", ".join(missing) or "none")))
    if arch in THIRTY_TWO_BIT:
        findings.append(Finding("linux32 on PATH (cibuildwheel runs it on 32-bit images)", "linux32" in tools, ""))
    if "manylinux-interpreters" in tools:
        findings.append(Finding("manylinux-interpreters --help succeeds", "interpreters-help ok" in lines, ""))
    return findings


def image_arch(ref: str) -> str:
    """The arch of a local image, from its platform."""
    platform = engine.image_platform(ref)
    for name, arch in ARCHES.items():
        if arch.platform == platform or (platform and arch.platform == platform.rsplit("/", 1)[0] and name != "armv7l"):
            return name
    raise engine.EngineError(f"{ref}: platform {platform} is none of the arches known here: {', '.join(ARCHES)}")


def check_image(ref: str, arch: str | None = None) -> tuple[str, list[Finding]]:
    """Run the contract against an image: a local one, or one pinned by digest (pulled first).
    Returns the arch checked and every finding."""
    if arch is None:
        if not engine.local_image_exists(ref):
            raise engine.EngineError(f"{ref}: not an image of this engine; give --arch to pull one pinned by digest")
        arch = image_arch(ref)
    elif arch not in ARCHES:
        raise engine.EngineError(f"--arch {arch[:40]!r}: unknown; choose one of: {', '.join(ARCHES)}")
    engine.ensure_parent(ref, arch)
    run = engine.run_container(ref, arch, ["/bin/sh", "-c", PROBE])
    return arch, judge(run.stdout, arch)
