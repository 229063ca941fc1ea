"""Shared fixtures: the repo paths and helpers to make notebook variants (buggy, hostile) from solutions."""

from __future__ import annotations

import copy
import re
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


def lean(path: Path) -> nbformat.NotebookNode:
    """A notebook without its environment report (lab 00's `grader.doctor` cell, a few seconds of imports): for
    tests of the grader and the batch, which need a cheap notebook, not the lab."""
    nb = load(path)
    nb.cells = [c for c in nb.cells if "from grader.doctor import report" not in c.source]
    return nb


def mutate(nb: nbformat.NotebookNode, old: str, new: str) -> nbformat.NotebookNode:
    """Replace `old` by `new` in exactly one code cell; fails loudly if the solution changed under the test."""
    nb = copy.deepcopy(nb)
    hits = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
    assert len(hits) == 1, f"expected exactly one cell containing {old!r}, found {len(hits)}"
    assert hits[0].source.count(old) == 1, f"{old!r} occurs more than once in its cell"
    hits[0].source = hits[0].source.replace(old, new)
    return nb


def add_cell(
    nb: nbformat.NotebookNode, source: str, index: int | None = None, timeout_s: float | None = None
) -> nbformat.NotebookNode:
    """A copy of `nb` with one more code cell; `timeout_s` gives that cell alone a short limit, so a test of a
    hung cell waits seconds while the notebook's other cells keep limits far above their time on a busy machine."""
    nb = copy.deepcopy(nb)
    cell = nbformat.v4.new_code_cell(source)
    if timeout_s is not None:
        cell.metadata["specialist_labs"] = {"timeout_s": timeout_s}
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


# --- kernels, marks and order -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _kernel_tests_are_marked(request, monkeypatch):
    """A test that starts a kernel must say so (@pytest.mark.notebook), so `-m "not notebook"` is a quick loop."""
    if request.node.get_closest_marker("notebook"):
        return
    from grader.runner import KernelSession

    def refuse(self):
        raise AssertionError(f"{request.node.nodeid} starts a kernel: mark it @pytest.mark.notebook")

    monkeypatch.setattr(KernelSession, "__enter__", refuse)


def _session_lab(item) -> str | None:
    """The lab whose open solution session this test uses (tests/test_labs.py), if any."""
    if "sessions" not in getattr(item, "fixturenames", ()):
        return None
    lab = item.callspec.params.get("lab") if hasattr(item, "callspec") else None
    return lab if isinstance(lab, str) else None  # an empty parametrize gives a placeholder, not a lab


def _lab_cost(lab: str) -> float:
    """A lab's stated quiet run time: its session's share of the suite, for ordering (docs/lab-timings.json)."""
    from grader.timings import load_reference

    labs = load_reference().labs
    return labs[lab].cpu_s if lab in labs else 0.0


def pytest_collection_modifyitems(config, items):
    """Longest first, so the two test processes finish together: the labs' solution sessions (each one lab's tests
    back to back, solution first; see pytest_xdist_make_scheduler) by the lab's run time, then the other tests that
    start kernels, then the rest, each group in file order."""

    def rank(pair: tuple[int, pytest.Item]) -> tuple:
        position, item = pair
        lab = _session_lab(item)
        if lab is not None:
            return (0, -_lab_cost(lab), lab, "solution" not in item.name, position)
        return (1 if item.get_closest_marker("notebook") else 2, position)

    items[:] = [item for _, item in sorted(enumerate(items), key=rank)]


_SESSION_NODEID = re.compile(r"tests/test_labs\.py::\w+\[(\d\d)[-\]]")


def pytest_xdist_make_scheduler(config, log):
    """One lab's session tests go to one test process, in order, so its solution runs once there (xdist's
    `xdist_group` mark cannot do this under pytest 9.2: it renames node ids through an attribute pytest no longer
    reads). Every other test is a unit of its own. Units go out in collection order: longest first."""
    from xdist.scheduler import LoadScopeScheduling

    if config.getvalue("dist") not in ("load", "loadgroup", "loadscope"):
        return None  # each/loadfile/worksteal asked for by hand: xdist's own

    class LabSessions(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems chose

        def _split_scope(self, nodeid: str) -> str:
            match = _SESSION_NODEID.match(nodeid)
            return f"lab{match.group(1)}" if match else nodeid

    return LabSessions(config, log)


@pytest.fixture
def lab_timings():
    """record(lab, seconds): a solution's fresh-kernel run time, with a calibration measured now, in this process,
    for the lab-timings report CI prints. Reported, never asserted: a busy machine must not fail a test."""
    from grader import timings

    def record(lab: str, seconds: float) -> None:
        timings.record(timings.LabTiming(lab, seconds, timings.calibrate()))

    return record


COSTS_DIR = ROOT / ".cache" / "variant-costs"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controlling process, once per run: start fresh reports
        import shutil

        from grader import timings

        timings.DEFAULT_REPORT.unlink(missing_ok=True)
        shutil.rmtree(COSTS_DIR, ignore_errors=True)


def pytest_sessionfinish(session):
    """Each test process leaves the costs of the variants it graded for the controller's summary."""
    import json
    import os
    from dataclasses import asdict

    from variants import COSTS

    if COSTS:
        COSTS_DIR.mkdir(parents=True, exist_ok=True)
        (COSTS_DIR / f"{os.getpid()}.json").write_text(json.dumps([asdict(c) for c in COSTS]))


def _variant_cost_table() -> list[str]:
    import json

    rows: dict[str, list[dict]] = {}
    for path in sorted(COSTS_DIR.glob("*.json")):
        for cost in json.loads(path.read_text()):
            rows.setdefault(cost["lab"], []).append(cost)
    lines = ["lab  variants  re-run s (mean)  grading s (mean)  total s"]
    for lab, costs in sorted(rows.items()):
        run, grade, n = sum(c["run_s"] for c in costs), sum(c["grade_s"] for c in costs), len(costs)
        lines.append(f"{lab:>3}  {n:>8}  {run / n:>15.1f}  {grade / n:>16.1f}  {run + grade:>7.1f}")
    return lines if rows else []


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    from grader import timings

    report = timings.load_report()
    if report:
        terminalreporter.write_sep("=", "lab timings (solution run, fresh kernel; python -m grader.timings show)")
        terminalreporter.write_line(timings.render_table(report, timings.load_reference()))
    costs = _variant_cost_table()
    if costs:
        terminalreporter.write_sep("=", "variant costs (re-run cells in the solution's kernel, then grade)")
        for line in costs:
            terminalreporter.write_line(line)
