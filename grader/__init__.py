"""Specialist Labs autograder.

In a notebook:   from grader import check;  check("softmax")   (or check(softmax))
Headless:        grader grade labs/01_tensors_to_lm.ipynb --json result.json
"""

from __future__ import annotations

from collections.abc import Callable

__version__ = "0.1.0"
__all__ = ["check", "check_all", "__version__"]


def _run_public(pairs, namespace: dict) -> list:
    from grader.feedback import show
    from grader.grading import Status, run_question, session_fixtures, with_upstream

    results = []
    for lab, q in pairs:
        result = run_question(q, namespace, False, session_fixtures(lab))
        if result.status in (Status.FAILED, Status.ERROR):  # is an earlier question the cause?
            result = with_upstream(result, q, _failing_upstream(q, namespace))
        results.append(result)
    hidden = sum(1 for _, q in pairs for c in q.checks if c.hidden)
    note = f"{hidden} hidden check(s) also run at grading time." if hidden else ""
    show(results, note)
    return results


def _failing_upstream(q, namespace: dict) -> list[str]:
    """The questions `q` builds on whose public checks do not pass now (run only when `q` itself builds on some)."""
    from grader.grading import Status, run_question, session_fixtures

    if not q.builds_on:
        return []
    lab = q.lab
    return [u for u in lab.upstream(q.id)
            if run_question(lab.questions[u], namespace, False, session_fixtures(lab)).status
            not in (Status.PASSED, Status.SKIPPED)]


def check(question: str | Callable, namespace: dict | None = None) -> None:
    """Run the public checks of one question on your current objects and show the result.

    `question` is a question id ("softmax") or the object itself (check(softmax)).
    """
    from grader.grading import caller_namespace
    from grader.registry import find_question, find_questions_using

    ns = dict(namespace if namespace is not None else caller_namespace())
    if isinstance(question, str):
        pairs = [find_question(question)]
    else:
        name = getattr(question, "__name__", None)
        pairs = find_questions_using(name, _notebook_lab(ns)) if name else []
        if not pairs:
            raise ValueError("check() needs a question id like check('softmax') or a function defined for one.")
        ns[name] = question
    _run_public(pairs, ns)


def _notebook_lab(namespace: dict) -> str | None:
    """The lab of the running notebook, from the session path Jupyter gives the kernel (NN_*.ipynb), if any."""
    import os
    import re

    path = namespace.get("__session__") or os.environ.get("JPY_SESSION_NAME") or ""
    match = re.match(r"(\d\d)_", os.path.basename(str(path)))
    return match.group(1) if match else None


def check_all(lab: str, namespace: dict | None = None) -> None:
    """Run every question's public checks for a lab, e.g. check_all("01")."""
    from grader.grading import caller_namespace
    from grader.registry import load_lab

    ns = namespace if namespace is not None else caller_namespace()
    lab_obj = load_lab(lab)
    _run_public([(lab_obj, q) for q in lab_obj.questions.values()], ns)
