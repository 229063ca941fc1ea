"""Lab 08 - Adapters as swappable specialists, and QLoRA.

References come from peft itself (get_delta_weight, add_weighted_adapter, merge_and_unload, load_adapter's
missing and unexpected keys), from bitsandbytes (the QuantState of each 4-bit layer), from the grader's own models
(the course's base model, a Qwen2 built from a config, Llamas of other depths) with adapters whose A and B are
random, so that every adapter changes the model, and from held-out test examples of a seed the notebook never uses.
The memory budget of a 65B model is counted here from its shape on the meta device.
"""

from __future__ import annotations

import copy
import math
import random
import re
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    PreTrainedModel,
    Qwen2Config,
)

from grader.asserts import (
    CheckFailed,
    assert_above,
    assert_close,
    assert_equal,
    assert_type,
    call_learner,
    check,
    learner_raises,
)
from grader.models import tiny_qwen2
from grader.registry import Lab
from labkit import evals, world, zoo
from labkit.backends import bitsandbytes_4bit_problem

LAB = Lab("08", "Adapters as swappable specialists, and QLoRA")
HELD_OUT_SEED = 9108  # the notebook trains on task seed 0 (train split) and validates on seed 0 (val split)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPECIALISTS = ("dates", "units")
N_TEST = 200
MAX_NEW_TOKENS = 16
# The specialists on N_TEST test examples of the grader's seed. Measured for the solution's recipe (r=8 on all linear
# layers, embeddings and head trained in full; dates: lr 5e-3, 200 steps; units: lr 2e-3, 100 steps) on other seeds
# (LoRA initialisation and batch order) and on 300 test examples: dates exact match 71.3, 59.7, 52.7, 73.7 %
# (seeds 0-3, 2000 training examples) and 70.0, 53.0 % (1000 examples); at lr 3e-3, 64.3 and 38.7 %; one notebook
# run on 1000 examples scored 27 % on validation. 200 steps leave this tiny model on the steep part of its learning
# curve, so the spread is wide: the bar sits far below it and far above an adapter that did not train (the base
# model scores 0 %, and answers no date in ISO form). Units, at 100 steps, learns the form of its answers (digits)
# well before the arithmetic: it is graded on the form.
EXACT_MATCH_BAR = {"dates": 0.15}
FORM_BAR = 0.8  # share of well-formed answers: measured 0.97-1.0 for both adapters; the base model 0
ANSWER_FORM = {"dates": r"\d{4}-\d{2}-\d{2}", "units": r"\d+"}
# QLoRA against the fp32 LoRA of the same recipe, both scored here on the same test examples. Measured on the 4-bit
# base with seeds 0-3: 38.0, 66.3, 69.7, 67.7 % (fp32 with the same seeds: 71.3, 59.7, 52.7, 73.7 %), and in
# notebook runs 45.5 % against 73.5 %, 71.5 % against 27 %: the differences (-36 to +44 points) are the seed
# spread, with no sign of a systematic gap. The QLoRA adapter must reach the fp32 adapter's exact match minus
# QLORA_MARGIN, and QLORA_BAR in any case.
QLORA_MARGIN = 0.45
QLORA_BAR = 0.15
# NF4 with double quantization (bitsandbytes' defaults: blocks of 64 weights, absmax blocks of 256): 4 bits per
# weight, one uint8 absmax per 64 weights, one float32 second-level absmax per 64 * 256 weights.
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
TERMS = ("4-bit linear weights", "16-bit other weights", "LoRA weights", "LoRA gradients", "Adam states")


def _bnb_missing() -> str | None:
    """What the 4-bit questions need where bitsandbytes cannot quantize (no backend for this platform): they are then
    skipped, not counted, as a GPU question is on a CPU."""
    problem = bitsandbytes_4bit_problem()
    return None if problem is None else f"bitsandbytes with a 4-bit backend for this machine ({problem})"


# --- fixtures and helpers ----------------------------------------------------------------------------------------
@LAB.fixture
def base(ctx):
    """The course's base model (float32, eval mode) and its tokenizer; checks copy the model before changing it."""
    return zoo.load_base_model(device=ctx.device)


def _zoo(base, device) -> nn.Module:
    return copy.deepcopy(base[0]).to(device).eval()


def _qwen2(device, width: int = 64, seed: int = HELD_OUT_SEED) -> nn.Module:
    return tiny_qwen2(seed, width=width, device=device, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _lora(r: int = 8, alpha: float = 16, **kw) -> LoraConfig:
    """A LoRA config whose A and B are both random (init_lora_weights=False), so that the adapter changes the model
    from the start, as a trained one does."""
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=kw.pop("target_modules", ALL_LINEAR), lora_dropout=0.0,
                      init_lora_weights=False, **kw)


def _with_adapters(model: nn.Module, adapters: dict[str, LoraConfig], seed: int) -> PeftModel:
    """`model` with the adapters in order (the first one from get_peft_model, so it is the active one)."""
    torch.manual_seed(seed)
    names = list(adapters)
    peft_model = get_peft_model(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, adapters[name])
    return peft_model.eval()


def _scaled(peft_model: PeftModel, std: float = 0.3, seed: int = HELD_OUT_SEED) -> PeftModel:
    """Random LoRA weights of a moderate size: the adapters change the model's greedy answers, not into noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std / math.sqrt(max(p.shape)))
    return peft_model


def _tokens(tokenizer, n: int = 11):
    return tokenizer(["mia has 3 red apples.", "date: 3rd of march 2021", "convert: 3 km 50 m in metres"][: n],
                     return_tensors="pt", padding=True)


@torch.no_grad()
def _logits(model: nn.Module, tokenizer) -> torch.Tensor:
    batch = _tokens(tokenizer).to(next(model.parameters()).device)
    return model(**batch).logits.float().cpu()


def _owner(name: str, adapters) -> str | None:
    parts = name.split(".")
    return next((a for a in adapters if a in parts), None)


def _trainable_reference(model: PeftModel) -> dict:
    out = {name: set() for name in model.peft_config}
    out[None] = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[_owner(name, model.peft_config)].add(name)
    return out


def _deltas_reference(model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    return {name: m.get_delta_weight(adapter).detach() for name, m in model.get_base_model().named_modules()
            if isinstance(m, LoraLayer) and adapter in m.lora_A}


# --- adapters_trainable --------------------------------------------------------------------------------------------
q = LAB.question("adapters_trainable", points=3, uses=("trainable_by_adapter", "train_specialist"),
                 title="Which parameters each adapter trains, after every load; training the right one")


def _compare_trainable(trainable_by_adapter, model: PeftModel, when: str) -> None:
    what = f"trainable_by_adapter(model) {when}"
    got = call_learner(trainable_by_adapter, what, model)
    want = _trainable_reference(model)
    assert_type(got, dict, what)
    check(set(got) == set(want), f"{what}: the keys are wrong.", received=sorted(got, key=str),
          expected=sorted(want, key=str),
          hint="one key per adapter the model holds (model.peft_config), also for adapters with nothing trainable, "
          "and the key None for trainable parameters that belong to no adapter")
    for key, names in want.items():
        mine = got[key]
        check(isinstance(mine, set | frozenset), f"{what}[{key!r}] is a {type(mine).__name__}, not a set.")
        missing, extra = sorted(names - set(mine)), sorted(set(mine) - names)
        if missing or extra:
            owner = "no adapter (the base model's own)" if key is None else f"adapter {key!r}"
            example = f"e.g. missing {missing[0]}" if missing else f"e.g. {extra[0]} should not be there"
            hint = ("a parameter belongs to an adapter when the adapter's name is one of the dot-separated parts of "
                    "its name (lora_A.<adapter>.weight, modules_to_save.<adapter>.weight, ...): compare whole "
                    "parts, not substrings")
            if key is not None and not names and missing == [] and extra:
                hint = "read requires_grad of every parameter: is it the adapter's name that decides, or the flag?"
            if key is not None and len(missing) == len(names) and names:
                hint = ("look at every adapter in model.peft_config, not only the active one: set_adapter and "
                        "load_adapter(is_trainable=True) can leave several adapters trainable")
            raise CheckFailed(f"{what}: the trainable parameters of {owner} are wrong ({example}).", hint,
                              received=f"{len(mine)} names", expected=f"{len(names)} names")


@q.check
def _trainable_after_each_step(trainable_by_adapter, ctx, base):
    torch.manual_seed(HELD_OUT_SEED)
    model = get_peft_model(_zoo(base, ctx.device), _lora(), adapter_name="left")
    _compare_trainable(trainable_by_adapter, model, "after get_peft_model(..., adapter_name='left')")
    model.add_adapter("right", _lora(r=4, alpha=4))
    _compare_trainable(trainable_by_adapter, model, "after add_adapter('right')")
    model.set_adapter("right")
    _compare_trainable(trainable_by_adapter, model, "after set_adapter('right')")
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, selected_adapters=["left"])
        path = Path(folder) / "left" if (Path(folder) / "left").is_dir() else Path(folder)
        model.load_adapter(path, adapter_name="third", is_trainable=True)
    _compare_trainable(trainable_by_adapter, model, "after load_adapter(..., 'third', is_trainable=True)")


@q.check(hidden=True)
def _trainable_edges(trainable_by_adapter, ctx, base):
    # adapter names that are prefixes of each other, a full module copy, and a base parameter unfrozen by hand
    model = _with_adapters(_zoo(base, ctx.device), {"dates": _lora(), "dates2": _lora(modules_to_save=["lm_head"])},
                           HELD_OUT_SEED)
    model.set_adapter("dates2")
    model.base_model.model.model.norm.weight.requires_grad_(True)
    _compare_trainable(trainable_by_adapter, model, "for adapters 'dates' and 'dates2' (one with a full copy of "
                       "lm_head) and the final norm unfrozen by hand")
    model.base_model.set_adapter(["dates", "dates2"])  # several active, both trainable
    _compare_trainable(trainable_by_adapter, model, "with both 'dates' and 'dates2' active")
    qwen = _with_adapters(_qwen2(ctx.device), {"x": _lora(r=2, alpha=2), "y": _lora()}, HELD_OUT_SEED)
    for p in qwen.parameters():
        p.requires_grad_(False)
    _compare_trainable(trainable_by_adapter, qwen, "on a Qwen2 model with everything frozen")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}


@q.check
def _train_specialist_trains_its_adapter(train_specialist, ctx, base):
    model = _with_adapters(_zoo(base, ctx.device), {"dates": _lora(), "units": _lora(r=4)}, HELD_OUT_SEED)
    model.set_adapter("units")  # the other adapter is the trainable one, as after training it
    before = _snapshot(model)
    what = "train_specialist(model, 'dates', 3, 1e-3) while adapter 'units' is the active, trainable one"
    out = call_learner(train_specialist, what, model, "dates", 3, 1e-3)
    check(isinstance(out, list) and len(out) == 3 and all(isinstance(v, float) for v in out),
          f"{what} should return the 3 losses finetune returns.", received=repr(out)[:120])
    owners = {_owner(name, model.peft_config) for name in _changed(model, before)}
    check(owners == {"dates"}, f"{what} changed the parameters of {sorted(owners, key=str)}, not of 'dates' alone.",
          hint="set_adapter(name) first: it makes that adapter active and trainable and freezes the others")


@q.check(hidden=True)
def _train_specialist_refuses(train_specialist, ctx, base):
    model = _with_adapters(_zoo(base, ctx.device), {"dates": _lora(), "units": _lora(r=4)}, HELD_OUT_SEED)
    model.base_model.model.model.norm.weight.requires_grad_(True)  # a base parameter someone unfroze
    before = _snapshot(model)
    what = "train_specialist(model, 'units', 3, 1e-3) with the base model's final norm trainable"
    try:
        train_specialist(model, "units", 3, 1e-3)
    except RuntimeError:
        pass
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as exc:
        raise CheckFailed(f"{what} raised {type(exc).__name__}, not RuntimeError.", received=str(exc)[:200]) from None
    else:
        raise CheckFailed(f"{what} trained instead of refusing.", "after set_adapter, look at trainable_by_adapter: "
                          "anything trainable outside the adapter means a RuntimeError, before training")
    check(not _changed(model, before), f"{what} changed parameters before refusing.",
          hint="check the trainable set before calling finetune")


# --- adapters_specialists ------------------------------------------------------------------------------------------
q = LAB.question("adapters_specialists", points=3, uses=("specialists",),
                 title="Two trained specialists on one frozen base, scored on held-out data",
                 builds_on=("adapters_trainable",))


@q.check
def _specialists(specialists, ctx, base):
    assert_type(specialists, PeftModel, "specialists")
    check(set(SPECIALISTS) <= set(specialists.peft_config), "specialists does not hold an adapter per task.",
          received=sorted(specialists.peft_config), expected=list(SPECIALISTS),
          hint="name each adapter after its task: get_peft_model(..., adapter_name='dates'), add_adapter('units', ...)")
    base_trainable = sorted(_trainable_reference(specialists)[None])
    check(not base_trainable, f"{len(base_trainable)} parameters of the base model itself are trainable, e.g. "
          f"{base_trainable[:1]}: the specialists must share one frozen base.",
          hint="get_peft_model freezes the base; don't set requires_grad on its parameters afterwards")
    model = specialists.to(ctx.device).eval()
    for name in SPECIALISTS:
        task = world.TASKS[name]
        model.set_adapter(name)
        result = evals.evaluate_task(model, base[1], task, task.examples("test", N_TEST, seed=HELD_OUT_SEED))
        hint = (f"train the {name!r} adapter with train_specialist (it activates it first) and the notebook's recipe "
                "(steps, learning rate, trainable embeddings and head)")
        assert_above(_formed(name, result.predictions), FORM_BAR, f"the share of well-formed answers of the "
                     f"{name!r} adapter on {N_TEST} held-out test examples", hint=hint)
        if name in EXACT_MATCH_BAR:
            assert_above(result.overall.rate, EXACT_MATCH_BAR[name], f"exact match of the {name!r} adapter on "
                         f"{N_TEST} held-out test examples ({result.overall})", hint=hint)


def _formed(task_name: str, predictions: list[str]) -> float:
    return sum(re.fullmatch(ANSWER_FORM[task_name], p) is not None for p in predictions) / len(predictions)


# --- adapters_load -------------------------------------------------------------------------------------------------
q = LAB.question("adapters_load", points=2, uses=("load_specialist",),
                 title="Loading an adapter, refusing one made for another base")


def _saved(model: PeftModel, folder: Path, name: str, trained_for: str) -> Path:
    """Save `model`'s adapter `name` and record the base it was trained for, as from_pretrained would."""
    model.peft_config[name].base_model_name_or_path = trained_for
    model.save_pretrained(folder, selected_adapters=[name])
    path = folder / name if (folder / name).is_dir() else folder
    return path


def _state(model: PeftModel, tokenizer) -> tuple:
    return sorted(model.peft_config), model.active_adapter, _logits(model, tokenizer)


def _expect_refusal(load_specialist, model: PeftModel, tokenizer, path: Path, trained_for: str, why: str) -> None:
    before = _state(model, tokenizer)
    what = f"load_specialist(model, path, 'guest') with {why}"
    message = str(learner_raises(
        load_specialist, what, ValueError, model, path, "guest",
        hint="catch peft's error (a RuntimeError listing size mismatches) and raise ValueError",
        if_silent="the adapter was loaded, wrongly: peft loads what fits and says nothing about the rest; check the "
                  "missing_keys and unexpected_keys of what load_adapter returns"))
    check(trained_for in message, f"{what} raised a ValueError whose message does not say which base the adapter "
          "was trained for.", received=message[:300],
          hint="read base_model_name_or_path from the adapter's adapter_config.json (LoraConfig.from_pretrained) "
          "and put it in the message")
    after = _state(model, tokenizer)
    check(after[0] == before[0], f"After {what}, the model's adapters changed.", received=after[0], expected=before[0],
          hint="load_adapter registers the adapter before it fails: delete_adapter it before raising")
    check(after[1] == before[1], f"After {what}, the active adapter changed.", received=after[1], expected=before[1])
    check(torch.allclose(after[2], before[2], atol=1e-6), f"After {what}, the model's outputs changed.")


@q.check
def _load_and_refuse(load_specialist, ctx, base):
    tokenizer = base[1]
    model = _with_adapters(_zoo(base, ctx.device), {"left": _lora()}, HELD_OUT_SEED)
    source = _with_adapters(_zoo(base, ctx.device), {"right": _lora(r=4, alpha=8)}, HELD_OUT_SEED + 1)
    with tempfile.TemporaryDirectory() as folder:
        path = _saved(source, Path(folder) / "good", "right", "grader/tiny-llama")
        call_learner(load_specialist, "load_specialist(model, path, 'right') with a compatible adapter", model, path,
                     "right")
        check("right" in model.peft_config, "After load_specialist(model, path, 'right'), the model has no adapter "
              "'right'.", received=sorted(model.peft_config))
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad and ".right." in n)
        check(not trainable, "load_specialist left the loaded adapter trainable: it is for serving.",
              hint="load_adapter(..., is_trainable=False), the default")
        check(model.active_adapter == "left", "load_specialist changed the active adapter.",
              received=model.active_adapter, expected="left")
        model.set_adapter("right")
        assert_close(_logits(model, tokenizer), _logits(source, tokenizer),
                     "logits with the loaded adapter active, against the model it was saved from", atol=1e-5)
        model.set_adapter("left")
        qwen = _with_adapters(_qwen2(ctx.device), {"q": _lora()}, HELD_OUT_SEED)
        path = _saved(qwen, Path(folder) / "qwen", "q", "grader/qwen2-width-64")
        _expect_refusal(load_specialist, model, tokenizer, path, "grader/qwen2-width-64",
                        "an adapter saved for a Qwen2 model of width 64")


@q.check(hidden=True)
def _refuse_silent_partial_loads(load_specialist, ctx, base):
    tokenizer = base[1]
    model = _with_adapters(_zoo(base, ctx.device), {"left": _lora(), "right": _lora(r=4)}, HELD_OUT_SEED)
    with tempfile.TemporaryDirectory() as folder:
        for layers in (2, 6):  # same widths: peft loads what matches and returns the rest as missing/unexpected keys
            config = copy.deepcopy(base[0].config)
            config.num_hidden_layers = layers
            torch.manual_seed(HELD_OUT_SEED)
            other = _with_adapters(AutoModelForCausalLM.from_config(config).to(ctx.device), {"o": _lora()},
                                   HELD_OUT_SEED)
            path = _saved(other, Path(folder) / f"l{layers}", "o", f"grader/llama-{layers}-layers")
            _expect_refusal(load_specialist, model, tokenizer, path, f"grader/llama-{layers}-layers",
                            f"an adapter saved for a {layers}-layer Llama of the same width (peft raises nothing)")
        source = _with_adapters(_zoo(base, ctx.device), {"right": _lora(r=2)}, HELD_OUT_SEED + 2)
        path = _saved(source, Path(folder) / "again", "right", "grader/tiny-llama")
        before = _logits(model.eval(), tokenizer)
        learner_raises(load_specialist, "load_specialist(model, path, 'right'), where 'right' is already loaded,",
                       ValueError, model, path, "right", hint="refuse a name that is taken with a ValueError")
        model.set_adapter("right")
        after = _logits(model, tokenizer)
        model.set_adapter("left")
        check(torch.allclose(_logits(model, tokenizer), before, atol=1e-6) and after.shape == before.shape,
              "load_specialist changed the model when asked to load under a name that is taken.")
        model.set_adapter("right")
        ref = _with_adapters(_zoo(base, ctx.device), {"left": _lora(), "right": _lora(r=4)}, HELD_OUT_SEED)
        ref.set_adapter("right")
        check(torch.allclose(after, _logits(ref, tokenizer), atol=1e-5), "load_specialist(model, path, 'right'), "
              "where an adapter 'right' was already loaded, overwrote its weights.",
              hint="load_adapter under a name that is taken loads the new weights into it: refuse with ValueError")


# --- adapters_routing ----------------------------------------------------------------------------------------------
q = LAB.question("adapters_routing", points=3, uses=("route", "serve"),
                 title="Routing requests to specialists and serving a mixed batch")


def _requests(seed: int, per_task: dict[str, int]) -> tuple[list[str], list[str | None]]:
    reqs = []
    for name, n in per_task.items():
        task = world.TASKS[name]
        reqs += [(task.query(ex), name if name in SPECIALISTS else None) for ex in task.examples("test", n, seed=seed)]
    random.Random(seed).shuffle(reqs)
    return [r for r, _ in reqs], [a for _, a in reqs]


def _prompt(tokenizer, request: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                         add_generation_prompt=True)


def _served_reference(model: PeftModel, tokenizer, requests: list[str], adapters: list[str | None]) -> list[set[str]]:
    """Every acceptable answer of each request: with its adapter, the request alone (no padding) or batched with the
    other requests of its adapter in request order (left padding can change a near-tie)."""
    out = [set() for _ in requests]
    for name in dict.fromkeys(adapters):
        idx = [i for i, a in enumerate(adapters) if a == name]
        if name is None:
            with model.disable_adapter():
                runs = [evals.generate(model, tokenizer, [_prompt(tokenizer, requests[i]) for i in idx],
                                       MAX_NEW_TOKENS)]
                runs += [[evals.generate(model, tokenizer, [_prompt(tokenizer, requests[i])], MAX_NEW_TOKENS)[0]
                          for i in idx]]
        else:
            model.set_adapter(name)
            runs = [evals.generate(model, tokenizer, [_prompt(tokenizer, requests[i]) for i in idx], MAX_NEW_TOKENS)]
            runs += [[evals.generate(model, tokenizer, [_prompt(tokenizer, requests[i])], MAX_NEW_TOKENS)[0]
                      for i in idx]]
        for run in runs:
            for i, text in zip(idx, run, strict=True):
                out[i].add(world.Task.parse(text))
    return out


def _check_served(serve, model: PeftModel, tokenizer, requests: list[str], adapters: list[str | None], what: str,
                  as_generator: bool = False) -> None:
    want = _served_reference(copy.deepcopy(model), tokenizer, requests, adapters)
    given = (r for r in requests) if as_generator else list(requests)
    got = call_learner(serve, what, model, tokenizer, given)
    assert_type(got, list, what)
    assert_equal(len(got), len(requests), f"the number of answers from {what}", hint="one answer per request")
    wrong = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g not in w]
    if wrong:
        i = wrong[0]
        in_other_place = sum(got[j] in want[i] for j in range(len(got)) if j != i)
        hint = ("answers must come back in the order of the requests, not grouped by adapter"
                if in_other_place else
                "route each request, set_adapter(its adapter) for its group (model.disable_adapter() when it has "
                "none), generate with labkit.evals.generate from the chat-template prompt, and parse the answer")
        raise CheckFailed(f"{what}: {len(wrong)} of {len(requests)} answers are wrong; the first is request {i} "
                          f"({requests[i]!r}, for adapter {adapters[i]!r}).", hint,
                          received=repr(got[i]), expected=repr(sorted(want[i])[0]))


@q.check
def _routing_and_serving(route, serve, ctx, base):
    requests, adapters = _requests(HELD_OUT_SEED, {"dates": 6, "units": 6, "qa": 3, "extract": 2})
    for request, adapter in zip(requests, adapters, strict=True):
        got = call_learner(route, f"route({request!r})", request)
        assert_equal(got, adapter, f"route({request!r})",
                     hint="a request goes to the specialist whose task's query prefix it starts with ('date: ' -> "
                     "'dates', 'convert: ' -> 'units'); any other request to None (the base model)")
    model = _scaled(_with_adapters(_zoo(base, ctx.device), {"dates": _lora(), "units": _lora(r=4)}, HELD_OUT_SEED))
    _check_served(serve, model, base[1], requests, adapters, f"serve(model, tokenizer, {len(requests)} mixed requests)")


@q.check(hidden=True)
def _serving_edges(route, serve, ctx, base):
    tokenizer = base[1]
    model = _scaled(_with_adapters(_zoo(base, ctx.device), {"units": _lora(), "dates": _lora(r=4)}, HELD_OUT_SEED))
    requests, adapters = _requests(HELD_OUT_SEED + 1, {"units": 1})
    _check_served(serve, model, tokenizer, requests, adapters, "serve(model, tokenizer, [one request])")
    requests, adapters = _requests(HELD_OUT_SEED + 2, {"dates": 5})
    _check_served(serve, model, tokenizer, requests, adapters, "serve(model, tokenizer, requests all for 'dates')")
    requests, adapters = _requests(HELD_OUT_SEED + 3, {"dates": 3, "qa": 2, "units": 3})
    _check_served(serve, model, tokenizer, requests, adapters, "serve(model, tokenizer, a generator of requests)",
                  as_generator=True)
    assert_equal(call_learner(serve, "serve(model, tokenizer, [])", model, tokenizer, []), [],
                 "serve(model, tokenizer, [])")
    qwen = _scaled(_with_adapters(_qwen2(ctx.device), {"dates": _lora(), "units": _lora()}, HELD_OUT_SEED))
    requests, adapters = _requests(HELD_OUT_SEED + 4, {"units": 3, "dates": 3, "qa": 1})
    _check_served(serve, qwen, tokenizer, requests, adapters,
                  "serve on a Qwen2 model with adapters 'dates' and 'units'")


# --- adapters_deltas -----------------------------------------------------------------------------------------------
q = LAB.question("adapters_deltas", points=2, uses=("lora_deltas",), title="An adapter's weight deltas, s·B·A")


def _check_deltas(lora_deltas, model: PeftModel, adapter: str, what: str) -> None:
    got = call_learner(lora_deltas, what, model, adapter)
    want = _deltas_reference(model, adapter)
    assert_type(got, dict, what)
    check(set(got) == set(want), f"{what}: the module names are wrong.", received=sorted(got)[:3],
          expected=sorted(want)[:3], hint="one entry per LoRA layer that holds the adapter, named as in "
          "model.get_base_model().named_modules(), e.g. 'model.layers.0.self_attn.q_proj'")
    for name, delta in want.items():
        mine = got[name]
        assert_type(mine, torch.Tensor, f"{what}[{name!r}]")
        hint = "ΔW = scaling · B @ A, with B = lora_B[adapter].weight (out, r), A = lora_A[adapter].weight (r, in)"
        if isinstance(mine, torch.Tensor) and mine.shape == delta.shape:
            layer = model.get_base_model().get_submodule(name)
            raw = layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight
            if torch.allclose(mine.detach().cpu(), raw.detach().cpu(), atol=1e-7):
                hint = "multiply by the layer's scale: module.scaling[adapter] (lora_alpha / r for plain LoRA)"
        assert_close(mine.detach().float().cpu(), delta.float().cpu(), f"{what}[{name!r}]", rtol=1e-5, atol=1e-7,
                     hint=hint)


@q.check
def _deltas(lora_deltas, ctx, base):
    model = _with_adapters(_zoo(base, ctx.device), {"left": _lora(r=8, alpha=16), "right": _lora(r=4, alpha=12)},
                           HELD_OUT_SEED)
    _check_deltas(lora_deltas, model, "left", "lora_deltas(model, 'left')")
    _check_deltas(lora_deltas, model, "right", "lora_deltas(model, 'right') (not the active adapter)")


@q.check(hidden=True)
def _deltas_other_models(lora_deltas, ctx, base):
    model = _with_adapters(_zoo(base, ctx.device), {"qv": _lora(r=2, alpha=5, target_modules=["q_proj", "v_proj"]),
                                                    "rs": _lora(r=16, alpha=8, use_rslora=True)}, HELD_OUT_SEED)
    _check_deltas(lora_deltas, model, "qv", "lora_deltas of an adapter on q_proj and v_proj only")
    _check_deltas(lora_deltas, model, "rs", "lora_deltas of an rsLoRA adapter (scale alpha / sqrt(r))")
    qwen = _with_adapters(_qwen2(ctx.device), {"x": _lora(r=3, alpha=7)}, HELD_OUT_SEED)
    _check_deltas(lora_deltas, qwen, "x", "lora_deltas on a Qwen2 model (k_proj and v_proj are 64 -> 32)")


# --- adapters_combine ----------------------------------------------------------------------------------------------
q = LAB.question("adapters_combine", points=3, uses=("combine", "linear_cross_terms"),
                 title="Combining adapters: cat is exact, linear has cross terms, names are not reused silently")


def _weighted_sum(model: PeftModel, adapters, weights) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for adapter, w in zip(adapters, weights, strict=True):
        for name, delta in _deltas_reference(model, adapter).items():
            out[name] = out.get(name, 0) + w * delta
    return out


def _check_combined(model: PeftModel, name: str, adapters, weights, what: str, hint: str) -> None:
    check(name in model.peft_config, f"After {what}, the model has no adapter {name!r}.",
          received=sorted(model.peft_config), hint="combine adds the adapter with model.add_weighted_adapter")
    got, want = _deltas_reference(model, name), _weighted_sum(model, adapters, weights)
    for module, delta in want.items():
        assert_close(got[module], delta, f"the delta of {name!r} at {module} after {what}", rtol=1e-4, atol=1e-6,
                     hint=hint)


def _combine_twice(combine, model: PeftModel, adapters, first, second, name: str) -> None:
    what = f"combine(model, {adapters}, {first}, {name!r}, 'cat')"
    call_learner(combine, what, model, adapters, first, name, "cat")
    _check_combined(model, name, adapters, first, what, "combination_type='cat' stacks the pairs: Σ wᵢ·ΔWᵢ exactly")
    again = f"a second combine(model, {adapters}, {second}, {name!r}, 'cat')"
    if learner_raises(combine, again, ValueError, model, adapters, second, name, "cat",
                      hint="refuse a taken name with ValueError, or delete_adapter it first") is not None:
        return  # refusing a name that is taken is one of the two valid answers
    _check_combined(model, name, adapters, second, again,
                    "add_weighted_adapter returns silently, changing nothing, when the name exists: "
                    "delete_adapter(name) first (or raise ValueError)")


def _check_cross(linear_cross_terms, model: PeftModel, adapters, weights, what: str) -> None:
    ref = copy.deepcopy(model)
    ref.add_weighted_adapter(list(adapters), list(weights), "grader_linear", combination_type="linear")
    want = {m: d - _weighted_sum(ref, adapters, weights)[m] for m, d in _deltas_reference(ref, "grader_linear").items()}
    got = call_learner(linear_cross_terms, what, model, adapters, weights)
    assert_type(got, dict, what)
    check(set(got) == set(want), f"{what}: the module names are wrong.", received=sorted(got)[:3],
          expected=sorted(want)[:3], hint="one entry per LoRA layer, named as in model.get_base_model()")
    for module, delta in want.items():
        hint = ("the terms Bᵢ·Aⱼ with i ≠ j only, each times √|wᵢsᵢ|·sign(wⱼsⱼ)·√|wⱼsⱼ| (the sign rides on A); "
                "the diagonal i = j is the exact part")
        assert_close(torch.as_tensor(got[module]).detach().float().cpu(), delta.float().cpu(),
                     f"{what}[{module!r}]", rtol=1e-4, atol=1e-6, hint=hint)


@q.check
def _combine(combine, linear_cross_terms, ctx, base):
    model = _with_adapters(_zoo(base, ctx.device), {"left": _lora(r=8, alpha=16), "right": _lora(r=8, alpha=8)},
                           HELD_OUT_SEED)
    _combine_twice(combine, model, ["left", "right"], [0.7, 0.4], [1.0, 1.5], "mix")
    _check_cross(linear_cross_terms, model, ["left", "right"], [0.7, 0.4],
                 "linear_cross_terms(model, ['left', 'right'], [0.7, 0.4])")


@q.check(hidden=True)
def _combine_edges(combine, linear_cross_terms, ctx, base):
    adapters = {"one": _lora(r=4, alpha=8), "two": _lora(r=4, alpha=2), "six": _lora(r=4, alpha=24)}
    model = _with_adapters(_zoo(base, ctx.device), adapters, HELD_OUT_SEED + 1)
    _combine_twice(combine, model, ["one", "two", "six"], [0.5, -1.0, 0.25], [-0.3, 0.2, 2.0], "blend")
    _check_cross(linear_cross_terms, model, ["one", "two", "six"], [0.5, -1.0, 0.25],
                 "linear_cross_terms with three adapters and a negative weight")
    qwen = _with_adapters(_qwen2(ctx.device), {"x": _lora(r=4, alpha=4), "y": _lora(r=4, alpha=16)}, HELD_OUT_SEED)
    _check_cross(linear_cross_terms, qwen, ["x", "y"], [1.0, 1.0], "linear_cross_terms on a Qwen2 model")
    got = call_learner(combine, "combine(model, ['x', 'y'], [1.0, 1.0], 'xy', 'linear')", qwen, ["x", "y"],
                       [1.0, 1.0], "xy", "linear")
    check("xy" in qwen.peft_config, "combine(..., 'xy', 'linear') added no adapter 'xy'.", received=got)
    ref = copy.deepcopy(qwen)
    ref.delete_adapter("xy")
    ref.add_weighted_adapter(["x", "y"], [1.0, 1.0], "xy", combination_type="linear")
    for module, delta in _deltas_reference(ref, "xy").items():
        assert_close(_deltas_reference(qwen, "xy")[module], delta, f"the 'linear' combination at {module}",
                     hint="pass combination_type on to add_weighted_adapter")


# --- adapters_deploy -----------------------------------------------------------------------------------------------
q = LAB.question("adapters_deploy", points=2, uses=("deploy",), title="Deploying one specialist: merge_and_unload")


def _check_deploy(deploy, model: PeftModel, tokenizer, adapter: str, what: str) -> None:
    before = _state(model, tokenizer)
    ref = copy.deepcopy(model)
    ref.set_adapter(adapter)
    want = _logits(ref, tokenizer)
    merged = call_learner(deploy, what, model, adapter)
    check(isinstance(merged, PreTrainedModel) and not isinstance(merged, PeftModel),
          f"{what} returned a {type(merged).__name__}, not a plain transformers model.",
          hint="merge_and_unload() returns the base model class with the adapter folded into its weights")
    lora = [name for name, m in merged.named_modules() if isinstance(m, LoraLayer)]
    check(not lora, f"{what} still has LoRA layers, e.g. {lora[:1]}.", hint="merge_and_unload, not merge_adapter")
    got = _logits(merged.eval(), tokenizer)
    hint = "set_adapter(adapter) before merging: merge_and_unload() merges the active adapter"
    assert_close(got, want, f"logits of {what} against the model with {adapter!r} active", atol=2e-4, rtol=1e-4,
                 hint=hint)
    after = _state(model, tokenizer)
    check(after[0] == before[0] and after[1] == before[1] and torch.allclose(after[2], before[2], atol=1e-6),
          f"{what} changed the model it was given (its adapters, active adapter or outputs).",
          hint="merge_and_unload changes the model in place: merge a copy.deepcopy of it")


@q.check
def _deploy(deploy, ctx, base):
    model = _scaled(_with_adapters(_zoo(base, ctx.device), {"left": _lora(), "right": _lora(r=4)}, HELD_OUT_SEED))
    _check_deploy(deploy, model, base[1], "right", "deploy(model, 'right') while 'left' is active")


@q.check(hidden=True)
def _deploy_full_copies(deploy, ctx, base):
    adapters = {"left": _lora(modules_to_save=["lm_head"]), "right": _lora(r=4, modules_to_save=["lm_head"])}
    model = _scaled(_with_adapters(_zoo(base, ctx.device), adapters, HELD_OUT_SEED))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save.right" in name:
                p.add_(0.05 * torch.randn_like(p))
    _check_deploy(deploy, model, base[1], "right", "deploy(model, 'right') of adapters with their own lm_head copy")
    model.set_adapter("right")
    _check_deploy(deploy, model, base[1], "left", "deploy(model, 'left') while 'right' is active")


# --- qlora_load ----------------------------------------------------------------------------------------------------
q = LAB.question("qlora_load", points=2, uses=("load_4bit",), title="The base model in 4-bit NF4, double-quantized",
                 requires=_bnb_missing)


def _bnb_config(**kw) -> BitsAndBytesConfig:
    settings = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": torch.float32}
    settings.update(kw)
    return BitsAndBytesConfig(**settings)


def _load_4bit_reference(path, **kw) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=_bnb_config(**kw), dtype=torch.float32)


def _check_4bit(load_4bit, path, tokenizer, what: str) -> None:
    import bitsandbytes as bnb

    model = call_learner(load_4bit, what, str(path))
    check(isinstance(model, PreTrainedModel), f"{what} returned a {type(model).__name__}, not a model.")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in name}
    plain = [name for name, m in layers.items() if not isinstance(m, bnb.nn.Linear4bit)]
    check(not plain, f"{what}: {len(plain)} linear layers are not 4-bit, e.g. {plain[:1]}.",
          hint="from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...)); the "
          "load_in_4bit= keyword of from_pretrained is gone in transformers 5")
    layer = next(iter(layers.values()))
    state = layer.weight.quant_state
    assert_equal(state.quant_type, "nf4", "the 4-bit type of the linear layers",
                 hint="bnb_4bit_quant_type='nf4': bitsandbytes' default is fp4")
    check(bool(state.nested or getattr(state, "original_nested", False)), "The linear layers' absmax statistics are "
          "not quantized themselves (no double quantization).", hint="bnb_4bit_use_double_quant=True")
    assert_equal(layer.compute_dtype, torch.float32, "compute_dtype of the 4-bit layers",
                 hint="bnb_4bit_compute_dtype=torch.float32: the CPU computes in float32 here")
    ref = _load_4bit_reference(path)
    assert_close(_logits(model, tokenizer), _logits(ref, tokenizer), f"logits of {what}", rtol=0, atol=1e-5,
                 hint="load with the lab's BitsAndBytesConfig and dtype=torch.float32")


@q.check
def _load_4bit(load_4bit, base):
    _check_4bit(load_4bit, zoo.base_model_path(), base[1], "load_4bit(zoo.base_model_path())")


@q.check(hidden=True)
def _load_4bit_qwen(load_4bit, base):
    with tempfile.TemporaryDirectory() as folder:
        _qwen2("cpu", width=128).save_pretrained(folder)
        _check_4bit(load_4bit, folder, base[1], "load_4bit of a Qwen2 model saved in a folder")


# --- qlora_bytes ---------------------------------------------------------------------------------------------------
q = LAB.question("qlora_bytes", points=2, uses=("linear_weight_bytes",),
                 title="What a 4-bit linear layer really stores: codes, absmax, second-level statistics",
                 requires=_bnb_missing)


def _bytes_reference(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            n = m.weight.numel() * m.weight.element_size()
            state = getattr(m.weight, "quant_state", None)
            if state is not None:
                n += state.absmax.numel() * state.absmax.element_size()
                if state.nested:
                    n += state.state2.absmax.numel() * state.state2.absmax.element_size()
                    n += state.offset.numel() * state.offset.element_size()
            out[name] = n
    return out


def _check_bytes(linear_weight_bytes, model: nn.Module, what: str) -> None:
    got = call_learner(linear_weight_bytes, what, model)
    want = _bytes_reference(model)
    assert_type(got, dict, what)
    check(set(got) == set(want), f"{what}: the layer names are wrong.", received=sorted(got)[:3],
          expected=sorted(want)[:3], hint="one entry per nn.Linear (bitsandbytes' Linear4bit is one), lm_head included")
    for name, n in want.items():
        mine = got[name]
        if mine == n:
            continue
        m = model.get_submodule(name)
        state = getattr(m.weight, "quant_state", None)
        if state is None:
            hint = "a layer that is not quantized stores numel × element_size bytes (4 per float32 weight)"
        elif mine == m.weight.numel() * m.weight.element_size():
            hint = "the packed codes are not all: add the absmax statistics that live in weight.quant_state"
        else:
            hint = ("codes (weight.numel() bytes of uint8) + quant_state.absmax, and with double quantization "
                    "quant_state.state2.absmax and quant_state.offset: read each tensor's numel × element_size")
        raise CheckFailed(f"{what}[{name!r}] is wrong.", hint, received=mine, expected=n)


@q.check
def _bytes(linear_weight_bytes, base):
    _check_bytes(linear_weight_bytes, _load_4bit_reference(zoo.base_model_path()), "linear_weight_bytes(model_4bit)")
    _check_bytes(linear_weight_bytes, copy.deepcopy(base[0]).cpu(), "linear_weight_bytes(fp32 base model)")


@q.check(hidden=True)
def _bytes_other_settings(linear_weight_bytes, base):
    path = zoo.base_model_path()
    _check_bytes(linear_weight_bytes, _load_4bit_reference(path, bnb_4bit_use_double_quant=False),
                 "linear_weight_bytes of a 4-bit model without double quantization")
    _check_bytes(linear_weight_bytes, _load_4bit_reference(path, bnb_4bit_quant_type="fp4"),
                 "linear_weight_bytes of an fp4 model")
    model = _load_4bit_reference(path).eval()
    with torch.no_grad():  # on CPUs with AVX512-BF16 an eval forward repacks the weights for bitsandbytes' kernel
        model(**_tokens(base[1]))
    _check_bytes(linear_weight_bytes, model, "linear_weight_bytes of a 4-bit model after an eval forward pass")
    _check_bytes(linear_weight_bytes, copy.deepcopy(base[0]).cpu().to(torch.bfloat16),
                 "linear_weight_bytes of a bfloat16 model")


# --- qlora_trained -------------------------------------------------------------------------------------------------
q = LAB.question("qlora_trained", points=3, uses=("qlora", "specialists"),
                 title="LoRA on the 4-bit base: frozen base, accuracy close to the fp32 LoRA",
                 builds_on=("adapters_specialists",), requires=_bnb_missing)


@q.check
def _qlora(qlora, specialists, ctx, base):
    import bitsandbytes as bnb

    check(qlora is not None, "qlora is None: the QLoRA cells did not run.",
          hint="run the QLoRA section; it needs a usable bitsandbytes")
    assert_type(qlora, PeftModel, "qlora")
    four_bit = [m for m in qlora.modules() if isinstance(m, bnb.nn.Linear4bit)]
    check(bool(four_bit), "qlora has no 4-bit layers: its base is not the 4-bit model.",
          hint="get_peft_model(prepare_model_for_kbit_training(load_4bit(path)), config)")
    trainable = _trainable_reference(qlora)
    check(not trainable[None], f"{len(trainable[None])} parameters of the 4-bit base are trainable, e.g. "
          f"{sorted(trainable[None])[:1]}.", hint="prepare_model_for_kbit_training freezes the base; LoRA (and the "
          "adapter's own copies) are what trains")
    check(any(trainable.values()), "No parameter of qlora is trainable: was it trained?",
          hint="prepare_model_for_kbit_training before get_peft_model, not after (it freezes everything)")
    task = world.TASKS["dates"]
    examples = task.examples("test", N_TEST, seed=HELD_OUT_SEED)
    fp32 = specialists.to(ctx.device).eval()
    fp32.set_adapter("dates")
    reference = evals.evaluate_task(fp32, base[1], task, examples).overall
    result = evals.evaluate_task(qlora.eval(), base[1], task, examples)
    hint = "train it with the same recipe as the fp32 'dates' adapter (train_specialist, the same steps and lr)"
    assert_above(_formed("dates", result.predictions), FORM_BAR,
                 f"the share of well-formed answers of qlora on {N_TEST} held-out dates examples", hint=hint)
    bar = max(QLORA_BAR, reference.rate - QLORA_MARGIN)
    assert_above(result.overall.rate, bar, f"exact match of qlora on {N_TEST} held-out dates examples "
                 f"({result.overall}; the fp32 'dates' specialist: {reference}; the bar is the larger of {QLORA_BAR:g} "
                 f"and the fp32 score minus {QLORA_MARGIN:g})", hint=hint)


# --- qlora_65b -----------------------------------------------------------------------------------------------------
q = LAB.question("qlora_65b", points=3, uses=("qlora_memory",), title="Fine-tuning 65B in 48 GB: the budget")

LLAMA_65B = {"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 64, "vocab_size": 32000}


def _memory_reference(config, r: int) -> dict[str, float]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in name]
    n_linear = sum(m.weight.numel() for m in linears)
    n_other = sum(p.numel() for p in model.parameters()) - n_linear
    n_lora = sum(r * (m.in_features + m.out_features) for m in linears)
    return dict(zip(TERMS, (n_linear * NF4_BITS / 8, 2 * n_other, 2 * n_lora, 2 * n_lora, 8 * n_lora), strict=True))


HINTS = {
    "4-bit linear weights": "every weight matrix of a Linear inside the decoder layers at 4 + 8/64 + 32/(64·256) bits "
                            "(NF4 codes, a uint8 absmax per 64 weights, a float32 absmax per 256 absmaxes)",
    "16-bit other weights": "every other parameter (embeddings, head, norms, biases) at 2 bytes, each counted once "
                            "(a tied head shares the embedding's tensor)",
    "LoRA weights": "r·(d_in + d_out) per adapted Linear, every Linear inside the decoder layers, at 2 bytes (bf16)",
    "LoRA gradients": "one bf16 gradient per LoRA weight",
    "Adam states": "two float32 moments per LoRA weight: 8 bytes each",
}


def _check_memory(qlora_memory, config, r: int, what: str) -> None:
    got = call_learner(qlora_memory, what, config, r)
    want = _memory_reference(config, r)
    assert_type(got, dict, what)
    check(set(got) == set(TERMS), f"{what}: the keys are wrong.", received=sorted(got), expected=list(TERMS))
    for term, n in want.items():
        assert_close(float(got[term]), n, f"{what}[{term!r}] (bytes)", rtol=1e-6, hint=HINTS[term])


@q.check
def _memory_65b(qlora_memory):
    _check_memory(qlora_memory, LlamaConfig(**LLAMA_65B), 64, "qlora_memory(LLaMA-65B config, r=64)")


@q.check(hidden=True)
def _memory_other_shapes(qlora_memory):
    llama3 = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256)
    _check_memory(qlora_memory, llama3, 16, "qlora_memory(Llama-3-8B config (grouped-query attention), r=16)")
    qwen = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    _check_memory(qlora_memory, qwen, 8, "qlora_memory(Qwen2-0.5B config: q/k/v biases, tied head, r=8)")
