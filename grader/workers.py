"""Worker processes that grade one notebook each, so nothing a submission does can stop the batch.

Workers are forked from a server that has already imported the runner and torch, which saves seconds per
submission. Each runs `grade_notebook` in a session of its own and hands back its outcome through a file.
The parent only waits: a worker past its hard ceiling is killed with its kernel, and an interrupted batch
kills them all.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import psutil

from grader.runner import Limits
from grader.sandbox import Sandbox


@dataclass
class Job:
    """One notebook to grade in a worker, and the ceiling after which the worker and its kernel are killed."""

    name: str
    notebook: Path
    lab: str
    limits: Limits
    ceiling_s: float
    sandbox: Sandbox | None = None
    threads: int = 1


class Ending(str, Enum):
    FINISHED = "finished"  # the worker wrote its payload
    HUNG = "hung"  # killed at the hard ceiling
    DIED = "died"  # exited without a payload
    STOPPED = "stopped"  # killed because the batch was interrupted

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    """What became of a worker: its payload ({"result": ...} or {"unusable": ...}), or why there is none."""

    ending: Ending
    wall_s: float
    payload: dict | None = None
    exitcode: int | None = None
    log_tail: str = ""  # the worker's last output lines, for a worker that died


def kill_tree(pid: int) -> None:
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


class WorkerPool:
    """At most `size` workers at once, and a record of the running ones, so an interrupted batch can stop them all."""

    def __init__(self, size: int) -> None:
        self._threads = ThreadPoolExecutor(max_workers=max(1, size))
        self._procs: set[multiprocessing.process.BaseProcess] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, job: Job) -> Future[Outcome]:
        return self._threads.submit(self.run, job)

    def run(self, job: Job) -> Outcome:
        """Grade `job` in a worker process and wait for it, at most `job.ceiling_s`."""
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="sl-batch-") as tmp:
            out, log = Path(tmp) / "result.json", Path(tmp) / "worker.log"
            proc = _worker_context().Process(target=_worker_main, args=(_spec(job, out), str(log)), name=job.name)
            proc.start()
            with self._lock:
                self._procs.add(proc)
            try:
                proc.join(job.ceiling_s)
                hung = proc.exitcode is None
                if hung:
                    kill_tree(proc.pid)
                proc.join()
            finally:
                with self._lock:
                    self._procs.discard(proc)
            wall = time.monotonic() - start
            if self._stopping.is_set():
                return Outcome(Ending.STOPPED, wall)
            if hung:
                return Outcome(Ending.HUNG, wall)
            try:
                return Outcome(Ending.FINISHED, wall, json.loads(out.read_text()), proc.exitcode)
            except (OSError, ValueError):
                return Outcome(Ending.DIED, wall, None, proc.exitcode, _tail(log))

    def stop_all(self) -> None:
        """Kill every running worker and its kernel, drop the jobs not started, and wait for the threads."""
        self._stopping.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            kill_tree(proc.pid)
        self._threads.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._threads.shutdown()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _spec(job: Job, out: Path) -> dict:
    """What the worker needs, as plain data: it crosses a process boundary."""
    return {
        "notebook": str(job.notebook),
        "lab": job.lab,
        "out": str(out),
        "limits": asdict(job.limits),
        "sandbox": _sandbox_spec(job.sandbox),
        "threads": job.threads,
    }


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
