"""A saved detr_hf folder carries its code: a process without detr_hf loads all four auto classes with trust_remote_code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.dynamic_module_utils import get_relative_import_files

import detr_hf
from conftest import padded_batch, randomize_norms, tiny_config
from detr_hf import DetrHfForObjectDetection, DetrHfImageProcessor

CHILD = Path(__file__).with_name("remote_code_child.py")
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


def run_child(source: str, tmp_path: Path, inputs_file: Path, extra_env: dict[str, str]) -> tuple[dict, dict]:
    """Load `source` in a fresh interpreter where detr_hf cannot be imported; return its outputs and classes."""
    out_file = tmp_path / "child_outputs.pt"
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
        "PYTHONPATH": "",
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, str(CHILD), source, str(inputs_file), str(out_file)],
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


def test_saved_folder_holds_all_code_and_auto_map(tmp_path):
    save_folder(build_tiny_detector(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_detr_hf.DetrHfConfig",
        "AutoModel": "modeling_detr_hf.DetrHfModel",
        "AutoModelForObjectDetection": "modeling_detr_hf.DetrHfForObjectDetection",
        "AutoImageProcessor": "image_processing_detr_hf.DetrHfImageProcessor",
        "AutoModelForImageSegmentation": "modeling_detr_hf_segmentation.DetrHfForSegmentation",
    }
    processor_config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"] == {
        "AutoImageProcessor": "image_processing_detr_hf.DetrHfImageProcessor"
    }
    needed = {"modeling_detr_hf.py", "configuration_detr_hf.py", "image_processing_detr_hf.py"}
    for module in list(needed):
        needed |= {Path(f).name for f in get_relative_import_files(PACKAGE_DIR / module)}
    # The closure must include the modules the model really runs on, not just the file it is defined in.
    assert {"criterion.py", "matcher.py", "box_ops.py", "backbone.py", "transformer.py"} <= needed
    assert needed <= {p.name for p in tmp_path.iterdir()}
    for name in needed:
        assert (tmp_path / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()


def test_copied_code_imports_nothing_from_detr_hf_absolutely():
    """Absolute `detr_hf` imports would fail in the remote-code process (transformers checks imports first)."""
    from transformers.dynamic_module_utils import get_imports

    modules = {"modeling_detr_hf.py", "configuration_detr_hf.py", "image_processing_detr_hf.py"}
    files = set()
    for module in modules:
        files |= {PACKAGE_DIR / module, *map(Path, get_relative_import_files(PACKAGE_DIR / module))}
    offenders = sorted(f.name for f in files if "detr_hf" in get_imports(f))
    assert offenders == []


@pytest.mark.slow
def test_fresh_process_without_detr_hf_loads_every_auto_class(tmp_path):
    model = build_tiny_detector()
    folder = tmp_path / "saved"
    processor = save_folder(model, folder)
    inputs_file = tmp_path / "inputs.pt"
    expected = reference_outputs(model, processor, inputs_file)

    got, classes = run_child(str(folder), tmp_path, inputs_file, {"HF_HUB_OFFLINE": "1"})

    assert classes["loaded_detr_hf"] == []
    # pipeline() without detr_hf: no "not supported for object-detection" error, and it detects.
    assert not [e for e in classes["pipeline_errors"] if "not supported" in e], classes["pipeline_errors"]
    assert classes["pipeline_detections"] > 0
    for name, expected_class in (
        ("config", "configuration_detr_hf.DetrHfConfig"),
        ("detector", "modeling_detr_hf.DetrHfForObjectDetection"),
        ("base", "modeling_detr_hf.DetrHfModel"),
        ("processor", "image_processing_detr_hf.DetrHfImageProcessor"),
    ):
        assert classes[name].startswith("transformers_modules."), classes[name]
        assert classes[name].endswith(expected_class), classes[name]
    assert_same_outputs(expected, got)
