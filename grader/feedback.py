"""The pass/fail panel a learner sees after `check(...)`: HTML in Jupyter, text elsewhere.

Both read correctly without emoji fonts and without colour: every result carries its status as a word
("passed", "failed", "error", "not implemented", "skipped", "timeout"). In HTML the word sits in a badge with an
icon drawn as inline SVG (no font needed); where a frontend strips the SVG or the colours, the word remains.
"""

from __future__ import annotations

import html

from grader.grading import QuestionResult

# The status as a word: what the panel, the terminal table and a screen reader say.
LABELS = {
    "passed": "passed",
    "failed": "failed",
    "error": "error",
    "not_implemented": "not implemented",
    "skipped": "skipped",
    "timeout": "timeout",
}
COLOURS = {
    "passed": "#1b7a3a",
    "failed": "#b00020",
    "error": "#b00020",
    "not_implemented": "#8a6d00",
    "skipped": "#666666",
    "timeout": "#b35900",
}
# Icons drawn with lines in a 16x16 box (stroked in white on the badge's colour): shapes, not characters.
_ICON_PATHS = {
    "passed": "M3 8.5 L6.5 12 L13 4.5",  # a tick
    "failed": "M4 4 L12 12 M12 4 L4 12",  # a cross
    "error": "M8 3 L8 9.5 M8 12.5 L8 13",  # an exclamation mark
    "not_implemented": "M3 13 L4 10 L11 3 L13 5 L6 12 Z",  # a pencil
    "skipped": "M3 4 L7 8 L3 12 M9 4 L13 8 L9 12",  # a double chevron
    "timeout": "M8 2.5 A5.5 5.5 0 1 1 7.99 2.5 M8 5 L8 8.5 L10.5 10",  # a clock
}


def label(status: str) -> str:
    return LABELS.get(str(status), str(status).replace("_", " "))


def _points(r: QuestionResult) -> str:
    return f"{r.score:g}/{r.max_score:g} pts" if r.max_score else "not counted"


def headline(r: QuestionResult) -> str:
    """One line, plain text: `[failed] softmax — A numerically stable softmax (0/2 pts)`."""
    return f"[{label(r.status)}] {r.id} — {r.title} ({_points(r)})"


def render_text(results: list[QuestionResult], note: str = "") -> str:
    lines = []
    for r in results:
        lines.append(headline(r))
        if r.feedback and r.status != "passed":
            lines += ["    " + line for line in r.feedback.splitlines()]
    if note:
        lines.append(note)
    return "\n".join(lines)


def icon_svg(status: str, colour: str = "#fff") -> str:
    """The status's icon as inline SVG, decorative (the word next to it says the same to a screen reader)."""
    path = _ICON_PATHS.get(str(status), _ICON_PATHS["error"])
    return (
        "<svg width='12' height='12' viewBox='0 0 16 16' aria-hidden='true' focusable='false' "
        "style='vertical-align:-1px;margin-right:4px'>"
        f"<path d='{path}' fill='none' stroke='{colour}' stroke-width='2.2' stroke-linecap='round' "
        "stroke-linejoin='round'/></svg>"
    )


def badge(status: str) -> str:
    """The status word on its colour, with its icon: readable with no emoji font, and with the SVG stripped."""
    colour = COLOURS.get(str(status), COLOURS["error"])
    return (
        f"<span class='sl-status sl-{html.escape(str(status))}' style='display:inline-block;background:{colour};"
        "color:#fff;border-radius:3px;padding:0 6px;margin-right:2px;font-weight:bold;font-size:90%;"
        f"white-space:nowrap'>{icon_svg(status)}{html.escape(label(status))}</span>"
    )


def render_html(results: list[QuestionResult], note: str = "") -> str:
    blocks = []
    for r in results:
        colour = COLOURS.get(str(r.status), COLOURS["error"])
        body = ""
        if r.feedback and r.status != "passed":
            body = f"<pre style='white-space:pre-wrap;margin:4px 0 0 0'>{html.escape(r.feedback)}</pre>"
        blocks.append(
            f"<div style='border-left:4px solid {colour};padding:4px 10px;margin:4px 0'>"
            f"{badge(r.status)} <b>{html.escape(r.id)} — {html.escape(r.title)}</b> ({_points(r)}){body}</div>"
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
