"""Benchmark: detr_hf matcher + loss vs transformers' DETR loss on identical inputs (aux on, 6 layers), CPU or CUDA."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

from detr_hf.criterion import DetrHfLoss
from detr_hf.matcher import HungarianMatcher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import synchronize, to_device  # noqa: E402

LAYERS, QUERIES, NUM_LABELS = 6, 100, 91  # 92 logits: 91 labels + "no object"
BATCH_SIZES = (2, 8, 64)


def make_inputs(
    batch: int, seed: int = 0, queries: int = QUERIES, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stacked decoder outputs (logits [L, B, Q, C+1], box logits [L, B, Q, 4]) and 5–20 targets per image,
    on `device` (the outputs are leaves that require grad)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(LAYERS, batch, queries, NUM_LABELS + 1, generator=gen).to(device).requires_grad_(True)
    box_logits = torch.randn(LAYERS, batch, queries, 4, generator=gen).to(device).requires_grad_(True)
    labels = []
    for n in torch.randint(5, 21, (batch,), generator=gen).tolist():
        centers = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        labels.append(
            {
                "class_labels": torch.randint(0, NUM_LABELS, (n,), generator=gen),
                "boxes": torch.cat([centers, sizes], 1),
            }
        )
    return logits, box_logits, to_device(labels, device)


def loss_functions(logits, box_logits, labels) -> dict[str, Callable[[], torch.Tensor]]:
    ours = DetrHfLoss(NUM_LABELS, HungarianMatcher(1.0, 5.0, 2.0), 0.1, 5.0, 2.0, auxiliary_loss=True)
    config = types.SimpleNamespace(
        class_cost=1.0, bbox_cost=5.0, giou_cost=2.0, num_labels=NUM_LABELS, eos_coefficient=0.1,
        bbox_loss_coefficient=5.0, giou_loss_coefficient=2.0, auxiliary_loss=True, decoder_layers=LAYERS,
    )  # fmt: skip

    def detr_hf() -> torch.Tensor:
        boxes = box_logits.sigmoid()
        aux = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        return ours(logits[-1], boxes[-1], labels, aux)[0]

    def transformers() -> torch.Tensor:
        boxes = box_logits.sigmoid()
        return ForObjectDetectionLoss(
            logits[-1], labels, logits.device, boxes[-1], config, outputs_class=logits, outputs_coord=boxes
        )[0]

    return {"detr_hf": detr_hf, "transformers": transformers}


def time_alternating(
    fns: dict[str, Callable[[], torch.Tensor]], backward: bool, repeats: int, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Median seconds per call after one warm-up round; the order flips every round so neither candidate
    always runs right after the other. On CUDA the clock stops once the device has finished."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name in list(fns) if round_ % 2 else list(fns)[::-1]:
            synchronize(device)
            start = time.perf_counter()
            loss = fns[name]()
            if backward:
                loss.backward()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_:
                times[name].append(elapsed)
    return times


def run(quick: bool = False, device: str = "cpu", smoke: bool = False) -> dict:
    """Time both losses at B = 2, 8, 64 (`smoke`: B = 2 once); return {"B=…": {mode: {detr_hf_ms,
    transformers_ms, ratio}}, …}."""
    results: dict = {}
    for batch in BATCH_SIZES[:1] if smoke else BATCH_SIZES:
        logits, box_logits, labels = make_inputs(batch, device=device)
        fns = loss_functions(logits, box_logits, labels)
        values = {name: fn().item() for name, fn in fns.items()}
        entry: dict = {"loss_abs_diff": abs(values["detr_hf"] - values["transformers"])}
        repeats = 1 if smoke else (3 if batch >= 64 else 10) if quick else (9 if batch >= 64 else 30)
        for mode, backward in (("forward", False), ("forward+backward", True)):
            times = time_alternating(fns, backward, repeats, device)
            medians = {name: statistics.median(values) for name, values in times.items()}
            entry[mode] = {
                "detr_hf_ms": 1e3 * medians["detr_hf"],
                "transformers_ms": 1e3 * medians["transformers"],
                "ratio": medians["detr_hf"] / medians["transformers"],
                # Minimums are less sensitive to other load on the machine.
                "ratio_of_min": min(times["detr_hf"]) / min(times["transformers"]),
            }
        results[f"B={batch}"] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    print(f"matcher + loss, {LAYERS} decoder layers (aux on), {QUERIES} queries, {NUM_LABELS + 1} logits, "
          f"5-20 targets/image, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(
        f"{'batch':>6} {'mode':>17} {'detr_hf ms':>11} {'transformers ms':>16} {'ratio':>7} {'min ratio':>9}  |loss diff|"
    )
    for key, entry in run(args.quick, args.device).items():
        for mode in ("forward", "forward+backward"):
            m = entry[mode]
            print(
                f"{key:>6} {mode:>17} {m['detr_hf_ms']:11.2f} {m['transformers_ms']:16.2f} {m['ratio']:7.3f} {m['ratio_of_min']:9.3f}"
                f"  {entry['loss_abs_diff']:.2e}"
            )


if __name__ == "__main__":
    main()
