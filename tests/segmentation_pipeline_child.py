"""Run in a fresh process: block `detr_hf`, load a segmentation folder as remote code, run the model and
pipeline("image-segmentation") for every subtask, write the masks and print the labels, scores and classes."""

from __future__ import annotations

import json
import sys

from remote_code_child import _BlockDetrHf


def main(source: str, inputs_file: str, out_file: str) -> None:
    sys.meta_path.insert(0, _BlockDetrHf())
    import numpy as np
    import torch
    from transformers import AutoModelForImageSegmentation, pipeline

    inputs = torch.load(inputs_file, weights_only=True)
    model = AutoModelForImageSegmentation.from_pretrained(source, trust_remote_code=True).eval()
    with torch.no_grad():
        tensors = {"pred_masks": model(inputs["pixel_values"], inputs["pixel_mask"]).pred_masks}
    segment = pipeline("image-segmentation", model=source, trust_remote_code=True)
    results: dict[str, list] = {}
    for subtask in ("panoptic", "instance", "semantic"):
        results[subtask] = []
        for n, found in enumerate(segment(inputs["images"], subtask=subtask)):
            results[subtask].append([(a["label"], a["score"]) for a in found])
            masks = [torch.from_numpy(np.asarray(a["mask"]) > 0) for a in found]
            tensors[f"{subtask}_{n}"] = (
                torch.stack(masks) if masks else torch.zeros(0, 1, 1, dtype=torch.bool)
            )
    torch.save(tensors, out_file)
    print(
        json.dumps(
            {
                "model": f"{type(model).__module__}.{type(model).__name__}",
                "pipeline_model": f"{type(segment.model).__module__}.{type(segment.model).__name__}",
                "results": results,
                "loaded_detr_hf": sorted(name for name in sys.modules if name.split(".")[0] == "detr_hf"),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
