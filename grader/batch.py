"""Grade a folder of submissions unattended: every submission gets a row, whatever it does.

Each submission is graded by a worker process of its own, which runs `grade_notebook` with a fresh
kernel in a fresh temporary directory. Workers are forked from a server that has already imported
the runner and torch, which saves seconds per submission. The parent only waits: a
worker that crashes becomes a "crashed" row, one that hangs past its hard ceiling is killed with
its kernel and becomes a "timeout" row, and nothing a submission does can stop the batch. Each
finished submission is written at once (results/<student>.json, and the gradebook CSV is
rewritten), so an interrupted batch keeps everything graded so far.
"""

from __future__ import annotations

import csv
import functools
import json
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import psutil

from grader.registry import load_lab
from grader.runner import Limits
from grader.sandbox import Sandbox

NORMAL = ("graded", "partial")  # graded: full marks; partial: graded normally, points lost
ROW_STATUSES = (*NORMAL, "timeout", "memory", "crashed", "unusable", "interrupted")
STARTUP_SLACK_S = 120.0  # kernel start, the responsiveness probe and shutdown, beyond the runner's own budgets
REASON_CHARS = 240
INTERRUPTED = "the batch was interrupted before this submission was graded"

# Code a lab never needs but tricks on the grader do. A match changes no score: it asks a human to look.
REVIEW_PATTERNS = {
    "changes grader internals": r"\bgrader(\.\w+)+\s*=[^=]|sys\.modules|['\"]grader[/\\'\"]|_sl_|grade_in_kernel",
    "installs import hooks": r"meta_path|path_hooks|sys\.path\.(insert|append)|spec_from_file_location",
    "hooks cell execution": r"events\.register|input_transformers|ast_transformers|settrace|setprofile|addaudithook",
    "leaves code running after its cell": r"threading\.Thread|_thread\.|atexit|os\.fork|signal\.signal",
    "reaches for the grader process or its files": r"sl-results|/proc/self|os\.getppid",
}


@dataclass
class Submission:
    student: str
    notebook: Path | None
    problem: str = ""  # why it cannot be graded before anything runs


@dataclass
class BatchOptions:
    lab: str
    workers: int = 2
    limits: Limits = field(default_factory=lambda: Limits(total_timeout_s=900, cell_timeout_s=300, memory_mb=4096))
    hard_timeout_s: float | None = None  # default: the runner's budgets plus STARTUP_SLACK_S
    sandbox: Sandbox | None = None
    # Throughput comes from workers. Several torch threads per kernel on a busy machine spin against each other:
    # one lab-01 grading took 250 s with 2 threads instead of 20 s with 1 on a loaded 2-core machine.
    threads: int = 1

    @property
    def ceiling_s(self) -> float:
        if self.hard_timeout_s:
            return self.hard_timeout_s
        return self.limits.total_timeout_s + self.limits.grading_timeout_s + STARTUP_SLACK_S


# --- finding submissions -----------------------------------------------------------------------------------------


def _notebooks(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*.ipynb") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _pick(student: str, notebooks: list[Path], lab: str) -> Submission:
    """One notebook per student: the only one, else the only one named like the lab (NN_*.ipynb)."""
    if len(notebooks) == 1:
        return Submission(student, notebooks[0])
    if not notebooks:
        return Submission(student, None, "no notebook (.ipynb) in the submission")
    named = [p for p in notebooks if p.name.startswith(f"{lab}_")]
    if len(named) == 1:
        return Submission(student, named[0])
    names = ", ".join(p.name for p in (named or notebooks))
    return Submission(student, None, f"several notebooks ({names}); keep one named {lab}_*.ipynb")


def discover(root: str | Path, lab: str, student: str | None = None) -> list[Submission]:
    """Submissions under `root`, sorted by student.

    A notebook directly in `root` is a student named after the file; a sub-folder is a student named
    after the folder, holding one notebook anywhere inside it. With `student`, all of `root` (a folder
    or a single notebook) is that one student's submission.
    """
    root, lab = Path(root), str(lab).zfill(2)
    if root.is_file():
        return [Submission(student or root.stem, root)]
    if student is not None:
        return [_pick(student, _notebooks(root), lab)]
    groups: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            groups.setdefault(entry.name, []).extend(_notebooks(entry))
        elif entry.suffix == ".ipynb":
            groups.setdefault(entry.stem, []).append(entry)
    return [_pick(name, paths, lab) for name, paths in sorted(groups.items())]


def review_flags(notebook: Path) -> list[str]:
    """Reasons a human should read this notebook's code; empty for ordinary lab work."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
        code = "\n".join(
            "".join(c.get("source", "")) if isinstance(c.get("source"), list) else str(c.get("source", ""))
            for c in cells
            if isinstance(c, dict) and c.get("cell_type") == "code"
        )
    except (OSError, ValueError, AttributeError):
        return []
    return [why for why, pattern in REVIEW_PATTERNS.items() if re.search(pattern, code)]


# --- one submission ----------------------------------------------------------------------------------------------


def _short(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(result: dict) -> tuple[str, str]:
    """(row status, short reason) for a LabResult dict: what decided this row, most important first."""
    ex, questions = result.get("execution", {}), result.get("questions", [])
    died = ex.get("kernel_died")
    if died:
        status = "memory" if "memory limit" in died else "timeout" if "stopped responding" in died else "crashed"
        return status, _short(died)
    if any(q["status"] == "timeout" for q in questions):
        status = "timeout"
    else:
        status = "graded" if result["score"] >= result["max_score"] else "partial"
    lost: dict[str, list[str]] = {}
    for q in questions:
        if q["status"] not in ("passed", "skipped"):
            lost.setdefault(q["status"], []).append(q["id"])
    notes = [f"{kind}: {', '.join(ids)}" for kind, ids in lost.items()]
    if ex.get("budget_exhausted"):
        notes.append("the notebook's time budget ran out")
    if ex.get("timed_out_cells"):
        notes.append(f"cell(s) {', '.join(map(str, ex['timed_out_cells']))} timed out")
    if ex.get("output_truncated"):
        notes.append("output truncated at the cap")
    if ex.get("errors"):
        errs = ", ".join(f"{e['cell']} ({e['ename']})" for e in ex["errors"][:3])
        notes.append(f"errors in cell(s) {errs}{', ...' if len(ex['errors']) > 3 else ''}")
    return status, _short("; ".join(notes))


def _record(sub: Submission, lab: str, status: str, reason: str, result: dict | None, wall_s: float) -> dict:
    max_score = result["max_score"] if result else load_lab(lab).max_score
    return {
        "student": sub.student,
        "lab": lab,
        "notebook": str(sub.notebook) if sub.notebook else None,
        "status": status,
        "reason": _short(reason),
        "score": result["score"] if result else 0,
        "max_score": max_score,
        "wall_s": round(wall_s, 2),
        "review": review_flags(sub.notebook) if sub.notebook else [],
        "result": result,
    }


def _kill_tree(pid: int) -> None:
    """The worker and everything under it: its kernel runs in a session of its own."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.Error:
            pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class _Workers:
    """Running worker processes, so an interrupted batch can stop them all."""

    def __init__(self) -> None:
        self.procs: set[multiprocessing.process.BaseProcess] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def stop_all(self) -> None:
        self.stopping.set()
        with self.lock:
            procs = list(self.procs)
        for proc in procs:
            _kill_tree(proc.pid)


def grade_submission(sub: Submission, opts: BatchOptions, workers: _Workers | None = None) -> dict:
    """Grade one submission in a worker process; always returns its record."""
    start = time.monotonic()
    lab = str(opts.lab).zfill(2)
    if sub.notebook is None:
        return _record(sub, lab, "unusable", sub.problem, None, 0)
    workers = workers or _Workers()
    with tempfile.TemporaryDirectory(prefix="sl-batch-") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "worker.log"
        spec = {
            "notebook": str(sub.notebook),
            "lab": lab,
            "out": str(out),
            "limits": asdict(opts.limits),
            "sandbox": _sandbox_spec(opts.sandbox),
            "threads": opts.threads,
        }
        proc = _worker_context().Process(target=_worker_main, args=(spec, str(log)), name=f"grade-{sub.student}")
        proc.start()
        with workers.lock:
            workers.procs.add(proc)
        try:
            proc.join(opts.ceiling_s)
            hung = proc.exitcode is None
            if hung:
                _kill_tree(proc.pid)
            proc.join()
        finally:
            with workers.lock:
                workers.procs.discard(proc)
        wall = time.monotonic() - start
        if workers.stopping.is_set():
            return _record(sub, lab, "interrupted", INTERRUPTED, None, wall)
        if hung:
            why = f"grading did not finish within the hard limit of {opts.ceiling_s:g} s; the grader killed it"
            return _record(sub, lab, "timeout", why, None, wall)
        try:
            outcome = json.loads(out.read_text())
        except (OSError, ValueError):
            why = f"the grading process died (exit status {proc.exitcode})"
            tail = _tail(log)
            return _record(sub, lab, "crashed", f"{why}: {tail}" if tail else why, None, wall)
    if "unusable" in outcome:
        why = outcome["unusable"].replace(str(sub.notebook), sub.notebook.name)
        return _record(sub, lab, "unusable", why, None, wall)
    status, reason = classify(outcome["result"])
    return _record(sub, lab, status, reason, outcome["result"], wall)


def _sandbox_spec(sandbox: Sandbox | None) -> dict | None:
    """Decided here, once: a worker must not quietly get a different sandbox than the one announced."""
    if sandbox is None:
        return None
    spec = asdict(sandbox)
    spec["hide"] = [str(p) for p in sandbox.hide]
    spec["isolate"] = sandbox.isolated
    return spec


@functools.lru_cache(maxsize=1)
def _worker_context() -> multiprocessing.context.BaseContext:
    """Fork workers from a server that imported the runner once; plain spawn where there is no forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["grader.runner"])
    return ctx


def _worker_main(spec: dict, log: str) -> None:
    """A worker process: a session of its own (a Ctrl-C is for the batch to handle), all output to `log`."""
    if hasattr(os, "setsid"):
        os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.exit(_worker(spec))


def _worker(spec: dict) -> int:
    """Inside the worker process: grade one notebook and write the outcome for the parent."""
    from grader.runner import UnusableInput, grade_notebook

    sandbox = None
    if spec["sandbox"] is not None:
        sandbox = Sandbox(**{**spec["sandbox"], "hide": tuple(Path(p) for p in spec["sandbox"]["hide"])})
    threads = str(spec["threads"])
    try:
        result = grade_notebook(
            spec["notebook"],
            lab=spec["lab"],
            limits=Limits(**spec["limits"]),
            sandbox=sandbox,
            env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        )
        outcome = {"result": result.to_dict()}
    except UnusableInput as exc:
        outcome = {"unusable": str(exc)}
    tmp = spec["out"] + ".tmp"
    Path(tmp).write_text(json.dumps(outcome))
    os.replace(tmp, spec["out"])
    return 0


# --- the gradebook -----------------------------------------------------------------------------------------------


def results_dir(gradebook: Path) -> Path:
    return Path(gradebook).parent / "results"


def _cell(value: object) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas; student text must not."""
    text = f"{value:g}" if isinstance(value, float | int) else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def gradebook_columns(lab: str) -> list[str]:
    return ["student", "lab", *load_lab(lab).questions, "total", "max_score", "status", "reason"]


def gradebook_row(record: dict) -> dict[str, str]:
    """One CSV row: a score per question (blank when not graded), total, status and reason."""
    scores = {q["id"]: q["score"] for q in (record["result"] or {}).get("questions", []) if q["max_score"]}
    reason = record["reason"]
    if record.get("review"):
        reason = _short(f"REVIEW: {', '.join(record['review'])}" + (f"; {reason}" if reason else ""))
    row = {"student": record["student"], "lab": record["lab"], "total": record["score"]}
    row |= {qid: scores.get(qid, "") for qid in load_lab(record["lab"]).questions}
    row |= {"max_score": record["max_score"], "status": record["status"], "reason": reason}
    return {k: _cell(v) for k, v in row.items()}


def read_gradebook(path: Path) -> dict[str, dict[str, str]]:
    if not Path(path).is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def write_gradebook(path: Path, lab: str, rows: dict[str, dict[str, str]]) -> None:
    """Atomically, sorted by student, so a crash mid-write never leaves half a gradebook."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=gradebook_columns(lab), extrasaction="ignore")
        writer.writeheader()
        for student in sorted(rows):
            writer.writerow(rows[student])
    os.replace(tmp, path)


def save_record(record: dict, gradebook: Path) -> Path:
    folder = results_dir(gradebook)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['student']}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


# --- the batch ---------------------------------------------------------------------------------------------------


def _progress_line(i: int, n: int, record: dict, failures: int) -> str:
    line = f"[{i}/{n}] {record['student']}: {record['score']:g}/{record['max_score']:g} ({record['status']})"
    if record["status"] not in NORMAL:
        line += f" - {_short(record['reason'], 120)}"
    if record.get("review"):
        line += f" [review: {', '.join(record['review'])}]"
    return line + (f"  | not graded normally so far: {failures}" if failures else "")


def summary(records: list[dict], wall_s: float, workers: int) -> str:
    """Counts per status, mean score, wall time and throughput."""
    counts = Counter(r["status"] for r in records)
    shown = ", ".join(f"{s} {counts[s]}" for s in ROW_STATUSES if counts[s])
    scored = [r["score"] / r["max_score"] for r in records if r["max_score"]]
    mean = 100 * sum(scored) / len(scored) if scored else 0.0
    rate = 60 * len(records) / wall_s if wall_s > 0 else 0.0
    review = sum(1 for r in records if r.get("review"))
    lines = [
        f"{len(records)} submissions: {shown or 'none'}",
        f"mean score {mean:.1f}%, wall time {wall_s:.1f} s, {rate:.2f} submissions/min with {workers} worker(s)",
    ]
    if review:
        lines.append(f"{review} flagged for review (see the reason column)")
    return "\n".join(lines)


def run_batch(
    root: str | Path,
    opts: BatchOptions,
    gradebook: str | Path,
    only: list[str] | None = None,
    student: str | None = None,
    log: TextIO | None = None,
) -> list[dict]:
    """Grade every submission under `root` (or just `only`), write the gradebook, return the records.

    With `only`, the other rows of an existing gradebook are kept: that is how one student is regraded.
    """
    log = log or sys.stderr
    gradebook, lab = Path(gradebook), str(opts.lab).zfill(2)
    subs = discover(root, lab, student)
    if only:
        missing = sorted(set(only) - {s.student for s in subs})
        if missing:
            raise ValueError(f"no submission for {', '.join(missing)} under {root}")
        subs = [s for s in subs if s.student in only]
    existing = read_gradebook(gradebook) if only else {}
    if existing and any(row.get("lab") != lab for row in existing.values()):
        raise ValueError(f"{gradebook} is a gradebook for another lab")
    if opts.sandbox is not None:
        print(f"grader: sandbox: {opts.sandbox.describe()}", file=log, flush=True)
        if opts.sandbox.isolate and not opts.sandbox.isolated:
            print("grader: WARNING: untrusted code runs without filesystem/network isolation", file=log, flush=True)
    rows, records, workers, start = dict(existing), [], _Workers(), time.monotonic()
    pool = ThreadPoolExecutor(max_workers=max(1, opts.workers))
    futures = {pool.submit(grade_submission, s, opts, workers): s for s in subs}
    try:
        for i, future in enumerate(as_completed(futures), 1):
            try:
                record = future.result()
            except Exception as exc:  # a grader bug must cost one row, not the batch
                record = _record(futures[future], lab, "crashed", f"grader error: {exc!r}", None, 0)
            records.append(record)
            save_record(record, gradebook)
            rows[record["student"]] = gradebook_row(record)
            write_gradebook(gradebook, lab, rows)
            failures = sum(1 for r in records if r["status"] not in NORMAL)
            print(_progress_line(i, len(subs), record, failures), file=log, flush=True)
    except KeyboardInterrupt:
        workers.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        done = {r["student"] for r in records}
        for sub in subs:
            if sub.student not in done:
                record = _record(sub, lab, "interrupted", INTERRUPTED, None, 0)
                records.append(record)
                rows[sub.student] = gradebook_row(record)
        write_gradebook(gradebook, lab, rows)
        raise
    pool.shutdown()
    records.sort(key=lambda r: r["student"])
    print(summary(records, time.monotonic() - start, opts.workers), file=log, flush=True)
    print(f"gradebook: {gradebook}  (per-student results in {results_dir(gradebook)}/)", file=log, flush=True)
    return records


def default_hidden(root: Path, gradebook: Path) -> tuple[Path, ...]:
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
