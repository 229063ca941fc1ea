"""Execute an untrusted notebook in a fresh kernel, within limits, then grade it there.

Limits: a per-cell timeout (interrupt, then carry on), a whole-notebook budget, a
memory cap (a watchdog kills the kernel past it), and an output cap. Execution goes
on past failing cells so later questions are still graded. Anything on stderr
(warnings, tqdm bars) is just output: it never costs points.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from grader.grading import LabResult, QuestionResult, environment
from grader.kernel import grading_cell_source
from grader.registry import UnknownLab, lab_ids, load_lab

KERNEL_NAME = "specialist-labs"


class UnusableInput(Exception):
    """Input that cannot be graded at all (exit code 2): not a notebook, unknown lab, ..."""


@dataclass
class Limits:
    cell_timeout_s: float = 300.0
    total_timeout_s: float = 1800.0
    memory_mb: int = 8192
    output_chars: int = 2_000_000
    grading_timeout_s: float = 600.0


@dataclass
class Execution:
    cells: int = 0
    cells_run: int = 0
    errors: list[dict] = field(default_factory=list)
    timed_out_cells: list[int] = field(default_factory=list)
    kernel_died: str | None = None
    budget_exhausted: bool = False
    output_truncated: bool = False
    duration_s: float = 0.0
    kernel_log_tail: str = ""
    timed_out_sources: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "timed_out_sources"}


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    path = Path(path)
    if not path.is_file():
        raise UnusableInput(f"{path}: no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnusableInput(f"{path}: not a notebook (invalid JSON: {exc})") from None
    if not isinstance(raw, dict) or "cells" not in raw:
        raise UnusableInput(f"{path}: not a notebook (no 'cells')")
    if raw.get("nbformat") != 4:
        raise UnusableInput(f"{path}: unsupported nbformat version {raw.get('nbformat')!r} (need 4)")
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        raise UnusableInput(f"{path}: not a valid notebook ({type(exc).__name__}: {str(exc)[:200]})") from None
    return nb


def detect_lab(nb: nbformat.NotebookNode, path: Path, lab: str | None) -> str:
    """--lab wins, then notebook metadata, then the NN_ filename prefix."""
    candidate = lab or nb.metadata.get("specialist_labs", {}).get("lab")
    if candidate is None and path.name[:2].isdigit():
        candidate = path.name[:2]
    if candidate is None:
        raise UnusableInput(f"{path}: cannot tell which lab this is; pass --lab NN")
    try:
        load_lab(str(candidate))
    except UnknownLab:
        raise UnusableInput(f"unknown lab '{candidate}' (known: {', '.join(lab_ids())})") from None
    return str(candidate).zfill(2)


def _kernel_spec_dir() -> str:
    """A kernelspec pinned to *this* interpreter, so the kernel sees the same grader and torch."""
    root = Path(tempfile.mkdtemp(prefix="sl-kernelspec-"))
    spec = root / KERNEL_NAME
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Specialist Labs grader", "language": "python"})
    )
    return str(root)


class _LimitedClient(NotebookClient):
    """nbclient with an output cap and a record of which cells timed out."""

    def __init__(self, *args, output_chars: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._output_budget = output_chars
        self.truncated = False
        self.timed_out: list[int] = []
        self.current_index = -1

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {})))
        if self._output_budget - size < 0:
            if not self.truncated:
                self.truncated = True
                outs.append(nbformat.v4.new_output("stream", name="stderr", text="[output truncated by grader]\n"))
            return None
        self._output_budget -= size
        return super().output(outs, msg, display_id, cell_index)

    async def _async_handle_timeout(self, timeout, cell=None):
        self.timed_out.append(self.current_index)
        return await super()._async_handle_timeout(timeout, cell)


class _MemoryWatchdog(threading.Thread):
    """Kill the kernel (and its children) when their resident memory passes the cap."""

    def __init__(self, pid: int, limit_mb: int):
        super().__init__(daemon=True)
        self.pid, self.limit_mb = pid, limit_mb
        self.tripped_mb: float | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop_event.wait(0.1):
            try:
                procs = [proc, *proc.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs) / 2**20
            except psutil.Error:
                return
            if rss > self.limit_mb:
                self.tripped_mb = rss
                for p in procs:
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                return

    def stop(self) -> None:
        self._stop_event.set()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if "without encryption" not in ln]
    return "\n".join(keep[-lines:])


def _cell_error(cell) -> dict | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return {"ename": out.get("ename", ""), "evalue": str(out.get("evalue", ""))[:300]}
    return None


def grade_notebook(
    path: str | Path,
    lab: str | None = None,
    limits: Limits | None = None,
    include_hidden: bool = True,
    workdir: str | Path | None = None,
    env: dict | None = None,
) -> LabResult:
    """Execute the notebook at `path` and run its lab's checks; never raises for learner faults."""
    path = Path(path)
    limits = limits or Limits()
    nb = read_notebook(path)
    lab_id = detect_lab(nb, path, lab)
    lab_obj = load_lab(lab_id)
    start = time.monotonic()
    own_workdir = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="sl-grade-"))
    private = Path(tempfile.mkdtemp(prefix="sl-results-"))
    spec_dir = _kernel_spec_dir()
    out_path = str(private / f"{secrets.token_hex(8)}.json")
    nonce = secrets.token_hex(16)
    kernel_env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline", **(env or {})}
    kernel_env.setdefault("PYTHONHASHSEED", "0")
    execution = Execution(cells=sum(1 for c in nb.cells if c.cell_type == "code"))
    grading_status: dict = {}
    try:
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[spec_dir])
        )
        client = _LimitedClient(
            nb,
            km=km,
            timeout=limits.cell_timeout_s,
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={"ename": "CellTimeoutError", "evalue": "cell timed out", "traceback": []},
            resources={"metadata": {"path": str(workdir)}},
            output_chars=limits.output_chars,
        )
        kernel_log = open(private / "kernel.log", "wb")  # noqa: SIM115 - closed with the kernel below
        with client.setup_kernel(env=kernel_env, cwd=str(workdir), stdout=kernel_log, stderr=kernel_log):
            pid = km.provisioner.process.pid if getattr(km.provisioner, "process", None) else km.provisioner.pid
            watchdog = _MemoryWatchdog(pid, limits.memory_mb)
            watchdog.start()
            try:
                _execute_cells(client, nb, limits, start, execution, watchdog)
                if execution.kernel_died is None:
                    grading_status = _run_grading(client, lab_id, out_path, nonce, include_hidden, limits, watchdog)
            finally:
                watchdog.stop()
                _shutdown(km)
    finally:
        execution.duration_s = round(time.monotonic() - start, 2)
        execution.output_truncated = getattr(locals().get("client"), "truncated", False)
        if "kernel_log" in locals():
            kernel_log.close()
            if execution.kernel_died:
                execution.kernel_log_tail = _tail(private / "kernel.log")
        results = _collect(lab_obj, out_path, nonce, execution, grading_status)
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(spec_dir, ignore_errors=True)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return LabResult.from_questions(
        lab_id,
        results,
        duration_s=execution.duration_s,
        environment=environment(),
        execution=execution.to_dict(),
    )


def _shutdown(km) -> None:
    """We own the kernel (nbclient does not when handed a manager): always stop it."""
    try:
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)
    except Exception:
        pid = getattr(getattr(km.provisioner, "process", None), "pid", None)
        if pid:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


def _died(execution: Execution, watchdog: _MemoryWatchdog, where: str) -> None:
    if watchdog.tripped_mb is not None:
        execution.kernel_died = f"memory limit exceeded ({watchdog.tripped_mb:.0f} MB used) {where}"
    else:
        execution.kernel_died = f"the kernel died (crashed or exited) {where}"


def _execute_cells(client, nb, limits: Limits, start: float, execution: Execution, watchdog) -> None:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        remaining = limits.total_timeout_s - (time.monotonic() - start)
        if remaining <= 1:
            execution.budget_exhausted = True
            return
        client.timeout = int(max(1, min(limits.cell_timeout_s, remaining)))
        client.current_index = index
        try:
            client.execute_cell(cell, index)
        except DeadKernelError:
            _died(execution, watchdog, f"while running cell {index}")
            return
        execution.cells_run += 1
        err = _cell_error(cell)
        if err:
            execution.errors.append({"cell": index, **err})
        if client.timed_out and client.timed_out[-1] == index:
            execution.timed_out_cells.append(index)
            execution.timed_out_sources.append(cell.source)
            if not _responsive(client):
                execution.kernel_died = f"the kernel stopped responding after cell {index} timed out"
                return


def _responsive(client) -> bool:
    """After an interrupt, is the kernel idle again? A learner loop that swallows KeyboardInterrupt is not."""
    client.timeout = 10
    n = len(client.timed_out)
    try:
        _execute_extra(client, nbformat.v4.new_code_cell("pass"))
    except DeadKernelError:
        return False
    return len(client.timed_out) == n


def _execute_extra(client, cell) -> None:
    """Run a cell that is not the learner's. nbclient writes each executed cell back to nb.cells[index], so the
    cell gets a real slot at the end for the duration and is removed afterwards; a negative index would overwrite
    the learner's last cells."""
    client.nb.cells.append(cell)
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1)
    finally:
        client.nb.cells.pop()


def _run_grading(client, lab_id, out_path, nonce, include_hidden, limits: Limits, watchdog) -> dict:
    cell = nbformat.v4.new_code_cell(grading_cell_source(lab_id, out_path, nonce, include_hidden))
    client.timeout = int(limits.grading_timeout_s)
    client.current_index = -2
    n = len(client.timed_out)
    try:
        _execute_extra(client, cell)
    except DeadKernelError:
        if watchdog.tripped_mb is not None:
            return {"died": f"memory limit exceeded ({watchdog.tripped_mb:.0f} MB used) while grading"}
        return {"died": "the kernel died while grading"}
    if len(client.timed_out) > n:
        return {"timeout": True}
    err = _cell_error(cell)
    return {"error": err} if err else {}


def _collect(lab_obj, out_path: str, nonce: str, execution: Execution, grading: dict) -> list[QuestionResult]:
    """Merge what the kernel reported with what happened around it, one result per question."""
    payload: dict = {}
    try:
        with open(out_path) as f:
            payload = json.load(f)
        if payload.get("nonce") != nonce:
            payload = {}
    except (OSError, json.JSONDecodeError):
        payload = {}
    reported = {r["id"]: QuestionResult(**r) for r in payload.get("results", [])}
    current = payload.get("current")
    results = []
    for q in lab_obj.questions.values():
        r = reported.get(q.id)
        if r is None:
            if execution.kernel_died:
                r = QuestionResult(q.id, 0, q.points, "error", f"Not graded: {execution.kernel_died}.", q.title)
            elif grading.get("timeout"):
                r = QuestionResult(q.id, 0, q.points, "timeout", "Not graded: grading ran out of time.", q.title)
            elif q.id == current and grading.get("died"):
                msg = f"Not graded: {grading['died']} (while checking this question)."
                r = QuestionResult(q.id, 0, q.points, "error", msg, q.title)
            else:
                why = grading.get("died") or grading.get("error") or "the grader got no result"
                r = QuestionResult(q.id, 0, q.points, "error", f"Not graded: {why}.", q.title)
        elif r.status in ("not_implemented", "error") and (execution.budget_exhausted or execution.timed_out_cells):
            cells = ", ".join(str(i) for i in execution.timed_out_cells)
            if execution.budget_exhausted:
                r.status, r.feedback = "timeout", "The notebook ran out of time before this question's code ran."
            elif any(name in src for name in q.uses for src in execution.timed_out_sources):
                r.status = "timeout"
                r.feedback = f"Cell(s) {cells} timed out, so this question's objects were not ready.\n{r.feedback}"
        results.append(r)
    return results
