"""Lab 10 - Quantized inference.

References: transformers' BitsAndBytesConfig (its fields), the byte layout of bitsandbytes' formats as the notebook
states it (codes, float32 block absmax, double quantization's 8-bit absmax with a float32 scale per 256 blocks),
the roofline formulas the notebook states, and models built from configurations on the meta device (shapes only).

Every question is graded without bitsandbytes, so a platform where it has no backend (an old CPU, macOS) still
grades in full: the grader has no "skipped because a library is missing" status (only device="cuda" questions
are skipped), so the checks test pure functions, and the one measured result (the bits-per-character table) is
checked for the formats it holds.

Speed is not graded: bitsandbytes' speed never, and PyTorch's dynamic int8, although 2-3x faster than float32 at
decode on the 2-core CI CPU, runs on a deprecated API whose speed depends on the CPU's int8 instructions.

Task exact match per format (the `dates` specialist, labkit.zoo.specialist_path, on the validation split) is
reported by the notebook and deliberately not graded: those numbers are the learner's own, which a check could only
threshold on trust, and a grader-side measurement (the specialist loaded in every bitsandbytes format on a test
split) could not run where bitsandbytes has no backend, and would test nothing the graded functions do not already.
Measured on a 2-core CPU, n = 200 (Wilson 95 %): float32 62.0 % [55.1, 68.4], int8 62.5 %, nf4 59.0 % (27 answers
differ from float32's), nf4+dq 59.5 %, fp4 62.5 %, fp4+dq 62.5 %.
"""

from __future__ import annotations

import math

import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from grader.asserts import assert_below, assert_equal, assert_number_close, call_learner, check, learner_raises
from grader.registry import Lab

LAB = Lab("10", "Quantized inference")

FORMATS = ("float32", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq")
FOUR_BIT = ("nf4", "nf4+dq", "fp4", "fp4+dq")
# NF4 bits per character may rise by at most 5 % over float32 (the bar). Measured on the base model and
# 6,000 characters of held-out world text: NF4 +0.00 %, NF4+dq +0.00 %, FP4 +0.27 %, int8 +0.02 %; a 4-bit model
# saved after a forward pass without double quantization and reloaded (the AVX512-BF16 trap): +7.7 %.
MAX_INCREASE = 0.05


def _weight_bytes(out_features: int, in_features: int, fmt: str, blocksize: int = 64) -> int:
    n = out_features * in_features
    blocks = math.ceil(n / blocksize)
    return {"float32": 4 * n, "bfloat16": 2 * n, "int8": n + 4 * out_features,
            "nf4": math.ceil(n / 2) + 4 * blocks, "fp4": math.ceil(n / 2) + 4 * blocks,
            "nf4+dq": math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256),
            "fp4+dq": math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256)}[fmt]


def _linear_bytes(model: torch.nn.Module, fmt: str, blocksize: int = 64) -> int:
    return sum(_weight_bytes(m.out_features, m.in_features, fmt, blocksize)
               for m in model.modules() if isinstance(m, torch.nn.Linear))


_UNKNOWN_NAME = {"hint": "raise ValueError(...) for a name you do not know",
                 "if_silent": "an unknown format name is a mistake: raise ValueError"}


# --- qinf_config ---------------------------------------------------------------------------------------------
q = LAB.question("qinf_config", points=2, uses=("bnb_config",), title="A BitsAndBytesConfig per format")


def _check_config(bnb_config, fmt: str, compute_dtype: torch.dtype | None = None) -> None:
    kwargs = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    what = f"bnb_config({fmt!r}{', compute_dtype=' + str(compute_dtype) if compute_dtype else ''})"
    got = call_learner(bnb_config, what, fmt, **kwargs)
    if fmt == "float32":
        check(got is None, f"{what} should return None: float32 loads without a quantization config.",
              received=type(got).__name__)
        return
    check(isinstance(got, BitsAndBytesConfig), f"{what} should return a transformers BitsAndBytesConfig.",
          received=type(got).__name__)
    assert_equal(bool(got.load_in_8bit), fmt == "int8", f"load_in_8bit of {what}",
                 hint="int8 is LLM.int8(): BitsAndBytesConfig(load_in_8bit=True)")
    assert_equal(bool(got.load_in_4bit), fmt in FOUR_BIT, f"load_in_4bit of {what}",
                 hint="the nf4 and fp4 formats need load_in_4bit=True")
    if fmt not in FOUR_BIT:
        return
    assert_equal(got.bnb_4bit_quant_type, fmt.split("+")[0], f"bnb_4bit_quant_type of {what}",
                 hint="bnb_4bit_quant_type defaults to 'fp4': name the quant type for nf4")
    assert_equal(bool(got.bnb_4bit_use_double_quant), fmt.endswith("+dq"), f"bnb_4bit_use_double_quant of {what}",
                 hint="'+dq' means double quantization: bnb_4bit_use_double_quant=True")
    assert_equal(got.bnb_4bit_compute_dtype, compute_dtype or torch.float32, f"bnb_4bit_compute_dtype of {what}",
                 hint="pass compute_dtype on as bnb_4bit_compute_dtype")


@q.check
def _config(bnb_config):
    for fmt in FORMATS:
        _check_config(bnb_config, fmt)


@q.check(hidden=True)
def _config_edges(bnb_config):
    for fmt in ("nf4", "fp4+dq"):
        _check_config(bnb_config, fmt, torch.bfloat16)
    for name in ("int4", "nf4+gptq", "bf16"):
        learner_raises(bnb_config, f"bnb_config({name!r})", ValueError, name, **_UNKNOWN_NAME)


# --- qinf_bytes ----------------------------------------------------------------------------------------------
q = LAB.question("qinf_bytes", points=3, uses=("weight_bytes",), title="Bytes of a Linear weight per format")
BYTES_HINTS = {
    "float32": "4 bytes per weight", "bfloat16": "2 bytes per weight",
    "int8": "one byte per weight plus one float32 scale (4 bytes) per output row",
    "nf4": "two codes per byte, ceil(n / 2), plus a float32 absmax (4 bytes) per block: 4 * ceil(n / blocksize)",
    "nf4+dq": "codes ceil(n / 2), one byte per block, and 4 bytes per 256 *blocks* (not per 256 weights)",
}
BYTES_HINTS["fp4"], BYTES_HINTS["fp4+dq"] = BYTES_HINTS["nf4"], BYTES_HINTS["nf4+dq"]


def _check_bytes(weight_bytes, out_f: int, in_f: int, fmt: str, blocksize: int | None = None) -> None:
    kwargs = {} if blocksize is None else {"blocksize": blocksize}
    what = f"weight_bytes({out_f}, {in_f}, {fmt!r}{f', blocksize={blocksize}' if blocksize else ''})"
    got = call_learner(weight_bytes, what, out_f, in_f, fmt, **kwargs)
    check(isinstance(got, int | float) and not isinstance(got, bool), f"{what} should return a number of bytes.",
          received=type(got).__name__)
    assert_equal(got, _weight_bytes(out_f, in_f, fmt, blocksize or 64), what, hint=BYTES_HINTS[fmt])


@q.check
def _bytes(weight_bytes):
    for fmt in (*FORMATS, "bfloat16"):
        _check_bytes(weight_bytes, 5632, 2048, fmt)


@q.check(hidden=True)
def _bytes_edges(weight_bytes):
    for out_f, in_f in ((3, 7), (1, 1), (257, 64), (512, 128), (96, 2048 * 65)):  # partial blocks, a 257th block
        for fmt in (*FORMATS, "bfloat16"):
            _check_bytes(weight_bytes, out_f, in_f, fmt)
    for fmt in FOUR_BIT:
        _check_bytes(weight_bytes, 384, 128, fmt, blocksize=128)
        _check_bytes(weight_bytes, 100, 30, fmt, blocksize=32)
    learner_raises(weight_bytes, "weight_bytes(8, 8, 'int4')", ValueError, 8, 8, "int4", **_UNKNOWN_NAME)


# --- qinf_footprint ------------------------------------------------------------------------------------------
q = LAB.question("qinf_footprint", points=2, uses=("linear_bytes",), title="Bytes of every Linear of a model",
                 builds_on=("qinf_bytes",))
FOOTPRINT_HINT = ("add weight_bytes(m.out_features, m.in_features, fmt, blocksize) over every module m of "
                  "model.modules() that is an nn.Linear (lm_head included, embeddings and norms left out)")


class _Packed4bit(torch.nn.Linear):
    """As bitsandbytes' Linear4bit holds a layer after quantization: `weight` is the packed codes, shape (n/2, 1)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False, device="meta")
        self.weight = torch.nn.Parameter(torch.empty(in_features * out_features // 2, 1, dtype=torch.uint8,
                                                     device="meta"), requires_grad=False)


def _meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def _check_footprint(linear_bytes, model, what: str, fmts=FORMATS, blocksize: int | None = None) -> None:
    kwargs = {} if blocksize is None else {"blocksize": blocksize}
    for fmt in fmts:
        call = f"linear_bytes({what}, {fmt!r}{f', blocksize={blocksize}' if blocksize else ''})"
        got = call_learner(linear_bytes, call, model, fmt, **kwargs)
        assert_equal(got, _linear_bytes(model, fmt, blocksize or 64), call, hint=FOOTPRINT_HINT)


@q.check
def _footprint(linear_bytes):
    wide = _meta(LlamaForCausalLM, LlamaConfig(vocab_size=512, hidden_size=2048, intermediate_size=5632,
                                                num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=4))
    _check_footprint(linear_bytes, wide, "the wide Llama")
    ratio = linear_bytes(wide, "nf4") / linear_bytes(wide, "float32")
    assert_below(ratio, 0.3, "linear_bytes(wide, 'nf4') / linear_bytes(wide, 'float32')",
                 hint="NF4 stores about 4.5 bits per weight: the ratio is about 0.14")


@q.check(hidden=True)
def _footprint_other_models(linear_bytes):
    qwen = _meta(Qwen2ForCausalLM, Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    _check_footprint(linear_bytes, qwen, "a Qwen2 model")
    _check_footprint(linear_bytes, qwen, "a Qwen2 model", fmts=("nf4", "fp4+dq"), blocksize=128)
    _check_footprint(linear_bytes, torch.nn.Linear(7, 5, device="meta"), "nn.Linear(7, 5)")  # a partial block
    packed = torch.nn.Sequential(torch.nn.Embedding(512, 256, device="meta"), _Packed4bit(256, 768),
                                 torch.nn.LayerNorm(768, device="meta"), _Packed4bit(768, 256))
    _check_footprint(linear_bytes, packed, "a model of bitsandbytes-style 4-bit layers (weight = packed codes)")


# --- qinf_intensity ------------------------------------------------------------------------------------------
q = LAB.question("qinf_intensity", points=2, uses=("arithmetic_intensity",), title="Arithmetic intensity of a Linear")
INTENSITY_HINT = ("FLOPs = 2 * tokens * in * out (a multiply and an add per term); bytes = in * out * "
                  "bytes_per_weight + tokens * (in + out) * bytes_per_activation")


def _intensity(tokens, in_f, out_f, bw, ba=4.0) -> float:
    return 2 * tokens * in_f * out_f / (in_f * out_f * bw + tokens * (in_f + out_f) * ba)


def _check_intensity(arithmetic_intensity, tokens, in_f, out_f, bw, ba=None) -> None:
    args = (tokens, in_f, out_f, bw)
    kwargs = {} if ba is None else {"bytes_per_activation": ba}
    what = f"arithmetic_intensity{args}" + (f" with bytes_per_activation={ba}" if ba is not None else "")
    got = call_learner(arithmetic_intensity, what, *args, **kwargs)
    assert_number_close(got, _intensity(*args, 4.0 if ba is None else ba), what, rtol=1e-9, atol=0,
                        hint=INTENSITY_HINT)


@q.check
def _intensity_public(arithmetic_intensity):
    _check_intensity(arithmetic_intensity, 1, 2048, 5632, 4)
    _check_intensity(arithmetic_intensity, 64, 2048, 5632, 0.5625)


@q.check(hidden=True)
def _intensity_edges(arithmetic_intensity):
    _check_intensity(arithmetic_intensity, 4096, 4096, 4096, 2, 2)
    _check_intensity(arithmetic_intensity, 1, 7, 3, 1)
    _check_intensity(arithmetic_intensity, 100_000, 512, 128, 4.5 / 8)


# --- qinf_roofline -------------------------------------------------------------------------------------------
q = LAB.question("qinf_roofline", points=2, uses=("roofline_seconds",), title="The roofline's time bound")
ROOFLINE_HINT = ("the work needs both its arithmetic (flops / peak_flops) and its memory traffic "
                 "(nbytes / bandwidth); they overlap, so the bound is the larger of the two")


def _check_roofline(roofline_seconds, flops, nbytes, peak, bw) -> None:
    what = f"roofline_seconds({flops:g}, {nbytes:g}, {peak:g}, {bw:g})"
    got = call_learner(roofline_seconds, what, flops, nbytes, peak, bw)
    assert_number_close(got, max(flops / peak, nbytes / bw), what, rtol=1e-9, atol=0, hint=ROOFLINE_HINT)


@q.check
def _roofline(roofline_seconds):
    _check_roofline(roofline_seconds, 2 * 88e6, 352e6, 60e9, 8e9)  # decode: memory-bound
    _check_roofline(roofline_seconds, 64 * 2 * 88e6, 352e6, 60e9, 8e9)  # prefill: compute-bound


@q.check(hidden=True)
def _roofline_edges(roofline_seconds):
    _check_roofline(roofline_seconds, 8e9, 1e9, 80e9, 10e9)  # exactly at the ridge
    _check_roofline(roofline_seconds, 2 * 8e9, 4e9, 989e12, 3.35e12)
    _check_roofline(roofline_seconds, 1e15, 1e3, 1e12, 1e9)


# --- qinf_quality --------------------------------------------------------------------------------------------
q = LAB.question("qinf_quality", points=2, uses=("relative_increase", "bpc"),
                 title="Quality cost per format, relative to float32")
INCREASE_HINT = "value / values[reference] - 1 for every key: a fraction of the reference, 0.0 for the reference"


def _check_increase(relative_increase, values: dict, reference: str | None = None) -> None:
    kwargs = {} if reference is None else {"reference": reference}
    what = f"relative_increase({values}{f', reference={reference!r}' if reference else ''})"
    got = call_learner(relative_increase, what, dict(values), **kwargs)
    check(isinstance(got, dict), f"{what} should return a dict.", received=type(got).__name__)
    assert_equal(sorted(got), sorted(values), f"the keys of {what}", hint="one entry per key of values")
    ref = values[reference or "float32"]
    for name, value in values.items():
        assert_number_close(got[name], value / ref - 1, f"{what}[{name!r}]", rtol=1e-9, atol=1e-12,
                            hint=INCREASE_HINT)


@q.check
def _quality(relative_increase, bpc):
    _check_increase(relative_increase, {"float32": 0.5, "nf4": 0.51, "int8": 0.5})
    check(isinstance(bpc, dict) and "float32" in bpc, "bpc should be a dict of bits per character with a "
          "'float32' entry.", received=type(bpc).__name__ if not isinstance(bpc, dict) else sorted(bpc))
    for fmt in ("nf4", "nf4+dq"):
        if fmt in bpc:  # absent only where bitsandbytes did not import
            rise = bpc[fmt] / bpc["float32"] - 1
            check(rise <= MAX_INCREASE, f"bpc[{fmt!r}] is {rise:.1%} above float32's; the limit is "
                  f"{MAX_INCREASE:.0%}.", received=f"{bpc[fmt]:.5f} vs {bpc['float32']:.5f}",
                  hint="load each format from the original checkpoint with from_pretrained(path, "
                       "quantization_config=bnb_config(fmt)); a 4-bit model saved after a forward pass and reloaded "
                       "can be damaged (section 6)")


@q.check(hidden=True)
def _quality_edges(relative_increase):
    _check_increase(relative_increase, {"nf4": 1.2, "fp4": 0.9, "float32": 1.0})
    _check_increase(relative_increase, {"int8": 2.0, "bf16": 3.0, "fp16": 2.5}, reference="fp16")
    values = {"float32": 0.25, "nf4": 0.3}
    call_learner(relative_increase, "relative_increase(values)", values)
    assert_equal(values, {"float32": 0.25, "nf4": 0.3}, "values after relative_increase(values)",
                 hint="return a new dict; leave the one you were given as it was")
