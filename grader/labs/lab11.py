"""Lab 11 - Efficient training on one device.

References: the models themselves (parameters counted on the meta device, tensors saved for the backward pass read
with data_ptr on a real device), nanoGPT's FLOP estimate, the recipes' byte table of the notebook, torch.profiler's
own rows, a big-batch gradient computed here for accumulation, GradScaler driven here for fp16, and an unwrapped
model for checkpointing. Every function is also run on a second architecture (Qwen2 or Mistral, built from its
config). Speed is graded only as a ratio of two rungs measured side by side in the learner's own run.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from grader.asserts import assert_close, assert_equal, call_learner, check
from grader.registry import Lab
from labkit import memory, sft, world, zoo

LAB = Lab("11", "Efficient training on one device")
HELD_OUT_SEED = 9111  # the notebook draws its examples and batches with seeds 0 and 1
IGNORE = -100

LLAMA3_8B = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
LLAMA3_70B = LlamaConfig(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)
# Shapes the notebook never uses: grouped-query attention with an explicit head_dim, biases, tied embeddings, odd sizes.
ODD_LLAMA = LlamaConfig(vocab_size=503, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                        num_attention_heads=6, num_key_value_heads=2, head_dim=24, attention_bias=True, mlp_bias=True,
                        tie_word_embeddings=True)
MISTRAL = MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False)


def _qwen2_config(**overrides) -> Qwen2Config:
    kw = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    return Qwen2Config(**{**kw, **overrides})


@LAB.fixture
def base():
    """The course's base model (float32, CPU, eval mode) and its tokenizer, read from the cache once per run."""
    return zoo.load_base_model(device="cpu")


def _fresh(base, device="cpu"):
    model, tokenizer = base
    return copy.deepcopy(model).to(device), tokenizer


def _on_meta(config: PretrainedConfig, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# --- eff_params ----------------------------------------------------------------------------------------------
q = LAB.question("eff_params", points=2, uses=("param_count",), title="Parameters from the config")


def _param_hint(got, config) -> str:
    """The component a wrong count most likely got wrong, from the difference alone."""
    d, v = config.hidden_size, config.vocab_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    want = sum(p.numel() for p in _on_meta(config).parameters())
    diff = got - want if isinstance(got, int) else None
    layers = config.num_hidden_layers
    if diff is None:
        return "return an int"
    if diff == v * d * (1 if config.tie_word_embeddings else -1):
        return ("tie_word_embeddings: a tied output head shares the embedding matrix (count it once); an untied "
                "one has its own")
    if diff == 2 * layers * d * (heads - kv) * head_dim:
        return ("grouped-query attention: k_proj and v_proj project to num_key_value_heads * head_dim, not to "
                "hidden_size")
    if diff and diff % layers == 0 and abs(diff // layers) <= 2 * d + 1:
        return "count the two RMSNorm weights of every layer (and one final norm)"
    if abs(diff) == d:
        return "one final RMSNorm after the last layer"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "attention_bias and mlp_bias add one number per output of every projection they apply to"
    if head_dim != d // heads:
        return "use config.head_dim: the projections are d -> heads * head_dim, which need not be hidden_size"
    return ("embeddings (V x d, and the head unless tied) + per layer (q, k, v, o projections, 3 MLP matrices, "
            "2 norms) + final norm")


def _check_params(param_count, config, name: str) -> None:
    got = call_learner(param_count, f"param_count({name})", config)
    want = sum(p.numel() for p in _on_meta(config).parameters())
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = int(got.item())
    check(isinstance(got, int) and not isinstance(got, bool), f"param_count({name}) should return an int, got "
          f"{type(got).__name__}.", hint="parameter counts are whole numbers: use integer arithmetic (// not /)")
    check(got == want, f"param_count({name}) is wrong.", _param_hint(got, config), received=f"{got:,}",
          expected=f"{want:,}")


@q.check
def _params(param_count, base):
    _check_params(param_count, base[0].config, "the base model's config")
    _check_params(param_count, LLAMA3_8B, "Llama-3-8B's config")


@q.check(hidden=True)
def _params_other_shapes(param_count):
    _check_params(param_count, ODD_LLAMA, "a Llama config with grouped-query attention, head_dim, biases and tied "
                  "embeddings")
    _check_params(param_count, MISTRAL, "a Mistral config with one key/value head")
    _check_params(param_count, LLAMA3_70B, "Llama-3-70B's config")


# --- eff_flops -----------------------------------------------------------------------------------------------
q = LAB.question("eff_flops", points=2, uses=("flops_per_token", "mfu"), title="FLOPs per token and MFU")


def _flops(n, layers, heads, head_dim, seq_len) -> int:
    return 6 * n + 12 * layers * heads * head_dim * seq_len


def _check_flops(flops_per_token, args: tuple) -> None:
    got = call_learner(flops_per_token, f"flops_per_token{args}", *args)
    want = _flops(*args)
    n, layers, heads, head_dim, seq_len = args
    attention = 12 * layers * heads * head_dim * seq_len
    if got == 2 * n + attention / 3 or got == 2 * n + attention or got == 2 * n:
        hint = ("training costs 6 FLOPs per parameter per token: 2 in the forward pass and 4 in the backward "
                "(gradients for the input and for the weight); 2N is the forward pass alone")
    elif got == 6 * n:
        hint = "add the attention term 12 * n_layers * n_heads * head_dim * seq_len: scores and weighted values"
    else:
        hint = "6 * n_params + 12 * n_layers * n_heads * head_dim * seq_len"
    check(isinstance(got, int | float) and not isinstance(got, bool) and math.isclose(got, want, rel_tol=1e-9),
          f"flops_per_token{args} is wrong.", hint, received=got, expected=want)


def _check_mfu(mfu, args: tuple) -> None:
    got = call_learner(mfu, f"mfu{args}", *args)
    want = args[0] * args[1] / args[2]
    if isinstance(got, int | float) and math.isclose(got, 100 * want, rel_tol=1e-6):
        hint = "return a fraction (0.3 for 30 %), not a percentage"
    else:
        hint = "MFU = tokens/s x FLOPs per token / peak FLOP/s"
    check(isinstance(got, int | float) and math.isclose(got, want, rel_tol=1e-9), f"mfu{args} is wrong.", hint,
          received=got, expected=want)


@q.check
def _flops_and_mfu(flops_per_token, mfu):
    _check_flops(flops_per_token, (124_000_000, 12, 12, 64, 1024))  # GPT-2 small, nanoGPT's example
    _check_mfu(mfu, (180_000.0, 850e6, 312e12))


@q.check(hidden=True)
def _flops_other(flops_per_token, mfu):
    for args in ((3_300_000, 4, 4, 64, 128), (70_553_706_496, 80, 64, 128, 8192), (1_000, 1, 1, 1, 1)):
        _check_flops(flops_per_token, args)
    _check_mfu(mfu, (2_512.5, 2.3e7, 1.6e11))


# --- eff_memory ----------------------------------------------------------------------------------------------
q = LAB.question("eff_memory", points=3, uses=("state_bytes",), title="Training-state bytes by recipe")
RECIPES = {  # bytes per element: weight (every parameter), gradient (trainable), AdamW states (trainable)
    "fp32": (4, 4, lambda n: 8),
    "bf16_mixed": (2, 2, lambda n: 12),
    "adam8bit": (4, 4, lambda n: 2 if n >= 4096 else 8),
}
RECIPE_HINTS = {
    "fp32": "fp32: 4 B weight, 4 B gradient, 8 B for AdamW's m and v",
    "bf16_mixed": "bf16_mixed: 2 B weight, 2 B gradient, 12 B of optimizer states (a float32 master copy, m and v)",
    "adam8bit": "adam8bit: 4 B weight and gradient; m and v take 1 B each, but tensors under 4,096 elements keep "
                "32-bit states (8 B)",
}


def _reference_bytes(model, recipe: str) -> dict[str, int]:
    w, g, opt = RECIPES[recipe]
    out = {"weights": 0, "grads": 0, "optimizer": 0}
    for p in model.parameters():
        out["weights"] += w * p.numel()
        if p.requires_grad:
            out["grads"] += g * p.numel()
            out["optimizer"] += opt(p.numel()) * p.numel()
    return out


def _as_parts(value, what: str) -> dict[str, int]:
    if isinstance(value, memory.TrainingBytes):
        return {"weights": value.weights, "grads": value.grads, "optimizer": value.optimizer}
    check(isinstance(value, Mapping) and {"weights", "grads", "optimizer"} <= set(value),
          f"{what} should be a labkit.memory.TrainingBytes (or a dict with weights, grads and optimizer), got "
          f"{type(value).__name__}.", hint="return TrainingBytes(weights, grads, optimizer)")
    return {k: value[k] for k in ("weights", "grads", "optimizer")}


def _check_state_bytes(state_bytes, model, recipe: str, name: str) -> None:
    what = f"state_bytes({name}, {recipe!r})"
    got = _as_parts(call_learner(state_bytes, what, model, recipe), what)
    want = _reference_bytes(model, recipe)
    for part in ("weights", "grads", "optimizer"):
        hint = RECIPE_HINTS[recipe]
        if part != "weights" and any(not p.requires_grad for p in model.parameters()):
            hint += "; frozen parameters (requires_grad=False) have no gradient and no optimizer state"
        as_stored = sum(p.numel() * p.element_size() for p in model.parameters())
        if part == "weights" and got[part] == as_stored != want[part]:
            hint = "the recipe sets the bytes, not the parameters' current dtype: a plan, not a measurement"
        check(got[part] == want[part], f"The {part} part of {what} is wrong.", hint, received=got[part],
              expected=want[part])


@q.check
def _state_bytes(state_bytes, base):
    model, _ = _fresh(base)
    for recipe in RECIPES:
        _check_state_bytes(state_bytes, model, recipe, "the base model")


@q.check(hidden=True)
def _state_bytes_frozen_meta_tied(state_bytes, base):
    from peft import LoraConfig, get_peft_model

    model, _ = _fresh(base)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for recipe in RECIPES:
        _check_state_bytes(state_bytes, lora, recipe, "a LoRA model (base frozen)")
    _check_state_bytes(state_bytes, _on_meta(LLAMA3_8B), "bf16_mixed", "Llama-3-8B on the meta device")
    tied = _on_meta(ODD_LLAMA, torch.bfloat16)  # tied embeddings, parameters in bf16 (the recipe sets the bytes)
    _check_state_bytes(state_bytes, tied, "adam8bit", "a tied-embedding bf16 model on the meta device")
    edge = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=True), torch.nn.Linear(4095, 1, bias=False))
    _check_state_bytes(state_bytes, edge, "adam8bit", "tensors of 4,096, 64 and 4,095 elements")  # 8-bit from 4,096


# --- eff_activations -----------------------------------------------------------------------------------------
q = LAB.question("eff_activations", points=2, uses=("activation_bytes",),
                 title="Activation bytes saved for the backward pass")


def _saved_bytes(model, input_ids) -> int:
    """Reference on a real device: distinct storages by data_ptr, the model's parameters and buffers left out."""
    weights = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=input_ids)
    return sum(seen.values())


def _all_saved_bytes(model, input_ids) -> tuple[int, int]:
    """What two common mistakes give: every saved tensor counted (views repeated), and parameters included."""
    per_tensor, with_weights = 0, {}

    def pack(t):
        nonlocal per_tensor
        per_tensor += t.untyped_storage().nbytes()
        with_weights[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=input_ids)
    return per_tensor, sum(with_weights.values())


def _check_activations(activation_bytes, model, ids, name: str, want: int | None = None, reference=None) -> None:
    reference = reference if reference is not None else model
    mode = model.training
    got = call_learner(activation_bytes, f"activation_bytes({name}, input_ids of shape {tuple(ids.shape)})", model,
                       ids)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = int(got.item())
    want = _saved_bytes(reference, ids.to(next(reference.parameters()).device)) if want is None else want
    check(model.training == mode, f"activation_bytes({name}, ...) changed the model's mode.",
          hint="measure the model in the mode it is in: don't call model.train() or model.eval()")
    hint = ("count each storage autograd saves once (t.untyped_storage(), identified by id() while you keep it), "
            "with its full nbytes(), leaving out the parameters' and buffers' storages")
    if isinstance(got, int) and next(model.parameters()).device.type != "meta":
        per_tensor, with_weights = _all_saved_bytes(model, ids)
        if got == per_tensor:
            hint = "several saved tensors share one storage (views): count each storage once"
        elif got == with_weights:
            hint = "leave out the storages of the model's parameters and buffers: they are weights, not activations"
    elif isinstance(got, int) and next(model.parameters()).device.type == "meta" and got < want // 10:
        hint = ("on the meta device every data_ptr() is 0, so storages told apart by data_ptr collapse into one: "
                "use the storage objects themselves (id(t.untyped_storage()))")
    check(isinstance(got, int) and got == want, f"activation_bytes({name}, input_ids of shape {tuple(ids.shape)}) is "
          "wrong.", hint, received=got, expected=want)


@q.check
def _activations(activation_bytes, base):
    model, tokenizer = _fresh(base)
    gen = torch.Generator().manual_seed(HELD_OUT_SEED)
    ids = torch.randint(3, len(tokenizer), (2, 33), generator=gen)
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        _check_activations(activation_bytes, model.train(), ids, f"the base model with {impl} attention")


@q.check(hidden=True)
def _activations_meta_and_others(activation_bytes, base):
    model, tokenizer = _fresh(base)
    model.set_attn_implementation("eager")
    gen = torch.Generator().manual_seed(HELD_OUT_SEED + 1)
    ids = torch.randint(3, len(tokenizer), (1, 57), generator=gen)
    meta = _on_meta(model.config)
    meta.set_attn_implementation("eager")
    _check_activations(activation_bytes, meta.train(), ids.to("meta"), "the base model on the meta device",
                       want=_saved_bytes(model.train(), ids))
    _check_activations(activation_bytes, model.eval(), ids, "the base model in eval mode")
    torch.manual_seed(HELD_OUT_SEED)
    qwen = Qwen2ForCausalLM(_qwen2_config(attention_dropout=0.1, attn_implementation="eager")).train()
    _check_activations(activation_bytes, qwen, ids, "a Qwen2 model with attention dropout")


# --- eff_profile ---------------------------------------------------------------------------------------------
q = LAB.question("eff_profile", points=2, uses=("top_ops",), title="The operators with the most self time")


def _profiled():
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(HELD_OUT_SEED)
    layer = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
    x = torch.randn(64, 256, generator=gen)
    layer(x).sum().backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            (layer(x) * 1.5 + 0.5).relu().sum().backward()
    return prof


def _reference_top(rows, k: int, attr: str) -> list[tuple[str, float]]:
    ordered = sorted(rows, key=lambda r: getattr(r, attr), reverse=True)
    return [(r.key, getattr(r, attr) / 1e3) for r in ordered[:k]]


def _check_top(top_ops, prof, rows, k: int, device: str, what: str) -> None:
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    got = call_learner(top_ops, what, prof, k, device)
    want = _reference_top(rows, k, attr)
    check(isinstance(got, list | tuple) and all(isinstance(r, list | tuple) and len(r) == 2 for r in got),
          f"{what} should return a list of (name, milliseconds) pairs.", received=repr(got)[:120])
    assert_equal(len(got), len(want), f"the number of rows of {what}",
                 hint="k rows, or all of them when there are fewer than k")
    by_name = {r.key: getattr(r, attr) / 1e3 for r in rows}
    totals = {r.key: (r.cpu_time_total if device != "cuda" else r.device_time_total) / 1e3 for r in rows}
    for i, ((name, ms), (_, want_ms)) in enumerate(zip(got, want, strict=True)):
        check(name in by_name, f"{what}: row {i} names {name!r}, which is not an operator of the profile.",
              hint="a row's name is its .key")
        if math.isclose(ms, totals.get(name, math.nan), rel_tol=1e-6) and not math.isclose(ms, by_name[name],
                                                                                           rel_tol=1e-6):
            hint = "rank by self time (self_cpu_time_total), not total time, which counts nested operators again"
        elif math.isclose(ms, 1e3 * by_name[name], rel_tol=1e-6):
            hint = "key_averages() times are in microseconds: divide by 1,000 for milliseconds"
        elif device == "cuda":
            hint = "on a CUDA device rank by self_device_time_total: the GPU's own time"
        else:
            hint = "sort the rows by self time, largest first, and keep k"
        check(math.isclose(ms, want_ms, rel_tol=1e-6, abs_tol=1e-9) and math.isclose(ms, by_name[name], rel_tol=1e-6,
                                                                                     abs_tol=1e-9),
              f"{what}: row {i} is wrong.", hint, received=f"{name!r}: {ms:.4g} ms",
              expected=f"{want[i][0]!r}: {want_ms:.4g} ms")


@q.check
def _top(top_ops):
    prof = _profiled()
    _check_top(top_ops, prof, prof.key_averages(), 5, "cpu", "top_ops(prof, 5)")


@q.check(hidden=True)
def _top_edges_and_device(top_ops):
    prof = _profiled()
    rows = prof.key_averages()
    _check_top(top_ops, prof, rows, 1, "cpu", "top_ops(prof, 1)")
    _check_top(top_ops, prof, rows, len(rows) + 5, "cpu", "top_ops(prof, k) with k above the number of operators")

    class FakeProfile:  # a GPU profile, where the device's time and the CPU's rank differently
        def key_averages(self):
            return fake

    fake = [SimpleNamespace(key=f"op{i}", self_cpu_time_total=float(10 * i), cpu_time_total=float(10 * i + 5),
                            self_device_time_total=float(1000 - 37 * i), device_time_total=float(2000 - 37 * i))
            for i in range(9)]
    _check_top(top_ops, FakeProfile(), fake, 4, "cuda", "top_ops(prof, 4, device='cuda') of a GPU profile")


# --- eff_train_step ------------------------------------------------------------------------------------------
q = LAB.question("eff_train_step", points=4, uses=("train_step",),
                 title="One step: exact gradient accumulation, autocast around the forward pass only")


class _Spy(torch.optim.Optimizer):
    """Records, at each step, a copy of the gradients and whether autocast was on; changes no weight."""

    def __init__(self, params):
        super().__init__(params, {})
        self.grads: list[list[torch.Tensor | None]] = []
        self.autocast: list[bool] = []

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        self.grads.append([None if p.grad is None else p.grad.detach().clone() for p in params])
        self.autocast.append(any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")))


def _chat_batches(tokenizer, task: str, n: int, sizes: Sequence[int], seed: int) -> list[dict]:
    t = world.TASKS[task]
    examples = [sft.sft_example(tokenizer, t, ex) for ex in t.examples("test", n, seed=seed)]
    out, start = [], 0
    for size in sizes:
        out.append(sft.collate(examples[start : start + size], tokenizer.pad_token_id))
        start += size
    return out


def _lm_batches(tokenizer, lengths: Sequence[Sequence[int]], seed: int) -> list[dict]:
    """Language-modelling micro-batches (every real token a target), right-padded rows of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for rows in lengths:
        batch = [{"input_ids": ids, "labels": list(ids)}
                 for ids in (torch.randint(3, len(tokenizer), (n,), generator=gen).tolist() for n in rows)]
        out.append(sft.collate(batch, tokenizer.pad_token_id))
    return out


def _big_batch(micro: Sequence[dict], pad_id: int) -> dict:
    rows = []
    for mb in micro:
        for i in range(mb["input_ids"].shape[0]):
            n = int(mb["attention_mask"][i].sum())
            rows.append({"input_ids": mb["input_ids"][i, :n].tolist(), "labels": mb["labels"][i, :n].tolist()})
    return sft.collate(rows, pad_id)


def _reference_grads(model, micro: Sequence[dict], pad_id: int) -> tuple[float, list[torch.Tensor]]:
    """The loss and gradient of one big batch holding every micro-batch: the sum over all targets / their count."""
    model = copy.deepcopy(model)
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    loss = sft.sft_loss(model, {k: v.to(device) for k, v in _big_batch(micro, pad_id).items()})
    loss.backward()
    return loss.item(), [p.grad.detach().clone() for p in model.parameters()]


def _accumulation_hint(model, micro, got: list[torch.Tensor], want: list[torch.Tensor]) -> str:
    """Tell the usual mistakes apart by the gradient they produce."""
    def close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-3) -> bool:
        return all((x - y).abs().max() <= tol * y.abs().max() + 1e-7 for x, y in zip(a, b, strict=True))

    device = next(model.parameters()).device
    per_micro = []
    for mb in micro:
        m = copy.deepcopy(model)
        m.zero_grad(set_to_none=True)
        sft.sft_loss(m, {k: v.to(device) for k, v in mb.items()}).backward()
        per_micro.append([p.grad for p in m.parameters()])
    k = len(micro)
    mean_of_means = [sum(gs) / k for gs in zip(*per_micro, strict=True)]
    if close(got, [sum(gs) for gs in zip(*per_micro, strict=True)]):
        return (f"the gradient is the sum of the {k} micro-batches' mean-loss gradients, {k} times too large: divide "
                "each micro-batch's summed loss by the total number of targets before backward()")
    if close(got, mean_of_means):
        return ("this is the mean of the micro-batches' means, which weights tokens of small micro-batches more: "
                "sum the cross-entropy over all targets and divide by the number of targets of all micro-batches")
    if close(got, [g / k for g in per_micro[-1]]) or close(got, per_micro[-1]):
        return ("only the last micro-batch's gradient reached the optimizer: clear the gradients once before the "
                "loop, not inside it")
    if close(got, want, tol=0.05):
        return ("close, but not exact: count the targets after the shift (labels[:, 1:] != -100) and compute the "
                "loss in float32")
    return "clear the gradients once, backward each micro-batch's summed loss / total targets, step once"


def _check_step(train_step, model, micro: Sequence[dict], pad_id: int, name: str, stale: bool = True) -> None:
    want_loss, want = _reference_grads(model, micro, pad_id)
    spy = _Spy(model.parameters())
    if stale:  # what the previous step left in .grad
        gen = torch.Generator().manual_seed(HELD_OUT_SEED)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(p.device)
    what = f"train_step(model, optimizer, {name})"
    loss = call_learner(train_step, what, model, spy, micro)
    assert_equal(len(spy.grads), 1, f"the number of optimizer.step() calls in one {what}",
                 hint="accumulate the micro-batches' gradients, then step once")
    got = spy.grads[0]
    check(all(g is not None for g in got), f"{what}: some parameters had no gradient when the optimizer stepped.",
          hint="call backward() on every micro-batch's loss before optimizer.step()")
    worst = max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(got, want, strict=True))
    if worst > 1e-4 and stale:
        stale_free = _Spy(model.parameters())
        model.zero_grad(set_to_none=True)
        call_learner(train_step, what, model, stale_free, micro)
        fresh = stale_free.grads[0]
        if all(g is not None for g in fresh) and max(
                float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(fresh, want, strict=True)) <= 1e-4:
            check(False, f"{what}: the gradient the optimizer stepped with includes what .grad held before the call "
                  "(the previous step's gradients).",
                  hint="clear the gradients (optimizer.zero_grad()) once, before the first micro-batch")
    check(worst <= 1e-4, f"{what}: the gradient the optimizer stepped with differs from that of one big batch "
          f"holding all {len(micro)} micro-batches (largest relative difference {worst:.2g}).",
          _accumulation_hint(model, micro, got, want))
    check(isinstance(loss, float | int) and not isinstance(loss, bool), f"{what} should return the loss as a float, "
          f"got {type(loss).__name__}.", hint="return a Python float: tensor.item()")
    assert_close(float(loss), want_loss, f"the loss returned by {what}", rtol=1e-4,
                 hint="total cross-entropy of all targets / number of targets of all micro-batches")


@q.check
def _accumulation(train_step, base):
    model, tokenizer = _fresh(base)
    micro = _chat_batches(tokenizer, "extract", 9, (2, 3, 4), HELD_OUT_SEED)
    _check_step(train_step, model.train(), micro, tokenizer.pad_token_id, "3 micro-batches of extract examples")


@q.check(hidden=True)
def _autocast_only_forward(train_step, base):
    model, tokenizer = _fresh(base)
    micro = _chat_batches(tokenizer, "units", 6, (4, 2), HELD_OUT_SEED + 1)
    want_loss, want = _reference_grads(model.train(), micro, tokenizer.pad_token_id)
    spy = _Spy(model.parameters())
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    what = "train_step(model, optimizer, 2 micro-batches, amp_dtype=torch.bfloat16)"
    loss = call_learner(train_step, what, model, spy, micro, torch.bfloat16)
    hook.remove()
    check(bool(seen) and all(d == torch.bfloat16 for d in seen), f"{what}: the forward pass did not run under "
          f"autocast (the output head produced {sorted({str(d) for d in seen})}).",
          hint="with amp_dtype, run the forward pass inside torch.autocast(device.type, dtype=amp_dtype)")
    assert_equal(len(spy.autocast), 1, f"the number of optimizer.step() calls in {what}")
    check(not spy.autocast[0], f"{what}: optimizer.step() ran inside torch.autocast.",
          hint="only the forward pass and the loss go inside autocast: an optimizer that multiplies matrices would "
          "silently compute its update in bf16")
    rel = max(float((a - b).norm() / (b.norm() + 1e-12)) for a, b in zip(spy.grads[0], want, strict=True))
    check(rel < 0.1, f"{what}: the gradient is far from the float32 one (relative difference {rel:.2g}).",
          hint="bf16 changes the gradient a little, not this much: check the loss normalisation")
    check(isinstance(loss, float | int) and abs(float(loss) - want_loss) < 0.02 * want_loss,
          f"{what}: the returned loss is off.", hint="compute the loss in float32: logits.float()", received=loss,
          expected=f"{want_loss:.4f} (within 2 %)")


@q.check(hidden=True)
def _accumulation_other_models(train_step, base, ctx):
    _, tokenizer = base
    torch.manual_seed(HELD_OUT_SEED)
    qwen = Qwen2ForCausalLM(_qwen2_config()).train()
    micro = _lm_batches(tokenizer, [(7,), (30, 12), (19, 5, 3)], HELD_OUT_SEED + 2)
    _check_step(train_step, qwen, micro, tokenizer.pad_token_id, "a Qwen2 model, language-modelling micro-batches")
    model, _ = _fresh(base, ctx.device)
    single = _chat_batches(tokenizer, "dates", 1, (1,), HELD_OUT_SEED + 3)
    _check_step(train_step, model.train(), single, tokenizer.pad_token_id, "one micro-batch of one example (on the "
                "CPU, the model on the grading device)")


# --- eff_build -----------------------------------------------------------------------------------------------
q = LAB.question("eff_build", points=2, uses=("build",), title="Building a rung of the speed ladder")
SMALL = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)


def _rung(name="r", attention="eager", optimizer="for-loop", amp_dtype=None, compile=False, accumulation=1):
    return SimpleNamespace(name=name, attention=attention, optimizer=optimizer, amp_dtype=amp_dtype, compile=compile,
                           accumulation=accumulation)


def _unwrap(model):
    return getattr(model, "_orig_mod", model)


def _is_compiled(model) -> bool:
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


def _check_build(build, config, rung, name: str, device) -> None:
    what = f"build(config, {name}, device)"
    out = call_learner(build, what, config, rung, device)
    check(isinstance(out, tuple) and len(out) == 2, f"{what} should return (model, optimizer).")
    model, opt = out
    inner = _unwrap(model)
    check(isinstance(inner, torch.nn.Module) and hasattr(inner, "config"), f"{what} returned a "
          f"{type(inner).__name__} as the model.", hint="AutoModelForCausalLM.from_config(config, ...)")
    assert_equal(inner.config._attn_implementation, rung.attention, f"the attention implementation of {what}",
                 hint="from_config(config, attn_implementation=rung.attention)")
    params = list(inner.parameters())
    check(all(p.dtype == torch.float32 for p in params), f"{what}: the weights are not all float32.",
          hint="autocast computes in bf16 on the fly; the weights stay float32")
    check(all(p.device.type == torch.device(device).type for p in params), f"{what}: the model is not on {device}.")
    check(inner.training, f"{what}: the model is in eval mode.", hint="model.train()")
    check(_is_compiled(model) == rung.compile, f"{what}: the model is {'' if _is_compiled(model) else 'not '}"
          "wrapped by torch.compile.", hint="torch.compile(model) only when rung.compile")
    check(isinstance(opt, torch.optim.AdamW), f"{what}: the optimizer is a {type(opt).__name__}, not AdamW.")
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    check(ids == {id(p) for p in params}, f"{what}: the optimizer does not hold exactly the model's parameters.",
          hint="torch.optim.AdamW(model.parameters(), ...) (before compiling: the compiled wrapper shares them)")
    group = opt.param_groups[0]
    check(math.isclose(group["lr"], 1e-3) and math.isclose(group["weight_decay"], 0.1),
          f"{what}: lr {group['lr']} and weight_decay {group['weight_decay']}.",
          hint="lr=LR, weight_decay=WEIGHT_DECAY")
    fused, foreach = bool(opt.defaults.get("fused")), opt.defaults.get("foreach")
    want = {"for-loop": (False, False), "foreach": (False, True), "fused": (True, None)}[rung.optimizer]
    got = (fused, foreach if rung.optimizer != "fused" else None)
    check(got == want, f"{what}: AdamW was built with fused={opt.defaults.get('fused')}, foreach={foreach}.",
          hint="'for-loop': foreach=False; 'foreach': foreach=True; 'fused': fused=True")


@q.check
def _build(build, ctx):
    for rung in (_rung("naive"), _rung("sdpa", "sdpa"), _rung("fused", "sdpa", "fused"),
                 _rung("compiled", "sdpa", "fused", torch.bfloat16, True)):
        _check_build(build, SMALL, rung, f"the rung {rung.name!r}", ctx.device)
    a, _ = call_learner(build, "build(config, rung, device, seed=3)", SMALL, _rung(), ctx.device, seed=3)
    b, _ = call_learner(build, "build(config, rung, device, seed=3)", SMALL, _rung("sdpa", "sdpa"), ctx.device, seed=3)
    same = all(torch.equal(x, y) for x, y in zip(_unwrap(a).state_dict().values(), _unwrap(b).state_dict().values(),
                                                  strict=True))
    check(same, "Two rungs built with the same seed start from different weights.",
          hint="torch.manual_seed(seed) right before building the model")


@q.check(hidden=True)
def _build_other(build, ctx):
    config = _qwen2_config()
    _check_build(build, config, _rung("foreach", "sdpa", "foreach"), "a Qwen2 config and the rung 'foreach'",
                 ctx.device)
    a, _ = call_learner(build, "build(config, rung, device, seed=1)", SMALL, _rung(), ctx.device, seed=1)
    b, _ = call_learner(build, "build(config, rung, device, seed=2)", SMALL, _rung(), ctx.device, seed=2)
    check(not torch.equal(_unwrap(a).lm_head.weight, _unwrap(b).lm_head.weight),
          "build(..., seed=1) and build(..., seed=2) gave the same weights.", hint="seed torch with `seed`")


# --- eff_ladder ----------------------------------------------------------------------------------------------
q = LAB.question("eff_ladder", points=2, uses=("ladder",), title="The speed ladder: at least 2x the naive step",
                 builds_on=("eff_train_step", "eff_build"))
BAR = 2.0  # the optimized step's speed-up over the naive one, on a GPU or a CPU with bf16 and torch.compile
BAR_WITHOUT = 1.25  # on a CPU without native bf16 or without a working torch.compile
# On a busy machine (a rung's spread did not settle, or more runnable threads than 1.5 x the cores) differences shrink:
# the solution's compiled bf16 rung, measured on a 2-core machine shared with other jobs (load average 6 to 12), gave
# 2.7x, 2.0x and 1.7x in three runs, each with its rounds tightly grouped. A speed-up compressed by load cannot be told
# from a slow setup, so a busy machine needs only BAR_WITHOUT: the check must not fail a learner for the machine's load.
BUSY_LOAD_PER_CORE = 1.5


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_bf16() -> bool:
    """bf16 matmuls at least twice as fast as float32 ones on this CPU (AMX, AVX-512 BF16); emulated ones are slower."""
    a = torch.randn(512, 512)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x
        samples = []
        for _ in range(7):
            start = time.perf_counter()
            x @ x
            samples.append(time.perf_counter() - start)
        times[dtype] = sorted(samples)[3]
    return times[torch.bfloat16] * 2 <= times[torch.float32]


def _machine_busy(*measurements) -> bool:
    """A measurement whose spread never settled, or more runnable threads than the cores can serve (last minute)."""
    import psutil

    if any(not getattr(m, "reliable", True) for m in measurements):
        return True
    try:
        return psutil.getloadavg()[0] > BUSY_LOAD_PER_CORE * (psutil.cpu_count() or 1)
    except (AttributeError, OSError):
        return False


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@q.check
def _ladder(ladder, ctx):
    check(isinstance(ladder, Mapping) and "naive" in ladder, "`ladder` should be the dict of RungResults the ladder "
          "cells build, with a rung named 'naive'.", hint="run the two cells of section 7")
    measured = {n: r for n, r in ladder.items() if getattr(r, "skipped", None) is None}
    check(len(measured) >= 3 and "naive" in measured, f"Only {sorted(measured)} of the ladder's rungs were measured.",
          hint="the naive rung and at least two faster ones must run (the skipped ones say why)")
    for name, r in measured.items():
        samples = getattr(getattr(r, "seconds", None), "samples", ())
        check(len(samples) >= 3 and all(s > 0 for s in samples) and r.tokens > 0, f"The rung {name!r} has no "
              "measurement.", hint="run the measuring cell of section 7")
    naive = measured["naive"]
    rates = {n: [r.tokens / s for s in r.seconds.samples] for n, r in measured.items()}
    best = max(measured, key=lambda n: _quantile(rates[n], 0.5))
    n = min(len(rates["naive"]), len(rates[best]))
    speedups = [b / a for a, b in zip(rates["naive"][:n], rates[best][:n], strict=True)]  # round by round
    compiled = any(getattr(r.rung, "compile", False) for r in measured.values())
    full = torch.device(ctx.device).type == "cuda" or (_cpu_has_fast_bf16() and compiled)
    busy = _machine_busy(naive.seconds, measured[best].seconds)
    bar = BAR if full and not busy else BAR_WITHOUT
    median, q3 = _quantile(speedups, 0.5), _quantile(speedups, 0.75)
    table = ", ".join(f"{name}: {_quantile(rates[name], 0.5):,.0f} tok/s" for name in measured)
    # Fail only when three rounds in four were below the bar: a busy machine widens the spread, it does not fail you.
    check(q3 >= bar, f"The fastest rung, {best!r}, is {median:.2f}x the naive one (round by round: upper quartile "
          f"{q3:.2f}x); it needs {bar:g}x{' (the machine was busy)' if busy else ''}. Measured: {table}.",
          hint="bf16 autocast around the forward pass only, SDPA attention, fused AdamW and torch.compile; check "
          f"that build and train_step use each rung's settings (naive {naive.tokens / naive.seconds.median:,.0f} "
          "tok/s)")


# --- eff_grad_scaler -----------------------------------------------------------------------------------------
q = LAB.question("eff_grad_scaler", points=2, uses=("fp16_step",), title="fp16 with a GradScaler")


def _fp16_reference(model, optimizer, scaler, batch) -> float:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.float16):
        loss = model(**batch).loss
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def _check_fp16(fp16_step, base, device, batch, make_opt, scale: float, name: str, stale: bool = False) -> None:
    mine, _ = _fresh(base, device)
    ref = copy.deepcopy(mine)
    mine.train()
    ref.train()
    before = [p.detach().clone() for p in mine.parameters()]
    if stale:
        for p in mine.parameters():
            p.grad = torch.full_like(p, 3.0)
    my_scaler = torch.amp.GradScaler(torch.device(device).type, init_scale=scale)
    ref_scaler = torch.amp.GradScaler(torch.device(device).type, init_scale=scale)
    what = f"fp16_step(model, optimizer, GradScaler(init_scale={scale:g}), batch) {name}"
    loss = call_learner(fp16_step, what, mine, make_opt(mine), my_scaler, batch)
    want_loss = _fp16_reference(ref, make_opt(ref), ref_scaler, batch)
    after = list(mine.parameters())
    check(all(torch.isfinite(p).all() for p in after), f"{what}: the weights now hold inf or NaN.",
          hint="call scaler.step(optimizer), not optimizer.step(): it skips a step whose gradients overflowed")
    overflow = ref_scaler.get_scale() < scale
    if overflow:
        check(all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), f"{what}: the gradients overflowed, "
              "yet the weights changed.", hint="scaler.step(optimizer) skips the step when a gradient is inf or NaN")
    else:
        worst = max(float((a - b).detach().abs().max()) for a, b in zip(after, ref.parameters(), strict=True))
        check(worst <= 1e-5, f"{what}: the weights after the step differ from those of a correct fp16 step (largest "
              f"difference {worst:.2g}).", hint="scaler.scale(loss).backward(), then scaler.step(optimizer): it "
              "divides the gradients by the scale before the optimizer uses them")
    check(my_scaler.get_scale() == ref_scaler.get_scale(), f"{what}: the scale after the step is wrong.",
          hint="call scaler.update() after scaler.step(optimizer): it halves the scale after an overflow",
          received=my_scaler.get_scale(), expected=ref_scaler.get_scale())
    check(isinstance(loss, float | int) and math.isfinite(loss) and math.isclose(loss, want_loss, rel_tol=1e-3),
          f"{what}: the returned loss is wrong.", hint="return the unscaled loss, loss.item()", received=loss,
          expected=want_loss)


@q.check
def _grad_scaler(fp16_step, base, ctx):
    _, tokenizer = base
    (batch,) = _chat_batches(tokenizer, "dates", 4, (4,), HELD_OUT_SEED + 4)

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=0.05)

    _check_fp16(fp16_step, base, ctx.device, batch, sgd, 2.0**8, "with SGD")
    _check_fp16(fp16_step, base, ctx.device, batch, sgd, 2.0**60, "whose gradients overflow")


@q.check(hidden=True)
def _grad_scaler_adamw_and_stale(fp16_step, base, ctx):
    _, tokenizer = base
    (batch,) = _chat_batches(tokenizer, "units", 3, (3,), HELD_OUT_SEED + 5)

    def adamw(m):
        return torch.optim.AdamW(m.parameters(), lr=1e-3)

    _check_fp16(fp16_step, base, ctx.device, batch, adamw, 2.0**50, "with AdamW, gradients overflowing")
    _check_fp16(fp16_step, base, ctx.device, batch, lambda m: torch.optim.SGD(m.parameters(), lr=0.05), 2.0**4,
                "called with last step's gradients still in .grad", stale=True)


# --- eff_checkpoint ------------------------------------------------------------------------------------------
q = LAB.question("eff_checkpoint", points=2, uses=("checkpoint_layers",),
                 title="Activation checkpointing that keeps dropout's masks")


def _with_dropout(model, p: float = 0.1):
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = p
    return model


def _grads(model, batch, seed: int) -> tuple[float, list[torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), [p.grad.detach().clone() for p in model.parameters()]


def _check_checkpointing(checkpoint_layers, model, batch, name: str) -> None:
    plain = copy.deepcopy(model)
    what = f"checkpoint_layers({name})"
    out = call_learner(checkpoint_layers, what, model)
    check(out is model, f"{what} should return the model it was given, changed in place.")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    want_loss, want = _grads(plain, batch, HELD_OUT_SEED)
    loss, got = call_learner(_grads, f"a training step of the model after {what}", model, batch, HELD_OUT_SEED)
    check(len(got) == len(want), f"{what}: the model's parameters changed.", hint="wrap the layers, don't copy them")
    worst = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))
    check(math.isclose(loss, want_loss, rel_tol=1e-6) and worst <= 1e-5, f"{what}: with dropout on, the gradients "
          f"differ from those of the same model without checkpointing (largest difference {worst:.2g}).",
          hint="the recomputation must draw the same dropout masks: keep preserve_rng_state=True (the default) in "
          "torch.utils.checkpoint.checkpoint")
    ids = batch["input_ids"]
    saved, saved_plain = _saved_bytes(model.train(), ids), _saved_bytes(plain.train(), ids)
    check(saved < 0.5 * saved_plain, f"{what}: a forward pass still saves {saved / saved_plain:.0%} of the "
          "activations it saved without checkpointing.",
          hint="in training mode with gradients enabled, run each layer through torch.utils.checkpoint.checkpoint")
    with torch.no_grad():
        got_logits = model.eval()(**batch).logits
        want_logits = plain.eval()(**batch).logits
    assert_close(got_logits, want_logits, f"the logits of the model after {what}, in eval mode", rtol=1e-5, atol=1e-5)


@q.check
def _checkpointing(checkpoint_layers, base, ctx):
    model, tokenizer = _fresh(base, ctx.device)
    (batch,) = _chat_batches(tokenizer, "dates", 6, (6,), HELD_OUT_SEED + 6)
    _check_checkpointing(checkpoint_layers, _with_dropout(model), batch, "the base model with attention dropout 0.1")


@q.check(hidden=True)
def _checkpointing_qwen2(checkpoint_layers, base, ctx):
    _, tokenizer = base
    torch.manual_seed(HELD_OUT_SEED)
    qwen = Qwen2ForCausalLM(_qwen2_config(attention_dropout=0.2)).to(ctx.device)
    (batch,) = _lm_batches(tokenizer, [(40, 17, 3)], HELD_OUT_SEED + 7)
    _check_checkpointing(checkpoint_layers, qwen, batch, "a Qwen2 model with attention dropout 0.2")


# --- eff_gpu -------------------------------------------------------------------------------------------------
q = LAB.question("eff_gpu", points=2, uses=("gpu_report", "ladder"), title="MFU and memory on a GPU", device="cuda",
                 builds_on=("eff_flops", "eff_ladder"))


@q.check
def _gpu(gpu_report, ladder):
    check(isinstance(gpu_report, Mapping), "`gpu_report` should be the dict the cell of section 11 builds on a GPU.",
          hint="run the cells of sections 7 and 11 on the GPU")
    r = gpu_report
    want = r["tokens_per_s"] * r["flops_per_token"] / r["peak_flops"]
    check(math.isclose(r["mfu"], want, rel_tol=1e-9) and 0 < r["mfu"] < 1, f"gpu_report's MFU is {r['mfu']}.",
          hint="MFU = tokens/s x FLOPs per token / peak FLOP/s, a fraction below 1", expected=want)
    best = ladder[r["rung"]]
    check(math.isclose(r["tokens_per_s"], best.tokens_per_s.median, rel_tol=1e-9),
          "gpu_report's tokens/s is not the ladder's measurement of its rung.")
    check(0 < r["best_peak_bytes"] and 0 < r["naive_peak_bytes"], "gpu_report's peak memory figures are missing.",
          hint="labkit.memory.peak_allocated_bytes on the GPU reads torch.cuda.max_memory_allocated")
    check(r["best_peak_bytes"] < r["naive_peak_bytes"], "On the GPU, the fastest rung's step allocates no less memory "
          "than the naive one's.", hint="SDPA never stores the attention probabilities; bf16 halves activations",
          received=r["best_peak_bytes"], expected=f"below {r['naive_peak_bytes']}")
