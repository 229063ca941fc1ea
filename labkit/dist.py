"""Run a function on several processes that form a `torch.distributed` group: lab 12's launcher and toy model.

`launch(fn, world_size=2)` starts `world_size` processes; each joins a process group and calls
``fn(rank, world_size, *args)``, and the parent collects what each returned. Two backends, one per-rank code:
- ``gloo`` on the CPU (the default, any machine): the ranks are **forked** copies of the caller, so a function defined
  in a notebook is already there, and a launch costs milliseconds instead of an ``import torch`` per rank.
- ``nccl`` with one CUDA GPU per rank: a forked child cannot use CUDA once its parent has, so the ranks are
  **spawned** fresh interpreters, as ``torchrun`` starts them; the function and its arguments travel by value
  (cloudpickle, since a notebook's functions have no importable name), and each rank binds ``cuda:<rank>``.
`rank_device()` tells the per-rank code where to put its model and batch, and `default_backend()` picks NCCL where the
GPUs are there. Each rank also gets torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``).

Nothing hangs: the group's collectives time out (``init_process_group(timeout=...)``), the parent waits for the
ranks until a deadline, then terminates and kills whatever is left, and raises `RankTimeout` or `RankFailed` with
what each rank did. No child process outlives a call.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from labkit.device import has_cuda
from labkit.lm import logits_of
from labkit.memory import TrainingBytes, tensor_bytes

__all__ = ["BACKEND_ENV", "RankFailed", "RankTimeout", "ToyModel", "default_backend", "free_port", "launch",
           "local_bytes", "local_training_bytes", "nccl_problem", "rank_device", "toy_batch", "toy_loss",
           "waited_for_peer"]

BACKENDS = ("gloo", "nccl")
BACKEND_ENV = "SPECIALIST_LABS_DIST_BACKEND"  # gloo or nccl: overrides default_backend()


class RankFailed(RuntimeError):
    """A rank raised: the message names the rank and ends with its traceback's last lines."""

    def __init__(self, rank: int, exc_type: str, message: str, trace: str):
        self.rank, self.exc_type, self.message, self.trace = rank, exc_type, message, trace
        super().__init__(f"rank {rank} raised {exc_type}: {message}")


_WAITED = ("Connection closed", "Connection reset", "Timed out", "timed out")  # gloo's words for a peer gone or late


def waited_for_peer(message: str) -> bool:
    """Whether a rank's error says it waited in a collective for a peer that had gone or never came, rather than
    its own code failing: "Connection closed by peer" or "reset by peer" (the peer ended), "Timed out"."""
    return any(s in message for s in _WAITED)


class RankTimeout(RuntimeError):
    """The ranks did not all finish in time: a rank waits in a collective that another never calls, or loops."""


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), so launches running side by side never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the kernel kills this rank if its parent dies first (a killed notebook kernel leaves no orphans)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def nccl_problem(world_size: int = 2) -> str | None:
    """Why `world_size` NCCL ranks cannot run here, or None when they can: each needs a CUDA GPU of its own (NCCL
    refuses two ranks on one GPU), and ``LABKIT_DEVICE=cpu`` switches the GPUs off."""
    gpus = torch.cuda.device_count() if has_cuda() else 0
    if gpus < world_size:
        return f"NCCL needs one CUDA GPU per rank: {world_size} ranks, {gpus} GPU(s) here"
    return None if dist.is_nccl_available() else "this build of torch has no NCCL"


def default_backend(world_size: int = 2) -> str:
    """``nccl`` where `world_size` ranks can use it (`nccl_problem`), ``gloo`` otherwise; `BACKEND_ENV` overrides."""
    wanted = os.environ.get(BACKEND_ENV, "").strip().lower()
    if wanted:
        if wanted not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={wanted!r}: use one of {BACKENDS}")
        return wanted
    return "nccl" if nccl_problem(world_size) is None else "gloo"


def rank_device() -> torch.device:
    """Where this rank computes: its own GPU in an NCCL group (the one `torch.cuda.set_device` bound, as under
    torchrun), the CPU in a gloo group or outside any group."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _child(fn: Callable | None, rank: int, world_size: int, port: int, out_dir: str, collective_timeout_s: float,
           args: tuple, kwargs: dict, backend: str = "gloo", payload_path: str | None = None) -> None:
    """One rank: join the group, run `fn` (or the one pickled at `payload_path`, with its arguments), save what it
    returned (or the error) to out_dir/rank{rank}.pt."""
    _die_with_parent()
    log = open(os.path.join(out_dir, f"rank{rank}.log"), "a", buffering=1)  # noqa: SIM115 - lives as long as the rank
    sys.stdout = sys.stderr = log  # never write into the parent's notebook channels
    torch.set_num_threads(1)  # one core per rank, as torchrun's OMP_NUM_THREADS=1
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),  # what torchrun gives a rank
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result: dict[str, Any]
    try:
        if payload_path is not None:  # unpickled here, so that a missing module is reported like any error
            import cloudpickle

            with open(payload_path, "rb") as f:
                fn, args, kwargs = cloudpickle.load(f)
        device_id = None
        if backend == "nccl":
            torch.cuda.set_device(rank)  # before the group forms: NCCL binds each rank to its current device
            device_id = torch.device("cuda", rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout_s), device_id=device_id)
        open(os.path.join(out_dir, f"rank{rank}.ready"), "w").close()  # the launch's deadline starts when all are
        try:
            result = {"ok": True, "value": fn(rank, world_size, *args, **kwargs)}
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # everything goes back to the parent, which decides
        result = {"ok": False, "type": type(exc).__name__, "message": str(exc)[:2000],
                  "trace": "".join(traceback.format_exception(exc))[-4000:],
                  "not_implemented": isinstance(exc, NotImplementedError)}
    buffer = io.BytesIO()
    try:
        torch.save(result, buffer)
    except Exception as exc:
        buffer = io.BytesIO()
        torch.save({"ok": False, "type": type(exc).__name__, "trace": "",
                    "message": f"what rank {rank} returned cannot be saved: {exc}"[:2000]}, buffer)
    path = os.path.join(out_dir, f"rank{rank}.pt")
    with open(path + ".tmp", "wb") as f:
        f.write(buffer.getvalue())
    os.replace(path + ".tmp", path)
    log.flush()


class _Spawned:
    """A rank started as a fresh interpreter (``python -c``): what `launch` needs of a process, for a Popen.

    Not multiprocessing's ``spawn``, which imports the caller's main module again in each child: a script without an
    ``if __name__ == "__main__"`` guard would launch itself recursively. The function and its arguments arrive by
    value (cloudpickle), so the child needs nothing of the caller's main module."""

    def __init__(self, payload_path: str, rank: int, world_size: int, port: int, out_dir: str,
                 collective_timeout_s: float, backend: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1",  # before torch is imported: one core per rank
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # what the caller could import
        code = "import sys, labkit.dist as d; d._spawned_main(*sys.argv[1:])"
        argv = [payload_path, str(rank), str(world_size), str(port), out_dir, str(collective_timeout_s), backend]
        with open(os.path.join(out_dir, f"rank{rank}.log"), "w") as log:  # its C libraries' output too (NCCL)
            self.popen = subprocess.Popen([sys.executable, "-c", code, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        self.popen.terminate()

    def kill(self) -> None:
        self.popen.kill()


def _spawned_main(payload_path: str, rank: str, world_size: str, port: str, out_dir: str, collective_timeout_s: str,
                  backend: str) -> None:
    """The entry point of a spawned rank."""
    _child(None, int(rank), int(world_size), int(port), out_dir, float(collective_timeout_s), (), {}, backend,
           payload_path)


def _stop(procs: list) -> None:
    """Terminate, then kill, every rank still alive, and reap them all."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(2.0)


def _echo(out_dir: str, world_size: int) -> None:
    """Print what each rank printed, each line prefixed by its rank."""
    for r in range(world_size):
        try:
            with open(os.path.join(out_dir, f"rank{r}.log"), errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines()[-200:]:
            print(f"[rank {r}] {line}")


def launch(fn: Callable, world_size: int = 2, args: tuple = (), kwargs: dict | None = None,
           timeout_s: float = 60.0, collective_timeout_s: float = 10.0, echo: bool = True, backend: str = "gloo",
           start_method: str | None = None, startup_timeout_s: float = 180.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on `world_size` processes in one `backend` group.

    ``gloo`` forks CPU ranks; ``nccl`` spawns one rank per GPU (`start_method` overrides the choice: ``"spawn"`` works
    for gloo too). Returns what each rank returned, in rank order, with tensors copied to the CPU. Raises `RankFailed`
    for the rank that failed first in the chain of causes (its own error before a peer's "connection closed"; a
    `NotImplementedError` on a rank is raised again as one), `RankTimeout` when a rank is still running `timeout_s`
    after the group formed (starting and joining have their own `startup_timeout_s`: a spawned rank first imports
    torch). What the ranks print is printed here afterwards, line by line after its rank (`echo`; the last 200 lines
    of each). Every child has ended when it returns or raises."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: use one of {BACKENDS}")
    start_method = start_method or ("spawn" if backend == "nccl" else "fork")
    if start_method not in ("fork", "spawn"):
        raise ValueError(f"start_method={start_method!r}: use 'fork' or 'spawn'")
    if backend == "nccl":
        if start_method == "fork":
            raise ValueError("NCCL ranks use CUDA, which a forked child cannot use once its parent has: spawn them")
        problem = nccl_problem(world_size)
        if problem is not None:
            raise RuntimeError(f"backend='nccl': {problem}. Use backend='gloo' (labkit.dist.default_backend() picks "
                               "the one that works).")
    out_dir = tempfile.mkdtemp(prefix="sl-dist-")
    port = free_port()
    procs: list = []
    try:
        if start_method == "spawn":
            import cloudpickle

            payload = os.path.join(out_dir, "payload.pkl")
            with open(payload, "wb") as f:
                cloudpickle.dump((fn, args, kwargs or {}), f)  # by value: a notebook's functions have no import path
            for r in range(world_size):
                procs.append(_Spawned(payload, r, world_size, port, out_dir, collective_timeout_s, backend))
        else:
            if "fork" not in mp.get_all_start_methods():
                raise RuntimeError("forked ranks need the 'fork' start method (Linux, macOS): use start_method='spawn'")
            ctx = mp.get_context("fork")
            for r in range(world_size):
                p = ctx.Process(target=_child, args=(fn, r, world_size, port, out_dir, collective_timeout_s, args,
                                                     kwargs or {}, backend), daemon=True)
                p.start()
                procs.append(p)  # started: every process in the list can be stopped
        # the deadline starts once every rank has joined the group (or one has ended, or startup took too long)
        ready = [os.path.join(out_dir, f"rank{r}.ready") for r in range(world_size)]
        saved = [os.path.join(out_dir, f"rank{r}.pt") for r in range(world_size)]

        def waiting(files: list[str]) -> list[int]:
            """The ranks still alive that have not written their file yet."""
            return [r for r, p in enumerate(procs) if p.is_alive() and not os.path.exists(files[r])]

        startup_deadline = time.monotonic() + startup_timeout_s
        while waiting(ready) and time.monotonic() < startup_deadline and all(p.is_alive() for p in procs):
            time.sleep(0.01)
        formed = all(map(os.path.exists, ready))
        deadline = time.monotonic() + timeout_s
        while waiting(saved) and time.monotonic() < deadline:  # a rank that has saved may still be shutting down
            time.sleep(0.01)
        late = waiting(saved)
        results = []
        for r in range(world_size):
            path = saved[r]
            results.append(torch.load(path, weights_only=False, map_location="cpu") if os.path.exists(path) else None)
    finally:
        _stop(procs)
        if echo:
            _echo(out_dir, world_size)
        shutil.rmtree(out_dir, ignore_errors=True)
    if late:
        errors = [f"rank {r} raised {res['type']}: {res['message'][:200]}" for r, res in enumerate(results)
                  if r not in late and res is not None and not res["ok"]]
        raise RankTimeout(
            f"rank(s) {late} still running {timeout_s:g} s after "
            + ("the group formed" if formed else "the ranks started (the group never formed)")
            + ", stopped. " + "; ".join(errors)
            + (". " if errors else "") + "A rank runs on when it loops, or when it waits in a collective (all_reduce, "
            "broadcast, ...) that another rank never joins: every rank must make the same collective calls, in the "
            "same order.")
    failed = [(r, res) for r, res in enumerate(results) if res is None or not res["ok"]]
    if failed:
        # the root cause first: a rank whose own code raised, then one that died, then ranks that only waited for a
        # peer that had gone or never came
        def cause(item: tuple[int, dict | None]) -> tuple[int, int]:
            rank, res = item
            if res is None:
                return 1, rank
            waited = waited_for_peer(res["message"])
            return (2 if waited else 0), rank

        failed.sort(key=cause)
        r, res = failed[0]
        if res is None:
            raise RankFailed(r, "an exit", "the process ended without a result (killed, or it crashed)", "")
        if res.get("not_implemented"):
            raise NotImplementedError(res["message"])
        raise RankFailed(r, res["type"], res["message"], res["trace"])
    return [res["value"] for res in results]


# --- the toy model every check and the notebook train: tied weights and a frozen parameter -----------------------


class Block(nn.Module):
    """A residual MLP block: the unit FSDP shards."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.gelu(self.fc1(h)))


class ToyModel(nn.Module):
    """A tiny next-token model with the two features that trip up hand-written data parallelism: the output layer
    shares (ties) its weight with the embedding, and `scale` is a frozen parameter (requires_grad=False: no .grad)."""

    def __init__(self, vocab: int = 32, d: int = 16, hidden: int = 32, n_blocks: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.scale = nn.Parameter(torch.full((d,), 0.5), requires_grad=False)
        self.blocks = nn.ModuleList(Block(d, hidden) for _ in range(n_blocks))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: one Parameter, listed once by .parameters()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) * self.scale
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def toy_batch(n: int, seq: int = 8, vocab: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random token sequences and their next-token targets."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def toy_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: the mean over a rank's tokens; averaging it over equal-sized rank batches gives
    the mean over the combined batch. Works for a Hugging Face causal LM too (its output's `.logits`)."""
    logits = logits_of(model(inputs))
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# --- memory per rank ----------------------------------------------------------------------------------------------


def local_bytes(t: torch.Tensor) -> int:
    """Bytes this rank stores for `t`: its local shard for a sharded DTensor (FSDP2), all of it otherwise."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.to_local()
    return tensor_bytes(t)


def local_training_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainingBytes:
    """What this rank holds now: its parameters (or their local shards), their gradients that are not None, and
    every tensor in its optimizer's state (`optimizer.optimizer` for a wrapper such as a ZeRO-1 optimizer)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    states = [] if inner is None else [v for s in inner.state.values() for v in s.values()
                                       if isinstance(v, torch.Tensor)]
    params = list(model.parameters())
    return TrainingBytes(sum(local_bytes(p) for p in params),
                         sum(local_bytes(p.grad) for p in params if p.grad is not None),
                         sum(local_bytes(t) for t in states))
