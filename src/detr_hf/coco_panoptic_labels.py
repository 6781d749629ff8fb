"""COCO panoptic category names by raw category id (80 things + 53 stuff), as DETR's 250-class panoptic head uses them."""

from __future__ import annotations

from .coco_labels import UNUSED_LABEL, coco_id2label

# The 53 "stuff" categories of COCO panoptic (panopticapi's panoptic_coco_categories.json); ids 92..200.
_STUFF_NAMES_BY_ID = {
    92: "banner", 93: "blanket", 95: "bridge", 100: "cardboard", 107: "counter", 109: "curtain",
    112: "door-stuff", 118: "floor-wood", 119: "flower", 122: "fruit", 125: "gravel", 128: "house", 130: "light",
    133: "mirror-stuff", 138: "net", 141: "pillow", 144: "platform", 145: "playingfield", 147: "railroad",
    148: "river", 149: "road", 151: "roof", 154: "sand", 155: "sea", 156: "shelf", 159: "snow", 161: "stairs",
    166: "tent", 168: "towel", 171: "wall-brick", 175: "wall-stone", 176: "wall-tile", 177: "wall-wood",
    178: "water-other", 180: "window-blind", 181: "window-other", 184: "tree-merged", 185: "fence-merged",
    186: "ceiling-merged", 187: "sky-other-merged", 188: "cabinet-merged", 189: "table-merged",
    190: "floor-other-merged", 191: "pavement-merged", 192: "mountain-merged", 193: "grass-merged",
    194: "dirt-merged", 195: "paper-merged", 196: "food-other-merged", 197: "building-other-merged",
    198: "rock-merged", 199: "wall-other-merged", 200: "rug-merged",
}  # fmt: skip

# The original panoptic DETR trains with num_classes = 250 (ids 0..249) plus the "no object" row.
COCO_PANOPTIC_NUM_LABELS = 250


def coco_panoptic_id2label() -> dict[int, str]:
    """{raw COCO panoptic category id: name} for ids 0..249; ids no category uses map to "N/A"."""
    things = coco_id2label()
    return {
        i: things.get(i, _STUFF_NAMES_BY_ID.get(i, UNUSED_LABEL)) for i in range(COCO_PANOPTIC_NUM_LABELS)
    }


def coco_panoptic_stuff_ids() -> frozenset[int]:
    """Category ids of the 53 stuff classes (the rest of the named ids are things)."""
    return frozenset(_STUFF_NAMES_BY_ID)
