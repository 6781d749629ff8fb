"""Run in a fresh process: block `detr_hf`, load every auto class with trust_remote_code, write the outputs."""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import os
import sys


class _BlockDetrHf(importlib.abc.MetaPathFinder):
    """Makes `import detr_hf` fail as if the package were not installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "detr_hf" or fullname.startswith("detr_hf."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the test)")
        return None


def main(source: str, inputs_file: str, out_file: str) -> None:
    sys.meta_path.insert(0, _BlockDetrHf())
    import numpy as np
    import PIL.Image
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection

    try:
        importlib.import_module("detr_hf")
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("detr_hf is importable in the child process; the test would prove nothing")

    inputs = torch.load(inputs_file, weights_only=True)
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    detector = AutoModelForObjectDetection.from_pretrained(source, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=True)
    with torch.no_grad():
        detected = detector(inputs["pixel_values"], inputs["pixel_mask"])
        hidden = base(inputs["pixel_values"], inputs["pixel_mask"]).last_hidden_state
    processed = processor(images=[np.asarray(inputs["image"])], return_tensors="pt")
    # The pipeline checks the class against transformers' name table: remote code must be known there too.
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    # (A local folder only: from a Hub repo, pipeline() also asks the Hub for chat templates and tokenizer files.)
    errors, detections = [], []
    if os.path.isdir(source):
        handler = logging.Handler()
        handler.emit = lambda record: errors.append(record.getMessage())
        hf_logging.get_logger("transformers.pipelines.base").addHandler(handler)
        detector_pipeline = pipeline("object-detection", model=source, trust_remote_code=True)
        detections = detector_pipeline(PIL.Image.fromarray(inputs["image"].numpy()), threshold=0.0)
    torch.save(
        {
            "logits": detected.logits,
            "pred_boxes": detected.pred_boxes,
            "last_hidden_state": hidden,
            "processed_pixel_values": processed["pixel_values"],
            "processed_pixel_mask": processed["pixel_mask"],
        },
        out_file,
    )
    classes = {name: f"{type(obj).__module__}.{type(obj).__name__}" for name, obj in (
        ("config", config), ("detector", detector), ("base", base), ("processor", processor),
    )}  # fmt: skip
    classes["pipeline_errors"] = errors
    classes["pipeline_detections"] = len(detections)
    classes["loaded_detr_hf"] = sorted(name for name in sys.modules if name.split(".")[0] == "detr_hf")
    print(json.dumps(classes))


if __name__ == "__main__":
    main(*sys.argv[1:4])
