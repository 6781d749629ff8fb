"""Shared helpers of the training-script tests: a realistic COCO folder, tiny checkpoints, the example scripts."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# COCO's own ids and names, plus one category COCO does not have.
COCO_FIXTURE_CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
    {"id": 7, "name": "train"},
    {"id": 18, "name": "dog"},
    {"id": 95, "name": "widget"},
]
# A tiny model for every run (flags that are allowed with every fresh-model recipe).
TINY_FRESH_MODEL = [
    "--backbone", "test_resnet", "--no_pretrained_backbone", "--d_model", "32", "--encoder_layers", "1",
    "--decoder_layers", "1", "--num_heads", "4", "--ffn_dim", "64", "--num_queries", "8",
]  # fmt: skip
QUIET_RUN = ["--report_to", "none", "--no_progress_bar"]


def load_script(name: str):
    """examples/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(folder: Path, name: str, num_images: int, rng: random.Random, first_id: int) -> dict:
    images, annotations = [], []
    (folder / name).mkdir(parents=True, exist_ok=True)
    for k in range(num_images):
        width, height = rng.choice([(640, 480), (333, 500), (700, 300), (420, 420)])
        pixels = np.random.default_rng(first_id + k).integers(0, 255, (height, width, 3), dtype=np.uint8)
        file_name = f"img_{first_id + k:05d}.jpg"
        Image.fromarray(pixels).save(folder / name / file_name, quality=80)
        image_id = first_id + k
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for _ in range(0 if k == 0 else rng.randint(1, 12)):  # the first image has no objects
            w, h = rng.uniform(20, width / 2), rng.uniform(20, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append(
                {
                    "id": len(annotations) + 1 + 10_000 * first_id,
                    "image_id": image_id,
                    "category_id": rng.choice(COCO_FIXTURE_CATEGORIES)["id"],
                    "bbox": [x, y, w, h],
                    "area": w * h * 0.8,
                    "iscrowd": 0,
                }
            )
        if k == 1:  # a large crowd region
            annotations.append(
                {"id": 10_000 * first_id + 9_999, "image_id": image_id, "category_id": 1,
                 "bbox": [0.0, 0.0, width * 0.6, height * 0.6], "area": width * height * 0.3, "iscrowd": 1}
            )  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": COCO_FIXTURE_CATEGORIES}


def make_coco_folder(folder: Path, num_train: int = 6, num_val: int = 2, seed: int = 0) -> Path:
    """A COCO folder: train2017/ val2017/ JPEGs of 300–700 px, 0–12 objects each, COCO category ids 1, 3, 7, 18
    and 95, a crowd region, annotations/instances_{train,val}2017.json."""
    rng = random.Random(seed)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    for name, count, first in (("train2017", num_train, 1), ("val2017", num_val, 500)):
        data = _split(folder, name, count, rng, first)
        (folder / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))
    return folder


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
