"""Two real CPU processes (torchrun and accelerate) on halves of a batch equal one process on the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_loss_worker import TERMS, single_process_result
from script_helpers import free_port

WORKER = Path(__file__).with_name("distributed_loss_worker.py")


def launch_command(launcher: str, out: Path, *extra: str) -> list[str]:
    if launcher == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        prefix = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        prefix += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        prefix += ["--main_process_port", str(free_port())]
    return [*prefix, str(WORKER), launcher, str(out), *extra]


def run_workers(launcher: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKER.parent), env.get("PYTHONPATH")]))
    return subprocess.run(
        launch_command(launcher, out, *extra), env=env, cwd=out.parent, capture_output=True, text=True, timeout=110
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_equal_one(launcher, tmp_path):
    out = tmp_path / "result.json"
    proc = run_workers(launcher, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    distributed = json.loads(out.read_text())
    single = single_process_result()

    for name, got, expected in zip(["loss", *TERMS], distributed["terms"], single["terms"]):
        assert abs(got - expected) < 1e-5, (name, got, expected)
    assert single["grads"].keys() == distributed["grads"].keys()
    for name, grad in single["grads"].items():
        torch.testing.assert_close(
            torch.tensor(distributed["grads"][name]), torch.tensor(grad), atol=1e-5, rtol=0
        )
        assert torch.tensor(grad).abs().sum() > 0, name


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_nan_predictions_on_one_process_raise_on_every_process(tmp_path):
    """A process whose predictions are NaN must not leave the other waiting in a collective: both raise."""
    out = tmp_path / "result.json"
    proc = run_workers("torchrun", out, "nan")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = Path(f"{out}.rank0").read_text()
    rank1 = Path(f"{out}.rank1").read_text()
    assert rank0.startswith("NonFinitePredictionError: logits of ") and "image 0" in rank0
    assert rank1 == "NonFinitePredictionError: predictions on another process contain NaN or inf: training has diverged"
