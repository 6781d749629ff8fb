"""Helpers of the example-script tests: tiny-model flags, examples/*.py as modules, the flags that train on a
generated COCO folder, tiny saved checkpoints, a training_config.json as a run writes it, a free loopback port."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

from helpers import COCO_CATEGORIES, CocoFixture

ROOT = Path(__file__).resolve().parents[1]
# COCO's own ids and names, plus one category COCO does not have.
COCO_AND_NEW_CATEGORIES = [*COCO_CATEGORIES, {"id": 95, "name": "widget"}]
# A tiny model for every run (flags that are allowed with every fresh-model recipe).
TINY_FRESH_MODEL = [
    "--backbone", "test_resnet", "--no_pretrained_backbone", "--d_model", "32", "--encoder_layers", "1",
    "--decoder_layers", "1", "--num_heads", "4", "--ffn_dim", "64", "--num_queries", "8",
]  # fmt: skip
QUIET_RUN = ["--report_to", "none", "--no_progress_bar"]
# The tiny model of the evaluation-file tests (flags both scripts accept).
TINY_TRAINING_ARGV = [
    "--backbone", "test_resnet", "--no_pretrained_backbone", "--d_model", "32", "--encoder_layers", "1",
    "--decoder_layers", "1", "--num_heads", "4", "--ffn_dim", "64", "--num_queries", "12", "--report_to", "none",
]  # fmt: skip
# The tiny model of the training-script tests (train.py flags; drop --no_progress_bar for train_trainer.py).
TINY_MODEL_ARGS = [
    "--backbone", "test_resnet", "--d_model", "32", "--encoder_layers", "1", "--decoder_layers", "2",
    "--num_heads", "4", "--ffn_dim", "64", "--num_queries", "6", "--report_to", "none", "--no_progress_bar",
]  # fmt: skip


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script(name: str):
    """examples/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def coco_folder_argv(fixture: CocoFixture) -> list[str]:
    """The training-script flags that train on `fixture`."""
    return [
        "--coco_dir", str(fixture.root), "--train_annotations", "annotations/instances_train.json",
        "--val_annotations", "annotations/instances_val.json",
    ]  # fmt: skip


def save_tiny_checkpoint(folder: Path, id2label: dict[int, str], size: dict[str, int], seed: int = 0) -> Path:
    """A randomly initialised tiny detr_hf model with `id2label` and a processor of `size`, saved to `folder`."""
    import torch

    from detr_hf import DetrHfConfig, DetrHfForObjectDetection
    from detr_hf.image_processing_detr_hf import DetrHfImageProcessor

    torch.manual_seed(seed)
    config = DetrHfConfig(
        backbone="test_resnet", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8, auxiliary_loss=False,
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )  # fmt: skip
    DetrHfForObjectDetection(config).save_pretrained(folder)
    DetrHfImageProcessor(size=size).save_pretrained(folder)
    return folder


def example_settings() -> dict:
    """A training_config.json as a fine-tuning run on cppe-5 writes it."""
    return {
        "recipe": "finetune",
        "data": {"source": "dataset cppe-5", "num_train_images": 800, "num_val_images": 200, "labels": ["Coverall", "Mask"]},
        "model": {
            "from": "out/detr-r50", "backbone": "resnet50", "backbone_kwargs": {}, "pretrained_backbone": True,
            "frozen_backbone_batch_norm": True, "backbone_frozen_stages": 1, "d_model": 256, "encoder_layers": 6,
            "decoder_layers": 6, "num_heads": 8, "ffn_dim": 2048, "num_queries": 100, "dropout": 0.1,
            "auxiliary_loss": True, "num_labels": 2, "num_query_groups": 1, "num_denoising_groups": 0,
            "parameters": 41_500_000, "trainable_parameters": 41_200_000,
        },
        "images": {
            "processor_size": {"shortest_edge": 800, "longest_edge": 1333}, "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225], "eval_size": 800, "max_size": 1333, "augmentation": "detr",
            "train_scales": "480,800", "crop_size_range": "384,600", "crop_resize_scales": "400,500,600",
        },
        "optimisation": {
            "optimizer": "AdamW", "learning_rate": 1e-4, "backbone_learning_rate": 1e-5, "weight_decay": 1e-4,
            "max_grad_norm": 0.1, "lr_scheduler": "step", "warmup_steps": 0, "lr_drop_step": 20, "lr_drop_factor": 0.1,
        },
        "batch": {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 1,
                  "num_processes": 1, "global_batch_size": 4},
        "steps": {"max_train_steps": 30, "steps_per_epoch": 10, "num_epochs": 3, "time_budget_minutes": None,
                  "stops_at": "30 steps"},
        "seed": 42,
    }  # fmt: skip
