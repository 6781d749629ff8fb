"""Helpers of the remote-code and Hub round-trip tests: a tiny detector, its saved folder, a child process that
loads the folder without detr_hf, and the comparison of both outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import detr_hf
from detr_hf import DetrHfForObjectDetection, DetrHfImageProcessor
from helpers import padded_batch, randomize_norms, tiny_config

CHILD = Path(__file__).with_name("remote_code_child.py")
SEGMENTATION_CHILD = Path(__file__).with_name("segmentation_pipeline_child.py")
PACKAGE_DIR = Path(detr_hf.__file__).parent


def build_tiny_detector(seed: int = 0) -> DetrHfForObjectDetection:
    torch.manual_seed(seed)
    config = tiny_config(id2label={0: "circle", 1: "square", 2: "triangle"})
    model = DetrHfForObjectDetection(config).eval()
    randomize_norms(model, seed)
    return model


def save_folder(model: DetrHfForObjectDetection, folder: Path) -> DetrHfImageProcessor:
    processor = DetrHfImageProcessor(size={"shortest_edge": 48, "longest_edge": 80})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return processor


def reference_outputs(model, processor, inputs_file: Path) -> dict[str, torch.Tensor]:
    """Run the in-process model and processor on fixed inputs, store those inputs for the child."""
    pixel_values, pixel_mask = padded_batch()
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    torch.save({"pixel_values": pixel_values, "pixel_mask": pixel_mask, "image": image}, inputs_file)
    with torch.no_grad():
        detected = model(pixel_values, pixel_mask)
        hidden = model.model(pixel_values, pixel_mask).last_hidden_state
    processed = processor(images=[image.numpy()], return_tensors="pt")
    return {
        "logits": detected.logits,
        "pred_boxes": detected.pred_boxes,
        "last_hidden_state": hidden,
        "processed_pixel_values": processed["pixel_values"],
        "processed_pixel_mask": processed["pixel_mask"],
    }


def run_child(
    source: str, tmp_path: Path, inputs_file: Path, extra_env: dict[str, str], child: Path = CHILD
) -> tuple[dict, dict]:
    """Run `child` on `source` in a fresh interpreter where detr_hf cannot be imported; return the tensors it
    saved and the JSON of its last output line."""
    out_file = tmp_path / "child_outputs.pt"
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
        "PYTHONPATH": "",
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, str(child), source, str(inputs_file), str(out_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    classes = json.loads(result.stdout.strip().splitlines()[-1])
    return torch.load(out_file, weights_only=True), classes


def assert_same_outputs(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert set(expected) == set(got)
    for name in expected:
        torch.testing.assert_close(
            got[name], expected[name], rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )
