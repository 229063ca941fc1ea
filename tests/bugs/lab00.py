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
    # the checks before issue 12 let the next four through
    ("move_batch passes only strings through", "v.to(device) if isinstance(v, torch.Tensor) else v",
     "v if isinstance(v, str) else v.to(device)", {"move_batch"}),
    ("the global generator reseeded", "generator = torch.Generator().manual_seed(seed)\n"
     "    return torch.randn(n, generator=generator)", "torch.manual_seed(seed)\n    return torch.randn(n)",
     {"reproducible_noise"}),
    ("noise drawn as a column and squeezed (a 0-dim tensor for n=1)", "return torch.randn(n, generator=generator)",
     "return torch.randn(n, 1, generator=generator).squeeze()", {"reproducible_noise"}),
    ("bytes of the whole storage, also for a view", "return t.numel() * t.element_size()",
     "return t.untyped_storage().nbytes()", {"tensor_nbytes"}),
    ("a 0-dim tensor returned instead of an int", "return t.numel() * t.element_size()",
     "return torch.tensor(t.shape).prod() * t.element_size()", {"tensor_nbytes"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("move_batch with an explicit loop",
     "return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}",
     "out = {}\n    for k, v in batch.items():\n        out[k] = v.to(device) if torch.is_tensor(v) else v\n"
     "    return out"),
    ("move_batch that copies the dict, then moves into the copy",
     "return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}",
     "out = dict(batch)\n    for k, v in out.items():\n        if isinstance(v, torch.Tensor):\n"
     "            out[k] = v.to(device)\n    return out"),
    ("nbytes from the storage's dtype size", "return t.numel() * t.element_size()",
     "return t.nelement() * t.dtype.itemsize"),
    ("nbytes from torch's own property", "return t.numel() * t.element_size()", "return t.nbytes"),
    ("nbytes from the shape", "return t.numel() * t.element_size()",
     "import math\n    return math.prod(t.shape) * t.element_size()"),
    ("noise from torch.normal", "return torch.randn(n, generator=generator)",
     "return torch.normal(0.0, 1.0, (n,), generator=generator)"),
    ("global reseeding inside fork_rng, which restores the global generator",
     "generator = torch.Generator().manual_seed(seed)\n    return torch.randn(n, generator=generator)",
     "with torch.random.fork_rng():\n        torch.manual_seed(seed)\n        return torch.randn(n)"),
]
