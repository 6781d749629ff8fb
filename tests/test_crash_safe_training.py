"""examples/train.py survives SIGKILL: resume is bit-identical, a kill mid-save never leaves a valid-looking
checkpoint, and non-finite losses follow the documented policy (skip the step; stop after N in a row)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detr_hf.training.checkpointing import COMPLETE_MARKER, find_latest_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "examples" / "train.py"
MAX_STEPS = 10  # 24 images / batch 4 = 6 steps per epoch: the run crosses an epoch boundary

# Runs examples/train.py in this process after installing test hooks chosen by environment variables:
#   HOOK_HANG_STAGE=before_marker|before_rename, HOOK_HANG_STEP=N, HOOK_FLAG=file: hang inside the save of step N
#     (after accelerate wrote the files / after COMPLETE was written, before the rename) once FLAG is written;
#   HOOK_NAN_CALLS="3,4" or "3,4,7-" (7 onwards): make the loss of those training forward calls (1-based) NaN;
#   HOOK_NAN_BOX_CALLS="2": make the predicted boxes of those training-mode box-head calls NaN (a diverged model).
CHILD = r"""
import os, runpy, sys, time
from pathlib import Path

stage = os.environ.get("HOOK_HANG_STAGE")
if stage:
    import detr_hf.training.checkpointing as ck
    target = f".tmp-step_{int(os.environ['HOOK_HANG_STEP']):08d}"
    flag = Path(os.environ["HOOK_FLAG"])

    def hang():
        flag.write_text(stage)
        time.sleep(600)

    if stage == "before_marker":
        fsync_tree = ck._fsync_tree

        def patched_tree(root):
            fsync_tree(root)
            if Path(root).name == target:
                hang()

        ck._fsync_tree = patched_tree
    else:
        fsync_path = ck._fsync_path

        def patched_path(path):
            fsync_path(path)
            path = Path(path)
            if path.name == target and (path / ck.COMPLETE_MARKER).is_file():
                hang()

        ck._fsync_path = patched_path

nan_calls = os.environ.get("HOOK_NAN_CALLS")
if nan_calls:
    from detr_hf import DetrHfForObjectDetection

    items = nan_calls.split(",")
    open_from = int(items.pop()[:-1]) if items[-1].endswith("-") else None
    listed = {int(v) for v in items}
    forward = DetrHfForObjectDetection.forward
    calls = [0]

    def nan_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if out.loss is not None:
            calls[0] += 1
            if calls[0] in listed or (open_from and calls[0] >= open_from):
                out.loss = out.loss * float("nan")
        return out

    DetrHfForObjectDetection.forward = nan_forward

nan_box_calls = os.environ.get("HOOK_NAN_BOX_CALLS")
if nan_box_calls:
    from detr_hf.modeling_detr_hf import BoxHead

    box_forward, box_calls, poisoned = BoxHead.forward, [0], {int(v) for v in nan_box_calls.split(",")}

    def nan_box_forward(self, x):
        out = box_forward(self, x)
        if self.training:
            box_calls[0] += 1
            if box_calls[0] in poisoned:
                out = out * float("nan")
        return out

    BoxHead.forward = nan_box_forward

sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _train_args(output_dir: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(output_dir),
        "--backbone", "test_resnet",
        "--d_model", "32", "--ffn_dim", "64", "--num_heads", "4", "--num_queries", "5",
        "--encoder_layers", "1", "--decoder_layers", "2",
        "--dropout", "0.1",  # dropout makes the RNG state part of what a resume must restore
        "--augmentation", "detr", "--train_scales", "40,48,56", "--crop_size_range", "24,40",
        "--crop_resize_scales", "32,40", "--eval_size", "48", "--max_size", "64",
        "--synthetic_train_size", "24", "--synthetic_val_size", "8", "--synthetic_image_size", "48",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--max_train_steps", str(MAX_STEPS), "--checkpointing_steps", "1", "--checkpoints_total_limit", "3",
        "--logging_steps", "1", "--eval_every_epochs", "0", "--learning_rate", "1e-3",
        "--report_to", "none", "--no_progress_bar", "--torch_threads", "1", "--seed", "7",
        *extra,
    ]  # fmt: skip


def _env(**hooks: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOK_")}
    env.update(hooks, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _command(output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CHILD, str(TRAIN_SCRIPT), *_train_args(output_dir, *extra)]


def _run(output_dir: Path, *extra: str, check: bool = True, **hooks: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _command(output_dir, *extra), env=_env(**hooks), capture_output=True, text=True, timeout=300, cwd=REPO
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _start(output_dir: Path, *extra: str, **hooks: str) -> subprocess.Popen:
    return subprocess.Popen(
        _command(output_dir, *extra),
        env=_env(**hooks),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"training exited ({process.returncode}) before {what}: {process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _latest_step(checkpoints: Path) -> int:
    latest = find_latest_checkpoint(checkpoints)
    return -1 if latest is None else json.loads((latest / COMPLETE_MARKER).read_text())["step"]


def _assert_same_result(run: Path, reference: Path) -> None:
    expected, got = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"
    for name in ("eval_results.json", "loss_history.json"):
        assert json.loads((run / name).read_text()) == json.loads((reference / name).read_text()), name
    summary = json.loads((run / "train_results.json").read_text())
    assert summary["completed_steps"] == MAX_STEPS and summary["skipped_nonfinite_steps"] == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    output = tmp_path_factory.mktemp("reference")
    _run(output)
    return output


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(reference, tmp_path):
    kill_after = random.Random(int(os.environ.get("CRASH_TEST_SEED", "0"))).randint(2, MAX_STEPS - 2)
    process = _start(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    _wait_for(lambda: _latest_step(checkpoints) >= kill_after, process, f"checkpoint {kill_after}")
    _kill(process)
    assert not (tmp_path / "model.safetensors").exists()  # it really died mid-run
    resumed_from = _latest_step(checkpoints)
    assert kill_after <= resumed_from < MAX_STEPS
    result = _run(tmp_path, "--resume_from_checkpoint", "latest")
    assert f"at step {resumed_from} " in result.stderr  # "resumed from <folder> at step N (epoch E)"
    _assert_same_result(tmp_path, reference)


def _kill_during_save(run_dir: Path, stage: str, hang_step: int, *extra: str) -> Path:
    """Start a run that hangs at `stage` of the save of `hang_step`, SIGKILL it there, check the checkpoints
    folder and return the abandoned partial save."""
    flag = run_dir / f"hanging-{stage}"
    hooks = {"HOOK_HANG_STAGE": stage, "HOOK_HANG_STEP": str(hang_step), "HOOK_FLAG": str(flag)}
    process = _start(run_dir, *extra, **hooks)
    _wait_for(flag.exists, process, f"the save of step {hang_step}")
    _kill(process)
    checkpoints = run_dir / "checkpoints"
    partial = checkpoints / f".tmp-step_{hang_step:08d}"
    assert (partial / "model.safetensors").is_file(), stage  # the save had really written weights
    assert (partial / COMPLETE_MARKER).is_file() == (stage == "before_rename")
    assert not (checkpoints / f"step_{hang_step:08d}").exists(), stage
    assert _latest_step(checkpoints) == hang_step - 1, stage
    # Every folder that looks like a checkpoint is one: complete marker and loadable weights.
    for folder in checkpoints.glob("step_*"):
        assert (folder / COMPLETE_MARKER).is_file(), folder
        load_file(folder / "model.safetensors")
    return partial


def test_kill_during_checkpoint_save_leaves_no_valid_looking_checkpoint(reference, tmp_path):
    """Killed in the save of step 5 before its COMPLETE marker, resumed and killed in the save of step 8 after
    the marker but before the rename, resumed to the end: the result of the uninterrupted run."""
    first = _kill_during_save(tmp_path, "before_marker", 5)
    second = _kill_during_save(tmp_path, "before_rename", 8, "--resume_from_checkpoint", "latest")
    assert not first.exists()  # the abandoned save was cleaned up by the next one
    _run(tmp_path, "--resume_from_checkpoint", "latest")
    assert not second.exists()
    _assert_same_result(tmp_path, reference)


def test_resume_from_an_incomplete_folder_is_refused(tmp_path):
    spec = importlib.util.spec_from_file_location("detr_hf_train_script", TRAIN_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fake = tmp_path / "checkpoints" / "step_00000003"
    fake.mkdir(parents=True)
    (fake / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        script._resolve_resume(argparse.Namespace(resume_from_checkpoint=str(fake)), fake.parent)
    (fake.parent / ".tmp-step_00000004").mkdir()
    (fake.parent / ".tmp-step_00000004" / COMPLETE_MARKER).write_text("{}")
    assert find_latest_checkpoint(fake.parent) is None


def _parameters(folder: Path) -> dict[str, torch.Tensor]:
    """Trainable weights only: BatchNorm running statistics move on every forward, skipped step or not."""
    weights = load_file(folder / "model.safetensors")
    return {
        k: v
        for k, v in weights.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def test_non_finite_steps_are_skipped_then_a_diverged_run_stops_keeping_the_last_checkpoint(tmp_path):
    """Documented policy: a NaN/inf step is skipped with a warning; --max_consecutive_nonfinite in a row stop the
    run with an error naming the last complete checkpoint, which is intact."""
    result = _run(tmp_path, "--max_consecutive_nonfinite", "3", check=False, HOOK_NAN_CALLS="3,4,7-")
    assert result.returncode != 0
    for step in (3, 4, 7, 8, 9):
        assert f"step {step}: non-finite loss or gradient norm, optimiser step skipped" in result.stderr
    assert "3 consecutive non-finite steps: training has diverged" in result.stderr
    assert not (tmp_path / "model.safetensors").exists()
    checkpoints = tmp_path / "checkpoints"
    latest = find_latest_checkpoint(checkpoints)
    assert latest is not None and latest.name == "step_00000008"
    assert f"the last complete checkpoint is {latest}" in result.stderr
    weights = load_file(latest / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    # Steps 7 and 8 were skipped: the newest checkpoint holds the trained weights of step 6.
    step6, step8 = _parameters(checkpoints / "step_00000006"), _parameters(latest)
    assert all(torch.equal(step6[k], step8[k]) for k in step8)
    assert json.loads((latest / COMPLETE_MARKER).read_text())["step"] == 8


@pytest.mark.slow
def test_nan_predictions_are_skipped_like_a_nan_loss(tmp_path):
    """Diverged predictions (NaN boxes) raise NonFinitePredictionError in the loss; the script skips that step."""
    result = _run(tmp_path, check=False, HOOK_NAN_BOX_CALLS="2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"step \d+: pred_boxes of .* contain NaN or infinite values", result.stderr)
    assert "non-finite loss or gradient norm, optimiser step skipped (1 skipped in total)" in result.stderr
    assert (tmp_path / "model.safetensors").exists()
