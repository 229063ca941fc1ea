"""Whether bitsandbytes works on this machine, asked once, for the labs, their checks and `grader doctor`.

Its import can fail on a working install (no backend for this platform), and an import that works does not prove
that a 4-bit kernel runs here. The labs use bitsandbytes where it works and, where it does not, skip its cells and
questions with the reason these functions give.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

__all__ = ["bitsandbytes_4bit_problem", "import_bitsandbytes"]


@functools.cache
def _import() -> tuple[ModuleType | None, str | None]:
    try:  # on a CPU this may log a line about "kernels-community": harmless
        import bitsandbytes
        import bitsandbytes.functional  # noqa: F401 - bnb.functional, for the labs that compare with it
    except Exception as exc:  # no backend for this platform, a broken install...
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    return bitsandbytes, None


def import_bitsandbytes() -> tuple[ModuleType | None, str | None]:
    """``(bitsandbytes, None)`` where it imports, ``(None, why not)`` where it does not."""
    return _import()


@functools.cache
def bitsandbytes_4bit_problem(device: str = "cpu") -> str | None:
    """Why bitsandbytes cannot quantize to 4 bits (NF4) and back on `device`, or None when it can."""
    bnb, problem = _import()
    if bnb is None:
        return problem
    try:
        packed, state = bnb.functional.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
        bnb.functional.dequantize_4bit(packed, state)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None
