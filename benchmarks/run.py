"""Run every benchmark (model, processor, matcher + loss) against transformers' DETR; write JSON and a table.

python benchmarks/run.py            # full run, writes benchmarks/results/latest.{json,md}
python benchmarks/run.py --quick    # smoke run with fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_loss  # noqa: E402
import bench_model  # noqa: E402
import bench_processor  # noqa: E402
from common import machine_facts  # noqa: E402

SUITES = {"model": bench_model.run, "processor": bench_processor.run, "loss": bench_loss.run}
# Goals of issue 16 (model) and issue 7 (processor, loss): ratio detr_hf ÷ transformers, same run, same machine;
# "flops_fraction": detr_hf's inference FLOP/s as a fraction of the machine's measured fp32 peak (at least).
GOALS = {
    "inference": 0.50, "training": 0.50, "rss": 0.80, "flops_fraction": 0.75, "processor": 0.40, "loss_b64": 0.15,
}  # fmt: skip


def _row(
    name: str, ours: str, reference: str, ratio: float | None, goal: float | None, best: float | None = None
) -> str:
    ratio_text = "-" if ratio is None else f"{ratio:.3f}"
    if best is not None:
        ratio_text += f" (best runs {best:.3f})"
    if goal is None or ratio is None:
        goal_text = "-"
    else:
        goal_text = f"≤ {goal:.2f} {'met' if ratio <= goal else 'NOT met'}"
    return f"| {name} | {ours} | {reference} | {ratio_text} | {goal_text} |"


def _ms(entry: dict, name: str) -> str:
    return f"{entry[f'{name}_ms']:.0f} ms"


def markdown(report: dict) -> str:
    """The results as a markdown table (ratios < 1: detr_hf is faster / smaller)."""
    lines = [
        "| benchmark | detr_hf (median) | transformers (median) | ratio detr_hf ÷ transformers | goal |",
        "| --- | --- | --- | --- | --- |",
    ]
    model = report["results"].get("model", {})
    for key, label, goal in (
        ("inference_512_b2", "inference, batch 2 padded to 512²", GOALS["inference"]),
        ("inference_800x1066", "inference, 1 image 800×1066", GOALS["inference"]),
        (
            "training_step_512_b2",
            "training step (fwd + loss with aux + bwd), batch 2, 512²",
            GOALS["training"],
        ),
    ):
        if key in model:
            e = model[key]
            best = e.get("ratio_of_min")
            lines.append(_row(label, _ms(e, "detr_hf"), _ms(e, "transformers"), e["ratio"], goal, best))
    if "peak_rss_training" in model:
        e = model["peak_rss_training"]
        ours, ref = e["detr_hf"]["peak_rss_mib"], e["transformers"]["peak_rss_mib"]
        lines.append(_row("peak RSS of a training step (own process)", f"{ours:.0f} MiB", f"{ref:.0f} MiB", e["ratio"], GOALS["rss"]))  # fmt: skip
    if "flops_512_b2" in model:
        e = model["flops_512_b2"]
        for name in ("detr_hf", "transformers"):
            f = e[name]
            goal = GOALS["flops_fraction"]
            met = "met" if f["fraction_of_peak"] >= goal else "NOT met"
            goal_text = f"≥ {goal:.2f} of peak {met}" if name == "detr_hf" else "-"
            lines.append(
                f"| FLOP/s of inference ({name}): {f['gflops']:.1f} GFLOP in the forward | "
                f"{f['achieved_gflops_per_s']:.1f} GFLOP/s | peak {e['machine_peak_gflops']:.1f} GFLOP/s | "
                f"{f['fraction_of_peak']:.2f} of peak | {goal_text} |"
            )
    processor = report["results"].get("processor", {})
    for key, entry in processor.items():
        if isinstance(entry, dict) and "ratio_vs_transformers" in entry:
            lines.append(
                _row(f"processor: {key}", _ms(entry, "detr_hf"), _ms(entry, "transformers"),
                     entry["ratio_vs_transformers"], GOALS["processor"])
            )  # fmt: skip
    loss = report["results"].get("loss", {})
    for key, entry in loss.items():
        for mode in ("forward", "forward+backward"):
            if isinstance(entry, dict) and mode in entry:
                e = entry[mode]
                goal = GOALS["loss_b64"] if key == "B=64" else None
                lines.append(_row(f"matcher + loss {mode}, {key}", _ms(e, "detr_hf"), _ms(e, "transformers"), e["ratio"], goal))  # fmt: skip
    for suite, error in report.get("errors", {}).items():
        lines.append(f"| {suite}: FAILED ({error.splitlines()[-1][:120]}) | - | - | - | - |")
    m = report["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch threads {m['torch_threads']}, "
        f"load average at start {m.get('load_average_1min_at_start', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Command: `python benchmarks/run.py{' --quick' if report['quick'] else ''}` "
        f"({report['seconds']:.0f} s). Medians of alternating runs after warm-up; same weights (converted).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--only", nargs="+", choices=list(SUITES), help="run only these suites")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="folder for latest.json / latest.md"
    )
    args = parser.parse_args()
    report: dict = {"machine": machine_facts(), "quick": args.quick, "results": {}, "errors": {}}
    start = time.perf_counter()
    for name in args.only or list(SUITES):
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            report["results"][name] = SUITES[name](args.quick)
        except Exception:  # one failing suite must not hide the others' figures
            report["errors"][name] = traceback.format_exc()
            print(report["errors"][name], file=sys.stderr)
    report["seconds"] = time.perf_counter() - start
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "latest.md").write_text(table)
    print(table)
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
