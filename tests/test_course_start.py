"""scripts/course.sh's arguments and where it runs (root, no display, SSH, a chosen port), without starting anything.

SPECIALIST_LABS_DRY_RUN=1 makes the script print the command it would exec (shell-quoted, on stdout) and set up
nothing. Who the user is and which system it is come from fake `id` and `uname` put first on PATH.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "course.sh"
HEADLESS_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY")


@pytest.fixture
def course(tmp_path: Path):
    """course(*args, uid=1000, system="Linux", **env) -> CompletedProcess of course.sh in a controlled world."""
    fake = tmp_path / "bin"
    fake.mkdir()
    venv = tmp_path / "no-venv"  # a dry run must not create it

    def run(*args: str, uid: int = 1000, system: str = "Linux", dry: bool = True, **env: str):
        (fake / "id").write_text(f'#!/bin/sh\n[ "$1" = -u ] && echo {uid} && exit 0\nexec /usr/bin/id "$@"\n')
        (fake / "uname").write_text(f'#!/bin/sh\n[ "$1" = -s ] && echo {system} && exit 0\nexec uname "$@"\n')
        for tool in ("id", "uname"):
            (fake / tool).chmod(0o755)
        base = {k: v for k, v in os.environ.items() if k not in HEADLESS_VARS and not k.startswith("SPECIALIST_LABS")}
        base.update(PATH=f"{fake}:{os.environ['PATH']}", SPECIALIST_LABS_VENV=str(venv))
        if dry:
            base["SPECIALIST_LABS_DRY_RUN"] = "1"
        base.update(env)
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=base, timeout=60)
        assert not venv.exists(), "a dry run or a usage error set something up"
        return proc

    return run


def command(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one command line on stdout, got {proc.stdout!r}"
    return shlex.split(lines[0])


def jupyter_args(proc: subprocess.CompletedProcess) -> list[str]:
    argv = command(proc)
    assert argv[0].endswith("/no-venv/bin/jupyter") and argv[1:3] == ["lab", "labs/"], argv
    return argv[3:]


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_lists_commands_and_options_and_exits_0(course, flag):
    proc = course(flag, dry=False)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("Usage: bash scripts/course.sh"), text
    for word in ("lab", "test", "setup", "help", "--cpu", "--gpu", "--port N", "-h, --help"):
        assert word in text, f"{word!r} missing from the usage"
    assert "the default" in text and "go to `jupyter lab` (lab) or to pytest (test)" in text
    assert "--allow-root" in text and "--no-browser" in text and "token" in text


@pytest.mark.parametrize("args", [["labs"], ["tests"], ["lab", "--port", "x"], ["lab", "--port"],
                                  ["lab", "--port=70000"], ["test", "--port", "8890"]])
def test_a_wrong_argument_prints_the_usage_and_exits_2(course, args):
    proc = course(*args, dry=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", "nothing was run"
    assert "Usage: bash scripts/course.sh" in proc.stderr
    assert (args[0] in proc.stderr) if args[0] != "lab" else ("--port" in proc.stderr)


def test_lab_is_the_default_and_extra_arguments_go_to_jupyter_lab(course):
    assert jupyter_args(course(DISPLAY=":0")) == []
    assert jupyter_args(course("--ServerApp.ip=0.0.0.0", DISPLAY=":0")) == ["--ServerApp.ip=0.0.0.0"]
    assert jupyter_args(course("lab", "--gpu", "--collaborative", DISPLAY=":0")) == ["--collaborative"]


def test_extra_arguments_go_to_pytest(course):
    argv = command(course("test", "--cpu", "-m", "not notebook", "-x"))
    assert argv[0].endswith("/no-venv/bin/python") and argv[1:] == ["-m", "pytest", "-m", "not notebook", "-x"]
    whole = command(course("test"))
    assert whole[1:3] == ["-m", "pytest"] and "--durations=15" in whole and "-n" in whole


def test_root_adds_allow_root_with_a_note(course):
    root = course(uid=0, DISPLAY=":0")
    assert jupyter_args(root) == ["--allow-root"]
    assert "as root" in root.stderr and len([line for line in root.stderr.splitlines() if "root" in line]) == 1
    user = course(uid=1000, DISPLAY=":0")
    assert jupyter_args(user) == [] and "root" not in user.stderr
    assert jupyter_args(course("--allow-root", uid=0, DISPLAY=":0")) == ["--allow-root"], "not twice"


@pytest.mark.parametrize(
    ("system", "env", "headless"),
    [
        ("Linux", {}, True),
        ("Linux", {"DISPLAY": ":0"}, False),
        ("Linux", {"WAYLAND_DISPLAY": "wayland-0"}, False),
        ("Linux", {"DISPLAY": ":0", "SSH_CONNECTION": "10.0.0.2 50000 10.0.0.1 22"}, True),
        ("Darwin", {}, False),
        ("Darwin", {"SSH_CONNECTION": "10.0.0.2 50000 10.0.0.1 22"}, True),
    ],
)
def test_no_display_or_ssh_adds_no_browser_and_says_where_the_url_is(course, system, env, headless):
    proc = course(system=system, **env)
    assert jupyter_args(proc) == (["--no-browser"] if headless else [])
    assert ("lab?token=" in proc.stderr) is headless, proc.stderr
    assert ("ssh -L 8888:localhost:8888" in proc.stderr) is ("SSH_CONNECTION" in env), proc.stderr


def test_no_browser_is_not_added_twice(course):
    assert jupyter_args(course("--no-browser")) == ["--no-browser"]


@pytest.mark.parametrize("args", [["--port", "8890"], ["--port=8890"], ["lab", "--port", "8890"]])
def test_a_chosen_port_goes_to_jupyter_lab_and_into_the_notes(course, args):
    proc = course(*args, uid=0, SSH_CONNECTION="10.0.0.2 50000 10.0.0.1 22")
    assert jupyter_args(proc) == ["--allow-root", "--no-browser", "--port=8890"]
    assert "http://127.0.0.1:8890/lab?token=" in proc.stderr and "ssh -L 8890:localhost:8890" in proc.stderr
