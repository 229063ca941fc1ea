"""The `grader` command line: grade, release, list, doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_FULL, EXIT_POINTS_LOST, EXIT_UNUSABLE = 0, 1, 2
ROOT_HINT = "run from the course folder (the one holding solutions/ and labs/)"


def _cmd_grade(args: argparse.Namespace) -> int:
    from grader.report import table, write_json
    from grader.runner import Limits, UnusableInput, grade_notebook

    limits = Limits(
        cell_timeout_s=args.cell_timeout, total_timeout_s=args.timeout, memory_mb=args.memory_mb
    )
    try:
        result = grade_notebook(args.notebook, lab=args.lab, limits=limits, include_hidden=not args.public_only)
    except UnusableInput as exc:
        print(f"grader: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(table(result))
    if args.json:
        write_json(result, args.json)
    return EXIT_FULL if result.score >= result.max_score else EXIT_POINTS_LOST


def _cmd_release(args: argparse.Namespace) -> int:
    from grader.release import release_all

    solutions, labs = Path(args.solutions), Path(args.labs)
    if not solutions.is_dir():
        print(f"grader: error: no folder {solutions} ({ROOT_HINT})", file=sys.stderr)
        return EXIT_UNUSABLE
    changes = release_all(solutions, labs, check=args.check)
    bad = [c for c in changes if c.status in ("stale", "orphan")]
    for c in changes:
        if args.check and c.status == "unchanged":
            continue
        print(f"{c.status:>9}  {c.lab_path}")
    if args.check:
        if bad:
            print("labs/ is out of date: run `grader release` and commit the result.", file=sys.stderr)
            return 1
        print(f"labs/ is up to date ({len(changes)} notebooks).")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from grader.registry import all_labs

    folder = Path(args.folder) if args.folder else None
    for lab in all_labs():
        line = f"{lab.id}  {lab.title:<48} {len(lab.questions):>2} questions  {lab.max_score:g} pts"
        if folder is not None:
            line += "  " + _progress(folder, lab)
        print(line)
    return 0


def _progress(folder: Path, lab) -> str:
    """How far a learner's notebook is, without running it: which stubs are still there."""
    from grader.runner import UnusableInput, read_notebook

    matches = sorted(folder.glob(f"{lab.id}_*.ipynb"))
    if not matches:
        return "(no notebook)"
    try:
        nb = read_notebook(matches[0])
    except UnusableInput:
        return "(unreadable notebook)"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    stubs = sum(src.count("raise NotImplementedError(\"Your code here") for src in code)
    total = sum(src.count("YOUR CODE HERE") for src in code) or stubs
    return f"{total - stubs}/{total} exercises started" if total else "(no exercises found)"


def _cmd_doctor(args: argparse.Namespace) -> int:
    from grader.doctor import main as doctor_main

    return doctor_main()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grader", description="Specialist Labs autograder")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="execute a notebook in a fresh kernel and grade it")
    g.add_argument("notebook")
    g.add_argument("--json", help="write the result as JSON to this file")
    g.add_argument("--timeout", type=float, default=1800, help="whole-notebook budget in seconds (default 1800)")
    g.add_argument("--cell-timeout", type=float, default=600, help="per-cell timeout in seconds (default 600)")
    g.add_argument("--memory-mb", type=int, default=8192, help="kernel memory cap in MiB (default 8192)")
    g.add_argument("--lab", help="lab number, when the file name does not start with it")
    g.add_argument("--public-only", action="store_true", help="run only the public checks")
    g.set_defaults(func=_cmd_grade)

    r = sub.add_parser("release", help="generate labs/ from solutions/")
    r.add_argument("--check", action="store_true", help="exit 1 if labs/ is stale; write nothing")
    r.add_argument("--solutions", default="solutions")
    r.add_argument("--labs", default="labs")
    r.set_defaults(func=_cmd_release)

    li = sub.add_parser("list", help="list the labs (and a learner's progress in FOLDER)")
    li.add_argument("folder", nargs="?")
    li.set_defaults(func=_cmd_list)

    d = sub.add_parser("doctor", help="check the environment and suggest fixes")
    d.set_defaults(func=_cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
