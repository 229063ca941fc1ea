"""Grade a folder of submissions unattended: every submission gets a row, whatever it does.

The orchestration only: find the submissions (grader.submissions), grade each in a worker process of its own
(grader.workers), turn what became of it into a typed row (grader.records) and write that row at once
(grader.gradebook), so an interrupted batch keeps everything graded so far.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from grader.gradebook import gradebook_row, read_gradebook, results_dir, save_record, write_gradebook
from grader.records import Record, RowStatus, classify, shorten
from grader.registry import load_lab
from grader.runner import Limits
from grader.sandbox import Sandbox
from grader.submissions import Submission, discover, review_flags
from grader.workers import Ending, Job, Outcome, WorkerPool

STARTUP_SLACK_S = 120.0  # kernel start, the responsiveness probe and shutdown, beyond the runner's own budgets
INTERRUPTED = "the batch was interrupted before this submission was graded"


@dataclass
class BatchOptions:
    lab: str
    workers: int = 2
    limits: Limits = field(default_factory=Limits)  # the same defaults as `grader grade`: one set, in the runner
    hard_timeout_s: float | None = None  # default: the runner's budgets plus STARTUP_SLACK_S
    sandbox: Sandbox | None = None
    # Throughput comes from workers. Several torch threads per kernel on a busy machine spin against each other:
    # one lab-01 grading took 250 s with 2 threads instead of 20 s with 1 on a loaded 2-core machine.
    threads: int = 1

    @property
    def ceiling_s(self) -> float:
        """After this long a submission's worker and kernel are killed, whatever state they are in."""
        if self.hard_timeout_s:
            return self.hard_timeout_s
        return self.limits.total_timeout_s + self.limits.grading_timeout_s + STARTUP_SLACK_S


# --- one submission's row ----------------------------------------------------------------------------------------


def _record(sub: Submission, lab: str, status: RowStatus, reason: str, result: dict | None, wall_s: float) -> Record:
    return Record(
        student=sub.student,
        lab=lab,
        notebook=str(sub.notebook) if sub.notebook else None,
        status=status,
        reason=shorten(reason),
        score=result["score"] if result else 0,
        max_score=result["max_score"] if result else load_lab(lab).max_score,
        wall_s=round(wall_s, 2),
        review=review_flags(sub.notebook) if sub.notebook else [],
        result=result,
    )


def _job(sub: Submission, notebook: Path, opts: BatchOptions) -> Job:
    lab = str(opts.lab).zfill(2)
    return Job(f"grade-{sub.student}", notebook, lab, opts.limits, opts.ceiling_s, opts.sandbox, opts.threads)


def _row(sub: Submission, lab: str, outcome: Outcome, ceiling_s: float) -> Record:
    """The row for what became of a submission's worker: graded, or why not."""
    wall = outcome.wall_s
    if outcome.ending is Ending.STOPPED:
        return _record(sub, lab, RowStatus.INTERRUPTED, INTERRUPTED, None, wall)
    if outcome.ending is Ending.HUNG:
        why = f"grading did not finish within the hard limit of {ceiling_s:g} s; the grader killed it"
        return _record(sub, lab, RowStatus.TIMEOUT, why, None, wall)
    if outcome.ending is Ending.DIED or outcome.payload is None:
        why = f"the grading process died (exit status {outcome.exitcode})"
        reason = f"{why}: {outcome.log_tail}" if outcome.log_tail else why
        return _record(sub, lab, RowStatus.CRASHED, reason, None, wall)
    if "unusable" in outcome.payload:
        notebook = Path(sub.notebook or "")
        why = outcome.payload["unusable"].replace(str(notebook), notebook.name)
        return _record(sub, lab, RowStatus.UNUSABLE, why, None, wall)
    status, reason = classify(outcome.payload["result"])
    return _record(sub, lab, status, reason, outcome.payload["result"], wall)


# --- the batch ---------------------------------------------------------------------------------------------------


def _progress_line(i: int, n: int, record: Record, failures: int) -> str:
    line = f"[{i}/{n}] {record.student}: {record.score:g}/{record.max_score:g} ({record.status})"
    if not record.status.normal:
        line += f" - {shorten(record.reason, 120)}"
    if record.review:
        line += f" [review: {', '.join(record.review)}]"
    return line + (f"  | not graded normally so far: {failures}" if failures else "")


def summary(records: list[Record], wall_s: float, workers: int) -> str:
    """Counts per status, mean score, wall time and throughput."""
    counts = Counter(r.status for r in records)
    shown = ", ".join(f"{s} {counts[s]}" for s in RowStatus if counts[s])
    scored = [r.score / r.max_score for r in records if r.max_score]
    mean = 100 * sum(scored) / len(scored) if scored else 0.0
    rate = 60 * len(records) / wall_s if wall_s > 0 else 0.0
    review = sum(1 for r in records if r.review)
    lines = [
        f"{len(records)} submissions: {shown or 'none'}",
        f"mean score {mean:.1f}%, wall time {wall_s:.1f} s, {rate:.2f} submissions/min with {workers} worker(s)",
    ]
    if review:
        lines.append(f"{review} flagged for review (see the reason column)")
    return "\n".join(lines)


def _select(subs: list[Submission], only: list[str] | None, root: str | Path) -> list[Submission]:
    if not only:
        return subs
    missing = sorted(set(only) - {s.student for s in subs})
    if missing:
        raise ValueError(f"no submission for {', '.join(missing)} under {root}")
    return [s for s in subs if s.student in only]


def _announce_sandbox(sandbox: Sandbox | None, log: TextIO) -> None:
    if sandbox is None:
        return
    print(f"grader: sandbox: {sandbox.describe()}", file=log, flush=True)
    if sandbox.isolate and not sandbox.isolated:
        print("grader: WARNING: untrusted code runs without filesystem/network isolation", file=log, flush=True)


def run_batch(
    root: str | Path,
    opts: BatchOptions,
    gradebook: str | Path,
    only: list[str] | None = None,
    student: str | None = None,
    log: TextIO | None = None,
) -> list[Record]:
    """Grade every submission under `root` (or just `only`), write the gradebook, return the records.

    With `only`, the other rows of an existing gradebook are kept: that is how one student is regraded.
    """
    log = log or sys.stderr
    gradebook, lab = Path(gradebook), str(opts.lab).zfill(2)
    subs = _select(discover(root, lab, student), only, root)
    existing = read_gradebook(gradebook) if only else {}
    if existing and any(row.get("lab") != lab for row in existing.values()):
        raise ValueError(f"{gradebook} is a gradebook for another lab")
    _announce_sandbox(opts.sandbox, log)
    rows, records, start = dict(existing), [], time.monotonic()

    def finish(record: Record) -> None:
        records.append(record)
        save_record(record, gradebook)
        rows[record.student] = gradebook_row(record)
        write_gradebook(gradebook, lab, rows)
        failures = sum(1 for r in records if not r.status.normal)
        print(_progress_line(len(records), len(subs), record, failures), file=log, flush=True)

    pool = WorkerPool(opts.workers)
    try:
        futures: dict[Future[Outcome], Submission] = {}
        for sub in subs:
            if sub.notebook is None:
                finish(_record(sub, lab, RowStatus.UNUSABLE, sub.problem, None, 0))
            else:
                futures[pool.submit(_job(sub, sub.notebook, opts))] = sub
        for future in as_completed(futures):
            sub = futures[future]
            try:
                record = _row(sub, lab, future.result(), opts.ceiling_s)
            except Exception as exc:  # a grader bug must cost one row, not the batch
                record = _record(sub, lab, RowStatus.CRASHED, f"grader error: {exc!r}", None, 0)
            finish(record)
    except KeyboardInterrupt:
        pool.stop_all()
        done = {r.student for r in records}
        for sub in subs:
            if sub.student not in done:
                record = _record(sub, lab, RowStatus.INTERRUPTED, INTERRUPTED, None, 0)
                records.append(record)
                rows[sub.student] = gradebook_row(record)
        write_gradebook(gradebook, lab, rows)
        raise
    pool.close()
    records.sort(key=lambda r: r.student)
    print(summary(records, time.monotonic() - start, opts.workers), file=log, flush=True)
    print(f"gradebook: {gradebook}  (per-student results in {results_dir(gradebook)}/)", file=log, flush=True)
    return records


def default_hidden(root: str | Path, gradebook: str | Path) -> tuple[Path, ...]:
    """What a sandboxed submission must not read: other submissions, the gradebook, solutions.

    A path that holds what the kernel reads (the grader, the Python installation, the model cache) is never
    hidden.
    """
    import grader
    from grader.sandbox import kernel_paths

    needed = kernel_paths()
    course = Path(grader.__file__).resolve().parents[1]
    candidates = [Path(root), Path(gradebook).parent, course / "solutions", Path.cwd() / "solutions"]
    hidden = []
    for path in candidates:
        path = path.resolve()
        if path.is_file():
            path = path.parent
        if path.exists() and path not in hidden and not any(n == path or path in n.parents for n in needed):
            hidden.append(path)
    return tuple(hidden)
