#!/usr/bin/env python3
"""Write a derived image's SBOM (CycloneDX 1.6 JSON) from inside the image being built.

Runs with an interpreter of the parent (its standard library only: the parent may be any
manylinux image, pypa's included). What it records:
  - the parent: its reference and image ID, and its components: those of its own SBOM (at the
    output path, which this one replaces) where it has one, else its /opt/python interpreters;
  - the distribution packages, read from the image's package database (the parent's and the
    additions, which are marked);
  - every library built from source (version, source file, sha256), every vendor repository's
    files (sha256), and what the project's own script declares it installs.

    write-derived-sbom.py INPUT.json OUTPUT.json
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys


def prop(name, value):
    return {"name": f"manyforge:{name}", "value": str(value)}


def os_release():
    out = {}
    with open("/etc/os-release", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.strip().partition("=")
            out[key] = value.strip('"')
    return out


def repository_uris(path):
    """The URIs an apt definition (deb822 .sources or one-line .list) names, without a trailing /."""
    uris = []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return uris
    for line in lines:
        words = line.split("#", 1)[0].split()
        if words[:1] == ["URIs:"]:
            uris += words[1:]
        elif words[:1] in (["deb"], ["deb-src"]):
            rest = words[1:]
            if rest and rest[0].startswith("["):  # options: [signed-by=... arch=...]
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            uris += rest[:1]
    return [u.rstrip("/") for u in uris]


def package_sources(path, repositories):
    """What `apt-cache policy` said before the install: package -> (repository, source line) of
    its candidate version, the repository being a vendor's name or "parent" (the parent's own)."""
    if not os.path.exists(path):
        return {}
    vendors = [(uri, name) for name, repo in repositories.items() for uri in repository_uris(repo["definition"].get("path", ""))]
    out, package, candidate, in_candidate = {}, None, None, False
    with open(path, encoding="utf-8") as fh:
        for line in fh.read().splitlines():
            if line and not line.startswith(" ") and line.endswith(":"):
                package, candidate, in_candidate = line[:-1], None, False
            elif line.strip().startswith("Candidate:"):
                candidate = line.split(":", 1)[1].strip()
            elif re.match(r"^ (\*\*\*|   ) \S+ -?[0-9]+$", line):  # a version of the table (*** installed)
                in_candidate = line[5:].split()[0] == candidate
            elif in_candidate and line.startswith("        ") and package and package not in out:
                words = line.split()
                if len(words) >= 2 and "://" in words[1]:
                    uri = words[1].rstrip("/")
                    name = next((n for u, n in vendors if uri == u or uri.startswith(u + "/")), "parent")
                    out[package] = (name, " ".join(words[1:]))
    return out


def packages(query, purl_type, namespace, added, sources):
    listing = subprocess.run(["sh", "-c", query], check=True, capture_output=True, text=True).stdout
    out = []
    for line in sorted(set(listing.splitlines())):
        name, version, arch = (line.split("\t") + ["", ""])[:3]
        if not name:
            continue
        purl = f"pkg:{purl_type}/{namespace}/{name}@{version}" + (f"?arch={arch}" if arch else "")
        props = [prop("added-by", "derived")] if name in added else []
        if name in added and name in sources:
            props += [prop("repository", sources[name][0]), prop("source", sources[name][1])]
        out.append({"type": "library", "bom-ref": f"pkg:{name}@{version}", "name": name, "version": version, "purl": purl,
                    **({"properties": props} if props else {})})  # fmt: skip
    return out


def main(input_path, output_path):
    with open(input_path, encoding="utf-8") as fh:
        data = json.load(fh)
    image, parent = data["image"], data["parent"]
    parent_components = []
    if os.path.exists(output_path):  # the parent's own SBOM, ours: keep what it knows
        with open(output_path, encoding="utf-8") as fh:
            parent_bom = json.load(fh)
        parent_components = [c for c in parent_bom.get("components", []) if c.get("type") != "library" or "purl" not in c
                             or not c["purl"].startswith(f"pkg:{data['purl_type']}/")]  # fmt: skip
        source = "its SBOM"
    else:
        for tag in sorted(os.listdir("/opt/python")):
            real = os.path.realpath(os.path.join("/opt/python", tag))
            parent_components.append({"type": "application", "bom-ref": f"interpreter:{tag}", "name": tag,
                                      "properties": [prop("interpreter", tag), prop("prefix", real)]})  # fmt: skip
        source = "its package database and /opt/python"
    for c in parent_components:
        props = c.setdefault("properties", [])
        if not any(p.get("name") == "manyforge:from-parent" for p in props):  # a parent derived itself
            props.append(prop("from-parent", "true"))
        if c.get("bom-ref") == "parent":  # the parent's own parent: still named, under a ref of its own
            c["bom-ref"] = f"ancestor:{c.get('version', '')}"
    release = os_release()
    components = [
        {"type": "container", "bom-ref": "parent", "name": parent["ref"], "version": parent["image_id"],
         "properties": [prop("image-id", parent["image_id"]), prop("policy", parent["policy"]), prop("components-from", source)]},
        *parent_components,
        *packages(data["package_query"], data["purl_type"], release.get("ID", ""), set(data["packages"]),
                  package_sources(data.get("package_sources", ""), data["repositories"])),
    ]  # fmt: skip
    for lib in data["libraries"]:
        components.append({
            "type": "library", "bom-ref": f"library:{lib['name']}", "name": lib["name"], "version": lib["version"],
            "purl": f"pkg:generic/{lib['name']}@{lib['version']}", "hashes": [{"alg": "SHA-256", "content": lib["sha256"]}],
            "properties": [prop("source-file", lib["filename"]), prop("built-from-source", "true"), prop("build", lib["build"]),
                           prop("added-by", "derived"), *([prop("url", lib["url"])] if lib.get("url") else []),
                           *([prop("debian", lib["debian"])] if lib.get("debian") else [])],
        })  # fmt: skip
    for name, repo in data["repositories"].items():
        for kind in ("definition", "key"):
            f = repo[kind]
            components.append({"type": "file", "bom-ref": f"repository:{name}:{kind}", "name": f"{name} {kind}",
                               "hashes": [{"alg": "SHA-256", "content": f["sha256"]}],
                               "properties": [prop("url", f["url"]), prop("added-by", "derived"),
                                              *([prop("path", f["path"])] if f.get("path") else [])]})  # fmt: skip
    if data.get("script"):
        for c in data["script"]["installs"]:
            components.append({"type": "library", "bom-ref": f"script:{c['name']}", "name": c["name"], "version": c["version"],
                               "properties": [prop("installed-by", data["script"]["path"]), prop("added-by", "derived")]})  # fmt: skip
    bom = {
        "bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
        "metadata": {"component": {"type": "container", "bom-ref": "image", "name": f"{image['org']}/{image['name']}_{image['arch']}",
                                   "version": image["policy"], "properties": [prop("policy", image["policy"]), prop("arch", image["arch"]),
                                                                              prop("parent", parent["ref"])]}},
        "components": components,
        "dependencies": [{"ref": "image", "dependsOn": ["parent"]}],
    }  # fmt: skip
    os.makedirs(os.path.dirname(output_path), exist_ok=True)  # a parent not of ours may have no /opt/_internal
    with open(output_path, "w", encoding="utf-8") as fh:
        json.dump(bom, fh, indent=1)
        fh.write("\n")
    print(f"manyforge: SBOM with {len(components)} components ({len(parent_components)} of the parent's from {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
