"""Generate learner notebooks (labs/) from instructor solutions (solutions/).

Learner notebooks are build artefacts: they are regenerated from the solutions and never edited by
hand, so the transformation must be pure and byte-stable (same solution -> same bytes), which lets
CI fail when a committed lab drifts from its solution (``release_all(..., check=True)``).

Exercise cells, and the cells that use what they define, are tagged ``raises-exception`` so that
``pytest --nbval-lax labs/`` passes on an untouched learner notebook and fails on any other error.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", 'raise NotImplementedError("Your code here: see the instructions above.")')
ANSWER_STUB = ("YOUR ANSWER HERE",)
RAISES_TAG = "raises-exception"  # nbval (and nbclient) accept an error in a cell with this tag
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LAB_NAME = re.compile(r"^\d\d_.+\.ipynb$")


class ReleaseError(ValueError):
    """A solution notebook cannot be released (unbalanced markers, no solution region, ...)."""


@dataclass
class ReleaseChange:
    """What ``release_all`` did (or, in check mode, would do) to one lab file."""

    lab_path: Path
    status: str  # "created" | "updated" | "unchanged" | "stale" | "orphan"


def find_regions(
    source: str, begin: str = BEGIN_SOLUTION, end: str = END_SOLUTION, *, cell: int | None = None
) -> list[tuple[int, int]]:
    """Return (begin_line, end_line) index pairs, both inclusive, of marker-delimited regions.

    Markers are matched on the stripped line so they may be indented. Nesting, an unclosed BEGIN or a
    stray END raise ReleaseError: silently guessing could leak a solution into a learner notebook.
    """
    where = f"cell {cell}, " if cell is not None else ""
    regions: list[tuple[int, int]] = []
    start: int | None = None
    for i, line in enumerate(source.splitlines()):
        marker = line.strip()
        if marker == begin:
            if start is not None:
                opened = f"(region opened at line {start + 1})"
                raise ReleaseError(f"{where}line {i + 1}: nested {begin!r} {opened}")
            start = i
        elif marker == end:
            if start is None:
                raise ReleaseError(f"{where}line {i + 1}: {end!r} without a matching {begin!r}")
            regions.append((start, i))
            start = None
    if start is not None:
        raise ReleaseError(f"{where}line {start + 1}: {begin!r} is never closed by {end!r}")
    return regions


def _replace_regions(lines: list[str], regions: list[tuple[int, int]], stub: tuple[str, ...]) -> list[str]:
    """Replace each region with ``stub`` at the BEGIN marker's indentation."""
    out: list[str] = []
    prev = 0
    for start, stop in regions:
        out.extend(lines[prev:start])
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        out.extend(indent + s for s in stub)
        prev = stop + 1
    out.extend(lines[prev:])
    return out


def _release_source(source: str, cell_type: str, index: int) -> tuple[str, bool]:
    """Stub out solution regions; tidy whitespace only if something changed. Returns (source, stubbed)."""
    solution = find_regions(source, cell=index)
    if not solution:
        return source, False
    lines = _replace_regions(source.splitlines(), solution, CODE_STUB if cell_type == "code" else ANSWER_STUB)
    return "\n".join(line.rstrip() for line in lines).strip("\n"), True


class _Names(ast.NodeVisitor):
    """Names a statement reads (at any depth), binds and changes in place at the notebook's top level."""

    def __init__(self) -> None:
        self.loads: set[str] = set()
        self.binds: set[str] = set()
        self.changes: set[str] = set()
        self._depth = 0

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.loads.add(node.id)
        elif self._depth == 0:
            self.binds.add(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.loads.add(node.target.id)  # `x += 1` reads x
        self.generic_visit(node)

    def _changed(self, node: ast.Attribute | ast.Subscript) -> None:
        base = node.value
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            base = base.value
        if not isinstance(node.ctx, ast.Load) and isinstance(base, ast.Name) and self._depth == 0:
            self.changes.add(base.id)  # `model.head = ...`, `results[k] = ...` change what `model`, `results` hold
        self.generic_visit(node)

    visit_Attribute = visit_Subscript = _changed

    def _scope(self, node: ast.AST) -> None:
        if self._depth == 0 and hasattr(node, "name"):
            self.binds.add(node.name)
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scope

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if self._depth == 0:
            self.binds.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")

    visit_Import = visit_ImportFrom = _import


def _names(node: ast.AST) -> _Names:
    names = _Names()
    names.visit(node)
    return names


def _statements(source: str) -> list[ast.stmt] | None:
    """The cell's top-level statements, IPython magics turned into Python first; None if it does not parse."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return ast.parse(TransformerManager().transform_cell(source)).body
    except SyntaxError:
        return None


def _binds(source: str) -> set[str]:
    return {name for stmt in _statements(source) or [] for name in _names(stmt).binds}


def _may_raise(source: str, exercise: bool, unsafe: set[str]) -> bool:
    """Whether an untouched learner notebook may raise in this cell; adds the names it leaves unsafe.

    A name is unsafe when using it may raise: a function whose body is a stub (or uses an unsafe
    name), or a value assigned after something in its cell may have raised. Static and conservative,
    so the release stays a pure function of the solution.
    """
    statements = _statements(source)
    if statements is None:  # not Python even after IPython's transformations: assume the worst
        unsafe.update(re.findall(r"[A-Za-z_]\w*", source))
        return True
    stub_lines = {i + 1 for i, line in enumerate(source.splitlines()) if exercise and line.strip() == CODE_STUB[1]}
    raised = False
    for stmt in statements:
        names = _names(stmt)
        stubbed = any(stmt.lineno <= n <= (stmt.end_lineno or stmt.lineno) for n in stub_lines)
        risky = stubbed or bool(names.loads & unsafe)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            tainted = risky or raised  # defining runs no body, but calling it may raise
        else:
            raised = tainted = raised or risky
        if tainted:
            unsafe.update(names.binds | names.changes)
        else:
            unsafe.difference_update(names.binds)  # safely rebound
    return raised


def _derived_id(index: int, source: str, used: set[str]) -> str:
    """Deterministic id for cells that have none (nbformat < 4.5); random ids would break byte stability."""
    salt = 0
    while True:
        cid = hashlib.sha1(f"{index}:{salt}:{source}".encode()).hexdigest()[:8]
        if cid not in used:
            return cid
        salt += 1


def release_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return the learner version of a solution notebook (the input is left untouched)."""
    if nb.get("nbformat") != 4:
        raise ReleaseError(f"expected an nbformat 4 notebook, got version {nb.get('nbformat')}")
    out = new_notebook()
    out.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}})
    if "specialist_labs" in nb.get("metadata", {}):
        out.metadata["specialist_labs"] = copy.deepcopy(nb.metadata["specialist_labs"])
    given = [c["id"] for c in nb.cells if "id" in c]
    used: set[str] = set(given)
    if len(used) != len(given):
        raise ReleaseError("solution notebook has duplicate cell ids")
    factories = {"code": new_code_cell, "markdown": new_markdown_cell, "raw": new_raw_cell}
    unsafe: set[str] = set()
    for index, cell in enumerate(nb.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        released, exercise = _release_source(source, cell.cell_type, index)
        if cell.cell_type == "code":
            may_raise = _may_raise(released, exercise, unsafe)
            if exercise:  # what only the solution defines is undefined in the learner's notebook
                unsafe.update(_binds(source) - _binds(released))
            if (exercise or may_raise) and RAISES_TAG not in tags:
                tags.append(RAISES_TAG)
        new = factories[cell.cell_type](source=released)
        new.id = cell["id"] if "id" in cell else _derived_id(index, source, used)
        used.add(new.id)
        if tags:
            new.metadata["tags"] = tags
        if cell.cell_type == "markdown" and cell.get("attachments"):
            new.attachments = copy.deepcopy(cell.attachments)
        out.cells.append(new)
    return out


def notebook_to_text(nb: nbformat.NotebookNode) -> str:
    """Serialise deterministically (indent=1, sorted keys) with a trailing newline, as Jupyter saves."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def _has_solution(nb: nbformat.NotebookNode) -> bool:
    return any(
        find_regions(c.source if isinstance(c.source, str) else "".join(c.source), cell=i)
        for i, c in enumerate(nb.cells)
    )


def release_all(solutions_dir: Path, labs_dir: Path, check: bool = False) -> list[ReleaseChange]:
    """Regenerate every labs/NN_*.ipynb from solutions/NN_*.ipynb.

    Write mode touches only files whose text changed, so mtimes and diffs stay quiet. Check mode writes
    nothing and reports missing or differing labs as "stale" (for CI). Labs without a solution are
    reported "orphan" but never deleted: removing a learner file is a decision for a human.
    """
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    changes: list[ReleaseChange] = []
    sources = sorted(p for p in solutions_dir.glob("[0-9][0-9]_*.ipynb") if LAB_NAME.match(p.name))
    for sol_path in sources:
        # NO_CONVERT: never let a conversion touch ids (nbformat.v4.upgrade gives pre-4.5 cells random ones).
        nb = nbformat.reads(sol_path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
        try:
            if not _has_solution(nb):
                raise ReleaseError(f"no {BEGIN_SOLUTION!r} region found")
            text = notebook_to_text(release_notebook(nb))
        except ReleaseError as exc:
            raise ReleaseError(f"{sol_path}: {exc}") from exc
        lab_path = labs_dir / sol_path.name
        old = lab_path.read_text(encoding="utf-8") if lab_path.exists() else None
        if old == text:
            status = "unchanged"
        elif check:
            status = "stale"
        else:
            labs_dir.mkdir(parents=True, exist_ok=True)
            lab_path.write_bytes(text.encode("utf-8"))
            status = "created" if old is None else "updated"
        changes.append(ReleaseChange(lab_path, status))
    solution_names = {p.name for p in sources}
    if labs_dir.is_dir():
        for lab_path in sorted(labs_dir.glob("[0-9][0-9]_*.ipynb")):
            if lab_path.name not in solution_names:
                changes.append(ReleaseChange(lab_path, "orphan"))
    return changes
