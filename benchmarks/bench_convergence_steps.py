"""Convergence benchmark in optimiser steps, with seeds: COCO AP / AP50 at fixed steps for each training setting.

Every setting trains the `demo` recipe's model and data (detr_hf/training/recipes.py: resnet10t cut at stage 2,
d_model 128, 2+2 layers, 10 queries, 4,000 synthetic 64 px images with flips, AdamW at the recipe's lr, clip 0.1, batch 8;
validation on the demo's 250 images) for --steps optimiser steps and is evaluated every --eval_every steps:

    transformers      transformers' DetrForObjectDetection as shipped (same sizes), constant lr
    plain             detr_hf, constant lr
    schedule          detr_hf, warm-up 200 + cosine to --steps (the schedule decays to the end of the budget)
    schedule+ema      ... evaluated with the EMA of the weights (--ema_decay; the raw weights' AP is kept too)
    schedule+groups   ... + 3 training-only query groups
    schedule+denoising  ... + 3 denoising groups
    best              the demo recipe's default aids (schedule + EMA + denoising)

    python benchmarks/bench_convergence_steps.py                                   # all settings, 3 seeds, 10k steps
    python benchmarks/bench_convergence_steps.py --settings plain,schedule --seeds 0   # a part; results merge
    python benchmarks/bench_convergence_steps.py --resume                          # skip the finished runs

Each evaluation is appended at once to --output (JSON, one entry per setting/seed, written under a file lock, so
several processes or sessions can share it); --resume skips runs that reached --steps (an unfinished run is
restarted). The markdown table (mean ± half the min–max spread over seeds) and the PNG (mean line, min–max band)
are rebuilt from every entry. Wall time per training step (evaluation excluded) is reported separately: the
aids cost steps/s, and wall time depends on the machine and its load, steps and AP do not.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import chosen_names, machine_facts  # noqa: E402
from detr_hf.data import DetectionCollator, EpochSampler  # noqa: E402
from detr_hf.evaluation import evaluate_coco  # noqa: E402
from detr_hf.training import build_lr_lambda, build_param_groups  # noqa: E402
from detr_hf.training.cli import build_datasets, build_model, build_processor, make_parser, parse_and_resolve  # noqa: E402
from detr_hf.training.ema import WeightEma  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name → (model, lr schedule, EMA on, extra flags of the training scripts)
SETTINGS: dict[str, tuple[str, str, bool, list[str]]] = {
    "transformers": ("transformers", "constant", False, []),
    "plain": ("detr_hf", "constant", False, []),
    "schedule": ("detr_hf", "cosine", False, []),
    "schedule+ema": ("detr_hf", "cosine", True, []),
    "schedule+groups": ("detr_hf", "cosine", False, ["--num_query_groups", "3"]),
    "schedule+denoising": ("detr_hf", "cosine", False, ["--num_denoising_groups", "3"]),
    "best": ("detr_hf", "cosine", True, ["--num_denoising_groups", "3"]),
}


def _transformers_detr(args: argparse.Namespace, class_names: list[str]) -> torch.nn.Module:
    from transformers import DetrConfig, DetrForObjectDetection, TimmBackboneConfig

    id2label = dict(enumerate(class_names))
    # An explicit backbone config: given only a name, transformers would look the name up on the Hub.
    backbone = TimmBackboneConfig(backbone=args.backbone, out_indices=[int(args.backbone_out_indices)])
    config = DetrConfig(
        use_timm_backbone=True, backbone_config=backbone, use_pretrained_backbone=False, d_model=args.d_model,
        encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.num_heads, decoder_attention_heads=args.num_heads,
        encoder_ffn_dim=args.ffn_dim, decoder_ffn_dim=args.ffn_dim, num_queries=args.num_queries,
        dropout=args.dropout, attention_dropout=args.dropout, activation_dropout=args.dropout, auxiliary_loss=True,
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )  # fmt: skip
    return DetrForObjectDetection(config)


def _record(output: Path, key: str, entry: dict) -> None:
    """Replace entry `key` of the shared JSON (re-read under a lock: other processes write it too)."""
    with open(output.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(output.read_text()) if output.is_file() else {}
        results[key] = entry
        output.write_text(json.dumps(results, indent=1))


def run(setting: str, seed: int, opts: argparse.Namespace) -> dict:
    family, schedule, use_ema, flags = SETTINGS[setting]
    args = parse_and_resolve(
        make_parser(None, output_dir="unused", report_to="none"),
        ["--recipe", "demo", "--seed", str(seed), "--max_train_steps", str(opts.steps), *flags, *opts.extra],
    )
    torch.manual_seed(seed)
    train_set, val_set, class_names = build_datasets(args, 42)  # the demo's data; the seed varies the rest
    processor = build_processor(args)
    torch.manual_seed(seed)
    model = _transformers_detr(args, class_names) if family == "transformers" else build_model(args, class_names)
    ema = WeightEma(model, decay=opts.ema_decay, warmup_power=opts.ema_warmup_power) if use_ema else None
    optimizer = torch.optim.AdamW(
        build_param_groups(model, args.learning_rate, args.backbone_learning_rate, args.weight_decay)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, build_lr_lambda(schedule, args.warmup_steps if schedule != "constant" else 0, opts.steps)
    )
    collator = DetectionCollator(processor)
    sampler = EpochSampler(len(train_set), seed=seed)
    loader = DataLoader(
        train_set, batch_size=args.per_device_train_batch_size, sampler=sampler, collate_fn=collator,
        drop_last=True, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    val_loader = DataLoader(val_set, batch_size=args.per_device_eval_batch_size, shuffle=False, collate_fn=collator)
    entry = {
        "setting": setting, "seed": seed, "steps": opts.steps, "flags": flags + opts.extra, "schedule": schedule,
        "ema_decay": opts.ema_decay if use_ema else None, "points": [], "train_seconds": 0.0,
        "torch_threads": torch.get_num_threads(), "machine": machine_facts(),
    }  # fmt: skip
    step, epoch, train_seconds = 0, 0, 0.0
    model.train()
    while step < opts.steps:
        sampler.start_epoch(epoch)
        started = time.perf_counter()
        for batch in loader:
            out = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            if step % opts.eval_every == 0 or step == opts.steps:
                train_seconds += time.perf_counter() - started
                raw = evaluate_coco(model, val_loader, processor)
                model.train()
                point = {"step": step, "AP": raw["AP"], "AP50": raw["AP50"], "loss": float(out.loss.detach())}
                if ema is not None:
                    averaged = evaluate_coco(ema.module, val_loader, processor)
                    point |= {"AP": averaged["AP"], "AP50": averaged["AP50"], "raw_AP": raw["AP"], "raw_AP50": raw["AP50"]}
                entry["points"].append(point)
                entry["train_seconds"] = round(train_seconds, 2)
                entry["seconds_per_step"] = train_seconds / step
                _record(opts.output, f"{setting}/seed{seed}", entry)
                print(f"[{setting} seed {seed}] {point}", flush=True)
                started = time.perf_counter()
            if step >= opts.steps:
                break
        epoch += 1
    return entry


def _by_setting(results: dict) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for entry in results.values():
        grouped.setdefault(entry["setting"], []).append(entry)
    return {name: grouped[name] for name in SETTINGS if name in grouped}


def _at_steps(entries: list[dict], metric: str) -> dict[int, list[float]]:
    values: dict[int, list[float]] = {}
    for entry in entries:
        for point in entry["points"]:
            values.setdefault(point["step"], []).append(point[metric])
    return dict(sorted(values.items()))


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(results: dict) -> str:
    """Markdown: AP and AP50 per setting at each evaluated step (mean ± half the min–max spread, seed count)."""
    grouped = _by_setting(results)
    steps = sorted({s for entries in grouped.values() for s in _at_steps(entries, "AP")})
    lines = ["| setting | metric | " + " | ".join(f"{s:,} steps" for s in steps) + " |"]
    lines.append("|---|---|" + "---|" * len(steps))
    for name, entries in grouped.items():
        for metric in ("AP", "AP50"):
            found = _at_steps(entries, metric)
            cells = [f"{_cell(found[s])} (n={len(found[s])})" if s in found else "" for s in steps]
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(results: dict) -> str:
    """Wall ms per training step (evaluation excluded) per setting, and steps/s relative to the first detr_hf
    setting present (plain, else schedule, ...): only comparable between runs under the same machine load."""
    grouped = _by_setting(results)
    ms = {n: 1e3 * statistics.fmean(e["seconds_per_step"] for e in es if "seconds_per_step" in e) for n, es in grouped.items()}
    base = next((n for n in ms if n != "transformers"), None)
    lines = [f"| setting | ms / step | steps/s vs {base} |", "|---|---|---|"]
    for name, value in ms.items():
        lines.append(f"| {name} | {value:.1f} | {ms[base] / value:.2f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path, metric: str = "AP") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, entries in _by_setting(results).items():
        found = _at_steps(entries, metric)
        steps = list(found)
        line = ax.plot(steps, [statistics.fmean(v) for v in found.values()], marker="o", label=name)[0]
        ax.fill_between(
            steps, [min(v) for v in found.values()], [max(v) for v in found.values()], color=line.get_color(), alpha=0.2
        )  # fmt: skip
    ax.set_xlabel("optimiser steps (batch 8)")
    ax.set_ylabel(f"COCO {metric} (250 synthetic validation images)")
    ax.set_title("DETR by optimiser steps, synthetic shapes (mean, min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {list(SETTINGS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (model init, order, flips)")
    parser.add_argument("--steps", type=int, default=10_000, help="optimiser steps per run (the cosine's budget)")
    parser.add_argument("--eval_every", type=int, default=1000)
    parser.add_argument("--ema_decay", type=float, default=0.9998)
    parser.add_argument("--ema_warmup_power", type=float, default=0.75)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--resume", action="store_true", help="skip setting/seed runs already finished in --output")
    parser.add_argument("--output", type=Path, default=RESULTS / "convergence_steps.json")
    parser.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[],
        help="further training-script flags for every run (last), e.g. --extra --num_queries 20",
    )  # fmt: skip
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    names = chosen_names(opts.settings, SETTINGS)
    seeds = [int(s) for s in opts.seeds.split(",") if s.strip()]
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        for seed in seeds:
            done = json.loads(opts.output.read_text()) if opts.output.is_file() else {}
            previous = done.get(f"{name}/seed{seed}")
            if opts.resume and previous and previous["points"] and previous["points"][-1]["step"] >= opts.steps:
                print(f"[{name} seed {seed}] finished in {opts.output}: skipped")
                continue
            run(name, seed, opts)
    results = json.loads(opts.output.read_text())
    text = table(results) + "\n\n" + speed_table(results)
    print(text)
    opts.output.with_suffix(".md").write_text(text + "\n")
    plot(results, opts.output.with_suffix(".png"))
    print(f"wrote {opts.output}, {opts.output.with_suffix('.md')} and {opts.output.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
