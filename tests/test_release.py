"""Tests for grader.release: solution notebooks -> learner notebooks."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from grader.release import (
    RAISES_TAG,
    ReleaseChange,
    ReleaseError,
    find_regions,
    notebook_to_text,
    release_all,
    release_notebook,
)

STUB = 'raise NotImplementedError("Your code here: see the instructions above.")'

FUNC_SOLUTION = """\
def add(a, b):
    \"\"\"Return a + b.\"\"\"
    ### BEGIN SOLUTION
    result = a + b
    return result
    ### END SOLUTION
"""


def _nb(*cells, **metadata) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata.update(metadata)
    nb.cells = list(cells)  # not new_notebook(cells=...): its validation would invent random ids
    return nb


def _sources(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells]


def _no_trailing_ws(text: str) -> bool:
    return all(line == line.rstrip() for line in text.splitlines())


def test_find_regions_pairs_and_indentation():
    src = "a\n  ### BEGIN SOLUTION\nb\n  ### END SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"
    assert find_regions(src) == [(1, 3), (4, 5)]
    assert find_regions("x = 1") == []


def test_function_body_region_becomes_indented_stub_that_raises():
    out = release_notebook(_nb(new_code_cell(FUNC_SOLUTION)))
    src = out.cells[0].source
    assert src.splitlines() == [
        "def add(a, b):",
        '    """Return a + b."""',
        "    # YOUR CODE HERE",
        f"    {STUB}",
    ]
    assert "a + b\n" not in src and "result" not in src
    assert _no_trailing_ws(src)
    namespace: dict = {}
    exec(compile(src, "<released>", "exec"), namespace)
    with pytest.raises(NotImplementedError, match="Your code here"):
        namespace["add"](1, 2)


def test_top_level_region():
    cell = new_code_cell("import math\n### BEGIN SOLUTION\nanswer = math.pi\n### END SOLUTION\nprint('done')")
    src = release_notebook(_nb(cell)).cells[0].source
    assert src == f"import math\n# YOUR CODE HERE\n{STUB}\nprint('done')"
    code = compile(src, "<released>", "exec")
    with pytest.raises(NotImplementedError):
        exec(code, {})


def test_two_regions_in_one_cell():
    cell = new_code_cell(
        "class Model:\n"
        "    def forward(self, x):\n"
        "        ### BEGIN SOLUTION\n"
        "        return x * 2\n"
        "        ### END SOLUTION\n"
        "\n"
        "    def loss(self, y):\n"
        "        ### BEGIN SOLUTION\n"
        "        return y ** 2\n"
        "        ### END SOLUTION\n"
    )
    src = release_notebook(_nb(cell)).cells[0].source
    assert src.count("        # YOUR CODE HERE") == 2
    assert src.count(f"        {STUB}") == 2
    assert "x * 2" not in src and "y ** 2" not in src
    assert _no_trailing_ws(src) and not src.endswith("\n")
    ns: dict = {}
    exec(compile(src, "<released>", "exec"), ns)
    with pytest.raises(NotImplementedError):
        ns["Model"]().forward(1)
    with pytest.raises(NotImplementedError):
        ns["Model"]().loss(1)


def test_markdown_answer_region():
    cell = new_markdown_cell(
        "**Q:** Why warm up?\n\n### BEGIN SOLUTION\nBecause Adam's moments.\n### END SOLUTION"
    )
    src = release_notebook(_nb(cell)).cells[0].source
    assert src == "**Q:** Why warm up?\n\nYOUR ANSWER HERE"


def test_cell_tags_are_kept_and_no_cell_is_dropped():
    keep = new_code_cell("x = 1", metadata={"tags": ["graded"]})
    out = release_notebook(_nb(keep, new_markdown_cell("notes"), new_code_cell(FUNC_SOLUTION)))
    assert len(out.cells) == 3
    assert out.cells[0].metadata == {"tags": ["graded"]}


def test_outputs_and_execution_counts_cleared():
    cell = new_code_cell("print(1)", execution_count=7, outputs=[new_output("stream", text="1\n")])
    out = release_notebook(_nb(cell, new_code_cell(FUNC_SOLUTION, execution_count=3)))
    for c in out.cells:
        assert c.outputs == []
        assert c.execution_count is None


def test_metadata_cleaned():
    code = new_code_cell(
        FUNC_SOLUTION,
        metadata={
            "collapsed": True,
            "execution": {"iopub.status.busy": "2024-01-01T00:00:00"},
            "scrolled": True,
            "tags": ["custom", "graded"],
        },
    )
    md = new_markdown_cell("hello", metadata={"jp-MarkdownHeadingCollapsed": True, "tags": []})
    nb = _nb(
        code,
        md,
        kernelspec={"name": "myenv", "display_name": "My Env", "language": "python"},
        language_info={"name": "python", "version": "3.11.7", "mimetype": "text/x-python"},
        widgets={"application/vnd.jupyter.widget-state+json": {"state": {}}},
        toc={"base_numbering": 1},
        specialist_labs={"lab": "01"},
    )
    out = release_notebook(nb)
    assert dict(out.metadata) == {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
        "specialist_labs": {"lab": "01"},
    }
    assert out.cells[0].metadata == {"tags": ["custom", "graded", RAISES_TAG]}
    assert out.cells[1].metadata == {}
    text = notebook_to_text(out)
    for stray in ("collapsed", "execution", "widgets", "scrolled", "toc", "editable", "deletable"):
        assert f'"{stray}"' not in text
    nbformat.validate(out)
    assert (out.nbformat, out.nbformat_minor) == (4, 5)


def test_specialist_labs_absent_is_not_invented():
    assert "specialist_labs" not in release_notebook(_nb(new_code_cell(FUNC_SOLUTION))).metadata


def test_ids_kept_or_derived_deterministically_and_bytes_stable():
    def build() -> nbformat.NotebookNode:
        with_id = new_code_cell(FUNC_SOLUTION)
        with_id.id = "keep-me"
        no_id_a, no_id_b = new_code_cell("x = 1"), new_code_cell("x = 1")
        del no_id_a["id"], no_id_b["id"]
        return _nb(with_id, no_id_a, no_id_b)

    first, second = release_notebook(build()), release_notebook(build())  # built independently
    ids = [c.id for c in first.cells]
    assert ids[0] == "keep-me"
    assert all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids[1:])
    assert len(set(ids)) == 3  # identical sources at different indices still get distinct ids
    assert ids == [c.id for c in second.cells]

    text = notebook_to_text(first)
    assert text == notebook_to_text(second)
    assert text.endswith("\n") and not text.endswith("\n\n")
    # Round trip: reading the released text and serialising it again gives the same bytes.
    assert notebook_to_text(nbformat.reads(text, as_version=4)) == text
    nbformat.validate(first)


def test_input_not_mutated():
    cell = new_code_cell(FUNC_SOLUTION, execution_count=1, outputs=[new_output("stream", text="x\n")])
    cell.metadata["collapsed"] = True
    nb = _nb(cell, new_code_cell("y", metadata={"tags": ["graded"]}), kernelspec={"name": "x"})
    del nb.cells[1]["id"]
    before = copy.deepcopy(nb)
    release_notebook(nb)
    assert nb == before


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("x = 1\n### BEGIN SOLUTION\ny = 2", 2),  # unclosed
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION", 2),  # nested
        ("x = 1\n    ### END SOLUTION", 2),  # stray END
    ],
)
def test_unbalanced_markers_raise_naming_cell_and_line(source: str, line: int):
    nb = _nb(new_code_cell("ok = True"), new_markdown_cell("intro"), new_code_cell(source))
    with pytest.raises(ReleaseError, match=rf"cell 2, line {line}\b") as exc:
        release_notebook(nb)
    assert isinstance(exc.value, ValueError)


def _write(path: Path, nb: nbformat.NotebookNode) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb), encoding="utf-8")


def test_release_all_create_unchanged_stale_orphan(tmp_path: Path):
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    sol = solutions / "01_x.ipynb"
    cells = [new_markdown_cell("# Lab 1"), new_code_cell(FUNC_SOLUTION)]
    _write(sol, _nb(*cells, specialist_labs={"lab": "01"}))
    _write(solutions / "notes.ipynb", _nb(new_code_cell("ignored")))  # not NN_*: ignored
    lab = labs / "01_x.ipynb"

    assert release_all(solutions, labs) == [ReleaseChange(lab, "created")]
    written = lab.read_bytes()
    assert b"result = a + b" not in written and b"YOUR CODE HERE" in written
    nbformat.validate(nbformat.reads(written.decode(), as_version=4))
    mtime = lab.stat().st_mtime_ns

    assert release_all(solutions, labs) == [ReleaseChange(lab, "unchanged")]
    assert release_all(solutions, labs, check=True) == [ReleaseChange(lab, "unchanged")]
    assert lab.stat().st_mtime_ns == mtime and lab.read_bytes() == written

    edited = nbformat.read(sol, as_version=4)
    edited.cells[0].source = "# Lab 1 (revised)"
    _write(sol, edited)
    orphan = labs / "02_gone.ipynb"
    orphan.write_text("{}", encoding="utf-8")

    assert release_all(solutions, labs, check=True) == [
        ReleaseChange(lab, "stale"),
        ReleaseChange(orphan, "orphan"),
    ]
    assert lab.read_bytes() == written  # check mode writes nothing
    assert orphan.exists()

    assert release_all(solutions, labs) == [ReleaseChange(lab, "updated"), ReleaseChange(orphan, "orphan")]
    assert b"(revised)" in lab.read_bytes()
    assert orphan.exists()  # orphans are never deleted automatically

    lab.unlink()
    assert release_all(solutions, labs, check=True)[0] == ReleaseChange(lab, "stale")
    assert not lab.exists()


def test_release_all_is_byte_stable_for_v44_solutions(tmp_path: Path):
    """A 4.4 notebook has no cell ids; nbformat's upgrade would invent random ones."""
    nb = _nb(new_code_cell(FUNC_SOLUTION), new_code_cell("add(1, 2)"))
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    _write(tmp_path / "solutions" / "03_old.ipynb", nb)
    release_all(tmp_path / "solutions", tmp_path / "labs")
    first = (tmp_path / "labs" / "03_old.ipynb").read_bytes()
    (tmp_path / "labs" / "03_old.ipynb").unlink()
    release_all(tmp_path / "solutions", tmp_path / "labs")
    assert (tmp_path / "labs" / "03_old.ipynb").read_bytes() == first
    assert nbformat.reads(first.decode(), as_version=nbformat.NO_CONVERT).nbformat_minor == 5


def test_release_all_rejects_solution_without_region(tmp_path: Path):
    _write(tmp_path / "solutions" / "04_empty.ipynb", _nb(new_code_cell("x = 1")))
    with pytest.raises(ReleaseError, match="04_empty.ipynb.*BEGIN SOLUTION"):
        release_all(tmp_path / "solutions", tmp_path / "labs")
    assert not (tmp_path / "labs").exists()


def _tagged(nb: nbformat.NotebookNode) -> list[bool]:
    return [RAISES_TAG in c.metadata.get("tags", []) for c in nb.cells]


def test_cells_that_may_raise_in_an_untouched_lab_are_tagged_raises_exception():
    """nbval --nbval-lax then passes on a fresh lab and still fails on any other error."""
    cells = [
        new_code_cell("import math\nfrom grader import check"),
        new_code_cell("dev = 'cpu'\n\n" + FUNC_SOLUTION + "\nprint(add(1, 2))"),  # exercise: the demo raises
        new_code_cell('check("add")'),  # check() reports "not implemented", it does not raise
        new_code_cell("y = math.pi\nprint(dev)"),  # `dev` is bound before the stub runs
        new_code_cell("total = add(y, 1)\nscale = 2"),  # uses the stubbed function
        new_code_cell("print(total * scale)"),  # `total` and `scale` may be undefined
        new_markdown_cell("### BEGIN SOLUTION\nbecause\n### END SOLUTION"),  # markdown: never tagged
        new_code_cell("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION"),  # top-level exercise
        new_code_cell("def twice():\n    return 2 * answer"),  # defining does not raise ...
        new_code_cell("print(twice())"),  # ... calling does
        new_code_cell("total = 3\nprint(total)"),  # safely rebound
        new_code_cell("print(total)"),
    ]
    out = release_notebook(_nb(*cells))
    assert _tagged(out) == [False, True, False, False, True, True, False, True, False, True, False, False]
    assert out == release_notebook(_nb(*cells))  # still a pure function of the solution


@pytest.mark.notebook
def test_nbval_lax_passes_on_a_fresh_lab_and_fails_on_a_broken_one(tmp_path: Path):
    """`pytest --nbval-lax labs/` is what study groups run; lab 00 is the cheapest notebook."""
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from conftest import solution_path

    lab = release_notebook(nbformat.read(solution_path("00"), as_version=nbformat.NO_CONVERT))
    fresh = tmp_path / "00_fresh.ipynb"
    fresh.write_text(notebook_to_text(lab), encoding="utf-8")
    target = next(c for c in lab.cells if c.cell_type == "code" and RAISES_TAG not in c.metadata.get("tags", []))
    target.source += "\nprint('unclosed'"  # a syntax error where the learner writes no code
    broken = tmp_path / "00_broken.ipynb"
    broken.write_text(notebook_to_text(lab), encoding="utf-8")

    report = tmp_path / "junit.xml"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", str(fresh), str(broken), "-p", "no:cacheprovider",
         "--maxfail=1", f"--junitxml={report}", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    cases = list(ET.parse(report).getroot().iter("testcase"))
    failed = [c.get("classname") for c in cases if c.find("failure") is not None]
    ran_fresh = [c for c in cases if "fresh" in c.get("classname", "")]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(ran_fresh) == sum(c.cell_type == "code" for c in lab.cells), "every cell of the fresh lab ran"
    assert len(failed) == 1 and "broken" in failed[0], proc.stdout[-3000:]
