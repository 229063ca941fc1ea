"""Do the course's library calls still match the libraries? The installed ones, or the newest releases (--latest).

    python scripts/api_drift.py              # check against this environment: table, problems, exit 1 on problems
    python scripts/api_drift.py --latest     # the same in a throwaway venv with the newest releases (downloads ~1 GB)

The check itself is grader/api_drift.py (docs/api-drift.md says what it covers). --latest makes a venv in a temporary
folder, pip installs the newest transformers, peft, bitsandbytes, tokenizers, torch, trl and accelerate there (torch
from the PyTorch CPU index on Linux without an NVIDIA GPU: PyPI's default Linux torch is a multi-GB CUDA build),
runs `python -m grader.api_drift` in it with this checkout on PYTHONPATH, prints what it found, and deletes the venv.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATEST = ("transformers", "peft", "bitsandbytes", "tokenizers", "torch", "trl", "accelerate")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _quiet_env(pythonpath: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PYTHONWARNINGS="ignore")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    return env


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _reachable(url: str, timeout_s: float = 10.0) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
        return True
    except urllib.error.HTTPError:  # an HTTP error status still means the index answers
        return True
    except Exception:
        return False


def pip_command(python: Path, cpu_torch: bool) -> list[str]:
    # --retries 1: an unreachable index costs seconds per package, not minutes
    cmd = [str(python), "-m", "pip", "install", "--upgrade", "--disable-pip-version-check", "--retries", "1", *LATEST]
    if cpu_torch:
        cmd += ["--extra-index-url", CPU_INDEX]
    return cmd


def run_latest(args: argparse.Namespace) -> int:
    cpu_torch = args.torch == "cpu" or (args.torch == "auto" and platform.system() == "Linux" and not _has_nvidia_gpu())
    if cpu_torch and not _reachable(CPU_INDEX + "/"):
        print(f"the PyTorch CPU index ({CPU_INDEX}) is not reachable from here, so pip would install PyPI's "
              f"multi-GB CUDA build of torch instead; nothing checked. Use --torch default to accept that.",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="api-drift-latest-") as tmp:
        env_dir = Path(tmp) / "venv"
        print(f"creating a throwaway venv in {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        cmd = pip_command(python, cpu_torch)
        print("$ " + " ".join(cmd), flush=True)
        started = time.monotonic()
        try:
            subprocess.run(cmd, check=True, timeout=args.install_timeout)
        except subprocess.TimeoutExpired:
            print(f"pip did not finish in {args.install_timeout} s; nothing checked", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as err:
            print(f"pip failed (exit {err.returncode}); nothing checked", file=sys.stderr)
            return 2
        print(f"installed in {time.monotonic() - started:.0f} s", flush=True)
        check = [str(python), "-m", "grader.api_drift", "--root", str(ROOT)]
        if args.problems_only:
            check.append("--problems-only")
        print("$ " + " ".join(check), flush=True)
        result = subprocess.run(check, cwd=ROOT, env=_quiet_env(ROOT))
        print(f"(the throwaway venv is deleted now; exit {result.returncode})", flush=True)
        return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latest", action="store_true",
                        help="check against the newest releases, installed into a throwaway venv")
    parser.add_argument("--torch", choices=("auto", "cpu", "default"), default="auto",
                        help="--latest: which torch build (auto: CPU on Linux without an NVIDIA GPU)")
    parser.add_argument("--install-timeout", type=float, default=1800, help="--latest: seconds pip may take")
    parser.add_argument("--problems-only", action="store_true", help="print the problems, not the whole table")
    args = parser.parse_args(argv)
    if args.latest:
        return run_latest(args)
    sys.path.insert(0, str(ROOT))
    from grader import api_drift

    return api_drift.main(["--root", str(ROOT), *(["--problems-only"] if args.problems_only else [])])


if __name__ == "__main__":
    sys.exit(main())
