"""Every training command of the README's "Train on your data" block runs as written (small step counts
appended), offline, on generated data, and saves its recipe's settings (800/1333 for the real recipes).

The commands run in a temporary folder laid out as they expect: `examples/` (a link to the repository's),
`data/mycoco` and `data/coco` (a realistic COCO folder, the second in COCO's own file names), `cppe-5` (a
`save_to_disk` DatasetDict in the cppe-5 schema, which `--dataset_name cppe-5` finds before the Hub), `out/detr-r50`
(a random-weight DETR-R50 folder with its 800/1333 processor, as `detr_hf.convert` writes it) and a Hub cache
holding random weights for timm's `resnet50.tv_in1k`, so the pretrained-backbone code path runs offline."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import save_file

from detr_hf import DetrHfConfig, DetrHfForObjectDetection
from detr_hf.coco_labels import coco_id2label
from detr_hf.convert import save_converted_folder
from detr_hf.data.schema import detection_features
from helpers import CPPE5_NAMES, cppe5_rows, make_coco_folder
from script_helpers import ROOT

pytestmark = pytest.mark.slow

TRAINING_SCRIPTS = {"examples/train.py": "outputs/detr_hf", "examples/train_trainer.py": "outputs/detr_hf_trainer"}
# Appended to each command: one optimiser step on single-image batches, no intermediate checkpoint.
ONE_STEP = ["--max_train_steps", "1", "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1",
            "--report_to", "none"]  # fmt: skip
SCRIPT_FLAGS = {
    "examples/train.py": ["--checkpointing_steps", "no", "--no_progress_bar"],
    "examples/train_trainer.py": ["--save_strategy", "no"],
}
SMALL_SYNTHETIC = ["--synthetic_train_size", "2", "--synthetic_val_size", "2"]
DETR_SIZE = {"shortest_edge": 800, "longest_edge": 1333}


def readme_training_commands() -> list[list[str]]:
    """The README block's commands (continuation lines joined, comments dropped) that run a training script."""
    section = (ROOT / "README.md").read_text().split("## Train on your data", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    return [words for words in commands if any(word in TRAINING_SCRIPTS for word in words)]


def _hub_cache_with_timm_resnet50(hub_cache: Path) -> None:
    """Random weights for timm/resnet50.tv_in1k laid out as huggingface_hub caches a download."""
    import timm

    repo = hub_cache / "models--timm--resnet50.tv_in1k"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    net = timm.create_model("resnet50", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 1000}))


def _lay_out(work: Path) -> dict[str, str]:
    """The folders the README commands name, under `work`; returns the environment to run them in."""
    (work / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    coco = make_coco_folder(work / "data" / "mycoco", num_train=4, num_val=1)  # one recipe batch of 4
    layout = work / "data" / "coco"
    (layout / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (layout / "annotations" / f"instances_{split}2017.json").symlink_to(coco.annotation_files[split])
        (layout / f"{split}2017").symlink_to(coco.image_dir(split), target_is_directory=True)
    features = detection_features(CPPE5_NAMES)
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(cppe5_rows(3, seed=0), features=features),
        validation=datasets.Dataset.from_list(cppe5_rows(1, seed=1), features=features),
    ).save_to_disk(str(work / "cppe-5"))
    torch.manual_seed(0)
    names = coco_id2label()
    detr_r50 = DetrHfForObjectDetection(DetrHfConfig(id2label=names, label2id={v: k for k, v in names.items()}))
    save_converted_folder(detr_r50, work / "out" / "detr-r50", source="random weights (test)")
    _hub_cache_with_timm_resnet50(work / "hf" / "hub")
    return {
        **os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_CACHE": str(work / "hf" / "hub"),
        "HF_DATASETS_CACHE": str(work / "hf" / "datasets"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2",
    }  # fmt: skip


def _runnable(words: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str], str]:
    """(argv with the small counts appended, environment, script) of one README command."""
    env = dict(env)
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[:2] == ["accelerate", "launch"]:
        words = [sys.executable, "-m", "accelerate.commands.launch", *words[2:]]
    elif words[0] == "python":
        words = [sys.executable, *words[1:]]
    script = next(word for word in words if word in TRAINING_SCRIPTS)
    if "--print_config_only" not in words:
        words += ONE_STEP + SCRIPT_FLAGS[script]
        if "--coco_dir" not in words and "--dataset_name" not in words:
            words += SMALL_SYNTHETIC
    return words, env, script


def _flag(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def test_every_readme_training_command_runs_as_written(tmp_path):
    commands = readme_training_commands()
    assert len(commands) == 6, commands  # demo, fine-tune, fresh DETR-R50, print-only, DDP, Trainer
    env = _lay_out(tmp_path)
    seen = set()
    for words in commands:
        argv, run_env, script = _runnable(list(words), env)
        out = tmp_path / (_flag(words, "--output_dir") or TRAINING_SCRIPTS[script])
        shutil.rmtree(out, ignore_errors=True)  # several commands share the default output folder
        proc = subprocess.run(argv, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{shlex.join(words)} failed:\n{proc.stderr[-3000:]}"
        config = json.loads((out / "training_config.json").read_text())
        processor = json.loads((out / "preprocessor_config.json").read_text())
        assert config["images"]["processor_size"] == processor["size"], words
        if "--model_name_or_path" in words:
            expected = "finetune"
            assert config["model"]["from"] == "out/detr-r50" and config["data"]["labels"] == CPPE5_NAMES
        elif "--coco_dir" in words:
            expected = "detr-r50"
            assert (config["model"]["backbone"], config["model"]["pretrained_backbone"]) == ("resnet50.tv_in1k", True)
            assert config["data"]["labels"] == ["person", "car", "train", "dog"]
        else:
            expected = "demo"
            assert processor["size"] == {"shortest_edge": 64, "longest_edge": 96}
        assert config["recipe"] == expected, words
        if expected != "demo":
            assert processor["size"] == DETR_SIZE and (config["images"]["eval_size"], config["images"]["max_size"]) == (800, 1333)
            assert (config["model"]["d_model"], config["model"]["num_queries"], config["model"]["decoder_layers"]) == (256, 100, 6)
        trained = "--print_config_only" not in words
        assert (out / "model.safetensors").is_file() == trained, words
        if trained:
            assert "AP" in json.loads((out / "eval_results.json").read_text()) or "eval_AP" in json.loads(
                (out / "eval_results.json").read_text()
            ), words
        if _flag(words, "--num_processes") == "2":
            assert json.loads((out / "train_results.json").read_text())["num_processes"] == 2
        seen.add((expected, trained))
    assert seen == {("demo", True), ("finetune", True), ("detr-r50", True), ("detr-r50", False)}
