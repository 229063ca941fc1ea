"""What a class's learners receive: the course without solutions, tests or hidden checks.

Learners need the `grader` package to run `check("softmax")` in their notebooks, but the package's
check modules (grader/labs/labNN.py) also hold the hidden checks. `strip_hidden_checks` removes them
from a module's source by construction (it reads the `@q.check(hidden=True)` decorators, it does not
trust a naming convention), and `build_learner_bundle` / `build_classroom_bundle` copy an allow-list
of the course folder with every check module stripped, then re-import the stripped modules to prove
that they register the same questions and points with no hidden check. The instructor's course
folder and the Gradescope bundle (grader.exports) keep the hidden checks: grading needs them.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import nbformat

from grader.release import BEGIN_SOLUTION, END_SOLUTION, ReleaseError

# The allow-list: anything not named here stays with the instructor (solutions/, tests/, templates/,
# docs/instructor-guide.md, .ci/). Learner-facing docs, when there are some, go in LEARNER_FILES.
LEARNER_FILES = ("README.md", "LICENSE", "pyproject.toml", "environment.yml", ".gitignore", "scripts/course.sh")
LEARNER_DIRS = ("labs", "labkit", "grader")
CHECK_MODULE = re.compile(r"^lab\d\d\.py$")
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
CLASSROOM_TEMPLATE = Path("templates/github-classroom/autograding.yml")
CLASSROOM_WORKFLOW = Path(".github/workflows/classroom.yml")


# --- stripping hidden checks -------------------------------------------------------------------------------------


def _hidden(decorator: ast.expr, where: str) -> bool | None:
    """True/False for a `<question>.check` registration, None for any other decorator."""
    if isinstance(decorator, ast.Attribute) and decorator.attr == "check":
        return False
    if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)):
        return None
    if decorator.func.attr != "check":
        return None
    for kw in decorator.keywords:
        if kw.arg is None:
            raise ReleaseError(f"{where}: `.check(**...)` hides whether the check is hidden; spell out hidden=")
        if kw.arg == "hidden":
            if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, bool):
                return kw.value.value
            raise ReleaseError(f"{where}: hidden= must be the literal True or False to be stripped statically")
    return False


def _span(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> tuple[int, int]:
    """0-based [start, stop) of a definition's lines: comments right above it, decorators, body, and
    the blank lines after it, so that the spacing around what is left stays as it was."""
    start = min(d.lineno for d in node.decorator_list) - 1
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    stop = node.end_lineno or node.lineno
    while stop < len(lines) and (not lines[stop].strip() or lines[stop][:1].isspace()):
        stop += 1  # blank lines, and indented comments that still belong to the body
    return start, stop


def strip_hidden_checks(source: str, filename: str = "<check module>") -> str:
    """A check module's source without its hidden checks; every other line is kept byte for byte.

    Removes each top-level function (or class) decorated with `<question>.check(hidden=True)`.
    Raises ReleaseError, rather than guess, where a check's visibility cannot be read from the
    source: `hidden=` that is not a literal, `.check(**options)`, a hidden check that is not a
    top-level definition, or `hidden=` used outside a `.check(...)` decorator.
    """
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        raise ReleaseError(f"{filename}: {exc}") from None
    hidden_nodes, resolved = [], set()
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        where = f"{filename}, line {node.lineno} ({node.name})"
        verdicts = [_hidden(d, f"{filename}, line {d.lineno} ({node.name})") for d in node.decorator_list]
        resolved.update(id(d) for d, v in zip(node.decorator_list, verdicts, strict=True) if v is not None)
        if any(verdicts):
            if id(node) not in top_level:
                raise ReleaseError(f"{where}: a hidden check must be a top-level definition to be stripped")
            hidden_nodes.append(node)
    for node in ast.walk(tree):  # any other way of asking for a hidden check could not be stripped
        if isinstance(node, ast.Call) and id(node) not in resolved:
            if any(kw.arg == "hidden" for kw in node.keywords) or (
                isinstance(node.func, ast.Attribute) and node.func.attr == "check" and any(
                    kw.arg is None for kw in node.keywords)):
                raise ReleaseError(
                    f"{filename}, line {node.lineno}: hidden= outside a @<question>.check(...) decorator; "
                    "declare hidden checks as decorated top-level functions so they can be stripped"
                )
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()
    for node in hidden_nodes:
        drop.update(range(*_span(lines, node)))
    kept = "".join(line for i, line in enumerate(lines) if i not in drop)
    return kept.rstrip("\n") + "\n" if kept.strip() else kept


# --- learner and classroom bundles --------------------------------------------------------------------------------


def _files(course: Path) -> list[Path]:
    """The allow-listed files of the course folder, relative to it."""
    found = [Path(name) for name in LEARNER_FILES if (course / name).is_file()]
    for folder in LEARNER_DIRS:
        if not (course / folder).is_dir():
            raise FileNotFoundError(f"no folder {course / folder}: run from the course folder")
        for path in sorted((course / folder).rglob("*")):
            rel = path.relative_to(course)
            if path.is_file() and not SKIP_PARTS & set(rel.parts) and path.suffix != ".pyc":
                found.append(rel)
    return found


def _is_check_module(rel: Path) -> bool:
    return rel.parent == Path("grader/labs") and bool(CHECK_MODULE.match(rel.name))


def _load(path: Path, name: str):
    """Import a module from a file under a name of its own, leaving sys.modules as it was."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name while executing
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def _verify_stripped(original: Path, path: Path) -> None:
    """The stripped module imports and declares the original's questions and public checks, and no hidden one."""
    labs = []
    for which, file in (("original", original), ("stripped", path)):
        try:
            lab = _load(file, f"_learner_bundle_{which}_{file.stem}").LAB
            lab.validate()
        except Exception as exc:
            raise ReleaseError(f"{file}: the {which} check module does not work: {exc!r}") from exc
        labs.append({q.id: (q.points, [c.hidden for c in q.checks]) for q in lab.questions.values()})
    before, after = labs
    if after != {qid: (points, [h for h in hidden if not h]) for qid, (points, hidden) in before.items()}:
        raise ReleaseError(f"{path}: stripping changed the questions, points or public checks, or left a hidden one")


def _write_learner_bundle(out: Path, course: Path) -> None:
    """Copy the allow-list, strip the check modules, then prove that the result holds no hidden check or solution."""
    stripped = []
    for rel in _files(course):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if _is_check_module(rel):
            dest.write_text(strip_hidden_checks((course / rel).read_text(encoding="utf-8"), str(rel)), encoding="utf-8")
            stripped.append(rel)
        else:
            shutil.copyfile(course / rel, dest)
            shutil.copymode(course / rel, dest)
    for rel in stripped:
        _verify_stripped(course / rel, out / rel)
    for notebook in sorted((out / "labs").rglob("*.ipynb")):
        cells = nbformat.read(notebook, as_version=nbformat.NO_CONVERT).cells
        if any(BEGIN_SOLUTION in c.source or END_SOLUTION in c.source for c in cells):
            raise ReleaseError(f"{notebook}: holds a solution region; is it a solution? run `grader release`")


def build_learner_bundle(out: str | Path, course: str | Path = ".") -> Path:
    """Write what learners receive to `out`: labs/, labkit/, grader/ without hidden checks, the README,
    pyproject.toml, environment.yml and scripts/course.sh. No solutions/, tests/ or templates/.

    `out` must be empty or absent (a `.git` folder is allowed, for a clone of the template repository).
    """
    course, out = Path(course), Path(out)
    if any((course / d).resolve() in [out.resolve(), *out.resolve().parents] for d in LEARNER_DIRS):
        raise ReleaseError(f"{out}: inside a folder the bundle copies; choose another")
    if out.exists() and any(p.name != ".git" for p in out.iterdir()):
        raise ReleaseError(f"{out} is not empty: give a new folder (nothing is overwritten)")
    fresh = not out.exists()
    try:
        _write_learner_bundle(out, course)
    except BaseException:
        if fresh:  # nothing half-built stays behind (a folder that existed is left to its owner)
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def build_classroom_bundle(out: str | Path, course: str | Path = ".") -> Path:
    """The GitHub Classroom template repository: the learner bundle plus the autograding workflow,
    which installs the instructor's grader (with hidden checks) at grading time, never this copy."""
    course, out = Path(course), Path(out)
    template = course / CLASSROOM_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"missing {template}: run from the course folder")
    build_learner_bundle(out, course)
    workflow = out / CLASSROOM_WORKFLOW
    workflow.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, workflow)
    return out
