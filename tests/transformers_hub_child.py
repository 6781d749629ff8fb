"""Run in a fresh process with HF_ENDPOINT on the loopback Hub: load/convert transformers DETR Hub ids, save outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from detr_hf import DetrHfForObjectDetection
from detr_hf.convert import main as convert_main
from detr_references import detection_outputs


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {
        "facebook/detr-tiny": detection_outputs(
            DetrHfForObjectDetection.from_pretrained("facebook/detr-tiny").eval()
        ),
        "facebook/detr-tiny-no-timm": detection_outputs(
            DetrHfForObjectDetection.from_pretrained("facebook/detr-tiny-no-timm", revision="no_timm").eval()
        ),
    }
    convert_main(
        ["--from", "transformers", "facebook/detr-tiny-no-timm", str(out / "cli"), "--revision", "no_timm"]
    )
    outputs["cli"] = detection_outputs(DetrHfForObjectDetection.from_pretrained(out / "cli").eval())
    torch.save(outputs, out / "outputs.pt")
    try:
        DetrHfForObjectDetection.from_pretrained("user/yolos")
    except ValueError as error:
        (out / "error.txt").write_text(str(error))


if __name__ == "__main__":
    main(sys.argv[1])
