"""Run in a fresh process with HF_ENDPOINT set: push a saved detr_hf model and its processor to the Hub."""

from __future__ import annotations

import sys

from transformers import AutoImageProcessor, AutoModelForObjectDetection

import detr_hf  # noqa: F401  registers the classes


def main(folder: str, repo_id: str) -> None:
    model = AutoModelForObjectDetection.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    model.push_to_hub(
        repo_id, token="hf_loopback", model_card={"datasets": ["shapes-synthetic"], "metrics": {"map": 0.5}}
    )
    processor.push_to_hub(repo_id, token="hf_loopback")


if __name__ == "__main__":
    main(*sys.argv[1:3])
