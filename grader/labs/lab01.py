"""Lab 01 - From tensors to a small language model.

References are computed here, from the library (torch.softmax, autograd) or from the
grader's own data (held-out text from a seed the notebook never uses).

A hint names a mistake only when the received value is what that mistake produces (`_diagnose` compares it with
the mistake's own output); otherwise it states the contract.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

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
from labkit.lm import mean_loss

LAB = Lab("01", "From tensors to a small language model")
HELD_OUT_SEED = 9001  # the notebook trains on seed 0 and validates on seed 1
# nats/char. Measured: the solution gets 0.56 on this held-out text; on the notebook's validation text the bigram
# model gets 2.20, unigram 3.17 and the untrained MLP 3.93.
LOSS_THRESHOLD = 1.2


def _same(got, ref, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """`got` equals `ref`: tensors of the same shape (NaN where `ref` has NaN), close numbers, or equal strings."""
    if isinstance(ref, torch.Tensor):
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(ref.shape):
            return False
        return torch.allclose(got.detach().cpu().double(), ref.detach().cpu().double(), rtol, atol, equal_nan=True)
    if isinstance(ref, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return math.isclose(got, ref, rel_tol=rtol, abs_tol=atol)
    return type(got) is type(ref) and got == ref


def _diagnose(got, ref, mistakes: list[tuple[Callable[[], object], str]], contract: str, rtol: float = 1e-4,
              atol: float = 1e-6) -> str:
    """The hint of the first mistake whose output `got` reproduces, on an input where that mistake's output differs
    from the correct `ref`; else `contract`, which guesses nothing."""
    for make, hint in mistakes:
        try:
            with torch.no_grad():
                wrong = make()
            if not _same(wrong, ref, rtol, atol) and _same(got, wrong, rtol, atol):
                return hint
        except Exception:  # a mistake that cannot even be computed on this input is not the learner's
            continue
    return contract


def _assert_close_diagnosed(got, ref, name: str, diagnose: Callable[[], str], **tolerances) -> None:
    """assert_close, with a hint computed (from the received value) only when it fails."""
    try:
        assert_close(got, ref, name, **tolerances)
    except CheckFailed:
        assert_close(got, ref, name, hint=diagnose(), **tolerances)


# --- softmax -------------------------------------------------------------------------------------------------
q = LAB.question("softmax", points=2, uses=("softmax",), title="A numerically stable softmax")

_SOFTMAX_CONTRACT = ("softmax(x)[..., i] = exp(x_i - m) / sum_j exp(x_j - m), with m the maximum of x's own row, "
                     "along the last dimension (dim=-1) of every row separately")


def _softmax_hint(x: torch.Tensor, got, atol: float) -> str:
    def along(dim):
        return lambda: torch.softmax(x, dim=dim)

    mistakes = [
        (lambda: x.exp() / x.exp().sum(dim=-1, keepdim=True),
         "exp overflows for large inputs (exp(89) is inf in float32): subtract each row's maximum before "
         "exponentiating"),
        (lambda: (x - x.max()).exp() / (x - x.max()).exp().sum(dim=-1, keepdim=True),
         "subtract each row's own maximum (x.max(dim=-1, keepdim=True)), not the maximum of the whole tensor: "
         "a row far below it underflows to 0/0"),
        (lambda: (x - x.max(dim=-1, keepdim=True).values).exp() / (x - x.max(dim=-1, keepdim=True).values).exp().sum(),
         "divide each row by its own sum (dim=-1, keepdim=True), not by the sum of the whole tensor"),
        *[(along(d), f"you normalised along dimension {d}; softmax runs along the last dimension (dim=-1)")
          for d in range(x.dim() - 1)],
    ]
    ref = torch.softmax(x, dim=-1)
    hint = _diagnose(got, ref, mistakes, "", atol=atol)
    if hint:
        return hint
    if isinstance(got, torch.Tensor) and got.shape == x.shape and not torch.allclose(
            got.detach().sum(dim=-1).double(), torch.ones(x.shape[:-1], dtype=torch.float64), atol=1e-4):
        return ("along the last dimension your probabilities do not sum to 1: divide by the sum over the last "
                "dimension (dim=-1, keepdim=True)")
    if _same(got, ref, rtol=1e-4, atol=1e-6):
        return ("only the tiny probabilities are off: compute exp(x - max) as it is, without clamping it or adding "
                "an epsilon")
    return _SOFTMAX_CONTRACT


def _assert_softmax(softmax, x: torch.Tensor, name: str, atol: float = 1e-5, edge: bool = False) -> None:
    """An `edge` input turns a crash into a failure that names the input."""
    got = call_learner(softmax, f"softmax(x) for {name}", x.clone()) if edge else softmax(x.clone())
    _assert_close_diagnosed(got, torch.softmax(x, dim=-1), f"softmax(x) for {name}",
                            lambda: _softmax_hint(x, got, atol), rtol=1e-4, atol=atol)


@q.check
def _softmax_values(softmax):
    _assert_softmax(softmax, torch.randn(4, 7), "x of shape (4, 7)")
    _assert_softmax(softmax, torch.tensor([[1000.0, 999.0, 0.0]]), "x = [[1000, 999, 0]]")


@q.check(hidden=True)
def _softmax_3d(softmax):
    _assert_softmax(softmax, torch.randn(3, 5, 6) * 20, "x of shape (3, 5, 6)")


@q.check(hidden=True)
def _softmax_rows_of_different_scales(softmax):
    _assert_softmax(softmax, torch.tensor([[1000.0, 999.0, 0.0], [1.0, 2.0, 3.0], [-800.0, -801.0, -1000.0]]),
                    "rows whose scales differ by hundreds", edge=True)
    scale = torch.tensor([1.0, 10.0, 100.0, 300.0, 2.0, 1.0])[:, None]
    shift = torch.tensor([0.0, 0.0, 0.0, 0.0, 400.0, -400.0])[:, None]
    _assert_softmax(softmax, torch.randn(6, 9) * scale + shift, "a (6, 9) batch of rows with very different scales",
                    edge=True)
    _assert_softmax(softmax, torch.randn(1, 5) * 50, "a single row, shape (1, 5)", edge=True)
    _assert_softmax(softmax, torch.tensor([[3.0]]), "a single value, shape (1, 1)", edge=True)
    _assert_softmax(softmax, torch.randn(11) * 5, "a vector of shape (11,) (its last dimension is its only one)",
                    edge=True)


@q.check(hidden=True)
def _softmax_tiny_probabilities(softmax):
    # exp(-85) ~ 1e-37 is still a normal float32: every probability here is representable, and compared relatively.
    x = torch.tensor([[0.0, -10.0, -25.0, -40.0, -55.0, -70.0, -85.0], [5.0, 5.0, -30.0, -60.0, -75.0, 0.0, 1.0]])
    _assert_softmax(softmax, x, "rows whose probabilities go down to 1e-37 (compared relatively)", atol=0.0,
                    edge=True)


@q.check(hidden=True)
def _softmax_keeps_its_input(softmax):
    x = torch.randn(4, 6) * 3
    before = x.clone()
    softmax(x)
    check(torch.equal(x, before), "softmax(x) changed the tensor x it was given.",
          hint="compute into new tensors (z = x - m), not in place (x -= m): the caller's tensor must stay as it was")


# --- ce_grad -------------------------------------------------------------------------------------------------
q = LAB.question("ce_grad", points=2, uses=("ce_grad",), title="The cross-entropy gradient by hand")

_CE_CONTRACT = "d(mean CE)/d logits = (softmax(logits) - one_hot(targets, V)) / N for logits of shape (N, V)"


def _autograd_ce_grad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    z = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(z, targets).backward()
    return z.grad


def _ce_hint(logits: torch.Tensor, targets: torch.Tensor, got) -> str:
    n, v = logits.shape
    ref = _autograd_ce_grad(logits, targets)
    one_hot = F.one_hot(targets, v).to(logits.dtype)
    naive = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
    whole = (logits - logits.max()).exp() / (logits - logits.max()).exp().sum(dim=-1, keepdim=True)
    unstable = "exp overflowed or underflowed: compute the softmax stably, subtracting each row's own maximum"
    mistakes = [
        (lambda: ref * n, "that is N times the gradient: the loss is the mean over the batch, so divide by N"),
        (lambda: ref * n / v, "divide by the batch size N (logits.shape[0]), not by the vocabulary size V"),
        (lambda: -ref, "the sign is flipped: the gradient is softmax(logits) - one_hot(targets), not the reverse"),
        (lambda: torch.softmax(logits, dim=-1) / n, "subtract the one-hot encoding of the targets"),
        (lambda: (naive - one_hot) / n, unstable),
        (lambda: (whole - one_hot) / n, unstable),
    ]
    hint = _diagnose(got, ref, mistakes, "")
    if hint:
        return hint
    if isinstance(got, torch.Tensor) and got.shape == logits.shape and not torch.allclose(
            got.detach().sum(dim=-1).double(), torch.zeros(n, dtype=torch.float64), atol=1e-5):
        return ("each row of the gradient sums to 0 (the rows of softmax(logits) and of one_hot(targets) each sum "
                "to 1) and yours do not: check that the softmax normalises each row along the last dimension and "
                "that each one-hot row holds a single 1")
    return _CE_CONTRACT


def _assert_ce_grad(ce_grad, logits: torch.Tensor, targets: torch.Tensor, name: str, edge: str | None = None) -> None:
    """`edge`: the hint when this input makes ce_grad crash (a crash then fails the check, naming the input)."""
    args = (logits.clone(), targets.clone())
    got = call_learner(ce_grad, f"ce_grad(logits, targets) for {name}", *args, hint=edge) if edge else ce_grad(*args)
    _assert_close_diagnosed(got, _autograd_ce_grad(logits, targets), f"ce_grad(logits, targets) for {name}",
                            lambda: _ce_hint(logits, targets, got))


@q.check
def _ce_grad(ce_grad):
    _assert_ce_grad(ce_grad, torch.randn(5, 6), torch.tensor([0, 3, 5, 1, 1]), "logits of shape (5, 6)")


@q.check(hidden=True)
def _ce_grad_batch(ce_grad):
    _assert_ce_grad(ce_grad, torch.randn(32, 11) * 3, torch.randint(0, 11, (32,)), "a (32, 11) batch")


@q.check(hidden=True)
def _ce_grad_edges(ce_grad):
    _assert_ce_grad(ce_grad, torch.randn(1, 7), torch.tensor([6]), "a batch of one example, shape (1, 7)",
                    edge="a batch of one example is still a (1, V) matrix of logits and a (1,) vector of targets")
    # the last classes never occur in the targets: the gradient still has V columns
    _assert_ce_grad(ce_grad, torch.randn(6, 9) * 2, torch.tensor([0, 2, 2, 5, 1, 0]),
                    "(6, 9) logits whose targets never use the classes 6, 7 and 8",
                    edge="the one-hot matrix needs V columns even when the last classes never occur in targets: "
                    "F.one_hot(targets, num_classes=V)")
    scale = torch.tensor([1.0, 30.0, 200.0, 1.0, 5.0])[:, None]
    shift = torch.tensor([0.0, 0.0, 0.0, 600.0, -600.0])[:, None]
    _assert_ce_grad(ce_grad, torch.randn(5, 8) * scale + shift, torch.tensor([3, 0, 7, 2, 2]),
                    "rows whose scales differ by hundreds", edge=_CE_CONTRACT)


# --- bigram_probs --------------------------------------------------------------------------------------------
q = LAB.question("bigram_probs", points=2, uses=("bigram_probs",), title="Bigram probabilities")

_BIGRAM_CONTRACT = ("P[a, b] = (number of times a is followed by b + alpha) / (its row total), a (vocab_size, "
                    "vocab_size) matrix whose row a sums to 1")


def _reference_bigram(ids: torch.Tensor, vocab_size: int, alpha: float) -> torch.Tensor:
    counts = torch.full((vocab_size, vocab_size), float(alpha))
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    return counts / counts.sum(dim=1, keepdim=True)


def _pair_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    counts = torch.zeros(vocab_size, vocab_size)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    return counts


def _bigram_hint(ids: torch.Tensor, vocab_size: int, alpha: float, got, atol: float = 1e-6) -> str:
    c = _pair_counts(ids, vocab_size)
    seen = (c > 0).float()
    once = "a repeated pair must count every time: counts[a, b] += 1 with index tensors (or index_put_ without " \
           "accumulate=True) counts it only once"

    def rows(m: torch.Tensor) -> torch.Tensor:
        return m / m.sum(dim=1, keepdim=True)

    mistakes = [
        (lambda: rows(alpha + seen), once),
        (lambda: rows(torch.where(c > 0, 1.0, float(alpha))), once),
        (lambda: rows(c.T + alpha), "P[a, b] counts a followed by b: index with (ids[:-1], ids[1:]), in that order"),
        (lambda: rows(c), "add alpha to every cell, also to the pairs never seen"),
        (lambda: rows(c + 1.0), "use the alpha you are given, not 1"),
        (lambda: rows(torch.where(c > 0, c, float(alpha))), "add alpha to every cell, the pairs seen included"),
        (lambda: (c + alpha) / (c + alpha).sum(dim=0, keepdim=True),
         "normalise each row (dim=1: what follows a), not each column"),
        (lambda: (c + alpha) / (c + alpha).sum(), "divide each row by its own total, not by the total of all counts"),
        (lambda: (c + alpha) / (c.sum(dim=1, keepdim=True) + alpha),
         "the row total includes alpha once per cell: sum(counts) + vocab_size * alpha"),
        (lambda: (c + alpha) / (c + alpha).sum(dim=1),
         "counts.sum(dim=1) without keepdim=True divides the columns: use keepdim=True"),
    ]
    return _diagnose(got, _reference_bigram(ids, vocab_size, alpha), mistakes, _BIGRAM_CONTRACT, atol=atol)


def _assert_bigram(bigram_probs, ids: torch.Tensor, vocab_size: int, alpha: float, name: str,
                   atol: float = 1e-5, edge: bool = False, rows_sum_to_one: bool = False) -> None:
    args = (ids.clone(), vocab_size, alpha)
    got = call_learner(bigram_probs, f"bigram_probs for {name}", *args) if edge else bigram_probs(*args)
    shape_hint = None
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (int(ids.max()) + 1,) * 2 != (vocab_size,) * 2:
        shape_hint = "P is (vocab_size, vocab_size) even when the largest ids never occur: use the vocab_size given"
    assert_shape(got, (vocab_size, vocab_size), f"bigram_probs for {name}", hint=shape_hint)
    if rows_sum_to_one:
        sums = got.sum(dim=1)
        if not torch.allclose(sums, torch.ones(vocab_size), atol=1e-5):
            check(False, f"Each row of P should sum to 1 (row a is the distribution of the character after a) for "
                  f"{name}.", received=f"row sums {[round(float(s), 4) for s in sums]}",
                  hint=_bigram_hint(ids, vocab_size, alpha, got))
    _assert_close_diagnosed(got, _reference_bigram(ids, vocab_size, alpha), f"bigram_probs for {name}",
                            lambda: _bigram_hint(ids, vocab_size, alpha, got, atol), rtol=1e-4, atol=atol)


@q.check
def _bigram_small(bigram_probs):
    _assert_bigram(bigram_probs, torch.tensor([0, 1, 2, 1, 2, 0, 0, 1]), 3, 1.0,
                   "ids [0, 1, 2, 1, 2, 0, 0, 1], vocab_size=3, alpha=1.0", rows_sum_to_one=True)


@q.check(hidden=True)
def _bigram_corpus(bigram_probs):
    tok = world.CharTokenizer()
    ids = torch.tensor(tok.encode(world.corpus(3000, seed=HELD_OUT_SEED)))
    _assert_bigram(bigram_probs, ids, tok.vocab_size, 0.5, "a corpus sample with alpha=0.5")


@q.check(hidden=True)
def _bigram_edges(bigram_probs):
    _assert_bigram(bigram_probs, torch.tensor([3, 1, 3, 3, 0, 1, 3, 2, 0, 0, 3]), 7, 0.25,
                   "vocab_size=7 where the ids 4, 5 and 6 never occur, alpha=0.25", edge=True)
    _assert_bigram(bigram_probs, torch.tensor([2]), 4, 1.0, "a single token (no pair at all), vocab_size=4",
                   edge=True)
    tok = world.CharTokenizer()
    ids = torch.tensor(tok.encode(world.corpus(2000, seed=HELD_OUT_SEED + 1)))
    _assert_bigram(bigram_probs, ids, tok.vocab_size, 1e-3,
                   "a corpus sample with alpha=0.001 (tiny probabilities, compared relatively)", atol=0.0, edge=True)


# --- MLPLM.forward -------------------------------------------------------------------------------------------
q = LAB.question("mlp_forward", points=2, uses=("MLPLM",), title="The MLP language model's forward pass")

_FORWARD_CONTRACT = "embed -> flatten to (batch, context*d_emb) -> hidden Linear -> tanh -> output Linear"


def _reference_forward(m, x: torch.Tensor) -> torch.Tensor:
    return m.out(torch.tanh(m.hidden(m.emb(x).flatten(1))))


def _forward_hint(m, x: torch.Tensor, out) -> str:
    return _diagnose(out, _reference_forward(m, x), [
        (lambda: m.out(m.hidden(m.emb(x).flatten(1))), "the hidden layer's output goes through tanh"),
        (lambda: torch.tanh(m.out(torch.tanh(m.hidden(m.emb(x).flatten(1))))),
         "return the logits of the output layer as they are: tanh belongs to the hidden layer only"),
        (lambda: m.out(torch.tanh(m.hidden(m.emb(x).transpose(1, 2).flatten(1)))),
         "flatten emb(x), of shape (batch, context, d_emb), as it is: the embeddings of each position one after "
         "the other"),
    ], _FORWARD_CONTRACT)


def _assert_forward(m, x: torch.Tensor, name: str, edge: bool = False) -> None:
    out = call_learner(m, f"the forward pass for {name}", x.clone()) if edge else m(x.clone())
    assert_shape(out, (x.shape[0], m.out.out_features), f"the logits for {name}",
                 hint="return one row of logits per window: shape (batch, vocab_size)")
    _assert_close_diagnosed(out, _reference_forward(m, x), f"the logits for {name}", lambda: _forward_hint(m, x, out),
                            atol=1e-5)


@q.check
def _mlp_forward(MLPLM):
    m = MLPLM(vocab_size=11, context=3, d_emb=4, d_hidden=16)
    _assert_forward(m, torch.randint(0, 11, (5, 3)), "MLPLM(11, context=3, d_emb=4, d_hidden=16) and x of shape (5, 3)")


@q.check(hidden=True)
def _mlp_forward_bigger(MLPLM):
    m = MLPLM(vocab_size=48, context=8, d_emb=24, d_hidden=64)
    _assert_forward(m, torch.randint(0, 48, (9, 8)), "a bigger MLPLM")


@q.check(hidden=True)
def _mlp_forward_edges(MLPLM):
    m = MLPLM(vocab_size=13, context=5, d_emb=3, d_hidden=7)
    _assert_forward(m, torch.randint(0, 13, (1, 5)), "a batch of one window, x of shape (1, 5)", edge=True)
    m = MLPLM(vocab_size=6, context=1, d_emb=5, d_hidden=9)
    _assert_forward(m, torch.randint(0, 6, (4, 1)), "a context of one character, x of shape (4, 1)", edge=True)


# --- train_step ----------------------------------------------------------------------------------------------
q = LAB.question("train_step", points=2, uses=("train_step", "MLPLM"), title="One optimisation step")

_STEP_CONTRACT = ("train_step(model, optimizer, x, y) makes exactly one step of the optimizer it is given, on the "
                  "gradients of the mean cross-entropy of model(x) against y, computed for this batch alone")


def _loss_and_grads(model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """At the model's current parameters (on a copy): the mean cross-entropy, the logits and the gradients."""
    ref = copy.deepcopy(model)
    ref.zero_grad(set_to_none=True)
    logits = ref(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return loss.item(), logits.detach(), [p.grad.detach().clone() for p in ref.parameters()]


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_loss(loss, expected: float, logits: torch.Tensor, y: torch.Tensor, what: str) -> None:
    hint = ("loss.item() turns the one-element loss tensor into a Python float" if isinstance(loss, torch.Tensor)
            else "return the loss as a Python float: loss.item()")
    check(isinstance(loss, float), f"{what} should return the loss as a Python float.", received=type(loss).__name__,
          hint=hint)
    _assert_close_diagnosed(loss, expected, f"the loss {what} returned", lambda: _diagnose(loss, expected, [
        (lambda: F.cross_entropy(logits, y, reduction="sum").item(),
         "that is the summed loss: use the mean cross-entropy (F.cross_entropy's default reduction)"),
    ], "return the mean cross-entropy of model(x) against y, computed before optimizer.step()"), rtol=1e-4)


def _assert_sgd_update(model, before: list[torch.Tensor], grads: list[torch.Tensor], lr: float, what: str,
                       previous: list[torch.Tensor] | None = None) -> None:
    """After one clean SGD(lr) step the parameters are `before - lr * grads`; if not, a hint from what they became.

    `previous`: the gradients of the step before, to recognise an update that adds them (no zero_grad) or uses
    them instead of this batch's (step before backward).
    """
    after = _params(model)

    def moved_by(delta: list[torch.Tensor]) -> bool:
        return all(torch.allclose(a, b - lr * d, rtol=1e-5, atol=1e-6) for a, b, d in zip(after, before, delta,
                                                                                            strict=True))

    if moved_by(grads):
        return
    if all(torch.equal(a, b) for a, b in zip(after, before, strict=True)):
        hint = ("the parameters did not change: one step is loss.backward() (gradients) then optimizer.step() "
                "(update), with no zero_grad() between them")
    elif previous is not None and moved_by([p + g for p, g in zip(previous, grads, strict=True)]):
        hint = ("the update used this batch's gradients plus the previous batch's: backward() adds to .grad, so "
                "clear the gradients every step (optimizer.zero_grad() before backward() or after step())")
    elif previous is not None and moved_by(previous):
        hint = ("the update used the previous batch's gradients: call optimizer.step() after loss.backward(), "
                "in the same train_step")
    elif moved_by([2 * g for g in grads]):
        hint = "the parameters moved twice as far as one step: call optimizer.step() once per train_step"
    else:
        hint = _STEP_CONTRACT
    for (name, _), a, b, g in zip(model.named_parameters(), after, before, grads, strict=True):
        assert_close(a, b - lr * g, f"{name} {what}", rtol=1e-5, atol=1e-6, hint=hint)


@q.check
def _train_step(train_step, MLPLM):
    """The update, not the gradients left behind: zero_grad() first or last, set_to_none or not, all pass."""
    torch.manual_seed(0)
    model = MLPLM(vocab_size=11, context=3, d_emb=4, d_hidden=16)
    x1, y1 = torch.randint(0, 11, (8, 3)), torch.randint(0, 11, (8,))
    x2, y2 = torch.randint(0, 11, (8, 3)), torch.randint(0, 11, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    before = _params(model)
    loss, logits, grads1 = _loss_and_grads(model, x1, y1)
    got = train_step(model, optimizer, x1, y1)
    _assert_loss(got, loss, logits, y1, "train_step")
    _assert_sgd_update(model, before, grads1, 0.5, "after one train_step with SGD(lr=0.5)")

    before = _params(model)
    loss, logits, grads2 = _loss_and_grads(model, x2, y2)
    got = train_step(model, optimizer, x2, y2)
    _assert_loss(got, loss, logits, y2, "a second train_step")
    _assert_sgd_update(model, before, grads2, 0.5, "after a second train_step on another batch", previous=grads1)


def _reference_train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


@q.check(hidden=True)
def _train_step_adamw(train_step, MLPLM):
    """With the notebook's optimizer (AdamW, which keeps state), a batch of one and a class that never occurs."""
    torch.manual_seed(1)
    model = MLPLM(vocab_size=9, context=4, d_emb=5, d_hidden=12)
    reference = copy.deepcopy(model)
    # eps=1e-3 keeps Adam's update of a near-zero gradient insensitive to rounding in how the loss was written
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02, eps=1e-3, weight_decay=0.1)
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=0.02, eps=1e-3, weight_decay=0.1)
    batches = [(torch.randint(0, 9, (1, 4)), torch.tensor([8])),
               (torch.randint(0, 9, (5, 4)), torch.tensor([0, 3, 3, 1, 7])),
               (torch.randint(0, 9, (3, 4)), torch.tensor([2, 2, 6]))]
    for step, (x, y) in enumerate(batches, start=1):
        expected_loss = _reference_train_step(reference, ref_optimizer, x, y)
        loss = train_step(model, optimizer, x, y)
        assert_close(loss, expected_loss, f"the loss returned by train_step call {step} with AdamW", rtol=1e-4,
                     hint=_STEP_CONTRACT)
        for (name, p), r in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert_close(p.detach(), r.detach(), f"{name} after train_step call {step} with AdamW",
                         rtol=1e-4, atol=1e-6, hint=_STEP_CONTRACT + ": call optimizer.step(), the optimizer "
                         "decides the update")


# --- trained_lm ----------------------------------------------------------------------------------------------
q = LAB.question("trained_lm", points=3, uses=("model",), title="Your trained model on held-out text",
                 builds_on=("mlp_forward", "train_step"))


@q.check
def _trained(model):
    check(hasattr(model, "context"), "`model` should be your trained MLPLM (it has no .context).",
          received=type(model).__name__)
    tok = world.CharTokenizer()
    ids = torch.tensor(tok.encode(world.corpus(20_000, seed=HELD_OUT_SEED)))
    loss = mean_loss(model.cpu(), ids, model.context)
    uniform = math.log(tok.vocab_size)
    if math.isnan(loss):
        hint = "the loss is NaN: training diverged (a learning rate too high?) or the model outputs NaN"
    elif loss > uniform - 0.2:
        hint = (f"that is about ln V = {uniform:.2f}, the loss of a uniform guess: the model looks untrained. Did the "
                "training cell run, and does train_step update the parameters?")
    else:
        hint = ("better than a uniform guess, not yet good enough: if train_step passes its checks, train longer or "
                "tune the learning rate (the bigram model gets ~2.2, the solution ~0.56)")
    assert_below(loss, LOSS_THRESHOLD, "held-out loss (nats/char, on text the grader generated)", hint=hint)


# --- sample --------------------------------------------------------------------------------------------------
q = LAB.question("sample", points=2, uses=("sample", "MLPLM"), title="Sampling with a temperature")

_SAMPLE_CONTRACT = ("each step feeds the last model.context characters of the text so far (prompt plus what was "
                    "generated, left-padded with \"\\n\") and draws from softmax(logits / temperature); as the "
                    "temperature goes to 0 that is the most likely character")


def _generate(model, prompt: str, n_new: int, choose: Callable[[torch.Tensor], int],
              window: Callable[[list[int]], list[int]] | None = None) -> str:
    """Generation as the contract says, or with one part of it (how to choose, which context) swapped."""
    tok = world.CharTokenizer()
    ids = tok.encode(prompt)
    pad = tok.encode("\n")[0]
    window = window or (lambda ids: ([pad] * model.context + ids)[-model.context:])
    with torch.no_grad():
        for _ in range(n_new):
            ids.append(int(choose(model(torch.tensor([window(ids)]))[0])))
    return tok.decode(ids)


def _greedy(model, prompt: str, n_new: int) -> str:
    return _generate(model, prompt, n_new, lambda logits: int(logits.argmax(-1)))


def _drawing(scale: Callable[[torch.Tensor], torch.Tensor], seed: int) -> Callable[[torch.Tensor], int]:
    g = torch.Generator().manual_seed(seed)
    return lambda logits: int(torch.multinomial(torch.softmax(scale(logits), dim=-1), 1, generator=g))


def _sample_hint(m, prompt: str, n_new: int, temperature: float, seed: int, got) -> str:
    tok = world.CharTokenizer()
    c, pad = m.context, tok.encode("\n")[0]
    start = ([pad] * c + tok.encode(prompt))[-c:]

    def argmax(logits: torch.Tensor) -> int:
        return int(logits.argmax(-1))

    mistakes = [
        (lambda: _generate(m, prompt, n_new, argmax, window=lambda ids: start),
         "the context must follow the text: take the last model.context characters of the prompt plus what was "
         "generated so far, at every step"),
        (lambda: _generate(m, prompt, n_new, argmax, window=lambda ids: ids[-c:] + [pad] * (c - len(ids[-c:]))),
         "pad a short context on the left, before the text, so that the last characters stay last"),
        (lambda: _generate(m, prompt, n_new, argmax,
                           window=lambda ids: (tok.encode(" ") * c + ids)[-c:]),
         "pad a short context with \"\\n\", the character that starts every text"),
        (lambda: _generate(m, prompt, n_new, _drawing(lambda z: z * temperature, seed)),
         "divide the logits by the temperature; multiplying flattens the distribution when T is small"),
        (lambda: _generate(m, prompt, n_new, _drawing(lambda z: z, seed)),
         "the temperature had no effect: divide the logits by it before the softmax"),
    ]
    return _diagnose(got, _greedy(m, prompt, n_new), mistakes, _SAMPLE_CONTRACT)


def _toy_model(MLPLM):
    torch.manual_seed(3)
    m = MLPLM(vocab_size=world.CharTokenizer().vocab_size, context=4, d_emb=8, d_hidden=32)
    with torch.no_grad():
        m.out.weight.mul_(8)  # peaky but not one-hot distributions: greedy and sampling differ
    return m.eval()


def _assert_greedy(sample, m, prompt: str, n_new: int, edge: str | None = None) -> None:
    """`edge`: the hint when this prompt makes sample crash (a crash then fails the check, naming the prompt)."""
    args = (m, prompt, n_new)
    kwargs = {"temperature": 1e-4, "generator": torch.Generator().manual_seed(0)}
    out = (call_learner(sample, f"sample(model, {prompt!r}, {n_new}, temperature=1e-4)", *args, hint=edge, **kwargs)
           if edge else sample(*args, **kwargs))
    assert_type(out, str, "sample(...)")
    head = out[:len(out) - n_new] if len(out) >= n_new else None  # what comes before the last n_new characters
    if head == "" and prompt:
        length_hint = "return the prompt followed by the new characters, not the new characters alone"
    elif head is not None and len(head) > len(prompt) and head.lstrip("\n") == prompt.lstrip("\n"):
        length_hint = ("the \"\\n\" padding belongs in the model's context only: return the prompt as it was given, "
                       "followed by the new characters")
    elif out.startswith(prompt):
        length_hint = f"generate exactly n_new = {n_new} characters after the prompt"
    else:
        length_hint = "return the prompt as it was given, followed by the n_new new characters"
    check(out.startswith(prompt) and len(out) == len(prompt) + n_new,
          f"sample(model, {prompt!r}, {n_new}, ...) should return the prompt followed by {n_new} new characters.",
          received=repr(out), hint=length_hint)
    expected = _greedy(m, prompt, n_new)
    if out != expected:
        check(False, f"With temperature 1e-4, sampling after {prompt!r} should pick the most likely character at "
              "every step.", received=repr(out), expected=repr(expected),
              hint=_sample_hint(m, prompt, n_new, 1e-4, 0, out))


@q.check
def _sample_greedy(sample, MLPLM):
    m = _toy_model(MLPLM)
    _assert_greedy(sample, m, "mia has", 12)
    a = sample(m, "tom", 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = sample(m, "tom", 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    check(a == b, "The same generator seed gave different samples.", received=f"{a!r} and {b!r}",
          hint="pass generator= to torch.multinomial")


@q.check(hidden=True)
def _sample_short_prompts(sample, MLPLM):
    m = _toy_model(MLPLM)
    for prompt in ("a", "", "mia"):  # shorter than the context (4): the first contexts are padded
        _assert_greedy(sample, m, prompt, 9, edge="a text shorter than model.context is left-padded with \"\\n\" "
                       "up to model.context characters")


@q.check(hidden=True)
def _sample_distribution(sample, MLPLM):
    m = _toy_model(MLPLM)
    tok = world.CharTokenizer()
    pad = tok.encode("\n")[0]
    for temperature in (1.0, 2.0):
        ctx = ([pad] * m.context + tok.encode("sam"))[-m.context:]
        probs = torch.softmax(m(torch.tensor([ctx]))[0] / temperature, -1)
        g = torch.Generator().manual_seed(11)
        counts = torch.zeros_like(probs)
        for _ in range(600):
            counts[tok.encode(sample(m, "sam", 1, temperature=temperature, generator=g)[-1])[0]] += 1
        tv = 0.5 * (counts / counts.sum() - probs).abs().sum().item()
        check(tv < 0.12, f"At temperature {temperature:g}, your samples do not follow softmax(logits / T) "
              f"(total variation distance {tv:.2f}).", hint="sample from softmax(logits / temperature)")
