"""A COCO annotation json parsed and checked fast: whole-list checks, annotations grouped by image in arrays."""

from __future__ import annotations

import gc
import json
from collections import Counter
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # the standard library parses the same files, ~3x slower
    orjson = None

__all__ = ["CocoIndex", "read_coco_json"]

_NUMBER_TYPES = {int, float, bool}  # what `isinstance(v, int | float)` admits among json values


def _loads(data: bytes) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN/Infinity literals, integers beyond 64 bits, a BOM: the standard library reads those
    return json.loads(data)


def read_coco_json(annotation_file: Path) -> dict:
    """The json object of `annotation_file` with its three top-level lists checked. The cyclic garbage
    collector is paused while parsing: the millions of new containers would otherwise trigger many full
    collections that find nothing (most of the standard library's parse time on COCO train2017)."""
    data = annotation_file.read_bytes()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        coco = _loads(data)
    finally:
        if was_enabled:
            gc.enable()
    if not isinstance(coco, dict):
        raise ValueError(f"{annotation_file}: expected a COCO json object, got {type(coco).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{annotation_file}: missing or invalid top-level list {key!r}")
    return coco


def category_table(categories: list[dict], annotation_file: str) -> tuple[list[int], list[str]]:
    """COCO ids (any order, gaps allowed) in ascending order, and their names: label i is category_ids[i]."""
    by_id: dict[int, str] = {}
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise ValueError(f"{annotation_file}: categories[{k}] lacks 'id' or 'name'")
        if int(cat["id"]) in by_id:
            raise ValueError(f"{annotation_file}: category id {cat['id']} appears twice")
        by_id[int(cat["id"])] = str(cat["name"])
    names = [by_id[i] for i in sorted(by_id)]
    if len(set(names)) != len(names):
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{annotation_file}: category names must be unique, repeated: {duplicated}")
    return sorted(by_id), names


def _check_annotation(ann: Any, k: int, labels: dict[int, int], rows: dict, annotation_file: Path) -> None:
    """The per-annotation check, run only when the whole-list checks found a problem (to name it)."""
    if not isinstance(ann, dict):
        raise ValueError(f"{annotation_file}: annotations[{k}] is a {type(ann).__name__}, not a json object")
    ann_id = ann.get("id", f"#{k}")
    if ann.get("category_id") not in labels:
        raise ValueError(
            f"{annotation_file}: annotation id {ann_id} has category_id {ann.get('category_id')!r}, "
            f"not among the categories {sorted(labels)}"
        )
    if ann.get("image_id") not in rows:
        raise ValueError(f"{annotation_file}: annotation id {ann_id} names unknown image_id {ann.get('image_id')!r}")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
        raise ValueError(f"{annotation_file}: annotation id {ann_id} has bbox {bbox!r}, expected [x, y, w, h]")


def _all_well_formed(annotations: list, labels: dict, rows: dict) -> bool:
    """Whether every annotation passes `_check_annotation`, tested list-wide (C-level loops, no per-item frame)."""
    if annotations and set(map(type, annotations)) != {dict}:
        return False
    try:
        if not labels.keys() >= {a.get("category_id") for a in annotations}:
            return False
        if not rows.keys() >= {a.get("image_id") for a in annotations}:
            return False
    except TypeError:  # an unhashable id: the per-annotation check reports it
        return False
    boxes = [a.get("bbox") for a in annotations]
    if boxes and (set(map(type, boxes)) != {list} or set(map(len, boxes)) != {4}):
        return False
    return set(map(type, chain.from_iterable(boxes))) <= _NUMBER_TYPES


class CocoIndex:
    """The checked label space and image → annotations grouping of a parsed COCO json.

    - `category_ids[i]` / `class_names[i]`: COCO id and name of label i (ascending id); `label_of[id]` = i.
    - An image without 'id' or 'file_name', a repeated image id, an annotation naming an unknown category
      or image, or a malformed bbox → ValueError naming it (the same checks and messages as a per-annotation
      loop; that loop runs only once a list-wide check has failed, to find and name the culprit).
    - `annotations_of(row)`: the annotations of image `row` (json order), as the json's own dicts.
    """

    def __init__(self, coco: dict, annotation_file: Path) -> None:
        self.category_ids, self.class_names = category_table(coco["categories"], str(annotation_file))
        self.label_of = {coco_id: label for label, coco_id in enumerate(self.category_ids)}
        images, self._annotations = coco["images"], coco["annotations"]
        for k, img in enumerate(images):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise ValueError(f"{annotation_file}: images[{k}] lacks 'id' or 'file_name'")
        image_ids = [img["id"] for img in images]
        rows = {image_id: row for row, image_id in enumerate(image_ids)}
        if len(rows) != len(images):
            repeated = [image_id for image_id, count in Counter(image_ids).items() if count > 1]
            raise ValueError(f"{annotation_file}: repeated image ids, e.g. {repeated[:5]}")
        if not _all_well_formed(self._annotations, self.label_of, rows):
            for k, ann in enumerate(self._annotations):
                _check_annotation(ann, k, self.label_of, rows, annotation_file)
        # Annotation k belongs to image row image_rows[k]; `order` lists annotation indices grouped by row
        # (stable: json order within a row), image `row`'s are order[starts[row]:starts[row + 1]].
        image_ids_of_annotations = map(itemgetter("image_id"), self._annotations)
        image_rows = np.fromiter(map(rows.__getitem__, image_ids_of_annotations), np.int64, len(self._annotations))
        self._order = np.argsort(image_rows, kind="stable")
        self._starts = np.concatenate([[0], np.cumsum(np.bincount(image_rows, minlength=len(images)))])

    def annotations_of(self, row: int) -> list[dict]:
        indices = self._order[self._starts[row] : self._starts[row + 1]].tolist()
        return [self._annotations[k] for k in indices]
