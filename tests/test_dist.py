"""labkit.dist, the launcher lab 12 and its checks stand on: forked gloo ranks, spawned ranks that receive a
notebook's functions by value (the NCCL path), errors and hangs that end with a message and no process left behind.
Lab 12's NCCL question is run here through the same spawn path on gloo: only the backend's name differs there."""

from __future__ import annotations

import ast
import time

import psutil
import pytest
import torch
from conftest import load, solution_path

from labkit import dist as ld

# A notebook's cell, in a namespace no import can reach: the spawned ranks must receive its functions by value.
NOTEBOOK = '''
import os

import torch
import torch.distributed as dist

from labkit.dist import rank_device

SCALE = 3.0


def helper(rank):
    return float(rank + 1) * SCALE


def total(rank, world_size, t):
    x = torch.tensor([helper(rank)], device=rank_device())
    dist.all_reduce(x)
    return x.item(), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]), str(rank_device()), t * (rank + 1)


def fails_on_1(rank, world_size):
    if rank == 1:
        raise ValueError("rank 1 is broken")
    t = torch.ones(1)
    dist.all_reduce(t)  # rank 0 waits for a peer that has gone
    return t.item()


def not_done(rank, world_size):
    raise NotImplementedError("write this function")


def _arrive(seconds):
    import time
    time.sleep(seconds)
    return seconds


class SlowToArrive:
    """An argument whose unpickling takes `seconds`: a spawned rank that is slow to start."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __reduce__(self):
        return _arrive, (self.seconds,)


def only_rank_0(rank, world_size):
    t = torch.ones(1)
    if rank == 0:
        dist.all_reduce(t)
    else:
        import time
        time.sleep(60)
    return t.item()
'''


def notebook(source: str = NOTEBOOK) -> dict:
    ns = {"__name__": "__notebook__"}  # not importable: cloudpickle must send these functions by value
    exec(compile(source, "<notebook>", "exec"), ns)
    return ns


def children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(autouse=True)
def _no_rank_left_behind():
    before = {p.pid for p in children()}
    yield
    left = [p for p in children() if p.pid not in before]
    assert not left, f"launch left processes running: {[p.cmdline()[:3] for p in left]}"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_launch_runs_a_notebook_function_on_each_rank(start_method):
    nb = notebook()
    got = ld.launch(nb["total"], 2, args=(torch.ones(2),), start_method=start_method, echo=False)
    assert [g[:4] for g in got] == [(9.0, 0, 2, "cpu"), (9.0, 1, 2, "cpu")]  # 3 + 6 on both; torchrun's variables
    assert torch.equal(got[1][4], torch.full((2,), 2.0))  # tensors travel both ways


def test_spawned_ranks_get_the_deadline_after_they_have_started():
    """A spawned rank imports torch and unpacks its arguments first; timeout_s counts from when the group formed, so
    ranks that take 3 s to start still meet a 2 s limit for a function that takes milliseconds."""
    nb = notebook()
    start = time.perf_counter()
    got = ld.launch(nb["total"], 2, args=(nb["SlowToArrive"](3.0),), start_method="spawn", timeout_s=2, echo=False)
    assert [g[0] for g in got] == [9.0, 9.0] and got[1][4] == 6.0  # the argument arrived as 3.0, on each rank
    assert 3.0 <= time.perf_counter() - start < 120
    with pytest.raises(ld.RankTimeout, match="the group never formed"):  # no time to start: the 2 s run out first
        ld.launch(nb["total"], 2, args=(nb["SlowToArrive"](3.0),), start_method="spawn", timeout_s=2,
                  startup_timeout_s=0, echo=False)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_the_failing_rank_is_named_not_the_one_that_waited(start_method):
    with pytest.raises(ld.RankFailed) as err:
        ld.launch(notebook()["fails_on_1"], 2, start_method=start_method, collective_timeout_s=5, echo=False)
    assert err.value.rank == 1 and err.value.exc_type == "ValueError" and "rank 1 is broken" in err.value.message


def test_not_implemented_on_a_rank_is_not_implemented_here():
    with pytest.raises(NotImplementedError, match="write this function"):
        ld.launch(notebook()["not_done"], 2, echo=False)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_hang_ends_with_a_message(start_method):
    start = time.perf_counter()
    with pytest.raises((ld.RankTimeout, ld.RankFailed)) as err:
        ld.launch(notebook()["only_rank_0"], 2, start_method=start_method, timeout_s=4, collective_timeout_s=2,
                  echo=False)
    assert "rank" in str(err.value)
    if isinstance(err.value, ld.RankTimeout):
        assert "[1]" in str(err.value) and "same collective calls" in str(err.value)
    assert time.perf_counter() - start < 60  # not the 60 s rank 1 sleeps


def test_a_module_the_ranks_cannot_import_is_reported_as_the_rank_error():
    """Something in the payload that a fresh interpreter cannot import fails the rank with its own error."""
    import sys
    import types

    fake = types.ModuleType("sl_only_in_this_process")
    exec("def f(rank, world_size):\n    return rank\n", fake.__dict__)
    fake.f.__module__ = "sl_only_in_this_process"
    sys.modules["sl_only_in_this_process"] = fake  # importable here, so pickled by reference, missing in the ranks
    try:
        with pytest.raises(ld.RankFailed) as err:
            ld.launch(fake.f, 2, start_method="spawn", echo=False)
    finally:
        del sys.modules["sl_only_in_this_process"]
    assert err.value.exc_type == "ModuleNotFoundError"


def test_nccl_is_refused_with_a_reason_where_the_gpus_are_missing(monkeypatch):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine can form an NCCL group")
    with pytest.raises(RuntimeError, match="one CUDA GPU per rank"):
        ld.launch(notebook()["total"], 2, args=(torch.ones(1),), backend="nccl")
    with pytest.raises(ValueError, match="forked child"):
        ld.launch(notebook()["total"], 2, backend="nccl", start_method="fork")
    with pytest.raises(ValueError, match="backend"):
        ld.launch(notebook()["total"], 2, backend="mpi")


def test_default_backend(monkeypatch):
    monkeypatch.delenv(ld.BACKEND_ENV, raising=False)
    expected = "nccl" if torch.cuda.device_count() >= 2 and torch.distributed.is_nccl_available() else "gloo"
    assert ld.default_backend(2) == expected
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ld.default_backend(2) == "gloo"  # one GPU: NCCL refuses two ranks on it
    monkeypatch.setenv(ld.BACKEND_ENV, "gloo")
    assert ld.default_backend(2) == "gloo"
    monkeypatch.setenv(ld.BACKEND_ENV, "mpi")
    with pytest.raises(ValueError, match=ld.BACKEND_ENV):
        ld.default_backend(2)


def test_rank_device_is_the_cpu_outside_a_group_and_in_gloo():
    assert ld.rank_device() == torch.device("cpu")


# --- lab 12's NCCL question, through the spawn path on gloo ---------------------------------------------------------


def solution_functions(names: set[str], replace: tuple[str, str] | None = None) -> dict:
    """The solution's import cell and the definitions of `names`, executed as a notebook would (no launches)."""
    nb = load(solution_path("12"))
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    parts = [code[0]]
    for source in code:
        tree = ast.parse(source)
        parts += [ast.get_source_segment(source, node) for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name in names]
    text = "\n\n\n".join(parts)
    if replace:
        assert text.count(replace[0]) == 1, replace[0]
        text = text.replace(*replace)
    return notebook(text)


NCCL_USES = {"average_gradients_flat", "train_ddp", "train_fsdp"}


def test_nccl_question_passes_the_solution_sent_by_value():
    from grader.labs import lab12

    ns = solution_functions(NCCL_USES)
    assert ns["train_fsdp"].__module__ == "__notebook__"
    lab12._same_code(ns["average_gradients_flat"], ns["train_ddp"], ns["train_fsdp"], backend="gloo",
                     start_method="spawn")


def test_nccl_question_fails_a_sum_and_says_on_which_backend():
    from grader.asserts import CheckFailed
    from grader.labs import lab12

    ns = solution_functions(NCCL_USES, ("    flat /= dist.get_world_size()\n", ""))
    with pytest.raises(CheckFailed) as err:
        lab12._same_code(ns["average_gradients_flat"], ns["train_ddp"], ns["train_fsdp"], backend="gloo",
                         start_method="spawn")
    assert err.value.what.startswith("on gloo: average_gradients_flat")
    assert "rank's GPU" in err.value.hint and "twice the mean" in err.value.hint


def test_nccl_question_is_skipped_not_counted_without_two_gpus():
    from grader.labs import lab12

    q = lab12.LAB.questions["dist_nccl"]
    assert q.device == "cuda" and set(q.uses) == NCCL_USES
    if torch.cuda.device_count() < 2:
        assert "one CUDA GPU per rank" in q.requires()
