"""Run a function on several processes that form a `torch.distributed` group: lab 12's launcher and toy model.

`launch(fn, world_size=2)` forks `world_size` processes (Linux and macOS' ``fork`` start method), each joins a gloo
process group on the CPU and calls ``fn(rank, world_size, *args)``; the parent collects what each returned.
Forking, rather than spawning fresh interpreters, is what lets a function defined in a notebook run on the ranks
(``spawn`` would have to pickle it by name, and a notebook's functions have none), and it costs milliseconds instead of
an ``import torch`` per rank. The price: a forked child must not touch CUDA once the parent has, so the ranks compute
on the CPU. On a machine with several GPUs the same per-rank code runs under ``torchrun`` with ``backend="nccl"``.

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
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.lm import logits_of
from labkit.memory import TrainingBytes, tensor_bytes

__all__ = ["RankFailed", "RankTimeout", "ToyModel", "free_port", "launch", "local_bytes", "local_training_bytes",
           "toy_batch", "toy_loss"]


class RankFailed(RuntimeError):
    """A rank raised: the message names the rank and ends with its traceback's last lines."""

    def __init__(self, rank: int, exc_type: str, message: str, trace: str):
        self.rank, self.exc_type, self.message, self.trace = rank, exc_type, message, trace
        super().__init__(f"rank {rank} raised {exc_type}: {message}")


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


def _child(fn: Callable, rank: int, world_size: int, port: int, out_dir: str, collective_timeout_s: float,
           args: tuple, kwargs: dict) -> None:
    """One rank: join the group, run `fn`, save what it returned (or the error) to out_dir/rank{rank}.pt."""
    _die_with_parent()
    log = open(os.path.join(out_dir, f"rank{rank}.log"), "w", buffering=1)  # noqa: SIM115 - lives as long as the rank
    sys.stdout = sys.stderr = log  # never write into the parent's notebook channels
    torch.set_num_threads(1)  # one core per rank, as torchrun's OMP_NUM_THREADS=1
    result: dict[str, Any]
    try:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout_s))
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
           timeout_s: float = 60.0, collective_timeout_s: float = 10.0, echo: bool = True) -> list[Any]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on `world_size` forked CPU processes in one gloo group.

    Returns what each rank returned, in rank order (tensors come back as copies). Raises `RankFailed` for the rank
    that failed first in the chain of causes (its own error before a peer's "connection closed"; a
    `NotImplementedError` on a rank is raised again as one), `RankTimeout` when a rank is still running after
    `timeout_s`. What the ranks print is printed here afterwards, line by line after its rank (`echo`; the last 200
    lines of each). Every child has ended when it returns or raises."""
    if "fork" not in mp.get_all_start_methods():
        raise RuntimeError("labkit.dist.launch needs the 'fork' start method (Linux or macOS).")
    ctx = mp.get_context("fork")
    out_dir = tempfile.mkdtemp(prefix="sl-dist-")
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, world_size, port, out_dir, collective_timeout_s, args,
                                              kwargs or {}), daemon=True) for r in range(world_size)]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        late = [r for r, p in enumerate(procs) if p.is_alive()]
        results = []
        for r in range(world_size):
            path = os.path.join(out_dir, f"rank{r}.pt")
            results.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
    finally:
        _stop(procs)
        if echo:
            _echo(out_dir, world_size)
        shutil.rmtree(out_dir, ignore_errors=True)
    if late:
        errors = [f"rank {r} raised {res['type']}: {res['message'][:200]}" for r, res in enumerate(results)
                  if r not in late and res is not None and not res["ok"]]
        raise RankTimeout(
            f"rank(s) {late} still running after {timeout_s:g} s, stopped. " + "; ".join(errors)
            + (". " if errors else "") + "A rank runs on when it loops, or when it waits in a collective (all_reduce, "
            "broadcast, ...) that another rank never joins: every rank must make the same collective calls, in the "
            "same order.")
    failed = [(r, res) for r, res in enumerate(results) if res is None or not res["ok"]]
    if failed:
        # the root cause first: a rank whose own code raised, then one that died, then ranks that only waited for a
        # peer that had gone ("Connection closed by peer") or never came ("Timed out")
        def cause(item: tuple[int, dict | None]) -> tuple[int, int]:
            rank, res = item
            if res is None:
                return 1, rank
            waited = any(s in res["message"] for s in ("Connection closed", "Timed out", "timed out"))
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
