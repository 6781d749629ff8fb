"""Benchmark: DETR-R50 inference, training step, peak RSS and FLOP/s, detr_hf vs transformers, same weights."""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine_facts, peak_matmul_flops, time_alternating  # noqa: E402

NUM_LABELS = 91


def reference_config():
    """transformers' DETR-R50 with a timm backbone, random weights (nothing is downloaded), aux loss on."""
    from transformers import DetrConfig

    return DetrConfig(
        use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False, num_labels=NUM_LABELS,
        auxiliary_loss=True,
    )  # fmt: skip


def save_pair(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a random transformers DETR-R50 and its detr_hf conversion (same weights) under `folder`."""
    from transformers import DetrForObjectDetection

    from detr_hf.convert import convert_transformers_checkpoint

    torch.manual_seed(seed)
    reference_dir, ours_dir = folder / "transformers", folder / "detr_hf"
    DetrForObjectDetection(reference_config()).save_pretrained(reference_dir)
    convert_transformers_checkpoint(reference_dir, ours_dir)
    return reference_dir, ours_dir


def load(kind: str, folder: Path) -> torch.nn.Module:
    if kind == "transformers":
        from transformers import DetrForObjectDetection

        return DetrForObjectDetection.from_pretrained(folder)
    from detr_hf import DetrHfForObjectDetection

    return DetrHfForObjectDetection.from_pretrained(folder)


def make_batch(sizes: tuple[tuple[int, int], ...], seed: int = 0):
    """Images padded bottom/right to the largest size, pixel_mask (1 = pixel), 3–8 boxes per image."""
    gen = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixels = torch.zeros(len(sizes), 3, height, width)
    mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    labels = []
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=gen)
        mask[i, :h, :w] = 1
        n = int(torch.randint(3, 9, (1,), generator=gen))
        boxes = torch.cat(
            [torch.rand(n, 2, generator=gen) * 0.5 + 0.25, torch.rand(n, 2, generator=gen) * 0.3 + 0.1], 1
        )
        labels.append({"class_labels": torch.randint(0, NUM_LABELS, (n,), generator=gen), "boxes": boxes})
    return pixels, mask, labels


BATCH_512 = ((512, 512), (512, 384))  # batch 2 padded to 512²
COCO_IMAGE = ((800, 1066),)


def training_step(model: torch.nn.Module, pixels, mask, labels) -> float:
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
    loss.backward()
    return float(loss)


def bench_inference(models: dict, sizes, repeats: int) -> dict:
    pixels, mask, _ = make_batch(sizes)
    for model in models.values():
        model.eval()

    def forward(model):
        with torch.inference_mode():
            return model(pixel_values=pixels, pixel_mask=mask)

    outs = {name: forward(model) for name, model in models.items()}
    diff = (outs["detr_hf"].logits - outs["transformers"].logits).abs().max().item()
    times = time_alternating({name: (lambda m=m: forward(m)) for name, m in models.items()}, repeats)
    return compare(times) | {"max_abs_logit_diff": diff}


def bench_training(models: dict, sizes, repeats: int) -> dict:
    pixels, mask, labels = make_batch(sizes)
    for model in models.values():
        model.train()
    times = time_alternating(
        {name: (lambda m=m: training_step(m, pixels, mask, labels)) for name, m in models.items()}, repeats
    )
    trainable = {
        f"{n}_trainable_params": sum(p.numel() for p in m.parameters() if p.requires_grad)
        for n, m in models.items()
    }
    return compare(times) | trainable


def bench_flops(models: dict, sizes, inference: dict, peak: float) -> dict:
    """Model FLOPs of one inference forward (FlopCounterMode) and FLOP/s at the measured median time."""
    pixels, mask, _ = make_batch(sizes)
    result = {"machine_peak_gflops": peak / 1e9}
    for name, model in models.items():
        model.eval()
        counter = FlopCounterMode(display=False)
        # Grad mode on: the counter's module tracker hooks autograd (it fails under no_grad/inference_mode);
        # only forward FLOPs are counted, nothing is backpropagated.
        with counter:
            model(pixel_values=pixels, pixel_mask=mask)
        flops = counter.get_total_flops()
        achieved = flops / (inference[f"{name}_ms"] / 1e3)
        result[name] = {
            "gflops": flops / 1e9,
            "achieved_gflops_per_s": achieved / 1e9,
            "fraction_of_peak": achieved / peak,
        }
    return result


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_child(kind: str, folder: str) -> None:
    """Run in a fresh process: load one model, reset the peak-RSS mark, run two training steps, print the
    peak RSS of the steps (MiB) as JSON. Loading can peak higher than training, so the mark is reset first."""
    model = load(kind, Path(folder)).train()
    pixels, mask, labels = make_batch(BATCH_512)
    gc.collect()
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS
    for _ in range(2):
        training_step(model, pixels, mask, labels)
    print(json.dumps({"peak_rss_mib": _status_mib("VmHWM"), "rss_before_step_mib": before}))


def bench_rss(dirs: dict[str, Path]) -> dict:
    result = {}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name, folder in dirs.items():
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", name, str(folder)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"RSS child for {name} failed:\n{proc.stderr[-3000:]}")
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["ratio"] = result["detr_hf"]["peak_rss_mib"] / result["transformers"]["peak_rss_mib"]
    # The step's own memory (activations, gradients) above the loaded model.
    step = {n: result[n]["peak_rss_mib"] - result[n]["rss_before_step_mib"] for n in dirs}
    result["step_increment_ratio"] = step["detr_hf"] / max(step["transformers"], 1e-9)
    return result


def _timed(results: dict, key: str, fn, *args) -> None:
    start = time.perf_counter()
    results[key] = fn(*args)
    print(
        f"{key}: {json.dumps(results[key])} ({time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def run(quick: bool = False) -> dict:
    """Every model benchmark; {"inference_512_b2": {...}, "inference_800x1066": ..., "training_step": ..., ...}."""
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = dict(zip(("transformers", "detr_hf"), save_pair(Path(tmp))))
        models = {name: load(name, folder) for name, folder in dirs.items()}
        _timed(results, "inference_512_b2", bench_inference, models, BATCH_512, 3 if quick else 15)
        _timed(results, "inference_800x1066", bench_inference, models, COCO_IMAGE, 2 if quick else 9)
        _timed(results, "training_step_512_b2", bench_training, models, BATCH_512, 2 if quick else 9)
        peak = peak_matmul_flops()
        _timed(results, "flops_512_b2", bench_flops, models, BATCH_512, results["inference_512_b2"], peak)
        del models
        _timed(results, "peak_rss_training", bench_rss, dirs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--rss-child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    start = time.perf_counter()
    print(json.dumps({"machine": machine_facts(), "model": run(args.quick)}, indent=2))
    print(f"took {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
