"""The pass/fail panel a learner sees after `check(...)`: HTML in Jupyter, text elsewhere."""

from __future__ import annotations

import html

from grader.grading import QuestionResult

ICONS = {"passed": "✅", "failed": "❌", "error": "💥", "not_implemented": "✏️", "skipped": "⏭️", "timeout": "⏱️"}
COLOURS = {"passed": "#1b7a3a", "skipped": "#666", "not_implemented": "#8a6d00"}
WORDS = {
    "passed": "passed",
    "failed": "failed",
    "error": "raised an error",
    "not_implemented": "not implemented yet",
    "skipped": "skipped",
    "timeout": "timed out",
}


def headline(r: QuestionResult) -> str:
    pts = f"{r.score:g}/{r.max_score:g} pts" if r.max_score else "not counted"
    return f"{ICONS.get(r.status, '?')} {r.id} — {r.title}: {WORDS.get(r.status, r.status)} ({pts})"


def render_text(results: list[QuestionResult], note: str = "") -> str:
    lines = []
    for r in results:
        lines.append(headline(r))
        if r.feedback and r.status != "passed":
            lines += ["    " + line for line in r.feedback.splitlines()]
    if note:
        lines.append(note)
    return "\n".join(lines)


def render_html(results: list[QuestionResult], note: str = "") -> str:
    blocks = []
    for r in results:
        colour = COLOURS.get(r.status, "#b00020")
        body = ""
        if r.feedback and r.status != "passed":
            body = f"<pre style='white-space:pre-wrap;margin:4px 0 0 0'>{html.escape(r.feedback)}</pre>"
        blocks.append(
            f"<div style='border-left:4px solid {colour};padding:4px 10px;margin:4px 0'>"
            f"<b style='color:{colour}'>{html.escape(headline(r))}</b>{body}</div>"
        )
    if note:
        blocks.append(f"<div style='color:#666;font-size:90%'>{html.escape(note)}</div>")
    return "".join(blocks)


def show(results: list[QuestionResult], note: str = "") -> None:
    """Display in a Jupyter frontend when there is one, print otherwise."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        from IPython.display import display

        display({"text/html": render_html(results, note), "text/plain": render_text(results, note)}, raw=True)
    else:
        print(render_text(results, note))
