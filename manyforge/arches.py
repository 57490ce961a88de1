"""Facts about each architecture: how Docker, Debian and Alpine name it.

These are not part of the matrix (images.yaml chooses architectures); they are the fixed
translation tables every stage needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal["x86_64", "i686", "aarch64", "ppc64le", "s390x", "armv7l", "riscv64"]


@dataclass(frozen=True)
class ArchInfo:
    platform: str  # docker --platform
    debian: str  # dpkg architecture
    bits: int
    gnu_triplet: str  # Debian's name for cross compilers targeting it
    multiarch: str  # Debian's and CPython's multiarch tuple (extension-module suffixes)
    qemu: str | None  # binfmt handler name under /proc/sys/fs/binfmt_misc, None if run natively
    host64: str | None = None  # a 32-bit arch: the 64-bit arch whose CPUs run its code natively


ARCHES: dict[str, ArchInfo] = {
    "x86_64": ArchInfo("linux/amd64", "amd64", 64, "x86_64-linux-gnu", "x86_64-linux-gnu", None),
    # The host CPU runs i686 code itself; a 32-bit personality is all it needs.
    "i686": ArchInfo("linux/386", "i386", 32, "i686-linux-gnu", "i386-linux-gnu", None, "x86_64"),
    "aarch64": ArchInfo("linux/arm64", "arm64", 64, "aarch64-linux-gnu", "aarch64-linux-gnu", "qemu-aarch64"),
    "ppc64le": ArchInfo("linux/ppc64le", "ppc64el", 64, "powerpc64le-linux-gnu", "powerpc64le-linux-gnu", "qemu-ppc64le"),
    "s390x": ArchInfo("linux/s390x", "s390x", 64, "s390x-linux-gnu", "s390x-linux-gnu", "qemu-s390x"),
    "armv7l": ArchInfo("linux/arm/v7", "armhf", 32, "arm-linux-gnueabihf", "arm-linux-gnueabihf", "qemu-arm", "aarch64"),
    "riscv64": ArchInfo("linux/riscv64", "riscv64", 64, "riscv64-linux-gnu", "riscv64-linux-gnu", "qemu-riscv64"),
}

# CPython's platform triplet (sysconfig MULTIARCH, extension suffixes) on musl, from 3.11 on;
# earlier versions name musl targets with the glibc tuple above. (Misc/platform_triplet.c)
MUSL_MULTIARCH: dict[str, str] = {
    "x86_64": "x86_64-linux-musl",
    "i686": "i386-linux-musl",
    "aarch64": "aarch64-linux-musl",
    "ppc64le": "powerpc64le-linux-musl",
    "s390x": "s390x-linux-musl",
    "armv7l": "arm-linux-musleabihf",
    "riscv64": "riscv64-linux-musl",
}


def python_multiarch(arch: str, libc: str, python: tuple[int, int]) -> str:
    """The platform triplet a CPython of this version reports on this arch and libc."""
    if libc == "musl" and python >= (3, 11):
        return MUSL_MULTIARCH[arch]
    return ARCHES[arch].multiarch


def configure_build(arch: str, libc: str) -> str | None:
    """CPython's `--build` where config.guess would guess wrong: a 32-bit ARM personality on an
    arm64 host reports armv8l, which would end up in wheel tags and the platform triplet."""
    if arch != "armv7l":
        return None
    return "arm-linux-musleabihf" if libc == "musl" else "armv7l-unknown-linux-gnueabihf"


NATIVE_ARCH = "x86_64"  # the build host assumed where none is named (our machines, GitHub's x86_64 runners)
RUNS_NATIVELY = {name for name, info in ARCHES.items() if info.qemu is None}

# What a build host's CPU runs without QEMU: its own arch, and the 32-bit arch of the same family
# where the CPU has a 32-bit mode (every x86_64 CPU runs i686 code; an arm64 CPU runs armv7l code
# only where it implements AArch32 at EL0, which GitHub's arm64 runners do: see the README).
HOST_RUNS: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"x86_64", "i686"}),
    "aarch64": frozenset({"aarch64", "armv7l"}),
    "ppc64le": frozenset({"ppc64le"}),
    "s390x": frozenset({"s390x"}),
    "riscv64": frozenset({"riscv64"}),
}
BUILD_HOSTS = tuple(HOST_RUNS)
# binfmt handler of each arch when another host emulates it (qemu-user-static's names).
QEMU_HANDLER: dict[str, str] = {
    "x86_64": "qemu-x86_64", "i686": "qemu-i386", "aarch64": "qemu-aarch64", "ppc64le": "qemu-ppc64le",
    "s390x": "qemu-s390x", "armv7l": "qemu-arm", "riscv64": "qemu-riscv64",
}  # fmt: skip
# platform.machine() of a build host, as the kernel names it, to our arch names.
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
             "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip


def host_arch(machine: str | None = None) -> str:
    """This machine's arch as a build host (`machine`: what uname -m says; default: this one's)."""
    import platform

    name = machine if machine is not None else platform.machine()
    if name not in _MACHINES:
        raise ValueError(f"a build host of {name[:40]!r} is not supported; build hosts: {', '.join(BUILD_HOSTS)}")
    return _MACHINES[name]


def runs_natively(arch: str, host: str) -> bool:
    """Whether a build host of arch `host` runs `arch` code itself, with no QEMU."""
    return arch in HOST_RUNS.get(host, frozenset())

# The first LLD release that links each arch's ELF objects (a cross stage's clang links with
# LLD, whichever clang it is). A clang route whose LLD is older cannot cross-build that arch:
# the render refuses it (render.cross_compiler) instead of a build failing hours later.
#   s390x   18: SystemZ support landed in llvm/llvm-project#75643 (fe3406e3, on release/18.x;
#               "[lld] Add target support for SystemZ (s390x)"; llvm/llvm-project#57097 before it).
#   riscv64 15: LLD before 15 implements no RISC-V linker relaxation and refuses the
#               R_RISCV_ALIGN relocations that GCC's and clang's default -mrelax objects carry
#               (relaxation: reviews.llvm.org/D127581, LLVM 15).
#   the others 3.9: LLD 3.9's release notes name x86, x86-64, PowerPC/PPC64 and ARM/Thumb
#               (releases.llvm.org/3.9.0/tools/lld/docs/ReleaseNotes.html); AArch64 is in
#               lld/ELF from the same time. Not a claim of maturity: CentOS 7's LLD 7 on ppc64le
#               is exactly what issue 20 replaces.
LLD_LINKS_SINCE: dict[str, tuple[int, int]] = {
    "x86_64": (3, 9), "i686": (3, 9), "aarch64": (3, 9), "ppc64le": (3, 9), "armv7l": (3, 9),
    "s390x": (18, 0), "riscv64": (15, 0),
}  # fmt: skip
