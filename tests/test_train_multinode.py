"""examples/train.py launched as two machines (accelerate, one CPU process each, over loopback) trains, saves only
on the main process, resumes and evaluates exactly like two processes on one machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from script_helpers import ROOT, TINY_MODEL_ARGS, free_port

# 16 images / (2 processes × batch 4) = 2 steps per epoch; checkpoints at steps 2 and 4 (an epoch boundary each).
TRAIN_ARGS = [
    *TINY_MODEL_ARGS, "--synthetic_train_size", "16", "--synthetic_val_size", "7", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "3", "--max_train_steps", "4", "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--warmup_steps", "1",
    "--checkpointing_steps", "2", "--checkpoints_total_limit", "0", "--eval_every_epochs", "0",
]  # fmt: skip
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no"]
ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TIMEOUT = 240  # seconds per launch; ~15 s on an idle 2-core machine


def _train_command(launch_flags: list[str], out: Path, *extra: str) -> list[str]:
    return [*LAUNCH, *launch_flags, str(ROOT / "examples" / "train.py"), *TRAIN_ARGS, "--output_dir", str(out), *extra]


def run_one_machine(out: Path, *extra: str) -> None:
    flags = ["--num_machines", "1", "--main_process_port", str(free_port())]
    proc = subprocess.run(_train_command(flags, out, *extra), env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]


def run_two_machines(outs: tuple[Path, Path], *extra: str) -> None:
    """Machine rank r writes under outs[r] (the same folder for a shared filesystem)."""
    port = str(free_port())
    procs = []
    for rank, out in enumerate(outs):
        flags = ["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
        flags += ["--main_process_port", port]
        command = _train_command(flags, out, *extra)
        procs.append(subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True))
    for rank, proc in enumerate(procs):
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"machine {rank}:\n{stderr[-4000:]}"


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights, identical COCO metrics and per-image detections."""
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not weights_a[k].equal(weights_b[k])]
    assert not different, different[:5]
    assert json.loads((a / "eval_results.json").read_text()) == json.loads((b / "eval_results.json").read_text())
    predictions_a = json.loads((a / "eval_predictions.json").read_text())
    assert predictions_a and predictions_a == json.loads((b / "eval_predictions.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT)
def test_two_machines_train_save_resume_and_evaluate_like_one(tmp_path):
    one, two, worker_disk = tmp_path / "one_machine", tmp_path / "two_machines", tmp_path / "machine1_disk"
    run_one_machine(one)
    # Machine 1 gets a disk of its own: everything but its RNG state in the checkpoints is written by machine 0.
    run_two_machines((two, worker_disk))
    worker_states = {f"checkpoints/step_0000000{step}/random_states_1.pkl" for step in (2, 4)}
    assert files_under(worker_disk) == {name.replace("step_", ".tmp-step_") for name in worker_states}
    assert worker_states <= files_under(one)
    assert files_under(two) == files_under(one) - worker_states
    assert json.loads((two / "train_results.json").read_text())["num_processes"] == 2
    assert_same_run(one, two)

    # Resume on a shared folder from step 2 (machine 1's RNG state gathered into the checkpoint, as a
    # shared filesystem would hold it): the same weights, metrics and detections at step 4.
    resumed = tmp_path / "resumed"
    checkpoint = resumed / "checkpoints" / "step_00000002"
    shutil.copytree(two / "checkpoints" / "step_00000002", checkpoint)
    shutil.copy(worker_disk / "checkpoints" / ".tmp-step_00000002" / "random_states_1.pkl", checkpoint)
    run_two_machines((resumed, resumed), "--resume_from_checkpoint", "latest")
    assert json.loads((resumed / "train_results.json").read_text())["completed_steps"] == 4
    start = load_file(checkpoint / "model.safetensors")
    final = load_file(resumed / "model.safetensors")
    assert any(not start[k].equal(final[k]) for k in start), "the resumed steps changed nothing"
    assert_same_run(one, resumed)
