"""Lab 12 - Distributed data-parallel training: gradient averaging, ZeRO-1, DDP and FSDP2 on two gloo ranks.

Every distributed check forks two CPU ranks with `labkit.dist.launch` (a timeout on every collective and on the
whole launch, no process left behind) and compares what they trained with a single process trained here on the
combined batch: parameters equal after a few steps, on a model with a frozen parameter and tied weights, over
several repeats in one launch to catch races. Plain SGD for the gradient-averaging checks: Adam divides each update by
the gradient's own scale, so a sum in place of an average would go unnoticed under it.

The graded questions run on gloo everywhere, so a grade does not depend on the machine. One more, `dist_nccl`, runs
the learner's functions unchanged on two GPUs in an NCCL group where a machine has them (skipped, not counted,
elsewhere): the ranks' programs below put the model and batch on `rank_device()`, as the notebook's do.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from grader.asserts import CheckFailed, assert_close, assert_equal, call_learner, check, learner_raises
from grader.registry import Lab
from labkit.dist import (
    RankFailed,
    RankTimeout,
    ToyModel,
    launch,
    local_training_bytes,
    nccl_problem,
    rank_device,
    toy_batch,
    toy_loss,
    waited_for_peer,
)

LAB = Lab("12", "Distributed data-parallel training")
HELD_OUT_SEED = 9112  # the notebook uses seeds 0-3
STEPS = 3
REPEATS = 3  # the same launch trains this many times: a race shows up as one repeat that differs
LAUNCH_TIMEOUT_S = 45.0  # a check's own limit is 120 s: a hang ends here first, with a message that says so
COLLECTIVE_TIMEOUT_S = 8.0


def _model(seed: int, **kw) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel(**kw)


def _hf_model(seed: int) -> torch.nn.Module:
    """A second architecture, a Hugging Face causal LM built from a config: tied embeddings, one frozen norm."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).float()
    model.model.norm.weight.requires_grad_(False)
    return model


def _sgd(params, lr: float = 0.1):
    return torch.optim.SGD(params, lr=lr)


def _run(fn: Callable, args: tuple, what: str, hint: str | None = None, backend: str = "gloo",
         start_method: str | None = None) -> list:
    """Launch on two ranks; a rank's error or a hang becomes a failed check that says which rank and why."""
    try:
        return launch(fn, 2, args=args, timeout_s=LAUNCH_TIMEOUT_S, collective_timeout_s=COLLECTIVE_TIMEOUT_S,
                      echo=False, backend=backend, start_method=start_method)
    except RankTimeout as exc:
        raise CheckFailed(f"{what} did not finish: {exc}", hint) from None
    except RankFailed as exc:
        waited = waited_for_peer(exc.message)  # it timed out in a collective, or saw its peer leave
        raise CheckFailed(
            f"{what}: rank {exc.rank} raised {exc.exc_type}.",
            "a rank waited in a collective that the other rank never joined (the other had finished, crashed or "
            "called something else): every rank must make the same collective calls, in the same order, with "
            "tensors of the same size" if waited else hint,
            received=exc.message[:300],
        ) from None


def _reference(model: torch.nn.Module, x, y, make_optimizer: Callable, steps: int = STEPS):
    """One process on the combined batch: (parameters after `steps` steps, gradients of the first step, optimizer)."""
    model = copy.deepcopy(model)
    opt = make_optimizer(model.parameters())
    first = None
    for _ in range(steps):
        opt.zero_grad()
        toy_loss(model, x, y).backward()
        if first is None:
            first = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, first, opt


def _compare(params: dict, ref: dict, what: str, hint: str, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    check(sorted(params) == sorted(ref), f"{what}: the trained model's parameter names differ from the model's.",
          "return the model you trained (wrapped or not)", received=sorted(params)[:4], expected=sorted(ref)[:4])
    for name, p in ref.items():
        assert_close(params[name], p, f"{what}: parameter {name}", rtol=rtol, atol=atol, hint=hint)


# --- ranks' programs (run in the forked ranks) ----------------------------------------------------------------------


def _mean_allreduce(model: torch.nn.Module) -> None:
    """The check's own gradient averaging, so ZeRO-1 is graded on its own."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def _sync_rank(rank: int, world: int, model, x, y, sync: Callable, steps: int, repeats: int) -> list[dict]:
    """Train with SGD and `sync(model)` between backward and step; count the all_reduce calls each sync makes."""
    device = rank_device()
    xs, ys = x.chunk(world)[rank].to(device), y.chunk(world)[rank].to(device)
    real, calls = dist.all_reduce, [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    dist.all_reduce = counted  # this rank's copy of the module only: each rank is a process of its own
    out = []
    for _ in range(repeats):
        m = copy.deepcopy(model).to(device)
        opt = _sgd(m.parameters())
        first, per_sync = None, []
        for _ in range(steps):
            opt.zero_grad()
            toy_loss(m, xs, ys).backward()
            before = calls[0]
            sync(m)
            per_sync.append(calls[0] - before)
            if first is None:
                first = {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}
            opt.step()
        out.append({"params": {n: p.detach().clone() for n, p in m.named_parameters()}, "grads": first,
                    "calls": per_sync})
    return out


def _zero1_rank(rank: int, world: int, model, x, y, sharded_cls, optimizer_cls, kwargs: dict, steps: int,
                repeats: int) -> list[dict]:
    device = rank_device()
    xs, ys = x.chunk(world)[rank].to(device), y.chunk(world)[rank].to(device)
    out = []
    for _ in range(repeats):
        m = copy.deepcopy(model).to(device)
        params = list(m.parameters())
        opt = sharded_cls(m.parameters(), optimizer_cls, **kwargs)
        for _ in range(steps):
            opt.zero_grad()
            toy_loss(m, xs, ys).backward()
            _mean_allreduce(m)
            opt.step()
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            raise TypeError(f"ShardedOptimizer.optimizer should be the wrapped torch.optim.Optimizer, got "
                            f"{type(inner).__name__}")
        index = {id(p): i for i, p in enumerate(params)}
        owned = [index.get(id(p), -1) for g in inner.param_groups for p in g["params"]]
        out.append({"params": {n: p.detach().clone() for n, p in m.named_parameters()}, "owned": owned,
                    "state_bytes": local_training_bytes(m, opt).optimizer, "inner": type(inner).__name__})
    return out


def _tool_rank(rank: int, world: int, model, x, y, train: Callable, make_optimizer: Callable, steps: int) -> dict:
    from torch.distributed.tensor import DTensor

    device = rank_device()
    xs, ys = x.chunk(world)[rank].to(device), y.chunk(world)[rank].to(device)
    returned = train(copy.deepcopy(model).to(device), xs, ys, steps, make_optimizer)
    if not (isinstance(returned, tuple) and len(returned) == 2):
        raise TypeError(f"it should return (model, optimizer), got {type(returned).__name__}")
    trained, opt = returned
    params, sharded = {}, {}
    for name, p in trained.named_parameters():
        name = name.removeprefix("module.")  # DistributedDataParallel's wrapper
        sharded[name] = isinstance(p, DTensor)
        params[name] = (p.full_tensor() if sharded[name] else p).detach().clone()
    return {"params": params, "sharded": sharded, "bytes": local_training_bytes(trained, opt).as_dict()}


# --- memory accounting (pure) ---------------------------------------------------------------------------------------

q = LAB.question("dist_memory", points=2, uses=("memory_per_rank",),
                 title="Bytes per rank for DDP, ZeRO-1 and FSDP")


def _expected_memory(n: int, world: int, strategy: str, bpv: int, states: int) -> dict[str, int]:
    shard = math.ceil(n / world)
    full = {"params": n, "grads": n, "optimizer": states * n}
    counts = {"ddp": full, "zero1": {**full, "optimizer": states * shard},
              "fsdp": {"params": shard, "grads": shard, "optimizer": states * shard}}[strategy]
    return {k: v * bpv for k, v in counts.items()}


_MEMORY_HINT = ("per rank: DDP replicates everything; ZeRO-1 shards only the optimizer's states; FSDP shards "
                "parameters, gradients and states; a shard is ceil(n_params / world_size) values")


def _memory_case(memory_per_rank, n: int, world: int, strategy: str, bpv: int = 4, states: int = 2) -> None:
    call = f"memory_per_rank({n}, {world}, {strategy!r}, bytes_per_value={bpv}, states_per_param={states})"
    got = call_learner(memory_per_rank, call, n, world, strategy, bytes_per_value=bpv, states_per_param=states)
    check(isinstance(got, dict), f"{call} should return a dict.", received=type(got).__name__)
    expected = _expected_memory(n, world, strategy, bpv, states)
    assert_equal(sorted(got), sorted(expected), f"the keys of {call}")
    for key, value in expected.items():
        check(isinstance(got[key], int) and not isinstance(got[key], bool), f"{call}[{key!r}] should be an int.",
              "whole bytes: round a shard up with math.ceil or -(-n // world_size)", received=repr(got[key]))
        assert_equal(got[key], value, f"{call}[{key!r}]", _MEMORY_HINT)


@q.check
def _memory_public(memory_per_rank):
    for strategy in ("ddp", "zero1", "fsdp"):
        _memory_case(memory_per_rank, 1000, 4, strategy)


@q.check(hidden=True)
def _memory_hidden(memory_per_rank):
    for strategy in ("fsdp", "zero1", "ddp"):
        _memory_case(memory_per_rank, 1001, 3, strategy, bpv=2, states=1)  # a shard that does not divide evenly
        _memory_case(memory_per_rank, 7, 8, strategy, bpv=4, states=2)  # more ranks than values
        _memory_case(memory_per_rank, 5, 1, strategy)  # one rank: nothing to shard
    learner_raises(memory_per_rank, "memory_per_rank(1000, 4, 'zero9')", ValueError, 1000, 4, "zero9",
                   hint="raise a ValueError for a strategy you do not know",
                   if_silent="'zero9' is no strategy: raise a ValueError")


# --- gradient averaging, per parameter -----------------------------------------------------------------------------

q = LAB.question("dist_allreduce", points=2, uses=("average_gradients",),
                 title="Averaging gradients with one all_reduce per parameter")


def _grad_hint(got: torch.Tensor, mean: torch.Tensor, own: torch.Tensor) -> str:
    """What a wrong averaged gradient looks like it came from."""
    if got.shape == mean.shape and torch.allclose(got, 2 * mean, rtol=1e-4, atol=1e-6):
        return "it is twice the mean, the sum over the 2 ranks: all_reduce sums; divide by the world size"
    if got.shape == own.shape and torch.allclose(got, own, rtol=1e-4, atol=1e-6):
        return ("it is still this rank's own gradient: nothing was averaged into p.grad (all-reduce p.grad itself, "
                "or copy the averaged values back into it)")
    return ("after it, every rank's .grad should be the mean of the ranks' gradients (the gradient of the combined "
            "batch), written into p.grad itself")


def _check_sync(sync: Callable, name: str, seed: int, n: int, model_kw: dict, one_call: bool,
                hf: bool = False, backend: str = "gloo", start_method: str | None = None) -> None:
    model = _hf_model(seed) if hf else _model(seed, **model_kw)
    x, y = toy_batch(n, seed=seed + 1, vocab=64 if hf else 32)
    ref, ref_grads, _ = _reference(model, x, y, _sgd)
    kind = "a Hugging Face Qwen2 model (tied embeddings, a frozen norm)" if hf else "the toy model"
    what = f"{name}(model) for {kind} on 2 ranks, {n // 2} sequences each, {STEPS} SGD steps"
    results = _run(_sync_rank, (model, x, y, sync, STEPS, 1 if hf else REPEATS), what, backend=backend,
                   start_method=start_method)
    for rank, runs in enumerate(results):
        own = _reference(model, x.chunk(2)[rank], y.chunk(2)[rank], _sgd, steps=1)[1]  # this rank's own gradients
        for rep, run in enumerate(runs):
            where = f"{what}: rank {rank}, repeat {rep + 1}"
            for pname, g in ref_grads.items():
                got = run["grads"][pname]
                if g is None:
                    check(got is None or not got.any(), f"{where}: the frozen parameter {pname} got a gradient.",
                          "leave parameters whose .grad is None alone")
                    continue
                check(got is not None, f"{where}: {pname}.grad is None after {name}.")
                assert_close(got, g, f"{where}: {pname}.grad after the first {name}", rtol=1e-4, atol=1e-6,
                             hint=_grad_hint(got, g, own[pname]))
            _compare(run["params"], ref, where, "the gradients are right at the first step but the parameters "
                     "drift: is something other than .grad changed?")
            if one_call:
                check(all(c == 1 for c in run["calls"]), f"{where}: {name} should call dist.all_reduce once.",
                      "flatten every gradient into one buffer and all-reduce that", received=run["calls"],
                      expected=[1] * STEPS)


@q.check
def _allreduce_public(average_gradients):
    _check_sync(average_gradients, "average_gradients", seed=11, n=8, model_kw={}, one_call=False)


@q.check(hidden=True)
def _allreduce_hidden(average_gradients):
    _check_sync(average_gradients, "average_gradients", seed=HELD_OUT_SEED, n=2,
                model_kw={"d": 8, "hidden": 12, "n_blocks": 3}, one_call=False)
    _check_sync(average_gradients, "average_gradients", seed=HELD_OUT_SEED + 7, n=4, model_kw={}, one_call=False,
                hf=True)


# --- gradient averaging, one flat buffer ---------------------------------------------------------------------------

q = LAB.question("dist_bucketed", points=2, uses=("average_gradients_flat",),
                 title="Averaging gradients with a single flattened all_reduce")


@q.check
def _flat_public(average_gradients_flat):
    _check_sync(average_gradients_flat, "average_gradients_flat", seed=12, n=8, model_kw={}, one_call=True)


@q.check(hidden=True)
def _flat_hidden(average_gradients_flat):
    _check_sync(average_gradients_flat, "average_gradients_flat", seed=HELD_OUT_SEED + 1, n=6,
                model_kw={"d": 8, "hidden": 12, "n_blocks": 3}, one_call=True)
    _check_sync(average_gradients_flat, "average_gradients_flat", seed=HELD_OUT_SEED + 5, n=4, model_kw={},
                one_call=True, hf=True)


# --- ZeRO-1: who owns which parameter ------------------------------------------------------------------------------

q = LAB.question("dist_shard_owners", points=1, uses=("shard_owners",),
                 title="Assigning parameters to ranks, balanced by size")


def _owners_case(shard_owners, sizes: list[int], world: int) -> None:
    call = f"shard_owners({sizes}, {world})"
    got = call_learner(shard_owners, call, list(sizes), world)
    check(isinstance(got, list | tuple) and len(got) == len(sizes),
          f"{call} should return one owner rank per parameter.", received=repr(got)[:200])
    check(all(isinstance(o, int) and 0 <= o < world for o in got), f"{call}: every owner is a rank in 0..{world - 1}.",
          received=list(got))
    loads = [sum(s for s, o in zip(sizes, got, strict=True) if o == r) for r in range(world)]
    bound = sum(sizes) / world + (1 - 1 / world) * max(sizes)  # what greedy assignment guarantees, in any order
    check(max(loads) <= bound, f"{call} is unbalanced: a rank owns too many values.",
          "take the parameters from the largest down and give each to the rank that owns the fewest values so far",
          received=f"values per rank {loads}")
    again = call_learner(shard_owners, call, list(sizes), world)
    assert_equal(list(again), list(got), f"a second call of {call} (every rank must compute the same owners)")


@q.check
def _owners_public(shard_owners):
    _owners_case(shard_owners, [512, 16, 512, 16, 4096, 4096], 2)
    _owners_case(shard_owners, [100, 1, 100, 1, 100, 1], 2)


@q.check(hidden=True)
def _owners_hidden(shard_owners):
    _owners_case(shard_owners, [7], 3)  # fewer parameters than ranks
    _owners_case(shard_owners, [1, 100, 1, 1, 100, 50, 50, 3], 3)
    _owners_case(shard_owners, [10] * 9, 4)
    _owners_case(shard_owners, [5, 5], 1)


# --- ZeRO-1: the sharded optimizer ---------------------------------------------------------------------------------

q = LAB.question("dist_zero1", points=3, uses=("ShardedOptimizer",), title="ZeRO-1: a sharded optimizer",
                 builds_on=("dist_shard_owners",))


def _state_bytes_by_index(opt: torch.optim.Optimizer, params: list) -> dict[int, int]:
    index = {id(p): i for i, p in enumerate(params)}
    return {index[id(p)]: sum(t.numel() * t.element_size() for t in s.values() if isinstance(t, torch.Tensor))
            for p, s in opt.state.items()}


def _check_zero1(ShardedOptimizer, seed: int, n: int, model_kw: dict, optimizer_cls, kwargs: dict,
                 hf: bool = False) -> None:
    model = _hf_model(seed) if hf else _model(seed, **model_kw)
    x, y = toy_batch(n, seed=seed + 1, vocab=64 if hf else 32)
    repeats = 1 if hf else REPEATS
    ref, _, ref_opt = _reference(model, x, y, functools.partial(optimizer_cls, **kwargs))
    n_params = len(list(model.parameters()))
    state_of = _state_bytes_by_index(ref_opt, list(ref_opt.param_groups[0]["params"]))
    kind = "a Hugging Face Qwen2 model" if hf else "the toy model"
    what = (f"ShardedOptimizer(model.parameters(), {optimizer_cls.__name__}, **{kwargs}) for {kind} on 2 ranks, "
            f"{STEPS} steps")
    results = _run(_zero1_rank, (model, x, y, ShardedOptimizer, optimizer_cls, kwargs, STEPS, repeats), what,
                   hint="`params` may be a generator such as model.parameters(), which runs out after one pass: "
                        "make it a list first")
    for rep in range(repeats):
        owned = [results[rank][rep]["owned"] for rank in range(2)]
        check(-1 not in owned[0] + owned[1], f"{what}: the wrapped optimizer holds a tensor that is not one of the "
              "model's parameters.", "give the wrapped optimizer the parameters themselves (no copies)")
        counts = [sum(o.count(i) for o in owned) for i in range(n_params)]
        check(all(c == 1 for c in counts), f"{what}: each parameter must be owned by exactly one rank's wrapped "
              "optimizer.", "check which parameters shard_owners gives each rank",
              received=f"owners per parameter {counts}", expected=f"{[1] * n_params}")
        for rank in range(2):
            run = results[rank][rep]
            where = f"{what}: rank {rank}, repeat {rep + 1}"
            _compare(run["params"], ref, where, "after the owner's step, every rank needs the owner's updated "
                     "values: broadcast each parameter from its owner")
            expected = sum(state_of.get(i, 0) for i in owned[rank])
            check(run["state_bytes"] == expected, f"{where}: the optimizer state this rank holds is wrong.",
                  "a rank keeps optimizer state only for the parameters it owns",
                  received=f"{run['state_bytes']} bytes", expected=f"{expected} bytes")
        check(min(len(o) for o in owned) > 0, f"{what}: one rank owns no parameter at all.",
              received=f"parameters per rank {[len(o) for o in owned]}")


@q.check
def _zero1_public(ShardedOptimizer):
    _check_zero1(ShardedOptimizer, seed=13, n=8, model_kw={}, optimizer_cls=torch.optim.AdamW,
                 kwargs={"lr": 1e-2})


@q.check(hidden=True)
def _zero1_hidden(ShardedOptimizer):
    _check_zero1(ShardedOptimizer, seed=HELD_OUT_SEED + 2, n=2, model_kw={"d": 8, "hidden": 12, "n_blocks": 3},
                 optimizer_cls=torch.optim.SGD, kwargs={"lr": 0.1, "momentum": 0.9})
    # SGD, not Adam, on the Qwen2 model: the gradient of a key bias is zero up to rounding (softmax ignores a shift),
    # and Adam would blow that rounding noise up to steps of size lr
    _check_zero1(ShardedOptimizer, seed=HELD_OUT_SEED + 6, n=4, model_kw={}, optimizer_cls=torch.optim.SGD,
                 kwargs={"lr": 0.1, "momentum": 0.9}, hf=True)


# --- the real tools: DDP and FSDP2 ----------------------------------------------------------------------------------


_TOOL_HINTS = {
    False: "DDP averages the gradients only when the forward pass goes through the DDP-wrapped model: compute the "
           "loss with the wrapper, not the model inside it",
    True: "fully_shard each block, then the root module (tied weights stay in one unit); compute the loss with "
          "model(...), and build the optimizer on model.parameters() after sharding",
}


def _check_tool(train: Callable, name: str, seed: int, n: int, model_kw: dict, make_optimizer: Callable,
                sharded: bool, launches: int = 2, backend: str = "gloo", start_method: str | None = None) -> None:
    model = _model(seed, **model_kw)
    x, y = toy_batch(n, seed=seed + 1)
    ref, _, _ = _reference(model, x, y, make_optimizer)
    what = f"{name}(model, inputs, targets, {STEPS}, make_optimizer) on 2 ranks"
    runs = []
    for _ in range(launches):  # a race shows up as a launch that differs
        runs += _run(_tool_rank, (model, x, y, train, make_optimizer, STEPS), what, hint=_TOOL_HINTS[sharded],
                     backend=backend, start_method=start_method)
    for i, run in enumerate(runs):
        where = f"{what}: rank {i % 2}, launch {i // 2 + 1}"
        _compare(run["params"], ref, where, "every rank should end with the parameters of one process trained on "
                 "the combined batch. " + _TOOL_HINTS[sharded])
        if sharded:
            flat = [k for k, v in run["sharded"].items() if not v]
            check(not flat, f"{where}: these parameters are not sharded (not DTensors).",
                  "fully_shard each block, then the root module", received=flat[:4])
            full = sum(p.numel() * p.element_size() for p in ref.values())
            check(run["bytes"]["weights"] < full, f"{where}: this rank holds every parameter's bytes.",
                  received=run["bytes"]["weights"], expected=f"less than {full}")
    if sharded:
        for launch_runs in (runs[i:i + 2] for i in range(0, len(runs), 2)):
            total = sum(r["bytes"]["weights"] for r in launch_runs)
            full = sum(p.numel() * p.element_size() for p in ref.values())
            check(total == full, f"{what}: the ranks' parameter shards should add up to the model.",
                  received=f"{total} bytes", expected=f"{full} bytes")


q = LAB.question("dist_ddp", points=2, uses=("train_ddp",), title="DistributedDataParallel")


@q.check
def _ddp_public(train_ddp):
    _check_tool(train_ddp, "train_ddp", seed=14, n=8, model_kw={}, make_optimizer=_sgd, sharded=False)


@q.check(hidden=True)
def _ddp_hidden(train_ddp):
    _check_tool(train_ddp, "train_ddp", seed=HELD_OUT_SEED + 3, n=2, model_kw={"d": 8, "hidden": 12, "n_blocks": 3},
                make_optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), sharded=False, launches=1)


q = LAB.question("dist_fsdp", points=2, uses=("train_fsdp",), title="FSDP2: fully_shard")


@q.check
def _fsdp_public(train_fsdp):
    _check_tool(train_fsdp, "train_fsdp", seed=15, n=8, model_kw={}, make_optimizer=_sgd, sharded=True)


@q.check(hidden=True)
def _fsdp_hidden(train_fsdp):
    _check_tool(train_fsdp, "train_fsdp", seed=HELD_OUT_SEED + 4, n=4, model_kw={"d": 8, "hidden": 12, "n_blocks": 3},
                make_optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), sharded=True, launches=1)


# --- the same code on GPUs -----------------------------------------------------------------------------------------


q = LAB.question("dist_nccl", points=2, uses=("average_gradients_flat", "train_ddp", "train_fsdp"),
                 title="The same code on two GPUs with NCCL", device="cuda",
                 requires=functools.partial(nccl_problem, 2), builds_on=("dist_bucketed", "dist_ddp", "dist_fsdp"))

_NCCL_HINT = ("on gloo this code is graded by dist_bucketed, dist_ddp and dist_fsdp; under NCCL every tensor a "
              "collective touches must be on the rank's GPU, so build what the function makes itself (buffers, the "
              "device mesh) on the device of the model or batch it is given, or on rank_device(), never on 'cpu'")


def _same_code(average_gradients_flat, train_ddp, train_fsdp, backend: str, start_method: str | None = None) -> None:
    """The learner's functions, unchanged, in a `backend` group: one launch each, compared as on gloo."""
    try:
        _check_sync(average_gradients_flat, "average_gradients_flat", seed=HELD_OUT_SEED + 8, n=8, model_kw={},
                    one_call=True, backend=backend, start_method=start_method)
        _check_tool(train_ddp, "train_ddp", seed=HELD_OUT_SEED + 9, n=8, model_kw={}, make_optimizer=_sgd,
                    sharded=False, launches=1, backend=backend, start_method=start_method)
        _check_tool(train_fsdp, "train_fsdp", seed=HELD_OUT_SEED + 10, n=8, model_kw={}, make_optimizer=_sgd,
                    sharded=True, launches=1, backend=backend, start_method=start_method)
    except CheckFailed as exc:
        hint = _NCCL_HINT + (f". {exc.hint}" if exc.hint else "")
        raise CheckFailed(f"on {backend}: {exc.what}", hint, expected=exc.expected, received=exc.received) from None


@q.check(timeout_s=400.0)  # each launch starts fresh interpreters that import torch and form an NCCL group
def _nccl(average_gradients_flat, train_ddp, train_fsdp):
    _same_code(average_gradients_flat, train_ddp, train_fsdp, backend="nccl")
