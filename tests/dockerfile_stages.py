"""Reading a rendered Dockerfile by stage, for the unit tests of rendering."""

from __future__ import annotations

import re


def stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its text, the FROM line included."""
    out: dict[str, str] = {}
    current = None
    for line in dockerfile.splitlines():
        m = re.match(r"FROM (?:--platform=\S+ )?\S+ AS (\S+)", line)
        if m:
            current = m.group(1)
            out[current] = ""
        if current:
            out[current] += line + "\n"
    return out
