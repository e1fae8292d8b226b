"""The ``flowcourse`` command: ``python -m flowcourse {doctor,execute,release,grade,merge}``."""

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


def _grade(args: argparse.Namespace) -> int:
    from flowcourse.grading import Limits
    from flowcourse.grading import main as grade_main

    limits = Limits(cell_timeout=args.cell_timeout, timeout=args.timeout, memory_mb=args.memory_mb)
    return grade_main(
        args.paths,
        args.out,
        assignment=args.assignment,
        jobs=args.jobs,
        limits=limits,
        seed=args.seed,
        shard=args.shard,
        no_sandbox=args.no_sandbox,
    )


def _merge(args: argparse.Namespace) -> int:
    from flowcourse.grading import merge

    try:
        written = merge(args.folders, args.out)
    except ValueError as error:
        print(error)
        return 2
    print(f"merged {len(args.folders)} result folder(s); wrote {', '.join(map(str, written))}")
    return 0


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

    gr = sub.add_parser(
        "grade",
        help="grade submitted notebooks (files or folders); writes grades.json/.csv to --out",
    )
    gr.add_argument("paths", nargs="+", help="submission notebooks, or folders of them")
    gr.add_argument(
        "--out", default="grades", help="folder for grades.json, grades.csv, totals.csv"
    )
    gr.add_argument("--assignment", help="grade every file as this assignment (default: detect)")
    gr.add_argument(
        "--jobs", type=int, default=1, help="submissions graded at once (one kernel each)"
    )
    gr.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per code cell")
    gr.add_argument("--timeout", type=float, default=600.0, help="seconds per submission in all")
    gr.add_argument("--memory-mb", type=int, default=4096, help="address-space cap per kernel, MB")
    gr.add_argument("--seed", type=int, help="fix the grader's inputs (default: fresh each run)")
    gr.add_argument(
        "--shard",
        metavar="K/N",
        help="grade every N-th submission from the K-th (a job array's slice); merge after",
    )
    gr.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run kernels without bubblewrap: time and memory limits only (trusted work)",
    )

    mg = sub.add_parser("merge", help="combine the --out folders of grading shards")
    mg.add_argument("folders", nargs="+", help="--out folders (or grades.json files) of shards")
    mg.add_argument("--out", default="grades", help="folder for the combined results")

    args = parser.parse_args(argv)
    if args.command == "doctor":
        from flowcourse.doctor import main as doctor_main

        return doctor_main()
    if args.command == "execute":
        return _execute(args)
    if args.command == "grade":
        return _grade(args)
    if args.command == "merge":
        return _merge(args)
    return _release(args)


if __name__ == "__main__":
    sys.exit(main())
