#!/usr/bin/env python3
"""Write the image's SBOM (CycloneDX 1.6 JSON) from inside the image being built.

Runs in the final stage with the tools environment's Python, which carries
cyclonedx-python-lib (pinned like every tool). What it records:
  - the distribution packages, read from the image's own package database;
  - every CPython built from source (version, source file, sha256, origin);
  - every wheel installed (tools and each interpreter's frontend: name, version, sha256);
  - the base (pinned digest, or the debootstrap suite and the signed Release it came from);
  - the toolchain (GCC as the image runs it).

    write-sbom.py INPUT.json OUTPUT.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

BASE_PROVENANCE = "/usr/share/manyforge/base.json"  # written by scripts/debootstrap-base.sh


def prop(name: str, value: str) -> Property:
    return Property(name=f"manyforge:{name}", value=value)


def os_release() -> dict[str, str]:
    out = {}
    with open("/etc/os-release", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.strip().partition("=")
            out[key] = value.strip('"')
    return out


def packages(query: str, purl_type: str, namespace: str) -> list[Component]:
    listing = subprocess.run(["sh", "-c", query], check=True, capture_output=True, text=True).stdout
    out = []
    for line in sorted(set(listing.splitlines())):
        name, version, arch = (line.split("\t") + ["", ""])[:3]
        if not name:
            continue
        purl = PackageURL(type=purl_type, namespace=namespace, name=name, version=version, qualifiers={"arch": arch} if arch else None)
        out.append(Component(type=ComponentType.LIBRARY, name=name, version=version, purl=purl, bom_ref=f"pkg:{name}@{version}"))
    return out


def wheel(entry: dict, where: str) -> Component:
    purl = PackageURL(type="pypi", name=entry["name"], version=entry["version"])
    return Component(
        type=ComponentType.LIBRARY, name=entry["name"], version=entry["version"], purl=purl,
        bom_ref=f"wheel:{where}:{entry['filename']}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=entry["sha256"])],
        properties=[prop("installed-in", where), prop("file", entry["filename"])],
    )  # fmt: skip


def main(input_path: str, output_path: str) -> int:
    with open(input_path, encoding="utf-8") as fh:
        data = json.load(fh)
    image = data["image"]
    bom = Bom()
    bom.metadata.component = Component(
        type=ComponentType.CONTAINER, name=f"{image['org']}/{image['name']}_{image['arch']}", version=image["policy"],
        bom_ref="image", properties=[prop("policy", image["policy"]), prop("arch", image["arch"]),
                                     # declared interpreters this site could not build: never silent
                                     *(prop("cpython-omitted", f"{o['tag']} (pinned {o['pinned']}): {o['reason']}") for o in data.get("omitted", []))],
    )  # fmt: skip

    release = os_release()
    base = data["base"]
    base_props = [prop("base", base["name"]), prop("family", base["family"])]
    if base.get("image"):
        base_props.append(prop("base-image", base["image"]))
    if os.path.exists(BASE_PROVENANCE):
        with open(BASE_PROVENANCE, encoding="utf-8") as fh:
            for key, value in json.load(fh).items():
                base_props.append(prop(f"debootstrap-{key}", str(value)))
    bom.components.add(
        Component(type=ComponentType.OPERATING_SYSTEM, name=release.get("ID", "linux"), version=release.get("VERSION_ID", ""),
                  bom_ref="os", properties=base_props)  # fmt: skip
    )
    for component in packages(data["package_query"], data["purl_type"], release.get("ID", "")):
        bom.components.add(component)

    for cpython in data["cpython"]:
        bom.components.add(
            Component(
                type=ComponentType.APPLICATION, name="cpython", version=cpython["version"], bom_ref=f"cpython:{cpython['tag']}",
                purl=PackageURL(type="generic", name="cpython", version=cpython["version"]),
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=cpython["sha256"])],
                external_references=[ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(cpython["url"]))],
                properties=[prop("interpreter", cpython["tag"]), prop("source-file", cpython["filename"]),
                            prop("free-threaded", str(cpython["free_threaded"]).lower()), prop("built-from-source", "true"),
                            *([prop("fallback-for", cpython["pinned"])] if cpython["pinned"] != cpython["version"] else [])],
            )  # fmt: skip
        )
    # Libraries built from source and linked statically into the interpreters' modules.
    for lib in data.get("libraries", []):
        bom.components.add(
            Component(
                type=ComponentType.LIBRARY, name=lib["name"], version=lib["version"], bom_ref=f"library:{lib['name']}",
                purl=PackageURL(type="generic", name=lib["name"], version=lib["version"]),
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=lib["sha256"])],
                properties=[prop("source-file", lib["filename"]), prop("built-from-source", "true"), prop("linked", "static")],
            )  # fmt: skip
        )
    # Tools built from source into /usr/local (git, autotools, Tcl/Tk) and git-lfs's release binary.
    for tool in data.get("source_tools", []):
        bom.components.add(
            Component(
                type=ComponentType.APPLICATION, name=tool["name"], version=tool["version"], bom_ref=f"source-tool:{tool['name']}",
                purl=PackageURL(type="generic", name=tool["name"], version=tool["version"]),
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=tool["sha256"])],
                properties=[prop("source-file", tool["filename"]), prop("built-from-source", str(tool["name"] != "git-lfs").lower())],
            )  # fmt: skip
        )
    for entry in data["wheels"]["tools"]:
        bom.components.add(wheel(entry, "tools"))
    for tag, entries in data["wheels"]["frontend"].items():
        for entry in entries:
            bom.components.add(wheel(entry, tag))

    gcc = subprocess.run(["gcc", "-dumpfullversion"], check=True, capture_output=True, text=True).stdout.strip()
    toolchain = data["toolchain"]
    bom.components.add(
        Component(type=ComponentType.APPLICATION, name="gcc", version=gcc, bom_ref="toolchain",
                  properties=[prop("toolchain", toolchain["name"]), prop("packages", " ".join(toolchain["packages"]))])  # fmt: skip
    )
    text = JsonV1Dot6(bom).output_as_string(indent=1)
    with open(output_path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    print(f"manyforge: SBOM with {len(bom.components)} components")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
