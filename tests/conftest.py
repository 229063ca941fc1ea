"""Shared fixtures: the repo paths and helpers to make notebook variants (buggy, hostile) from solutions."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
LABS = ROOT / "labs"


def solution_path(lab: str) -> Path:
    (path,) = SOLUTIONS.glob(f"{lab}_*.ipynb")
    return path


def load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def mutate(nb: nbformat.NotebookNode, old: str, new: str) -> nbformat.NotebookNode:
    """Replace `old` by `new` in exactly one code cell; fails loudly if the solution changed under the test."""
    nb = copy.deepcopy(nb)
    hits = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
    assert len(hits) == 1, f"expected exactly one cell containing {old!r}, found {len(hits)}"
    assert hits[0].source.count(old) == 1, f"{old!r} occurs more than once in its cell"
    hits[0].source = hits[0].source.replace(old, new)
    return nb


def add_cell(nb: nbformat.NotebookNode, source: str, index: int | None = None) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    cell = nbformat.v4.new_code_cell(source)
    nb.cells.insert(len(nb.cells) if index is None else index, cell)
    return nb


def save(nb: nbformat.NotebookNode, path: Path) -> Path:
    nbformat.write(nb, path)
    return path


@pytest.fixture
def write_nb(tmp_path):
    """write_nb(nb, name) -> path of the notebook saved under tmp_path."""

    def _write(nb: nbformat.NotebookNode, name: str = "00_variant.ipynb") -> Path:
        return save(nb, tmp_path / name)

    return _write
