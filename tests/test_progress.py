"""What the command line says about a run's length, and progress bars that stay out of logs."""

import io
import re

import pytest

from cbigan.training.callbacks import duration_message, human_duration
from cbigan.core.progress import progress


def test_human_duration():
    assert human_duration(40) == "40 s"
    assert human_duration(12 * 60) == "12 min"
    assert human_duration(5.3 * 3600) == "5.3 h"
    assert human_duration(9.6 * 86400) == "9.6 days"


def test_paper_preset_on_a_cpu_gets_its_length_and_the_fast_hint():
    text = duration_message(1_200_000, 25, 2.0, minutes=None, preset="paper", gpu=False)
    assert "1,200,000 steps would take about 6.9 days" in text
    assert "--preset fast --minutes 15" in text and "no GPU" in text


def test_duration_is_of_all_steps_and_of_those_left():
    """Measured at step 270 of 300: the whole job (22 s) and what is left of it (2 s), not one for the other."""
    text = duration_message(300, 270, 13.4)
    assert "300 steps would take about 22 s in all (2 s from step 270)" in text


def test_minutes_say_where_the_run_stops_and_the_hint_keeps_them():
    text = duration_message(1_200_000, 0, 2.0, minutes=30, preset="paper", gpu=False)
    assert "training for 30 min (--minutes 30): it stops after about 3,600 steps" in text
    assert "--preset fast --minutes 30" in text


def test_a_time_budget_is_spoken_of_not_the_steps_it_will_never_reach():
    """Issue 35: a --preset fast --minutes 15 run opened with "1,200,000 steps would take about 2.6 days"."""
    text = duration_message(1_200_000, 0, 5.3, minutes=15, preset="fast", gpu=False)
    assert text == "speed: 5.3 steps/s; training for 15 min (--minutes 15): it stops after about 4,770 steps at this rate"
    assert "would take" not in text and "days" not in text
    resumed = duration_message(1_200_000, 1_000, 5.3, minutes=15, preset="fast", gpu=False)
    assert "after about 5,770 steps" in resumed
    # a budget longer than the steps: the steps are what ends the run, so they are what it speaks of
    short = duration_message(300, 0, 10.0, minutes=15)
    assert "300 steps would take about 30 s in all" in short and "training for" not in short


def test_no_hint_on_a_gpu_for_the_fast_preset_or_for_a_short_job():
    assert "no GPU" not in duration_message(1_200_000, 0, 40.0, preset="paper", gpu=True)
    assert "no GPU" not in duration_message(1_200_000, 0, 2.0, minutes=15, preset="fast", gpu=False)
    short = duration_message(2_000, 0, 2.0, preset="paper", gpu=False)
    assert "about 17 min" in short and "no GPU" not in short and "stops it" not in short


def test_progress_is_silent_when_quiet_or_not_a_terminal():
    out = io.StringIO()  # not a terminal
    assert list(progress(range(3), desc="x", file=out)) == [0, 1, 2]
    assert list(progress(range(3), desc="x", quiet=True)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_progress_shows_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    assert list(progress(range(3), desc="scoring", file=out)) == [0, 1, 2]
    assert "scoring" in out.getvalue() and "/3" in out.getvalue()


def test_duration_estimate_prints_once_after_warmup(monkeypatch):
    import itertools
    import types

    import keras

    from cbigan.training import callbacks
    from cbigan.training.callbacks import DurationEstimate

    clock = itertools.count(0.0, 0.5)  # every reading of the clock is half a second later: ~1 step/s
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: next(clock))
    printed = []
    model = types.SimpleNamespace(train_counter=keras.Variable(0, dtype="int64"))
    cb = DurationEstimate(1_200_000, preset="paper", gpu=False, warmup=2, measure_s=0.0,
                          print_fn=lambda *a, **k: printed.append(a[0]))
    cb.set_model(model)
    for step in range(1, 6):
        cb.on_train_batch_begin(step)
        model.train_counter.assign(step)
        cb.on_train_batch_end(step)
    assert len(printed) == 1 and "1,200,000 steps would take about" in printed[0]
    assert "--preset fast --minutes 15" in printed[0]


@pytest.mark.parametrize("pause, rate", [(0.0, 2.0), (0.5, 1.0)])
def test_duration_estimate_leaves_out_long_pauses_between_batches(monkeypatch, pause, rate):
    """A long evaluation between two batches does not lower the measured step rate, short pauses
    (selection, backups) do: 0.5 s a step inside batches, 30 s once between two of them, and ``pause``
    between every two, gives 1 / (0.5 + pause) steps/s."""
    import types

    import keras

    from cbigan.training import callbacks
    from cbigan.training.callbacks import DurationEstimate

    now = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    printed = []
    model = types.SimpleNamespace(train_counter=keras.Variable(0, dtype="int64"))
    cb = DurationEstimate(10_000, minutes=1.0, preset="fast", gpu=False, warmup=1, measure_s=20.0,
                          print_fn=lambda *a, **k: printed.append(a[0]))
    cb.set_model(model)
    for step in range(1, 60):
        cb.on_train_batch_begin(step)
        now[0] += 0.5
        model.train_counter.assign(step)
        cb.on_train_batch_end(step)
        now[0] += 30.0 if step == 2 else pause  # an evaluation once, else the pause
    assert len(printed) == 1
    measured = float(re.match(r"speed: ([0-9.]+) steps/s;", printed[0].strip()).group(1))
    assert measured == pytest.approx(rate, rel=0.06)  # the window's edge: one pause more or less


def test_fit_shows_its_progress_bar_only_on_a_terminal():
    from cbigan.training.run import fit_verbosity

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert fit_verbosity(1, Terminal()) == 1
    assert fit_verbosity(1, io.StringIO()) == 2  # a log file or a pipe: one line per epoch
    assert fit_verbosity(0, Terminal()) == 0
