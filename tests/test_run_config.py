"""The step plan of a run and the printed summary of its resolved settings."""

from __future__ import annotations

from detr_hf.training.run_config import format_settings, plan_steps
from script_helpers import example_settings


def test_plan_steps():
    assert plan_steps(10, 1, 3, None) == (10, 30, 3)
    assert plan_steps(10, 3, 2, None) == (4, 8, 2)  # the last micro-batches of an epoch make a step
    assert plan_steps(10, 1, 3, 25) == (10, 25, 3)  # --max_train_steps wins
    assert plan_steps(10, 1, 3, 5) == (10, 5, 1)


def test_summary_names_sizes_lrs_schedule_batch_and_steps():
    text = format_settings(example_settings())
    assert len(text.splitlines()) == 6
    assert "d_model 256, 6+6 layers, 8 heads, FFN 2048, 100 queries" in text
    assert "evaluation 800/1333" in text and "lr 0.0001, backbone lr 1e-05" in text
    assert "schedule step (×0.1 at step 20)" in text and "= 4 (eval 4)" in text and "steps: 30 (3 epoch(s) of 10)" in text
