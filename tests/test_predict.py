"""examples/predict.py: image files and folders → detections.json (original pixels) and annotated PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detr_hf import DetrHfForObjectDetection
from detr_hf.data import make_synthetic_dataset
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
from helpers import tiny_config
from script_helpers import load_script


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
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a_png.png", "b_jpg.png", "c_png.png"]
    drawn = Image.open(tmp_path / "out" / "b_jpg.png")
    assert drawn.size == (120, 80)
    original = Image.open(folder / "b.jpg").convert("RGB")
    assert list(drawn.convert("RGB").getdata()) != list(original.getdata())  # boxes were drawn


def test_predict_rejects_missing_inputs(tmp_path, model_dir):
    with pytest.raises(ValueError, match="neither an image file nor a folder"):
        load_script("predict").main([str(tmp_path / "nope.png"), "--model", str(model_dir)])


def test_no_output_replaces_another(tmp_path, model_dir):
    """photo.jpg and photo.png give two pictures; the same name from another folder a third; a file named
    twice is predicted once."""
    data = make_synthetic_dataset(3, image_size=320, seed=4)
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    data[0]["image"].save(first / "photo.jpg")
    data[1]["image"].resize((400, 300)).save(first / "photo.png")
    data[2]["image"].resize((300, 500)).save(second / "photo.jpg")
    out = tmp_path / "out"
    results = load_script("predict").main(
        [str(first), str(second), str(first / "photo.jpg"), "--model", str(model_dir), "--output_dir", str(out)]
    )
    assert len(results) == 3
    drawn = {p.name: Image.open(p).size for p in out.glob("*.png")}
    assert drawn == {"photo_jpg.png": (320, 320), "photo_png.png": (400, 300), "photo_jpg-2.png": (300, 500)}


def test_sixteen_bit_greyscale_is_drawn_scaled_not_white(tmp_path, model_dir):
    ramp = (np.linspace(0, 65535, 400 * 300).reshape(300, 400)).astype(np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    out = tmp_path / "out"
    load_script("predict").main([str(path), "--model", str(model_dir), "--output_dir", str(out), "--threshold", "1"])
    drawn = np.asarray(Image.open(out / "depth_png.png").convert("L"), dtype=np.float64)
    expected = ramp / 65535 * 255
    assert np.abs(drawn - expected).max() <= 1.0
