"""Lab 04 - Pretraining a small language model.

References come from the library (torch.nn.utils.clip_grad_norm_), from the formulas the lab states
(schedule, batches, evaluation, top-k) or from the grader's own runs: resume equivalence is tested with
the grader's training loop on a tiny Llama, and the trained model is scored on held-out text from a seed
the notebook never uses.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from grader.asserts import assert_below, assert_close, assert_shape, assert_type, check
from grader.registry import Lab
from labkit import world
from labkit.lm import cosine_lr, heldout_loss, sequence_batch

LAB = Lab("04", "Pretraining a small language model")
HELD_OUT_SEED = 9004  # the notebook trains on seed 0 and validates on seed 1
LOSS_THRESHOLD = 0.50  # nats/char; Lab 01's MLP gets ~0.55, the solution ~0.43, the entropy floor is ~0.27
VOCAB = world.CharTokenizer().vocab_size

# --- get_batch -----------------------------------------------------------------------------------------------
q = LAB.question("get_batch", points=2, uses=("get_batch",), title="Batches of random windows")


_ref_batch = sequence_batch  # the lab's definition is labkit's


@q.check
def _batch_small(get_batch):
    ids = torch.arange(100, 150)  # the values reveal the positions
    x, y = get_batch(ids, 8, 4, torch.Generator().manual_seed(0))
    assert_shape(x, (4, 8), "x from get_batch(ids, block_size=8, batch_size=4)",
                 hint="one row per window: shape (batch_size, block_size)")
    assert_shape(y, (4, 8), "y from get_batch(ids, block_size=8, batch_size=4)",
                 hint="the targets have the same shape as the inputs: one target per position")
    check(torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1] - x[:, -1], torch.ones(4, dtype=y.dtype)),
          f"y should be x shifted by one position (the next token at every position); got x[0]={x[0].tolist()} "
          f"and y[0]={y[0].tolist()} for ids = 100, 101, 102, ...",
          hint="x = ids[s : s+block_size], y = ids[s+1 : s+block_size+1]")
    ref_x, ref_y = _ref_batch(ids, 8, 4, torch.Generator().manual_seed(0))
    assert_close(x, ref_x, "x with torch.Generator().manual_seed(0)",
                 hint="draw the starts with exactly torch.randint(0, len(ids) - block_size, (batch_size,), "
                      "generator=generator)")
    assert_close(y, ref_y, "y with torch.Generator().manual_seed(0)")


@q.check(hidden=True)
def _batch_edges(get_batch):
    ids = torch.arange(10)  # block 8: only starts 0 and 1 are valid; both must occur
    g = torch.Generator().manual_seed(1)
    firsts = set()
    for _ in range(20):
        x, y = get_batch(ids, 8, 8, g)
        firsts |= set(x[:, 0].tolist())
        check(int(y.max()) <= 9, "a window ran past the end of ids.")
    check(firsts == {0, 1}, f"windows of 8 in 10 ids should start at 0 or 1; yours started at {sorted(firsts)}.",
          hint="starts range over 0 .. len(ids) - block_size - 1")
    corpus = torch.tensor(world.CharTokenizer().encode(world.corpus(5000, seed=HELD_OUT_SEED)))
    x, y = get_batch(corpus, 32, 16, torch.Generator().manual_seed(7))
    ref_x, ref_y = _ref_batch(corpus, 32, 16, torch.Generator().manual_seed(7))
    assert_close(x, ref_x, "x on a corpus sample")
    assert_close(y, ref_y, "y on a corpus sample")


# --- lr_schedule ---------------------------------------------------------------------------------------------
q = LAB.question("lr_schedule", points=2, uses=("lr_at",), title="Warm-up and cosine decay")


_ref_lr = cosine_lr  # the lab's definition is labkit's


def _compare_schedule(lr_at, max_lr: float, min_lr: float, warmup: int, total: int) -> None:
    args = f"max_lr={max_lr:g}, min_lr={min_lr:g}, warmup_steps={warmup}, total_steps={total}"
    for step in range(total + 20):
        got = lr_at(step, max_lr, min_lr, warmup, total)
        want = _ref_lr(step, max_lr, min_lr, warmup, total)
        if step < warmup:
            hint = "warm-up: max_lr * (step + 1) / warmup_steps, so step 0 already has a non-zero learning rate"
        elif step == total - 1:
            hint = "the cosine reaches min_lr exactly at the last step, total_steps - 1: divide by (N - 1 - W)"
        elif step >= total:
            hint = "after total_steps the learning rate stays at min_lr"
        else:
            hint = "decay: min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * (step - W) / (N - 1 - W)))"
        assert_close(got, want, f"lr_at({step}, {args})", rtol=1e-6, atol=1e-12, hint=hint)


@q.check
def _schedule(lr_at):
    assert_type(lr_at(0, 1.0, 0.1, 10, 100), (float, int), "lr_at(0, 1.0, 0.1, 10, 100)", hint="return a float")
    _compare_schedule(lr_at, 1.0, 0.1, 10, 100)


@q.check(hidden=True)
def _schedule_other(lr_at):
    _compare_schedule(lr_at, 3e-3, 3e-4, 30, 700)
    _compare_schedule(lr_at, 0.5, 0.0, 0, 50)  # no warm-up, decay to zero


# --- clip_grad -----------------------------------------------------------------------------------------------
q = LAB.question("clip_grad", points=2, uses=("clip_grad_norm",), title="Gradient clipping by the global norm")


def _params_with_grads(scales: list[float], seed: int, dtype=torch.float32) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 2, 2), (7,)]
    params = []
    for shape, scale in zip(shapes, scales, strict=False):
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
        p.grad = torch.randn(shape, generator=g, dtype=dtype) * scale
        params.append(p)
    return params


def _compare_clipping(clip_grad_norm, scales: list[float], max_norm: float, seed: int, what: str,
                      with_none: bool = False) -> None:
    mine, ref = _params_with_grads(scales, seed), _params_with_grads(scales, seed)
    if with_none:
        mine.append(torch.nn.Parameter(torch.zeros(3)))  # no .grad: must be skipped
    want = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
    got = clip_grad_norm(mine, max_norm)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    assert_close(got, want, f"the total norm returned by clip_grad_norm ({what})", rtol=1e-4,
                 hint="return the global norm sqrt(sum of squared gradient entries over ALL parameters), measured "
                      "BEFORE clipping")
    for i, (p, r) in enumerate(zip(mine, ref, strict=False)):
        assert_close(p.grad, r.grad, f"parameter {i}'s gradient after clipping ({what})", rtol=1e-4, atol=1e-6,
                     hint="one factor for all: if the global norm exceeds max_norm, multiply every gradient by "
                          "max_norm / (norm + 1e-6); otherwise leave the gradients alone")


@q.check
def _clip(clip_grad_norm):
    _compare_clipping(clip_grad_norm, [3.0, 0.2, 1.0, 0.5], 1.0, seed=0, what="global norm above max_norm")
    _compare_clipping(clip_grad_norm, [0.01, 0.02, 0.01, 0.03], 1.0, seed=1, what="global norm below max_norm")


@q.check(hidden=True)
def _clip_hidden(clip_grad_norm):
    _compare_clipping(clip_grad_norm, [0.1, 5.0, 0.1, 0.1], 0.5, seed=2, what="one large gradient", with_none=True)
    _compare_clipping(clip_grad_norm, [2.0, 2.0, 2.0, 2.0], 3.0, seed=3, what="max_norm 3")


# --- perplexity ----------------------------------------------------------------------------------------------
q = LAB.question("perplexity", points=2, uses=("evaluate",), title="Held-out loss and perplexity")


def _tiny_llama(seed: int, dropout: float = 0.0, block: int = 16) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=block,
                         attention_dropout=dropout, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _ref_evaluate(model, ids: torch.Tensor, block_size: int, batch_size: int = 64) -> float:
    """The lab's definition: consecutive windows, the incomplete tail dropped. That is labkit's held-out loss on
    ids cut after the last whole window."""
    n = (len(ids) - 1) // block_size
    return heldout_loss(model, ids[: n * block_size + 1], block_size, batch_size)


def _peaky_model(seed: int) -> LlamaForCausalLM:
    model = _tiny_llama(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # confident, often wrong: losses differ a lot between windows
    return model


def _compare_evaluate(evaluate, n_ids: int, block: int, batch: int, seed: int) -> None:
    model = _peaky_model(seed).train()
    ids = torch.randint(0, VOCAB, (n_ids,), generator=torch.Generator().manual_seed(seed))
    out = evaluate(model, ids, block, batch)
    check(isinstance(out, tuple) and len(out) == 2, f"evaluate should return (mean_loss, perplexity); got {out!r}.")
    loss, ppl = out
    args = f"evaluate(model, ids of length {n_ids}, block_size={block}, batch_size={batch})"
    want = _ref_evaluate(model, ids, block, batch)
    assert_close(loss, want, f"the mean loss of {args}", rtol=1e-4,
                 hint="sum the loss over every target token (reduction='sum'), then divide by the number of "
                      "tokens; averaging the batches' means is wrong when the last batch is smaller")
    assert_close(ppl, math.exp(want), f"the perplexity of {args}", rtol=1e-4,
                 hint="perplexity = exp(mean loss per token), in nats (math.exp, not 2 **)")
    check(model.training, "evaluate left the model in eval mode; it was in training mode before.",
          hint="remember model.training, call model.eval(), and model.train(was_training) before returning")
    check(all(p.grad is None for p in model.parameters()), "evaluate computed gradients.",
          hint="wrap the evaluation in torch.no_grad() and never call backward()")


@q.check
def _evaluate(evaluate):
    _compare_evaluate(evaluate, n_ids=5 * 16 + 1 + 7, block=16, batch=2, seed=0)  # batches of 2, 2, 1 windows


@q.check(hidden=True)
def _evaluate_hidden(evaluate):
    _compare_evaluate(evaluate, n_ids=11 * 12 + 1, block=12, batch=4, seed=1)  # exactly 11 windows: 4, 4, 3
    model = _peaky_model(2).eval()
    ids = torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(2))
    evaluate(model, ids, 16, 64)
    check(not model.training, "evaluate switched a model that was in eval mode into training mode.",
          hint="restore the mode the model was in: model.train(was_training)")


# --- checkpoint_resume ---------------------------------------------------------------------------------------
q = LAB.question("checkpoint_resume", points=3, uses=("save_checkpoint", "load_checkpoint"),
                 title="Checkpoints that resume exactly")
TOTAL, WARMUP, BLOCK, BATCH = 6, 2, 16, 4


def _resume_setup(seed: int):
    model = _tiny_llama(seed, dropout=0.1, block=BLOCK)  # dropout: the global RNG matters too
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    return model, opt, torch.Generator().manual_seed(seed)


def _run_steps(model, opt, gen, ids: torch.Tensor, start: int, stop: int) -> None:
    """The grader's own loop, so that only the learner's save/load are under test."""
    model.train()
    for step in range(start, stop):
        for group in opt.param_groups:
            group["lr"] = _ref_lr(step, 1e-2, 1e-3, WARMUP, TOTAL)
        x, y = _ref_batch(ids, BLOCK, BATCH, gen)
        loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def _resume_ids() -> torch.Tensor:
    return torch.tensor(world.CharTokenizer().encode(world.corpus(3000, seed=HELD_OUT_SEED)))


def _states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict) and isinstance(y, dict):
            if not _states_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _check_resume(save_checkpoint, load_checkpoint, k: int, folder: Path) -> None:
    ids = _resume_ids()
    torch.manual_seed(100)
    model, opt, gen = _resume_setup(seed=0)
    _run_steps(model, opt, gen, ids, 0, TOTAL)
    straight = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(100)
    model, opt, gen = _resume_setup(seed=0)
    _run_steps(model, opt, gen, ids, 0, k)
    saved_rng, saved_gen = torch.get_rng_state(), gen.get_state()
    saved_params = [p.detach().clone() for p in model.parameters()]
    saved_opt = opt.state_dict()["state"]
    path = folder / f"resume_{k}.pt"
    save_checkpoint(str(path), model, opt, k, gen)
    check(path.exists(), f"save_checkpoint(path, ...) wrote no file at the path it was given ({path.name}).",
          hint="torch.save(state, path)")

    del model, opt, gen
    torch.manual_seed(555)  # a new process: the global RNG is elsewhere
    model, opt, gen = _resume_setup(seed=1)  # other weights, a differently seeded generator
    step = load_checkpoint(str(path), model, opt, gen)
    check(isinstance(step, int) and not isinstance(step, bool) and step == k,
          f"load_checkpoint returned {step!r} for a checkpoint saved at step {k}.",
          hint="save the step in the checkpoint and return it from load_checkpoint")
    check(all(torch.equal(a, b) for a, b in zip(saved_params, model.parameters(), strict=True)),
          "After load_checkpoint the model's weights differ from the saved model's.",
          hint="save model.state_dict() and restore it with model.load_state_dict(...)")
    check(_states_equal(opt.state_dict()["state"], saved_opt),
          "After load_checkpoint the optimizer's state (AdamW's running averages and step counts) differs from "
          "the saved optimizer's.",
          hint="save optimizer.state_dict() and restore it with optimizer.load_state_dict(...)")
    check(torch.equal(gen.get_state(), saved_gen),
          "After load_checkpoint the batch generator is not where it was when the checkpoint was saved, so the "
          "resumed run would draw different batches.",
          hint="save generator.get_state() and restore it with generator.set_state(...)")
    check(torch.equal(torch.get_rng_state(), saved_rng),
          "After load_checkpoint torch's global RNG is not where it was when the checkpoint was saved, so dropout "
          "would draw different masks.",
          hint="save torch.get_rng_state() and restore it with torch.set_rng_state(...)")
    _run_steps(model, opt, gen, ids, step, TOTAL)
    same = all(torch.equal(a, b) for a, b in zip(straight, model.parameters(), strict=True))
    check(same, f"{k} steps + save + load + {TOTAL - k} steps did not give the same weights as {TOTAL} steps "
          "straight.", hint="the checkpoint must hold everything the remaining steps depend on")


@q.check
def _resume(save_checkpoint, load_checkpoint):
    with tempfile.TemporaryDirectory() as folder:
        _check_resume(save_checkpoint, load_checkpoint, k=3, folder=Path(folder))


@q.check(hidden=True)
def _resume_hidden(save_checkpoint, load_checkpoint):
    with tempfile.TemporaryDirectory() as folder:
        _check_resume(save_checkpoint, load_checkpoint, k=1, folder=Path(folder))  # during warm-up
        # Two checkpoints: loading the older one must give the older run, not whatever was saved last.
        a, b = Path(folder) / "a.pt", Path(folder) / "b.pt"
        model, opt, gen = _resume_setup(seed=0)
        ids = _resume_ids()
        _run_steps(model, opt, gen, ids, 0, 2)
        params_a = [p.detach().clone() for p in model.parameters()]
        save_checkpoint(str(a), model, opt, 2, gen)
        _run_steps(model, opt, gen, ids, 2, 4)
        save_checkpoint(str(b), model, opt, 4, gen)
        fresh, fresh_opt, fresh_gen = _resume_setup(seed=2)
        step = load_checkpoint(str(a), fresh, fresh_opt, fresh_gen)
        check(step == 2 and all(torch.equal(x, y) for x, y in zip(params_a, fresh.parameters(), strict=True)),
              "Loading an older checkpoint file gave the state of a later save.",
              hint="keep everything in the file at `path`, not in variables of the notebook")


# --- pretrained_lm -------------------------------------------------------------------------------------------
q = LAB.question("pretrained_lm", points=3, uses=("lm",), title="Your pretrained model on held-out text",
                 builds_on=("get_batch", "lr_schedule", "clip_grad"))


@q.check
def _pretrained(lm):
    check(isinstance(lm, torch.nn.Module) and hasattr(lm, "config"),
          f"`lm` should be your trained LlamaForCausalLM; got a {type(lm).__name__}.")
    block = min(64, int(getattr(lm.config, "max_position_embeddings", 64)))
    ids = torch.tensor(world.CharTokenizer().encode(world.corpus(20_000, seed=HELD_OUT_SEED)))
    loss = heldout_loss(lm, ids, block)
    assert_below(loss, LOSS_THRESHOLD, "held-out loss (nats/char, on text the grader generated)",
                 hint="train for all the steps of the lab; check the loss curve for a loop that does not learn "
                      "(targets not shifted, learning rate 0). Lab 01's MLP gets ~0.55")


# --- top_k_sample --------------------------------------------------------------------------------------------
q = LAB.question("top_k_sample", points=2, uses=("sample_next",), title="Sampling with temperature and top-k")


def _test_logits() -> torch.Tensor:
    """Two rows whose top 4 logits are close together, so a 4th kept token would show up often."""
    base = torch.tensor([2.0, 1.9, 1.8, 1.7, -1.0, -1.2, -1.5, -2.0, -0.8, -1.1])
    return torch.stack([base, base.flip(0)])


def _draws(sample_next, logits: torch.Tensor, n: int, temperature: float, top_k, seed: int) -> torch.Tensor:
    """n draws for each row at once: the rows are repeated n times. Returns shape (n, rows)."""
    rows = logits.repeat(n, 1)
    out = sample_next(rows, temperature, top_k, torch.Generator().manual_seed(seed))
    assert_shape(out, (len(rows),), f"sample_next(logits of shape {tuple(rows.shape)}, ...)",
                 hint="return one id per row: multinomial(probs, 1, ...).squeeze(-1)")
    return out.view(n, len(logits))


@q.check
def _top_k(sample_next):
    logits = _test_logits()
    out = sample_next(logits, 1.0, 3, torch.Generator().manual_seed(0))
    assert_shape(out, (2,), "sample_next(logits of shape (2, 10), 1.0, 3, generator)")
    check(out.dtype == torch.long, f"sample_next should return int64 ids; got {out.dtype}.")
    greedy = _draws(sample_next, logits, 50, 1.0, 1, seed=1)
    check(bool((greedy == logits.argmax(-1)).all()), "With top_k=1, every draw should be the most likely token.",
          hint="keep the top_k largest logits and set the others to -inf")
    draws = _draws(sample_next, logits, 500, 1.0, 3, seed=2)
    for row in range(2):
        allowed = set(torch.topk(logits[row], 3).indices.tolist())
        seen = set(draws[:, row].tolist())
        check(seen <= allowed, f"With top_k=3, row {row} drew ids {sorted(seen - allowed)} that are not among its "
              f"3 largest logits {sorted(allowed)}.",
              hint="mask every logit below the k-th largest with -inf (not 0) before the softmax; "
                   "torch.topk(logits, k).values[:, [-1]] is the k-th largest")
        check(seen == allowed, f"With top_k=3, row {row} only ever drew {sorted(seen)} in 500 draws; "
              f"expected all of {sorted(allowed)}.", hint="keep exactly k tokens per row")
    a = sample_next(logits.repeat(20, 1), 1.0, None, torch.Generator().manual_seed(5))
    b = sample_next(logits.repeat(20, 1), 1.0, None, torch.Generator().manual_seed(5))
    check(torch.equal(a, b), "The same generator seed gave different draws.",
          hint="pass generator=generator to torch.multinomial")


@q.check(hidden=True)
def _top_k_distribution(sample_next):
    logits = torch.randn(2, 20, generator=torch.Generator().manual_seed(11)) * 2
    n = 4000
    for temperature, top_k in ((1.0, None), (0.5, 5), (2.0, 5), (1.5, 100)):
        draws = _draws(sample_next, logits, n, temperature, top_k, seed=12)
        for row in range(2):
            z = logits[row] / temperature
            if top_k is not None and top_k < z.numel():
                z = z.masked_fill(z < torch.topk(z, top_k).values[-1], float("-inf"))
            probs = torch.softmax(z, -1)
            freq = torch.bincount(draws[:, row], minlength=20).float() / n
            tv = 0.5 * (freq - probs).abs().sum().item()
            check(tv < 0.05, f"With temperature {temperature:g} and top_k={top_k}, your draws do not follow "
                  f"softmax(top-k logits / temperature) (total variation distance {tv:.2f}).",
                  hint="divide the logits by the temperature, keep the top k, then softmax and multinomial")
