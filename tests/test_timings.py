"""grader.timings: the calibration yardstick, the timings report, and one source for the stated run times."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import nbformat
import pytest
import torch
from conftest import ROOT, SOLUTIONS

from grader import timings
from grader.registry import lab_ids
from grader.timings import LabReference, LabTiming, Reference, load_report, record, render_table, sync_docs


def test_readme_and_notebooks_agree_with_the_reference(capsys):
    assert sync_docs(ROOT) == []
    assert timings.main(["check"]) == 0
    assert "agree" in capsys.readouterr().out


def test_reference_covers_every_lab_and_says_which_figures_are_estimates():
    raw = json.loads(timings.REFERENCE_PATH.read_text())
    assert set(raw["labs"]) == set(lab_ids())
    for lab, figures in raw["labs"].items():
        assert isinstance(figures["cpu_estimate"], bool) and isinstance(figures["gpu_estimate"], bool), lab
        assert figures["cpu_s"] > 0 and figures["gpu_s"] > 0, lab
    assert raw["calibration_s"] > 0  # what projections to the quiet machine multiply by
    assert set(timings.load_reference().labs) == set(lab_ids())


@pytest.fixture
def course_copy(tmp_path):
    """README, the reference and the solution notebooks, copied where a test may break them."""
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copy(timings.REFERENCE_PATH, tmp_path / "docs")
    shutil.copytree(SOLUTIONS, tmp_path / "solutions")
    return tmp_path


def test_check_catches_drift_and_update_docs_repairs_only_the_times(course_copy):
    ref = timings.load_reference(course_copy / "docs" / "lab-timings.json")
    readme_before = (course_copy / "README.md").read_text()
    drifted = Reference(ref.calibration_s, {**ref.labs, "01": dataclasses.replace(ref.labs["01"], cpu_s=99,
                                                                                    gpu_estimate=False)})
    problems = sync_docs(course_copy, drifted)
    assert len(problems) == 2 and problems[0].startswith("README.md: lab 01") and "01_" in problems[1], problems
    assert sync_docs(course_copy, drifted, write=True) == problems
    assert sync_docs(course_copy, drifted) == []
    readme = (course_copy / "README.md").read_text()
    changed = [(a, b) for a, b in zip(readme_before.split("\n"), readme.split("\n"), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith("| 01 |") and changed[0][1].endswith("| ~99 s | ~8 s |")
    (nb_path,) = (course_copy / "solutions").glob("01_*.ipynb")
    intro = nbformat.read(nb_path, as_version=4).cells[0].source
    assert "Running all cells: ~99 s on a laptop CPU, ~8 s on a GPU.\n" in intro
    assert sync_docs(course_copy, ref, write=True) and sync_docs(course_copy, ref) == []
    assert (course_copy / "README.md").read_text() == readme_before  # and back again, byte for byte


def test_a_missing_or_mangled_sentence_is_reported_not_guessed(course_copy):
    (nb_path,) = (course_copy / "solutions").glob("03_*.ipynb")
    nb = nbformat.read(nb_path, as_version=4)
    stated = f"~{timings.load_reference().labs['03'].cpu_s:g} s on a laptop CPU"
    assert stated in nb.cells[0].source
    nb.cells[0].source = nb.cells[0].source.replace(stated, stated.replace("a laptop", "a 2-core laptop"))
    nbformat.write(nb, nb_path)
    text = nb_path.read_text()
    problems = sync_docs(course_copy, write=True)
    assert problems == [f"solutions/{nb_path.name}: the first cell should state, once and on one line, "
                        f"{timings.load_reference().labs['03'].sentence()!r}"]
    assert nb_path.read_text() == text


def test_calibration_is_positive_finite_and_the_same_work_every_time():
    state = torch.get_rng_state()
    with torch.no_grad():  # a caller's grad mode must not change the work
        first = timings.workload()
    assert timings.workload() == first  # fixed seed, shapes and steps: bit-identical result, so identical work
    assert math.isfinite(first)
    seconds = timings.calibrate(repeats=1)
    assert math.isfinite(seconds) and seconds > 0
    assert torch.equal(torch.get_rng_state(), state)  # calibrating never disturbs a seeded run


def test_record_merges_concurrent_writers(tmp_path):
    """Four processes (like pytest-xdist workers) record ten labs each into one report: none is lost."""
    path = tmp_path / "report" / "lab-timings.json"
    code = ("import sys; from grader.timings import LabTiming, record\n"
            "for i in range(10): record(LabTiming(f'{sys.argv[1]}{i}', 1.0 + i, 0.5), sys.argv[2])")
    procs = [subprocess.Popen([sys.executable, "-c", code, w, str(path)], cwd=ROOT) for w in "abcd"]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]  # the timeout is only a safety net
    report = load_report(path)
    assert set(report) == {f"{w}{i}" for w in "abcd" for i in range(10)}
    assert report["c7"] == LabTiming("c7", 8.0, 0.5) and report["c7"].ratio == 16
    record(LabTiming("c7", 3.0, 1.5), path)  # a second run of a lab replaces its entry
    assert load_report(path)["c7"].ratio == 2 and len(load_report(path)) == 40
    assert sorted(p.name for p in path.parent.iterdir()) == ["lab-timings.json", "lab-timings.json.lock"]
    assert load_report(tmp_path / "none.json") == {}


def test_render_table_shows_each_lab_projected_to_the_quiet_machine(tmp_path, capsys):
    ref = Reference(0.5, {"03": LabReference("03", cpu_s=30, gpu_s=25)})
    table = render_table([LabTiming("07", 10.0, 1.0), LabTiming("03", 240.0, 4.0)], ref)
    header, rule, row03, row07, note = table.splitlines()
    assert header.split()[:2] == ["lab", "solution"] and set(rule) == {"-", " "}
    assert row03.split() == ["03", "240.0", "4.000", "60.0", "30.0", "30"]  # 60 units x 0.5 s: as stated
    assert row07.split() == ["07", "10.0", "1.000", "10.0", "5.0", "-"]
    assert "0.500" in note
    assert render_table([LabTiming("03", 1.0, 1.0)], Reference(None, {})).splitlines()[2].split()[-2:] == ["-", "-"]
    path = tmp_path / "t.json"
    assert timings.main(["show", str(path)]) == 1
    record(LabTiming("05", 20.0, 0.5), path)
    assert timings.main(["show", str(path)]) == 0 and "05" in capsys.readouterr().out


def test_allowed_time_scales_with_this_process_calibration():
    ref = Reference(0.5, {"03": LabReference("03", cpu_s=30, gpu_s=25)})
    assert ref.allowed_s("03", calibration_s=0.5, factor=4) == pytest.approx(120)
    assert ref.allowed_s("03", calibration_s=2.0, factor=4) == pytest.approx(480)  # 4x slower here: 4x the time
    with pytest.raises(ValueError, match="calibration_s"):
        Reference(None, ref.labs).allowed_s("03", 1.0)
