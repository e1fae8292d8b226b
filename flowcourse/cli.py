"""The ``flowcourse`` command: ``python -m flowcourse {doctor,execute,release}``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _execute(args: argparse.Namespace) -> int:
    from flowcourse.notebooks import execute, find_notebooks, hygiene_problems

    paths = find_notebooks(args.paths)
    total_wall = total_cpu = 0.0
    print(f"{'notebook':<48} {'wall s':>8} {'cpu s':>8}")
    failed = []
    for path in paths:
        try:
            t = execute(path, timeout=args.timeout, write=not args.dry_run)
        except Exception as exc:
            failed.append(path)
            print(f"{str(path):<48} FAILED: {type(exc).__name__}: {str(exc)[:400]}")
            continue
        total_wall, total_cpu = total_wall + t.wall, total_cpu + t.cpu
        print(f"{str(path):<48} {t.wall:8.1f} {t.cpu:8.1f}", flush=True)
        if not args.dry_run:
            for problem in hygiene_problems(path):
                print("  hygiene: " + problem)
    print(f"{'total':<48} {total_wall:8.1f} {total_cpu:8.1f}")
    return 1 if failed else 0


def _release(args: argparse.Namespace) -> int:
    from flowcourse.release import main as release_main

    return release_main(check=args.check, source=args.source, target=args.target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowcourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("doctor", help="check that every notebook dependency imports")

    ex = sub.add_parser("execute", help="re-run notebooks from a fresh kernel, outputs in place")
    ex.add_argument("paths", nargs="*", default=["notebooks", "solutions"])
    ex.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ex.add_argument("--dry-run", action="store_true", help="time only; do not write outputs")

    rel = sub.add_parser("release", help="build exercises/ from solutions/")
    rel.add_argument("--check", action="store_true", help="exit 1 if exercises/ is stale")
    rel.add_argument("--source", default="solutions")
    rel.add_argument("--target", default="exercises")

    args = parser.parse_args(argv)
    if args.command == "doctor":
        from flowcourse.doctor import main as doctor_main

        return doctor_main()
    if args.command == "execute":
        return _execute(args)
    return _release(args)


if __name__ == "__main__":
    sys.exit(main())
