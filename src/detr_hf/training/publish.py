"""--push_to_hub of the training scripts: model, processor, settings and a card recording data, recipe and metrics."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from detr_hf.modelcard import build_model_card
from detr_hf.sharing import upload_folder
from detr_hf.training.run_config import TRAINING_CONFIG_NAME, format_settings

__all__ = ["card_metrics", "hub_dataset_id", "push_trained_model", "trained_model_card"]

# Trainer bookkeeping that is not a result of the model.
_NOT_METRICS = {"epoch", "runtime", "samples_per_second", "steps_per_second", "num_images"}


def card_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The final evaluation numbers for the card (the Trainer's `eval_` prefix dropped, bookkeeping left out)."""
    found = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name not in _NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


def hub_dataset_id(dataset_name: str | None) -> str | None:
    """`--dataset_name` when it names a Hub dataset (not a local folder), for the card's metadata."""
    if not dataset_name or os.path.exists(dataset_name):
        return None
    return dataset_name


def trained_model_card(
    config: Any, repo_id: str, settings: Mapping[str, Any], metrics: Mapping[str, Any], dataset_id: str | None
) -> str:
    """The generated detr_hf card plus a "Training recipe" section with the resolved settings."""
    card = build_model_card(
        config, repo_id=repo_id, datasets=[dataset_id] if dataset_id else None, metrics=card_metrics(metrics)
    )
    lines = "\n".join(f"- {line}" for line in format_settings(dict(settings)).splitlines())
    recipe = (
        f"## Training recipe\n\nTrained with the detr_hf training scripts, recipe `{settings['recipe']}`; "
        f"data: {settings['data']['source']}.\n\n{lines}\n\n"
        f"Every resolved setting is in `{TRAINING_CONFIG_NAME}`; the final evaluation in `eval_results.json`."
    )
    marker = "## How to use"
    return card.replace(marker, f"{recipe}\n\n{marker}", 1) if marker in card else f"{card}\n{recipe}\n"


def push_trained_model(
    *,
    model: Any,
    processor: Any,
    repo_id: str,
    settings: Mapping[str, Any],
    metrics: Mapping[str, Any],
    dataset_id: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Upload model (with its code), processor, training_config.json, eval_results.json and the card in one
    commit; returns the full repo id."""
    full_id = HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        Path(folder, TRAINING_CONFIG_NAME).write_text(json.dumps(dict(settings), indent=2))
        Path(folder, "eval_results.json").write_text(json.dumps(dict(metrics), indent=2))
        card = trained_model_card(model.config, full_id, settings, metrics, dataset_id)
        Path(folder, "README.md").write_text(card, encoding="utf-8")
        upload_folder(
            folder, full_id, token=token, private=private,
            commit_message=f"detr_hf: model trained with recipe {settings['recipe']}",
        )  # fmt: skip
    return full_id
