"""Confine a grading kernel: bubblewrap when it works here, plain process limits otherwise.

Under bubblewrap the kernel sees the system read-only, gets a private /tmp, writes only to
its own working directory and the runner's private result directory, has no network and no
capabilities, and cannot see paths the caller hides (other submissions, the gradebook, the
solutions). Because its network is unshared, the kernel cannot reach the grader over TCP on
localhost, so the kernel manager switches to unix sockets in the private directory
(`manager_options`). Without bubblewrap the same resource limits still apply (no core dumps,
a cap on the size of any file written) and `describe()` says that nothing else does.

`python -m grader.sandbox --fsize-mb N -- CMD...` is the tiny launcher that sets those limits
and then becomes CMD, so the limits hold for the kernel and anything it starts.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str | None, str]:
    """(path to a bwrap that can really build our sandbox here, why not); cached: it costs a process."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap (bwrap) is not installed"
    try:
        proc = subprocess.run(
            [path, "--ro-bind", "/", "/", "--unshare-all", "--cap-drop", "ALL", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bubblewrap does not run here ({exc})"
    if proc.returncode != 0:
        return None, f"bubblewrap cannot create namespaces here ({proc.stderr.strip()[:200]})"
    return path, ""


@functools.lru_cache(maxsize=1)
def _supports_tmpfs_size(bwrap: str) -> bool:
    """Older bubblewraps have no `--size`; their /tmp is a tmpfs without a cap of its own."""
    out = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    return "--size" in out


def bwrap_available() -> bool:
    """Is a working bubblewrap installed on this machine?"""
    return _probe()[0] is not None


@dataclass
class Sandbox:
    """How to confine each grading kernel. `isolate=False` asks for process limits only."""

    hide: tuple[Path, ...] = field(default_factory=tuple)
    file_size_mb: int = 1024
    tmp_size_mb: int = 1024
    isolate: bool = True

    @property
    def isolated(self) -> bool:
        return self.isolate and bwrap_available()

    def describe(self) -> str:
        """One line for logs: what actually confines the kernel, and why not more."""
        if self.isolated:
            return "bubblewrap sandbox (read-only system, private /tmp, no network) + process limits"
        why = "not requested" if not self.isolate else _probe()[1]
        return f"process limits only: no filesystem or network isolation ({why})"

    def kernelspec_fields(self, argv: list[str], writable: Iterable[Path]) -> dict:
        """Kernelspec entries that run `argv` inside this sandbox; `writable` dirs stay writable.

        Under bubblewrap, interrupts go as a message: a SIGINT to the process group would also hit
        bwrap itself, which dies and takes the kernel with it (--die-with-parent).
        """
        limited = [sys.executable, "-m", "grader.sandbox", "--fsize-mb", str(self.file_size_mb), "--", *argv]
        if not self.isolated:
            return {"argv": limited}
        wrapped = [_probe()[0], *self._bwrap_args([Path(p) for p in writable]), "--", *limited]
        return {"argv": wrapped, "interrupt_mode": "message"}

    def manager_options(self, private: Path) -> dict:
        """Kernel-manager settings: unix sockets in `private` when the network is unshared."""
        if not self.isolated:
            return {}
        return {"transport": "ipc", "connection_file": str(Path(private) / "kernel.json")}

    def _bwrap_args(self, writable: list[Path]) -> list[str]:
        bwrap = _probe()[0]
        args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        if _supports_tmpfs_size(bwrap):
            args += ["--size", str(self.tmp_size_mb * 2**20)]
        args += ["--tmpfs", "/tmp"]
        for path in _needed_under_tmp():
            args += ["--ro-bind", str(path), str(path)]
        for path in self.hide:
            if Path(path).exists():
                args += ["--tmpfs", str(Path(path).resolve())]
        for path in writable:
            args += ["--bind", str(path.resolve()), str(path.resolve())]
        return [
            *args,
            "--unshare-all",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            # ipykernel polls its parent by pid; in the sandbox's pid namespace that pid means nothing
            # and the kernel would exit at once. --die-with-parent does that job instead.
            "--unsetenv",
            "JPY_PARENT_PID",
            # HOME stays (read-only), so caches such as the course's base models are found; the
            # few tools that write under it get a private place instead.
            "--setenv",
            "IPYTHONDIR",
            "/tmp/ipython",
            "--setenv",
            "MPLCONFIGDIR",
            "/tmp/matplotlib",
        ]


def kernel_paths() -> list[Path]:
    """The directories a grading kernel reads: the interpreter and its libraries, the course (through sys.path)
    and the model cache. The sandbox never hides them, and mounts back those that live under /tmp."""
    import grader
    import labkit
    from labkit.zoo import cache_dir

    exe = Path(sys.executable)
    packages = [Path(grader.__file__).parent, Path(labkit.__file__).parent]  # editable installs: not on sys.path
    candidates = [sys.prefix, sys.base_prefix, exe.parent, exe.resolve().parent, *packages, cache_dir(), *sys.path]
    paths = {Path(c).resolve() for c in candidates if c and os.path.isabs(c)}
    return sorted(p for p in paths if p.is_dir())


def _needed_under_tmp() -> list[Path]:
    """Kernel paths under /tmp, which the sandbox replaces by an empty tmpfs (a course cloned or installed
    there, its venv, a model cache there); outermost only, so each is mounted once."""
    tmp = Path("/tmp").resolve()
    under = [p for p in kernel_paths() if tmp in p.parents]
    return [p for p in under if not any(q in p.parents for q in under)]


def _limit_and_exec(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grader.sandbox")
    parser.add_argument("--fsize-mb", type=int, required=True, help="largest file the command may write")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a segfaulting submission leaves no core file
    fsize = args.fsize_mb * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    os.execvp(command[0], command)


if __name__ == "__main__":
    _limit_and_exec()
