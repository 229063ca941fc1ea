"""The course's base models: pretrained once on the synthetic corpus, cached, then loaded in seconds.

A base model is a small Llama-style decoder in Hugging Face format plus a byte-level BPE tokenizer,
both made by a fixed, seeded recipe (``RECIPES``) from ``world.corpus``. The first use builds it
(about two minutes on a laptop CPU) into a per-user cache; later uses check it and load it:

    model, tokenizer = load_base_model()          # builds on first use
    path = base_model_path()                      # a plain directory: AutoModelForCausalLM.from_pretrained(path)

The cache lives in ``$SPECIALIST_LABS_CACHE/models/<name>`` (default ``~/.cache/specialist-labs``).
Every load checks the recorded file hashes, the recipe and ``world.DATA_VERSION``; a corrupted or
stale model is rebuilt, saying why. Builds happen in a temporary directory that is renamed into
place under a lock file, so two processes starting at once never see (or leave) a half-written model.

Documents: the tokenizer puts ``<bos>`` in front of every text it encodes, and pretraining sees each
corpus document as ``<bos> text "\\n" <eos>``. So a prompt looks like the start of a document, and
``generate`` stops by itself (on ``<eos>``) at the end of one.

Specialists: ``specialist_path("dates")`` is the base model fully fine-tuned on a task by Lab 06's recipe
(``SPECIALIST_RECIPE``), built once into ``models/<name>-<task>`` next to the base model the same way (lock,
temporary directory, recorded hashes), and rebuilt when it is stale: another zoo version, data version or recipe,
or a base model whose weights changed. Later labs load it with ``from_pretrained`` like the base model.

For instructors and CI: ``python -m labkit.zoo build [--name N] [--rebuild]`` and ``python -m labkit.zoo info``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import filelock  # a dependency of huggingface_hub, hence always there with transformers
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tokenizers import processors
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from labkit import world
from labkit.bpe import byte_level_bpe
from labkit.lm import cosine_lr, document_stream, heldout_nats
from labkit.sft import finetune

__all__ = ["RECIPES", "Recipe", "SPECIALIST_RECIPE", "SpecialistRecipe", "base_model_path", "cache_dir",
           "cache_problem", "heldout_loss", "load_base_model", "model_info", "specialist_info", "specialist_path",
           "specialist_problem"]

CACHE_ENV = "SPECIALIST_LABS_CACHE"
META_FILE = "labkit.json"
# Bump when the build code changes what a recipe produces: every cached model then counts as stale.
ZOO_VERSION = 2  # 2: the tokenizer has a chat template
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2
PAD, BOS, EOS = SPECIAL_TOKENS
# The zoo tokenizer's chat template, so `tokenizer.apply_chat_template` works as for a real chat model:
#   <bos>user:\n{question}\nassistant:\n{answer}<eos>
# The generation prompt ends with a newline, so the answer's first token never merges with the prompt's last one:
# the tokens of prompt + answer start with the tokens of the prompt. {% generation %} marks the assistant's tokens
# (return_assistant_tokens_mask=True), <eos> included: a fine-tuned model learns to stop.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'assistant:\\n' -}}{% generation %}{{- message['content'] + eos_token -}}{% endgeneration %}"
    "{%- else -%}{{- message['role'] + ':\\n' + message['content'] + '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'assistant:\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a base model's weights; changing any field makes its cache stale.

    Widths are multiples of 64 because bitsandbytes' 4-bit CPU kernels need every Linear's
    out_features % 64 == 0 (q/k/v/o, MLP, and the LM head, whose width is the vocabulary).
    """

    # architecture (Llama: RMSNorm, RoPE, SwiGLU MLP, no biases, untied LM head)
    vocab_size: int = 512  # byte-level BPE: 256 bytes + 3 special tokens + 253 merges
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    d_ff: int = 384
    context: int = 128  # tokens, about 300 characters or 6 documents
    # data: a seeded slice of world.corpus for training, another seed for the held-out loss
    seed: int = 0
    tokenizer_chars: int = 400_000
    train_chars: int = 3_000_000  # about 1.2M tokens: one pass at the default steps and batch size
    heldout_seed: int = 1_000_003
    heldout_chars: int = 100_000
    # optimisation: AdamW, linear warm-up then cosine decay to min_lr
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        head_dim, rest = divmod(self.d_model, self.n_heads)
        widths = {"vocab_size": self.vocab_size, "d_model": self.d_model, "d_ff": self.d_ff,
                  "n_kv_heads * head_dim": self.n_kv_heads * head_dim}
        bad = {k: v for k, v in widths.items() if v % 64}
        if rest or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model must split evenly into n_heads, and n_heads into n_kv_heads")
        if bad:
            raise ValueError(f"widths must be multiples of 64 (bitsandbytes 4-bit on CPU): {bad}")
        if self.warmup_steps >= self.steps:
            raise ValueError("warmup_steps must be smaller than steps")


RECIPES: dict[str, Recipe] = {
    "tiny-llama": Recipe(),
}


@dataclass(frozen=True)
class SpecialistRecipe:
    """Lab 06's full fine-tune (labkit.sft.finetune, AdamW, warm-up + cosine), on CPU in float32; changing any field
    makes every cached specialist stale."""

    train_examples: int = 2000  # task.examples("train", train_examples, seed=seed)
    seed: int = 0
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 16


SPECIALIST_RECIPE = SpecialistRecipe()


# --------------------------------------------------------------------------------------------
# Cache: where models live and how we know they are intact and current
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache root: $SPECIALIST_LABS_CACHE, else ~/.cache/specialist-labs (or $XDG_CACHE_HOME)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "specialist-labs"


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"no base model named {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_problem(path: Path) -> tuple[dict, str | None]:
    """(the recorded metadata, why a cached directory can't be used before looking at its recipe and files)."""
    if not path.is_dir():
        return {}, "missing"
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return {}, f"corrupted ({META_FILE} is missing or unreadable)"
    if meta.get("zoo_version") != ZOO_VERSION:
        return meta, f"stale (built by zoo version {meta.get('zoo_version')}, this is {ZOO_VERSION})"
    if meta.get("data_version") != world.DATA_VERSION:
        return meta, (f"stale (built for DATA_VERSION {meta.get('data_version')}, the data is now "
                      f"{world.DATA_VERSION})")
    return meta, None


def _recipe_changes(recipe: Recipe | SpecialistRecipe, old: dict) -> str | None:
    changed = [f.name for f in fields(recipe) if old.get(f.name) != getattr(recipe, f.name)]
    return f"stale (recipe changed: {', '.join(changed)})" if changed else None


def _files_problem(path: Path, meta: dict) -> str | None:
    files = meta.get("files", {})
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if needed not in files:
            return f"corrupted ({needed} is not recorded in {META_FILE})"
    for fname, digest in files.items():
        if not (path / fname).is_file():
            return f"corrupted ({fname} is missing)"
        if _sha256(path / fname) != digest:
            return f"corrupted ({fname} does not match its recorded sha256)"
    return None


def cache_problem(name: str = "tiny-llama") -> str | None:
    """Why the cached model can't be used as it is ("missing", "stale (...)", "corrupted (...)"), or None."""
    recipe, path = _recipe(name), cache_dir() / "models" / name
    meta, problem = _meta_problem(path)
    return problem or _recipe_changes(recipe, meta.get("recipe", {})) or _files_problem(path, meta)


def _ensure(path: Path, what: str, minutes: str, problem: Callable[[], str | None], build: Callable[[Path], object],
            rebuild: bool) -> Path:
    """Build `path` with `build(tmp)` unless `problem()` is None: under a lock, in a temporary directory renamed into
    place, so that two processes starting at once never see (or leave) a half-written directory."""
    if not rebuild and problem() is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"Another process is building {what}; waiting for it...", flush=True)
        lock.acquire()
    try:
        why = None if rebuild else problem()
        if not rebuild and why is None:  # another process built it while we waited
            return path
        if rebuild:
            print(f"Rebuilding {what} at {path} as asked ({minutes}).", flush=True)
        elif why == "missing":
            print(f"Building {what} (first use, {minutes} on a laptop CPU) into {path}", flush=True)
        else:
            print(f"{what[0].upper()}{what[1:]} at {path} is {why}; rebuilding it ({minutes}).", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-build-", dir=path.parent))
        try:
            build(tmp)
            _swap_in(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return path


def base_model_path(name: str = "tiny-llama", rebuild: bool = False) -> Path:
    """The directory of a ready base model (config, weights, tokenizer); builds it first if needed."""
    recipe = _recipe(name)
    return _ensure(cache_dir() / "models" / name, f"base model {name!r}", "about 2 minutes",
                   lambda: cache_problem(name), lambda tmp: _build(name, recipe, tmp), rebuild)


def _task(task: str) -> world.Task:
    if task not in world.TASKS:
        raise KeyError(f"no task named {task!r}; known: {', '.join(sorted(world.TASKS))}")
    return world.TASKS[task]


def _base_digests(name: str) -> dict:
    """The recorded hashes of the base model's weights and tokenizer: a specialist is stale when they change."""
    _, problem = _meta_problem(cache_dir() / "models" / name)
    files = {} if problem else json.loads((cache_dir() / "models" / name / META_FILE).read_text()).get("files", {})
    return {f: files.get(f) for f in ("model.safetensors", "tokenizer.json")}


def specialist_problem(task: str = "dates", name: str = "tiny-llama") -> str | None:
    """Why the cached specialist can't be used as it is ("missing", "stale (...)", "corrupted (...)"), or None."""
    _task(task)
    path = cache_dir() / "models" / f"{name}-{task}"
    meta, problem = _meta_problem(path)
    if problem:
        return problem
    if meta.get("base_files") != _base_digests(name):
        return f"stale (base model {name!r} changed since the fine-tune)"
    if not isinstance(meta.get("train_losses"), list):
        return "stale (no training curve recorded)"
    return _recipe_changes(SPECIALIST_RECIPE, meta.get("recipe", {})) or _files_problem(path, meta)


def specialist_info(task: str = "dates", name: str = "tiny-llama") -> dict:
    """The record of the cached specialist (built first if needed): its recipe, training curve and file hashes."""
    return json.loads((specialist_path(task, name) / META_FILE).read_text())


def specialist_path(task: str = "dates", name: str = "tiny-llama", rebuild: bool = False) -> Path:
    """The directory of base model `name` fully fine-tuned on `task` by SPECIALIST_RECIPE (Lab 06's recipe): a plain
    Hugging Face directory (config, weights, tokenizer), so `from_pretrained` loads it in any quantization format.
    Built on first use (under a minute on a laptop CPU), then cached next to the base model."""
    _task(task)
    base_model_path(name)  # first, so that the specialist's staleness check sees a ready base model
    return _ensure(cache_dir() / "models" / f"{name}-{task}", f"the {task!r} specialist of {name!r}",
                   "under a minute", lambda: specialist_problem(task, name),
                   lambda tmp: _build_specialist(task, name, tmp), rebuild)


def _swap_in(new: Path, path: Path) -> None:
    """Move a finished build into place; renames within one directory are atomic."""
    if path.exists():
        old = path.with_name(f".{path.name}-old-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, path)


def model_info(name: str = "tiny-llama") -> dict:
    """The metadata recorded at build time (recipe, held-out loss, hashes, versions); builds if needed."""
    return json.loads((base_model_path(name) / META_FILE).read_text())


def load_base_model(
    name: str = "tiny-llama", device: torch.device | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) in eval mode on `device` (default: labkit's choice, cuda > mps > cpu)."""
    from labkit.device import device as auto_device

    path = base_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(device if device is not None else auto_device(verbose=False))
    return model.eval(), tokenizer


# --------------------------------------------------------------------------------------------
# Build: tokenizer -> model -> pretraining -> held-out loss -> save
# --------------------------------------------------------------------------------------------


def _train_tokenizer(recipe: Recipe) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes, losslessly) with every digit its own token, for numbers and dates."""
    tok = byte_level_bpe(world.documents(recipe.tokenizer_chars, recipe.seed), recipe.vocab_size, SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(  # prepend <bos>, as at every pretraining document
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        clean_up_tokenization_spaces=False,  # decode(encode(text)) == text
        model_max_length=recipe.context,
        chat_template=CHAT_TEMPLATE,
    )


def _new_model(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised model for the recipe (seeded, without touching the global RNG)."""
    if len(tokenizer) > recipe.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than vocab_size={recipe.vocab_size}")
    config = LlamaConfig(
        vocab_size=recipe.vocab_size,  # >= len(tokenizer): padded to a multiple of 64
        hidden_size=recipe.d_model,
        intermediate_size=recipe.d_ff,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        num_key_value_heads=recipe.n_kv_heads,
        max_position_embeddings=recipe.context,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _pretrain(model: LlamaForCausalLM, stream: torch.Tensor, r: Recipe, desc: str) -> dict:
    """nanoGPT-style loop: random windows of the token stream, next-token cross-entropy."""
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices decay; norm gains don't
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(r.seed)
    offsets = torch.arange(r.context + 1)
    losses = []
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(r.steps), desc=desc, unit="step", mininterval=1.0)
    for step in bar:
        starts = torch.randint(0, len(stream) - r.context - 1, (r.batch_size,), generator=gen)
        window = stream[starts[:, None] + offsets]
        x, y = window[:, :-1], window[:, 1:]
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, r.lr, r.min_lr, r.warmup_steps, r.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == r.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    tail = losses[-10:]
    return {"steps": r.steps, "tokens_seen": r.steps * r.batch_size * r.context, "seconds": round(seconds, 1),
            "final_train_loss": sum(tail) / len(tail), "tokens_in_train_stream": len(stream)}


@torch.inference_mode()
def heldout_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, r: Recipe, batch_size: int = 32) -> dict:
    """Mean next-token loss on held-out documents, per token and per character.

    The token stream (<bos> doc <eos> ...) is cut into windows that overlap by one token, so every
    token but the first <bos> is predicted exactly once: the summed loss is the loss of the whole
    text, and dividing by its length gives nats/char, which compares directly with
    world.entropy_floor() and the unigram entropy whatever the tokenizer. (The <bos>/<eos> tokens
    cost next to nothing: each follows "\n" or <eos> without fail.)
    """
    docs = world.documents(r.heldout_chars, r.heldout_seed)
    text = "".join(docs)
    stream = document_stream(tokenizer, docs)
    nats, tokens = heldout_nats(model, stream, r.context, batch_size)
    return {
        "seed": r.heldout_seed,
        "chars": len(text),
        "tokens": tokens,
        "loss_nats_per_token": nats / tokens,
        "loss_nats_per_char": nats / len(text),
        "unigram_nats_per_char": world.unigram_entropy(text),
        "entropy_floor_nats_per_char": world.entropy_floor(seed=r.heldout_seed, n_chars=r.heldout_chars),
    }


def _build(name: str, recipe: Recipe, out: Path) -> dict:
    """Train tokenizer and model from scratch, measure, and save both plus labkit.json into `out`."""
    start = time.perf_counter()
    tokenizer = _train_tokenizer(recipe)
    stream = document_stream(tokenizer, world.documents(recipe.train_chars, recipe.seed))
    model = _new_model(recipe, tokenizer)
    train = _pretrain(model, stream, recipe, desc=f"pretraining {name}")
    held = heldout_loss(model, tokenizer, recipe)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "name": name,
        "zoo_version": ZOO_VERSION,
        "data_version": world.DATA_VERSION,
        "seed": recipe.seed,
        "recipe": asdict(recipe),
        "n_params": sum(p.numel() for p in model.parameters()),
        "tokenizer_vocab": len(tokenizer),
        "train": train,
        "heldout": held,
        "build_seconds": round(time.perf_counter() - start, 1),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "machine": platform.machine(), "torch_threads": torch.get_num_threads()},
        "files": {f.name: _sha256(f) for f in sorted(out.iterdir()) if f.is_file() and f.name != META_FILE},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"Built {name!r} in {meta['build_seconds']:.0f} s: held-out loss {held['loss_nats_per_token']:.3f} nats/token"
          f" = {held['loss_nats_per_char']:.3f} nats/char (unigram {held['unigram_nats_per_char']:.3f},"
          f" entropy floor {held['entropy_floor_nats_per_char']:.3f})", flush=True)
    return meta


def _build_specialist(task: str, name: str, out: Path) -> dict:
    """Fine-tune every weight of the base model on the task's train split, on the CPU in float32, and save it."""
    start, r, t = time.perf_counter(), SPECIALIST_RECIPE, _task(task)
    base = cache_dir() / "models" / name
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to("cpu")
    losses = finetune(model, tokenizer, t, t.examples("train", r.train_examples, seed=r.seed), r.steps, r.lr,
                      batch_size=r.batch_size, seed=r.seed, desc=f"fine-tuning {name} on {task} (once)")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = losses[-10:]
    meta = {
        "name": f"{name}-{task}", "base": name, "task": task,
        "zoo_version": ZOO_VERSION,
        "data_version": world.DATA_VERSION,
        "recipe": asdict(r),
        "base_files": _base_digests(name),
        "final_train_loss": sum(tail) / len(tail),
        "train_losses": [round(x, 6) for x in losses],  # the curve, for labs that plot it next to their own runs
        "build_seconds": round(time.perf_counter() - start, 1),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {f.name: _sha256(f) for f in sorted(out.iterdir()) if f.is_file() and f.name != META_FILE},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"Built the {task!r} specialist of {name!r} in {meta['build_seconds']:.0f} s: final train loss "
          f"{meta['final_train_loss']:.3f}", flush=True)
    return meta


# --------------------------------------------------------------------------------------------
# Command line: python -m labkit.zoo build|info
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.zoo", description="Build or inspect the base models.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or check) a base model in the cache")
    build.add_argument("--name", default=None, help="one model (default: all of them)")
    build.add_argument("--rebuild", action="store_true", help="rebuild even if the cached model is fine")
    info = sub.add_parser("info", help="show the cache state and metadata of the base models")
    info.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    names = [args.name] if args.name else sorted(RECIPES)
    print(f"cache: {cache_dir()}")
    for name in names:
        if args.command == "build":
            path = base_model_path(name, rebuild=args.rebuild)
            print(f"{name}: ready at {path}")
            continue
        problem = cache_problem(name)
        if problem is not None:
            print(f"{name}: {problem}")
            continue
        meta = json.loads((cache_dir() / "models" / name / META_FILE).read_text())
        held = meta["heldout"]
        print(f"{name}: ready, {meta['n_params'] / 1e6:.2f}M params, built {meta['created_utc']} in"
              f" {meta['build_seconds']:.0f} s; held-out {held['loss_nats_per_token']:.3f} nats/token ="
              f" {held['loss_nats_per_char']:.3f} nats/char (unigram {held['unigram_nats_per_char']:.3f},"
              f" floor {held['entropy_floor_nats_per_char']:.3f})")
        print(json.dumps(meta["recipe"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
