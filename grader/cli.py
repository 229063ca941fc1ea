"""The `grader` command line: grade, release, bundle, list, doctor, batch, export, gradescope-bundle."""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grader.limits import Limits

EXIT_FULL, EXIT_POINTS_LOST, EXIT_UNUSABLE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a process ended by SIGPIPE
ROOT_HINT = "run from the course folder (the one holding solutions/ and labs/)"


def _cmd_grade(args: argparse.Namespace) -> int:
    from grader.report import table, write_json
    from grader.runner import UnusableInput, grade_notebook

    try:
        result = grade_notebook(args.notebook, lab=args.lab, limits=_limits(args), include_hidden=not args.public_only)
    except UnusableInput as exc:
        print(f"grader: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(table(result))
    if args.json:
        write_json(result, args.json)
    return EXIT_FULL if result.score >= result.max_score else EXIT_POINTS_LOST


def _cmd_release(args: argparse.Namespace) -> int:
    from grader.release import release_all

    solutions, labs = Path(args.solutions), Path(args.labs)
    if not solutions.is_dir():
        print(f"grader: error: no folder {solutions} ({ROOT_HINT})", file=sys.stderr)
        return EXIT_UNUSABLE
    changes = release_all(solutions, labs, check=args.check)
    bad = [c for c in changes if c.status in ("stale", "orphan")]
    for c in changes:
        if args.check and c.status == "unchanged":
            continue
        print(f"{c.status:>9}  {c.lab_path}")
    if args.check:
        if bad:
            print("labs/ is out of date: run `grader release` and commit the result.", file=sys.stderr)
            return 1
        print(f"labs/ is up to date ({len(changes)} notebooks).")
    return 0


def _cmd_learner_bundle(args: argparse.Namespace) -> int:
    from grader.bundle import build_classroom_bundle, build_learner_bundle
    from grader.release import ReleaseError

    build = build_classroom_bundle if args.kind == "classroom" else build_learner_bundle
    try:
        out = build(args.out_dir, args.course)
    except (ReleaseError, FileNotFoundError) as exc:
        print(f"grader: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.kind == "classroom":
        print(f"wrote {out}: push it as the assignment's template repository; in .github/workflows/classroom.yml "
              "set LAB and GRADER_REPO, and add the GRADER_TOKEN secret (docs/instructor-guide.md)")
    else:
        print(f"wrote {out}: what learners receive (no solutions, tests or hidden checks)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from grader.registry import all_labs

    folder = Path(args.folder) if args.folder else None
    results: list[str] = []
    n_results = 0
    for lab in all_labs():
        reference = _released(lab.id)
        line = f"{lab.id}  {lab.title:<48} {len(lab.questions):>2} questions  {lab.max_score:>3g} pts"
        if folder is not None:
            line += "  " + _progress(folder, lab, reference)
        elif reference is not None:
            line += f"  {sum(_release_stubs(c.source) for c in _code(reference)):>2} exercises"
        graded = _result_questions(lab, reference if reference is not None else _course_notebook(lab.id))
        if graded:
            results.append(f"{', '.join(graded)} ({lab.id})")
            n_results += len(graded)
            line += f"  (+ {', '.join(graded)}: {'grades a result' if len(graded) == 1 else 'grade results'})"
        print(line)
    print(textwrap.fill(
        "A question is what is graded; an exercise is a `raise NotImplementedError` stub you replace with your code. "
        "A question may grade several exercises, or none of its own"
        + (f": {', '.join(results)} {'grades' if n_results == 1 else 'grade'} what your code built or trained."
           if results else "."), width=116))
    return 0


_STUB = re.compile(r"^[ \t]*raise[ \t]+NotImplementedError\b", re.MULTILINE)


def _stubs(source: str) -> int:
    """`raise NotImplementedError` statements still in a cell: comments (`# YOUR CODE HERE`) do not count."""
    return len(_STUB.findall(source))


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _course_root() -> Path:
    import grader

    return Path(grader.__file__).resolve().parent.parent


def _course_notebook(lab_id: str):
    """The course's learner copy labs/NN_*.ipynb (its structure, not its progress), or None."""
    from grader.runner import UnusableInput, read_notebook

    for root in dict.fromkeys((Path.cwd(), _course_root())):
        for path in sorted((root / "labs").glob(f"{lab_id}_*.ipynb")):
            try:
                return read_notebook(path)
            except UnusableInput:
                continue
    return None


def _released(lab_id: str):
    """The learner notebook as `grader release` makes it from solutions/ (an instructor's checkout), or None."""
    import nbformat

    from grader.release import ReleaseError, release_notebook

    for root in dict.fromkeys((Path.cwd(), _course_root())):
        for path in sorted((root / "solutions").glob(f"{lab_id}_*.ipynb")):
            try:
                text = path.read_text(encoding="utf-8")
                return release_notebook(nbformat.reads(text, as_version=nbformat.NO_CONVERT))
            except (OSError, ValueError, ReleaseError):
                continue
    return None


def _defined_in_code(nb) -> set[str]:
    """Names a notebook defines with `def` or `class`: the code a learner writes (or is given), not values."""
    import ast

    names: set[str] = set()
    for cell in _code(nb):
        try:
            tree = ast.parse("\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    return names


def _result_questions(lab, nb) -> list[str]:
    """Questions that grade a value the notebook computed (a trained model, a tokenizer), not a function or class:
    they have no exercise cell of their own, which is why a lab can list more questions than exercises."""
    if nb is None:
        return []
    code = _defined_in_code(nb)
    return [q.id for q in lab.questions.values() if q.uses and not set(q.uses) & code]


def _progress(folder: Path, lab, reference=None) -> str:
    """How far a learner's notebook is, without running it: which of the release's stubs are gone.

    An exercise is started when its `raise NotImplementedError` is gone from the cell the release put it in
    (found by cell id, else by the names the cell defines), whatever the comments around it. Without the
    release to compare with (no solutions/ in a learner's copy of the course), it counts the stubs left.
    """
    from grader.cells import cell_names
    from grader.runner import UnusableInput, read_notebook

    matches = sorted(folder.glob(f"{lab.id}_*.ipynb"))
    if not matches:
        return "(no notebook)"
    try:
        nb = read_notebook(matches[0])
    except UnusableInput:
        return "(unreadable notebook)"
    mine = _code(nb)
    if reference is None:
        left = sum(_stubs(c.source) for c in mine)
        return f"{left} exercise{'s' if left != 1 else ''} left to write" if left else "no exercise left to write"
    by_id = {c.get("id"): c for c in mine if c.get("id")}
    total = started = 0
    for ref in _code(reference):
        stubs = _release_stubs(ref.source)
        if not stubs:
            continue
        given = _stubs(ref.source) - stubs  # a `raise NotImplementedError` the lab gives, not one to replace
        total += stubs
        cell = by_id.get(ref.get("id"))
        if cell is None:  # a notebook saved without cell ids, or a cell pasted anew: the one defining the same names
            wanted = cell_names(ref.source).binds
            cell = next((c for c in mine if wanted and wanted <= cell_names(c.source).binds), None)
        left = min(stubs, max(0, _stubs(cell.source) - given)) if cell is not None else 0
        started += stubs - left
    return f"{started}/{total} exercises started" if total else "(no exercises found)"


def _release_stubs(source: str) -> int:
    """The stubs `grader release` put in a cell."""
    from grader.release import CODE_STUB

    return sum(1 for line in source.splitlines() if line.strip() == CODE_STUB[1])


def _cmd_doctor(args: argparse.Namespace) -> int:
    from grader.doctor import main as doctor_main

    return doctor_main()


def _cmd_batch(args: argparse.Namespace) -> int:
    from grader.batch import BatchOptions, default_hidden, run_batch
    from grader.registry import UnknownLab, load_lab
    from grader.sandbox import Sandbox

    root = Path(args.dir)
    try:
        lab = load_lab(args.lab).id
    except UnknownLab as exc:
        print(f"grader: error: {exc.args[0]}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not root.exists():
        print(f"grader: error: no such folder or notebook: {root}", file=sys.stderr)
        return EXIT_UNUSABLE
    out = Path(args.out or f"grading/{lab}/gradebook.csv")
    sandbox = Sandbox(hide=default_hidden(root, out)) if args.sandbox else None
    opts = BatchOptions(lab, args.workers, _limits(args), args.hard_timeout, sandbox, args.threads)
    try:
        run_batch(root, opts, out, only=args.only, student=args.student)
    except ValueError as exc:
        print(f"grader: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print(f"grader: interrupted; {out} has a row for every submission", file=sys.stderr)
        return 130
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from grader import exports

    try:
        records = exports.load_records(args.results)
        if args.format == "junit":
            text = exports.junit_xml(records)
        elif args.format == "gradescope":
            text = json.dumps(exports.gradescope_results(exports.best_record(records)), indent=1) + "\n"
        else:
            text = exports.classroom_output(exports.best_record(records)) + "\n"
    except ValueError as exc:
        print(f"grader: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from grader.exports import build_gradescope_bundle
    from grader.registry import UnknownLab

    try:
        out = build_gradescope_bundle(args.lab, args.output or f"grading/autograder-{args.lab}.zip",
                                      sandbox=not args.no_sandbox)
    except (UnknownLab, FileNotFoundError) as exc:
        print(f"grader: error: {exc} ({ROOT_HINT})", file=sys.stderr)
        return EXIT_UNUSABLE
    print(f"wrote {out}: upload it as the Gradescope autograder (Ubuntu base image)")
    return 0


def _add_limit_args(p: argparse.ArgumentParser) -> None:
    """The runner's limits as options of `grade` and `batch`, their defaults read from the one `Limits()`."""
    from grader.limits import Limits

    d = Limits()
    p.add_argument("--timeout", type=float, default=d.total_timeout_s,
                   help=f"whole-notebook budget in seconds (default {d.total_timeout_s:g})")
    p.add_argument("--cell-timeout", type=float, default=d.cell_timeout_s,
                   help=f"per-cell timeout in seconds (default {d.cell_timeout_s:g})")
    p.add_argument("--grading-timeout", type=float, default=d.grading_timeout_s,
                   help=f"budget for the checks in seconds (default {d.grading_timeout_s:g})")
    p.add_argument("--memory-mb", type=int, default=d.memory_mb,
                   help=f"kernel memory cap in MiB (default {d.memory_mb})")
    p.add_argument("--output-chars", type=int, default=d.output_chars,
                   help=f"output cap per notebook in characters (default {d.output_chars:,})")


def _limits(args: argparse.Namespace) -> Limits:
    from grader.limits import Limits

    return Limits(
        cell_timeout_s=args.cell_timeout,
        total_timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        output_chars=args.output_chars,
        grading_timeout_s=args.grading_timeout,
    )


def _add_batch_parsers(sub) -> None:
    b = sub.add_parser("batch", help="grade a folder of submissions in parallel; write a gradebook")
    b.add_argument("dir", help="one notebook or sub-folder per student (or one student's folder with --student)")
    b.add_argument("--lab", required=True, help="lab number, e.g. 01")
    b.add_argument("--workers", type=int, default=2, help="submissions graded at once (default 2)")
    b.add_argument("--out", help="gradebook CSV (default grading/NN/gradebook.csv); results/ goes next to it")
    b.add_argument("--only", action="append", metavar="STUDENT", help="regrade just this student (repeatable)")
    b.add_argument("--student", help="DIR is this one student's submission (Gradescope, Classroom)")
    _add_limit_args(b)
    b.add_argument("--hard-timeout", type=float, help="kill a submission's whole grading after this many seconds")
    b.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per kernel (default 1)")
    b.add_argument("--sandbox", action="store_true", help="run kernels under bubblewrap (no network, read-only)")
    b.set_defaults(func=_cmd_batch)

    e = sub.add_parser("export", help="convert batch results for Gradescope, GitHub Classroom or JUnit")
    e.add_argument("format", choices=("gradescope", "classroom", "junit"))
    e.add_argument("results", nargs="+", help="results/<student>.json files or folders of them")
    e.add_argument("-o", "--output", help="write here instead of stdout")
    e.set_defaults(func=_cmd_export)

    g = sub.add_parser("gradescope-bundle", help="build the Gradescope autograder zip for a lab")
    g.add_argument("--lab", required=True)
    g.add_argument("-o", "--output", help="zip to write (default grading/autograder-NN.zip)")
    g.add_argument("--no-sandbox", action="store_true", help="do not ask for the bubblewrap sandbox")
    g.set_defaults(func=_cmd_bundle)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grader", description="Specialist Labs autograder")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="execute a notebook in a fresh kernel and grade it")
    g.add_argument("notebook")
    g.add_argument("--json", help="write the result as JSON to this file")
    _add_limit_args(g)
    g.add_argument("--lab", help="lab number, when the file name does not start with it")
    g.add_argument("--public-only", action="store_true", help="run only the public checks")
    g.set_defaults(func=_cmd_grade)

    r = sub.add_parser("release", help="generate labs/ from solutions/")
    r.add_argument("--check", action="store_true", help="exit 1 if labs/ is stale; write nothing")
    r.add_argument("--solutions", default="solutions")
    r.add_argument("--labs", default="labs")
    r.set_defaults(func=_cmd_release)

    bu = sub.add_parser("bundle", help="write what learners receive: no solutions, tests or hidden checks")
    bu.add_argument("kind", choices=("learner", "classroom"),
                    help="learner: the course for learners; classroom: plus the GitHub Classroom workflow")
    bu.add_argument("out_dir", metavar="OUT_DIR", help="a new (or empty) folder to write")
    bu.add_argument("--course", default=".", help="the course folder (default: the current one)")
    bu.set_defaults(func=_cmd_learner_bundle)

    li = sub.add_parser("list", help="list the labs (and a learner's progress in FOLDER)")
    li.add_argument("folder", nargs="?")
    li.set_defaults(func=_cmd_list)

    d = sub.add_parser("doctor", help="check the environment and suggest fixes")
    d.set_defaults(func=_cmd_doctor)
    _add_batch_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a pipe's buffer is written here: a reader that left (`| head`) is found now
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _quiet_stdout() -> None:
    """The reader of our output left (`grader list | head -1`): stop quietly, as `ls | head` does. Point stdout at
    /dev/null so that the interpreter's last flush at exit does not raise the same error again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured stdout)
        pass
