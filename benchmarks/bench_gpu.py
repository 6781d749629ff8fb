"""Benchmark (CUDA only): DETR-R50 under fp32 / AMP bf16 / AMP fp16 × contiguous / channels-last, detr_hf vs
transformers, and the matcher's device→host round trip timed apart from its device work."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loss import LAYERS, NUM_LABELS, make_inputs  # noqa: E402
from bench_model import BATCH_512, COCO_IMAGE, load, make_batch, save_pair  # noqa: E402
from common import NO_CUDA_MESSAGE, compare, machine_facts, synchronize, time_alternating  # noqa: E402
from detr_hf.matcher import HungarianMatcher  # noqa: E402
from detr_hf.targets import pack_targets  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MATCHER_BATCHES = (2, 8, 64)


def precisions(device: str) -> dict[str, torch.dtype | None]:
    """The precisions this device runs: bf16 only where the GPU supports it."""
    return {k: v for k, v in PRECISIONS.items() if v is not torch.bfloat16 or torch.cuda.is_bf16_supported()}


def autocast(device: str, dtype: torch.dtype | None):
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def bench_precision_and_layout(models: dict, device: str, quick: bool) -> dict:
    """Inference (800×1066, batch 1; 512², batch 2) and a training step (512², batch 2) for every precision ×
    memory format. AMP wraps the forward and the loss; the backward runs outside, as accelerate does it."""
    results: dict = {}
    repeats = 3 if quick else 15
    for layout in ("contiguous", "channels_last"):
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for model in models.values():
            model.to(memory_format=memory_format)
        for precision, dtype in precisions(device).items():
            for key, sizes in (("inference_800x1066", COCO_IMAGE), ("inference_512_b2", BATCH_512)):
                pixels, mask, _ = make_batch(sizes, device=device)
                pixels = pixels.contiguous(memory_format=memory_format)

                def infer(model, pixels=pixels, mask=mask, dtype=dtype):
                    with torch.inference_mode(), autocast(device, dtype):
                        return model.eval()(pixel_values=pixels, pixel_mask=mask)

                fns = {name: (lambda m=m: infer(m)) for name, m in models.items()}
                results[f"{key}_{precision}_{layout}"] = compare(time_alternating(fns, repeats, device=device))
            pixels, mask, labels = make_batch(BATCH_512, device=device)
            pixels = pixels.contiguous(memory_format=memory_format)

            def step(model, pixels=pixels, mask=mask, labels=labels, dtype=dtype):
                model.train().zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    loss = model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
                loss.backward()

            fns = {name: (lambda m=m: step(m)) for name, m in models.items()}
            results[f"training_step_512_b2_{precision}_{layout}"] = compare(
                time_alternating(fns, max(2, repeats // 2), device=device)
            )
            print(f"{layout} {precision} done", file=sys.stderr, flush=True)
    return results


def _event_ms(fn, *args) -> tuple[object, float]:
    """(fn(*args), device milliseconds between CUDA events around the call)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn(*args)
    end.record()
    end.synchronize()
    return out, start.elapsed_time(end)


def bench_matcher_round_trip(device: str, quick: bool) -> dict:
    """Per batch size (6 stacked layers, 100 queries): the cost blocks on the device (CUDA events), the
    device→host copy of the costs (float64, what scipy takes), the host assignments, and the whole matcher
    (wall clock), medians in ms."""
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    results: dict = {}
    for batch in MATCHER_BATCHES:
        logits, box_logits, labels = make_inputs(batch, device=device)
        logits, boxes = logits.detach(), box_logits.detach().sigmoid()
        targets = pack_targets(labels, batch, NUM_LABELS, torch.device(device), torch.float32)
        parts: dict[str, list[float]] = {"cost_on_device_ms": [], "copy_to_host_ms": [], "assignment_on_host_ms": []}
        parts["whole_matcher_ms"] = []
        for round_ in range(1 + (3 if quick else 11)):
            cost, cost_ms = _event_ms(matcher.cost_blocks, logits, boxes, targets)
            synchronize(device)
            start = time.perf_counter()
            host = cost.to(device="cpu", dtype=torch.float64).numpy()
            copy_ms = 1e3 * (time.perf_counter() - start)
            start = time.perf_counter()
            for layer in range(LAYERS):
                for image, n in enumerate(targets.counts):
                    linear_sum_assignment(host[layer, image, :, :n])
            solve_ms = 1e3 * (time.perf_counter() - start)
            synchronize(device)
            start = time.perf_counter()
            matcher.match_layers(logits, boxes, targets)
            whole_ms = 1e3 * (time.perf_counter() - start)
            if round_:
                for name, value in zip(parts, (cost_ms, copy_ms, solve_ms, whole_ms)):
                    parts[name].append(value)
        results[f"B={batch}"] = {name: sorted(v)[len(v) // 2] for name, v in parts.items()}
    return results


def run(quick: bool = False, device: str = "cuda", smoke: bool = False) -> dict:
    """Every GPU-only benchmark on `device` (a CUDA device; `smoke` is accepted for the suite interface and
    changes nothing: this suite only runs on a GPU)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(NO_CUDA_MESSAGE)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = dict(zip(("transformers", "detr_hf"), save_pair(Path(tmp))))
        models = {name: load(name, folder).to(device) for name, folder in dirs.items()}
        results["precision_and_layout"] = bench_precision_and_layout(models, device, quick)
    results["matcher_round_trip"] = bench_matcher_round_trip(device, quick)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device", default="cuda", help="a CUDA device (cuda, cuda:1, ...)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"machine": machine_facts(args.device), "gpu": run(args.quick, args.device)}, indent=2))


if __name__ == "__main__":
    main()
