"""Options of DetrHfImageProcessor: the resize rule, option validation and the unknown-option policy."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from torchvision.transforms.v2 import functional as tvF

__all__ = [
    "ANNOTATION_FORMATS",
    "check_format",
    "check_multiple",
    "check_pad_size",
    "check_size",
    "interpolation",
    "per_channel",
    "resample_code",
    "resized_size",
    "warn_unknown_options",
]

logger = logging.getLogger(__name__)

# PIL resampling codes (what transformers writes to JSON) → torchvision modes, as transformers' torchvision
# processors map them (nearest → NEAREST_EXACT). BOX (4) and HAMMING (5) have no tensor kernel in torchvision.
_RESAMPLE = {
    0: tvF.InterpolationMode.NEAREST_EXACT,
    1: tvF.InterpolationMode.LANCZOS,
    2: tvF.InterpolationMode.BILINEAR,
    3: tvF.InterpolationMode.BICUBIC,
}
_RESAMPLE_NAMES = {"nearest": 0, "nearest_exact": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}
_SIZE_FORMS = (
    {"shortest_edge"},
    {"shortest_edge", "longest_edge"},
    {"height", "width"},
    {"max_height", "max_width"},
)
# Annotation formats transformers' DETR processors name; the processor dispatches on these.
ANNOTATION_FORMATS = ("coco_detection", "coco_panoptic")


def resized_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """Output (h, w) for an input of `height`×`width` under a `size` rule (the same rule as transformers' DETR).

    - {"shortest_edge": s, "longest_edge": l}: short side → s unless the long side would exceed l, then long side → l.
    - {"shortest_edge": s}: short side → s.
    - {"max_height": H, "max_width": W}: largest aspect-preserving size within H×W.
    - {"height": H, "width": W}: exactly H×W.
    Sides never drop below 1 px (transformers returns 0 for a 1×4000 image and then fails).
    """
    if "height" in size:
        return int(size["height"]), int(size["width"])
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return max(1, int(height * scale)), max(1, int(width * scale))
    short, long = min(height, width), max(height, width)
    target: float = size["shortest_edge"]
    exact = None
    longest = size.get("longest_edge")
    if longest is not None and long / short * target > longest:
        exact = longest * short / long  # the short side that puts the long side exactly on `longest`
        target = int(round(exact))
    if short == target:
        return height, width
    # Like transformers: the long side is truncated from the unrounded short side when the cap applied.
    ratio_source = exact if exact is not None else target
    if width < height:
        new_h, new_w = int(ratio_source * height / width), target
    else:
        new_h, new_w = target, int(ratio_source * width / height)
    return max(1, int(new_h)), max(1, int(new_w))


def check_size(size: Any, name: str) -> dict[str, int]:
    if size is None:
        return {"shortest_edge": 800, "longest_edge": 1333}
    if isinstance(size, int) and not isinstance(size, bool):
        size = {"shortest_edge": size, "longest_edge": 1333}
    if not isinstance(size, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(size).__name__}")
    size = {k: v for k, v in dict(size).items() if v is not None}
    if set(size) not in _SIZE_FORMS:
        raise ValueError(
            f"{name} must have keys {{'shortest_edge'[, 'longest_edge']}}, {{'height', 'width'}} or "
            f"{{'max_height', 'max_width'}}; got {size}"
        )
    for key, value in size.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}[{key!r}] must be a positive integer, got {value!r}")
    return size


def check_pad_size(pad_size: Any) -> dict[str, int] | None:
    if pad_size is None:
        return None
    if isinstance(pad_size, Mapping):
        # transformers writes every SizeDict field, most of them null.
        pad_size = {k: v for k, v in pad_size.items() if v is not None}
    if not isinstance(pad_size, Mapping) or set(pad_size) != {"height", "width"}:
        raise ValueError(f"pad_size must be {{'height': H, 'width': W}}, got {pad_size!r}")
    return check_size(pad_size, "pad_size")


def check_multiple(multiple: Any) -> int | None:
    if multiple is None:
        return None
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {multiple!r}")
    return multiple


def resample_code(resample: Any) -> int:
    """A PIL resampling code, name or torchvision mode → the PIL code (what is saved in JSON)."""
    if isinstance(resample, tvF.InterpolationMode):
        resample = resample.value
    if isinstance(resample, str):
        if resample.lower() not in _RESAMPLE_NAMES:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE_NAMES)}, got {resample!r}")
        return _RESAMPLE_NAMES[resample.lower()]
    code = int(resample)
    if code not in _RESAMPLE:
        raise ValueError(
            f"resample must be nearest (0), lanczos (1), bilinear (2) or bicubic (3), got {resample!r} "
            "(box (4) and hamming (5) have no tensor kernel)"
        )
    return code


def interpolation(code: int) -> tvF.InterpolationMode:
    return _RESAMPLE[code]


def per_channel(value: Any, name: str) -> list[float]:
    """A scalar or 1-4 per-channel values → a list of floats (the channel count is checked per image)."""
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    if not 1 <= len(values) <= 4:
        raise ValueError(f"{name} must have 1 to 4 values (one per channel), got {value!r}")
    return values


def check_format(format: Any) -> str:
    """'coco_detection' / 'coco_panoptic' (or transformers' AnnotationFormat enum) → the plain string."""
    value = str(getattr(format, "value", format))
    if value not in ANNOTATION_FORMATS:
        raise ValueError(f"format must be one of {list(ANNOTATION_FORMATS)}, got {format!r}")
    return value


def warn_unknown_options(names: Iterable[str], known: Iterable[str], where: str, action: str) -> None:
    """One warning per unknown option, with the closest known name; `action` says what happens to it."""
    known = list(known)
    for name in sorted(names):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        logger.warning("%s: unknown option %r %s%s", where, name, action, hint)
