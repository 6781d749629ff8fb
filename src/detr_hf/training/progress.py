"""The training progress bar: optimiser steps against the step budget, or elapsed time against a time budget."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

__all__ = ["TrainProgress"]


class TrainProgress:
    """Shows the rule that really stops the run.

    Without a time budget: a bar of optimiser steps up to `max_steps`. With one: a bar of elapsed seconds up
    to the budget, the step count (of `max_steps`) beside it, so the bar and its ETA never mislead when the
    budget ends training long before the step count would. `out_of_time()` works with the bar disabled.
    """

    def __init__(self, *, max_steps: int, initial_step: int, time_budget_minutes: float | None, disable: bool) -> None:
        self.max_steps = max_steps
        self.step = initial_step
        self.budget_seconds = None if time_budget_minutes is None else 60.0 * time_budget_minutes
        self.started = time.monotonic()
        self._loss = ""
        if self.budget_seconds is None:
            self.bar = tqdm(total=max_steps, initial=initial_step, desc="train", unit="step", disable=disable)
        else:
            self.bar = tqdm(
                total=round(self.budget_seconds), desc=f"train (time budget {time_budget_minutes:g} min)",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{postfix}]", disable=disable,
            )  # fmt: skip
            self._show()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def out_of_time(self) -> bool:
        return self.budget_seconds is not None and self.elapsed() > self.budget_seconds

    def _show(self) -> None:
        self.bar.set_postfix_str(f"step {self.step}/{self.max_steps}{self._loss}", refresh=False)
        self.bar.n = min(self.elapsed(), self.budget_seconds)
        self.bar.refresh()

    def advance(self) -> None:
        """One optimiser step done."""
        self.step += 1
        if self.budget_seconds is None:
            self.bar.update(1)
        else:
            self._show()

    def set_loss(self, loss: float) -> None:
        self._loss = f", loss {loss:.3f}"
        if self.budget_seconds is None:
            self.bar.set_postfix(loss=f"{loss:.3f}")

    def close(self) -> None:
        self.bar.close()
