"""Load-proof timing: run times in units of a calibration workload, and the course's stated run times.

A lab that runs in 27 s on a quiet 2-core machine took 201 s while other jobs shared it, so absolute
seconds make poor budgets. `calibrate()` times a small fixed workload in the *same* process; a run time
divided by it (a ratio in "calibration units") moves far less with load and from machine to machine.

docs/lab-timings.json is the one source of the quiet-machine run times that README.md's lab table and each
solution notebook's first cell state; `python -m grader.timings update-docs` writes them there and
`python -m grader.timings check` fails when they drift. Test runs may `record()` what they measured into
.cache/lab-timings.json, and `python -m grader.timings show` projects those back to quiet-machine seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PATH = ROOT / "docs" / "lab-timings.json"
DEFAULT_REPORT = ROOT / ".cache" / "lab-timings.json"

# The one sentence every solution notebook's first cell states (on one line, so it can be rewritten in place).
EST = " (est.)"
SENTENCE = "Running all cells: ~{cpu} s on a laptop CPU{cpu_est}, ~{gpu} s on a GPU{gpu_est}."
SENTENCE_RE = re.compile(
    r"Running all cells: ~(?P<cpu>\d+(?:\.\d+)?) s on a laptop CPU(?P<cpu_est> \(est\.\))?, "
    r"~(?P<gpu>\d+(?:\.\d+)?) s on a GPU(?P<gpu_est> \(est\.\))?\."
)
SENTENCE_START = "Running all cells"
README_COLUMNS = ("CPU run", "GPU run")  # header cells of README's lab table (a footnote mark may follow)


# ----------------------------------------------------------------------------- calibration


def workload() -> float:
    """One run of the calibration work; returns a checksum so a test can see the work is the same every time.

    Chained fp32 matmuls (a lab's tensor maths) and AdamW steps of a tiny MLP (a lab's training loops, with
    their per-op overhead). Fixed shapes and seed; the caller's global RNG state and grad mode are left alone.
    """
    import torch

    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        a, b = torch.randn(512, 512), torch.randn(512, 512)
        for _ in range(12):
            a = torch.tanh(a @ b / math.sqrt(512))
        model = torch.nn.Sequential(
            torch.nn.Linear(128, 512), torch.nn.GELU(), torch.nn.Linear(512, 512), torch.nn.GELU(),
            torch.nn.Linear(512, 64),
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        x, y = torch.randn(256, 128), torch.randint(0, 64, (256,))
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss.item() + a.sum().item()


def calibrate(repeats: int = 3) -> float:
    """Seconds for `workload()` here and now: the best of `repeats` runs.

    The best run is the one least disturbed by other processes (and the first pays torch's one-off start-up),
    so it is the steadiest yardstick to divide other timings of this process by.
    """
    best = math.inf
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        workload()
        best = min(best, time.perf_counter() - start)
    return best


# ----------------------------------------------------------------------------- measured timings (a report)


@dataclass(frozen=True)
class LabTiming:
    """A solution run measured alongside the calibration workload, in the same process."""

    lab: str
    solution_s: float
    calibration_s: float

    @property
    def ratio(self) -> float:
        """Run time in calibration units: comparable across machines and load."""
        return self.solution_s / self.calibration_s

    def to_json(self) -> dict[str, float]:
        return {"solution_s": round(self.solution_s, 3), "calibration_s": round(self.calibration_s, 4),
                "ratio": round(self.ratio, 2)}  # ratio is for readers of the file; it is recomputed on load


def _read_report(path: Path) -> dict[str, LabTiming]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {lab: LabTiming(lab, float(t["solution_s"]), float(t["calibration_s"]))
            for lab, t in sorted(data["labs"].items())}


def load_report(path: Path | str = DEFAULT_REPORT) -> dict[str, LabTiming]:
    """The recorded timings by lab id; empty when nothing was recorded yet."""
    path = Path(path)
    return _read_report(path) if path.exists() else {}


def _write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record(timing: LabTiming, path: Path | str = DEFAULT_REPORT) -> None:
    """Add or replace one lab's timing in the report at `path`.

    pytest-xdist workers record concurrently: the read-merge-write happens under a file lock, so no worker's
    entry is lost. An unreadable report (edited by hand) is started afresh: it is a cache, not a record.
    """
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            timings = load_report(path)
        except (ValueError, KeyError, TypeError):
            timings = {}
        timings[timing.lab] = timing
        data = {"labs": {lab: t.to_json() for lab, t in sorted(timings.items())}}
        _write_atomically(path, json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------- the quiet-machine reference


@dataclass(frozen=True)
class LabReference:
    """A lab's stated run time of its whole solution notebook on a quiet machine."""

    lab: str
    cpu_s: float
    gpu_s: float
    cpu_estimate: bool = False
    gpu_estimate: bool = True

    def sentence(self) -> str:
        """The exact time sentence of the lab's notebook."""
        return SENTENCE.format(cpu=f"{self.cpu_s:g}", gpu=f"{self.gpu_s:g}", cpu_est=EST if self.cpu_estimate else "",
                               gpu_est=EST if self.gpu_estimate else "")

    def readme_cells(self) -> tuple[str, str]:
        """The lab's CPU and GPU cells in README's lab table."""
        return (f"~{self.cpu_s:g} s" + (EST if self.cpu_estimate else ""),
                f"~{self.gpu_s:g} s" + (EST if self.gpu_estimate else ""))


@dataclass(frozen=True)
class Reference:
    """docs/lab-timings.json: stated run times, and `calibrate()` on the machine that measured the CPU ones."""

    calibration_s: float | None
    labs: dict[str, LabReference]

    def projected_s(self, timing: LabTiming) -> float | None:
        """What `timing` would have taken on the quiet reference machine."""
        return None if self.calibration_s is None else timing.ratio * self.calibration_s

    def allowed_s(self, lab: str, calibration_s: float, factor: float = 5.0) -> float:
        """A load-proof time budget for a lab's solution run: its quiet ratio, scaled to this process's
        calibration, times a generous factor. Needs a reference calibration; the lab must have a CPU figure."""
        if self.calibration_s is None:
            raise ValueError("the reference has no calibration_s: run `python -m grader.timings calibrate`")
        return factor * self.labs[lab].cpu_s / self.calibration_s * calibration_s


def load_reference(path: Path | str = REFERENCE_PATH) -> Reference:
    """docs/lab-timings.json. A GPU figure counts as an estimate unless the file says otherwise."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    labs = {
        lab: LabReference(lab, float(v["cpu_s"]), float(v["gpu_s"]), bool(v.get("cpu_estimate", False)),
                          bool(v.get("gpu_estimate", True)))
        for lab, v in sorted(data["labs"].items())
    }
    cal = data.get("calibration_s")
    return Reference(float(cal) if cal is not None else None, labs)


def render_table(report: Mapping[str, LabTiming] | Iterable[LabTiming], reference: Reference | None = None) -> str:
    """A plain text table of measured timings, projected back to the quiet reference machine.

    "stated s" is what docs/lab-timings.json says: a projection far from it means the docs need a new figure.
    """
    timings = list(report.values()) if isinstance(report, Mapping) else list(report)
    if reference is None:
        reference = load_reference() if REFERENCE_PATH.exists() else Reference(None, {})
    header = ("lab", "solution s", "calibration s", "ratio", "quiet s (proj.)", "stated s")
    rows = []
    for t in sorted(timings, key=lambda t: t.lab):
        projected = reference.projected_s(t)
        stated = reference.labs.get(t.lab)
        rows.append((t.lab, f"{t.solution_s:.1f}", f"{t.calibration_s:.3f}", f"{t.ratio:.1f}",
                     "-" if projected is None else f"{projected:.1f}", "-" if stated is None else f"{stated.cpu_s:g}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:  # lab id left-aligned, numbers right-aligned
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines = [line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]
    if reference.calibration_s is not None:
        lines.append(f"(quiet s = ratio x {reference.calibration_s:.3f} s, calibrate() on the reference machine)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- README and notebooks


def _solution_notebooks(root: Path) -> dict[str, Path]:
    return {p.name[:2]: p for p in sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb"))}


def _readme_table(lines: list[str]) -> tuple[int, int, list[int]]:
    """(CPU column, GPU column, row line numbers) of README's lab table."""
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.split("|")]
        hits = [next((j for j, c in enumerate(cells) if c.startswith(col)), None) for col in README_COLUMNS]
        if line.startswith("|") and None not in hits:
            rows = []
            for j in range(i + 2, len(lines)):  # skip the |---| line
                if not lines[j].startswith("|"):
                    break
                rows.append(j)
            return hits[0], hits[1], rows
    raise ValueError(f"README.md has no table with {README_COLUMNS} columns")


def _sync_readme(root: Path, reference: Reference, write: bool) -> list[str]:
    path = root / "README.md"
    lines = path.read_text(encoding="utf-8").split("\n")
    cpu_col, gpu_col, rows = _readme_table(lines)
    problems, seen = [], set()
    for j in rows:
        cells = lines[j].split("|")
        lab = cells[1].strip()
        seen.add(lab)
        if lab not in reference.labs:
            problems.append(f"README.md: lab {lab} is not in docs/lab-timings.json")
            continue
        want_cpu, want_gpu = reference.labs[lab].readme_cells()
        if (cells[cpu_col].strip(), cells[gpu_col].strip()) != (want_cpu, want_gpu):
            problems.append(f"README.md: lab {lab} says {cells[cpu_col].strip()} / {cells[gpu_col].strip()}, "
                            f"docs/lab-timings.json {want_cpu} / {want_gpu}")
            cells[cpu_col], cells[gpu_col] = f" {want_cpu} ", f" {want_gpu} "
            lines[j] = "|".join(cells)
    problems += [f"README.md: no row for lab {lab}" for lab in sorted(set(reference.labs) - seen)]
    if write and problems:
        path.write_text("\n".join(lines), encoding="utf-8")
    return problems


def _sync_notebook(path: Path, ref: LabReference | None, write: bool) -> list[str]:
    import nbformat

    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
    where = f"{path.parent.name}/{path.name}"
    if ref is None:
        return [f"{where}: lab {path.name[:2]} is not in docs/lab-timings.json"]
    intro = nb.cells[0]
    matches = list(SENTENCE_RE.finditer(intro.source))
    if len(matches) != 1 or intro.source.count(SENTENCE_START) != 1:
        return [f"{where}: the first cell should state, once and on one line, {ref.sentence()!r}"]
    if matches[0].group() == ref.sentence():
        return []
    if write:
        intro.source = intro.source.replace(matches[0].group(), ref.sentence())
        text = nbformat.writes(nb, version=4)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return [f"{where}: says {matches[0].group()!r}, docs/lab-timings.json {ref.sentence()!r}"]


def sync_docs(root: Path | str = ROOT, reference: Reference | None = None, write: bool = False) -> list[str]:
    """Where README.md and the solution notebooks disagree with the reference; with write=True, fix them.

    Returns the disagreements found (before fixing). A notebook whose sentence is missing or garbled is
    reported, never rewritten: where to put it is a decision for a human.
    """
    root = Path(root)
    reference = reference or load_reference(root / "docs" / "lab-timings.json")
    problems = _sync_readme(root, reference, write)
    notebooks = _solution_notebooks(root)
    for lab, path in notebooks.items():
        problems += _sync_notebook(path, reference.labs.get(lab), write)
    problems += [f"docs/lab-timings.json: lab {lab} has no solution notebook"
                 for lab in sorted(set(reference.labs) - set(notebooks))]
    return problems


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.timings", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print a timings report, projected to quiet-machine seconds")
    show.add_argument("path", nargs="?", default=str(DEFAULT_REPORT))
    sub.add_parser("update-docs", help="write docs/lab-timings.json's times into README.md and the solutions")
    sub.add_parser("check", help="exit 1 if README.md or a solution notebook disagrees with docs/lab-timings.json")
    cal = sub.add_parser("calibrate", help="print calibrate() on this machine (for docs/lab-timings.json)")
    cal.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    if args.command == "show":
        report = load_report(args.path)
        if not report:
            print(f"no timings recorded in {args.path}", file=sys.stderr)
            return 1
        print(render_table(report))
        return 0
    if args.command == "calibrate":
        print(f"{calibrate(args.repeats):.4f}")
        return 0
    if args.command == "update-docs":
        problems = sync_docs(write=True)
        print("\n".join(problems) if problems else "README.md and solutions/ already agree with docs/lab-timings.json")
        unfixable = sync_docs()
        if unfixable:
            print("\nstill wrong (fix by hand):\n" + "\n".join(unfixable), file=sys.stderr)
            return 1
        if problems:
            print("\nupdated; now run `grader release` to regenerate labs/.")
        return 0
    problems = sync_docs()
    if problems:
        print("\n".join(problems) + "\n\nrun `python -m grader.timings update-docs`", file=sys.stderr)
        return 1
    print("README.md and solutions/ agree with docs/lab-timings.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
