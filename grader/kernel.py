"""The part of headless grading that runs *inside* the learner's kernel.

The runner appends one cell that calls `grade_in_kernel`. Results go to a file in a
private directory, named only in that cell and tagged with a nonce, rather than to
the notebook's output, which learner code can print anything into. The file is
rewritten after every question, so a check that crashes the kernel costs only its
own question.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from grader.grading import grade_lab
from grader.registry import load_lab


def _write(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def grade_in_kernel(lab_id: str, out_path: str, nonce: str, include_hidden: bool = True, audit: bool = False) -> None:
    """Grade the kernel's namespace; `audit` (the test suite's) also reports the values hidden checks redacted."""
    from IPython import get_ipython

    shell = get_ipython()
    namespace = shell.user_ns if shell is not None else {}
    lab = load_lab(lab_id)
    ids = list(lab.questions)
    done: list[dict] = []
    _write(out_path, {"nonce": nonce, "results": done, "current": ids[0] if ids else None})
    for i, result in enumerate(grade_lab(lab, namespace, include_hidden)):
        row = {**asdict(result), "status": str(result.status)}
        row["redacted"] = list(result.redacted) if audit else []
        row["missing"] = list(result.missing)
        done.append(row)
        # `current` names the question being checked next, so a kernel that dies there costs only that one.
        _write(out_path, {"nonce": nonce, "results": done, "current": ids[i + 1] if i + 1 < len(ids) else None})


def grading_cell_source(lab_id: str, out_path: str, nonce: str, include_hidden: bool, audit: bool = False) -> str:
    """Drop any grader modules the notebook may have imported or replaced, then grade afresh."""
    return (
        "import sys as _sl_sys\n"
        "for _sl_m in [m for m in list(_sl_sys.modules) if m == 'grader' or m.startswith('grader.')]:\n"
        "    del _sl_sys.modules[_sl_m]\n"
        "from grader.kernel import grade_in_kernel as _sl_grade\n"
        f"_sl_grade({lab_id!r}, {out_path!r}, {nonce!r}, include_hidden={include_hidden!r}, audit={audit!r})\n"
    )
