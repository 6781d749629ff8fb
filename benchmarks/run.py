"""Run every benchmark (model, processor, matcher + loss) against transformers' DETR; write JSON and a table.

python benchmarks/run.py                  # full run on the CPU, writes benchmarks/results/latest.{json,md}
python benchmarks/run.py --quick          # fewer repeats
python benchmarks/run.py --device cuda    # the same suites on a GPU, plus AMP bf16/fp16, channels-last and the
                                          # matcher's host round trip; writes latest_cuda.{json,md}
python benchmarks/run.py --smoke          # tiny models, one repeat: checks the plumbing, figures mean nothing
Without a CUDA device, --device cuda prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import NO_CUDA_MESSAGE, machine_facts  # noqa: E402

SUITE_NAMES = ("model", "processor", "loss", "gpu")
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
    if "peak_cuda_training" in model:
        e = model["peak_cuda_training"]
        ours, ref = e["detr_hf"]["peak_cuda_mib"], e["transformers"]["peak_cuda_mib"]
        lines.append(_row("peak CUDA memory of a training step", f"{ours:.0f} MiB", f"{ref:.0f} MiB", e["ratio"], None))  # fmt: skip
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
    gpu = report["results"].get("gpu", {})
    for key, e in gpu.get("precision_and_layout", {}).items():
        lines.append(_row(f"GPU {key}", _ms(e, "detr_hf"), _ms(e, "transformers"), e["ratio"], None))
    for key, e in gpu.get("matcher_round_trip", {}).items():
        parts = ", ".join(f"{name.removesuffix('_ms').replace('_', ' ')} {value:.2f} ms" for name, value in e.items())
        lines.append(f"| GPU matcher, 6 layers, 100 queries, {key}: {parts} | - | - | - | - |")
    for suite, error in report.get("errors", {}).items():
        lines.append(f"| {suite}: FAILED ({error.splitlines()[-1][:120]}) | - | - | - | - |")
    m = report["machine"]
    flags = "".join(f" --{flag}" for flag in ("quick", "smoke") if report.get(flag))
    if report.get("device", "cpu") != "cpu":
        flags += f" --device {report['device']}"
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch threads {m['torch_threads']}, "
        + (f"GPU {m['gpu']} (CUDA {m['cuda']}), " if "gpu" in m else "")
        + f"load average at start {m.get('load_average_1min_at_start', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Command: `python benchmarks/run.py{flags}` "
        f"({report['seconds']:.0f} s). Medians of alternating runs after warm-up; same weights (converted).",
    ]
    return "\n".join(lines) + "\n"


def suites(device: str) -> dict:
    """name → run(quick, smoke); imported only once the device is known to exist. The processor suite runs on
    the CPU whatever the device (it is CPU work); the gpu suite only on CUDA."""
    import bench_loss
    import bench_model
    import bench_processor

    found = {
        "model": lambda quick, smoke: bench_model.run(quick, device, smoke),
        "processor": lambda quick, smoke: bench_processor.run(quick, smoke=smoke),
        "loss": lambda quick, smoke: bench_loss.run(quick, device, smoke),
    }
    if device.startswith("cuda"):
        import bench_gpu

        found["gpu"] = lambda quick, smoke: bench_gpu.run(quick, device, smoke)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--smoke", action="store_true", help="tiny models, one repeat (plumbing check only)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument("--only", nargs="+", choices=SUITE_NAMES, help="run only these suites")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="folder for latest.json / latest.md"
    )
    args = parser.parse_args(argv)
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print(NO_CUDA_MESSAGE if args.device.startswith("cuda") else f"unknown device {args.device!r}: use cpu or cuda", file=sys.stderr)
        sys.exit(2)
    found = suites(args.device)
    report: dict = {
        "machine": machine_facts(args.device), "device": args.device, "quick": args.quick, "smoke": args.smoke,
        "results": {}, "errors": {},
    }  # fmt: skip
    start = time.perf_counter()
    for name in args.only or list(found):
        if name not in found:
            report["errors"][name] = f"the {name} suite runs on a CUDA device only (--device cuda)"
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            report["results"][name] = found[name](args.quick, args.smoke)
        except Exception:  # one failing suite must not hide the others' figures
            report["errors"][name] = traceback.format_exc()
            print(report["errors"][name], file=sys.stderr)
    report["seconds"] = time.perf_counter() - start
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "latest" if args.device == "cpu" else "latest_cuda"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
