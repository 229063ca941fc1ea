"""The limits a notebook is graded under: one set of defaults for `grader grade`, `grader batch` and the tests.

A module of its own, without torch, so the command line can build its options without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    cell_timeout_s: float = 300.0
    total_timeout_s: float = 1800.0
    memory_mb: int = 8192
    output_chars: int = 2_000_000
    grading_timeout_s: float = 600.0
