"""Fine-tuning keeps the checkpoint's class-head rows of known classes (by name, by COCO id) bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from detr_hf.coco_labels import coco_id2label
from detr_hf.training.class_head import plan_head_transfer, transfer_class_head
from helpers import make_coco_folder
from script_helpers import (
    COCO_AND_NEW_CATEGORIES,
    QUIET_RUN,
    coco_folder_argv,
    load_script,
    save_tiny_checkpoint,
)


def test_plan_matches_by_name_ignoring_case_and_underscores():
    plan = plan_head_transfer({0: "Traffic Light", 1: "car", 2: "N/A"}, ["car", "traffic_light", "N/A", "bus"])
    assert plan.rows == [1, 0, None, None]
    assert plan.new == ["N/A", "bus"] and not plan.identical


def test_plan_by_coco_id_for_a_coco_head():
    coco = coco_id2label()
    # A COCO folder naming COCO's categories its own way: names miss, ids hit; 95 is not a COCO class.
    plan = plan_head_transfer(coco, ["person", "motorbike", "widget"], category_ids=[1, 4, 95])
    assert plan.rows == [1, 4, None]
    assert plan.by_name == ["person<-1"] and plan.by_coco_id == ["motorbike<-4"] and plan.new == ["widget"]
    # Unnamed 91-label heads (LABEL_i) are indexed by COCO id too; a non-COCO head never matches by id.
    unnamed = {i: f"LABEL_{i}" for i in range(91)}
    assert plan_head_transfer(unnamed, ["a", "b"], category_ids=[18, 3]).rows == [18, 3]
    assert plan_head_transfer({0: "x", 1: "y"}, ["a"], category_ids=[1]).rows == [None]


def test_plan_of_the_same_labels_is_identical():
    assert plan_head_transfer({0: "a", 1: "b"}, ["a", "b"]).identical
    assert not plan_head_transfer({0: "a", 1: "b"}, ["b", "a"]).identical


def test_transfer_copies_rows_and_the_no_object_row():
    old_w, old_b = torch.randn(4, 8), torch.randn(4)  # 3 classes + no object
    head = torch.nn.Linear(8, 3)  # 2 classes + no object
    fresh = head.weight[0].clone()
    plan = plan_head_transfer({0: "a", 1: "b", 2: "c"}, ["new", "c"])
    transfer_class_head(head, old_w, old_b, plan)
    assert torch.equal(head.weight[0], fresh)
    assert torch.equal(head.weight[1], old_w[2]) and torch.equal(head.bias[1], old_b[2])
    assert torch.equal(head.weight[2], old_w[3]) and torch.equal(head.bias[2], old_b[3])
    with pytest.raises(ValueError, match="5 rows, expected 2 classes"):
        transfer_class_head(torch.nn.Linear(8, 5), old_w, old_b, plan)


def test_finetuning_a_coco_model_keeps_its_rows_bit_identical(tmp_path, caplog):
    """A converted-COCO-like 91-label checkpoint fine-tuned (1 step, lr 0) on a COCO folder with COCO ids 1, 3, 7,
    18 and a new id 95: the four rows and the no-object row stay bit-identical, the new row is fresh."""
    checkpoint = save_tiny_checkpoint(tmp_path / "coco_model", coco_id2label(), {"shortest_edge": 800, "longest_edge": 1333})
    coco = make_coco_folder(tmp_path / "coco", num_train=3, num_val=1, categories=COCO_AND_NEW_CATEGORIES)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        load_script("train").main(
            [*coco_folder_argv(coco), "--model_name_or_path", str(checkpoint), "--output_dir", str(out),
             "--max_train_steps", "1", "--learning_rate", "0", "--backbone_learning_rate", "0",
             "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1", "--checkpointing_steps", "no",
             *QUIET_RUN]
        )  # fmt: skip
    before = load_file(checkpoint / "model.safetensors")
    after = load_file(out / "model.safetensors")
    weight, bias = "class_labels_classifier.weight", "class_labels_classifier.bias"
    assert after[weight].shape == (6, 32)  # person, car, train, dog, widget + no object
    for new_row, coco_id in enumerate([1, 3, 7, 18]):
        assert torch.equal(after[weight][new_row], before[weight][coco_id]), coco_id
        assert torch.equal(after[bias][new_row], before[bias][coco_id]), coco_id
    assert torch.equal(after[weight][5], before[weight][91]) and torch.equal(after[bias][5], before[bias][91])
    assert not any(torch.equal(after[weight][4], before[weight][k]) for k in range(92))
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "person", "1": "car", "2": "train", "3": "dog", "4": "widget"}
    assert "kept 4 of the checkpoint's 91 class rows and its no-object row" in caplog.text
    assert "person<-1, car<-3, train<-7, dog<-18" in caplog.text and "1 new class(es) with fresh rows: widget" in caplog.text
