"""Memory of training: what the weights, gradients and optimizer states take, predicted and measured.

Lab 06 builds the prediction and the measurement by hand for a full fine-tune; the grader and the labs after it
(parameter-efficient and memory-efficient training) use these. Three figures, from cheapest to most complete:

* ``predicted_training_bytes``: from the parameters alone, before anything runs. Weights count for every parameter;
  gradients and the optimizer's states (AdamW: m and v, each the shape and dtype of its parameter) only for the
  parameters that require a gradient. In float32 that is 4 + 4 + 8 = 16 bytes per trainable parameter.
* ``training_state_bytes``: the same three parts, read off the tensors that exist after a step (every parameter,
  every ``.grad``, every tensor in ``optimizer.state``, AdamW's one-element ``step`` counters included).
* ``peak_allocated_bytes``: the peak of all tensor memory while a function runs, activations and temporaries included.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

__all__ = ["TrainingBytes", "peak_allocated_bytes", "predicted_training_bytes", "tensor_bytes",
           "training_state_bytes"]


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements: numel × bytes per element of its dtype (2 for bfloat16, 4 for float32)."""
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class TrainingBytes:
    """Bytes of the weights, the gradients and the optimizer's states."""

    weights: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "grads": self.grads, "optimizer": self.optimizer, "total": self.total}

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in self.as_dict().items())
        return f"TrainingBytes({parts})"


def _parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(model.parameters())  # each shared (tied) parameter once


def predicted_training_bytes(model: torch.nn.Module, states_per_param: int = 2) -> TrainingBytes:
    """What training `model` with an optimizer that keeps `states_per_param` tensors per trainable parameter
    (AdamW: 2, SGD with momentum: 1) will hold besides activations, predicted from the parameters' sizes and dtypes."""
    params = _parameters(model)
    trainable = sum(tensor_bytes(p) for p in params if p.requires_grad)
    return TrainingBytes(sum(tensor_bytes(p) for p in params), trainable, states_per_param * trainable)


def _state_tensors(optimizer: torch.optim.Optimizer | None) -> Iterable[torch.Tensor]:
    if optimizer is None:
        return []
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def training_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainingBytes:
    """The bytes of the tensors that exist now: every parameter, every gradient that is not None, and every tensor
    the optimizer keeps (created at its first step; AdamW's ``step`` counter is one more float32 per parameter)."""
    params = _parameters(model)
    return TrainingBytes(sum(tensor_bytes(p) for p in params),
                         sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
                         sum(tensor_bytes(t) for t in _state_tensors(optimizer)))


def peak_allocated_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """The peak of tensor memory allocated by `fn()` while it runs, above what was allocated before it.

    On CUDA: ``torch.cuda.max_memory_allocated`` (exact). On the CPU, which keeps no such counter, the memory events
    of ``torch.profiler`` (``profile_memory=True``): only blocks allocated inside `fn` are tracked, so create what the
    figure should include (a copy of the model, the optimizer) inside `fn` too."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    return max([0, *totals])
