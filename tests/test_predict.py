"""examples/predict.py: image files and folders → detections.json (original pixels) and annotated PNGs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import tiny_config
from detr_hf import DetrHfForObjectDetection
from detr_hf.data import make_synthetic_dataset
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from test_train_accelerate import load_script


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_queries=4, id2label={0: "square", 1: "circle", 2: "triangle"})
    DetrHfForObjectDetection(config).save_pretrained(tmp_path / "model")
    DetrHfImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_predict_writes_json_and_pngs(tmp_path, model_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    data = make_synthetic_dataset(2, image_size=64, seed=1)
    data[0]["image"].save(folder / "a.png")
    data[1]["image"].resize((120, 80)).save(folder / "b.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    extra = tmp_path / "c.png"
    data[0]["image"].save(extra)

    results = load_script("predict").main(
        [str(folder), str(extra), "--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--threshold", "0"]
    )
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert sorted(k.rsplit("/", 1)[1] for k in written) == ["a.png", "b.jpg", "c.png"]  # broken one skipped
    for path, detections in written.items():
        width, height = Image.open(path).size
        assert len(detections) == 4  # threshold 0 keeps every query
        for det in detections:
            x0, y0, x1, y1 = det["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
            assert det["label"] == ["square", "circle", "triangle"][det["label_id"]]
    drawn = Image.open(tmp_path / "out" / "b.png")
    assert drawn.size == (120, 80)
    original = Image.open(folder / "b.jpg").convert("RGB")
    assert list(drawn.convert("RGB").getdata()) != list(original.getdata())  # boxes were drawn


def test_predict_rejects_missing_inputs(tmp_path, model_dir):
    with pytest.raises(ValueError, match="neither an image file nor a folder"):
        load_script("predict").main([str(tmp_path / "nope.png"), "--model", str(model_dir)])
