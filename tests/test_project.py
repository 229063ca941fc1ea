"""Project hygiene: lint, generated notebooks up to date, environment files in step, registry sane."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires

import nbformat
import yaml
from conftest import LABS, ROOT, SOLUTIONS
from packaging.requirements import Requirement

from grader.registry import all_labs, lab_ids
from grader.release import release_all


def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_labs_are_up_to_date_with_solutions():
    changes = release_all(SOLUTIONS, LABS, check=True)
    assert changes, "no solutions found"
    stale = [(str(c.lab_path), c.status) for c in changes if c.status != "unchanged"]
    assert not stale, f"run `grader release`: {stale}"


def test_environment_yml_matches_pyproject():
    # The installed metadata is pyproject's dependencies + the dev extra (tomllib is not in Python 3.10).
    wanted = {Requirement(r).name: Requirement(r) for r in requires("specialist-labs")}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {}
    for line in pip_section:
        if line.startswith("-"):
            continue
        req = Requirement(line)
        listed[req.name] = req
    assert set(listed) == set(wanted), f"differ: {set(wanted) ^ set(listed)}"
    for name, req in listed.items():
        if name == "torch":  # the yml pins the CPU build, which must satisfy pyproject's range
            version = str(next(iter(req.specifier)).version).split("+")[0]
            assert wanted[name].specifier.contains(version), f"torch {version} outside {wanted[name].specifier}"
        else:
            assert req.specifier == wanted[name].specifier, f"{name}: {req.specifier} vs {wanted[name].specifier}"


def test_question_ids_unique_across_the_course():
    ids = [q for lab in all_labs() for q in lab.questions]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_lab_has_a_solution_a_learner_notebook_and_checks():
    for lab in lab_ids():
        assert len(list(SOLUTIONS.glob(f"{lab}_*.ipynb"))) == 1, f"lab {lab}: one solution notebook"
        assert len(list(LABS.glob(f"{lab}_*.ipynb"))) == 1, f"lab {lab}: one learner notebook"
    for sol in SOLUTIONS.glob("[0-9][0-9]_*.ipynb"):
        assert sol.name[:2] in lab_ids(), f"{sol.name} has no grader/labs/lab{sol.name[:2]}.py"


def test_notebooks_state_goals_time_and_call_every_public_check():
    for lab in all_labs():
        (path,) = SOLUTIONS.glob(f"{lab.id}_*.ipynb")
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.get("specialist_labs", {}).get("lab") == lab.id
        intro = nb.cells[0].source
        assert "Learning goals" in intro and "Expected time" in intro, f"{path.name}: goals and time first"
        assert re.search(r"CPU", intro) and re.search(r"GPU", intro), f"{path.name}: time on a CPU and on a GPU"
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        for q in lab.questions.values():
            if not q.hidden:
                called = f'check("{q.id}")' in code or f'check_all("{lab.id}")' in code
                assert called, f"{path.name}: no check for {q.id}"


def test_every_check_of_every_question_can_fail_on_missing_objects():
    """A question with no checks, or one that uses no learner object, would pass for free."""
    for lab in all_labs():
        for q in lab.questions.values():
            assert q.checks, f"{q.id} has no checks"
            assert q.uses, f"{q.id} checks no learner object"
