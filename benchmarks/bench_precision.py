"""Benchmark of reduced precision and torch.compile: DETR-R50 speed (detr_hf and transformers, same weights), AP of a
trained model in float32 vs bf16, and a training-loss curve float32 vs bf16 autocast.

    python benchmarks/bench_precision.py                              # speed: fp32, bf16 autocast, bf16 weights, compiled
    python benchmarks/bench_precision.py --model_dir outputs/demo     # + AP of the demo model, fp32 vs bf16
    python benchmarks/bench_precision.py --loss_curve_steps 300       # + demo-recipe loss curves, fp32 vs bf16 (PNG)
    python benchmarks/bench_precision.py --quick --loss_curve_steps 4 # smoke run (tiny sizes, 1 repeat)

Speed candidates per benchmark: `<library> <precision>` with precision fp32, bf16-autocast (weights float32,
`torch.autocast("cpu", dtype=torch.bfloat16)`), bf16-weights (`from_pretrained(..., dtype=torch.bfloat16)`,
inference only) and, unless --no_compile, compiled-fp32 / compiled-bf16-autocast (`torch.compile`, inductor; the
first call's time, the compile time, is reported separately). Medians of alternating runs after warm-up; every
candidate's ratio to detr_hf fp32 and to transformers at the same precision. Writes
benchmarks/results/precision.{json,md} (and precision_loss_curve.png).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_model import BATCH_512, COCO_IMAGE, load, make_batch, save_pair  # noqa: E402
from common import machine_facts, time_alternating  # noqa: E402

LIBRARIES = ("detr_hf", "transformers")
QUICK_BATCH = ((128, 128), (128, 96))
QUICK_IMAGE = ((160, 213),)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _inference_fn(model, pixels, mask, bf16_autocast: bool):
    pixels = pixels.to(next(model.parameters()).dtype)  # bf16 weights take bf16 pixels (transformers needs them)

    def run():
        with torch.inference_mode(), _autocast(bf16_autocast):
            return model(pixel_values=pixels, pixel_mask=mask)

    return run


def _training_fn(model, pixels, mask, labels, bf16_autocast: bool):
    def run():
        with _autocast(bf16_autocast):
            model.zero_grad(set_to_none=True)
            loss = model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
        loss.backward()
        return float(loss.detach())

    return run


def _first_call_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _candidates(models: dict, bf16_models: dict, make_fn, compile_models: bool, inference: bool) -> tuple[dict, dict]:
    """({name: fn}, {name: compile seconds}) of every precision of both libraries."""
    fns, compile_seconds = {}, {}
    for library in LIBRARIES:
        fns[f"{library} fp32"] = make_fn(models[library], False)
        fns[f"{library} bf16-autocast"] = make_fn(models[library], True)
        if inference:
            fns[f"{library} bf16-weights"] = make_fn(bf16_models[library], False)
        if compile_models:
            compiled = torch.compile(models[library])
            for name, autocast in (("compiled-fp32", False), ("compiled-bf16-autocast", True)):
                fn = make_fn(compiled, autocast)
                try:
                    compile_seconds[f"{library} {name}"] = _first_call_seconds(fn)
                    fns[f"{library} {name}"] = fn
                except Exception:  # a backend failure is a result, not the end of the benchmark
                    compile_seconds[f"{library} {name}"] = "failed: " + traceback.format_exc().splitlines()[-1]
    return fns, compile_seconds


def _summary(times: dict[str, list[float]], compile_seconds: dict, outputs: dict | None = None) -> dict:
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {}
    for name, median in medians.items():
        library, precision = name.split(" ", 1)
        same_precision = medians.get(f"transformers {precision}")
        result[name] = {
            "ms": 1e3 * median,
            "min_ms": 1e3 * min(times[name]),
            "vs_detr_hf_fp32": median / medians["detr_hf fp32"],
            "vs_transformers_same_precision": None if same_precision is None else median / same_precision,
        }
        if name in compile_seconds:
            result[name]["compile_seconds"] = compile_seconds[name]
        if outputs is not None and name in outputs:
            result[name] |= outputs[name]
    for name, value in compile_seconds.items():
        result.setdefault(name, {"compile_seconds": value})
    return result


def _accuracy(fns: dict) -> dict:
    """Largest |logit| and |box| difference of each candidate from its library's fp32 outputs."""
    outs = {name: fn() for name, fn in fns.items()}
    result = {}
    for name, out in outs.items():
        reference = outs[name.split(" ")[0] + " fp32"]
        result[name] = {
            "max_abs_logit_diff": (out.logits.float() - reference.logits.float()).abs().max().item(),
            "max_abs_box_diff": (out.pred_boxes.float() - reference.pred_boxes.float()).abs().max().item(),
        }
    return result


def bench_speed(quick: bool, compile_models: bool) -> dict:
    results: dict = {}
    inference_repeats, training_repeats = (1, 1) if quick else (11, 7)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = dict(zip(("transformers", "detr_hf"), save_pair(Path(tmp))))
        models = {name: load(name, dirs[name]).eval() for name in LIBRARIES}
        bf16_models = {name: _load_bf16(name, dirs[name]).eval() for name in LIBRARIES}
        for key, sizes in (("inference_512_b2", QUICK_BATCH if quick else BATCH_512),
                           ("inference_800x1066", QUICK_IMAGE if quick else COCO_IMAGE)):  # fmt: skip
            pixels, mask, _ = make_batch(sizes)
            fns, compile_seconds = _candidates(
                models, bf16_models, lambda m, ac, px=pixels, pm=mask: _inference_fn(m, px, pm, ac), compile_models, True
            )
            accuracy = _accuracy(fns)
            times = time_alternating(fns, inference_repeats)
            results[key] = _summary(times, compile_seconds, accuracy) | {"sizes": sizes}
            print(f"{key}: {json.dumps(results[key])}", file=sys.stderr, flush=True)
        del bf16_models
        pixels, mask, labels = make_batch(QUICK_BATCH if quick else BATCH_512)
        for model in models.values():
            model.train()
        fns, compile_seconds = _candidates(
            models, {}, lambda m, ac: _training_fn(m, pixels, mask, labels, ac), compile_models, False
        )
        times = time_alternating(fns, training_repeats)
        results["training_step_512_b2"] = _summary(times, compile_seconds)
        print(f"training: {json.dumps(results['training_step_512_b2'])}", file=sys.stderr, flush=True)
    return results


def _load_bf16(kind: str, folder: Path) -> torch.nn.Module:
    if kind == "transformers":
        from transformers import DetrForObjectDetection

        return DetrForObjectDetection.from_pretrained(folder, dtype=torch.bfloat16)
    from detr_hf import DetrHfForObjectDetection

    return DetrHfForObjectDetection.from_pretrained(folder, dtype=torch.bfloat16)


def bench_ap(model_dir: Path, train_flags: str = "") -> dict:
    """COCO AP of a model trained by the demo recipe on its synthetic validation split (built as examples/train.py
    builds it, plus `train_flags` the run was given, e.g. '--synthetic_train_size 64'), with detr_hf's evaluation
    loop: fp32, bf16 autocast and bf16 weights."""
    from torch.utils.data import DataLoader

    from detr_hf import DetrHfForObjectDetection
    from detr_hf.data import DetectionCollator
    from detr_hf.evaluation import evaluate_coco
    from detr_hf.image_processing_detr_hf import DetrHfImageProcessor
    from detr_hf.training.cli import build_datasets, make_parser, parse_and_resolve

    parser = make_parser(None, output_dir=str(model_dir), report_to="none")
    args = parse_and_resolve(parser, ["--recipe", "demo", *shlex.split(train_flags)])
    _, val_set, _ = build_datasets(args, args.seed)
    processor = DetrHfImageProcessor.from_pretrained(model_dir)
    loader = DataLoader(val_set, batch_size=8, shuffle=False, collate_fn=DetectionCollator(processor))
    results = {}
    for name, dtype, autocast in (("fp32", torch.float32, False), ("bf16-autocast", torch.float32, True),
                                  ("bf16-weights", torch.bfloat16, False)):  # fmt: skip
        model = DetrHfForObjectDetection.from_pretrained(model_dir, dtype=dtype).eval()
        with _autocast(autocast):
            metrics = evaluate_coco(model, loader, processor)
        results[name] = {key: metrics[key] for key in ("AP", "AP50", "AP75", "num_images")}
    for name in ("bf16-autocast", "bf16-weights"):
        results[name]["AP_change_vs_fp32"] = results[name]["AP"] - results["fp32"]["AP"]
    print(f"AP: {json.dumps(results)}", file=sys.stderr, flush=True)
    return results


def bench_loss_curve(steps: int, out_dir: Path, quick: bool) -> dict:
    """The demo recipe for `steps` seeded steps with --mixed_precision no and bf16 (one process each, so the
    runs share nothing); loss histories, final AP and a PNG of both curves."""
    results = {}
    extra = ["--synthetic_train_size", "64", "--synthetic_val_size", "16"] if quick else []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("no", "bf16"):
            run_dir = Path(tmp) / mode
            command = [
                sys.executable, str(ROOT / "examples" / "train.py"), "--recipe", "demo", "--max_train_steps", str(steps),
                "--mixed_precision", mode, "--logging_steps", str(max(1, min(10, steps // 30))), "--report_to", "none",
                "--no_progress_bar", "--checkpointing_steps", "no", "--eval_every_epochs", "0", "--output_dir",
                str(run_dir), *extra,
            ]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, text=True)
            history = json.loads((run_dir / "loss_history.json").read_text())
            metrics = json.loads((run_dir / "eval_results.json").read_text())
            results["fp32" if mode == "no" else "bf16-autocast"] = {
                "loss_history": history, "AP": metrics["AP"], "AP50": metrics["AP50"],
                "seconds": time.perf_counter() - start,
            }  # fmt: skip
    _plot_curves(results, out_dir / "precision_loss_curve.png", steps)
    fp32, bf16 = (dict(map(tuple, results[k]["loss_history"])) for k in ("fp32", "bf16-autocast"))
    shared = sorted(set(fp32) & set(bf16))
    results["max_relative_loss_gap"] = max((abs(bf16[s] - fp32[s]) / fp32[s] for s in shared), default=None)
    print(f"loss curve: AP fp32 {results['fp32']['AP']:.4f}, bf16 {results['bf16-autocast']['AP']:.4f}", file=sys.stderr)
    return results


def _plot_curves(results: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, entry in results.items():
        xs, ys = zip(*entry["loss_history"])
        ax.plot(xs, ys, label=f"{name} (AP {entry['AP']:.3f})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (all terms, aux included)")
    ax.set_yscale("log")
    ax.set_title(f"detr_hf demo recipe, {steps} seeded steps: fp32 vs bf16 autocast")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = ["| benchmark | candidate | median | vs detr_hf fp32 | vs transformers, same precision | compile s | max logit diff |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for key, entries in report.get("speed", {}).items():
        for name, e in entries.items():
            if not isinstance(e, dict):
                continue
            ms = f"{e['ms']:.0f} ms" if "ms" in e else "-"
            ratio = f"{e['vs_detr_hf_fp32']:.2f}" if "ms" in e else "-"
            same = e.get("vs_transformers_same_precision")
            compiled = e.get("compile_seconds", "-")
            compiled = f"{compiled:.0f}" if isinstance(compiled, float) else compiled
            diff = e.get("max_abs_logit_diff")
            diff = "-" if diff is None else f"{diff:.4f}"
            lines.append(f"| {key} | {name} | {ms} | {ratio} | {'-' if same is None else f'{same:.2f}'} | {compiled} | {diff} |")
    ap = report.get("ap")
    if ap:
        lines += ["", "| AP of the demo model | AP | AP50 | AP75 | change vs fp32 |", "| --- | --- | --- | --- | --- |"]
        for name, e in ap.items():
            lines.append(f"| {name} | {e['AP']:.4f} | {e['AP50']:.4f} | {e['AP75']:.4f} | {e.get('AP_change_vs_fp32', 0):+.4f} |")
    curve = report.get("loss_curve")
    if curve:
        lines += ["", f"Loss curves: fp32 AP {curve['fp32']['AP']:.4f}, bf16 autocast AP {curve['bf16-autocast']['AP']:.4f}, "
                  f"largest relative loss gap at a logged step {curve['max_relative_loss_gap']:.4f} (precision_loss_curve.png)."]  # fmt: skip
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, torch threads {m['torch_threads']}, bf16 "
              f"instructions: {report['cpu_has_fast_bf16']}, load average at start {m.get('load_average_1min_at_start', '?')}; "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f". Command: `{report['command']}`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(quick: bool = False, compile_models: bool = True) -> dict:
    """The speed benchmarks only."""
    return bench_speed(quick, compile_models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (smoke run)")
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile candidates")
    parser.add_argument("--no_speed", action="store_true", help="skip the speed benchmarks")
    parser.add_argument("--model_dir", type=Path, default=None, help="a demo-recipe model: AP fp32 vs bf16")
    parser.add_argument(
        "--train_flags", default="", help="data flags --model_dir was trained with (they define its validation split)"
    )
    parser.add_argument("--loss_curve_steps", type=int, default=0, help="demo-recipe steps of the loss curves (0 = off)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for precision.{json,md,_loss_curve.png}")
    args = parser.parse_args()
    from detr_hf.precision import cpu_has_fast_bf16

    report: dict = {"machine": machine_facts(), "cpu_has_fast_bf16": cpu_has_fast_bf16(), "quick": args.quick,
                    "command": "python benchmarks/bench_precision.py " + " ".join(sys.argv[1:])}  # fmt: skip
    if not args.no_speed:
        report["speed"] = bench_speed(args.quick, not args.no_compile)
    if args.model_dir is not None:
        report["ap"] = bench_ap(args.model_dir, args.train_flags)
    if args.loss_curve_steps:
        report["loss_curve"] = bench_loss_curve(args.loss_curve_steps, args.out, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "precision.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
