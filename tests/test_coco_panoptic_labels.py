"""COCO panoptic names: 80 things at their detection ids, 53 stuff classes at 92..200, 250 ids in all."""

from __future__ import annotations

from detr_hf.coco_labels import coco_id2label
from detr_hf.coco_panoptic_labels import coco_panoptic_id2label, coco_panoptic_stuff_ids


def test_panoptic_names_extend_the_detection_names():
    names = coco_panoptic_id2label()
    assert list(names) == list(range(250))
    assert all(names[i] == name for i, name in coco_id2label().items())
    stuff = coco_panoptic_stuff_ids()
    assert len(stuff) == 53 and min(stuff) == 92 and max(stuff) == 200
    assert names[92] == "banner" and names[187] == "sky-other-merged" and names[201] == "N/A"
    assert sum(name != "N/A" for name in names.values()) == 133
