"""The course as a learner meets it, in a real browser.

`scripts/course.sh lab` (on a copy of labs/, so nothing the browser does reaches the repository) serves JupyterLab on
a free port; Playwright drives the system's Chromium, headless: it opens labs/00_setup.ipynb, runs all cells, sees
the "not implemented" panel of an unsolved question, types the solution of one exercise into its cell, runs that
cell and its check(...) cell, and sees the passed panel with the points. Screenshots go to
.cache/test-output/browser/ (replaced on each run, kept when it fails). The server is stopped by its process id,
and the test fails if a process of its server or kernel is left.

Skipped, never failed, where Playwright for Python or a Chromium is not installed or Chromium cannot start
(`.ci/run` installs Debian's `chromium`; Playwright cannot download its own browser here). SPECIALIST_LABS_CHROMIUM
names another Chromium-based browser.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import psutil
import pytest
from conftest import LABS, ROOT, SOLUTIONS

from grader.registry import load_lab
from grader.release import BEGIN_SOLUTION, END_SOLUTION

pytestmark = pytest.mark.notebook  # the server starts a kernel

SHOTS = ROOT / ".cache" / "test-output" / "browser"
NOTEBOOK = "00_setup.ipynb"
URL_RE = re.compile(r"(http://127\.0\.0\.1:(\d+))/lab\?token=([0-9a-f]+)")
# Safety nets far above a busy machine's times, not budgets: quiet, the whole test takes about a minute.
START_S, RUN_ALL_S, CELL_S = 120, 300, 120


def chromium() -> str:
    """The browser Playwright drives: SPECIALIST_LABS_CHROMIUM, else the system's Chromium or Chrome."""
    named = os.environ.get("SPECIALIST_LABS_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed (Debian/Ubuntu: apt-get install chromium; .ci/run does this)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def solved_source(marker: str) -> str:
    """The solution notebook's cell containing `marker`, without the solution markers: what a learner types."""
    nb = nbformat.read(SOLUTIONS / NOTEBOOK, as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    return "\n".join(line for line in cell.source.splitlines() if line.strip() not in (BEGIN_SOLUTION, END_SOLUTION))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ours(root: Path) -> list[psutil.Process]:
    """Live processes working in `root` (the server in the copy of the course, its kernel in the copy's labs/) or
    naming it on their command line (the kernel's connection file in the server's runtime folder)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            where = " ".join([p.info["cwd"] or "", *(p.info["cmdline"] or ())])
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(root) in where:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@contextmanager
def course_server(tmp: Path) -> Iterator[tuple[str, str, str]]:
    """`scripts/course.sh lab` on a copy of the course in `tmp`: yields (base URL, token, the server's log)."""
    course = tmp / "course"
    (course / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "course.sh", course / "scripts")
    shutil.copytree(LABS, course / "labs")
    venv = Path(sys.prefix)
    if not (venv / "bin" / "jupyter").exists():
        pytest.skip(f"no jupyter in {venv}")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    env.update(
        SPECIALIST_LABS_VENV=str(venv),  # the copy uses this environment: nothing to install
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),  # no settings or workspaces of the person running the test
        JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
        IPYTHONDIR=str(tmp / "ipython"),
    )
    env.pop("SPECIALIST_LABS_DRY_RUN", None)
    args = ["lab", "--port", str(free_port())]
    if sys.platform != "linux":
        args.append("--no-browser")  # course.sh adds it by itself only on a Linux without a display
    args += [  # test-only: no update checks; idle kernels culled and the server ends by itself if left orphaned
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--MappingKernelManager.cull_idle_timeout=600",
        "--ServerApp.shutdown_no_activity_timeout=900",
    ]
    settings = tmp / "jupyter-config" / "lab" / "user-settings" / "@jupyterlab"
    for extension, name, values in [
        ("apputils-extension", "notification", '{"fetchNews": "false", "checkForUpdates": false}'),  # no news toast
        ("notebook-extension", "tracker", '{"windowingMode": "none"}'),  # cells laid out at once: steady screenshots
    ]:
        (settings / extension).mkdir(parents=True, exist_ok=True)
        (settings / extension / f"{name}.jupyterlab-settings").write_text(values)
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", str(course / "scripts" / "course.sh"), *args], cwd=tmp, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while not (match := URL_RE.search(log_path.read_text())):
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no URL with a token after {START_S} s:\n{log_path.read_text()}"
            time.sleep(0.5)
        yield match.group(1), match.group(3), log_path.read_text()
    finally:
        children = []
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:  # course.sh exec'd jupyter: this pid is the server; on SIGTERM it shuts its kernels
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for child in children:  # a kernel the server did not shut down in time
            try:
                child.wait(timeout=10)
            except psutil.TimeoutExpired:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        print(f"server log: {log_path}")


def test_lab_00_in_a_real_browser(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    executable = chromium()
    shots = SHOTS / "test_lab_00_in_a_real_browser"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    print(f"screenshots: {shots}")
    points = load_lab("00").questions["tensor_nbytes"].points
    solution = solved_source("def tensor_nbytes")
    before = digest(LABS / NOTEBOOK)
    started = time.monotonic()

    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, headless=True)
        except sync_api.Error as e:
            pytest.skip(f"Chromium at {executable} does not start: {str(e).splitlines()[0]}")
        try:
            with course_server(tmp_path) as (base, token, log):
                assert "Not opening a browser" in log or sys.platform != "linux", log
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                try:
                    _drive(sync_api, page, f"{base}/lab/tree/{NOTEBOOK}?token={token}", shots, points, solution)
                except Exception:
                    page.screenshot(path=shots / "failure.png")
                    raise
        finally:
            browser.close()

    assert not ours(tmp_path), f"left running: {[p.info['cmdline'] for p in ours(tmp_path)]}"
    assert digest(LABS / NOTEBOOK) == before, "the repository's labs/ must not change"
    print(f"browser test: {time.monotonic() - started:.0f} s; screenshots: {sorted(p.name for p in shots.iterdir())}")


def _drive(sync_api, page, url: str, shots: Path, points: float, solution: str) -> None:
    expect = sync_api.expect
    page.goto(url)
    # The kernel has started and the page is connected to it (before that, Run All runs nothing).
    expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=START_S * 1000)
    page.screenshot(path=shots / "01-opened.png")

    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).click()
    # Every code cell got an execution count: the exercises' cells (tagged raises-exception) do not stop Run All.
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""",
        timeout=RUN_ALL_S * 1000,
    )

    def code_cell(source: str):
        editor = page.locator(".jp-InputArea-editor", has_text=source)
        return page.locator(".jp-CodeCell").filter(has=editor)

    unsolved = code_cell('check("move_batch")')
    expect(unsolved.locator(".jp-OutputArea")).to_contain_text(re.compile("not implemented", re.I))
    expect(unsolved.locator(".jp-OutputArea")).to_contain_text(f"0/{points:g} pts")  # both questions: same points
    unsolved.screenshot(path=shots / "02-not-implemented-panel.png")  # scrolls it into view
    page.screenshot(path=shots / "03-run-all.png")
    outputs = " ".join(page.locator(".jp-NotebookPanel .jp-OutputArea").all_text_contents())
    assert "IProgress not found" not in outputs, "ipywidgets is missing: tqdm cannot show its progress bars"

    exercise = code_cell("def tensor_nbytes")
    exercise.scroll_into_view_if_needed()
    exercise.locator(".cm-content").click()  # edit mode in that cell
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(solution)  # one insertion: no auto-indent or auto-closed brackets
    expect(exercise.locator(".cm-content")).to_contain_text("t.numel() * t.element_size()")
    page.keyboard.press("Shift+Enter")  # runs the cell and moves to its check cell
    expect(exercise.locator(".jp-OutputArea")).to_contain_text("'float32': 4.0", timeout=CELL_S * 1000)
    page.keyboard.press("Shift+Enter")  # runs check("tensor_nbytes")

    panel = code_cell('check("tensor_nbytes")').locator(".jp-OutputArea")
    expect(panel).to_contain_text(f"{points:g}/{points:g} pts", timeout=CELL_S * 1000)
    expect(panel).to_contain_text("passed")
    code_cell("def tensor_nbytes").screenshot(path=shots / "04-solved-cell.png")
    code_cell('check("tensor_nbytes")').screenshot(path=shots / "05-passed-panel.png")
    page.screenshot(path=shots / "06-passed.png")
