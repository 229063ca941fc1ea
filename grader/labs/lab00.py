"""Lab 00 - Setup and how this course works: warm-up questions on devices, seeding and memory.

A hint names a mistake only when the received value shows it (a crash on a value, a result that equals the
storage's size); otherwise it states the contract.
"""

from __future__ import annotations

import torch

from grader.asserts import assert_close, assert_equal, assert_type, call_learner, check
from grader.registry import Lab

LAB = Lab("00", "Setup and how this course works")


# --- move_batch ----------------------------------------------------------------------------------------------
q = LAB.question("move_batch", points=2, uses=("move_batch",), title="Move a batch to a device")

_PASS_THROUGH = ("move every value that is a tensor (isinstance(v, torch.Tensor)) and pass every other value "
                 "through as it is, whatever its type")


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


def _mixed_batch() -> dict:
    """Other keys, dtypes and shapes (a batch of one, a 0-dim count) and values of every other kind."""
    return {"labels": torch.tensor([[5, -100, 7]]), "pixel_values": torch.rand(1, 3, 2, 2).half(),
            "n_tokens": torch.tensor(3), "doc_ids": [4, 9], "n_docs": 2, "score": 0.5, "split": None,
            "source": "story-7", "meta": {"lang": "en"}}


@q.check(hidden=True)
def _move_batch_any_values(move_batch):
    batch, given = _mixed_batch(), _mixed_batch()
    what = "move_batch(batch, device) for a batch that also holds an int, a float, a list, None and a dict"
    out = call_learner(move_batch, what, given, torch.device("meta"), hint=_PASS_THROUGH)
    assert_type(out, dict, what)
    assert_equal(sorted(out), sorted(batch), f"the keys of the dict from {what}", hint=_PASS_THROUGH)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            got = out[k]
            assert_type(got, torch.Tensor, f"out[{k!r}]", hint=_PASS_THROUGH)
            check(got.device.type == "meta", f"out[{k!r}] is on {got.device}, not on the requested device.",
                  hint=_PASS_THROUGH)
            assert_equal(tuple(got.shape), tuple(v.shape), f"the shape of out[{k!r}]",
                         hint="move the tensor as it is: tensor.to(device) keeps its shape and dtype")
            assert_equal(got.dtype, v.dtype, f"the dtype of out[{k!r}]",
                         hint="move the tensor as it is: tensor.to(device) keeps its shape and dtype")
        else:
            check(type(out[k]) is type(v) and out[k] == v, f"out[{k!r}] (not a tensor) was changed.",
                  received=repr(out[k]), expected=repr(v), hint=_PASS_THROUGH)
    check(all(given[k].device.type == "cpu" for k, v in batch.items() if isinstance(v, torch.Tensor))
          and sorted(given) == sorted(batch), "move_batch changed the dict it was given.",
          hint="build and return a new dict instead of assigning into `batch`")


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


@q.check
def _noise_leaves_global_generator(reproducible_noise):
    torch.manual_seed(999)
    state = torch.get_rng_state()
    reproducible_noise(seed=7, n=5)
    check(torch.equal(torch.get_rng_state(), state),
          "reproducible_noise changed the state of torch's global generator, so the random numbers of all other "
          "code change when it is called.",
          hint="draw from a torch.Generator of your own (torch.randn(n, generator=g)) and leave the global one "
          "alone: torch.manual_seed(seed) reseeds the global generator")


@q.check(hidden=True)
def _noise_standard_normal(reproducible_noise):
    x = reproducible_noise(seed=123, n=20_000)
    expected = torch.randn(20_000, generator=torch.Generator().manual_seed(123))
    assert_close(x, expected, "reproducible_noise(seed=123, n=20000)",
                 hint="draw with torch.randn(n, generator=g) from a generator seeded with `seed`")


@q.check(hidden=True)
def _noise_one_number(reproducible_noise):
    x = call_learner(reproducible_noise, "reproducible_noise(seed=5, n=1)", seed=5, n=1)
    hint = None
    if isinstance(x, torch.Tensor) and x.dim() == 0:
        hint = ("n numbers are a 1-D tensor of shape (n,), also for n=1; yours has no dimension at all, as after "
                "squeeze() or indexing a single element")
    assert_close(x, torch.randn(1, generator=torch.Generator().manual_seed(5)), "reproducible_noise(seed=5, n=1)",
                 hint=hint or "n standard-normal numbers: a 1-D float32 tensor of shape (n,), also for n=1")


# --- tensor_nbytes -------------------------------------------------------------------------------------------
q = LAB.question("tensor_nbytes", points=2, uses=("tensor_nbytes",), title="Bytes a tensor needs")

_NBYTES_CONTRACT = "bytes = number of elements x bytes per element (t.numel() * t.element_size()), as a Python int"


def _assert_nbytes(tensor_nbytes, t: torch.Tensor, name: str, hint: str | None = None, edge: bool = False) -> None:
    what = f"tensor_nbytes({name})"
    got = call_learner(tensor_nbytes, what, t, hint=_NBYTES_CONTRACT) if edge else tensor_nbytes(t)
    if isinstance(got, torch.Tensor):
        type_hint = "convert the count to a Python int: int(...) or .item()"
    elif isinstance(got, float):
        type_hint = "a number of bytes is a whole number: return an int (int(...)), not a float"
    else:
        type_hint = "return a Python int (int(...) converts a NumPy or torch integer)"
    check(isinstance(got, int) and not isinstance(got, bool), f"{what} should return a Python int.",
          received=type(got).__name__, hint=type_hint)
    want = t.numel() * t.element_size()
    if got != want and got == t.untyped_storage().nbytes():
        hint = ("that is the size of the whole storage this view shares with a bigger tensor: count the view's own "
                "elements (t.numel()) times the bytes of one (t.element_size())")
    assert_equal(got, want, what, hint=hint or _NBYTES_CONTRACT)


@q.check
def _nbytes(tensor_nbytes):
    for shape, dtype in [((3, 4), torch.float32), ((10,), torch.bfloat16), ((2, 2, 2), torch.int64)]:
        _assert_nbytes(tensor_nbytes, torch.zeros(shape, dtype=dtype), f"zeros({shape}, {dtype})",
                       hint="bytes = number of elements x bytes per element; dtypes differ in size")


@q.check(hidden=True)
def _nbytes_more(tensor_nbytes):
    for shape, dtype in [((7, 3), torch.float16), ((5, 5), torch.uint8), ((4, 8), torch.float64),
                         ((2, 3), torch.bool), ((3,), torch.complex64), ((1, 1, 5), torch.int16)]:
        _assert_nbytes(tensor_nbytes, torch.ones(shape, dtype=dtype), f"ones({shape}, {dtype})", edge=True)


@q.check(hidden=True)
def _nbytes_views_and_edges(tensor_nbytes):
    x = torch.arange(24, dtype=torch.float32).view(4, 6)
    for view, name in [(x[:, ::2], "x[:, ::2], a strided view of a (4, 6) float32 x"),
                       (x[1:3], "x[1:3], a slice of a (4, 6) float32 x"),
                       (x.T[:2], "x.T[:2], a non-contiguous slice of a (4, 6) float32 x"),
                       (torch.tensor(2.5), "a 0-dim float32 tensor (a single number)"),
                       (torch.zeros(0, 5, dtype=torch.int64), "an empty (0, 5) int64 tensor")]:
        _assert_nbytes(tensor_nbytes, view, name, edge=True)
