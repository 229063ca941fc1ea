"""Realistic bugs in lab NN. Copy to tests/bugs/labNN.py.

BUGS: (name, text in the solution, replacement, questions that must lose points[, {"fresh": True}])
CORRECT: (name, text in the solution, replacement) - other valid answers, which must keep full marks.
Each text must occur exactly once in the solution notebook's code cells.
"""

BUGS = [
    ("sum over the wrong axis", "return scale * x.sum(dim=-1)", "return scale * x.sum(dim=0)", {"scaled_sum"}),
    # ... at least six, each a mistake a learner really makes
]

CORRECT = [
    ("sum written as a matmul", "return scale * x.sum(dim=-1)", "return scale * (x @ torch.ones(x.shape[-1]))"),
]
