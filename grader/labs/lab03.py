"""Lab 03 - A transformer from scratch.

Every piece is compared with the real library: attention with torch's fused
scaled_dot_product_attention, the others with the layers of transformers' Llama (same weights loaded
by name). The trained model is scored on held-out text from a seed the notebook never uses, after
checking that it cannot see the future.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from grader.asserts import CheckFailed, assert_below, assert_close, assert_shape, assert_type, check
from grader.registry import Lab
from labkit import world
from labkit.lm import heldout_loss

LAB = Lab("03", "A transformer from scratch")
HELD_OUT_SEED = 9003  # the notebook trains on seed 0 and validates on seed 1
LOSS_THRESHOLD = 0.8  # nats/char on 64-character windows; the solution gets ~0.5, Lab 01's MLP ~0.6 (context 8)
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


def _reference_weights(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if causal:
        scores = scores + _causal_mask(q.size(-2))[0, 0]
    return torch.softmax(scores, dim=-1)


def _check_attention(attention, q, k, v, causal: bool) -> None:
    out, weights = _pair(attention(q, k, v, causal=causal), f"attention(q, k, v, causal={causal})")
    b, h, t, d = q.shape
    label = f"attention(q, k, v, causal={causal}) for q, k, v of shape {tuple(q.shape)}"
    assert_shape(weights, (b, h, t, t), f"the weights of {label}", hint="weights are (batch, heads, T_query, T_key)")
    sums = weights.detach().sum(-1)
    check(torch.allclose(sums, torch.ones_like(sums), atol=1e-4),
          f"Each query's weights should sum to 1 over the keys; yours sum to {sums.flatten()[:4].tolist()}...",
          hint="softmax over the LAST dimension (the keys): torch.softmax(scores, dim=-1)")
    if causal:
        future = weights.detach().triu(1).abs().max().item()
        check(future == 0, f"Query i gives weight {future:.3g} to a key j > i: it sees the future.",
              hint="mask scores above the diagonal with -inf before the softmax (torch.tril for the allowed part)")
    assert_close(weights, _reference_weights(q, k, causal), f"the weights of {label}", **TOL,
                 hint="scores = q @ k.transpose(-2, -1) / sqrt(head_dim), where head_dim = q.size(-1)")
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                 f"the output of {label} vs F.scaled_dot_product_attention", **TOL, hint="out = weights @ v")


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


# --- rms_norm ------------------------------------------------------------------------------------------------
q = LAB.question("rms_norm", points=2, uses=("RMSNorm",), title="RMSNorm")


def _check_rms_norm(RMSNorm, x: torch.Tensor, eps: float, seed: int) -> None:
    dim = x.size(-1)
    ref = _randomize_(LlamaRMSNorm(dim, eps=eps), seed)
    ours = RMSNorm(dim, eps=eps)
    _load(ours, ref, "RMSNorm")
    label = f"RMSNorm({dim}, eps={eps:g}) on x of shape {tuple(x.shape)}"
    assert_close(ours(x), ref(x), label, **TOL,
                 hint="weight * x / sqrt(mean(x**2 over the LAST dim, keepdim=True) + eps): eps inside the root")


@q.check
def _rms_norm(RMSNorm):
    _check_rms_norm(RMSNorm, torch.randn(2, 3, 8) * 3, eps=1e-6, seed=0)
    _check_rms_norm(RMSNorm, torch.randn(2, 3, 8) * 0.3, eps=0.5, seed=1)  # a large eps shows where it goes


@q.check(hidden=True)
def _rms_norm_scales(RMSNorm):
    x = torch.randn(4, 5, 16) * torch.logspace(-1, 1, 5)[None, :, None]  # positions of very different sizes
    _check_rms_norm(RMSNorm, x, eps=1e-2, seed=2)


# --- rope ----------------------------------------------------------------------------------------------------
q = LAB.question("rope", points=3, uses=("rope_cos_sin", "apply_rope"), title="Rotary position embeddings")


def _check_rope(rope_cos_sin, apply_rope, t: int, heads: int, head_dim: int, theta: float) -> None:
    config = _config(hidden_size=heads * head_dim, num_attention_heads=heads, rope_theta=theta)
    cos, sin = _hf_cos_sin(config, t)
    got = rope_cos_sin(t, head_dim, theta)
    check(isinstance(got, tuple) and len(got) == 2, "rope_cos_sin should return a tuple (cos, sin).")
    for name, mine, ref in (("cos", got[0], cos[0]), ("sin", got[1], sin[0])):
        assert_close(mine, ref, f"{name} of rope_cos_sin({t}, {head_dim}, theta={theta:g})", **TOL,
                     hint="angles[m] = m * cat(inv_freq, inv_freq), inv_freq = 1 / theta**(arange(0, d, 2) / d)")
    x = torch.randn(2, heads, t, head_dim)
    ref_q, _ = apply_rotary_pos_emb(x, x, cos, sin)
    assert_close(apply_rope(x, cos[0], sin[0]), ref_q,
                 f"apply_rope(x, cos, sin) for x of shape {tuple(x.shape)} (with transformers' cos and sin)", **TOL,
                 hint="x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1] with x1, x2 the two halves")


@q.check
def _rope(rope_cos_sin, apply_rope):
    _check_rope(rope_cos_sin, apply_rope, t=10, heads=2, head_dim=16, theta=10000.0)


@q.check(hidden=True)
def _rope_other_theta(rope_cos_sin, apply_rope):
    _check_rope(rope_cos_sin, apply_rope, t=33, heads=3, head_dim=32, theta=500000.0)


# --- swiglu --------------------------------------------------------------------------------------------------
q = LAB.question("swiglu", points=2, uses=("MLP",), title="The SwiGLU MLP")


def _check_mlp(MLP, d_model: int, d_ff: int, seed: int) -> None:
    ref = _randomize_(LlamaMLP(_config(hidden_size=d_model, intermediate_size=d_ff)), seed)
    ours = MLP(d_model, d_ff)
    _load(ours, ref, "MLP")
    x = torch.randn(2, 5, d_model)
    assert_close(ours(x), ref(x), f"MLP({d_model}, {d_ff}) vs transformers' LlamaMLP (same weights)", **TOL,
                 hint="down_proj(silu(gate_proj(x)) * up_proj(x)): the SiLU goes on the gate, not on up_proj")


@q.check
def _swiglu(MLP):
    _check_mlp(MLP, 16, 48, seed=3)


@q.check(hidden=True)
def _swiglu_bigger(MLP):
    _check_mlp(MLP, 64, 192, seed=4)


# --- multi_head_attention ------------------------------------------------------------------------------------
q = LAB.question("multi_head_attention", points=3, uses=("Attention",), title="Multi-head attention with RoPE",
                 builds_on=("sdpa", "rope"))


def _check_mha(Attention, d_model: int, heads: int, batch: int, t: int, seed: int) -> None:
    config = _config(hidden_size=d_model, num_attention_heads=heads)
    ref = _randomize_(LlamaAttention(config, layer_idx=0), seed).eval()
    ours = Attention(d_model, heads)
    _load(ours, ref, "Attention")
    x = torch.randn(batch, t, d_model)
    cos, sin = _hf_cos_sin(config, t)
    ref_out, ref_weights = ref(x, position_embeddings=(cos, sin), attention_mask=_causal_mask(t))
    out, weights = _pair(ours(x, cos[0], sin[0]), "Attention.forward")
    label = f"Attention({d_model}, n_heads={heads}) on x of shape {tuple(x.shape)}"
    assert_shape(out, (batch, t, d_model), f"the output of {label}")
    assert_shape(weights, (batch, heads, t, t), f"the weights of {label}", hint="(batch, heads, T, T)")
    assert_close(weights, ref_weights, f"the attention weights of {label} vs transformers' LlamaAttention", **TOL,
                 hint="split heads with view(b, t, heads, head_dim).transpose(1, 2), then RoPE on q and k (not v); "
                 "if `sdpa` and `rope` pass, look at the head split")
    assert_close(out, ref_out, f"the output of {label} vs transformers' LlamaAttention", **TOL,
                 hint="merge heads with out.transpose(1, 2).reshape(b, t, d_model), then o_proj")


@q.check
def _mha(Attention):
    _check_mha(Attention, d_model=32, heads=4, batch=2, t=7, seed=5)


@q.check(hidden=True)
def _mha_other_shape(Attention):
    _check_mha(Attention, d_model=64, heads=2, batch=3, t=12, seed=6)


# --- decoder_block -------------------------------------------------------------------------------------------
q = LAB.question("decoder_block", points=2, uses=("DecoderBlock",), title="The pre-norm decoder block",
                 builds_on=("rms_norm", "swiglu", "multi_head_attention"))


def _check_block(DecoderBlock, d_model: int, heads: int, d_ff: int, eps: float, t: int, seed: int) -> None:
    config = _config(hidden_size=d_model, num_attention_heads=heads, intermediate_size=d_ff, rms_norm_eps=eps)
    ref = _randomize_(LlamaDecoderLayer(config, layer_idx=0), seed).eval()
    ours = DecoderBlock(d_model, heads, d_ff, eps)
    _load(ours, ref, "DecoderBlock")
    x = torch.randn(2, t, d_model)
    cos, sin = _hf_cos_sin(config, t)
    expected = ref(x, attention_mask=_causal_mask(t), position_embeddings=(cos, sin))
    assert_close(ours(x, cos[0], sin[0]), expected,
                 f"DecoderBlock({d_model}, {heads}, {d_ff}) vs transformers' LlamaDecoderLayer (same weights)", **TOL,
                 hint="h = x + self_attn(input_layernorm(x))[0]; out = h + mlp(post_attention_layernorm(h)); "
                 "if the earlier questions pass, look at the residual connections and which norm goes where")


@q.check
def _block(DecoderBlock):
    _check_block(DecoderBlock, d_model=32, heads=4, d_ff=64, eps=1e-6, t=9, seed=7)


@q.check(hidden=True)
def _block_other_shape(DecoderBlock):
    _check_block(DecoderBlock, d_model=48, heads=3, d_ff=128, eps=1e-6, t=20, seed=8)


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
        logits = ours(ids)
    label = (f"the logits of LlamaLM ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
             f"{config.num_attention_heads} heads) vs LlamaForCausalLM with the same weights")
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
