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


ARCHES: dict[str, ArchInfo] = {
    "x86_64": ArchInfo("linux/amd64", "amd64", 64),
    "i686": ArchInfo("linux/386", "i386", 32),
    "aarch64": ArchInfo("linux/arm64", "arm64", 64),
    "ppc64le": ArchInfo("linux/ppc64le", "ppc64el", 64),
    "s390x": ArchInfo("linux/s390x", "s390x", 64),
    "armv7l": ArchInfo("linux/arm/v7", "armhf", 32),
    "riscv64": ArchInfo("linux/riscv64", "riscv64", 64),
}

NATIVE_ARCH = "x86_64"
