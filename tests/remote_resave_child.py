"""Run in a fresh process without detr_hf: load a saved folder as remote code, save it again, load the copy.

Usage: `remote_resave_child.py FOLDER RESAVED INPUTS.pt`; prints JSON with the re-saved folder's files, the
largest output difference between the loaded and the re-loaded model, and the detr_hf modules imported.
"""

from __future__ import annotations

import json
import sys

from remote_code_child import _BlockDetrHf  # the same import blocker as the load-only child


def main(folder: str, resaved: str, inputs_file: str) -> None:
    sys.meta_path.insert(0, _BlockDetrHf())
    import os

    import torch
    from transformers import AutoModelForObjectDetection

    inputs = torch.load(inputs_file, weights_only=True)
    model = AutoModelForObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
    model.save_pretrained(resaved)
    again = AutoModelForObjectDetection.from_pretrained(resaved, trust_remote_code=True).eval()
    with torch.no_grad():
        first = model(inputs["pixel_values"], inputs["pixel_mask"]).logits
        second = again(inputs["pixel_values"], inputs["pixel_mask"]).logits
    print(json.dumps({
        "files": sorted(os.listdir(resaved)),
        "max_diff": float((first - second).abs().max()),
        "reloaded_class": f"{type(again).__module__}.{type(again).__name__}",
        "loaded_detr_hf": sorted(name for name in sys.modules if name.split(".")[0] == "detr_hf"),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
