"""Benchmark: how cost grows, detr_hf vs transformers on the same axes — inference against image size and batch,
the training step against batch, matcher + loss against batch and number of queries. Writes
benchmarks/results/scaling.{json,md,png} (log-log plot, one panel per axis).

python benchmarks/bench_scaling.py                  # DETR-R50, ~10 min on 2 cores (guard: --max_seconds 900)
python benchmarks/bench_scaling.py --quick          # tiny model and sizes: a smoke run of the plumbing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_loss  # noqa: E402
from bench_model import load, make_batch, save_pair, training_step  # noqa: E402
from common import time_alternating, write_report  # noqa: E402

HERE = Path(__file__).resolve().parent
NAMES = ("detr_hf", "transformers")
# Points of each axis, cheapest first, so that the time guard drops the most expensive ones.
FULL = {
    "inference_vs_size": (256, 384, 512, 800, 1066, 1333),  # long side; 4:3 landscape, batch 1
    "inference_vs_batch": (1, 2, 4, 8, 16),  # 384×384 images
    "training_vs_batch": (1, 2, 4, 8),  # 384×384 images
    "loss_vs_batch": (1, 2, 4, 8, 16, 32, 64),  # 100 queries, forward + backward
    "loss_vs_queries": (100, 200, 300, 600, 900),  # batch 8, forward + backward
}
QUICK = {
    "inference_vs_size": (64, 128),
    "inference_vs_batch": (1, 2),
    "training_vs_batch": (1, 2),
    "loss_vs_batch": (1, 2),
    "loss_vs_queries": (10, 20),
}
BATCH_SIDE = {"full": 384, "quick": 64}
LOSS_QUERIES_BATCH = 8
AXIS_LABELS = {
    "inference_vs_size": "long side of the image (px), batch 1",
    "inference_vs_batch": "batch size (inference)",
    "training_vs_batch": "batch size (training step)",
    "loss_vs_batch": "batch size (matcher + loss, fwd + bwd)",
    "loss_vs_queries": f"object queries (matcher + loss, batch {LOSS_QUERIES_BATCH})",
}


def _medians_ms(times: dict[str, list[float]]) -> dict[str, float]:
    return {f"{name}_ms": 1e3 * statistics.median(values) for name, values in times.items()}


def model_point(models: dict, axis: str, value: int, side: int, repeats: int) -> dict:
    if axis == "inference_vs_size":
        sizes = ((round(value * 3 / 4), value),)
    else:
        sizes = ((side, side),) * value
    pixels, mask, labels = make_batch(sizes)
    if axis == "training_vs_batch":
        fns = {n: (lambda m=m: training_step(m.train(), pixels, mask, labels)) for n, m in models.items()}
    else:

        def forward(model):
            with torch.inference_mode():
                return model.eval()(pixel_values=pixels, pixel_mask=mask)

        fns = {n: (lambda m=m: forward(m)) for n, m in models.items()}
    return _medians_ms(time_alternating(fns, repeats))


def loss_point(axis: str, value: int, repeats: int) -> dict:
    batch, queries = (value, bench_loss.QUERIES) if axis == "loss_vs_batch" else (LOSS_QUERIES_BATCH, value)
    fns = bench_loss.loss_functions(*bench_loss.make_inputs(batch, queries=queries))
    return _medians_ms(bench_loss.time_alternating(fns, True, repeats))


def run(quick: bool = False, max_seconds: float = 900.0, repeats: int | None = None) -> dict:
    """{axis: [{"x": value, "detr_hf_ms": ..., "transformers_ms": ..., "ratio": ...}, ...], "skipped": [...]}."""
    points = QUICK if quick else FULL
    side = BATCH_SIDE["quick" if quick else "full"]
    repeats = repeats or (1 if quick else 3)
    start = time.perf_counter()
    results: dict = {axis: [] for axis in points} | {"skipped": []}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = dict(zip(("transformers", "detr_hf"), save_pair(Path(tmp), smoke=quick)))
        models = {name: load(name, dirs[name]) for name in NAMES}
        for axis, values in points.items():
            for value in values:
                if time.perf_counter() - start > max_seconds:
                    results["skipped"].append({"axis": axis, "x": value})
                    continue
                if axis.startswith("loss"):
                    entry = loss_point(axis, value, repeats * 3)
                else:
                    entry = model_point(models, axis, value, side, repeats)
                entry = {"x": value, **entry, "ratio": entry["detr_hf_ms"] / entry["transformers_ms"]}
                results[axis].append(entry)
                print(f"{axis} {value}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    results["settings"] = {
        "model": "tiny DETR on timm test_resnet (smoke)" if quick else "DETR-R50, 6+6 layers, 100 queries, aux loss",
        "batch_image_side": side, "repeats": repeats, "max_seconds": max_seconds,
        "loss": f"{bench_loss.LAYERS} decoder layers (aux on), 5-20 targets per image",
    }  # fmt: skip
    return results


def markdown(results: dict) -> str:
    lines = ["| axis | x | detr_hf (ms) | transformers (ms) | ratio detr_hf ÷ transformers |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for axis, label in AXIS_LABELS.items():
        for e in results.get(axis, []):
            lines.append(f"| {label} | {e['x']} | {e['detr_hf_ms']:.1f} | {e['transformers_ms']:.1f} | {e['ratio']:.3f} |")
    if results.get("skipped"):
        lines.append("")
        lines.append("Skipped by --max_seconds: " + ", ".join(f"{s['axis']} {s['x']}" for s in results["skipped"]))
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """One log-log panel per axis, both implementations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    axes = axes.ravel()
    axes[-1].axis("off")
    for ax, (axis, label) in zip(axes, AXIS_LABELS.items()):
        entries = results.get(axis, [])
        xs = [e["x"] for e in entries]
        for name, style in zip(NAMES, ("o-", "s--")):
            ax.plot(xs, [e[f"{name}_ms"] for e in entries], style, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("ms (median)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"How cost grows: {results['settings']['model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes, one repeat (smoke run)")
    parser.add_argument(
        "--max_seconds", type=float, default=900.0,
        help="stop starting new points after this many seconds (the remaining ones are listed as skipped)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per point (default 3; quick 1)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for scaling.{json,md,png}")
    args = parser.parse_args()
    start = time.perf_counter()
    results = run(args.quick, args.max_seconds, args.repeats)
    write_report(args.out, "scaling", args.quick, time.perf_counter() - start, results, markdown(results))
    plot(results, args.out / "scaling.png")


if __name__ == "__main__":
    main()
