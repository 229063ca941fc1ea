"""Realistic bugs in lab 01: (name, text in the solution, replacement, questions that must lose points).

A bug in `softmax` also reaches `ce_grad`, which calls it. `trained_lm` is listed only where the bug also ruins the
model the training cell builds with `train_step` (the suite then retrains).
CORRECT: (name, text in the solution, replacement) - other valid answers, which must keep full marks.
Each text occurs exactly once in the solution notebook's code cells.
"""

_STEP = ("    optimizer.zero_grad()\n    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n"
         "    optimizer.step()\n")
_SAMPLE_LOOP = "    for _ in range(n_new):\n        context = ([pad] * model.context + ids)[-model.context:]\n"
_SAMPLE_DRAW = ("        logits = model(torch.tensor([context], device=next(model.parameters()).device))"
                "[0].float().cpu()\n"
                "        probs = torch.softmax(logits / temperature, dim=-1)\n"
                "        ids.append(int(torch.multinomial(probs, 1, generator=generator)))\n")

BUGS = [
    ("softmax without subtracting the max", "z = x - x.max(dim=-1, keepdim=True).values", "z = x",
     {"softmax", "ce_grad"}),
    ("softmax over the wrong axis", "return e / e.sum(dim=-1, keepdim=True)",
     "return e / e.sum(dim=0, keepdim=True)",
     {"softmax", "ce_grad"}),
    ("softmax subtracts the maximum of the whole batch", "z = x - x.max(dim=-1, keepdim=True).values",
     "z = x - x.max()", {"softmax", "ce_grad"}),
    ("softmax adds an epsilon (tiny probabilities wrong)", "e = z.exp()", "e = z.exp() + 1e-8", {"softmax"}),
    ("softmax subtracts the max in place (changes its input)", "z = x - x.max(dim=-1, keepdim=True).values",
     "x -= x.max(dim=-1, keepdim=True).values\n    z = x", {"softmax"}),
    ("gradient of the sum, not the mean", "F.one_hot(targets, v).to(logits.dtype)) / n",
     "F.one_hot(targets, v).to(logits.dtype))", {"ce_grad"}),
    ("ce_grad with its own softmax, without the max", "return (softmax(logits) - F.one_hot",
     "return (logits.exp() / logits.exp().sum(dim=-1, keepdim=True) - F.one_hot", {"ce_grad"}),
    ("one-hot without num_classes", "F.one_hot(targets, v)", "F.one_hot(targets)", {"ce_grad"}),
    ("bigram normalised over columns", "return counts / counts.sum(dim=1, keepdim=True)",
     "return counts / counts.sum(dim=0, keepdim=True)", {"bigram_probs"}),
    ("bigram counts a repeated pair once",
     "counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)",
     "counts[ids[:-1], ids[1:]] += 1", {"bigram_probs"}),
    ("bigram takes the vocabulary size from the data",
     "counts = torch.full((vocab_size, vocab_size), float(alpha))",
     "vocab_size = int(ids.max()) + 1\n    counts = torch.full((vocab_size, vocab_size), float(alpha))",
     {"bigram_probs"}),
    ("MLP without its nonlinearity", "h = torch.tanh(self.hidden(self.emb(x).flatten(1)))",
     "h = self.hidden(self.emb(x).flatten(1))", {"mlp_forward"}),
    ("training without zero_grad", "    optimizer.zero_grad()\n", "", {"train_step", "trained_lm"}),
    ("step before backward (each step applies the previous batch's gradients)", _STEP,
     "    optimizer.step()\n    optimizer.zero_grad()\n    loss = F.cross_entropy(model(x), y)\n"
     "    loss.backward()\n", {"train_step"}),
    ("train_step updates the parameters by hand, ignoring the optimizer", "    optimizer.step()\n",
     "    with torch.no_grad():\n        for p in model.parameters():\n"
     "            p -= optimizer.param_groups[0][\"lr\"] * p.grad\n", {"train_step", "trained_lm"}),
    ("temperature multiplies the logits", "probs = torch.softmax(logits / temperature, dim=-1)",
     "probs = torch.softmax(logits * temperature, dim=-1)", {"sample"}),
    ("sampling context never updated", _SAMPLE_LOOP,
     "    context = ([pad] * model.context + ids)[-model.context:]\n    for _ in range(n_new):\n", {"sample"}),
    ("sample returns the padding it added to a short prompt", "ids = tok.encode(prompt)",
     "ids = tok.encode(prompt.rjust(model.context, \"\\n\"))", {"sample"}),
    ("sampling context padded on the right", "context = ([pad] * model.context + ids)[-model.context:]",
     "context = ids[-model.context:]\n        context = context + [pad] * (model.context - len(context))",
     {"sample"}),
]

CORRECT = [
    ("softmax through logsumexp",
     "z = x - x.max(dim=-1, keepdim=True).values\n    e = z.exp()\n    return e / e.sum(dim=-1, keepdim=True)",
     "return torch.exp(x - torch.logsumexp(x, dim=-1, keepdim=True))"),
    ("ce_grad subtracting 1 at the targets", "return (softmax(logits) - F.one_hot(targets, v).to(logits.dtype)) / n",
     "grad = softmax(logits).clone()\n    grad[torch.arange(n), targets] -= 1\n    return grad / n"),
    ("bigram counted with bincount",
     "counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)",
     "counts += torch.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size * vocab_size)"
     ".view(vocab_size, vocab_size)"),
    ("MLP concatenating the embeddings position by position", "h = torch.tanh(self.hidden(self.emb(x).flatten(1)))",
     "e = torch.cat([self.emb(x[:, i]) for i in range(self.context)], dim=1)\n"
     "        h = torch.tanh(self.hidden(e))"),
    ("train_step: backward, step, then zero_grad", _STEP,
     "    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n    optimizer.step()\n    optimizer.zero_grad()\n"),
    ("train_step: model.zero_grad(set_to_none=False) last", _STEP,
     "    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n    optimizer.step()\n"
     "    model.zero_grad(set_to_none=False)\n"),
    ("train_step: model.zero_grad() first, loss from log_softmax", _STEP,
     "    model.zero_grad()\n    loss = F.nll_loss(F.log_softmax(model(x), dim=-1), y)\n    loss.backward()\n"
     "    optimizer.step()\n"),
    ("sampling with a rolling context window", _SAMPLE_LOOP + _SAMPLE_DRAW,
     "    context = ([pad] * model.context + ids)[-model.context:]\n    for _ in range(n_new):\n"
     + _SAMPLE_DRAW + "        context = context[1:] + ids[-1:]\n"),
    ("sampling through the learner's own softmax", "probs = torch.softmax(logits / temperature, dim=-1)",
     "probs = softmax(logits / temperature)"),
]
