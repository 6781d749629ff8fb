"""hub_io: the loading policy, and publishing code that the model's remote-code folder does not carry."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.dynamic_module_utils import get_relative_import_files

import detr_hf
from detr_hf import DetrHfForObjectDetection
from detr_hf.hub_io import load_pretrained
from helpers import padded_batch, tiny_config

PACKAGE_DIR = Path(detr_hf.__file__).parent
RESAVE_CHILD = Path(__file__).with_name("remote_resave_child.py")
PUBLISHING = {"sharing.py", "modelcard.py"}


def test_remote_code_closure_leaves_out_the_publishing_code():
    closure = set()
    for module in ("modeling_detr_hf.py", "configuration_detr_hf.py", "image_processing_detr_hf.py"):
        closure |= {Path(f).name for f in get_relative_import_files(PACKAGE_DIR / module)}
    assert "hub_io.py" in closure and "targets.py" in closure
    assert not closure & PUBLISHING


def test_package_import_does_not_import_the_publishing_code():
    """Neither the package's __init__ nor the model's closure imports sharing/modelcard at module level."""
    files = [PACKAGE_DIR / "__init__.py", PACKAGE_DIR / "modeling_detr_hf.py"]
    files += [Path(f) for f in get_relative_import_files(PACKAGE_DIR / "modeling_detr_hf.py")]
    for file in files:
        for node in ast.parse(file.read_text()).body:  # module level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
                assert not any(n.split(".")[-1] in ("sharing", "modelcard") for n in names), (file.name, names)


def test_load_policy_copies_the_config_and_never_asks_for_pickles_or_backbone_weights():
    seen = {}

    def fake_from_pretrained(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return DetrHfForObjectDetection(kwargs["config"])

    config = tiny_config(use_pretrained_backbone=True, backbone_frozen_stages=1)
    model = load_pretrained(DetrHfForObjectDetection, fake_from_pretrained, "some/folder", config=config)
    assert seen["args"] == ("some/folder",) and seen["kwargs"]["use_safetensors"] is True
    assert seen["kwargs"]["config"] is not config and seen["kwargs"]["config"].use_pretrained_backbone is False
    assert config.use_pretrained_backbone is True  # the caller's object is untouched
    load_pretrained(DetrHfForObjectDetection, fake_from_pretrained, "some/folder", config=config, use_safetensors=False)
    assert seen["kwargs"]["use_safetensors"] is False
    stem = [p for n, p in model.named_parameters() if n.startswith("model.backbone.")]
    assert stem and not all(p.requires_grad for p in stem)


def test_save_with_the_package_writes_code_and_card(tmp_path):
    torch.manual_seed(0)
    DetrHfForObjectDetection(tiny_config()).save_pretrained(tmp_path, model_card={"datasets": ["cppe-5"]})
    names = {p.name for p in tmp_path.iterdir()}
    assert {"README.md", "modeling_detr_hf.py", "hub_io.py", "image_processing_detr_hf.py"} <= names
    assert not names & PUBLISHING
    assert "cppe-5" in (tmp_path / "README.md").read_text()


@pytest.mark.slow
def test_remote_copy_without_the_package_saves_a_folder_that_loads_again(tmp_path):
    torch.manual_seed(0)
    folder, resaved = tmp_path / "saved", tmp_path / "resaved"
    DetrHfForObjectDetection(tiny_config()).eval().save_pretrained(folder)
    pixel_values, pixel_mask = padded_batch()
    torch.save({"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tmp_path / "inputs.pt")
    env = {**os.environ, "PYTHONPATH": "", "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    result = subprocess.run(
        [sys.executable, str(RESAVE_CHILD), str(folder), str(resaved), str(tmp_path / "inputs.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded_detr_hf"] == []
    assert report["reloaded_class"].startswith("transformers_modules.")
    assert report["max_diff"] == 0.0
    # transformers' own save: weights, config and the model's code closure; no card without detr_hf.
    assert {"config.json", "model.safetensors", "modeling_detr_hf.py", "hub_io.py", "targets.py"} <= set(report["files"])
    assert "README.md" not in report["files"] and not set(report["files"]) & PUBLISHING


class _UserDetector(DetrHfForObjectDetection):
    """A subclass defined outside the package, as a user's project would."""


def test_a_subclass_defined_elsewhere_still_saves_the_package_code(tmp_path):
    torch.manual_seed(0)
    _UserDetector(tiny_config()).save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"modeling_detr_hf.py", "configuration_detr_hf.py", "hub_io.py", "targets.py", "README.md"} <= names
