"""--push_to_hub of both training scripts against the loopback Hub: model, processor, settings and a model card
recording the dataset, the recipe and the final metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from detr_hf.training.publish import card_metrics, hub_dataset_id, trained_model_card
from hub_server import LoopbackHub
from script_helpers import ROOT, TINY_FRESH_MODEL, example_settings

RUN = [
    *TINY_FRESH_MODEL, "--recipe", "demo", "--synthetic_train_size", "8", "--synthetic_val_size", "4",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_train_steps", "2",
    "--report_to", "none", "--push_to_hub", "--hub_token", "hf_loopback",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [("train", ["--no_progress_bar", "--checkpointing_steps", "no"]),
                                           ("train_trainer", ["--use_cpu", "--save_strategy", "no", "--eval_strategy", "no"])])  # fmt: skip
def test_push_to_hub_uploads_model_processor_and_a_card(tmp_path, script, extra):
    repo = f"user/detr-{script.replace('_', '-')}"
    out = tmp_path / "out"
    with LoopbackHub() as hub:
        env = {
            **os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "TRANSFORMERS_OFFLINE": "1",
        }  # fmt: skip
        cmd = [sys.executable, str(ROOT / "examples" / f"{script}.py"), *RUN, *extra,
               "--output_dir", str(out), "--hub_model_id", repo]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        files = dict(hub.state.repos[repo].files)
        unknown = list(hub.state.unknown_requests)
    assert unknown == []
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_config.json",
            "eval_results.json", "modeling_detr_hf.py"} <= set(files)  # fmt: skip
    # Training checkpoints (step_*/) and logs stay local; only the model, its code and the results go up.
    assert not any(name.split("/")[0].startswith(("step_", "logs", "runs")) for name in files)
    assert not any("/" in name for name in files), sorted(files)
    settings = json.loads(files["training_config.json"])
    assert settings["recipe"] == "demo" and settings["steps"]["max_train_steps"] == 2
    card = files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "object-detection"
    assert "## Training recipe" in card and "recipe `demo`" in card
    assert "data: built-in synthetic shapes (64 px)" in card
    assert "optimisation: AdamW lr 0.0004" in card and "steps: 2 (1 epoch(s) of 2)" in card
    metrics = json.loads(files["eval_results.json"])
    ap = metrics["AP"] if "AP" in metrics else metrics["eval_AP"]
    assert f"| AP | {ap:.4f} |" in card
    assert f'from_pretrained("{repo}", trust_remote_code=True)' in card


def test_card_metadata_names_hub_datasets_only(tmp_path):
    assert hub_dataset_id("cppe-5") == "cppe-5" and hub_dataset_id(str(tmp_path)) is None
    assert card_metrics({"eval_AP": 0.5, "eval_runtime": 3.0, "epoch": 1.0, "AP50": 1}) == {"AP": 0.5, "AP50": 1.0}


def test_card_carries_dataset_and_recipe():
    from helpers import tiny_config

    config = tiny_config(id2label={0: "Coverall", 1: "Mask"})
    settings = example_settings()
    card = trained_model_card(config, "me/cppe", settings, {"eval_AP": 0.25}, "cppe-5")
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["datasets"] == ["cppe-5"]
    assert card.index("## Training recipe") < card.index("## How to use")
    assert "recipe `finetune`; data: dataset cppe-5." in card and "| AP | 0.2500 |" in card
    assert "schedule step (×0.1 at step 20)" in card
