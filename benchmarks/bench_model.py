"""Benchmark: DETR-R50 inference, training step, peak memory and FLOP/s, detr_hf vs transformers, same weights
(on the CPU or a CUDA device)."""

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
from common import (  # noqa: E402
    compare,
    machine_facts,
    peak_matmul_flops,
    synchronize,
    time_alternating,
    to_device,
)

NUM_LABELS = 91


# A tiny DETR for smoke runs of the benchmark plumbing (its figures mean nothing).
SMOKE_CONFIG = dict(
    backbone="test_resnet", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10,
)  # fmt: skip


def reference_config(smoke: bool = False):
    """transformers' DETR-R50 with a timm backbone, random weights (nothing is downloaded), aux loss on;
    `smoke`: a tiny DETR on timm's test_resnet instead."""
    from transformers import DetrConfig

    settings = dict(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False, num_labels=NUM_LABELS)
    return DetrConfig(**(settings | {"auxiliary_loss": True} | (SMOKE_CONFIG if smoke else {})))


def save_pair(folder: Path, seed: int = 0, smoke: bool = False) -> tuple[Path, Path]:
    """Write a random transformers DETR-R50 (tiny with `smoke`) and its detr_hf conversion (same weights)."""
    from transformers import DetrForObjectDetection

    from detr_hf.convert import convert_transformers_checkpoint

    torch.manual_seed(seed)
    reference_dir, ours_dir = folder / "transformers", folder / "detr_hf"
    DetrForObjectDetection(reference_config(smoke)).save_pretrained(reference_dir)
    convert_transformers_checkpoint(reference_dir, ours_dir)
    return reference_dir, ours_dir


def load(kind: str, folder: Path) -> torch.nn.Module:
    if kind == "transformers":
        from transformers import DetrForObjectDetection

        return DetrForObjectDetection.from_pretrained(folder)
    from detr_hf import DetrHfForObjectDetection

    return DetrHfForObjectDetection.from_pretrained(folder)


def make_batch(sizes: tuple[tuple[int, int], ...], seed: int = 0, device: str | torch.device = "cpu"):
    """Images padded bottom/right to the largest size, pixel_mask (1 = pixel), 3–8 boxes per image, on `device`."""
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
    return pixels.to(device), mask.to(device), to_device(labels, device)


BATCH_512 = ((512, 512), (512, 384))  # batch 2 padded to 512²
COCO_IMAGE = ((800, 1066),)
SMOKE_BATCH, SMOKE_IMAGE = ((128, 128), (128, 96)), ((160, 213),)


def training_step(model: torch.nn.Module, pixels, mask, labels) -> float:
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
    loss.backward()
    return float(loss.detach())


def bench_inference(models: dict, sizes, repeats: int, device: str = "cpu") -> dict:
    pixels, mask, _ = make_batch(sizes, device=device)
    for model in models.values():
        model.eval()

    def forward(model):
        with torch.inference_mode():
            return model(pixel_values=pixels, pixel_mask=mask)

    outs = {name: forward(model) for name, model in models.items()}
    diff = (outs["detr_hf"].logits - outs["transformers"].logits).abs().max().item()
    fns = {name: (lambda m=m: forward(m)) for name, m in models.items()}
    return compare(time_alternating(fns, repeats, device=device)) | {"max_abs_logit_diff": diff}


def bench_training(models: dict, sizes, repeats: int, device: str = "cpu") -> dict:
    pixels, mask, labels = make_batch(sizes, device=device)
    for model in models.values():
        model.train()
    times = time_alternating(
        {name: (lambda m=m: training_step(m, pixels, mask, labels)) for name, m in models.items()},
        repeats,
        device=device,
    )
    trainable = {
        f"{n}_trainable_params": sum(p.numel() for p in m.parameters() if p.requires_grad)
        for n, m in models.items()
    }
    return compare(times) | trainable


def bench_flops(models: dict, sizes, inference: dict, peak: float, device: str = "cpu") -> dict:
    """Model FLOPs of one inference forward (FlopCounterMode) and FLOP/s at the measured median time."""
    pixels, mask, _ = make_batch(sizes, device=device)
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


def rss_child(kind: str, folder: str, smoke: bool = False) -> None:
    """Run in a fresh process: load one model, reset the peak-RSS mark, run two training steps, print the
    peak RSS of the steps (MiB) as JSON. Loading can peak higher than training, so the mark is reset first."""
    model = load(kind, Path(folder)).train()
    pixels, mask, labels = make_batch(SMOKE_BATCH if smoke else BATCH_512)
    gc.collect()
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS
    for _ in range(2):
        training_step(model, pixels, mask, labels)
    print(json.dumps({"peak_rss_mib": _status_mib("VmHWM"), "rss_before_step_mib": before}))


def bench_rss(dirs: dict[str, Path], smoke: bool = False) -> dict:
    result = {}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name, folder in dirs.items():
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", name, str(folder), *(["--smoke"] if smoke else [])],
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


def bench_cuda_memory(models: dict, sizes, device: str) -> dict:
    """Peak CUDA memory allocated during a training step (MiB), each model alone on the device."""
    pixels, mask, labels = make_batch(sizes, device=device)
    result = {}
    for name, model in models.items():
        for other in models.values():
            other.to("cpu")
        model.to(device).train()
        training_step(model, pixels, mask, labels)  # warm-up: kernel choice, allocator caches
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        training_step(model, pixels, mask, labels)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        result[name] = {"peak_cuda_mib": peak / 2**20, "allocated_before_step_mib": before / 2**20}
    result["ratio"] = result["detr_hf"]["peak_cuda_mib"] / result["transformers"]["peak_cuda_mib"]
    return result


def _timed(results: dict, key: str, fn, *args) -> None:
    start = time.perf_counter()
    results[key] = fn(*args)
    print(
        f"{key}: {json.dumps(results[key])} ({time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def run(quick: bool = False, device: str = "cpu", smoke: bool = False) -> dict:
    """Every model benchmark; {"inference_512_b2": {...}, "inference_800x1066": ..., "training_step": ..., ...}.
    On CUDA the memory entry is the peak CUDA memory of a training step (`peak_cuda_training`) instead of
    the process's peak RSS. `smoke`: tiny models and images, one repeat (checks the plumbing only)."""
    results: dict = {}
    batch, image = (SMOKE_BATCH, SMOKE_IMAGE) if smoke else (BATCH_512, COCO_IMAGE)
    repeats = (1, 1, 1) if smoke else (3, 2, 2) if quick else (15, 9, 9)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = dict(zip(("transformers", "detr_hf"), save_pair(Path(tmp), smoke=smoke)))
        models = {name: load(name, folder).to(device) for name, folder in dirs.items()}
        _timed(results, "inference_512_b2", bench_inference, models, batch, repeats[0], device)
        _timed(results, "inference_800x1066", bench_inference, models, image, repeats[1], device)
        _timed(results, "training_step_512_b2", bench_training, models, batch, repeats[2], device)
        peak = peak_matmul_flops(256 if smoke else 2048, device=device)
        _timed(results, "flops_512_b2", bench_flops, models, batch, results["inference_512_b2"], peak, device)
        if torch.device(device).type == "cuda":
            _timed(results, "peak_cuda_training", bench_cuda_memory, models, batch, device)
        del models
        if torch.device(device).type == "cpu":
            _timed(results, "peak_rss_training", bench_rss, dirs, smoke)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--smoke", action="store_true", help="tiny models and images (plumbing check only)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rss-child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child, smoke=args.smoke)
        return
    start = time.perf_counter()
    report = {"machine": machine_facts(args.device), "model": run(args.quick, args.device, args.smoke)}
    print(json.dumps(report, indent=2))
    print(f"took {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
