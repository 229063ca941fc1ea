"""Realistic bugs in lab 01: (name, text in the solution, replacement, questions that must lose points)."""

BUGS = [
    ("softmax without subtracting the max", "z = x - x.max(dim=-1, keepdim=True).values", "z = x",
     {"softmax"}),
    ("softmax over the wrong axis", "return e / e.sum(dim=-1, keepdim=True)",
     "return e / e.sum(dim=0, keepdim=True)",
     {"softmax", "ce_grad"}),
    ("gradient of the sum, not the mean", "F.one_hot(targets, v).to(logits.dtype)) / n",
     "F.one_hot(targets, v).to(logits.dtype))", {"ce_grad"}),
    ("bigram normalised over columns", "return counts / counts.sum(dim=1, keepdim=True)",
     "return counts / counts.sum(dim=0, keepdim=True)", {"bigram_probs"}),
    ("MLP without its nonlinearity", "h = torch.tanh(self.hidden(self.emb(x).flatten(1)))",
     "h = self.hidden(self.emb(x).flatten(1))", {"mlp_forward"}),
    ("training without zero_grad", "    optimizer.zero_grad()\n", "", {"train_step", "trained_lm"}),
    ("temperature multiplies the logits", "probs = torch.softmax(logits / temperature, dim=-1)",
     "probs = torch.softmax(logits * temperature, dim=-1)", {"sample"}),
]
