"""Grader units: assertions and their messages, the registry, question statuses, in-notebook check(), CLI."""

from __future__ import annotations

import math

import pytest
import torch

from grader import _run_public, check, check_all
from grader.asserts import (
    CheckFailed,
    assert_artifact,
    assert_below,
    assert_close,
    assert_number_close,
    assert_shape,
    hidden_mode,
    learner_raises,
)
from grader.asserts import check as check_that
from grader.cli import main as cli_main
from grader.feedback import render_html, render_text
from grader.grading import Fixtures, grade_lab, redact, run_question
from grader.registry import Lab, find_question, lab_ids, load_lab

# --- assertions ------------------------------------------------------------------------------------------------


def test_assert_close_reports_shape_dtype_and_first_mismatch():
    with pytest.raises(CheckFailed) as info:
        assert_close(torch.zeros(2, 3), torch.zeros(3, 2), "x")
    assert (info.value.what, info.value.received, info.value.expected) == ("x has the wrong shape.", "(2, 3)", "(3, 2)")
    with pytest.raises(CheckFailed, match="received: torch.float64\n  expected: torch.float32"):
        assert_close(torch.zeros(2, dtype=torch.float64), torch.zeros(2), "x")
    a, e = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 2.0], [3.5, 4.0]])
    with pytest.raises(CheckFailed) as info:
        assert_close(a, e, "y", hint="look here")
    msg = str(info.value)
    assert "1 of 4 values differ" in msg and "index (1, 0)" in msg
    assert "received: 3 at (1, 0)" in msg and "expected: 3.5 at (1, 0)" in msg
    assert "Hint: look here" in msg
    assert_close(a, a + 1e-7, "y")  # within tolerance: no error


def test_assert_close_flags_nan_and_compares_numbers():
    with pytest.raises(CheckFailed, match="NaN"):
        assert_close(torch.tensor([float("nan")]), torch.tensor([1.0]), "z")
    assert_close(torch.tensor(2.0), 2.0, "a scalar tensor against a number")
    with pytest.raises(CheckFailed, match="should be a number"):
        assert_close("2.0", 2.0, "a string")


def test_hidden_rendering_redacts_expected_values_and_free_text_that_repeats_them():
    cases = [
        (lambda: assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.123456]), "secret"), "2.12346"),
        (lambda: assert_number_close(1.0, 42.0, "answer"), "42"),
        (lambda: assert_shape(torch.zeros(2), (7, 7), "t"), "(7, 7)"),
        # an author who writes the expected value into the message too: the framework still scrubs it
        (lambda: check_that(False, "you returned 'abc', expected 'xyz'.", expected="'xyz'"), "'xyz'"),
    ]
    for fail, secret in cases:
        with hidden_mode() as secrets, pytest.raises(CheckFailed) as info:
            fail()
        assert secret in str(info.value)  # the author and the tests see it ...
        shown = redact(info.value, secrets)
        assert secret not in shown and "(hidden)" in shown  # ... the learner never does
    assert "received: 2 at (1,)" in redact(_raises(cases[0][0]), [])


def _raises(fn) -> CheckFailed:
    with pytest.raises(CheckFailed) as info:
        fn()
    return info.value


def test_metric_thresholds():
    assert_below(0.5, 1.0, "loss")
    for bad in (1.0, 2.0, math.nan):
        with pytest.raises(CheckFailed, match="needs to be below 1"):
            assert_below(bad, 1.0, "loss")


def test_learner_raises_returns_the_error_and_fails_any_other_outcome():
    def strict(name):
        if name == "typo":
            raise ValueError(f"unknown name {name!r}")
        if name == "crash":
            return {}[name]
        if name == "todo":
            raise NotImplementedError
        return 1

    assert "typo" in str(learner_raises(strict, "strict('typo')", ValueError, "typo", if_silent="raise"))
    with pytest.raises(CheckFailed) as err:
        learner_raises(strict, "strict('crash')", ValueError, "crash", hint="raise ValueError")
    assert err.value.what == "strict('crash') raised KeyError, not ValueError." and err.value.received == "'crash'"
    assert err.value.hint == "raise ValueError"
    with pytest.raises(CheckFailed, match="returned without raising ValueError") as err:
        learner_raises(strict, "strict('fine')", ValueError, "fine", if_silent="a typo must not pass")
    assert err.value.hint == "a typo must not pass"
    assert learner_raises(strict, "strict('fine')", ValueError, "fine") is None  # returning is allowed too
    with pytest.raises(NotImplementedError):  # even where the expected error is its base class
        learner_raises(strict, "strict('todo')", RuntimeError, "todo")


def test_assert_artifact(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(4, 64)}, path)
    state = assert_artifact(path, "checkpoint", keys={"w": (4, 64)}, max_mb=1)
    assert set(state) == {"w"}
    with pytest.raises(CheckFailed, match="missing tensor 'b'"):
        assert_artifact(path, "checkpoint", keys={"b": (1,)})
    with pytest.raises(CheckFailed, match=r"received: \(4, 64\)\n  expected: \(64, 4\)"):
        assert_artifact(path, "checkpoint", keys={"w": (64, 4)})
    with pytest.raises(CheckFailed, match="at most 0.0001 MiB"):
        assert_artifact(path, "checkpoint", max_mb=0.0001)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckFailed, match="does not load"):
        assert_artifact(path, "checkpoint")
    with pytest.raises(CheckFailed, match="no file"):
        assert_artifact(tmp_path / "nope.pt", "checkpoint")


# --- registry and statuses --------------------------------------------------------------------------------------


def _toy_lab() -> Lab:
    lab = Lab("99", "toy")
    q = lab.question("double", points=2, uses=("double",), title="Double it")

    @q.check
    def _(double):
        assert_close(double(torch.tensor([1.0, 2.0])), torch.tensor([2.0, 4.0]), "double([1, 2])")

    @q.check(hidden=True)
    def _(double):
        assert_close(double(torch.tensor([5.0])), torch.tensor([10.0]), "double([5])")

    g = lab.question("gpu_only", points=1, uses=("double",), title="GPU", device="cuda")
    g.check(lambda double: None)
    s = lab.question("slow", points=1, uses=("spin",), title="slow")

    @s.check(timeout_s=0.5)
    def _(spin):
        spin()

    return lab


def _status(lab, qid, ns, hidden=True):
    return run_question(lab.questions[qid], ns, hidden, Fixtures(lab))


def test_statuses_cover_every_outcome():
    lab = _toy_lab()
    assert _status(lab, "double", {"double": lambda x: 2 * x}).status == "passed"
    assert _status(lab, "double", {}).status == "not_implemented"

    def stub(x):
        raise NotImplementedError("Your code here")

    r = _status(lab, "double", {"double": stub})
    assert r.status == "not_implemented" and r.score == 0 and "NotImplementedError" in r.feedback
    r = _status(lab, "double", {"double": lambda x: x})
    assert r.status == "failed" and r.score == 0 and "expected: 2 at (0,)" in r.feedback and not r.hidden
    r = _status(lab, "double", {"double": lambda x: x.undefined()})
    assert r.status == "error" and "AttributeError" in r.feedback
    # only the hidden check fails: public-only passes, full grading does not, and the message is redacted
    sneaky = {"double": lambda x: 2 * x if len(x) == 2 else x}
    assert _status(lab, "double", sneaky, hidden=False).status == "passed"
    r = _status(lab, "double", sneaky)
    assert r.status == "failed" and r.feedback.startswith("[hidden check]") and "10" not in r.feedback


def test_a_missing_requirement_skips_the_question_and_the_grader_confirms_it():
    from grader.runner import _trusted_results

    lab = Lab("95", "a library with no backend here")
    state = {"missing": "bitsandbytes with a 4-bit backend (no CPU kernels)"}
    q = lab.question("quantized", points=3, uses=("f",), title="4-bit", requires=lambda: state["missing"])
    q.check(lambda f: f())
    r = _status(lab, "quantized", {"f": lambda: 1})
    assert (r.status, r.score, r.max_score) == ("skipped", 0, 0), r  # not counted, never zero out of three
    assert "bitsandbytes with a 4-bit backend (no CPU kernels)" in r.feedback and "not counted" in r.feedback
    assert _status(lab, "quantized", {}).status == "skipped"  # before the learner's code is looked at
    assert _trusted_results(lab, {"results": [{"id": "quantized", "status": "skipped"}]})["quantized"].score == 0
    state["missing"] = None  # the library works here: the question runs, and a kernel cannot claim a skip
    assert _status(lab, "quantized", {"f": lambda: 1}).status == "passed"
    assert _trusted_results(lab, {"results": [{"id": "quantized", "status": "skipped"}]}) is None
    crashing = lab.question("crashing", points=1, uses=("f",), title="a broken requirement", requires=lambda: 1 / 0)
    crashing.check(lambda f: f())
    assert _status(lab, "crashing", {"f": lambda: 1}).status == "passed"  # a requirement that crashes does not skip


def _lm_lab() -> Lab:
    """Lab 01's shape: a class and a training step to write, and a question on the model they produce."""
    lab = Lab("96", "a model built from exercises")
    lab.question("forward", points=1, uses=("Net",), title="forward").check(lambda Net: Net()(1.0))
    lab.question("step", points=1, uses=("train_step", "Net"), title="step").check(
        lambda train_step, Net: train_step(Net()) + Net()(1.0))
    lab.question("trained", points=1, uses=("model",), title="trained", builds_on=("forward", "step")).check(
        lambda model: model(1.0))
    lab.question("uses_helper", points=1, uses=("loss",), title="loss").check(lambda loss: loss(1.0))
    return lab


class _Net(torch.nn.Module):
    @torch.no_grad()
    def forward(self, x):
        # YOUR CODE HERE
        raise NotImplementedError("Your code here: see the instructions above.")


def _train_step(model):
    raise NotImplementedError("Your code here: see the instructions above.")


def _softmax(x):
    # the learner deleted the comment, the stub is still there
    raise NotImplementedError("Your code here: see the instructions above.")


def test_not_implemented_names_the_unwritten_code_behind_a_derived_value():
    lab = _lm_lab()
    ns = {"Net": _Net, "train_step": _train_step, "model": _Net(), "loss": lambda x: _softmax(x), "softmax": _softmax}
    r = _status(lab, "trained", ns)
    assert r.status == "not_implemented" and r.feedback.startswith("Not implemented yet")
    assert "`model` depends on `Net` and `train_step`, which still raise NotImplementedError" in r.feedback
    assert "`model` still raises" not in r.feedback
    # a question on the objects themselves names those that are stubs, not the ones already written
    r = _status(lab, "step", ns)
    assert "`train_step` and `Net` still raise NotImplementedError" in r.feedback
    r = _status(lab, "step", {**ns, "train_step": lambda model: 0.0})
    assert "Not implemented yet: `Net` still raises NotImplementedError" in r.feedback
    # no builds_on: the traceback names the function that raised, which the learner's own code called
    r = _status(lab, "uses_helper", ns)
    assert "`loss` depends on `softmax`, which still raises" in r.feedback, r.feedback
    # once the class is written, only the training step is left
    class Written(_Net):
        def forward(self, x):
            return x

    r = _status(lab, "trained", {**ns, "Net": Written, "model": Written()})
    assert r.status == "passed"
    # the value was never built: not defined, because of the stubs it is built with
    r = _status(lab, "trained", {"Net": _Net, "train_step": _train_step})
    assert r.status == "not_implemented" and r.missing == ("model",)
    assert "`model` is not defined: it is built with `Net` and `train_step`, which still raise" in r.feedback


def test_gpu_question_is_skipped_not_zeroed_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = _status(_toy_lab(), "gpu_only", {"double": None})
    assert r.status == "skipped" and r.max_score == 0 and "CUDA" in r.feedback


def test_check_timeout():
    def spin():
        while True:
            pass

    r = _status(_toy_lab(), "slow", {"spin": spin})
    assert r.status == "timeout" and "0.5 s" in r.feedback


def test_registry_rejects_duplicates_and_bad_devices():
    lab = Lab("98", "x")
    lab.question("a", 1, ("a",), "a")
    with pytest.raises(ValueError):
        lab.question("a", 1, ("a",), "again")
    with pytest.raises(ValueError):
        lab.question("b", 1, ("b",), "b", device="tpu")


def _chain_lab() -> Lab:
    """a <- b <- c, and d on a: each question's check fails when its function returns False."""
    lab = Lab("97", "chain")
    for qid, on in (("a", ()), ("b", ("a",)), ("c", ("b",)), ("d", ("a",)), ("e", ())):
        q = lab.question(qid, 1, (qid,), qid, builds_on=on)
        q.check(eval(f"lambda {qid}: check_that({qid}(), 'wrong')", {"check_that": check_that}))
    return lab


def test_a_failure_names_the_earliest_failed_question_it_builds_on(capsys):
    with pytest.raises(ValueError, match="not declared before it"):
        Lab("96", "x").question("z", 1, ("z",), "z", builds_on=("y",))
    lab = _chain_lab()
    assert lab.upstream("c") == ["a", "b"] and lab.upstream("e") == []
    ns = {"a": lambda: False, "b": lambda: False, "c": lambda: False, "d": lambda: True, "e": lambda: False}
    results = {r.id: r for r in grade_lab(lab, ns)}
    assert results["b"].feedback.startswith("This builds on `a`, which did not pass")
    assert results["c"].feedback.startswith("This builds on `a`,")  # the root, not b, which fails because of a
    assert "`b`" not in results["c"].feedback.splitlines()[0]
    assert results["d"].status == "passed" and "builds on" not in results["e"].feedback + results["a"].feedback
    ns["a"] = lambda: True  # a fixed: b's own failure is b's
    results = {r.id: r for r in grade_lab(lab, ns)}
    assert "builds on" not in results["b"].feedback and results["c"].feedback.startswith("This builds on `b`,")
    # in a notebook, check("c") runs the public checks of what c builds on to find the cause
    ns["a"] = lambda: False
    _run_public([(lab, lab.questions["c"])], ns)
    assert "This builds on `a`, which did not pass" in capsys.readouterr().out


def test_labs_are_discovered_and_questions_found():
    assert {"00", "01"} <= set(lab_ids())
    lab, q = find_question("softmax")
    assert lab.id == "01" and q.points == 2 and "softmax" in q.uses
    with pytest.raises(KeyError):
        load_lab("77")


# --- in-notebook check() ---------------------------------------------------------------------------------------


def tensor_nbytes(t):
    return t.numel() * t.element_size()


def test_check_in_plain_python_prints_a_panel(capsys):
    check("tensor_nbytes")  # finds tensor_nbytes in this module's globals, like a notebook's
    out = capsys.readouterr().out
    assert "[passed] tensor_nbytes" in out and "(2/2 pts)" in out and "hidden check" in out
    wrong = {"tensor_nbytes": lambda t: t.numel() * 4}
    check("tensor_nbytes", namespace=wrong)
    out = capsys.readouterr().out
    assert "[failed] tensor_nbytes" in out and "(0/2 pts)" in out and "Hint" in out


def test_check_accepts_the_object_itself(capsys):
    def move_batch(batch, device):
        raise NotImplementedError("Your code here")

    check(move_batch)
    assert "[not implemented] move_batch" in capsys.readouterr().out
    with pytest.raises(ValueError):
        check(42)


def test_check_all_runs_every_public_question(capsys):
    check_all("00", namespace={"tensor_nbytes": tensor_nbytes})
    out = capsys.readouterr().out
    assert out.count("[not implemented]") == 2 and "tensor_nbytes" in out


def test_feedback_renders_text_and_escaped_html():
    lab = _toy_lab()
    r = _status(lab, "double", {"double": lambda x: x})
    assert "[failed] double" in render_text([r])
    r.feedback = "<script>alert(1)</script>"
    assert "<script>" not in render_html([r]) and "&lt;script&gt;" in render_html([r])


# --- CLI --------------------------------------------------------------------------------------------------------


def test_cli_list_and_progress(tmp_path, capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "00  Setup and how this course works" in out and "01  From tensors" in out
    lab01 = next(line for line in out.splitlines() if line.startswith("01 "))
    # seven questions, six exercises, and the line says why: trained_lm grades the trained model, not a cell of code
    assert "7 questions" in lab01 and "6 exercises" in lab01 and "trained_lm: grades a result" in lab01
    words = " ".join(out.split())
    assert "trained_lm (01)" in words and "grade what your code built or trained" in words
    from conftest import LABS

    (tmp_path / "00_setup.ipynb").write_text((LABS / "00_setup.ipynb").read_text())
    assert cli_main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0/3 exercises started" in out and "(no notebook)" in out


def _lab01_progress(tmp_path, edit, reference: bool = True) -> str:
    import nbformat
    from conftest import LABS

    from grader.cli import _progress, _released

    nb = nbformat.read(LABS / "01_tensors_to_lm.ipynb", as_version=4)
    import re

    edit({re.search(r"(?:def|class) (\w+)", c.source).group(1): c for c in nb.cells
          if "raise NotImplementedError" in c.source}, nb)
    nbformat.write(nb, tmp_path / "01_tensors_to_lm.ipynb")
    return _progress(tmp_path, load_lab("01"), _released("01") if reference else None)


STUB = 'raise NotImplementedError("Your code here: see the instructions above.")'


def test_progress_counts_the_releases_stubs_whatever_the_comments(tmp_path):
    def nothing(cells, nb):
        assert sorted(cells) == ["MLPLM", "bigram_probs", "ce_grad", "sample", "softmax", "train_step"]

    assert _lab01_progress(tmp_path, nothing) == "0/6 exercises started"

    def softmax_written_and_its_comment_deleted(cells, nb):
        cells["softmax"].source = cells["softmax"].source.replace(f"# YOUR CODE HERE\n    {STUB}", "return x")

    assert _lab01_progress(tmp_path, softmax_written_and_its_comment_deleted) == "1/6 exercises started"

    def only_comments_changed(cells, nb):
        cells["ce_grad"].source = cells["ce_grad"].source.replace("# YOUR CODE HERE\n", "")
        cells["sample"].source = cells["sample"].source.replace("# YOUR CODE HERE", "# working on it")

    assert _lab01_progress(tmp_path, only_comments_changed) == "0/6 exercises started"

    def stubs_commented_out_moved_and_ids_lost(cells, nb):
        cells["MLPLM"].source = cells["MLPLM"].source.replace(STUB, "# " + STUB + "\n        return x")
        cells["train_step"].source = cells["train_step"].source.replace(STUB, "return 0.0")
        for cell in nb.cells:
            cell.pop("id", None)  # a notebook saved without cell ids: cells are found by the names they define
        nb.nbformat_minor = 4

    assert _lab01_progress(tmp_path, stubs_commented_out_moved_and_ids_lost) == "2/6 exercises started"


def test_progress_without_solutions_counts_the_stubs_left(tmp_path):
    def one_done(cells, nb):
        cells["softmax"].source = cells["softmax"].source.replace(STUB, "return x")

    assert _lab01_progress(tmp_path, one_done, reference=False) == "5 exercises left to write"


def test_cli_output_piped_into_head_ends_quietly(tmp_path):
    """`grader list labs/ | head -1`: the reader leaves after one line; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, PYTHONUNBUFFERED="1")  # a write per line: the second one finds the reader gone
    cmd = f"'{sys.executable}' -m grader list labs/ | head -1; echo \"rc=${{PIPESTATUS[0]}}\" >&2"
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith("00  Setup") and proc.stdout.count("\n") == 1, proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert "rc=141" in proc.stderr, proc.stderr


def test_cli_doctor_reports_versions(capsys):
    code = cli_main(["doctor"])
    out = capsys.readouterr().out
    assert "torch" in out and "device" in out and code in (0, 1)


def test_cli_release_check_detects_stale(tmp_path, capsys):
    from conftest import SOLUTIONS

    sol, labs = tmp_path / "solutions", tmp_path / "labs"
    sol.mkdir()
    (sol / "00_setup.ipynb").write_text((SOLUTIONS / "00_setup.ipynb").read_text())
    assert cli_main(["release", "--check", "--solutions", str(sol), "--labs", str(labs)]) == 1
    assert cli_main(["release", "--solutions", str(sol), "--labs", str(labs)]) == 0
    assert cli_main(["release", "--check", "--solutions", str(sol), "--labs", str(labs)]) == 0
    assert cli_main(["release", "--solutions", str(tmp_path / "none")]) == 2


# --- the check contract the framework enforces ------------------------------------------------------------------


def test_checks_leave_the_learners_objects_and_random_state_untouched():
    import random

    import numpy as np

    lab = Lab("97", "meddling checks")
    q = lab.question("meddle", points=1, uses=("model", "weights"), title="a check that touches everything")

    @q.check
    def _(model, weights):
        model.double().train(False)
        with torch.no_grad():
            model.weight.add_(1.0)
        weights.mul_(0)
        random.random(), np.random.rand(), torch.rand(3)  # draws from every global generator

    model, weights = torch.nn.Linear(3, 2).train(), torch.ones(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected_draws = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    r = run_question(q, {"model": model, "weights": weights}, True, Fixtures(lab))
    assert r.status == "passed", r.feedback
    assert model.training and model.weight.dtype == torch.float32 and torch.equal(weights, torch.ones(4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    draws = (random.random(), np.random.rand(), torch.rand(2))
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1] and torch.equal(draws[2], expected_draws[2])


def test_a_check_may_only_ask_for_what_its_question_uses():
    lab = Lab("96", "declarations")
    q = lab.question("q", points=1, uses=("f",), title="q")
    with pytest.raises(TypeError, match="`g`"):
        q.check(lambda f, g: None)
    q.check(lambda f, ctx: None)  # ctx is always allowed
    q2 = lab.question("q2", points=1, uses=("f", "unused"), title="q2")
    q2.check(lambda f: None)
    with pytest.raises(TypeError, match="unused"):
        lab.validate()


def test_fixtures_are_built_once_per_grading_run():
    from grader.grading import grade_lab

    lab = Lab("95", "fixtures")
    built = []

    @lab.fixture
    def reference(ctx):
        built.append(ctx.device)
        return torch.arange(3.0)

    for name in ("a", "b"):
        lab.question(name, points=1, uses=("f",), title=name).check(
            lambda f, reference: assert_close(f(reference), reference * 2, "f(x)")
        )
    results = list(grade_lab(lab, {"f": lambda x: 2 * x}))
    assert [r.status for r in results] == ["passed", "passed"] and len(built) == 1
    with pytest.raises(TypeError, match="only take `ctx`"):
        lab.fixture(lambda model: None)


def test_check_imports_only_the_lab_that_holds_the_question():
    import subprocess
    import sys

    code = (
        "import sys\nfrom grader import check\n"
        "def tensor_nbytes(t):\n    return t.numel() * t.element_size()\n"
        "check('tensor_nbytes')\n"
        "labs = sorted(m for m in sys.modules if m.startswith('grader.labs.lab'))\n"
        "print('LOADED', labs, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True).stdout
    assert "LOADED ['grader.labs.lab00'] False" in out, out


def test_the_authoring_template_is_a_valid_lab_that_tells_right_from_wrong():
    """docs/authoring.md starts every new lab from this file: it must keep working."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "templates" / "lab" / "labNN.py"
    spec = importlib.util.spec_from_file_location("lab_template", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lab = module.LAB
    lab.validate()
    (q,) = lab.questions.values()
    assert run_question(q, {"scaled_sum": lambda x, s: s * x.sum(dim=-1)}, True, Fixtures(lab)).status == "passed"
    wrong = run_question(q, {"scaled_sum": lambda x, s: s * x.sum()}, True, Fixtures(lab))
    assert wrong.status == "failed" and "Hint" in wrong.feedback
