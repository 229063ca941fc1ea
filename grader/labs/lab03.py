"""Lab 03 - A transformer from scratch.

Every piece is compared with the real library: attention with torch's scaled_dot_product_attention (the mask given
explicitly when there are fewer queries than keys), the others with the layers of transformers' Llama (same weights
loaded by name), the parameter and FLOP counts with transformers' model (built on the meta device) and
torch.utils.flop_counter.FlopCounterMode. The trained model is scored on held-out text from a seed the notebook never
uses, after checking that it cannot see the future.

A hint names a mistake only when the received value is what that mistake produces (`_diagnose` compares it with the
mistake's own output); otherwise it states the contract.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from grader.asserts import (
    CheckFailed,
    assert_below,
    assert_close,
    assert_shape,
    assert_type,
    call_learner,
    check,
)
from grader.registry import Lab
from labkit import world
from labkit.lm import heldout_loss

LAB = Lab("03", "A transformer from scratch")
HELD_OUT_SEED = 9003  # the notebook trains on seed 0 and validates on seed 1
LOSS_THRESHOLD = 0.8  # nats/char on 64-character windows; the solution gets ~0.46, Lab 01's MLP ~0.6 (context 8)
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _config(**overrides) -> LlamaConfig:
    """A tiny Llama config; eager attention so its layers return their attention weights."""
    kw = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 4, "max_position_embeddings": 64,
          "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attn_implementation": "eager",
          "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    kw.update(overrides)
    kw.setdefault("num_key_value_heads", kw["num_attention_heads"])
    return LlamaConfig(**kw)


@torch.no_grad()
def _randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of a realistic size: HF's std-0.02 init makes outputs so small that a wrong model could match."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() == 1:  # norm gains
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
        elif "embed_tokens" in name:  # an O(1) residual stream, as in a trained model
            p.copy_(torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return module


def _load(learner: torch.nn.Module, reference: torch.nn.Module, what: str, prefix: str = "") -> None:
    """Load the reference's weights into the learner's module by name, with a clear message if names differ."""
    state = {name.removeprefix(prefix): w for name, w in reference.state_dict().items()}
    try:
        learner.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        problems = [line.strip() for line in str(exc).splitlines()[1:4]]
        raise CheckFailed(
            f"Could not load transformers' weights into your {what}:\n  " + "\n  ".join(problems) +
            f"\n  expected parameter names {sorted(state)[:6]}...\n  yours are {sorted(learner.state_dict())[:6]}...",
            hint="keep the layer names and shapes defined in the given constructor (q_proj, gate_proj, ...)",
        ) from None


def _same(got, ref, rtol: float = 1e-4, atol: float = 1e-4) -> bool:
    """`got` equals `ref`: tensors of the same shape, or equal numbers."""
    if isinstance(ref, torch.Tensor):
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(ref.shape):
            return False
        return torch.allclose(got.detach().cpu().double(), ref.detach().cpu().double(), rtol, atol)
    return isinstance(got, numbers.Real) and not isinstance(got, bool) and got == ref


def _diagnose(got, ref, mistakes: list[tuple[Callable[[], object], str]], contract: str, **tolerances) -> str:
    """The hint of the mistake whose output `got` reproduces, on an input where that mistake's output differs from
    the correct `ref`; else `contract`, which guesses nothing. Two mistakes that give the same value on this input
    are no evidence for either: the contract then."""
    hints = []
    for make, hint in mistakes:
        try:
            with torch.no_grad():
                wrong = make()
            if not _same(wrong, ref, **tolerances) and _same(got, wrong, **tolerances):
                hints.append(hint)
        except Exception:  # a mistake that cannot even be computed on this input is not the learner's
            continue
    return hints[0] if len(set(hints)) == 1 else contract


def _causal_mask(t: int) -> torch.Tensor:
    """The additive mask transformers' eager attention expects: 0 where allowed, -inf above the diagonal."""
    return torch.full((t, t), float("-inf")).triu(1)[None, None]


def _hf_cos_sin(config: LlamaConfig, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(1, t, config.hidden_size)
    cos, sin = LlamaRotaryEmbedding(config)(x, torch.arange(t)[None])
    return cos, sin  # (1, t, head_dim)


def _pair(value, name: str) -> tuple:
    check(isinstance(value, tuple) and len(value) == 2,
          f"{name} should return a tuple (output, weights), got {type(value).__name__}.",
          hint="return out, weights")
    return value


# --- sdpa ----------------------------------------------------------------------------------------------------
q = LAB.question("sdpa", points=3, uses=("attention",), title="Scaled dot-product attention with a causal mask")

_SDPA_CONTRACT = ("weights = softmax over the keys (the last dimension) of q @ k.transpose(-2, -1) / sqrt(head_dim), "
                  "with -inf where a query may not see a key; out = weights @ v")


def _allowed(t_q: int, t_k: int, top_left: bool = False) -> torch.Tensor:
    """True where a query may see a key. Query i of t_q sits at position t_k - t_q + i and sees keys 0 .. t_k - t_q + i:
    the last t_q rows of the full causal mask. `top_left` is the other alignment (query i sees keys 0 .. i), the one
    F.scaled_dot_product_attention(is_causal=True) uses when t_q != t_k."""
    return torch.ones(t_q, t_k, dtype=torch.bool).tril(0 if top_left else t_k - t_q)


def _reference_weights(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float | None = None,
                       top_left: bool = False) -> torch.Tensor:
    """Attention weights in float64, returned in q's dtype; `scale` and `top_left` compute mistakes, for hints."""
    scores = q.double() @ k.double().transpose(-2, -1) / (math.sqrt(q.size(-1)) if scale is None else scale)
    if causal:
        scores = scores.masked_fill(~_allowed(q.size(-2), k.size(-2), top_left), float("-inf"))
    return torch.softmax(scores, dim=-1).to(q.dtype)


def _weights_hint(q: torch.Tensor, k: torch.Tensor, causal: bool, got) -> str:
    t_q, t_k, d = q.size(-2), k.size(-2), q.size(-1)
    mistakes = [
        (lambda: _reference_weights(q, k, causal, top_left=True),
         "query i of T_q sits at position T_k - T_q + i and may see keys 0 .. T_k - T_q + i (the last T_q rows of the "
         "full causal mask); your mask lets it see keys 0 .. i only, the top-left alignment"),
        (lambda: _reference_weights(q, k, causal, scale=1.0),
         "divide the scores by sqrt(head_dim), head_dim = q.size(-1)"),
        (lambda: _reference_weights(q, k, causal, scale=float(d)),
         "divide the scores by the square root of head_dim, not by head_dim itself"),
    ]
    if not causal or t_q == t_k:
        mistakes = mistakes[1:]
    return _diagnose(got, _reference_weights(q, k, causal), mistakes, _SDPA_CONTRACT)


def _check_attention(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """attention(q, k, v, causal) against the float64 reference and F.scaled_dot_product_attention, for T_q <= T_k."""
    b, h, t_q, _ = q.shape
    t_k = k.size(-2)
    shapes = f"q, k, v of shape {tuple(q.shape)}" if t_q == t_k else \
        f"q of shape {tuple(q.shape)} and k, v of shape {tuple(k.shape)}"
    label = f"attention(q, k, v, causal={causal}) for {shapes}"
    crash = "with T_q < T_k the scores are (..., T_q, T_k), and so is the mask" if t_q < t_k else None
    got = call_learner(attention, label, q.clone(), k.clone(), v.clone(), causal=causal, hint=crash)
    out, weights = _pair(got, label)
    assert_shape(weights, (b, h, t_q, t_k), f"the weights of {label}",
                 hint="weights are (batch, heads, T_query, T_key): a row per query, a column per key")
    assert_shape(out, (b, h, t_q, v.size(-1)), f"the output of {label}", hint="out = weights @ v")
    w = weights.detach().cpu()
    if not torch.isfinite(w).all():
        idx = tuple(int(i) for i in torch.nonzero(~torch.isfinite(w))[0])
        large = (q @ k.transpose(-2, -1)).abs().max().item() / math.sqrt(q.size(-1)) > 80
        raise CheckFailed(
            f"The weights of {label} contain NaN or inf (first at index {idx}).",
            "these scores reach hundreds: exp overflows (exp(89) is inf in float32), and a row whose scores all lie "
            "far below the largest score of the tensor underflows to 0/0; subtract each row's own maximum before "
            "exponentiating, as torch.softmax does" if large else
            "0/0 comes from a row whose scores are all -inf (a query that may see no key); every query sees at "
            "least the key at its own position")
    sums = w.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        columns = w.sum(-2)
        over_queries = torch.allclose(columns, torch.ones_like(columns), atol=1e-4)
        check(False, f"Each query's weights should sum to 1 over the keys; yours sum to {sums.flatten()[:4].tolist()}"
              "...", hint="your weights sum to 1 over the queries (dim=-2): the softmax runs over the keys, the last "
              "dimension" if over_queries else "each row of weights is a softmax over the keys (the last dimension)")
    if causal:
        allowed = _allowed(t_q, t_k)
        future = w[..., ~allowed].abs().max().item() if (~allowed).any() else 0.0
        where = "" if t_q == t_k else "; with T_q < T_k, query i sits at position T_k - T_q + i"
        check(future == 0, f"A query gives weight {future:.3g} to a key after its own position: it sees the future.",
              hint="mask the scores of every key after the query's own position with -inf before the softmax" + where)
    try:
        assert_close(weights, _reference_weights(q, k, causal), f"the weights of {label}", **TOL)
    except CheckFailed:
        assert_close(weights, _reference_weights(q, k, causal), f"the weights of {label}", **TOL,
                     hint=_weights_hint(q, k, causal, weights))
    mask = _allowed(t_q, t_k) if causal else None
    explicit = " (the mask given explicitly)" if causal and t_q < t_k else ""
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                 f"the output of {label} vs F.scaled_dot_product_attention{explicit}", **TOL, hint="out = weights @ v")


@q.check
def _sdpa(attention):
    q, k, v = torch.randn(3, 2, 3, 6, 8).unbind(0)
    _check_attention(attention, q, k, v, causal=True)
    _check_attention(attention, q, k, v, causal=False)


@q.check(hidden=True)
def _sdpa_bigger(attention):
    q, k, v = (torch.randn(3, 2, 2, 17, 32) * torch.tensor([3.0, 3.0, 1.0])[:, None, None, None, None]).unbind(0)
    _check_attention(attention, q, k, v, causal=True)
    _check_attention(attention, q[:, :1], k[:, :1], v[:, :1], causal=False)


@q.check(hidden=True)
def _sdpa_edge_shapes(attention):
    q, k, v = torch.randn(3, 1, 1, 1, 8).unbind(0)  # batch 1, one head, one position
    _check_attention(attention, q, k, v, causal=True)
    _check_attention(attention, q, k, v, causal=False)
    q, k, v = torch.randn(3, 1, 3, 9, 5).unbind(0)  # odd length, odd head_dim
    _check_attention(attention, q, k, v, causal=True)


@q.check(hidden=True)
def _sdpa_large_scores(attention):
    # Scores up to a few hundred, and query rows whose scales differ by 2000x: a softmax must be stable row by row.
    g = torch.Generator().manual_seed(31)
    scale = torch.logspace(-2, math.log10(20), 9)[torch.randperm(9, generator=g)]
    q = torch.randn(2, 2, 9, 24, generator=g) * scale[:, None]
    k = torch.randn(2, 2, 9, 24, generator=g) * 10
    v = torch.randn(2, 2, 9, 24, generator=g)
    _check_attention(attention, q, k, v, causal=False)
    _check_attention(attention, q, k, v, causal=True)


# --- cached_causal_mask --------------------------------------------------------------------------------------
q = LAB.question("cached_causal_mask", points=2, uses=("attention",),
                 title="The causal mask with fewer queries than keys (cached decoding)", builds_on=("sdpa",))


def _check_last_rows(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t_q: int) -> None:
    """The last t_q queries alone give the last t_q rows of attention over all T_k queries."""
    t_k = k.size(-2)
    full = f"attention(q, k, v) for q, k, v of shape {tuple(q.shape)}"
    part = f"attention(q[:, :, -{t_q}:], k, v)"
    full_out, full_w = _pair(call_learner(attention, full, q.clone(), k.clone(), v.clone(), causal=True), full)
    out, weights = _pair(call_learner(attention, part, q[:, :, -t_q:].clone(), k.clone(), v.clone(), causal=True), part)
    same = (f"query i of the last {t_q} is the query at position {t_k} - {t_q} + i of the full sequence: its row is "
            "that row of the full result")
    assert_close(weights, full_w[:, :, -t_q:], f"the weights of {part} vs the last {t_q} rows of {full}", **TOL,
                 hint=same)
    assert_close(out, full_out[:, :, -t_q:], f"the output of {part} vs the last {t_q} rows of {full}", **TOL, hint=same)


@q.check
def _cached_mask(attention):
    q, k, v = torch.randn(3, 2, 3, 8, 16).unbind(0)
    _check_attention(attention, q[:, :, -3:], k, v, causal=True)  # 3 new queries, 8 keys
    _check_attention(attention, q[:, :, -1:], k, v, causal=True)  # one new token: it sees every key
    _check_last_rows(attention, q, k, v, 3)


@q.check(hidden=True)
def _cached_mask_other_shapes(attention):
    q, k, v = torch.randn(3, 1, 2, 17, 8).unbind(0)  # batch 1, odd lengths
    for t_q in (5, 16, 1):
        _check_attention(attention, q[:, :, -t_q:], k, v, causal=True)
        _check_last_rows(attention, q, k, v, t_q)
    _check_attention(attention, q[:, :, -4:], k, v, causal=False)  # without the mask every query sees every key


# --- rms_norm ------------------------------------------------------------------------------------------------
q = LAB.question("rms_norm", points=2, uses=("RMSNorm",), title="RMSNorm")


def _check_rms_norm(RMSNorm, x: torch.Tensor, eps: float, seed: int) -> None:
    dim = x.size(-1)
    ref = _randomize_(LlamaRMSNorm(dim, eps=eps), seed)
    ours = RMSNorm(dim, eps=eps)
    _load(ours, ref, "RMSNorm")
    label = f"RMSNorm({dim}, eps={eps:g}) on x of shape {tuple(x.shape)}"
    assert_close(call_learner(ours, label, x.clone()), ref(x), label, **TOL,
                 hint="weight * x / sqrt(mean(x**2 over the LAST dim, keepdim=True) + eps): eps inside the root")


@q.check
def _rms_norm(RMSNorm):
    _check_rms_norm(RMSNorm, torch.randn(2, 3, 8) * 3, eps=1e-6, seed=0)
    _check_rms_norm(RMSNorm, torch.randn(2, 3, 8) * 0.3, eps=0.5, seed=1)  # a large eps shows where it goes


@q.check(hidden=True)
def _rms_norm_scales(RMSNorm):
    x = torch.randn(4, 5, 16) * torch.logspace(-1, 1, 5)[None, :, None]  # positions of very different sizes
    _check_rms_norm(RMSNorm, x, eps=1e-2, seed=2)
    _check_rms_norm(RMSNorm, torch.randn(1, 1, 16) * 5, eps=1e-6, seed=3)  # batch 1, one position


# --- rope ----------------------------------------------------------------------------------------------------
q = LAB.question("rope", points=3, uses=("rope_cos_sin", "apply_rope"), title="Rotary position embeddings")


def _check_rope(rope_cos_sin, apply_rope, t: int, heads: int, head_dim: int, theta: float, batch: int = 2) -> None:
    config = _config(hidden_size=heads * head_dim, num_attention_heads=heads, rope_theta=theta)
    cos, sin = _hf_cos_sin(config, t)
    what = f"rope_cos_sin({t}, {head_dim}, theta={theta:g})"
    got = call_learner(rope_cos_sin, what, t, head_dim, theta)
    check(isinstance(got, tuple) and len(got) == 2, "rope_cos_sin should return a tuple (cos, sin).")
    for name, mine, ref in (("cos", got[0], cos[0]), ("sin", got[1], sin[0])):
        assert_close(mine, ref, f"{name} of {what}", **TOL,
                     hint="angles[m] = m * cat(inv_freq, inv_freq), inv_freq = 1 / theta**(arange(0, d, 2) / d)")
    x = torch.randn(batch, heads, t, head_dim)
    ref_q, _ = apply_rotary_pos_emb(x, x, cos, sin)
    label = f"apply_rope(x, cos, sin) for x of shape {tuple(x.shape)} (with transformers' cos and sin)"
    assert_close(call_learner(apply_rope, label, x.clone(), cos[0], sin[0]), ref_q, label, **TOL,
                 hint="x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1] with x1, x2 the two halves")


@q.check
def _rope(rope_cos_sin, apply_rope):
    _check_rope(rope_cos_sin, apply_rope, t=10, heads=2, head_dim=16, theta=10000.0)


@q.check(hidden=True)
def _rope_other_theta(rope_cos_sin, apply_rope):
    _check_rope(rope_cos_sin, apply_rope, t=33, heads=3, head_dim=32, theta=500000.0)
    _check_rope(rope_cos_sin, apply_rope, t=1, heads=1, head_dim=8, theta=10000.0, batch=1)


# --- swiglu --------------------------------------------------------------------------------------------------
q = LAB.question("swiglu", points=2, uses=("MLP",), title="The SwiGLU MLP")


def _check_mlp(MLP, d_model: int, d_ff: int, seed: int, shape: tuple[int, int] = (2, 5)) -> None:
    ref = _randomize_(LlamaMLP(_config(hidden_size=d_model, intermediate_size=d_ff)), seed)
    ours = MLP(d_model, d_ff)
    _load(ours, ref, "MLP")
    x = torch.randn(*shape, d_model)
    label = f"MLP({d_model}, {d_ff}) on x of shape {tuple(x.shape)}"
    got = call_learner(ours, label, x.clone())
    assert_close(got, ref(x), f"{label} vs transformers' LlamaMLP (same weights)", **TOL,
                 hint="down_proj(silu(gate_proj(x)) * up_proj(x)): the SiLU goes on the gate, not on up_proj")


@q.check
def _swiglu(MLP):
    _check_mlp(MLP, 16, 48, seed=3)


@q.check(hidden=True)
def _swiglu_bigger(MLP):
    _check_mlp(MLP, 64, 192, seed=4)
    _check_mlp(MLP, 8, 20, seed=5, shape=(1, 1))


# --- multi_head_attention ------------------------------------------------------------------------------------
q = LAB.question("multi_head_attention", points=3, uses=("Attention",), title="Multi-head attention with RoPE",
                 builds_on=("sdpa", "rope"))


def _own_attention_layer(ref: LlamaAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         tile: bool) -> torch.Tensor:
    """The output of `ref`'s weights computed here; `tile` repeats the key/value heads as a block (0, 1, 0, 1) instead
    of each in place (0, 0, 1, 1): the mistake, for a hint."""
    b, t, _ = x.shape
    q, k, v = (proj(x).view(b, t, -1, ref.head_dim).transpose(1, 2) for proj in (ref.q_proj, ref.k_proj, ref.v_proj))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    group = q.size(1) // k.size(1)
    k, v = (k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)) if tile else \
        (k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(ref.head_dim) + _causal_mask(t), dim=-1)
    return ref.o_proj((weights @ v).transpose(1, 2).reshape(b, t, -1))


def _check_attention_layer(Attention, d_model: int, heads: int, batch: int, t: int, seed: int,
                           kv_heads: int | None = None) -> None:
    """Attention(d_model, heads[, kv_heads]) against transformers' LlamaAttention with the same weights."""
    config = _config(hidden_size=d_model, num_attention_heads=heads, num_key_value_heads=kv_heads or heads)
    ref = _randomize_(LlamaAttention(config, layer_idx=0), seed).eval()
    ours = Attention(d_model, heads) if kv_heads is None else Attention(d_model, heads, kv_heads)
    _load(ours, ref, "Attention")
    x = torch.randn(batch, t, d_model)
    cos, sin = _hf_cos_sin(config, t)
    with torch.no_grad():
        ref_out, ref_weights = ref(x, position_embeddings=(cos, sin), attention_mask=_causal_mask(t))
    kind = "" if kv_heads is None else f", n_kv_heads={kv_heads}"
    label = f"Attention({d_model}, n_heads={heads}{kind}) on x of shape {tuple(x.shape)}"
    gqa = kv_heads is not None and kv_heads < heads
    contract = ("queries split into n_heads heads, keys and values into n_kv_heads; RoPE on q and k; key/value head j "
                "serves the query heads j * group .. (j + 1) * group - 1 (group = n_heads // n_kv_heads), so each is "
                "repeated group times in place along the head dimension; causal attention; heads merged; o_proj")
    out, weights = _pair(call_learner(ours, f"{label}.forward", x.clone(), cos[0], sin[0],
                               hint=contract if gqa else None), "Attention.forward")
    assert_shape(out, (batch, t, d_model), f"the output of {label}")
    assert_shape(weights, (batch, heads, t, t), f"the weights of {label}", hint="(batch, n_heads, T, T)")
    if gqa:
        tiled = lambda: _own_attention_layer(ref, x, cos, sin, tile=True)
        hint = _diagnose(out, ref_out, [(tiled, "query head h uses key/value head h // group; yours pairs it with "
                                         "head h % n_kv_heads, the order of tiling the heads (0, 1, 0, 1) instead of "
                                         "repeating each in place (0, 0, 1, 1)")], contract)
        assert_close(weights, ref_weights, f"the attention weights of {label} vs transformers' LlamaAttention", **TOL,
                     hint=hint)
        assert_close(out, ref_out, f"the output of {label} vs transformers' LlamaAttention", **TOL, hint=hint)
        return
    assert_close(weights, ref_weights, f"the attention weights of {label} vs transformers' LlamaAttention", **TOL,
                 hint="split heads with view(b, t, heads, head_dim).transpose(1, 2), then RoPE on q and k (not v); "
                 "if `sdpa` and `rope` pass, look at the head split")
    assert_close(out, ref_out, f"the output of {label} vs transformers' LlamaAttention", **TOL,
                 hint="merge heads with out.transpose(1, 2).reshape(b, t, d_model), then o_proj")


@q.check
def _mha(Attention):
    _check_attention_layer(Attention, d_model=32, heads=4, batch=2, t=7, seed=5)


@q.check(hidden=True)
def _mha_other_shape(Attention):
    _check_attention_layer(Attention, d_model=64, heads=2, batch=3, t=12, seed=6)
    _check_attention_layer(Attention, d_model=24, heads=3, batch=1, t=1, seed=7)  # one position
    _check_attention_layer(Attention, d_model=24, heads=3, batch=1, t=13, seed=8, kv_heads=3)  # n_kv_heads = n_heads


# --- gqa -----------------------------------------------------------------------------------------------------
q = LAB.question("gqa", points=2, uses=("Attention",), title="Grouped-query attention",
                 builds_on=("multi_head_attention",))


@q.check
def _gqa(Attention):
    _check_attention_layer(Attention, d_model=32, heads=4, kv_heads=2, batch=2, t=7, seed=11)


@q.check(hidden=True)
def _gqa_other_groups(Attention):
    _check_attention_layer(Attention, d_model=48, heads=6, kv_heads=2, batch=1, t=11, seed=12)  # groups of 3
    _check_attention_layer(Attention, d_model=32, heads=4, kv_heads=1, batch=2, t=5, seed=13)  # multi-query
    _check_attention_layer(Attention, d_model=64, heads=8, kv_heads=2, batch=1, t=1, seed=14)  # one position


# --- decoder_block -------------------------------------------------------------------------------------------
q = LAB.question("decoder_block", points=2, uses=("DecoderBlock",), title="The pre-norm decoder block",
                 builds_on=("rms_norm", "swiglu", "multi_head_attention"))


def _check_block(DecoderBlock, d_model: int, heads: int, d_ff: int, eps: float, t: int, seed: int,
                 batch: int = 2) -> None:
    config = _config(hidden_size=d_model, num_attention_heads=heads, intermediate_size=d_ff, rms_norm_eps=eps)
    ref = _randomize_(LlamaDecoderLayer(config, layer_idx=0), seed).eval()
    ours = DecoderBlock(d_model, heads, d_ff, eps)
    _load(ours, ref, "DecoderBlock")
    x = torch.randn(batch, t, d_model)
    cos, sin = _hf_cos_sin(config, t)
    with torch.no_grad():
        expected = ref(x, attention_mask=_causal_mask(t), position_embeddings=(cos, sin))
    label = f"DecoderBlock({d_model}, {heads}, {d_ff}) on x of shape {tuple(x.shape)}"
    assert_close(call_learner(ours, label, x.clone(), cos[0], sin[0]), expected,
                 f"{label} vs transformers' LlamaDecoderLayer (same weights)", **TOL,
                 hint="h = x + self_attn(input_layernorm(x))[0]; out = h + mlp(post_attention_layernorm(h)); "
                 "if the earlier questions pass, look at the residual connections and which norm goes where")


@q.check
def _block(DecoderBlock):
    _check_block(DecoderBlock, d_model=32, heads=4, d_ff=64, eps=1e-6, t=9, seed=7)


@q.check(hidden=True)
def _block_other_shape(DecoderBlock):
    _check_block(DecoderBlock, d_model=48, heads=3, d_ff=128, eps=1e-6, t=20, seed=8)
    _check_block(DecoderBlock, d_model=16, heads=2, d_ff=40, eps=1e-5, t=1, seed=9, batch=1)


# --- llama_parity --------------------------------------------------------------------------------------------
q = LAB.question("llama_parity", points=4, uses=("LlamaLM",), title="Parity with transformers' LlamaForCausalLM",
                 builds_on=("decoder_block",))


def _check_parity(LlamaLM, config: LlamaConfig, batch: int, t: int, seed: int, device) -> None:
    torch.manual_seed(seed)
    ref = _randomize_(LlamaForCausalLM(config), seed).eval()
    ours = LlamaLM(config)
    _load(ours, ref, "LlamaLM", prefix="model.")
    ref, ours = ref.to(device), ours.to(device).eval()
    ids = torch.randint(0, config.vocab_size, (batch, t), generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        expected = ref(ids).logits
        logits = call_learner(ours, f"LlamaLM(config)(ids) for ids of shape {(batch, t)}", ids)
    label = (f"the logits of LlamaLM ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
             f"{config.num_attention_heads} heads) vs LlamaForCausalLM with the same weights, "
             f"ids of shape {(batch, t)}")
    assert_type(logits, torch.Tensor, "LlamaLM(config)(ids)", hint="return the logits tensor")
    assert_shape(logits, (batch, t, config.vocab_size), f"LlamaLM(config)(ids) for ids of shape {(batch, t)}",
                 hint="one row of vocab_size logits per position: (batch, T, vocab_size)")
    assert_close(logits, expected, label, **TOL,
                 hint="embed_tokens -> every layer with cos, sin for positions 0..T-1 -> final norm -> lm_head; "
                 "read eps and theta from the config")


@q.check
def _parity(LlamaLM):
    config = _config(hidden_size=64, intermediate_size=192, num_hidden_layers=2, attn_implementation="sdpa")
    _check_parity(LlamaLM, config, batch=2, t=40, seed=9, device=torch.device("cpu"))


@q.check(hidden=True)
def _parity_other_config(LlamaLM, ctx):
    config = _config(vocab_size=96, hidden_size=48, intermediate_size=128, num_hidden_layers=3, num_attention_heads=3,
                     rope_theta=500000.0, tie_word_embeddings=True, attn_implementation="sdpa")
    _check_parity(LlamaLM, config, batch=3, t=50, seed=10, device=ctx.device)
    _check_parity(LlamaLM, config, batch=1, t=1, seed=11, device=ctx.device)  # one sequence of one token


# --- param_count ---------------------------------------------------------------------------------------------
q = LAB.question("param_count", points=2, uses=("count_parameters",), title="The parameter count from the config")


def _describe(config: LlamaConfig) -> str:
    return (f"vocab {config.vocab_size}, hidden {config.hidden_size}, intermediate {config.intermediate_size}, "
            f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads, {config.num_key_value_heads} "
            f"key/value heads, tie_word_embeddings={config.tie_word_embeddings}")


def _count_config(**overrides) -> LlamaConfig:
    kw = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
          "num_attention_heads": 4, "tie_word_embeddings": False}
    kw.update(overrides)
    return _config(**kw)


LLAMA3_8B = {"vocab_size": 128_256, "hidden_size": 4096, "intermediate_size": 14_336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192}


def _meta_model(config: LlamaConfig) -> LlamaForCausalLM:
    """Transformers' model on the meta device: every tensor has its shape, none has memory or values."""
    with torch.device("meta"):
        return LlamaForCausalLM(config).eval()


def _as_count(value, what: str) -> int:
    """An exact count: an int, or a float or 0-d tensor that holds a whole number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and value == int(value)
    check(ok, f"{what} should return a whole number (an int), got {type(value).__name__} {value!r:.40}.",
          hint="return the count as a Python int")
    return int(value)


def _count_hint(config: LlamaConfig, got: int, correct: int) -> str:
    d, vocab, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    head_dim = d // config.num_attention_heads
    kv_saving = layers * 2 * d * (config.num_attention_heads - config.num_key_value_heads) * head_dim
    tied = config.tie_word_embeddings
    mistakes = [
        (lambda: correct + vocab * d if tied else None,
         "config.tie_word_embeddings is set: lm_head is embed_tokens' matrix, and a shared matrix counts once"),
        (lambda: correct - vocab * d if not tied else None,
         "embed_tokens and an untied lm_head are two matrices of vocab_size x hidden_size each"),
        (lambda: correct + kv_saving,
         "k_proj and v_proj have num_key_value_heads * head_dim outputs each, not hidden_size"),
        (lambda: correct - (2 * layers + 1) * d, "count the RMSNorm gains: two per layer and the final norm, "
         "hidden_size each"),
        (lambda: correct - 2 * layers * d, "count each layer's two RMSNorm gains (hidden_size each)"),
        (lambda: correct - d, "count the final norm's gains (hidden_size)"),
        (lambda: correct - layers * d * config.intermediate_size,
         "the SwiGLU MLP has three matrices of hidden_size x intermediate_size: gate_proj, up_proj and down_proj"),
    ]
    return _diagnose(got, correct, mistakes,
                     "embed_tokens + per layer (q_proj, k_proj, v_proj, o_proj, three MLP matrices, two RMSNorm gains) "
                     "+ the final norm + lm_head unless tied; k_proj and v_proj have num_key_value_heads * head_dim "
                     "outputs")


def _check_count(count_parameters, config: LlamaConfig) -> None:
    what = f"count_parameters(config) for {_describe(config)}"
    got = _as_count(call_learner(count_parameters, what, copy.deepcopy(config)), what)
    correct = _meta_model(config).num_parameters()
    check(got == correct, f"{what} differs from transformers' LlamaForCausalLM(config).num_parameters().",
          hint=None if got == correct else _count_hint(config, got, correct), received=f"{got:,}",
          expected=f"{correct:,}")


@q.check
def _param_count(count_parameters):
    _check_count(count_parameters, _count_config(num_key_value_heads=4))  # this lab's model
    _check_count(count_parameters, _count_config(vocab_size=96, hidden_size=48, intermediate_size=128,
                                                 num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                                 tie_word_embeddings=True))


@q.check(hidden=True)
def _param_count_other_configs(count_parameters):
    _check_count(count_parameters, _count_config(vocab_size=97, hidden_size=40, intermediate_size=100,
                                                 num_hidden_layers=1, num_attention_heads=5, num_key_value_heads=1))
    _check_count(count_parameters, _count_config(num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=8,
                                                 tie_word_embeddings=True))
    _check_count(count_parameters, _count_config(**LLAMA3_8B))


# --- forward_flops -------------------------------------------------------------------------------------------
q = LAB.question("forward_flops", points=2, uses=("forward_flops",), title="The FLOPs of a forward pass")


def _counted_flops(config: LlamaConfig, t: int) -> int:
    """What FlopCounterMode counts for one forward pass of transformers' model (eager attention) on 1 x t tokens."""
    model = _meta_model(config)  # the configs here come from _config: eager attention
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, t, dtype=torch.long, device="meta"))
    return counter.get_total_flops()


def _flops_hint(config: LlamaConfig, t: int, got: int, correct: int) -> str:
    d, vocab, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = d // heads
    attention = layers * 2 * (2 * heads * t * t * head_dim)  # scores and weighted values
    lm_head = 2 * t * d * vocab
    params = _meta_model(config).num_parameters()
    mistakes = [
        (lambda: correct - attention, "count the two attention products of every layer: the scores Q K^T and the "
         "weighted sum of the values, 2 * T * T * head_dim each, for every query head"),
        (lambda: correct - attention // 2, "you count half of the attention products: both the scores Q K^T and the "
         "weighted sum of the values are counted over the full T x T square (the masked half is computed too)"),
        (lambda: correct - attention + layers * 2 * 2 * heads * head_dim * (t * (t + 1) // 2),
         "the attention products are computed over the full T x T square: the causal mask does not make the count "
         "smaller"),
        (lambda: correct - attention * (heads - kv_heads) // heads, "every query head multiplies with its (shared) "
         "key/value head: count the attention products for num_attention_heads heads"),
        (lambda: correct + layers * 2 * 2 * t * d * (d - kv_heads * head_dim),
         "k_proj and v_proj have num_key_value_heads * head_dim outputs each, not hidden_size"),
        (lambda: correct - lm_head, "count lm_head's product (2 * T * hidden_size * vocab_size), tied or not: tying "
         "shares the matrix, not the product"),
        (lambda: correct + lm_head, "the embedding lookup is an index, not a product: FlopCounterMode counts nothing "
         "for it"),
        (lambda: correct // 2, "a product of an (m x k) by a (k x n) matrix counts 2 * m * k * n FLOPs: one multiply "
         "and one add per term"),
        (lambda: 3 * correct, "count one forward pass, without the backward pass"),
        (lambda: 2 * params * t, "2 * N * T is the rule of thumb, not the count: the embeddings cost no FLOPs and the "
         "attention products have no parameters"),
    ]
    return _diagnose(got, correct, mistakes,
                     "per layer: the seven projections (2 * T * in * out each) and the two attention products (2 * T * "
                     "T * head_dim each, per query head); then lm_head; nothing else counts")


def _check_flops(forward_flops, config: LlamaConfig, t: int) -> None:
    what = f"forward_flops(config, {t}) for {_describe(config)}"
    got = _as_count(call_learner(forward_flops, what, copy.deepcopy(config), t), what)
    correct = _counted_flops(config, t)
    check(got == correct, f"{what} differs from what FlopCounterMode counts for one forward pass on 1 x {t} tokens.",
          hint=None if got == correct else _flops_hint(config, t, got, correct), received=f"{got:,}",
          expected=f"{correct:,}")


@q.check
def _forward_flops(forward_flops):
    _check_flops(forward_flops, _count_config(num_key_value_heads=4), 64)  # this lab's model and context
    _check_flops(forward_flops, _count_config(vocab_size=96, hidden_size=48, intermediate_size=128,
                                              num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                              tie_word_embeddings=True), 29)


@q.check(hidden=True)
def _forward_flops_other_configs(forward_flops):
    _check_flops(forward_flops, _count_config(vocab_size=97, hidden_size=40, intermediate_size=100,
                                              num_hidden_layers=1, num_attention_heads=5, num_key_value_heads=1), 17)
    _check_flops(forward_flops, _count_config(num_attention_heads=8, num_key_value_heads=4), 1)
    _check_flops(forward_flops, _count_config(**LLAMA3_8B), 1024)


# --- trained_transformer -------------------------------------------------------------------------------------
q = LAB.question("trained_transformer", points=3, uses=("model",), title="Your trained transformer on held-out text",
                 builds_on=("llama_parity",))


@q.check
def _trained(model, ctx):
    check(isinstance(model, torch.nn.Module) and hasattr(model, "config"),
          "`model` should be your trained LlamaLM (the one the training cell builds).")
    m = copy.deepcopy(model).to(ctx.device).eval()
    context = int(getattr(m.config, "max_position_embeddings", 64))
    tok = world.CharTokenizer()
    ids = torch.tensor(tok.encode(world.corpus(30_000, seed=HELD_OUT_SEED)), device=ctx.device)
    # Causality first: a model that peeks at the next character gets a great loss for the wrong reason.
    x = ids[:context][None]
    half = context // 2
    changed = x.clone()
    changed[:, half:] = (changed[:, half:] + 7) % tok.vocab_size
    with torch.no_grad():
        a, b = m(x), m(changed)
    assert_shape(a, (1, context, m.config.vocab_size), "model(ids) for ids of shape (1, context)")
    assert_close(b[:, :half], a[:, :half], f"the logits at positions 0..{half - 1} after changing the characters "
                 f"from position {half} on (they must not change)", rtol=1e-4, atol=1e-4,
                 hint="your model sees the future: check the causal mask, the head split and the norm's mean")
    loss = heldout_loss(m, ids, context)
    assert_below(loss, LOSS_THRESHOLD, "held-out loss (nats/char, on text the grader generated)",
                 hint="train for the full number of steps with the given learning-rate schedule")
