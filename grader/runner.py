"""Execute an untrusted notebook in a fresh kernel, within limits, then grade it there.

Limits: a per-cell timeout (interrupt, then carry on), a whole-notebook budget, a
memory cap (a watchdog kills the kernel past it), and an output cap. Execution goes
on past failing cells so later questions are still graded. Anything on stderr
(warnings, tqdm bars) is just output: it never costs points.
"""

from __future__ import annotations

import inspect
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

from grader.grading import STATUSES, LabResult, QuestionResult, environment
from grader.kernel import grading_cell_source
from grader.registry import UnknownLab, lab_ids, load_lab
from grader.sandbox import Sandbox

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


def _kernel_spec_dir(sandbox: Sandbox | None = None, writable: tuple[Path, ...] = ()) -> str:
    """A kernelspec pinned to *this* interpreter, so the kernel sees the same grader and torch."""
    root = Path(tempfile.mkdtemp(prefix="sl-kernelspec-"))
    spec = root / KERNEL_NAME
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernelspec = {"argv": argv, "display_name": "Specialist Labs grader", "language": "python"}
    if sandbox is not None:
        kernelspec.update(sandbox.kernelspec_fields(argv, writable))
    (spec / "kernel.json").write_text(json.dumps(kernelspec))
    return str(root)


class _LimitedClient(NotebookClient):
    """nbclient with an output cap and a record of which cells timed out."""

    def __init__(self, *args, output_chars: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._output_budget = output_chars
        self.truncated = False
        self.timed_out: list[int | None] = []  # indices of the learner's cells; None for the grader's own
        self.current_index: int | None = None

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
    sandbox: Sandbox | None = None,
) -> LabResult:
    """Execute the notebook at `path` and run its lab's checks; never raises for learner faults.

    `sandbox` confines the kernel (see grader.sandbox); None runs it as a plain child process.
    """
    path = Path(path)
    limits = limits or Limits()
    nb = read_notebook(path)
    lab_id = detect_lab(nb, path, lab)
    lab_obj = load_lab(lab_id)
    start = time.monotonic()
    own_workdir = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="sl-grade-"))
    private = Path(tempfile.mkdtemp(prefix="sl-results-"))
    spec_dir = _kernel_spec_dir(sandbox, (workdir, private))
    out_path = str(private / f"{secrets.token_hex(8)}.json")
    nonce = secrets.token_hex(16)
    kernel_env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline", **(env or {})}
    kernel_env.setdefault("PYTHONHASHSEED", "0")
    # Idle OpenMP threads sleep instead of spinning; spinning made training steps 20x slower on 2 shared cores.
    kernel_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    execution = Execution(cells=sum(1 for c in nb.cells if c.cell_type == "code"))
    grading_status: dict = {}
    try:
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[spec_dir]),
            **(sandbox.manager_options(private) if sandbox is not None else {}),
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


def _execute_extra(client, cell) -> None:
    """Run a cell of the grader's own. nbclient stores an executed cell at the index it is given, so a
    negative index would overwrite one of the learner's cells (the last one: not yet run after a timeout)."""
    client.nb.cells.append(cell)
    client.current_index = None  # a timeout here is not a learner cell's
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1)
    finally:
        client.nb.cells.pop()


def _responsive(client) -> bool:
    """After an interrupt, is the kernel idle again? A learner loop that swallows KeyboardInterrupt is not."""
    probe = nbformat.v4.new_code_cell("pass")
    client.timeout = 10
    n = len(client.timed_out)
    try:
        _execute_extra(client, probe)
    except DeadKernelError:
        return False
    return len(client.timed_out) == n


def _run_grading(client, lab_id, out_path, nonce, include_hidden, limits: Limits, watchdog) -> dict:
    source = _import_guard_source() + grading_cell_source(lab_id, out_path, nonce, include_hidden)
    cell = nbformat.v4.new_code_cell(source)
    n = len(client.timed_out)
    try:
        client.timeout = 30
        _execute_extra(client, nbformat.v4.new_code_cell(_DISARM_SOURCE))
        if len(client.timed_out) > n:
            return {"timeout": True}
        client.timeout = int(limits.grading_timeout_s)
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
    reported = _trusted_results(lab_obj, payload)
    if reported is None:
        reported, grading = {}, {**grading, "error": "its result failed the grader's integrity checks"}
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


# --- Tamper resistance -------------------------------------------------------------------------------------------
# Learner code shares the kernel with the checks, so none of this is a wall (see docs/instructor-guide.md): it
# stops the simple tricks - hooks on cell execution that would read the grading cell (and its nonce), a fake
# `grader` package in the working directory or on sys.path, an import hook, a forged result with inflated points.

_DISARM_SOURCE = """\
import sys as _sl_sys, threading as _sl_threading
_sl_ip = get_ipython()
for _sl_callbacks in _sl_ip.events.callbacks.values():
    _sl_callbacks.clear()
_sl_ip.input_transformers_post.clear()
_sl_ip.ast_transformers.clear()
_sl_ip.input_transformers_cleanup[:] = [
    t for t in _sl_ip.input_transformers_cleanup if getattr(t, "__module__", "").startswith("IPython.")
]
_sl_sys.settrace(None), _sl_sys.setprofile(None), _sl_threading.settrace(None), _sl_threading.setprofile(None)
del _sl_sys, _sl_threading, _sl_ip, _sl_callbacks
"""


def _importer_name(importer) -> str:
    return f"{getattr(importer, '__module__', '?')}.{getattr(importer, '__qualname__', type(importer).__qualname__)}"


def _import_guard_source() -> str:
    """Reset the kernel's import system to this interpreter's own before `grader` is imported afresh."""
    path = [p for p in sys.path if p and os.path.isabs(p)]
    keep = "[x for x in _sl_sys.{0} if _importer_name(x) in {1!r}]"
    return (
        "import sys as _sl_sys\n"
        + inspect.getsource(_importer_name)
        + f"_sl_sys.path[:] = {path!r}\n"
        + f"_sl_sys.meta_path[:] = {keep.format('meta_path', sorted(map(_importer_name, sys.meta_path)))}\n"
        + f"_sl_sys.path_hooks[:] = {keep.format('path_hooks', sorted(map(_importer_name, sys.path_hooks)))}\n"
        + "_sl_sys.path_importer_cache.clear()\ndel _importer_name\n"
    )


def _trusted_results(lab_obj, payload: dict) -> dict[str, QuestionResult] | None:
    """Take only each question's status and feedback from the kernel; points follow from the registry.

    None when the payload cannot be ours: unknown or repeated questions, a status the grader never
    writes, or a skip of a question that runs anywhere.
    """
    rows = payload.get("results", []) if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        return None
    ids = [r.get("id") if isinstance(r, dict) else None for r in rows]
    if len(set(ids)) != len(ids) or not set(ids) <= set(lab_obj.questions):
        return None
    trusted = {}
    for row in rows:
        q, status = lab_obj.questions[row["id"]], row.get("status")
        if status not in STATUSES or (status == "skipped" and q.device != "cuda"):
            return None
        score, max_score = (q.points if status == "passed" else 0), (0 if status == "skipped" else q.points)
        trusted[q.id] = QuestionResult(q.id, score, max_score, status, str(row.get("feedback", "")), q.title)
    return trusted
