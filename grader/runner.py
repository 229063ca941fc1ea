"""Execute an untrusted notebook in a fresh kernel, within limits, then grade it there.

Limits: a per-cell timeout (interrupt, then carry on), a whole-notebook budget, a
memory cap (a watchdog kills the kernel past it), and an output cap. Execution goes
on past failing cells so later questions are still graded. Anything on stderr
(warnings, tqdm bars) is just output: it never costs points.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from grader.cells import cell_names
from grader.grading import LabResult, QuestionResult, Status, TextEnum, environment, missing_requirement
from grader.kernel import grading_cell_source
from grader.limits import Limits
from grader.registry import UnknownLab, lab_ids, load_lab
from grader.sandbox import Sandbox

KERNEL_NAME = "specialist-labs"


class UnusableInput(Exception):
    """Input that cannot be graded at all (exit code 2): not a notebook, unknown lab, ..."""


class DeathKind(TextEnum):
    MEMORY = "memory"  # the watchdog killed it past the memory cap
    UNRESPONSIVE = "unresponsive"  # a cell timed out and the kernel did not come back after the interrupt
    CRASH = "crash"  # it exited or crashed on its own


@dataclass
class Death:
    """Why and where the kernel stopped: typed, so a gradebook never has to read it back from prose."""

    kind: DeathKind
    cell: int | None  # the learner's cell it happened in; None while grading
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        self.kind = DeathKind(self.kind)

    @property
    def message(self) -> str:
        where = f"while running cell {self.cell}" if self.cell is not None else "while grading"
        if self.kind is DeathKind.MEMORY:
            return f"memory limit exceeded ({self.memory_mb:.0f} MB used) {where}"
        if self.kind is DeathKind.UNRESPONSIVE:
            return f"the kernel stopped responding after cell {self.cell} timed out"
        return f"the kernel died (crashed or exited) {where}"

    def to_dict(self) -> dict:
        return {"kind": str(self.kind), "cell": self.cell, "memory_mb": self.memory_mb, "message": self.message}


@dataclass
class Execution:
    cells: int = 0
    cells_run: int = 0
    errors: list[dict] = field(default_factory=list)
    timed_out_cells: list[int] = field(default_factory=list)
    kernel_died: Death | None = None
    budget_exhausted: bool = False
    output_truncated: bool = False
    duration_s: float = 0.0
    kernel_log_tail: str = ""
    timed_out_sources: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "timed_out_sources"}
        data["kernel_died"] = self.kernel_died.to_dict() if self.kernel_died else None
        return data


@dataclass
class GradingOutcome:
    """What happened to the grading cell itself, beside the results it wrote."""

    timed_out: bool = False
    death: Death | None = None
    error: dict | None = None  # the grading cell raised (e.g. the notebook broke the grader's imports)


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


def validate(path: str | Path, lab: str | None = None) -> tuple[nbformat.NotebookNode, str]:
    """Step 1: a readable notebook of a known lab, or UnusableInput."""
    path = Path(path)
    nb = read_notebook(path)
    return nb, detect_lab(nb, path, lab)


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

    validate -> execute -> guard -> grade -> collect. `sandbox` confines the kernel (see grader.sandbox);
    None runs it as a plain child process.
    """
    nb, lab_id = validate(path, lab)
    with KernelSession(nb, lab_id, limits, workdir=workdir, env=env, sandbox=sandbox) as session:
        execution = session.execute()
        questions = session.grade(execution, include_hidden)
    return session.result(execution, questions)


class KernelSession:
    """One fresh kernel for a notebook, within limits: execute cells, grade, and (for tests) again.

    The test suite keeps a solution's session open and re-runs only the cells a bug variant changes;
    `grade_notebook` uses it once.
    """

    def __init__(
        self,
        nb: nbformat.NotebookNode,
        lab_id: str,
        limits: Limits | None = None,
        workdir: str | Path | None = None,
        env: dict | None = None,
        sandbox: Sandbox | None = None,
        audit: bool = False,
    ):
        self.nb, self.lab_id, self.limits, self.audit = nb, lab_id, limits or Limits(), audit
        self.lab = load_lab(lab_id)
        self._workdir, self._env, self._sandbox = workdir, env, sandbox
        self.started = time.monotonic()
        self._stack = ExitStack()
        self.dead: Death | None = None

    # --- lifetime ---------------------------------------------------------------------------------------------

    def __enter__(self) -> KernelSession:
        stack = self._stack
        self.workdir = Path(self._workdir or tempfile.mkdtemp(prefix="sl-grade-"))
        if self._workdir is None:
            stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.private = Path(tempfile.mkdtemp(prefix="sl-results-"))
        stack.callback(shutil.rmtree, self.private, ignore_errors=True)
        spec_dir = _kernel_spec_dir(self._sandbox, (self.workdir, self.private))
        stack.callback(shutil.rmtree, spec_dir, ignore_errors=True)
        kernel_env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline", **(self._env or {})}
        kernel_env.setdefault("PYTHONHASHSEED", "0")
        # Idle OpenMP threads sleep instead of spinning; spinning made training steps 20x slower on 2 shared cores.
        kernel_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            self.km = AsyncKernelManager(
                kernel_name=KERNEL_NAME,
                kernel_spec_manager=KernelSpecManager(kernel_dirs=[spec_dir]),
                **(self._sandbox.manager_options(self.private) if self._sandbox is not None else {}),
            )
            self.client = _LimitedClient(
                self.nb,
                km=self.km,
                timeout=self.limits.cell_timeout_s,
                allow_errors=True,
                interrupt_on_timeout=True,
                error_on_timeout={"ename": "CellTimeoutError", "evalue": "cell timed out", "traceback": []},
                resources={"metadata": {"path": str(self.workdir)}},
                output_chars=self.limits.output_chars,
            )
            self.kernel_log = stack.enter_context(open(self.private / "kernel.log", "wb"))  # noqa: SIM115
            stack.enter_context(
                self.client.setup_kernel(
                    env=kernel_env, cwd=str(self.workdir), stdout=self.kernel_log, stderr=self.kernel_log
                )
            )
            stack.callback(_shutdown, self.km)
            prov = self.km.provisioner
            pid = prov.process.pid if getattr(prov, "process", None) else prov.pid
            self.watchdog = _MemoryWatchdog(pid, self.limits.memory_mb)
            self.watchdog.start()
            stack.callback(self.watchdog.stop)
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    # --- step 2: execute ----------------------------------------------------------------------------------------

    def execute(self, indices: list[int] | None = None, sources: dict[int, str] | None = None) -> Execution:
        """Run the notebook's code cells (or only `indices`, in order), each within the limits.

        `sources` replaces the text of some cells first: that is how a test runs a variant's mutated cell.
        """
        code = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
        execution = Execution(cells=len(code))
        start = time.monotonic() if indices is not None else self.started
        for index, source in (sources or {}).items():
            self.nb.cells[index].source = source
        for index in code if indices is None else indices:
            if self.dead is not None:
                break
            if not self._execute_cell(index, start, execution):
                break
        execution.duration_s = round(time.monotonic() - start, 2)
        execution.output_truncated = self.client.truncated
        execution.kernel_died = self.dead
        return execution

    def _execute_cell(self, index: int, start: float, execution: Execution) -> bool:
        """False when nothing more can run: the budget is spent or the kernel is gone."""
        cell = self.nb.cells[index]
        remaining = self.limits.total_timeout_s - (time.monotonic() - start)
        if remaining <= 1:
            execution.budget_exhausted = True
            return False
        client = self.client
        # A cell may ask for a shorter limit than the notebook's (never a longer one): a demo that must stay quick.
        own = cell.get("metadata", {}).get("specialist_labs", {}).get("timeout_s", math.inf)
        own = own if isinstance(own, int | float) and own > 0 else math.inf
        client.timeout = int(max(1, min(self.limits.cell_timeout_s, remaining, own)))
        client.current_index = index
        try:
            client.execute_cell(cell, index)
        except DeadKernelError:
            self.dead = self._death(DeathKind.CRASH, index)
            return False
        execution.cells_run += 1
        err = _cell_error(cell)
        if err:
            execution.errors.append({"cell": index, **err})
        if client.timed_out and client.timed_out[-1] == index:
            execution.timed_out_cells.append(index)
            execution.timed_out_sources.append(cell.source)
            if not _responsive(client):
                self.dead = Death(DeathKind.UNRESPONSIVE, index)
                return False
        return True

    def _death(self, kind: DeathKind, cell: int | None) -> Death:
        if self.watchdog.tripped_mb is not None:
            return Death(DeathKind.MEMORY, cell, round(self.watchdog.tripped_mb, 1))
        return Death(kind, cell)

    def run_private(self, source: str, timeout_s: float = 30) -> dict | None:
        """Run a cell of the grader's own (not the learner's); returns its error, if it raised."""
        cell = nbformat.v4.new_code_cell(source)
        self.client.timeout = int(timeout_s)
        _execute_extra(self.client, cell)
        return _cell_error(cell)

    # --- steps 3-5: guard, grade, collect -----------------------------------------------------------------------

    def grade(self, execution: Execution, include_hidden: bool = True) -> list[QuestionResult]:
        """Steps 3-5: guard, grade, collect. A dead kernel skips straight to collect."""
        self.out_path, self.nonce = "", ""  # a session grades more than once: never read an earlier result
        if self.dead is not None:
            execution.kernel_died = self.dead
            execution.kernel_log_tail = _tail(self.private / "kernel.log")
            return self._collect(execution, GradingOutcome())
        try:
            outcome = GradingOutcome(timed_out=True) if not self._guard() else self._grade(include_hidden)
        except DeadKernelError:
            outcome = GradingOutcome(death=self._death(DeathKind.CRASH, None))
        return self._collect(execution, outcome)

    def _guard(self) -> bool:
        """Disarm the learner's hooks on cell execution; False when even that timed out."""
        n = len(self.client.timed_out)
        self.client.timeout = 30
        _execute_extra(self.client, nbformat.v4.new_code_cell(_DISARM_SOURCE))
        return len(self.client.timed_out) == n

    def _grade(self, include_hidden: bool) -> GradingOutcome:
        """Reset the import system, import the grader afresh and run every check in the kernel."""
        self.out_path = str(self.private / f"{secrets.token_hex(8)}.json")
        self.nonce = secrets.token_hex(16)
        grading = grading_cell_source(self.lab_id, self.out_path, self.nonce, include_hidden, self.audit)
        cell = nbformat.v4.new_code_cell(_import_guard_source() + grading)
        n = len(self.client.timed_out)
        self.client.timeout = int(self.limits.grading_timeout_s)
        _execute_extra(self.client, cell)
        if len(self.client.timed_out) > n:
            return GradingOutcome(timed_out=True)
        return GradingOutcome(error=_cell_error(cell))

    def _collect(self, execution: Execution, grading: GradingOutcome) -> list[QuestionResult]:
        """Merge what the kernel reported with what happened around it, one result per question."""
        payload: dict = {}
        try:
            with open(self.out_path) as f:
                payload = json.load(f)
            if payload.get("nonce") != self.nonce:
                payload = {}
        except (OSError, json.JSONDecodeError):
            payload = {}
        reported = _trusted_results(self.lab, payload)
        failure = grading.error and f"the grading cell raised {grading.error['ename']}: {grading.error['evalue']}"
        if reported is None:
            reported, failure = {}, "its result failed the grader's integrity checks"
        current = payload.get("current")
        results = []
        for q in self.lab.questions.values():
            r = reported.get(q.id)
            if r is None:
                if execution.kernel_died:
                    r = QuestionResult.of(q, Status.ERROR, f"Not graded: {execution.kernel_died.message}.")
                elif grading.timed_out:
                    r = QuestionResult.of(q, Status.TIMEOUT, "Not graded: grading ran out of time.")
                elif q.id == current and grading.death:
                    msg = f"Not graded: {grading.death.message} (while checking this question)."
                    r = QuestionResult.of(q, Status.ERROR, msg)
                else:
                    why = (grading.death and grading.death.message) or failure or "the grader got no result"
                    r = QuestionResult.of(q, Status.ERROR, f"Not graded: {why}.")
            elif r.status in (Status.NOT_IMPLEMENTED, Status.ERROR) and (
                execution.budget_exhausted
                or any(name in src for name in q.uses for src in execution.timed_out_sources)
            ):
                cells = ", ".join(str(i) for i in execution.timed_out_cells)
                if execution.budget_exhausted:
                    msg = "The notebook ran out of time before this question's code ran."
                else:
                    msg = f"Cell(s) {cells} timed out, so this question's objects were not ready.\n{r.feedback}"
                r = QuestionResult.of(q, Status.TIMEOUT, msg)
            elif r.missing and (crash := self._crash_that_left_undefined(r.missing, execution)):
                r = QuestionResult.of(q, Status.ERROR, crash)
            results.append(r)
        if grading.death and not execution.kernel_died:
            self.dead = grading.death
        return results

    def _crash_that_left_undefined(self, missing: tuple[str, ...], execution: Execution) -> str | None:
        """The learner wrote the code, but the cell that defines it raised: say so, not "not implemented"."""
        for err in execution.errors:
            if err["ename"] in ("NotImplementedError", "KeyboardInterrupt", "CellTimeoutError"):
                continue  # an exercise not done yet ("not implemented" is the truth), or a timeout, said elsewhere
            if err["cell"] in execution.timed_out_cells or self._downstream_name_error(err):
                continue
            lost = sorted(set(missing) & cell_names(self.nb.cells[err["cell"]].source).binds)
            if lost:
                names = ", ".join(f"`{n}`" for n in lost)
                return (
                    f"Cell {err['cell']} raised {err['ename']}: {err['evalue']} - so {names} was never defined. "
                    "Fix that cell first, then run it and the cells after it."
                )
        return None

    def _downstream_name_error(self, err: dict) -> bool:
        """A NameError for a name an earlier cell defines is that cell's failure (or an exercise not done yet),
        not this cell's: only a name defined nowhere (a typo) makes this cell the one to fix."""
        match = re.match(r"name '(\w+)' is not defined", err["evalue"]) if err["ename"] == "NameError" else None
        if match is None:
            return False
        return any(
            match.group(1) in cell_names(c.source).binds
            for c in self.nb.cells[: err["cell"]]
            if c.cell_type == "code"
        )

    def result(self, execution: Execution, questions: list[QuestionResult]) -> LabResult:
        execution.duration_s = round(time.monotonic() - self.started, 2)
        return LabResult.from_questions(
            self.lab_id,
            questions,
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


# One text, run here and sent to the kernel: never inspect.getsource, which reads the file as it is on disk now.
_IMPORTER_NAME_SOURCE = """\
def _importer_name(importer) -> str:
    return f"{getattr(importer, '__module__', '?')}.{getattr(importer, '__qualname__', type(importer).__qualname__)}"
"""
_helpers: dict = {}
exec(_IMPORTER_NAME_SOURCE, _helpers)
_importer_name = _helpers["_importer_name"]


def _import_guard_source() -> str:
    """Reset the kernel's import system to this interpreter's own before `grader` is imported afresh."""
    path = [p for p in sys.path if p and os.path.isabs(p)]
    keep = "[x for x in _sl_sys.{0} if _importer_name(x) in {1!r}]"
    return (
        "import sys as _sl_sys\n"
        + _IMPORTER_NAME_SOURCE
        + f"_sl_sys.path[:] = {path!r}\n"
        + f"_sl_sys.meta_path[:] = {keep.format('meta_path', sorted(map(_importer_name, sys.meta_path)))}\n"
        + f"_sl_sys.path_hooks[:] = {keep.format('path_hooks', sorted(map(_importer_name, sys.path_hooks)))}\n"
        + "_sl_sys.path_importer_cache.clear()\ndel _importer_name\n"
    )


def _trusted_results(lab_obj, payload: dict) -> dict[str, QuestionResult] | None:
    """Take only each question's status, feedback and hidden flag from the kernel; points follow from the registry.

    None when the payload cannot be ours: unknown or repeated questions, a status the grader never
    writes, or a skip of a question that runs anywhere (a GPU question, or one whose requirement is missing here).
    """
    rows = payload.get("results", []) if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        return None
    ids = [r.get("id") if isinstance(r, dict) else None for r in rows]
    if len(set(ids)) != len(ids) or not set(ids) <= set(lab_obj.questions):
        return None
    trusted = {}
    for row in rows:
        q = lab_obj.questions[row["id"]]
        try:
            status = Status(row.get("status"))
        except ValueError:
            return None
        if status is Status.SKIPPED and q.device != "cuda" and missing_requirement(q) is None:
            return None  # a skip this process cannot confirm: not the grader's
        trusted[q.id] = QuestionResult.of(q, status, str(row.get("feedback", "")), bool(row.get("hidden", False)))
        trusted[q.id].redacted = tuple(str(v) for v in row.get("redacted") or ())
        trusted[q.id].missing = tuple(str(v) for v in row.get("missing") or () if str(v) in q.uses)
        seconds = row.get("duration_s")
        trusted[q.id].duration_s = float(seconds) if isinstance(seconds, int | float) else 0.0
    return trusted
