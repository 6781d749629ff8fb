"""COCO panoptic folders (json + PNG id maps + images) and the (train, validation) panoptic splits the scripts read."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from detr_hf.data.synthetic_panoptic import write_synthetic_panoptic_splits
from detr_hf.panoptic_quality import reference_from_coco_panoptic

__all__ = ["PanopticFolder", "load_panoptic_splits", "synthetic_panoptic_folder"]


class PanopticFolder:
    """A COCO panoptic split: `annotation_file` ({"images", "annotations": [{"image_id", "file_name",
    "segments_info"}], "categories": [{"id", "name", "isthing"}]}), the PNG id maps in `masks_dir` and the
    images in `image_dir`. Labels are the categories sorted by id (`category_ids[label]` = COCO id)."""

    def __init__(
        self, image_dir: str | os.PathLike, annotation_file: str | os.PathLike, masks_dir: str | os.PathLike
    ):
        self.image_dir, self.annotation_file, self.masks_dir = (
            Path(image_dir),
            Path(annotation_file),
            Path(masks_dir),
        )
        document = json.loads(self.annotation_file.read_text())
        for key in ("images", "annotations", "categories"):
            if not isinstance(document.get(key), list):
                raise ValueError(f"{self.annotation_file}: a COCO panoptic json needs a '{key}' list")
        categories = sorted(document["categories"], key=lambda c: int(c["id"]))
        for k, category in enumerate(categories):
            if not {"id", "name", "isthing"} <= set(category):
                raise ValueError(f"{self.annotation_file}: categories[{k}] needs 'id', 'name' and 'isthing'")
        self.categories = [
            {"id": int(c["id"]), "name": c["name"], "isthing": int(c["isthing"])} for c in categories
        ]
        self.category_ids = [c["id"] for c in self.categories]
        self.class_names = [c["name"] for c in self.categories]
        self.images = list(document["images"])
        records = {int(record["image_id"]): record for record in document["annotations"]}
        missing = [image["id"] for image in self.images if int(image["id"]) not in records]
        if missing:
            raise ValueError(
                f"{self.annotation_file}: images {missing[:10]} have no panoptic annotation record (file_name + segments_info)"
            )
        self.records = [records[int(image["id"])] for image in self.images]
        self.index_of_image_id = {int(image["id"]): i for i, image in enumerate(self.images)}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def stuff_labels(self) -> list[int]:
        """Labels of the stuff categories (fused into one segment per class by the panoptic post-processing)."""
        return [k for k, c in enumerate(self.categories) if not c["isthing"]]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def reference(self, image_id: int) -> dict[str, Any]:
        """The ground truth {"segmentation" [H, W] ids, "segments_info"} of an image (crowd segments included)."""
        return reference_from_coco_panoptic(
            self.records[self.index_of_image_id[int(image_id)]], self.masks_dir
        )


def _first_dir(*candidates: Path) -> Path:
    return next((path for path in candidates if path.is_dir()), candidates[-1])


def _open_split(root: Path, annotations: str, masks: str | None, split: str) -> PanopticFolder:
    annotation_file = root / annotations
    if not annotation_file.is_file():
        raise ValueError(
            f"COCO panoptic annotation file {annotation_file} does not exist (see --{split}_annotations)"
        )
    stem = annotation_file.stem  # panoptic_train2017
    # PNGs: --{split}_masks, else annotations/panoptic_train2017/ next to the json, else <root>/panoptic_train2017/.
    masks_dir = root / masks if masks else _first_dir(annotation_file.with_suffix(""), root / stem)
    if not masks_dir.is_dir():
        raise ValueError(f"panoptic PNG folder {masks_dir} does not exist (see --{split}_masks)")
    image_dir = _first_dir(root / stem.removeprefix("panoptic_"), root)
    return PanopticFolder(image_dir, annotation_file, masks_dir)


def synthetic_panoptic_folder(
    root: str | os.PathLike, num_train: int, num_validation: int, *, image_size: int, seed: int
) -> Path:
    """The built-in synthetic panoptic splits under `root/seed{seed}_{size}px_{n}+{m}`, written once (atomically:
    into a temporary folder renamed into place, so concurrent processes never read a half-written split)."""
    target = Path(root) / f"seed{seed}_{image_size}px_{num_train}+{num_validation}"
    if (target / "COMPLETE").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    sides = (max(4, image_size // 8), max(4, image_size * 3 // 8))
    write_synthetic_panoptic_splits(
        scratch, num_train, num_validation, seed=seed, image_size=image_size, side_range=sides
    )
    (scratch / "COMPLETE").write_text("{}")
    try:
        os.rename(scratch, target)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_panoptic_splits(
    coco_dir: str | None = None,
    *,
    train_annotations: str | None = None,
    val_annotations: str | None = None,
    train_masks: str | None = None,
    val_masks: str | None = None,
    synthetic_dir: str | os.PathLike = "outputs/synthetic_panoptic",
    num_train: int = 2000,
    num_validation: int = 100,
    image_size: int = 64,
    seed: int = 0,
) -> tuple[PanopticFolder, PanopticFolder]:
    """(train, validation) panoptic folders.

    - `coco_dir`: the COCO panoptic layout `annotations/panoptic_{train,val}2017.json` (or the given jsons,
      relative to `coco_dir`), PNGs in the folder named like the json (`annotations/panoptic_train2017/`, else
      `<coco_dir>/panoptic_train2017/`, or `train_masks` / `val_masks`), images in `train2017/` / `val2017/`
      (the json's name without `panoptic_`, else `coco_dir` itself);
    - else the built-in synthetic panoptic shapes, written once under `synthetic_dir`.
    """
    if coco_dir is None:
        root = synthetic_panoptic_folder(
            synthetic_dir, num_train, num_validation, image_size=image_size, seed=seed
        )
        train_annotations, val_annotations = (
            "annotations/panoptic_train.json",
            "annotations/panoptic_validation.json",
        )
    else:
        root = Path(coco_dir)
        if not root.is_dir():
            raise ValueError(f"--coco_dir {root} is not a folder")
    train = _open_split(
        root, train_annotations or "annotations/panoptic_train2017.json", train_masks, "train"
    )
    val = _open_split(root, val_annotations or "annotations/panoptic_val2017.json", val_masks, "val")
    if train.categories != val.categories:
        raise ValueError(
            f"{train.annotation_file} and {val.annotation_file} have different categories: "
            f"{train.categories} vs {val.categories}"
        )
    return train, val
