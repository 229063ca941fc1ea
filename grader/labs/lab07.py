"""Lab 07 - LoRA from scratch, then peft.

References come from peft (get_peft_model with the learner's A and B copied in, merge_and_unload,
save_pretrained / PeftModel.from_pretrained), from the formula W x + b + (alpha/r) B A x written out here, from
the shapes of a configuration's layers written out by hand (an 8B Llama on the meta device), and from held-out
test examples of a seed the notebook never uses. Every model a check changes is its own copy of the course's base
model or of a second architecture built from a config (Qwen2: biases on q, k, v; grouped-query attention).
"""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from grader.asserts import (
    assert_close,
    assert_equal,
    assert_shape,
    assert_type,
    call_learner,
    check,
    learner_raises,
)
from grader.models import tiny_llama, tiny_qwen2
from grader.registry import Lab
from labkit import evals, world, zoo

LAB = Lab("07", "LoRA from scratch, then peft")
HELD_OUT_SEED = 9007  # the notebook trains on task seed 0 (train split) and validates on seed 0 (val split)
QV = ["q_proj", "v_proj"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXTS = ["mia has 3 red apples.", "the capital of", "date: 3rd of march 2021"]
# Exact match of the trained LoRA model on 300 test examples of the grader's seed. Measured for the notebook's recipe
# (r=8 on the blocks' linear layers + embeddings and head, lr 5e-3, 200 steps): 55.0 % (seed 0, 1 thread, as the test
# suite runs), 49.3 % (seed 0, 2 threads: the same run rounds differently and ends elsewhere), 57.0 %, 67.3 % and
# 67.0 % (seeds 1, 2, 3); the base model gets 0 %, and training only the embeddings and head (what a LoRA model whose
# A starts at zero does) 0.5 % on validation. The bar sits 14 points below the lowest measured run: a margin for that
# run-to-run spread and for a correct implementation that draws its random numbers in another order.
EXACT_MATCH_BAR = 0.35
N_TEST = 300


# --- fixtures and helpers ----------------------------------------------------------------------------------------
@LAB.fixture
def base(ctx):
    """The course's base model (float32, eval mode) and its tokenizer; checks copy the model before changing it."""
    return zoo.load_base_model(device=ctx.device)


def _zoo(base, device) -> nn.Module:
    return copy.deepcopy(base[0]).to(device).eval()


def _qwen2(device, seed: int = HELD_OUT_SEED) -> nn.Module:
    return tiny_qwen2(seed, device=device, random_biases=True, pad_token_id=0)


def _small_llama(device, **overrides) -> nn.Module:
    return tiny_llama(HELD_OUT_SEED + 1, device=device, **overrides)


def _batch(base, device) -> dict[str, torch.Tensor]:
    return base[1](TEXTS, return_tensors="pt", padding=True).to(device)


@torch.no_grad()
def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits.float().cpu()


def _matches(name: str, targets: Iterable[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The learner's LoRA layers by name, found by their class name: a class defined again in the notebook is
    another class object, and its layers are still LoRA layers."""
    return {name: m for name, m in model.named_modules() if type(m).__name__ == "LoRALinear"}


def _randomize_b(model: nn.Module, seed: int, std: float = 0.05) -> None:
    """B is zero at initialisation, where every implementation agrees: give it values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in _lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def _reference_peft(lora_model: nn.Module, base_model: nn.Module, targets, r: int, alpha: float) -> PeftModel:
    """peft's LoRA with the learner's A and B copied in."""
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                        init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(base_model), config).eval()
    inner = model.base_model.model
    with torch.no_grad():
        for name, layer in _lora_layers(lora_model).items():
            ref = inner.get_submodule(name)
            check(hasattr(ref, "lora_A"), f"Your model has a LoRA layer at {name}, where peft, given target_modules="
                  f"{list(targets)}, adapts nothing.", hint="wrap only the nn.Linear layers that a target matches")
            ref.lora_A["default"].weight.copy_(layer.lora_A)
            ref.lora_B["default"].weight.copy_(layer.lora_B)
    return model


def _injected(add_lora, model: nn.Module, targets, r: int, alpha: float, what: str) -> nn.Module:
    out = call_learner(add_lora, what, model, targets, r, alpha)
    check(isinstance(out, nn.Module), f"{what} returned a {type(out).__name__}, not the model.",
          hint="change the model in place and return it")
    return out


# --- lora_linear ---------------------------------------------------------------------------------------------------
q = LAB.question("lora_linear", points=3, uses=("LoRALinear",), title="A LoRA layer: init, scale, frozen base")


def _reference_forward(layer, x: torch.Tensor, r: int, alpha: float) -> torch.Tensor:
    base = layer.base
    out = x @ base.weight.T + (base.bias if base.bias is not None else 0)
    return out + (alpha / r) * (x @ layer.lora_A.T @ layer.lora_B.T)


def _check_layer_structure(layer, base: nn.Linear, r: int, alpha: float, what: str) -> None:
    check(getattr(layer, "base", None) is base, f"{what}: self.base is not the layer it was given.",
          hint="keep the given nn.Linear itself as self.base (not a copy): its weight is the frozen W")
    d_out, d_in = base.weight.shape
    for name, shape in (("lora_A", (r, d_in)), ("lora_B", (d_out, r))):
        p = getattr(layer, name, None)
        check(isinstance(p, nn.Parameter), f"{what}.{name} is a {type(p).__name__}, not an nn.Parameter.",
              hint="wrap it in nn.Parameter so that the optimizer and model.parameters() see it")
        assert_shape(p, shape, f"{what}.{name}", hint="lora_A is (r, d_in) and lora_B is (d_out, r), as in peft")
        check(p.requires_grad, f"{what}.{name} does not require a gradient.", hint="A and B are what LoRA trains")
    frozen = [n for n, p in base.named_parameters() if p.requires_grad]
    check(not frozen, f"{what}: the base layer's {frozen} still require gradients.",
          hint="freeze the base layer: base.requires_grad_(False)")
    assert_close(float(getattr(layer, "scaling", float("nan"))), alpha / r, f"{what}.scaling", rtol=1e-6,
                 hint="scaling = alpha / r (not alpha)")
    check(getattr(layer, "merged", None) is False, f"{what}.merged should be False after construction.",
          received=getattr(layer, "merged", "missing"))


def _check_init(layer, d_in: int, what: str) -> None:
    b = layer.lora_B.detach()
    check(bool((b == 0).all()), f"{what}.lora_B is not all zeros at initialisation.",
          received=f"max |B| = {b.abs().max().item():.3g}",
          hint="B starts at zero, so that the model starts exactly as the base model (ΔW = BA = 0)")
    a = layer.lora_A.detach().double()
    bound = 1 / math.sqrt(d_in)
    check(bool((a != 0).any()), f"{what}.lora_A is all zeros.",
          hint="with A and B both zero no gradient ever reaches either: initialise A with "
          "nn.init.kaiming_uniform_(A, a=math.sqrt(5))")
    check(a.abs().max().item() <= bound * (1 + 1e-6), f"{what}.lora_A has values outside ±1/sqrt(d_in).",
          received=f"max |A| = {a.abs().max().item():.4g}", expected=f"at most {bound:.4g}",
          hint="kaiming_uniform_(A, a=math.sqrt(5)) draws from U(-1/sqrt(d_in), 1/sqrt(d_in)), with d_in = A.shape[1]")
    if a.numel() >= 4096:  # enough values for the statistics to be sharp
        std = a.std().item()
        check(abs(std - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3),
              f"{what}.lora_A does not look uniform on ±1/sqrt(d_in).",
              received=f"std {std:.4g}", expected=f"{bound / math.sqrt(3):.4g} (a uniform distribution's)",
              hint="nn.init.kaiming_uniform_(A, a=math.sqrt(5)), as peft does")
        check(abs(a.mean().item()) < 0.02 * bound, f"{what}.lora_A is not centred on zero.",
              received=f"mean {a.mean().item():.3g}")


@q.check
def _linear_basics(LoRALinear):
    torch.manual_seed(HELD_OUT_SEED)
    base = nn.Linear(48, 24)
    what = "LoRALinear(nn.Linear(48, 24), r=4, alpha=8)"
    layer = call_learner(LoRALinear, what, base, 4, 8)
    _check_layer_structure(layer, base, 4, 8, what)
    _check_init(layer, 48, what)
    x = torch.randn(2, 5, 48)
    assert_close(layer(x), base(x), f"{what} at initialisation, on a (2, 5, 48) input", rtol=0, atol=1e-6,
                 hint="with B = 0 the layer computes exactly what its base layer computes")
    _randomize_b(layer, HELD_OUT_SEED)
    assert_close(layer(x), _reference_forward(layer, x, 4, 8), f"{what} with nonzero B", rtol=1e-5, atol=1e-5,
                 hint="y = base(x) + (alpha / r) * x @ A.T @ B.T")
    big = call_learner(LoRALinear, "LoRALinear(nn.Linear(1024, 32), r=64, alpha=16)", nn.Linear(1024, 32), 64, 16)
    _check_init(big, 1024, "LoRALinear(nn.Linear(1024, 32), r=64, alpha=16)")


@q.check(hidden=True)
def _linear_edges(LoRALinear):
    torch.manual_seed(HELD_OUT_SEED + 1)
    for d_in, d_out, r, alpha, bias, shape in ((7, 3, 1, 1.0, True, (1, 7)), (33, 65, 5, 20.0, False, (2, 3, 4, 33)),
                                               (16, 16, 16, 8.0, True, (16,))):
        base = nn.Linear(d_in, d_out, bias=bias)
        what = f"LoRALinear(nn.Linear({d_in}, {d_out}, bias={bias}), r={r}, alpha={alpha})"
        layer = call_learner(LoRALinear, what, base, r, alpha)
        _check_layer_structure(layer, base, r, alpha, what)
        _check_init(layer, d_in, what)
        x = torch.randn(shape)
        _randomize_b(layer, HELD_OUT_SEED + d_in)
        got = call_learner(layer, f"{what} on an input of shape {shape}", x,
                           hint="work on the last dimension of x, whatever the leading dimensions")
        assert_close(got, _reference_forward(layer, x, r, alpha), f"{what} on an input of shape {shape}",
                     rtol=1e-5, atol=1e-5, hint="y = base(x) + (alpha / r) * x @ A.T @ B.T")


@q.check(hidden=True)
def _linear_dtype_and_gradients(LoRALinear):
    torch.manual_seed(HELD_OUT_SEED + 2)
    base = nn.Linear(20, 10).double()
    what = "LoRALinear on a float64 nn.Linear(20, 10), r=2, alpha=4"
    layer = call_learner(LoRALinear, what, base, 2, 4)
    for name in ("lora_A", "lora_B"):
        assert_equal(getattr(layer, name).dtype, torch.float64, f"the dtype of {name} in {what}",
                     hint="create A and B in the base weight's dtype and on its device (dtype=, device= of "
                     "base.weight)")
    x = torch.randn(3, 20, dtype=torch.float64)
    _randomize_b(layer, HELD_OUT_SEED)
    out = call_learner(layer, f"{what} on a float64 input", x)
    assert_equal(out.dtype, torch.float64, f"the dtype of the output of {what}")
    out.pow(2).sum().backward()
    for name in ("lora_A", "lora_B"):
        grad = getattr(layer, name).grad
        check(grad is not None and bool((grad != 0).any()), f"No gradient reached {name} in {what}.",
              hint="the update must be computed from lora_A and lora_B themselves, in forward")
    check(base.weight.grad is None, f"A gradient reached the frozen base weight in {what}.",
          hint="freeze the base layer: base.requires_grad_(False)")


# --- lora_merge ----------------------------------------------------------------------------------------------------
q = LAB.question("lora_merge", points=2, uses=("LoRALinear",), title="Merge and unmerge", builds_on=("lora_linear",))


def _check_merge_cycle(LoRALinear, d_in: int, d_out: int, r: int, alpha: float, bias: bool, seed: int) -> None:
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, bias=bias)
    what = f"LoRALinear(nn.Linear({d_in}, {d_out}, bias={bias}), r={r}, alpha={alpha})"
    layer = call_learner(LoRALinear, what, base, r, alpha)
    _randomize_b(layer, seed)
    x = torch.randn(4, d_in)
    w0 = base.weight.detach().clone()
    trainable = [p.requires_grad for p in layer.parameters()]
    y0 = layer(x).detach()
    delta = (alpha / r) * (layer.lora_B @ layer.lora_A).detach()
    call_learner(layer.merge, f"{what}.merge()")
    check(layer.merged is True, f"{what}.merged is not True after merge().")
    assert_close(layer.base.weight.detach(), w0 + delta, f"base.weight after {what}.merge()", rtol=0, atol=1e-6,
                 hint="merge adds (alpha / r) * B @ A to base.weight")
    assert_close(layer(x).detach(), y0, f"the output of {what} after merge()", rtol=1e-5, atol=1e-5,
                 hint="once merged, forward is base(x) alone: the update is already in the weight")
    call_learner(layer.merge, f"{what}.merge() called a second time")
    assert_close(layer.base.weight.detach(), w0 + delta, "base.weight after merge() twice", rtol=0, atol=1e-6,
                 hint="merge does nothing when the layer is already merged: check self.merged first")
    call_learner(layer.unmerge, f"{what}.unmerge()")
    check(layer.merged is False, f"{what}.merged is not False after unmerge().")
    assert_close(layer.base.weight.detach(), w0, "base.weight after merge() then unmerge()", rtol=0, atol=1e-6,
                 hint="unmerge subtracts (alpha / r) * B @ A from base.weight again")
    assert_close(layer(x).detach(), y0, f"the output of {what} after unmerge()", rtol=1e-5, atol=1e-5)
    call_learner(layer.unmerge, f"{what}.unmerge() called a second time")
    assert_close(layer.base.weight.detach(), w0, "base.weight after unmerge() twice", rtol=0, atol=1e-6,
                 hint="unmerge does nothing when the layer is not merged")
    after = [p.requires_grad for p in layer.parameters()]
    check(after == trainable, f"merge() and unmerge() of {what} changed which parameters require gradients.",
          hint="merging changes values, not what trains: leave requires_grad alone")


@q.check
def _merge(LoRALinear):
    _check_merge_cycle(LoRALinear, 40, 24, 4, 8.0, True, HELD_OUT_SEED)


@q.check(hidden=True)
def _merge_other_shapes(LoRALinear):
    _check_merge_cycle(LoRALinear, 9, 31, 3, 27.0, False, HELD_OUT_SEED + 3)
    _check_merge_cycle(LoRALinear, 64, 64, 16, 4.0, True, HELD_OUT_SEED + 4)


# --- lora_inject ---------------------------------------------------------------------------------------------------
q = LAB.question("lora_inject", points=3, uses=("add_lora",), title="Injection by module name",
                 builds_on=("lora_linear",))


def _check_injected(model: nn.Module, original: nn.Module, targets, r: int, alpha: float, what: str) -> None:
    wanted = [n for n in _linear_names(original) if _matches(n, targets)]
    layers = _lora_layers(model)
    extra = sorted(set(layers) - set(wanted))
    missing = sorted(set(wanted) - set(layers))
    check(not missing, f"{what}: {len(missing)} layer(s) that the targets name are not LoRA layers, e.g. "
          f"{missing[:2]}.", hint="replace every nn.Linear whose full name is a target or ends with '.' + target")
    check(not extra, f"{what}: {len(extra)} layer(s) that no target names became LoRA layers, e.g. {extra[:2]}.",
          hint="wrap only the nn.Linear layers that a target matches (its name is the target or ends with "
          "'.' + target), not every Linear and not by substring")
    for name, layer in layers.items():
        assert_close(float(layer.scaling), alpha / r, f"scaling of {name} after {what}", rtol=1e-6)
        assert_equal(tuple(layer.lora_A.shape)[0], r, f"the rank of {name}'s lora_A after {what}")
    lora_ids = {id(p) for layer in layers.values() for p in (layer.lora_A, layer.lora_B)}
    still = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in lora_ids]
    check(not still, f"{what}: {len(still)} parameter(s) besides A and B still require gradients, e.g. {still[:3]}.",
          hint="freeze the whole model first (model.requires_grad_(False)), then add the LoRA layers")
    frozen = [n for n, p in model.named_parameters() if id(p) in lora_ids and not p.requires_grad]
    check(not frozen, f"{what}: LoRA parameters do not require gradients: {frozen[:2]}.",
          hint="freeze the model before wrapping its layers, or A and B end up frozen too")


@q.check
def _inject(add_lora, ctx, base):
    original = _zoo(base, ctx.device)
    batch = _batch(base, ctx.device)
    want = _logits(original, batch)
    what = "add_lora(base model, ['q_proj', 'v_proj'], r=4, alpha=8)"
    model = _injected(add_lora, copy.deepcopy(original), QV, 4, 8, what)
    _check_injected(model, original, QV, 4, 8, what)
    assert_close(_logits(model, batch), want, f"the logits after {what}", rtol=0, atol=1e-6,
                 hint="B = 0 at first: the adapted model computes exactly what the base model computes")
    _check_wrong_name(add_lora, original, ["q_proj", "value"], "value")


def _check_wrong_name(add_lora, original: nn.Module, targets: list[str], wrong: str) -> None:
    model = copy.deepcopy(original).requires_grad_(True)
    what = f"add_lora(model, {targets}, r=4, alpha=8)"
    message = str(learner_raises(
        add_lora, f"{what}, where {wrong!r} matches no nn.Linear of the model,", ValueError, model, targets, 4, 8,
        hint="check every target before changing the model and raise ValueError(...) naming the targets that match "
             "nothing",
        if_silent="a target that matches nothing must raise ValueError: else a typo trains fewer layers than you "
                  "think"))
    check(wrong in message, f"The ValueError of {what} does not name the target {wrong!r} that matched nothing.",
          received=message[:300])
    names = sorted({n.rsplit(".", 1)[-1] for n in _linear_names(original)})
    absent = [n for n in names if n not in message]
    check(not absent, f"The ValueError of {what} does not list the model's Linear layers: {absent} are not in it.",
          received=message[:300], hint="list the last part of every nn.Linear's name, once each (q_proj, ..., lm_head)")
    changed = _lora_layers(model)
    check(not changed, f"{what} raised, but only after turning {len(changed)} layer(s) into LoRA layers.",
          hint="check every target before changing anything")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    check(not frozen, f"{what} raised, but only after freezing the model's parameters.",
          hint="check every target before changing anything")


@q.check(hidden=True)
def _inject_qwen2(add_lora, ctx, base):
    original = _qwen2(ctx.device)
    batch = _batch(base, ctx.device)
    want = _logits(original, batch)
    what = "add_lora(a Qwen2 model, all linear layers of its blocks, r=2, alpha=6)"
    model = _injected(add_lora, copy.deepcopy(original), ALL_LINEAR, 2, 6, what)
    _check_injected(model, original, ALL_LINEAR, 2, 6, what)
    assert_close(_logits(model, batch), want, f"the logits after {what}", rtol=0, atol=1e-6,
                 hint="keep the base layer's bias: base(x) computes W x + b")
    _check_wrong_name(add_lora, original, ["proj"], "proj")


@q.check(hidden=True)
def _inject_iterables_and_suffixes(add_lora, ctx, base):
    original = _zoo(base, ctx.device)
    for targets, label in (((t for t in ("k_proj", "down_proj")), "a generator of names ('k_proj', 'down_proj')"),
                           (("self_attn.o_proj", "lm_head"), "('self_attn.o_proj', 'lm_head')"),
                           ({"model.layers.2.mlp.up_proj"}, "a set holding one full name")):
        names = ["k_proj", "down_proj"] if "generator" in label else list(targets)
        what = f"add_lora(base model, {label}, r=3, alpha=3)"
        hint = ("target_modules may be a generator, which can be read only once: make a list of it first"
                if "generator" in label else None)
        model = call_learner(add_lora, what, copy.deepcopy(original), targets, 3, 3, hint=hint)
        check(isinstance(model, nn.Module), f"{what} returned a {type(model).__name__}, not the model.")
        wanted = [n for n in _linear_names(original) if _matches(n, names)]
        got = sorted(_lora_layers(model))
        check(got == sorted(wanted), f"{what} made LoRA layers of the wrong modules.",
              received=f"{len(got)} layers, e.g. {got[:2]}",
              expected=f"{len(wanted)} layers, e.g. {sorted(wanted)[:2]}",
              hint=hint or "a target matches a module whose full name is the target or ends with '.' + target")


# --- lora_count ----------------------------------------------------------------------------------------------------
q = LAB.question("lora_count", points=2, uses=("lora_param_count",), title="Trainable parameters, also on meta")


def _peft_count(model: nn.Module, targets, r: int) -> int:
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=r, target_modules=list(targets)))
    return peft_model.get_nb_trainable_parameters()[0]


def _check_count(lora_param_count, model, targets, r: int, want: int, label: str, hint: str | None = None) -> None:
    what = f"lora_param_count({label}, r={r})"
    got = call_learner(lora_param_count, what, model, targets, r, hint=hint)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    check(isinstance(got, int) and not isinstance(got, bool), f"{what} returned a {type(got).__name__}, not an int.")
    if got != want:
        hint = hint or "r * (in_features + out_features) for each adapted nn.Linear: A is (r, d_in), B is (d_out, r)"
    assert_equal(got, want, what, hint=hint)


@q.check
def _count(lora_param_count, ctx, base):
    model = _zoo(base, ctx.device)
    for targets, r in ((QV, 8), (ALL_LINEAR, 4)):
        _check_count(lora_param_count, model, targets, r, _peft_count(model, targets, r), f"base model, {targets}")
    check(not _lora_layers(model) and all(p.requires_grad for p in model.parameters()),
          "lora_param_count changed the model it was given.", hint="count from the layers' shapes; change nothing")


def _llama3_count(targets: list[str], r: int) -> int:
    """By hand from Llama 3 8B's shapes: 32 layers; q, o 4096->4096; k, v 4096->1024 (8 of 32 heads);
    gate, up 4096->14336; down 14336->4096."""
    shapes = {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096),
              "gate_proj": (4096, 14336), "up_proj": (4096, 14336), "down_proj": (14336, 4096)}
    return 32 * sum(r * sum(shapes[t]) for t in targets)


@q.check(hidden=True)
def _count_meta_and_qwen2(lora_param_count, ctx):
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256)
    with torch.device("meta"):
        llama3 = LlamaForCausalLM(config)
    for targets in (QV, ALL_LINEAR):
        _check_count(lora_param_count, llama3, targets, 16, _llama3_count(targets, 16),
                     f"Llama-3-8B on the meta device, {targets}",
                     hint="k_proj and v_proj are 4096 -> 1024 here (8 key/value heads): read each layer's "
                     "in_features and out_features; build nothing (on the meta device tensors have no values)")
    qwen = _qwen2(ctx.device)
    gen = (t for t in ("k_proj", "lm_head"))
    _check_count(lora_param_count, qwen, gen, 5, _peft_count(qwen, ["k_proj", "lm_head"], 5),
                 "a Qwen2 model, a generator of names ('k_proj', 'lm_head')",
                 hint="target_modules may be a generator, which can be read only once: make a list of it first")


# --- lora_peft -----------------------------------------------------------------------------------------------------
q = LAB.question("lora_peft", points=3, uses=("to_peft", "add_lora"),
                 title="Parity with peft (logits)", builds_on=("lora_inject",))
PARITY_ATOL = 1e-6  # measured: 0.0 with the same A and B (the same float operations in the same order)


def _check_parity(to_peft, add_lora, original: nn.Module, batch, targets, r: int, alpha: float, label: str) -> None:
    what = f"add_lora({label}, {targets}, r={r}, alpha={alpha})"
    lora_model = _injected(add_lora, copy.deepcopy(original), targets, r, alpha, what)
    _randomize_b(lora_model, HELD_OUT_SEED + r)
    mine = _logits(lora_model, batch)
    moved = (mine - _logits(original, batch)).abs().max().item()
    zero_a = all(not bool(layer.lora_A.any()) for layer in _lora_layers(lora_model).values())
    check(moved > 1e-3, f"With B set to random values, the model from {what} computes the base model's logits.",
          hint="every lora_A is zero, so B A = 0 whatever B is: initialise A with kaiming_uniform_" if zero_a else
          "the LoRA update must be part of forward: base(x) + (alpha / r) * x @ A.T @ B.T")
    ref = _logits(_reference_peft(lora_model, original, targets, r, alpha), batch)
    close = (mine - ref).abs().max().item() < 1e-4
    assert_close(mine, ref, f"your LoRA model's logits against peft's with the same A and B ({label})", rtol=0,
                 atol=PARITY_ATOL, hint="the difference is rounding: compute the update in peft's order, first A, then "
                 "B, (x @ A.T) @ B.T * scaling, never forming B @ A" if close else
                 "peft computes base(x) + lora_B(lora_A(x)) * (lora_alpha / r)")
    kept = copy.deepcopy(original.state_dict())
    call = f"to_peft(lora_model, {label}, {targets}, r={r}, alpha={alpha})"
    pm = call_learner(to_peft, call, lora_model, original, targets, r, alpha)
    assert_type(pm, PeftModel, call, hint="get_peft_model(copy of the base model, LoraConfig(...))")
    config = pm.peft_config["default"]
    assert_equal((config.r, config.lora_alpha), (r, alpha), f"(r, lora_alpha) of the LoraConfig from {call}")
    assert_close(_logits(pm.eval(), batch), mine, f"the logits of the PeftModel from {call}", rtol=0,
                 atol=PARITY_ATOL, hint="copy each LoRALinear's lora_A into lora_A['default'].weight and lora_B into "
                 "lora_B['default'].weight; set lora_alpha=alpha and lora_dropout=0.0")
    now = original.state_dict()
    check(list(now) == list(kept) and all(torch.equal(now[k], kept[k]) for k in kept),
          f"{call} changed the base model it was given.",
          hint="get_peft_model changes the model it wraps in place: give it copy.deepcopy(base_model)")
    check(not any("lora" in n for n, _ in original.named_modules()),
          f"{call} put LoRA layers into the base model it was given.",
          hint="get_peft_model changes the model it wraps in place: give it copy.deepcopy(base_model)")


@q.check
def _parity(to_peft, add_lora, ctx, base):
    _check_parity(to_peft, add_lora, _zoo(base, ctx.device), _batch(base, ctx.device), QV, 4, 8, "base model")


@q.check(hidden=True)
def _parity_all_linear_and_qwen2(to_peft, add_lora, ctx, base):
    batch = _batch(base, ctx.device)
    _check_parity(to_peft, add_lora, _zoo(base, ctx.device), batch, ALL_LINEAR, 8, 16, "base model")
    _check_parity(to_peft, add_lora, _qwen2(ctx.device), batch, ALL_LINEAR, 2, 6, "a Qwen2 model")


# --- lora_merge_unload ---------------------------------------------------------------------------------------------
q = LAB.question("lora_merge_unload", points=2, uses=("merge_lora", "add_lora"),
                 title="merge_lora against merge_and_unload", builds_on=("lora_merge", "lora_inject"))


def _check_merge_model(merge_lora, add_lora, original: nn.Module, batch, targets, r: int, alpha: float, label: str,
                       premerge: bool = False) -> None:
    what = f"add_lora({label}, {targets}, r={r}, alpha={alpha})"
    lora_model = _injected(add_lora, copy.deepcopy(original), targets, r, alpha, what)
    _randomize_b(lora_model, HELD_OUT_SEED + 7)
    with_adapters = _logits(lora_model, batch)
    ref = _reference_peft(lora_model, original, targets, r, alpha).merge_and_unload().state_dict()
    call = f"merge_lora(the model from {what})"
    if premerge:  # some layers already merged by hand: merge_lora must not add their update twice
        for layer in list(_lora_layers(lora_model).values())[::2]:
            layer.merge()
        call = f"merge_lora on a model some of whose LoRA layers were merged already ({label})"
    merged = call_learner(merge_lora, call, lora_model)
    check(isinstance(merged, nn.Module), f"{call} returned a {type(merged).__name__}, not the model.")
    left = sorted(_lora_layers(merged))
    check(not left, f"{call} left {len(left)} LoRA layer(s) in the model, e.g. {left[:2]}.",
          hint="put each LoRA layer's base layer back in its place: setattr(parent, child_name, layer.base)")
    got = merged.state_dict()
    assert_equal(sorted(got), sorted(ref), f"the parameter names after {call}",
                 hint="the merged model has the base model's structure: plain nn.Linear layers, no lora_A/lora_B")
    for key in ref:
        assert_close(got[key].float().cpu(), ref[key].float().cpu(), f"{key} after {call}, against peft's "
                     "merge_and_unload()", rtol=0, atol=1e-6,
                     hint="merge each layer with its merge() method: W + (alpha / r) * B @ A, once")
    assert_close(_logits(merged, batch), with_adapters, f"the logits after {call}", rtol=1e-5, atol=1e-5)


@q.check
def _merge_model(merge_lora, add_lora, ctx, base):
    _check_merge_model(merge_lora, add_lora, _zoo(base, ctx.device), _batch(base, ctx.device), QV, 4, 8,
                       "base model")


@q.check(hidden=True)
def _merge_model_qwen2_and_premerged(merge_lora, add_lora, ctx, base):
    batch = _batch(base, ctx.device)
    _check_merge_model(merge_lora, add_lora, _qwen2(ctx.device), batch, ALL_LINEAR, 2, 6, "a Qwen2 model")
    _check_merge_model(merge_lora, add_lora, _zoo(base, ctx.device), batch, ALL_LINEAR, 4, 4, "base model",
                       premerge=True)


# --- lora_adapter --------------------------------------------------------------------------------------------------
q = LAB.question("lora_adapter", points=2, uses=("load_adapter",), title="Adapters on disk, and the wrong base")


def _saved_adapter(model: nn.Module, folder: Path, name: str, targets, r: int, seed: int) -> Path:
    """peft's own adapter for `model`, with random A and B, saved to folder/name."""
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    pm = get_peft_model(copy.deepcopy(model), config)
    path = folder / name
    with warnings.catch_warnings():  # "Could not find a config file in grader/...": the name is only a label
        warnings.simplefilter("ignore", UserWarning)
        pm.save_pretrained(path)
    return path


def _first_mismatch(base_model: nn.Module, path: Path) -> str:
    try:
        PeftModel.from_pretrained(copy.deepcopy(base_model), path)
    except RuntimeError as err:
        return next(line for line in str(err).splitlines() if "size mismatch" in line)
    raise AssertionError("the grader's mismatched adapter loaded")


def _check_wrong_base(load_adapter, base_model: nn.Module, path: Path, label: str) -> None:
    line = _first_mismatch(base_model, path)
    param = re.search(r"size mismatch for (\S+):", line).group(1)
    module = param.removeprefix("base_model.model.").split(".lora_")[0]
    saved, current = re.findall(r"torch\.Size\(\[([\d, ]+)\]\)", line)
    saved_for = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    what = f"load_adapter(base model, path of an adapter saved for {label})"
    message = str(learner_raises(
        load_adapter, what, ValueError, copy.deepcopy(base_model), path,
        hint="catch the RuntimeError of PeftModel.from_pretrained when it reports a size mismatch and raise a "
             "ValueError that explains it",
        if_silent="PeftModel.from_pretrained raises on this adapter: let it fail"))
    check(saved_for in message, f"The ValueError of {what} does not name the base model the adapter was saved for.",
          received=message[:300], hint="read base_model_name_or_path from the adapter's adapter_config.json")
    check(module in message, f"The ValueError of {what} does not name the first weight that does not fit.",
          received=message[:300], hint="peft's error lists every mismatch ('size mismatch for <name>: ...'); "
          "name the first")
    numbers = [re.sub(r"\s", "", s) for s in (saved, current)]
    flat = re.sub(r"\s", "", message)
    check(all(n in flat for n in numbers), f"The ValueError of {what} does not give both shapes of that weight.",
          received=message[:300], hint="give the shape in the adapter and the shape in this model")


@q.check
def _adapter(load_adapter, ctx, base):
    original = _zoo(base, ctx.device)
    batch = _batch(base, ctx.device)
    with tempfile.TemporaryDirectory() as folder:
        path = _saved_adapter(original, Path(folder), "zoo-qv", QV, 4, HELD_OUT_SEED)
        want = _logits(PeftModel.from_pretrained(copy.deepcopy(original), path).eval(), batch)
        what = "load_adapter(base model, path of an adapter saved for it)"
        pm = call_learner(load_adapter, what, copy.deepcopy(original), path)
        assert_type(pm, PeftModel, what, hint="return PeftModel.from_pretrained(base_model, path)")
        assert_close(_logits(pm.eval(), batch), want, f"the logits of the model from {what}", rtol=0, atol=0)
        other = _saved_adapter(_small_llama(ctx.device), Path(folder), "small-llama-qv", QV, 4, HELD_OUT_SEED)
        _check_wrong_base(load_adapter, original, other, "a Llama of width 64")


@q.check(hidden=True)
def _adapter_other_mismatches(load_adapter, ctx, base):
    original = _zoo(base, ctx.device)
    with tempfile.TemporaryDirectory() as folder:
        wide_mlp = _small_llama(ctx.device, hidden_size=128, intermediate_size=256)
        path = _saved_adapter(wide_mlp, Path(folder), "mlp-only", ["up_proj", "down_proj"], 2, HELD_OUT_SEED + 1)
        _check_wrong_base(load_adapter, original, path, "a Llama with another MLP width")
        path = _saved_adapter(_qwen2(ctx.device), Path(folder), "qwen2", ["k_proj"], 3, HELD_OUT_SEED + 2)
        _check_wrong_base(load_adapter, original, path, "a Qwen2 model")


# --- lora_specialist -----------------------------------------------------------------------------------------------
q = LAB.question("lora_specialist", points=3, uses=("lora_model",), title="The trained LoRA specialist",
                 builds_on=("lora_inject",))


@q.check(timeout_s=300)
def _specialist(lora_model, ctx, base):
    check(isinstance(lora_model, nn.Module), f"lora_model is a {type(lora_model).__name__}, not a model.")
    model = lora_model.to(ctx.device).eval()
    layers = _lora_layers(model)
    check(len(layers) > 0, "lora_model has no LoRALinear layers.",
          hint="train the model that add_lora returned, as the training cell does")
    base_params = dict(base[0].named_parameters())
    for name, layer in layers.items():
        check(not getattr(layer, "merged", False), f"{name} of lora_model is merged.",
              hint="grade the model with its adapters: merge a copy (merge_lora(copy.deepcopy(...))) to deploy")
        ref = base_params.get(f"{name}.weight")
        check(ref is not None and torch.equal(layer.base.weight.detach().cpu(), ref.detach().cpu()),
              f"The frozen base weight of {name} in lora_model is not the base model's any more.",
              hint="the base layers must stay frozen during training: only A and B (and the embeddings and head, "
              "here) train")
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    lora_ids = {id(p) for layer in layers.values() for p in (layer.lora_A, layer.lora_B)}
    for name, p in model.named_parameters():
        if id(p) in embeddings or id(p) in lora_ids or ".base." in f".{name}":
            continue
        ref = base_params.get(name)
        check(ref is not None and torch.equal(p.detach().cpu(), ref.detach().cpu()),
              f"{name} of lora_model differs from the base model's.",
              hint="everything but A, B, the embeddings and the head stays frozen")
    tokenizer = base[1]
    task = world.TASKS["dates"]
    examples = task.examples("test", N_TEST, seed=HELD_OUT_SEED)
    score = evals.evaluate_task(model, tokenizer, task, examples).overall
    check(score.rate >= EXACT_MATCH_BAR,
          f"lora_model's exact match on {N_TEST} held-out test dates is {score.rate:.1%} "
          f"[{score.interval[0]:.1%}, {score.interval[1]:.1%}]; it needs at least {EXACT_MATCH_BAR:.0%}.",
          hint="train with the recipe of the training cell (r=8 on all linear layers of the blocks, embeddings and "
          "head trainable, lr 5e-3, 200 steps); a model that barely learns usually means A or B gets no gradient")
