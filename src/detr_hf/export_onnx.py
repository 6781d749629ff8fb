"""ONNX export of DetrHfForObjectDetection / DetrHfForSegmentation with dynamic batch, height and width
(`python -m detr_hf.export_onnx`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .modeling_detr_hf import DetrHfForObjectDetection
from .modeling_detr_hf_segmentation import DetrHfForSegmentation

logger = logging.getLogger(__name__)

INPUT_NAMES = ["pixel_values", "pixel_mask"]
OUTPUT_NAMES = ["logits", "pred_boxes"]
SEGMENTATION_OUTPUT_NAMES = [*OUTPUT_NAMES, "pred_masks"]
DEFAULT_OPSET = 18


def output_names(model: nn.Module) -> list[str]:
    """The graph outputs of `model`: logits and pred_boxes, plus pred_masks for a segmentation model."""
    return SEGMENTATION_OUTPUT_NAMES if isinstance(model, DetrHfForSegmentation) else OUTPUT_NAMES


class _ExportWrapper(nn.Module):
    """Plain tensors in and out: (pixel_values, pixel_mask) → (logits, pred_boxes[, pred_masks])."""

    def __init__(self, model: DetrHfForObjectDetection | DetrHfForSegmentation) -> None:
        super().__init__()
        self.model = model
        self.output_names = output_names(model)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, return_dict=True)
        return tuple(out[name] for name in self.output_names)


def example_inputs(
    num_channels: int = 3, sizes: tuple[tuple[int, int], ...] = ((96, 128), (64, 80)), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch (pixel_values float32 [B, C, H, W], pixel_mask bool [B, H, W]) to trace the model with.

    The images differ in size so the traced graph sees real padding; batch 2 keeps the batch axis symbolic.
    """
    gen = torch.Generator().manual_seed(seed)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), num_channels, height, width)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        pixel_values[i, :, :h, :w] = torch.randn(num_channels, h, w, generator=gen)
        pixel_mask[i, :h, :w] = True
    return pixel_values, pixel_mask


def _export_dynamo(wrapper: nn.Module, inputs: tuple, path: Path, opset: int) -> None:
    batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
    program = torch.onnx.export(
        wrapper,
        inputs,
        dynamo=True,
        input_names=INPUT_NAMES,
        output_names=wrapper.output_names,
        dynamic_shapes={
            "pixel_values": {0: batch, 2: height, 3: width},
            "pixel_mask": {0: batch, 1: height, 2: width},
        },
        opset_version=opset,
        verbose=False,
    )
    program.save(str(path))


def _export_torchscript(wrapper: nn.Module, inputs: tuple, path: Path, opset: int) -> None:
    torch.onnx.export(
        wrapper,
        inputs,
        str(path),
        dynamo=False,
        input_names=INPUT_NAMES,
        output_names=wrapper.output_names,
        dynamic_axes={
            "pixel_values": {0: "batch", 2: "height", 3: "width"},
            "pixel_mask": {0: "batch", 1: "height", 2: "width"},
            "logits": {0: "batch"},
            "pred_boxes": {0: "batch"},
            "pred_masks": {0: "batch", 2: "mask_height", 3: "mask_width"},
        },
        opset_version=min(opset, 17),
    )


_EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def export_onnx(
    model: DetrHfForObjectDetection | DetrHfForSegmentation | str | os.PathLike,
    output_path: str | os.PathLike,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
) -> str:
    """Write `model` (or the saved model folder it names) to `output_path` as ONNX; return the exporter used.

    Graph inputs: `pixel_values` float32 [batch, C, height, width] and `pixel_mask` bool [batch, height, width]
    (True = pixel), exactly what `DetrHfImageProcessor(..., return_tensors="np")` returns. Outputs: `logits`
    [batch, num_queries, num_labels + 1] and `pred_boxes` [batch, num_queries, 4] (normalised cx, cy, w, h); a
    segmentation model adds `pred_masks` [batch, num_queries, height/4, width/4] (mask logits).
    `id2label` is stored in the ONNX metadata.

    exporter: "dynamo" (torch.export with dynamic_shapes), "torchscript" (legacy tracer with dynamic_axes), or
    "auto": dynamo, falling back to torchscript if dynamo fails.
    """
    if exporter not in ("auto", *_EXPORTERS):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    if not isinstance(model, (DetrHfForObjectDetection, DetrHfForSegmentation)):
        model = load_for_export(model)
    model = model.eval()
    wrapper = _ExportWrapper(model).eval()
    inputs = example_inputs(model.config.num_channels)
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    for name in order:
        try:
            with torch.no_grad():
                _EXPORTERS[name](wrapper, inputs, path, opset)
            break
        except Exception as error:
            if name == order[-1]:
                raise
            logger.warning(
                "ONNX export with the %s exporter failed (%s); falling back to torchscript", name, error
            )
    _add_metadata(path, model, name)
    return name


def load_for_export(folder: str | os.PathLike) -> DetrHfForObjectDetection | DetrHfForSegmentation:
    """The saved model in `folder`: a segmentation model if its config says so, else a detector."""
    config_file = Path(folder) / "config.json"
    architectures = json.loads(config_file.read_text()).get("architectures") if config_file.is_file() else None
    if DetrHfForSegmentation.__name__ in (architectures or []):
        return DetrHfForSegmentation.from_pretrained(folder)
    return DetrHfForObjectDetection.from_pretrained(folder)


def _add_metadata(path: Path, model: nn.Module, exporter: str) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {
        "id2label": json.dumps({str(k): v for k, v in model.config.id2label.items()}),
        "model_type": model.config.model_type,
        "exporter": exporter,
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def max_abs_difference(
    model: DetrHfForObjectDetection | DetrHfForSegmentation,
    onnx_path: str | os.PathLike,
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor,
) -> float:
    """Largest |ONNX Runtime - PyTorch| over every output (logits, pred_boxes[, pred_masks]) on one input."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.to(torch.bool).numpy()}
    names = output_names(model)
    results = session.run(names, feeds)
    with torch.no_grad():
        out = model.eval()(pixel_values=pixel_values, pixel_mask=pixel_mask)
    return max(float((torch.from_numpy(got) - out[name]).abs().max()) for name, got in zip(names, results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a saved detr_hf model folder to ONNX.")
    parser.add_argument("model", help="folder written by save_pretrained (config.json + model.safetensors)")
    parser.add_argument("output", help="path of the .onnx file to write")
    parser.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="run ONNX Runtime on a batch of another size and print the max diff",
    )
    args = parser.parse_args(argv)
    model = load_for_export(args.model)
    used = export_onnx(model, args.output, exporter=args.exporter, opset=args.opset)
    print(f"wrote {args.output} with the {used} exporter")
    if args.verify:
        pixel_values, pixel_mask = example_inputs(
            model.config.num_channels, ((120, 72), (88, 100), (64, 64)), seed=1
        )
        print(
            f"max |onnxruntime - torch| on a 3-image padded batch: {max_abs_difference(model, args.output, pixel_values, pixel_mask):.3g}"
        )


if __name__ == "__main__":
    main()
