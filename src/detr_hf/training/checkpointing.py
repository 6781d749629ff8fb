"""Atomic `accelerator.save_state` checkpoints (COMPLETE marker + rename) and the resumable training counters.

Layout (documented for users and for kill-and-resume tests):

    <output_dir>/checkpoints/step_00000120/     a complete checkpoint (has the COMPLETE file)
        model.safetensors, optimizer.bin, random_states_<rank>.pkl,   written by accelerator.save_state
        custom_checkpoint_0.pkl (lr scheduler), custom_checkpoint_1.pkl (TrainState counters)
        COMPLETE                                JSON {"step", "epoch", "batches_in_epoch"}; written last
    <output_dir>/checkpoints/.tmp-step_00000160/  a save in progress (or killed): never resumed from

A checkpoint is written into `.tmp-step_N`, every file is fsync'ed, COMPLETE is written and fsync'ed,
then the folder is renamed to `step_N` (atomic on POSIX) and the parent folder fsync'ed. Only `step_N`
folders containing COMPLETE count as checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

__all__ = [
    "COMPLETE_MARKER",
    "TrainState",
    "checkpoint_name",
    "find_latest_checkpoint",
    "is_complete_checkpoint",
    "save_checkpoint_atomically",
]

COMPLETE_MARKER = "COMPLETE"
_NAME = re.compile(r"^step_(\d+)$")


class TrainState:
    """The counters a resumed run needs besides weights/optimiser/RNG (saved as an accelerate custom object)."""

    def __init__(self) -> None:
        self.completed_steps = 0  # optimiser steps taken (skipped non-finite steps included)
        self.epoch = 0  # current epoch
        self.batches_in_epoch = 0  # micro-batches of `epoch` already consumed (per process)
        self.skipped_steps = 0  # non-finite steps skipped so far
        self.consecutive_skipped = 0
        self.loss_history: list[list[float]] = []  # [step, mean loss] per logging interval

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return bool(_NAME.match(path.name)) and (path / COMPLETE_MARKER).is_file()


def find_latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step in `checkpoints_dir`, or None."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return None
    found = [(int(_NAME.match(p.name).group(1)), p) for p in root.iterdir() if is_complete_checkpoint(p)]
    return max(found)[1] if found else None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _remove_atomically(path: Path) -> None:
    """Rename out of the `step_N` namespace first, so a kill mid-delete never leaves a half checkpoint."""
    trash = path.with_name(f".tmp-del-{path.name}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint_atomically(
    accelerator: Any,
    checkpoints_dir: str | os.PathLike,
    step: int,
    marker: dict[str, Any],
    total_limit: int | None = None,
) -> Path:
    """`accelerator.save_state` into `checkpoints_dir/step_<step>` atomically; every process must call it.

    Older complete checkpoints beyond `total_limit` (newest kept) and abandoned `.tmp-*` folders are removed.
    """
    root = Path(checkpoints_dir)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        marker_path = tmp / COMPLETE_MARKER
        with open(marker_path, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            _remove_atomically(final)
        os.replace(tmp, final)
        _fsync_path(root)
        if total_limit is not None and total_limit > 0:
            complete = sorted(p for p in root.iterdir() if is_complete_checkpoint(p))
            for old in complete[:-total_limit]:
                _remove_atomically(old)
    accelerator.wait_for_everyone()
    return final
