"""Timing helpers shared by the benchmarks: alternating runs with warm-up, medians, machine facts, peak FLOP/s,
and the device plumbing (CPU or CUDA: where tensors go, how a timed call waits for the device)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

NO_CUDA_MESSAGE = "no CUDA device present (torch.cuda.is_available() is False): run with --device cpu"


def synchronize(device: str | torch.device) -> None:
    """Wait until `device` has finished its queued work (CUDA kernels run asynchronously); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def to_device(labels: list[dict[str, torch.Tensor]], device: str | torch.device) -> list[dict[str, torch.Tensor]]:
    """Label dicts with every tensor moved to `device`."""
    return [{key: value.to(device) for key, value in label.items()} for label in labels]


def time_alternating(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device: str | torch.device = "cpu"
) -> dict[str, list[float]]:
    """Seconds per call of each candidate. After `warmup` untimed rounds, every round runs all candidates,
    the order reversed every other round so neither always runs right after the other (cache, turbo, load).
    On CUDA the clock stops only once the device has finished the call's kernels."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def compare(times: dict[str, list[float]], ours: str = "detr_hf", reference: str = "transformers") -> dict:
    """Medians in ms, min in ms, and the ratio of medians ours ÷ reference."""
    med = {name: statistics.median(values) for name, values in times.items()}
    result = {f"{name}_ms": 1e3 * value for name, value in med.items()}
    result |= {f"{name}_min_ms": 1e3 * min(values) for name, values in times.items()}
    result["repeats"] = len(times[ours])
    result["ratio"] = med[ours] / med[reference]
    # Best-of ratio: on a machine shared with other jobs the fastest run is the least disturbed one.
    result["ratio_of_min"] = min(times[ours]) / min(times[reference])
    return result


def peak_matmul_flops(size: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """The machine's practical fp32 peak at the current thread count: the best FLOP/s of a large GEMM, run
    both as a square matmul (torch's BLAS) and as a 1×1 channels-last convolution (oneDNN).

    Both are measured because the libraries differ by machine: on AMD CPUs MKL's matmul stays off the
    AVX-512 path while oneDNN's convolutions use it, so the matmul alone understates what the model's
    convolutions can reach.
    """
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    matmul_flops = 2 * size**3
    conv = torch.nn.Conv2d(size // 2, size // 2, 1, bias=False).eval().to(device, memory_format=torch.channels_last)
    x = torch.randn(4, size // 2, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    conv_flops = 2 * (size // 2) ** 2 * 4 * 64 * 64
    best = 0.0
    with torch.no_grad():
        for run, flops in ((lambda: a @ b, matmul_flops), (lambda: conv(x), conv_flops)):
            run()  # warm-up (thread pool, allocation, kernel choice)
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                run()
                synchronize(device)
                best = max(best, flops / (time.perf_counter() - start))
    return best


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(device: str | torch.device = "cpu") -> dict:
    """What a reader needs to compare figures across machines: CPU, cores, threads, load, versions, the GPU."""
    facts = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        facts["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    if torch.device(device).type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts["gpu"] = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"
        facts["cuda"] = torch.version.cuda
        facts["bf16_supported"] = torch.cuda.is_bf16_supported()
    facts["versions"] = {pkg: _version(pkg) for pkg in ("torch", "transformers", "timm", "detr_hf")}
    return facts


def write_report(out: Path, stem: str, quick: bool, seconds: float, results: dict, table: str) -> None:
    """out/<stem>.json (machine facts + results) and out/<stem>.md (the table); the table is printed too."""
    report = {"machine": machine_facts(), "quick": quick, "seconds": seconds} | results
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    print(table)


def chosen_names(text: str, known, flag: str = "--settings") -> list[str]:
    """The comma-separated names of `text`, each one of `known` (a ValueError naming the flag otherwise)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{flag}: unknown setting(s) {unknown}; known: {list(known)}")
    return names
