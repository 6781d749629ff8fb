"""ONNX export: dynamic batch/height/width with padding; onnxruntime equals PyTorch within 1e-4."""

from __future__ import annotations

import contextlib
import io
import json

import onnx  # the `export` extra, part of `dev`: a missing install fails here instead of skipping
import onnxruntime
import pytest
import torch

from detr_hf import DetrHfForObjectDetection
from detr_hf.export_onnx import example_inputs, export_onnx
from detr_hf.export_onnx import main as export_main
from helpers import tiny_config

# Sizes unlike the export example (96×128 / 64×80, batch 2): other batch sizes, odd sizes, heavy padding,
# an image smaller than one feature cell of the others' padding, and a feature map of 1×1.
CHECK_BATCHES = [
    ((120, 72), (88, 100), (64, 64)),
    ((37, 53),),
    ((200, 40), (40, 200), (33, 33), (150, 150)),
    ((16, 16), (32, 8)),
]


# One encoder and one decoder layer: the export of a layer does not depend on how many follow it.
EXPORT_LAYERS = {"encoder_layers": 1, "decoder_layers": 1}


def _model(**overrides) -> DetrHfForObjectDetection:
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(tiny_config(**EXPORT_LAYERS, **overrides)).eval()
    # Non-trivial BatchNorm statistics so a wrong mode or folding would show in the outputs.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(1 + 0.2 * torch.rand(module.running_var.shape, generator=gen))
    return model


def _run(session: onnxruntime.InferenceSession, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
    feeds = {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()}
    logits, boxes = session.run(["logits", "pred_boxes"], feeds)
    return torch.from_numpy(logits), torch.from_numpy(boxes)


def _assert_parity(model, onnx_path) -> None:
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for seed, sizes in enumerate(CHECK_BATCHES):
        pixel_values, pixel_mask = example_inputs(model.config.num_channels, sizes, seed=seed + 10)
        assert not pixel_mask.all() or len(sizes) == 1
        with torch.no_grad():
            expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        logits, boxes = _run(session, pixel_values, pixel_mask)
        assert logits.shape == expected.logits.shape, sizes
        diff = max((logits - expected.logits).abs().max(), (boxes - expected.pred_boxes).abs().max())
        assert diff <= 1e-4, f"batch {sizes}: max |onnxruntime - torch| = {float(diff):.3g}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The CLI (`python -m detr_hf.export_onnx`'s `main`, in this process) run once on a saved folder:
    (model, onnx path, CLI stdout). The model has learned positions and pre-norm layers; sine positions and
    post-norm layers are exported (dynamo) by the segmentation test and (torchscript) by the fallback test."""
    model = _model(position_embedding_type="learned", pre_norm=True)
    folder = tmp_path_factory.mktemp("onnx")
    model.save_pretrained(folder / "saved")
    path = folder / "model.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        export_main([str(folder / "saved"), str(path), "--verify"])
    return model, path, stdout.getvalue()


def test_cli_uses_dynamo_and_verifies(exported):
    _, _, stdout = exported
    assert "with the dynamo exporter" in stdout
    assert float(stdout.rsplit(":", 1)[1]) < 1e-4


def test_dynamo_export_matches_pytorch_on_other_sizes_with_padding(exported):
    model, path, _ = exported
    _assert_parity(model, path)


def test_graph_signature_is_dynamic_and_named(exported):
    _, path, _ = exported
    proto = onnx.load(str(path))
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    outputs = {o.name: o.type.tensor_type for o in proto.graph.output}
    assert list(inputs) == ["pixel_values", "pixel_mask"]
    assert list(outputs) == ["logits", "pred_boxes"]
    assert inputs["pixel_mask"].elem_type == onnx.TensorProto.BOOL
    assert inputs["pixel_values"].elem_type == onnx.TensorProto.FLOAT
    pixel_dims = inputs["pixel_values"].shape.dim
    # batch, height and width are symbolic; channels fixed.
    assert [d.HasField("dim_param") for d in pixel_dims] == [True, False, True, True]
    assert outputs["logits"].shape.dim[0].HasField("dim_param")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["id2label"]) == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    assert meta["exporter"] == "dynamo"


def test_processor_numpy_output_feeds_the_graph(exported):
    from detr_hf.image_processing_detr_hf import DetrHfImageProcessor

    model, path, _ = exported
    gen = torch.Generator().manual_seed(3)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in ((50, 70), (90, 40))
    ]
    processor = DetrHfImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    batch = processor(images, return_tensors="np")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(
        ["logits", "pred_boxes"], {k: batch[k] for k in ("pixel_values", "pixel_mask")}
    )
    with torch.no_grad():
        expected = model(
            pixel_values=torch.from_numpy(batch["pixel_values"]),
            pixel_mask=torch.from_numpy(batch["pixel_mask"]),
        )
    torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(boxes), expected.pred_boxes, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_torchscript_fallback_exporter_matches_pytorch(tmp_path):
    model = _model()
    used = export_onnx(model, tmp_path / "ts.onnx", exporter="torchscript")
    assert used == "torchscript"
    _assert_parity(model, tmp_path / "ts.onnx")


def test_unknown_exporter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(_model(), tmp_path / "x.onnx", exporter="tflite")


def test_segmentation_model_exports_pred_masks_with_dynamic_sizes(tmp_path):
    from detr_hf import DetrHfForSegmentation

    torch.manual_seed(0)
    config = tiny_config(encoder_attention_heads=8, decoder_attention_heads=8, **EXPORT_LAYERS)
    model = DetrHfForSegmentation(config).eval()
    model.save_pretrained(tmp_path / "saved")
    path = tmp_path / "seg.onnx"
    assert export_onnx(tmp_path / "saved", path, exporter="dynamo") == "dynamo"  # the folder path: seg model read
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["logits", "pred_boxes", "pred_masks"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, sizes in enumerate(CHECK_BATCHES[:3]):
        pixel_values, pixel_mask = example_inputs(3, sizes, seed=seed + 20)
        feeds = {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()}
        got = session.run(["logits", "pred_boxes", "pred_masks"], feeds)
        with torch.no_grad():
            expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        for name, value in zip(("logits", "pred_boxes", "pred_masks"), got):
            assert value.shape == tuple(expected[name].shape), (sizes, name)
            diff = float((torch.from_numpy(value) - expected[name]).abs().max())
            assert diff <= 1e-4, f"batch {sizes}, {name}: max |onnxruntime - torch| = {diff:.3g}"
