"""push_to_hub round trip against a loopback Hub: push model + processor, load them in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hub_server import LoopbackHub
from remote_code_helpers import (
    assert_same_outputs,
    build_tiny_detector,
    reference_outputs,
    run_child,
    save_folder,
)

PUSH_CHILD = Path(__file__).with_name("hub_push_child.py")
REPO = "user/tiny-detr"


@pytest.mark.slow
def test_push_to_hub_then_fresh_process_loads_identical_model(tmp_path):
    model = build_tiny_detector()
    processor = save_folder(model, tmp_path / "saved")
    inputs_file = tmp_path / "inputs.pt"
    expected = reference_outputs(model, processor, inputs_file)

    with LoopbackHub() as hub:
        hub_env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        env = {**os.environ, "HF_HOME": str(tmp_path / "push_home"), **hub_env}
        pushed = subprocess.run(
            [sys.executable, str(PUSH_CHILD), str(tmp_path / "saved"), REPO],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr[-4000:]
        files = dict(hub.state.repos[REPO].files)
        got, classes = run_child(REPO, tmp_path, inputs_file, hub_env)
        requests, unknown = list(hub.state.requests), list(hub.state.unknown_requests)

    assert unknown == []
    assert any(r.startswith(f"POST /api/models/{REPO}/commit/") for r in requests)
    assert any(r.startswith(f"GET /{REPO}/resolve/") and r.endswith("/model.safetensors") for r in requests)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files)
    assert {"modeling_detr_hf.py", "criterion.py", "matcher.py", "box_ops.py", "backbone.py"} <= set(files)
    assert all(
        classes[key].startswith("transformers_modules.") for key in ("config", "detector", "base", "processor")
    )
    assert classes["loaded_detr_hf"] == []
    assert_same_outputs(expected, got)

    card = files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "object-detection" and metadata["datasets"] == ["shapes-synthetic"]
    assert f'from_pretrained("{REPO}", trust_remote_code=True)' in card
    assert "| 0 | circle |" in card and "| map | 0.5000 |" in card
