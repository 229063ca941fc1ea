"""Lab NN - <title>. Copy to grader/labs/labNN.py (two digits) and follow docs/authoring.md.

References come from the library (torch, transformers, peft, bitsandbytes) or from data the grader
generates from a seed the notebook never uses; never from the solution notebook.
"""

from __future__ import annotations

import torch

from grader.asserts import assert_close, assert_shape, check
from grader.registry import Lab
from labkit import world  # noqa: F401 - the offline data world, for held-out data

LAB = Lab("NN", "<title>")
HELD_OUT_SEED = 9100 + 0  # an unused seed: the notebook trains on its own seeds


@LAB.fixture
def reference(ctx):
    """Something expensive that several checks share (a base model, a reference tokenizer): built once per
    grading run. Checks must not change it; copy it first when a check needs to."""
    return torch.nn.Linear(8, 4).to(ctx.device)


# --- one question: an id unique in the course, its points, the learner objects it uses --------------------------
q = LAB.question("scaled_sum", points=2, uses=("scaled_sum",), title="A scaled row sum")


@q.check
def _scaled_sum(scaled_sum):
    x = torch.randn(3, 5)
    got = scaled_sum(x, 2.0)
    assert_shape(got, (3,), "scaled_sum(x, 2.0) for x of shape (3, 5)", hint="one value per row")
    assert_close(got, 2.0 * x.sum(dim=-1), "scaled_sum(x, 2.0)", hint="sum over the last dimension, then scale")


@q.check(hidden=True)
def _scaled_sum_edges(scaled_sum):
    """Hidden: edge shapes and badly scaled inputs. Expected values are hidden by the framework: pass them as
    `expected=` (assert_* helpers do), never inside the message text."""
    for x in (torch.randn(1, 1), torch.randn(7, 13) * 1e4):
        assert_close(scaled_sum(x, 0.5), 0.5 * x.sum(dim=-1), f"scaled_sum on a {tuple(x.shape)} input", rtol=1e-5)
    got = scaled_sum(torch.ones(2, 3), 1.0)
    check(torch.equal(got, torch.full((2,), 3.0)), "scaled_sum(ones(2, 3), 1.0) is wrong.", received=got.tolist(),
          expected=[3.0, 3.0])
