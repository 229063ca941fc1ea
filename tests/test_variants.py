"""The variant planner of tests/variants.py: which cells a bug variant must re-run (no kernel needed)."""

from __future__ import annotations

import nbformat
from variants import dependents, needed_expensive

from grader.cells import cell_names


def _nb(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title")] + [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_names_a_cell_takes_from_earlier_cells():
    n = cell_names("import math\nx = 1\ny = x + z\ndef f(a):\n    b = a + w\n    return math.sqrt(b)\n%timeit f(1)")
    assert n.binds == {"math", "x", "y", "f"}
    assert n.reads == {"z", "w"}  # x is bound before it is read; a, b are f's own; magics are skipped
    assert cell_names("total = total + 1").reads == {"total"}  # read before it is bound
    assert cell_names("for i in range(3):\n    print(i)").reads == set()


def test_dependents_follow_names_through_function_bodies():
    nb = _nb(
        "def softmax(x):\n    return x",  # 1
        "def loss(x):\n    return softmax(x)",  # 2: calls softmax when it runs
        "value = loss(3)",  # 3
        "other = 5",  # 4: depends on nothing
        "check('softmax')",  # 5
    )
    assert dependents(nb, {1}) == [1, 2, 3]
    assert dependents(nb, {4}) == [4]


def test_expensive_cells_rerun_only_for_the_questions_that_need_them():
    nb = _nb(
        "def lr_at(step):\n    return 0.1",  # 1
        "model = train(lr_at)",  # 2: expensive
        "lm = finish(model)",  # 3: expensive
        "plot(lm)",  # 4: cheap
    )
    def plan(expensive, targets):
        return dependents(nb, {1}, skip=frozenset(expensive - needed_expensive(nb, 1, expensive, targets)))

    assert plan({2, 3}, set()) == [1]
    assert plan({2, 3}, {"lm"}) == [1, 2, 3, 4]
    assert plan({3}, {"model"}) == [1, 2]
    assert plan(set(), set()) == [1, 2, 3, 4]


def test_only_cells_that_hold_the_variants_state_are_restored_next_time():
    from variants import _tainted

    nb = _nb("def f():\n    return 1", "a = f()", "b = 2", "c = b + 1")
    # the variant changed cell 1; cells 3-4 ran only to restore an earlier variant's state
    assert _tainted(nb, [1, 2, 3, 4], changed=1) == {1, 2}


def test_each_labs_session_tests_form_one_scheduling_unit():
    """The two test processes: one lab's session tests go to one of them (its solution then runs once)."""
    import types

    import conftest

    config = types.SimpleNamespace(
        getvalue=lambda name: "load", option=types.SimpleNamespace(loadscopereorder=True, maxschedchunk=None)
    )
    sched = conftest.pytest_xdist_make_scheduler(config, None)
    scope = sched._split_scope
    assert config.option.loadscopereorder is False  # the order chosen at collection stands
    ids = [
        "tests/test_labs.py::test_solution_scores_full_marks_and_runs_clean[03]",
        "tests/test_labs.py::test_buggy_variant_loses_exactly_its_points[03-softmax over the queries]",
        "tests/test_labs.py::test_correct_variant_keeps_full_marks[03-attention via einsum]",
        "tests/test_labs.py::test_learner_notebook_runs_to_the_end_and_scores_zero[03]",
    ]
    assert {scope(i) for i in ids} == {"lab03"}
    assert scope("tests/test_labs.py::test_solution_scores_full_marks_and_runs_clean[04]") == "lab04"
    other = "tests/test_batch.py::test_regrade[03]"
    assert scope(other) == other  # everything else is a unit of its own
