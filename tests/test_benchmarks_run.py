"""benchmarks/run.py: the CPU path end to end on tiny models (--smoke), and the one-line exit without a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from script_helpers import ROOT

RUN = ROOT / "benchmarks" / "run.py"


def test_cuda_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(RUN), "--device", "cuda", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA device present"), proc.stderr
    assert not any(tmp_path.iterdir()), "nothing is written without a device"


@pytest.mark.slow
def test_cpu_path_runs_every_suite_and_writes_the_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["errors"] == {} and report["device"] == "cpu" and report["smoke"]
    assert set(report["results"]) == {"model", "processor", "loss"}  # the gpu suite needs a GPU
    model = report["results"]["model"]
    assert {"inference_512_b2", "inference_800x1066", "training_step_512_b2", "peak_rss_training"} <= set(model)
    assert "peak_cuda_training" not in model
    # Same weights in both implementations: the logits agree (figures themselves are not asserted).
    assert model["inference_512_b2"]["max_abs_logit_diff"] < 1e-3
    assert report["results"]["loss"]["B=2"]["loss_abs_diff"] < 1e-4
    ratios = [model[key]["ratio"] for key in ("inference_512_b2", "training_step_512_b2", "peak_rss_training")]
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    table = (tmp_path / "latest.md").read_text()
    assert table.strip() == proc.stdout.strip()
    assert "| inference, batch 2 padded to 512² |" in table and "matcher + loss forward, B=2" in table
    assert "Command: `python benchmarks/run.py --smoke`" in table
