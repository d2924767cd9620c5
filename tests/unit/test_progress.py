"""Training progress in the unit of its bound (issue 19, item 5): a run with a time budget shows
elapsed / budget in minutes (not a bar of its 100,000-step ceiling with an ETA of days), a run
bounded by steps shows steps."""

import io

from lifelong.runtime.progress import TrainingProgress


def shown(progress: TrainingProgress) -> str:
    return str(progress.bar)


def test_a_time_budget_shows_minutes_and_the_step():
    p = TrainingProgress(100_000, max_minutes=60, desc="train", mininterval=0, file=io.StringIO())
    p.update(120, elapsed_s=15 * 60, loss="0.5")
    text = shown(p)
    assert "15.0/60.0 min" in text and "25%" in text and "step=120" in text and "loss=0.5" in text
    assert "100000" not in text
    p.update(10_000, elapsed_s=75 * 60)  # past the budget: the bar stops at it
    assert "60.0/60.0 min" in shown(p)
    p.close()


def test_a_resumed_time_budget_starts_at_the_time_spent():
    p = TrainingProgress(100_000, max_minutes=10, step=500, elapsed_s=240, mininterval=0,
                         file=io.StringIO())
    assert "4.0/10.0 min" in shown(p)
    p.close()


def test_a_step_bound_shows_steps():
    p = TrainingProgress(200, mininterval=0, file=io.StringIO())
    p.update(50, elapsed_s=3.0, loss="1.0")
    text = shown(p)
    assert "50/200" in text and "min" not in text.split("|")[-1].split("[")[0]
    assert "step=" not in text and "loss=1.0" in text
    p.close()


def test_no_bar_when_disabled():
    out = io.StringIO()
    p = TrainingProgress(200, max_minutes=5, disable=True, file=out)
    p.update(1, 1.0)
    p.close()
    assert out.getvalue() == ""
