"""Lab 01 - From tensors to a small language model.

References are computed here, from the library (torch.softmax, autograd) or from the
grader's own data (held-out text from a seed the notebook never uses).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from grader.asserts import assert_below, assert_close, assert_shape, assert_type, check
from grader.registry import Lab
from labkit import world
from labkit.lm import mean_loss

LAB = Lab("01", "From tensors to a small language model")
HELD_OUT_SEED = 9001  # the notebook trains on seed 0 and validates on seed 1
LOSS_THRESHOLD = 1.2  # nats/char; the bigram model gets ~2.2, unigram ~3.2, the solution ~0.6

# --- softmax -------------------------------------------------------------------------------------------------
q = LAB.question("softmax", points=2, uses=("softmax",), title="A numerically stable softmax")


@q.check
def _softmax_values(softmax):
    x = torch.randn(4, 7)
    assert_close(softmax(x), torch.softmax(x, dim=-1), "softmax(x) for x of shape (4, 7)",
                 hint="exponentiate, then divide by the sum over the LAST dimension (dim=-1, keepdim=True)")
    big = torch.tensor([[1000.0, 999.0, 0.0]])
    assert_close(softmax(big), torch.softmax(big, dim=-1), "softmax([[1000, 999, 0]])",
                 hint="exp(1000) overflows to inf: subtract the row maximum before exponentiating")


@q.check(hidden=True)
def _softmax_3d(softmax):
    x = torch.randn(3, 5, 6) * 20
    assert_close(softmax(x), torch.softmax(x, dim=-1), "softmax(x) for x of shape (3, 5, 6)",
                 hint="work along the last dimension whatever the number of dimensions")


# --- ce_grad -------------------------------------------------------------------------------------------------
q = LAB.question("ce_grad", points=2, uses=("ce_grad",), title="The cross-entropy gradient by hand")


def _autograd_ce_grad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    z = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(z, targets).backward()
    return z.grad


@q.check
def _ce_grad(ce_grad):
    logits, targets = torch.randn(5, 6), torch.tensor([0, 3, 5, 1, 1])
    got = ce_grad(logits, targets)
    assert_close(got, _autograd_ce_grad(logits, targets), "ce_grad(logits, targets) vs autograd",
                 hint="d(mean CE)/d logits = (softmax(logits) - one_hot(targets)) / N")


@q.check(hidden=True)
def _ce_grad_batch(ce_grad):
    logits, targets = torch.randn(32, 11) * 3, torch.randint(0, 11, (32,))
    assert_close(ce_grad(logits, targets), _autograd_ce_grad(logits, targets), "ce_grad on a (32, 11) batch")


# --- bigram_probs --------------------------------------------------------------------------------------------
q = LAB.question("bigram_probs", points=2, uses=("bigram_probs",), title="Bigram probabilities")


def _reference_bigram(ids: torch.Tensor, vocab_size: int, alpha: float) -> torch.Tensor:
    counts = torch.full((vocab_size, vocab_size), float(alpha))
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    return counts / counts.sum(dim=1, keepdim=True)


@q.check
def _bigram_small(bigram_probs):
    ids = torch.tensor([0, 1, 2, 1, 2, 0, 0, 1])
    got = bigram_probs(ids, 3, 1.0)
    assert_shape(got, (3, 3), "bigram_probs(ids, vocab_size=3, alpha=1.0)")
    check(torch.allclose(got.sum(dim=1), torch.ones(3), atol=1e-5),
          f"Rows should sum to 1 (P[next | current]); your row sums are {got.sum(dim=1).tolist()}.",
          hint="normalise each row: counts / counts.sum(dim=1, keepdim=True)")
    assert_close(got, _reference_bigram(ids, 3, 1.0), "bigram_probs(ids, 3, alpha=1.0)",
                 hint="P[a, b] = (count of a followed by b + alpha) / (row total); add alpha to every cell")


@q.check(hidden=True)
def _bigram_corpus(bigram_probs):
    tok = world.CharTokenizer()
    ids = torch.tensor(tok.encode(world.corpus(3000, seed=HELD_OUT_SEED)))
    assert_close(bigram_probs(ids, tok.vocab_size, 0.5), _reference_bigram(ids, tok.vocab_size, 0.5),
                 "bigram_probs on a corpus sample with alpha=0.5")


# --- MLPLM.forward -------------------------------------------------------------------------------------------
q = LAB.question("mlp_forward", points=2, uses=("MLPLM",), title="The MLP language model's forward pass")


def _reference_forward(m, x: torch.Tensor) -> torch.Tensor:
    return m.out(torch.tanh(m.hidden(m.emb(x).flatten(1))))


@q.check
def _mlp_forward(MLPLM):
    m = MLPLM(vocab_size=11, context=3, d_emb=4, d_hidden=16)
    x = torch.randint(0, 11, (5, 3))
    out = m(x)
    assert_shape(out, (5, 11), "MLPLM(11, context=3, ...)(x) for x of shape (5, 3)",
                 hint="return one row of logits per window: shape (batch, vocab_size)")
    assert_close(out, _reference_forward(m, x), "the logits of MLPLM", atol=1e-5,
                 hint="embed -> flatten to (batch, context*d_emb) -> hidden Linear -> tanh -> output Linear")


@q.check(hidden=True)
def _mlp_forward_bigger(MLPLM):
    m = MLPLM(vocab_size=48, context=8, d_emb=24, d_hidden=64)
    x = torch.randint(0, 48, (9, 8))
    assert_close(m(x), _reference_forward(m, x), "the logits of a bigger MLPLM", atol=1e-5)


# --- train_step ----------------------------------------------------------------------------------------------
q = LAB.question("train_step", points=2, uses=("train_step", "MLPLM"), title="One optimisation step")


@q.check
def _train_step(train_step, MLPLM):
    torch.manual_seed(0)
    model = MLPLM(vocab_size=11, context=3, d_emb=4, d_hidden=16)
    x1, y1 = torch.randint(0, 11, (8, 3)), torch.randint(0, 11, (8,))
    x2, y2 = torch.randint(0, 11, (8, 3)), torch.randint(0, 11, (8,))
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: we look at the gradients, not the update
    loss1 = train_step(model, frozen, x1, y1)
    check(isinstance(loss1, float), f"train_step should return the loss as a Python float, got {type(loss1).__name__}.",
          hint="return loss.item()")
    assert_close(loss1, F.cross_entropy(model(x1), y1).item(), "the loss returned by train_step", rtol=1e-4)
    train_step(model, frozen, x2, y2)
    ref = copy.deepcopy(model)
    ref.zero_grad()
    F.cross_entropy(ref(x2), y2).backward()
    for (name, p), (_, r) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        check(p.grad is not None, f"{name}.grad is None after train_step.", hint="call loss.backward()")
        assert_close(p.grad, r.grad, f"{name}.grad after two train_step calls",
                     hint="gradients add up across backward() calls: call optimizer.zero_grad() every step")
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x1, y1)
    check(any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)),
          "The parameters did not change.", hint="call optimizer.step() after loss.backward()")


# --- trained_lm ----------------------------------------------------------------------------------------------
q = LAB.question("trained_lm", points=3, uses=("model",), title="Your trained model on held-out text")


@q.check
def _trained(model):
    check(hasattr(model, "context"), "`model` should be your trained MLPLM (it has no .context).")
    tok = world.CharTokenizer()
    ids = torch.tensor(tok.encode(world.corpus(20_000, seed=HELD_OUT_SEED)))
    loss = mean_loss(model.cpu(), ids, model.context)
    assert_below(loss, LOSS_THRESHOLD, "held-out loss (nats/char, on text the grader generated)",
                 hint="train longer or with a better learning rate; the bigram model gets ~2.2")


# --- sample --------------------------------------------------------------------------------------------------
q = LAB.question("sample", points=2, uses=("sample", "MLPLM"), title="Sampling with a temperature")


def _greedy(model, prompt: str, n_new: int) -> str:
    tok = world.CharTokenizer()
    ids = tok.encode(prompt)
    pad = tok.encode("\n")[0]
    for _ in range(n_new):
        ctx = ([pad] * model.context + ids)[-model.context:]
        ids.append(int(model(torch.tensor([ctx])).argmax(-1)))
    return tok.decode(ids)


def _toy_model(MLPLM):
    torch.manual_seed(3)
    m = MLPLM(vocab_size=world.CharTokenizer().vocab_size, context=4, d_emb=8, d_hidden=32)
    with torch.no_grad():
        m.out.weight.mul_(8)  # peaky but not one-hot distributions: greedy and sampling differ
    return m.eval()


@q.check
def _sample_greedy(sample, MLPLM):
    m = _toy_model(MLPLM)
    out = sample(m, "mia has", 12, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert_type(out, str, "sample(...)")
    check(out.startswith("mia has") and len(out) == len("mia has") + 12,
          f"sample should return the prompt plus 12 new characters; got {out!r}.")
    check(out == _greedy(m, "mia has", 12),
          f"With temperature 1e-4, sampling should pick the most likely character every time; got {out!r}.",
          hint="divide the logits by the temperature before the softmax")
    a = sample(m, "tom", 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = sample(m, "tom", 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    check(a == b, "The same generator seed gave different samples.", hint="pass generator= to torch.multinomial")


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

