"""What learners receive (learner and GitHub Classroom bundles) holds no solution and no hidden check;
the Gradescope bundle, which grades, keeps them. Cheap: nothing here executes a notebook."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import ROOT

from grader.bundle import build_classroom_bundle, build_learner_bundle, strip_hidden_checks
from grader.cli import main as cli_main
from grader.exports import build_gradescope_bundle
from grader.registry import all_labs
from grader.release import BEGIN_SOLUTION, END_SOLUTION, ReleaseError

MODULE = '''"""A check module."""

from grader.registry import Lab

LAB = Lab("99", "Test")
q = LAB.question("add", points=2, uses=("add",), title="Add")


@q.check
def _public(add):
    assert add(1, 2) == 3


# Larger numbers.
@torch.no_grad()
@q.check(hidden=True, timeout_s=5)
def _hidden(add):
    assert add(10**9, 1) == 10**9 + 1
    # trailing comment of the hidden check


@q.check(hidden=False)
def _also_public(add):  # a comment   with  odd   spacing
    assert add(0, 0) == 0


@q.check(hidden=True)
def _last(add):
    assert add(-1, 1) == 0
'''


def _load(path: Path, name: str):
    """Import a stripped check module from the bundle under a name of its own (not grader.labs.labNN)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.fixture(scope="module")
def learner(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "learner"
    assert cli_main(["bundle", "learner", str(out), "--course", str(ROOT)]) == 0
    return out


@pytest.fixture(scope="module")
def classroom(tmp_path_factory) -> Path:
    return build_classroom_bundle(tmp_path_factory.mktemp("bundles") / "classroom", ROOT)


@pytest.fixture(params=["learner", "classroom"])
def bundle(request) -> Path:
    return request.getfixturevalue(request.param)


def test_strip_removes_hidden_checks_and_keeps_every_other_byte():
    out = strip_hidden_checks(MODULE)
    assert "_hidden" not in out and "_last" not in out and "10**9" not in out and "Larger numbers" not in out
    assert "trailing comment" not in out and "no_grad" not in out
    before_hidden = MODULE[: MODULE.index("# Larger numbers.")]
    between_hidden = MODULE[MODULE.index("@q.check(hidden=False)") : MODULE.index("\n\n\n@q.check(hidden=True)")]
    assert out == before_hidden + between_hidden + "\n"
    assert strip_hidden_checks(out) == out


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("@q.check(hidden=HIDE)\ndef _c(x):\n    pass\n", "literal True or False"),
        ("@q.check(hidden=1)\ndef _c(x):\n    pass\n", "literal True or False"),
        ("@q.check(**opts)\ndef _c(x):\n    pass\n", r"\*\*"),
        ("if True:\n    @q.check(hidden=True)\n    def _c(x):\n        pass\n", "top-level"),
        ("def _c(x):\n    pass\n\n\nq.check(_c, hidden=True)\n", "outside a"),
        ("secret = q.check(hidden=True)\n\n\n@secret\ndef _c(x):\n    pass\n", "outside a"),
        ("def f(:\n", "invalid syntax|expected"),
    ],
)
def test_strip_refuses_what_it_cannot_read_statically(source: str, match: str):
    with pytest.raises(ReleaseError, match=match):
        strip_hidden_checks(source)


def test_bundle_holds_what_learners_need_and_nothing_of_the_instructor(bundle: Path):
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {"README.md", "pyproject.toml", "environment.yml", "scripts/course.sh", "grader/cli.py",
            "labkit/world.py", "labs/00_setup.ipynb"} <= files
    assert {p.name for p in (bundle / "labs").glob("*.ipynb")} == {p.name for p in (ROOT / "labs").glob("*.ipynb")}
    assert not [f for f in files if f.startswith(("solutions/", "tests/", "templates/", "docs/", ".ci/"))]
    assert not [f for f in files if "__pycache__" in f or "gradescope" in f]
    assert (bundle / "scripts" / "course.sh").stat().st_mode & 0o111, "still executable"


def test_bundle_holds_no_solution_region(bundle: Path):
    for path in bundle.rglob("*"):
        if path.suffix == ".ipynb":
            for cell in nbformat.read(path, as_version=4).cells:
                assert BEGIN_SOLUTION not in cell.source and END_SOLUTION not in cell.source, path
        elif path.is_file():
            # README.md and grader/release.py name the markers in prose and code; a region starts on a line of its own.
            lines = path.read_bytes().decode("utf-8", "replace").splitlines()
            assert not [line for line in lines if line.strip() in (BEGIN_SOLUTION, END_SOLUTION)], path


def test_bundle_check_modules_have_no_hidden_check_and_the_same_questions(bundle: Path):
    for lab in all_labs():
        module = _load(bundle / "grader" / "labs" / f"lab{lab.id}.py", f"_stripped_{bundle.name}_lab{lab.id}")
        stripped = module.LAB
        assert sum(c.hidden for q in stripped.questions.values() for c in q.checks) == 0, lab.id
        assert {q.id: q.points for q in stripped.questions.values()} == {q.id: q.points for q in lab.questions.values()}
        assert {q.id: len(q.checks) for q in stripped.questions.values()} == {
            q.id: len(q.public_checks) for q in lab.questions.values()
        }, lab.id
        assert "hidden=True" not in (bundle / "grader" / "labs" / f"lab{lab.id}.py").read_text()
    assert any(c.hidden for lab in all_labs() for q in lab.questions.values() for c in q.checks), \
        "the course itself keeps its hidden checks"


def test_classroom_bundle_grades_with_the_instructors_grader(classroom: Path):
    workflow = yaml.safe_load((classroom / ".github" / "workflows" / "classroom.yml").read_text())
    steps = workflow["jobs"]["run-autograding-tests"]["steps"]
    fetch = next(s for s in steps if s.get("with", {}).get("repository"))
    assert fetch["with"]["repository"] == "${{ env.GRADER_REPO }}"
    assert fetch["with"]["token"] == "${{ secrets.GRADER_TOKEN }}"
    assert fetch["with"]["persist-credentials"] is False
    install = "\n".join(s.get("run", "") for s in steps)
    assert f"pip install ./{fetch['with']['path']}" in install
    assert "pip install .\n" not in install and "pip install -e" not in install, "never the learner's grader"


def test_bundle_refuses_a_folder_that_is_not_empty(tmp_path: Path):
    (tmp_path / "old.txt").write_text("keep me")
    assert cli_main(["bundle", "learner", str(tmp_path), "--course", str(ROOT)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


def test_a_bundle_that_cannot_be_stripped_is_not_left_half_written(tmp_path: Path):
    course = tmp_path / "course"
    for folder in ("labs", "labkit", "grader/labs"):
        (course / folder).mkdir(parents=True)
    (course / "README.md").write_text("# course\n")
    (course / "grader" / "labs" / "lab00.py").write_text("@q.check(hidden=HIDE)\ndef _c(x):\n    pass\n")
    with pytest.raises(ReleaseError, match="lab00.py, line 1"):
        build_learner_bundle(tmp_path / "out", course=course)
    assert not (tmp_path / "out").exists()


def test_gradescope_bundle_keeps_the_hidden_checks(tmp_path: Path):
    with zipfile.ZipFile(build_gradescope_bundle("00", tmp_path / "a.zip", course=ROOT)) as zf:
        for lab in all_labs():
            name = f"grader/labs/lab{lab.id}.py"
            assert zf.read(name) == (ROOT / name).read_bytes()
            if any(c.hidden for q in lab.questions.values() for c in q.checks):
                assert b"hidden=True" in zf.read(name)
