"""The pass/fail panel and the terminal table read correctly without emoji fonts and without colour."""

from __future__ import annotations

import html
import io
import re

import pytest

from grader.feedback import render_html, render_text
from grader.grading import STATUSES, LabResult, QuestionResult
from grader.report import table, use_colour

WORDS = {"passed": "passed", "failed": "failed", "error": "error", "not_implemented": "not implemented",
         "skipped": "skipped", "timeout": "timeout"}
# Emoji and pictographs a browser without an emoji font shows as empty boxes (the em dash is ordinary punctuation).
EMOJI = re.compile("[\u2190-\u21ff\u2300-\u23ff\u2460-\u27bf\u2900-\u2bff\u3030\u303d\ufe0f\U0001f000-\U0001faff]")
ANSI = re.compile(r"\x1b\[")


def _results() -> list[QuestionResult]:
    return [QuestionResult(f"q_{s}", 1.0 if s == "passed" else 0.0, 0.0 if s == "skipped" else 1.0, s,
                           f"feedback of {s}", title=f"Title {s}") for s in STATUSES]


def _visible_text(markup: str) -> str:
    """What a browser shows once it drops every tag, inline SVG included."""
    return html.unescape(re.sub(r"<svg.*?</svg>|<[^>]+>", " ", markup))


def test_every_status_has_a_word():
    assert set(WORDS) == set(STATUSES)


def test_text_panel_has_no_emoji_and_says_each_status_in_words():
    text = render_text(_results(), note="2 hidden check(s) also run at grading time.")
    assert not EMOJI.search(text), EMOJI.findall(text)
    for status, word in WORDS.items():
        assert f"[{word}] q_{status} — Title {status}" in text


def test_html_panel_has_no_emoji_and_keeps_the_words_without_its_icons():
    markup = render_html(_results(), note="a note")
    assert not EMOJI.search(markup), EMOJI.findall(markup)
    assert markup.count("<svg") == len(STATUSES)  # one drawn icon per result, no font needed
    shown = _visible_text(markup)
    for status, word in WORDS.items():
        assert re.search(rf"\b{word}\s+q_{status} — Title {status}", shown), (word, shown)
    assert "feedback of failed" in shown and "feedback of passed" not in shown


def _lab_result() -> LabResult:
    return LabResult.from_questions("07", _results(), duration_s=1.5, execution={})


def test_terminal_table_is_plain_text_with_words_when_colour_is_off():
    out = table(_lab_result(), colour=False)
    assert not ANSI.search(out) and not EMOJI.search(out)
    rows = {line.split()[-2]: line for line in out.splitlines() if "q_" in line}
    for status, word in WORDS.items():
        assert rows[f"q_{status}"].strip().startswith(word), rows[f"q_{status}"]
    assert "TOTAL" in out
    coloured = table(_lab_result(), colour=True)
    assert ANSI.search(coloured) and ANSI.sub("", re.sub(r"\x1b\[\d+m", "", coloured)) == out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("value", ["1", "true", "0", "no"])
def test_no_color_with_any_value_turns_colour_off(monkeypatch, value):
    monkeypatch.delenv("TERM", raising=False)
    monkeypatch.setenv("NO_COLOR", value)
    assert not use_colour(_Tty())


def test_colour_only_for_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_colour(_Tty())
    assert not use_colour(io.StringIO())  # a file or a pipe
    monkeypatch.setenv("NO_COLOR", "")  # empty: as if unset (no-color.org)
    assert use_colour(_Tty())
    monkeypatch.setenv("TERM", "dumb")
    assert not use_colour(_Tty())


def test_grade_table_decides_colour_from_stdout_and_no_color(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr("sys.stdout", _Tty())
    assert not ANSI.search(table(_lab_result()))
    monkeypatch.delenv("NO_COLOR")
    assert ANSI.search(table(_lab_result()))
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert not ANSI.search(table(_lab_result()))
