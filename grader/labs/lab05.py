"""Lab 05 - Your model in the Hugging Face ecosystem.

Every check runs the learner's functions on the grader's own copy of the course's base model
(labkit.zoo), freshly loaded, never on the notebook's model. References come from the library
(from_pretrained, generate), from plain loops written here (greedy decoding token by token, the
loss of each chunk on its own) and from held-out text of a seed the notebook never uses.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Trainer,
    TrainingArguments,
)
from transformers.pipelines import TextGenerationPipeline

from grader.asserts import (
    assert_above,
    assert_below,
    assert_close,
    assert_equal,
    assert_type,
    call_learner,
    check,
)
from grader.registry import Lab
from labkit import world, zoo
from labkit.lm import heldout_nats

LAB = Lab("05", "Your model in the Hugging Face ecosystem")
HELD_OUT_SEED = 9005  # the notebook uses corpus seed 1 and task seeds 0 and 1
PROMPTS = ["mia has", "the capital of", "on monday, tom walked from the market to", "sam"]
TASK_NATS_PER_CHAR = 1.5  # held-out date-task text after continued pretraining; measured: base 7.05, solution 0.91


def _join(tokenizer, docs: list[str]) -> str:
    """Documents separated as in pretraining (doc <eos><bos> doc), as the notebook's join_docs does."""
    return (tokenizer.eos_token + tokenizer.bos_token).join(docs)


def _load_base(**config_overrides):
    path = zoo.base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                 **config_overrides)
    return model.eval(), tokenizer


@LAB.fixture
def base():
    """The base model and its tokenizer, read from the cache once per grading run."""
    return _load_base()


def _base(base, device: torch.device | str = "cpu", **config_overrides):
    """A fresh (model, tokenizer) of the base model, float32, eval mode, a check's own to change."""
    model, tokenizer = _load_base(**config_overrides) if config_overrides else base
    return copy.deepcopy(model).to(device).eval(), tokenizer


def _sampling_by_default(model):
    """The model with a generation_config that samples, as many hub models ship (Llama 3: do_sample=True,
    temperature=0.6, top_p=0.9): a setting left unset in a GenerationConfig comes from it."""
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.6
    model.generation_config.top_p = 0.9
    model.generation_config.top_k = 20
    return model


@torch.no_grad()
def _logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt").to(model.device)
    return model(**batch).logits.cpu()


# --- hf_roundtrip --------------------------------------------------------------------------------------------
q = LAB.question("hf_roundtrip", points=3, uses=("save_model", "load_model"),
                 title="save_pretrained / from_pretrained round trip")
TEXTS = ["mia has 3 red apples.", "the capital of", "date: 3rd of march 2021\niso: 2021-03-03\n"]


def _check_roundtrip(save_model, load_model, model, tokenizer, device) -> None:
    want = _logits(model, tokenizer, TEXTS)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "saved"
        save_model(model, tokenizer, str(path))
        check(path.is_dir(), f"save_model(model, tokenizer, path) did not create the directory {path.name}.",
              hint="model.save_pretrained(path) creates it")
        files = sorted(f.name for f in path.iterdir())
        check((path / "model.safetensors").is_file(),
              f"No model.safetensors in the saved directory (it holds {files}).",
              hint="save the weights with model.save_pretrained(path), which writes safetensors, not torch.save")
        check((path / "config.json").is_file(), f"No config.json in the saved directory (it holds {files}).",
              hint="model.save_pretrained(path) writes the config with the weights")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            check((path / name).is_file(), f"No {name} in the saved directory (it holds {files}).",
                  hint="save the tokenizer too: tokenizer.save_pretrained(path)")
        reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
        assert_close(_logits(reloaded.to(device).eval(), tokenizer, TEXTS), want,
                     "logits of the model reloaded with AutoModelForCausalLM.from_pretrained", rtol=0, atol=0,
                     hint="save the model you were given, in full precision")
        out = load_model(str(path), device)
        check(isinstance(out, tuple) and len(out) == 2, "load_model(path, device) should return (model, tokenizer).")
        mine, my_tokenizer = out
        check(hasattr(mine, "config") and callable(mine), f"load_model returned a {type(mine).__name__} as model.")
        head = getattr(mine, "get_output_embeddings", lambda: None)()
        check(head is not None, f"The model from load_model is a {type(mine).__name__}, which has no language-model "
              "head: it returns hidden states, not next-token logits.",
              hint="load it with AutoModelForCausalLM.from_pretrained, which adds the head (AutoModel does not)")
        check(not mine.training, "The model from load_model is in training mode.",
              hint="from_pretrained returns it in eval mode; return model.eval()")
        assert_equal(mine.dtype, torch.float32, "the dtype of the model from load_model",
                     hint="from_pretrained(path, dtype=torch.float32)")
        assert_equal(mine.device.type, torch.device(device).type, "the device of the model from load_model",
                     hint="move it with model.to(device)")
        for text in TEXTS:
            assert_equal(my_tokenizer(text)["input_ids"], tokenizer(text)["input_ids"],
                         f"the ids of {text!r} with the tokenizer from load_model",
                         hint="load the tokenizer from the same directory: AutoTokenizer.from_pretrained(path)")
        assert_equal(my_tokenizer.pad_token_id, tokenizer.pad_token_id, "pad_token_id of the reloaded tokenizer")
        assert_close(_logits(mine, my_tokenizer, TEXTS), want, "logits of the model from your load_model",
                     rtol=0, atol=0, hint="load in float32 (dtype=torch.float32): lower precision changes logits")


@q.check
def _roundtrip(save_model, load_model, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    _check_roundtrip(save_model, load_model, model, tokenizer, ctx.device)


@q.check(hidden=True)
def _roundtrip_changed_model(save_model, load_model, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    g = torch.Generator().manual_seed(HELD_OUT_SEED)
    with torch.no_grad():  # not the cached base model any more: save_model must write the weights it is given
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g).to(p.device))
    _check_roundtrip(save_model, load_model, model, tokenizer, ctx.device)
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, tokenizer, folder)
        mine, _ = load_model(folder)
        assert_equal(mine.device.type, "cpu", "the device of load_model(path) without a device",
                     hint="device=None means the CPU")


@q.check(hidden=True)
def _save_leaves_the_model(save_model, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    model.train()  # as right after training, when checkpoints are saved
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, tokenizer, folder)
    check(model.training, "save_model switched the model it was given from training to eval mode, so training "
          "would go on without dropout.", hint="saving must leave the model as it was: don't call model.eval()")
    p = next(model.parameters())
    check(p.device.type == torch.device(ctx.device).type and p.dtype == torch.float32,
          f"save_model left the model it was given on {p.device} in {p.dtype}.",
          hint="saving must leave the model as it was: model.to(...), .cpu() and .half() change the model itself")


# --- hf_generate_config --------------------------------------------------------------------------------------
q = LAB.question("hf_generate_config", points=2, uses=("generation_configs",),
                 title="GenerationConfig for greedy, sampling and beam search")
DEFAULTS = {"do_sample": False, "num_beams": 1, "temperature": 1.0, "top_k": 50}  # what generate uses if unset
WANT = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "sample": {"do_sample": True, "num_beams": 1, "temperature": 0.8, "top_k": 50},
    "beam": {"do_sample": False, "num_beams": 4},
}
HINTS = {
    "greedy": "greedy decoding is do_sample=False with num_beams=1: always the most likely token",
    "sample": "sampling needs do_sample=True (else temperature and top_k are ignored)",
    "beam": "beam search keeps num_beams=4 hypotheses and does not sample (do_sample=False)",
}


def _effective(config: GenerationConfig, name: str):
    value = getattr(config, name, None)
    return DEFAULTS[name] if value is None else value


def _reference_configs(max_new_tokens: int) -> dict[str, GenerationConfig]:
    return {name: GenerationConfig(max_new_tokens=max_new_tokens, **want) for name, want in WANT.items()}


@q.check
def _configs(generation_configs):
    configs = generation_configs(16)
    assert_type(configs, dict, "generation_configs(16)")
    assert_equal(sorted(configs), sorted(WANT), "the keys of generation_configs(16)")
    for name, want in WANT.items():
        config = configs[name]
        assert_type(config, GenerationConfig, f"generation_configs(16)[{name!r}]")
        assert_equal(config.max_new_tokens, 16, f"max_new_tokens of the {name!r} config",
                     hint="pass max_new_tokens=max_new_tokens to every GenerationConfig")
        for field, value in want.items():
            assert_equal(_effective(config, field), value, f"{field} of the {name!r} config", hint=HINTS[name])


@q.check(hidden=True)
def _configs_generate_the_same(generation_configs, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    mine, ref = generation_configs(10), _reference_configs(10)
    batch = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt").to(ctx.device)
    for name in WANT:
        outs = []
        for config in (mine[name], ref[name]):
            torch.manual_seed(HELD_OUT_SEED)
            outs.append(model.generate(**batch, generation_config=config).cpu())
        check(outs[0].shape == outs[1].shape and torch.equal(outs[0], outs[1]),
              f"model.generate with your {name!r} config gives other tokens than the settings asked for.",
              hint=HINTS[name])


@q.check(hidden=True)
def _configs_on_a_model_that_samples_by_default(generation_configs, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    _sampling_by_default(model)
    mine, ref = generation_configs(10), _reference_configs(10)
    batch = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt").to(ctx.device)
    for name, want in WANT.items():
        outs = []
        for config in (mine[name], ref[name]):
            torch.manual_seed(HELD_OUT_SEED)
            outs.append(model.generate(**batch, generation_config=config).cpu())
        unset = [field for field in want if getattr(mine[name], field, None) is None]
        hint = (f"set {', '.join(unset)} explicitly: a setting left unset comes from the model's own "
                "generation_config, and many models sample by default") if unset else HINTS[name]
        check(outs[0].shape == outs[1].shape and torch.equal(outs[0], outs[1]),
              f"On a model whose own generation_config samples, model.generate with your {name!r} config gives other "
              "tokens than the settings asked for.", hint=hint)


# --- hf_generate ---------------------------------------------------------------------------------------------
q = LAB.question("hf_generate", points=3, uses=("generate_text",), title="Batched generation with generate")


@torch.no_grad()
def _greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding the slow, obvious way: the whole sequence through the model for every new token."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    new = []
    for _ in range(max_new_tokens):
        next_id = int(model(input_ids=ids).logits[0, -1].argmax())
        if next_id == tokenizer.eos_token_id:
            break
        new.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]], device=ids.device)], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


@torch.no_grad()
def _single(model, tokenizer, prompt: str, config: GenerationConfig) -> str:
    """One prompt alone, so no padding at all."""
    batch = tokenizer([prompt], return_tensors="pt").to(model.device)
    out = model.generate(**batch, generation_config=config)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def _compare_texts(got, want: list[str], prompts: list[str], what: str) -> None:
    assert_type(got, list, what)
    assert_equal(len(got), len(want), f"the number of texts from {what}", hint="one continuation per prompt")
    for text, ref, prompt in zip(got, want, prompts, strict=True):
        assert_type(text, str, f"each item of {what}")
        if text != ref and text.startswith(prompt) and ref and not ref.startswith(prompt):
            hint = "return only the new tokens: out[:, input_ids.shape[1]:], without the prompt"
        else:
            hint = ("pad the batch on the LEFT (padding_side='left'), pass the attention_mask, "
                    "and decode the new tokens with skip_special_tokens=True")
        check(text == ref, f"{what}: the continuation of {prompt!r} is wrong.", hint=hint,
              received=repr(text), expected=repr(ref))


@q.check
def _generate_greedy_and_beam(generate_text, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    ref = _reference_configs(12)
    want = [_greedy(model, tokenizer, p, 12) for p in PROMPTS]
    _compare_texts(generate_text(model, tokenizer, PROMPTS, ref["greedy"]), want, PROMPTS,
                   "generate_text(model, tokenizer, prompts, greedy config)")
    want = [_single(model, tokenizer, p, ref["beam"]) for p in PROMPTS]
    _compare_texts(generate_text(model, tokenizer, PROMPTS, ref["beam"]), want, PROMPTS,
                   "generate_text(model, tokenizer, prompts, beam-search config)")


@q.check(hidden=True)
def _generate_sampling(generate_text, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    config = _reference_configs(12)["sample"]
    prompts = ["the capital of", "on friday,"]
    runs = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        runs.append(generate_text(model, tokenizer, prompts, config))
    check(runs[0] == runs[2], "generate_text with a sampling config gave different texts for the same seed.",
          hint="pass the config to generate and don't reseed inside")
    check(runs[0] != runs[1], "generate_text with a sampling config gave the same texts for different seeds.",
          hint="use the config you are given: generate(**batch, generation_config=config)")
    prompts = ["date: 3rd of march 2021\niso:", "tom"]
    want = [_greedy(model, tokenizer, p, 6) for p in prompts]
    _compare_texts(generate_text(model, tokenizer, prompts, _reference_configs(6)["greedy"]), want, prompts,
                   "generate_text with max_new_tokens=6")


@q.check(hidden=True)
def _generate_edges(generate_text, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    greedy = _reference_configs(12)["greedy"]
    for prompts, what in [(["the"], "generate_text for a batch of one prompt"),
                          (["", "on sunday, ben walked from the market to"],
                           "generate_text for an empty prompt (<bos> alone) and a long one")]:
        got = call_learner(generate_text, what, model, tokenizer, prompts, greedy,
                    hint="a batch of one prompt, or of an empty one, is still a list of prompts: return a list with "
                    "one string per prompt")
        _compare_texts(got, [_greedy(model, tokenizer, p, 12) for p in prompts], prompts, what)
    prompts = ["mia has", "the capital of"]
    what = "generate_text with max_new_tokens=1"
    got = call_learner(generate_text, what, model, tokenizer, prompts, _reference_configs(1)["greedy"])
    _compare_texts(got, [_greedy(model, tokenizer, p, 1) for p in prompts], prompts, what)


# --- hf_pipeline ---------------------------------------------------------------------------------------------
q = LAB.question("hf_pipeline", points=2, uses=("make_pipeline", "complete"), title="A text-generation pipeline")


def _check_pipeline(make_pipeline, complete, prompts: list[str], max_new_tokens: int, device, base) -> None:
    model, tokenizer = _base(base, device)
    pipe = make_pipeline(model, tokenizer)
    assert_type(pipe, TextGenerationPipeline, "make_pipeline(model, tokenizer)",
                hint='pipeline("text-generation", model=model, tokenizer=tokenizer)')
    check(pipe.model is model, "The pipeline does not use the model object it was given.",
          hint="pass the model object itself: pipeline(..., model=model), not a path")
    want = [_greedy(model, tokenizer, p, max_new_tokens) for p in prompts]
    what = f"complete(pipe, {len(prompts)} prompts, {max_new_tokens})"
    got = call_learner(complete, what, pipe, prompts, max_new_tokens,
                hint="for a list of prompts the pipeline returns one list of results per prompt; complete returns one "
                "string per prompt")
    assert_type(got, list, f"complete(pipe, prompts, {max_new_tokens})")
    assert_equal(len(got), len(prompts), "the number of completions", hint="one string per prompt")
    for text, ref, prompt in zip(got, want, prompts, strict=True):
        assert_type(text, str, "each completion", hint='take out[0]["generated_text"] for each prompt')
        if text.startswith(prompt) and not ref.startswith(prompt):
            hint = "return_full_text=False: the pipeline returns the prompt too by default"
        else:
            hint = "greedy decoding: do_sample=False (the text-generation pipeline samples by default), and pass " \
                   "max_new_tokens"
        check(text == ref, f"complete(pipe, prompts, {max_new_tokens}) for {prompt!r} is wrong.", hint=hint,
              received=repr(text), expected=repr(ref))


@q.check
def _pipeline(make_pipeline, complete, ctx, base):
    _check_pipeline(make_pipeline, complete, PROMPTS[:3], 10, ctx.device, base)


@q.check(hidden=True)
def _pipeline_other(make_pipeline, complete, ctx, base):
    _check_pipeline(make_pipeline, complete, ["the capital of fo", "on sunday, ben"], 5, ctx.device, base)


# --- hf_perplexity -------------------------------------------------------------------------------------------
q = LAB.question("hf_perplexity", points=3, uses=("perplexity",), title="Perplexity done right")


@torch.no_grad()
def _chunk_nats(model, tokenizer, text: str, window: int = 128) -> list[tuple[float, int]]:
    """(nats, predicted tokens) of each chunk, each on its own, unpadded, so no masking can go wrong."""
    was_training = model.training
    model.eval()
    ids = tokenizer(text, verbose=False)["input_ids"]
    chunks = []
    for i in range(0, len(ids), window):
        chunk = torch.tensor([ids[i : i + window]], device=model.device)
        if chunk.shape[1] < 2:
            chunks.append((0.0, 0))
            continue
        logits = model(input_ids=chunk).logits.float()
        chunks.append((F.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum").item(), chunk.shape[1] - 1))
    model.train(was_training)
    return chunks


def _nll(model, tokenizer, text: str, window: int = 128) -> tuple[float, int]:
    """(total nats, predicted tokens) over all chunks."""
    chunks = _chunk_nats(model, tokenizer, text, window)
    return sum(n for n, _ in chunks), sum(c for _, c in chunks)


def _reference_ppl(model, tokenizer, text: str, window: int = 128) -> float:
    total, count = _nll(model, tokenizer, text, window)
    return math.exp(total / count)


PPL_HINT = ("compare logits[:, :-1] with input_ids[:, 1:] (shift), give padded positions the label -100 "
            "(ignore them), sum the loss over all batches and divide by the number of predicted tokens, then exp")


def _check_ppl(perplexity, model, tokenizer, text: str, what: str, hint: str = PPL_HINT, edge: str | None = None,
               **kwargs) -> None:
    """`edge`: the hint when this input makes perplexity crash or return NaN/inf, and a crash fails the check."""
    want = _reference_ppl(model, tokenizer, text, kwargs.get("window", 128))
    if edge:
        got = call_learner(perplexity, what, model, tokenizer, text, hint=edge, **kwargs)
    else:
        got = perplexity(model, tokenizer, text, **kwargs)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    assert_type(got, (float, int), what, hint="return a Python float")
    if edge and not math.isfinite(got):
        hint = edge
    elif not math.isfinite(got) or got > 100 * want:
        hint = "perplexity is exp(MEAN loss per token): divide the total loss by the number of tokens before exp"
    assert_close(float(got), want, what, rtol=1e-3, atol=0, hint=hint)


@q.check
def _ppl(perplexity, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    docs = world.corpus(6000, seed=HELD_OUT_SEED).splitlines(keepends=True)[:-1]
    text = _join(tokenizer, docs)  # ~21 chunks of 128: batches of 8, 8, 5, the last chunk short
    _check_ppl(perplexity, model, tokenizer, text, "perplexity(model, tokenizer, text) on held-out corpus text")
    check(not model.training, "perplexity left an eval-mode model in training mode.",
          hint="remember model.training first, and restore it with model.train(was_training)")


@q.check(hidden=True)
def _ppl_other_sizes(perplexity, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    task = _join(tokenizer, [world.format_example(ex) for ex in world.task_examples("test", 60, seed=HELD_OUT_SEED)])
    _check_ppl(perplexity, model, tokenizer, task, "perplexity(..., window=32, batch_size=5) on task text",
               window=32, batch_size=5)
    _check_ppl(perplexity, model, tokenizer, "ana has 2 blue cups.\n", "perplexity of one short sentence")


@q.check(hidden=True)
def _ppl_train_mode(perplexity, ctx, base):
    model, tokenizer = _base(base, ctx.device, attention_dropout=0.2)  # a model with dropout, as many real ones have
    text = world.corpus(2000, seed=HELD_OUT_SEED + 1)
    model.train()  # as it is right after training
    _check_ppl(perplexity, model, tokenizer, text, "perplexity of a model with dropout, called in training mode",
               hint="evaluate in eval mode (model.eval()): in training mode dropout changes the loss", window=64)
    check(model.training, "perplexity did not put a model that was in training mode back into training mode.",
          hint="remember model.training first, and restore it with model.train(was_training)")
    model.train()
    first = perplexity(model, tokenizer, text, window=64)
    model.train()
    second = perplexity(model, tokenizer, text, window=64)
    assert_close(first, second, "perplexity of the same text, called twice in training mode", rtol=1e-6,
                 hint="dropout is random in training mode: evaluate with model.eval()")


def _short_tail_text(tokenizer) -> tuple[str, int, int]:
    """(text, window, batch_size): held-out corpus text (low loss) ending in a date-task document (high loss),
    cut so that the last chunk is a few tokens of the task document, alone in the last batch. Every token counts
    once in the perplexity; a mean of per-batch or per-chunk means gives those few tokens the weight of a batch."""
    docs = world.corpus(1500, seed=HELD_OUT_SEED + 2).splitlines(keepends=True)[:-1]
    task = world.format_example(world.task_examples("test", 1, seed=HELD_OUT_SEED + 2)[0])
    text = _join(tokenizer, [*docs, task])
    n = len(tokenizer(text, verbose=False)["input_ids"])
    window = next((w for w in range(40, 128) if 4 <= n % w <= 8), 64)
    return text, window, -(-n // window) - 1  # all the full chunks in one batch, the short one in the next


def _one_token_tail_text(tokenizer) -> tuple[str, int]:
    """(text, window): held-out corpus text whose last chunk is a single token, which predicts nothing."""
    text = _join(tokenizer, world.corpus(1200, seed=HELD_OUT_SEED + 3).splitlines(keepends=True)[:-1])
    n = len(tokenizer(text, verbose=False)["input_ids"])
    return text, next((w for w in range(40, 128) if n % w == 1), 64)


def _weighting_hint(model, tokenizer, text: str, window: int, batch_size: int, got) -> str:
    """The mistake whose result `got` reproduces (a mean of means, the short chunk dropped), else the contract."""
    chunks = _chunk_nats(model, tokenizer, text, window)
    batches = [chunks[i : i + batch_size] for i in range(0, len(chunks), batch_size)]
    sums = [(sum(n for n, _ in b), sum(c for _, c in b)) for b in batches]
    mistakes = [
        (sum(n / c for n, c in sums if c) / sum(1 for _, c in sums if c),
         "that is the exp of the mean of the per-batch mean losses: a batch with few tokens then weighs as much as "
         "a full one. Sum the loss over all batches and divide by the total number of predicted tokens"),
        (sum(n / c for n, c in chunks if c) / sum(1 for _, c in chunks if c),
         "that is the exp of the mean of the per-chunk mean losses: a short chunk then weighs as much as a full one. "
         "Sum the loss over all tokens and divide by the total number of predicted tokens"),
        (sum(n for n, _ in chunks[:-1]) / sum(c for _, c in chunks[:-1]),
         "the last, shorter chunk is part of the text: keep it (the last chunk may be shorter than window)"),
    ]
    if isinstance(got, int | float) and math.isfinite(got) and got > 0:
        for mean_nats, hint in mistakes:
            if math.isclose(math.log(got), mean_nats, rel_tol=1e-4, abs_tol=1e-5):
                return hint
    return ("every predicted token counts once: the total loss over all batches divided by the number of predicted "
            "tokens")


@q.check(hidden=True)
def _ppl_every_token_counts_once(perplexity, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    text, window, batch_size = _short_tail_text(tokenizer)
    what = (f"perplexity(..., window={window}, batch_size={batch_size}) of a text whose last chunk is a few tokens "
            "alone in the last batch")
    got = call_learner(perplexity, what, model, tokenizer, text, window=window, batch_size=batch_size, hint=PPL_HINT)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    assert_type(got, (float, int), what, hint="return a Python float")
    want = _reference_ppl(model, tokenizer, text, window)
    if not math.isclose(float(got), want, rel_tol=1e-3):
        assert_close(float(got), want, what, rtol=1e-3, atol=0,
                     hint=_weighting_hint(model, tokenizer, text, window, batch_size, got))


@q.check(hidden=True)
def _ppl_one_token_chunk_alone(perplexity, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    text, window = _one_token_tail_text(tokenizer)
    _check_ppl(perplexity, model, tokenizer, text,
               f"perplexity(..., window={window}, batch_size=1) of a text whose last chunk is a single token",
               window=window, batch_size=1,
               edge="here the last batch is one chunk of a single token, which predicts nothing: a mean over its "
               "zero predicted tokens is NaN. Sum the per-token losses (reduction='sum') and count the tokens")


@q.check(hidden=True)
def _ppl_tiny_probabilities(perplexity, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # a very confident model: the tokens it misses get probabilities << 1e-45
    text = _join(tokenizer, world.corpus(2500, seed=HELD_OUT_SEED + 4).splitlines(keepends=True)[:-1])
    _check_ppl(perplexity, model, tokenizer, text,
               "perplexity(..., window=64) of a very confident model, some of whose next-token probabilities are "
               "below 1e-45", window=64,
               edge="a probability below about 1e-45 is 0 in float32 and its log is -inf: take log-probabilities "
               "from log_softmax or F.cross_entropy, never log(softmax(...))")


@q.check(hidden=True)
def _ppl_bfloat16_model(perplexity, ctx, base):
    model, tokenizer = _base(base, ctx.device)
    model.to(torch.bfloat16)
    # date-task text, ~7 nats/token for this model: a sum rounded to bfloat16 moves the perplexity by about 1-4 %
    examples = world.task_examples("test", 60, seed=HELD_OUT_SEED + 5)
    text = _join(tokenizer, [world.format_example(ex) for ex in examples])
    _check_ppl(perplexity, model, tokenizer, text, "perplexity of a bfloat16 model on task text",
               hint="compute the loss in float32 (upcast the logits): bfloat16 keeps 8 significant bits, "
               "too few for a sum of thousands of losses", edge=PPL_HINT)


# --- hf_trainer ----------------------------------------------------------------------------------------------
q = LAB.question("hf_trainer", points=3, uses=("make_lm_dataset", "training_args", "trainer"),
                 title="A continued-pretraining run with the Trainer")
ARGS = {"max_steps": 40, "per_device_train_batch_size": 16, "learning_rate": 2e-3, "lr_scheduler_type": "cosine",
        "warmup_steps": 4, "logging_steps": 2, "eval_strategy": "steps", "eval_steps": 10, "save_strategy": "no",
        "seed": 0}


def _reference_blocks(tokenizer, texts: list[str], block_size: int) -> list[list[int]]:
    stream = [t for ids in tokenizer(texts)["input_ids"] for t in [*ids, tokenizer.eos_token_id]]
    return [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def _as_list(x) -> list:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


def _check_dataset(make_lm_dataset, tokenizer, texts: list[str], block_size: int, generator: bool = False) -> None:
    """`generator`: pass the texts as a generator, which can be iterated only once (as when read from a file)."""
    want = _reference_blocks(tokenizer, texts, block_size)
    kind = "a generator of" if generator else ""
    what = f"make_lm_dataset(tokenizer, {kind} {len(texts)} text{'s' * (len(texts) != 1)}, block_size={block_size})"
    what = what.replace("  ", " ")
    if generator:
        ds = call_learner(make_lm_dataset, what, tokenizer, (t for t in texts), block_size,
                   hint="texts may be any iterable of strings, also a generator: go through it once, text by text "
                   "(a generator is empty the second time, and the tokenizer takes only a string or a list)")
    else:
        ds = call_learner(make_lm_dataset, what, tokenizer, texts, block_size)
    check(hasattr(ds, "__len__") and hasattr(ds, "__getitem__"), f"{what} should return a list of dicts.")
    hint = "concatenate <bos> ids <eos> of every text, cut into blocks of block_size, drop the rest"
    if generator and len(ds) == 0 and want:
        hint = "the generator of texts gave nothing: iterate it only once (a generator is empty the second time)"
    assert_equal(len(ds), len(want), f"the number of blocks from {what}", hint=hint)
    for i in sorted({0, len(want) // 2, len(want) - 1} if want else ()):
        item = ds[i]
        assert_type(item, dict, f"item {i} of {what}")
        check("labels" in item, f"Item {i} has no 'labels' (keys: {sorted(item)}): the model then returns no "
              "loss, and the Trainer stops with 'The model did not return a loss from the inputs'.",
              hint="labels = a copy of input_ids: the model shifts them inside")
        for key in ("input_ids", "attention_mask"):
            check(key in item, f"Item {i} has no {key!r} (keys: {sorted(item)}).")
        ids = _as_list(item["input_ids"])
        assert_equal(len(ids), block_size, f"the length of item {i}'s input_ids")
        check(ids == want[i], f"input_ids of block {i} are wrong.",
              hint="tokenize each text (the tokenizer adds <bos>), append eos_token_id, concatenate, then cut",
              received=f"{ids[:8]}...", expected=f"{want[i][:8]}...")
        check(_as_list(item["labels"]) == ids, f"labels of block {i} differ from its input_ids.",
              hint="don't shift the labels yourself: a Hugging Face causal LM shifts them inside")
        check(_as_list(item["attention_mask"]) == [1] * block_size, f"attention_mask of block {i} is not all ones.")


@q.check
def _dataset_args_and_run(make_lm_dataset, training_args, trainer, base):
    _, tokenizer = base
    texts = [world.format_example(ex) for ex in world.task_examples("test", 40, seed=HELD_OUT_SEED)]
    _check_dataset(make_lm_dataset, tokenizer, texts, 32)
    with tempfile.TemporaryDirectory() as folder:
        args = training_args(folder)
    assert_type(args, TrainingArguments, "training_args(output_dir)")
    for name, value in ARGS.items():
        got = getattr(args, name)
        got = got.value if hasattr(got, "value") else got  # enums such as IntervalStrategy.STEPS
        assert_equal(got, value, f"TrainingArguments.{name}", hint=f"pass {name}={value!r}")
    check(args.report_to in ([], ["none"], "none", None), f"report_to is {args.report_to}: the run would try to "
          "log to experiment trackers.", hint='report_to="none"')
    assert_type(trainer, Trainer, "trainer")
    steps = trainer.state.global_step
    check(steps == trainer.args.max_steps, f"trainer ran {steps} of its {trainer.args.max_steps} steps: did "
          "trainer.train() stop with an error?", hint="run the training cell again and read its error")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    check(len(losses) >= 5 and all(math.isfinite(v) for v in losses),
          f"trainer.state.log_history holds {len(losses)} training losses, not all finite: {losses[:6]}",
          hint="logging_steps=2 logs 20 losses in 40 steps")


@q.check(hidden=True)
def _dataset_other(make_lm_dataset, base):
    _, tokenizer = base
    texts = world.corpus(3000, seed=HELD_OUT_SEED).splitlines(keepends=True)
    _check_dataset(make_lm_dataset, tokenizer, texts, 100)


@q.check(hidden=True)
def _dataset_generator_and_edges(make_lm_dataset, base):
    _, tokenizer = base
    texts = [world.format_example(ex) for ex in world.task_examples("test", 30, seed=HELD_OUT_SEED + 1)]
    _check_dataset(make_lm_dataset, tokenizer, texts, 23, generator=True)
    one = world.corpus(400, seed=HELD_OUT_SEED + 1).splitlines(keepends=True)[0]
    _check_dataset(make_lm_dataset, tokenizer, [one], 7)  # a single text, a block size that divides nothing
    _check_dataset(make_lm_dataset, tokenizer, ["tom has 2 cups.\n"], 64)  # shorter than one block: no block at all


# --- hf_continued_pretraining --------------------------------------------------------------------------------
q = LAB.question("hf_continued_pretraining", points=2, uses=("trainer",),
                 title="The model after continued pretraining, on held-out task text", builds_on=("hf_trainer",))


def _task_nats_per_char(model, tokenizer) -> float:
    """Loss per character of held-out task documents; per character, so any tokenizer compares fairly."""
    docs = [world.format_example(ex) for ex in world.task_examples("test", 200, seed=HELD_OUT_SEED)]
    ids = torch.tensor(tokenizer(_join(tokenizer, docs), verbose=False)["input_ids"])
    return heldout_nats(model, ids, 128)[0] / sum(len(d) for d in docs)


@q.check
def _continued(trainer, ctx, base):
    assert_type(trainer, Trainer, "trainer")
    model = copy.deepcopy(trainer.model)  # the trainer is not a model, so the framework passes it as it is
    tokenizer = trainer.processing_class or base[1]
    loss = _task_nats_per_char(model.to(ctx.device), tokenizer)
    base_model, base_tokenizer = _base(base, ctx.device)
    before = _task_nats_per_char(base_model, base_tokenizer)
    assert_above(before - loss, 0.0, "the improvement in nats/char on held-out task text over the base model",
                 hint="train with labels on the task texts; check the learning rate and that training ran")
    assert_below(loss, TASK_NATS_PER_CHAR, "loss on held-out date-task text (nats/char, text the grader generated)",
                 hint=f"the base model gets {before:.2f}; train 40 steps at learning_rate=2e-3 as specified")
