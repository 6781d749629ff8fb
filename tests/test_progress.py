"""The training progress bar shows the rule that stops the run: steps, or elapsed time against a time budget."""

from __future__ import annotations

import io

from detr_hf.training import progress as progress_module
from detr_hf.training.progress import TrainProgress


def _render(monkeypatch, clock, **kwargs) -> tuple[TrainProgress, io.StringIO]:
    stream = io.StringIO()
    original = progress_module.tqdm
    monkeypatch.setattr(progress_module, "tqdm", lambda *a, **k: original(*a, file=stream, mininterval=0, **k))
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    return TrainProgress(disable=False, **kwargs), stream


def test_time_budget_bar_counts_seconds_against_the_budget(monkeypatch):
    clock = [100.0]
    bar, stream = _render(monkeypatch, clock, max_steps=5000, initial_step=0, time_budget_minutes=2)
    clock[0] = 130.0  # 30 s of a 120 s budget, 40 steps: the bar says 25 %, not 40 / 5000
    for _ in range(40):
        bar.advance()
    bar.set_loss(1.25)
    bar.advance()
    text = stream.getvalue().split("\r")[-1]
    assert "train (time budget 2 min)" in text and " 25%|" in text and "30/120 s" in text
    assert "step 41/5000, loss 1.250" in text
    assert not bar.out_of_time()
    clock[0] = 220.5
    assert bar.out_of_time()
    bar.close()


def test_step_bar_without_a_budget(monkeypatch):
    clock = [0.0]
    bar, stream = _render(monkeypatch, clock, max_steps=200, initial_step=50, time_budget_minutes=None)
    bar.advance()
    text = stream.getvalue().split("\r")[-1]
    assert "51/200" in text and bar.step == 51
    clock[0] = 1e9
    assert not bar.out_of_time()  # no budget: only the step count stops the run
    bar.close()
