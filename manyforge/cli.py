"""`manyforge`: what a downstream project runs, with nothing but the installed package.

    manyforge resolve  --spec FILE --image NAME [--arch A]   read the parent, pin it in the lock
    manyforge build    --spec FILE --image NAME [--arch A] [--network host]   build the derived image, run its checks
    manyforge check    --spec FILE --image NAME [--arch A]   run its checks in its latest build
    manyforge test     --spec FILE --image NAME [--arch A]   contract + checks, recorded by image ID
    manyforge publish  --spec FILE --image NAME --registry HOST/NS --key KEY   push, sign, attest, tag
    manyforge contract REF [--arch A]                        the image contract, against any image

FILE is the project's own short file of derived images (its keys: org, derived); the matrix its
parents come from is the installed manyforge's images.yaml. Errors end with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from manyforge import contract, engine, pipeline, publish
from manyforge.sources import SourceCache, SourceError
from manyforge.spec import SpecError, load_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manyforge", description="Derived manylinux/musllinux images, and the image contract.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("resolve", "read each parent and pin it in derived.lock.json"), ("build", "build a derived image and run its checks"),
                       ("check", "run a derived image's own checks in its latest build"),
                       ("test", "the image contract and its own checks, recorded against its image ID (what publish needs)"),
                       ("publish", "push the tested image, sign it, attest its SBOM, tag it; the catalog on stdout")):  # fmt: skip
        p = sub.add_parser(name, help=what)
        p.add_argument("--spec", required=True, help="the project's file of derived images")
        p.add_argument("--image", required=True, help="a derived image of that file")
        p.add_argument("--arch", help="one architecture (default: resolve every one; build, check and test x86_64; publish every one)")
        if name == "build":
            p.add_argument("--network", choices=engine.BUILD_NETWORKS, default="default",
                           help="the network of the build's steps: 'host' reaches servers on this machine's 127.0.0.1 (a vendor repository, a proxy)")
        if name == "publish":
            p.add_argument("--registry", required=True, help="HOST[:PORT]/NAMESPACE")
            p.add_argument("--key", required=True, help="a cosign private key (its password in COSIGN_PASSWORD)")
    p = sub.add_parser("contract", help="check the image contract (what cibuildwheel and users rely on) of any image")
    p.add_argument("ref", help="a local image, or one pinned by digest (pulled)")
    p.add_argument("--arch", help="the image's arch (default: read from a local image)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "contract":
            arch, findings = contract.check_image(args.ref, args.arch)
            for f in findings:
                print(f"{'ok  ' if f.ok else 'FAIL'} {f.check}{f' ({f.detail})' if f.detail and not f.ok else ''}")
            broken = [f for f in findings if not f.ok]
            print(f"{args.ref} ({arch}): {len(findings) - len(broken)} of {len(findings)} contract checks pass")
            return 1 if broken else 0
        spec = load_spec(args.spec)
        if args.command == "resolve":
            pipeline.resolve_derived(spec, args.image, args.arch)
            return 0
        if args.command == "publish":
            catalog = publish.publish(spec, args.image, [args.arch] if args.arch else None, args.registry, Path(args.key),
                                      log=lambda line: print(engine.scrub(line), file=sys.stderr, flush=True))  # fmt: skip
            print(json.dumps(catalog, indent=1))
            return 0
        target = pipeline.derived_target(spec, args.image, args.arch or "x86_64")
        if args.command == "test":
            failed, record = pipeline.record_derived(target)
            for line in failed:
                print(f"FAIL {engine.scrub(line)}")
            print(f"{target.slug}: {record.verdict()}")
            return 1 if failed else 0
        if args.command == "build":
            pipeline.build_derived(spec, SourceCache(), target, network=args.network)
            return 0
        failed = pipeline.run_checks(target, target.latest_ref)
        for line in failed:
            print(f"FAIL {engine.scrub(line)}")
        print(f"{target.slug}: {len(target.derived.checks) - len(failed)} of {len(target.derived.checks)} checks pass")
        return 1 if failed else 0
    except SpecError as exc:
        print("\n".join(f"error: {engine.scrub(p)}" for p in exc.problems), file=sys.stderr)
        return 2
    except (SourceError, engine.EngineError, pipeline.OutputError, publish.PublishError) as exc:
        print(f"error: {engine.scrub(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
