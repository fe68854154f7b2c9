"""What a person sees while work runs: durations, stage lines, and bars that show only when there is work."""

from __future__ import annotations

import pytest

from rlheal.progress import bar, duration, stage_line


@pytest.mark.parametrize(("seconds", "text"), [(4.24, "4.2 s"), (59.94, "59.9 s"), (185, "3 min 05 s"),
                                               (3725, "1 h 02 min")])
def test_durations_read_as_a_person_reads_them(seconds, text):
    assert duration(seconds) == text


def test_a_stage_line_names_the_stage_its_time_and_what_it_did():
    assert stage_line("eval-sft", 41.25, "18 evaluations") == "✓ eval-sft        41.2 s  18 evaluations"
    assert stage_line("base", 0.0) == "✓ base             0.0 s"


@pytest.mark.parametrize(("total", "completed", "enabled"), [(0, 0, True), (5, 5, True), (5, 0, False)])
def test_no_bar_is_drawn_when_nothing_is_left_or_bars_are_off(capsys, monkeypatch, total, completed, enabled):
    monkeypatch.setattr("rich.console.Console.is_terminal", property(lambda self: True))
    with bar("evaluating", total=total, completed=completed, enabled=enabled) as shown:
        shown.advance(1, description="x")
        assert shown.completed == 0.0
    assert capsys.readouterr().err == ""


def test_notes_are_printed_even_without_a_bar(capsys):
    with bar("evaluating", total=3, enabled=False) as shown:
        shown.note("3 of 12 episodes outgrew the model's context")
    assert capsys.readouterr().err == "3 of 12 episodes outgrew the model's context\n"
