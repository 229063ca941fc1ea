"""Throughput of `grader batch` on a synthetic class, to size a grading machine before the deadline.

The class is made from a lab's solution notebook: 60% complete solutions, 20% untouched starter notebooks and
20% with one exercise left as a stub (a different one for each learner). It is graded once per worker count,
and the script prints submissions per minute and checks that every run produced the same gradebook.

    python scripts/batch_benchmark.py --lab 01 --n 40 --workers 1 2
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tempfile
import time
from pathlib import Path

import nbformat

from grader.batch import BatchOptions, run_batch
from grader.records import Record
from grader.release import find_regions, release_notebook

ROOT = Path(__file__).resolve().parents[1]


def _solution(lab: str) -> Path:
    (path,) = (ROOT / "solutions").glob(f"{lab}_*.ipynb")
    return path


def make_class(
    folder: str | Path, lab: str = "01", n: int = 40, solution: nbformat.NotebookNode | None = None
) -> dict[str, str]:
    """Write n submissions `studentNN.ipynb` into `folder`; return each student's kind: complete/starter/one_stub.
    `solution` replaces the lab's solution notebook as the class's source (a test's leaner copy of it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    solution = solution if solution is not None else nbformat.read(_solution(lab), as_version=4)
    starter = release_notebook(solution)
    exercises = [i for i, c in enumerate(solution.cells) if c.cell_type == "code" and find_regions(c.source)]
    kinds = {}
    for k in range(n):
        student = f"student{k:02d}"
        kind = ("complete", "complete", "complete", "starter", "one_stub")[k % 5]
        if kind == "complete":
            nb = solution
        elif kind == "starter":
            nb = starter
        else:  # the released stub in place of one exercise cell
            nb = _copy(solution)
            index = exercises[k % len(exercises)]
            stubbed = release_notebook(_single_cell(solution, index))
            nb.cells[index].source = stubbed.cells[0].source
        nbformat.write(nb, folder / f"{student}.ipynb")
        kinds[student] = kind
    return kinds


def _copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return nbformat.reads(nbformat.writes(nb), as_version=4)


def _single_cell(nb: nbformat.NotebookNode, index: int) -> nbformat.NotebookNode:
    one = _copy(nb)
    one.cells = [one.cells[index]]
    return one


def grade_class(folder: Path, lab: str, workers: int, out: Path) -> tuple[list[Record], float]:
    """Grade the class once: (records, wall seconds). The batch log is kept quiet; main prints the table."""
    opts = BatchOptions(lab, workers=workers)  # the limits `grader batch` uses by default
    start = time.monotonic()
    records = run_batch(folder, opts, out, log=io.StringIO())
    return records, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="01")
    parser.add_argument("--n", type=int, default=40, help="submissions in the class (default 40)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    lab = args.lab.zfill(2)
    with tempfile.TemporaryDirectory(prefix="sl-bench-") as tmp:
        subs = Path(tmp) / "subs"
        kinds = make_class(subs, lab, args.n)
        counts = {k: list(kinds.values()).count(k) for k in ("complete", "starter", "one_stub")}
        print(f"lab {lab}: {args.n} submissions {counts}, {os.cpu_count()} CPUs")
        print("workers  wall_s  per_min  load_avg_1m_after")
        books = []
        for workers in args.workers:
            out = Path(tmp) / f"w{workers}" / "gradebook.csv"
            _, wall = grade_class(subs, lab, workers, out)
            print(f"{workers:7d}  {wall:6.1f}  {60 * args.n / wall:7.2f}  {os.getloadavg()[0]:.2f}", flush=True)
            with open(out, newline="") as f:
                books.append(list(csv.DictReader(f)))
        same = all(book == books[0] for book in books)
        print("gradebooks identical across runs:", same)
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
