"""Realistic bugs in lab 00: (name, text in the solution, replacement, questions that must lose points)."""

BUGS = [
    ("move_batch mutates its input", "return {k: v.to(device) if isinstance(v, torch.Tensor) else v",
     "batch.update({k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})\n"
     "    return {k: v", {"move_batch"}),
    ("generator never seeded", "generator = torch.Generator().manual_seed(seed)", "generator = torch.Generator()",
     {"reproducible_noise"}),
    ("every dtype assumed 4 bytes", "return t.numel() * t.element_size()", "return t.numel() * 4",
     {"tensor_nbytes"}),
]
