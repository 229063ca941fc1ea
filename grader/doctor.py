"""`grader doctor`: what is installed, what device the labs will use, and how to fix what is wrong."""

from __future__ import annotations

import platform
import shutil
import sys
from importlib import metadata

import psutil

PACKAGES = ["torch", "transformers", "peft", "bitsandbytes", "tokenizers", "nbclient", "jupyterlab", "matplotlib"]


def _version(name: str) -> str | None:
    """The installed distribution's version, read from its metadata: importing peft and jupyterlab just to print
    their versions took 9 of lab 00's 14 seconds. bitsandbytes, the one whose import can fail on a working install,
    is still imported below."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report() -> tuple[list[str], list[str]]:
    """(lines of facts, lines of problems with their fixes)."""
    facts = [f"python        {platform.python_version()} ({sys.executable})", f"platform      {platform.platform()}"]
    problems = []
    for name in PACKAGES:
        v = _version(name)
        facts.append(f"{name:<13} {v or 'MISSING'}")
        if v is None:
            problems.append(f"{name} is missing: run `bash scripts/course.sh setup`.")
    try:
        import torch

        cuda_build = torch.version.cuda
        facts.append(f"torch build   {'CUDA ' + cuda_build if cuda_build else 'CPU'}")
        if torch.cuda.is_available():
            facts.append(f"device        cuda ({torch.cuda.get_device_name(0)})")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            facts.append("device        mps (Apple GPU)")
        else:
            facts.append("device        cpu (every lab has a CPU path)")
            if cuda_build and shutil.which("nvidia-smi") is None:
                problems.append(
                    "A CUDA build of torch is installed on a machine without an NVIDIA GPU: it works, "
                    "but wastes GBs. Replace it (setup keeps an installed torch): "
                    "`.venv/bin/pip uninstall -y torch && bash scripts/course.sh setup --cpu`."
                )
    except ImportError:
        pass
    try:
        from labkit.backends import bitsandbytes_4bit_problem, import_bitsandbytes
        from labkit.device import has_cuda

        bnb, problem = import_bitsandbytes()
        backend = "cuda" if has_cuda() else "cpu"
        if bnb is None:
            facts.append("bitsandbytes  does not import")
            problems.append(f"bitsandbytes does not import ({problem}): labs on quantization will use their fallback "
                            "paths.")
        elif (four_bit := bitsandbytes_4bit_problem(backend)) is not None:
            facts.append(f"bitsandbytes  backend {backend}, no 4-bit kernel")
            problems.append(f"bitsandbytes cannot quantize to 4 bits here ({four_bit}): lab 08's QLoRA questions are "
                            "skipped, and labs 09-10 skip their 4-bit comparisons.")
        else:
            facts.append(f"bitsandbytes  backend {backend}")
    except ImportError:
        pass
    mem = psutil.virtual_memory()
    facts.append(f"memory        {mem.available / 2**30:.1f} GiB free of {mem.total / 2**30:.1f} GiB")
    if mem.available < 3 * 2**30:
        problems.append("Less than 3 GiB of memory is free: close other programs before running the labs.")
    disk = shutil.disk_usage(".")
    facts.append(f"disk          {disk.free / 2**30:.1f} GiB free here")
    facts.append(f"cpu cores     {psutil.cpu_count(logical=True)}")
    return facts, problems


def main() -> int:
    facts, problems = report()
    print("Specialist Labs - environment report")
    for line in facts:
        print("  " + line)
    if problems:
        print("\nProblems and fixes:")
        for p in problems:
            print("  - " + p)
        return 1
    print("\nAll good: open the labs with `bash scripts/course.sh lab`.")
    return 0
