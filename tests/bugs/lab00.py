"""Realistic bugs in lab 00: (name, text in the solution, replacement, questions that must lose points)."""

BUGS = [
    ("move_batch mutates its input", "return {k: v.to(device) if isinstance(v, torch.Tensor) else v",
     "batch.update({k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})\n"
     "    return {k: v", {"move_batch"}),
    ("generator never seeded", "generator = torch.Generator().manual_seed(seed)", "generator = torch.Generator()",
     {"reproducible_noise"}),
    ("every dtype assumed 4 bytes", "return t.numel() * t.element_size()", "return t.numel() * 4",
     {"tensor_nbytes"}),
    ("move_batch drops what is not a tensor", "return {k: v.to(device) if isinstance(v, torch.Tensor) else v",
     "return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)} or {k: v",
     {"move_batch"}),
    ("uniform noise instead of normal", "return torch.randn(n, generator=generator)",
     "return torch.rand(n, generator=generator)", {"reproducible_noise"}),
    ("elements counted, not bytes", "return t.numel() * t.element_size()", "return t.numel()",
     {"tensor_nbytes"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("move_batch with an explicit loop",
     "return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}",
     "out = {}\n    for k, v in batch.items():\n        out[k] = v.to(device) if torch.is_tensor(v) else v\n"
     "    return out"),
    ("nbytes from the storage's dtype size", "return t.numel() * t.element_size()",
     "return t.nelement() * t.dtype.itemsize"),
]
