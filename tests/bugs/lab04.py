"""Realistic bugs in lab 04: (name, text in the solution, replacement, questions that must lose points), and
correct alternatives (name, text in the solution, replacement) that must keep full marks."""

_CLIP = ("    grads = [p.grad for p in parameters if p.grad is not None]\n"
         "    total = math.sqrt(sum(g.detach().float().pow(2).sum().item() for g in grads))\n"
         "    if total > max_norm:\n"
         "        for g in grads:\n"
         "            g.mul_(max_norm / (total + 1e-6))\n")
_TOP_K = ("    logits = logits / temperature\n"
          "    if top_k is not None:\n"
          "        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]\n"
          "        logits = logits.masked_fill(logits < kth, float(\"-inf\"))\n"
          "    probs = torch.softmax(logits, dim=-1)\n"
          "    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)\n")

BUGS = [
    ("targets not shifted", "return window[:, :-1], window[:, 1:]", "return window[:, :-1], window[:, :-1]",
     {"get_batch", "pretrained_lm"}),
    ("warm-up off by one", "return max_lr * (step + 1) / warmup_steps", "return max_lr * step / warmup_steps",
     {"lr_schedule"}),
    ("cosine never reaches min_lr", "progress = (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)",
     "progress = (step - warmup_steps) / (total_steps - warmup_steps)", {"lr_schedule"}),
    ("clipping each parameter on its own",
     "    if total > max_norm:\n        for g in grads:\n            g.mul_(max_norm / (total + 1e-6))\n",
     "    for g in grads:\n        g.mul_(min(1.0, max_norm / (g.norm().item() + 1e-6)))\n", {"clip_grad"}),
    ("clipping scales small gradients up", "    if total > max_norm:\n        for g in grads:",
     "    if True:\n        for g in grads:", {"clip_grad"}),
    # model.parameters() is a generator: the second loop over it is empty, so nothing is ever clipped.
    ("clipping walks the parameters twice", _CLIP,
     "    total = math.sqrt(sum(p.grad.detach().float().pow(2).sum().item() for p in parameters\n"
     "                          if p.grad is not None))\n"
     "    if total > max_norm:\n"
     "        for p in parameters:\n"
     "            if p.grad is not None:\n"
     "                p.grad.mul_(max_norm / (total + 1e-6))\n", {"clip_grad"}),
    ("clipping rebinds the gradient", "            g.mul_(max_norm / (total + 1e-6))",
     "            g = g * (max_norm / (total + 1e-6))", {"clip_grad"}),
    ("mean of the batches' mean losses",
     ', reduction="sum").item()\n        n_tokens += yb.numel()', ").item()\n        n_tokens += 1",
     {"perplexity"}),
    ("evaluation with dropout on", "was_training = model.training\n    model.eval()\n",
     "was_training = model.training\n", {"perplexity"}),
    ("one window too many when len(ids) is a multiple of block_size", "n = (len(ids) - 1) // block_size",
     "n = len(ids) // block_size", {"perplexity"}),
    ("resume forgets the optimizer state", '    optimizer.load_state_dict(state["optimizer"])\n', "",
     {"checkpoint_resume"}),
    ("resume forgets the batch generator", '    generator.set_state(state["generator"])\n', "",
     {"checkpoint_resume"}),
    ("top-k keeps k + 1 tokens", "kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]",
     "kth = torch.topk(logits, min(top_k + 1, logits.size(-1))).values[:, [-1]]", {"top_k_sample"}),
    ("temperature multiplies the logits", "logits = logits / temperature", "logits = logits * temperature",
     {"top_k_sample"}),
    # The 1-D idiom, one threshold for the whole batch: the smallest of all rows' top-k values.
    ("top-k threshold over the whole batch", ".values[:, [-1]]", ".values.min()", {"top_k_sample"}),
    ("top_k larger than the vocabulary crashes", "torch.topk(logits, min(top_k, logits.size(-1)))",
     "torch.topk(logits, top_k)", {"top_k_sample"}),
    ("softmax by hand overflows", "probs = torch.softmax(logits, dim=-1)",
     "probs = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)", {"top_k_sample"}),
    ("temperature applied to the probabilities", _TOP_K,
     "    if top_k is not None:\n"
     "        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]\n"
     "        logits = logits.masked_fill(logits < kth, float(\"-inf\"))\n"
     "    probs = torch.softmax(logits, dim=-1) ** (1 / temperature)\n"
     "    probs = probs / probs.sum(dim=-1, keepdim=True)\n"
     "    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)\n", {"top_k_sample"}),
    ("squeeze() drops the batch of one row", "generator=generator).squeeze(-1)", "generator=generator).squeeze()",
     {"top_k_sample"}),
]

CORRECT = [
    ("windows gathered in a Python loop",
     "    window = ids[starts[:, None] + torch.arange(block_size + 1)]\n    return window[:, :-1], window[:, 1:]\n",
     "    x = torch.stack([ids[s : s + block_size] for s in starts])\n"
     "    y = torch.stack([ids[s + 1 : s + block_size + 1] for s in starts])\n"
     "    return x, y\n"),
    ("clipping: a list first, norms stacked, always one factor min(1, ...)", _CLIP,
     "    params = [p for p in parameters if p.grad is not None]\n"
     "    norms = torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params])\n"
     "    total = torch.linalg.vector_norm(norms).item()\n"
     "    scale = min(1.0, max_norm / (total + 1e-6))\n"
     "    for p in params:\n"
     "        p.grad.mul_(scale)\n"),
    ("evaluate: mean loss times the batch's tokens", ', reduction="sum").item()\n        n_tokens += yb.numel()',
     ").item() * yb.numel()\n        n_tokens += yb.numel()"),
    ("evaluate: train mode restored with an if", "    model.train(was_training)\n    mean_loss",
     "    if was_training:\n        model.train()\n    mean_loss"),
    ("top-k threshold by sorting", "kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]",
     "kth = torch.sort(logits, dim=-1, descending=True).values[:, [min(top_k, logits.size(-1)) - 1]]"),
    ("top-k by drawing among the k largest only", _TOP_K,
     "    logits = logits / temperature\n"
     "    if top_k is not None and top_k < logits.size(-1):\n"
     "        values, indices = torch.topk(logits, top_k)\n"
     "        choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)\n"
     "        return indices.gather(-1, choice).squeeze(-1)\n"
     "    probs = torch.softmax(logits, dim=-1)\n"
     "    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)\n"),
    ("top-k masked with the dtype's minimum, temperature after", _TOP_K,
     "    if top_k is not None:\n"
     "        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]\n"
     "        logits = torch.where(logits < kth, torch.finfo(logits.dtype).min, logits)\n"
     "    probs = torch.softmax(logits / temperature, dim=-1)\n"
     "    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)\n"),
    ("softmax by hand, max subtracted", "probs = torch.softmax(logits, dim=-1)",
     "z = logits - logits.max(dim=-1, keepdim=True).values\n    probs = z.exp() / z.exp().sum(dim=-1, keepdim=True)"),
]
