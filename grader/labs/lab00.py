"""Lab 00 - Setup and how this course works: warm-up questions on devices, seeding and memory."""

from __future__ import annotations

import torch

from grader.asserts import assert_close, assert_equal, assert_type, check
from grader.registry import Lab

LAB = Lab("00", "Setup and how this course works")

# --- move_batch ----------------------------------------------------------------------------------------------
q = LAB.question("move_batch", points=2, uses=("move_batch",), title="Move a batch to a device")


def _batch() -> dict:
    return {"input_ids": torch.arange(6).view(2, 3), "mask": torch.ones(2, 3, dtype=torch.bool), "source": "story-7"}


@q.check
def _move_batch_cpu(move_batch):
    batch = _batch()
    out = move_batch(batch, torch.device("cpu"))
    assert_type(out, dict, "move_batch(batch, device)", hint="return a new dict")
    assert_equal(sorted(out), sorted(batch), "the keys of the returned dict", hint="keep every key, tensor or not")
    check(out["source"] == "story-7", "A non-tensor value was changed or dropped.", hint="pass non-tensors through")
    for k in ("input_ids", "mask"):
        assert_close(out[k], batch[k], f"out['{k}']")
    # The meta device exists on every machine, so a real move can be observed even on a CPU-only box.
    out = move_batch(batch, torch.device("meta"))
    check(out is not batch and all(batch[k].device.type == "cpu" for k in ("input_ids", "mask")),
          "move_batch changed the dict it was given.",
          hint="build and return a new dict instead of assigning into `batch`")


@q.check(hidden=True)
def _move_batch_meta(move_batch):
    out = move_batch(_batch(), torch.device("meta"))
    for k in ("input_ids", "mask"):
        check(out[k].device.type == "meta", f"out['{k}'] is on {out[k].device}, not on the requested device.",
              hint="use tensor.to(device)")
    check(out["source"] == "story-7", "A non-tensor value was changed or dropped.")


# --- reproducible_noise --------------------------------------------------------------------------------------
q = LAB.question("reproducible_noise", points=2, uses=("reproducible_noise",), title="Reproducible randomness")


@q.check
def _noise(reproducible_noise):
    a = reproducible_noise(seed=7, n=5)
    assert_type(a, torch.Tensor, "reproducible_noise(seed=7, n=5)")
    check(tuple(a.shape) == (5,), f"expected shape (5,), got {tuple(a.shape)}.")
    torch.manual_seed(999)  # disturbing the global generator must not matter
    b = reproducible_noise(seed=7, n=5)
    assert_close(b, a, "a second call with the same seed", hint="create a torch.Generator and seed it with `seed`")
    c = reproducible_noise(seed=8, n=5)
    check(not torch.allclose(a, c), "Different seeds gave the same noise.", hint="seed the generator with `seed`")


@q.check(hidden=True)
def _noise_standard_normal(reproducible_noise):
    x = reproducible_noise(seed=123, n=20_000)
    expected = torch.randn(20_000, generator=torch.Generator().manual_seed(123))
    assert_close(x, expected, "reproducible_noise(seed=123, n=20000)",
                 hint="draw with torch.randn(n, generator=g) from a generator seeded with `seed`")


# --- tensor_nbytes -------------------------------------------------------------------------------------------
q = LAB.question("tensor_nbytes", points=2, uses=("tensor_nbytes",), title="Bytes a tensor needs")


@q.check
def _nbytes(tensor_nbytes):
    for shape, dtype in [((3, 4), torch.float32), ((10,), torch.bfloat16), ((2, 2, 2), torch.int64)]:
        t = torch.zeros(shape, dtype=dtype)
        assert_equal(tensor_nbytes(t), t.numel() * t.element_size(), f"tensor_nbytes(zeros({shape}, {dtype}))",
                     hint="bytes = number of elements x bytes per element; dtypes differ in size")


@q.check(hidden=True)
def _nbytes_more(tensor_nbytes):
    for shape, dtype in [((7, 3), torch.float16), ((5, 5), torch.uint8), ((4, 8), torch.float64)]:
        t = torch.ones(shape, dtype=dtype)
        assert_equal(tensor_nbytes(t), t.numel() * t.element_size(), f"tensor_nbytes(ones({shape}, {dtype}))")
