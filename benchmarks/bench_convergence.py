"""Convergence benchmark: COCO AP against CPU time for transformers' DETR and detr_hf with/without training-only queries.

Every setting trains the same small DETR (timm resnet10t cut at stage 2, d_model 128, 2+2 layers, 4 heads,
FFN 512, 10 queries, dropout 0, auxiliary losses) on the built-in synthetic shapes (64 px, horizontal flip),
AdamW lr 2e-4 (all parameters), weight decay 1e-4, gradient clip 0.1, batch 8, for a fixed budget of
PROCESS CPU TIME (`time.process_time`: all threads of this process, so other programs on the machine do not
eat the budget; evaluation time is excluded). COCO AP / AP50 on a fixed 200-image validation split after
every quarter of the budget.

    python benchmarks/bench_convergence.py --budget_minutes 10                # all settings, one after another
    python benchmarks/bench_convergence.py --settings plain,groups            # some settings; results merge

Results merge into benchmarks/results/convergence.json (one entry per setting, replaced when re-run) and
the table and benchmarks/results/convergence.png (AP50 against CPU minutes) are rebuilt from all entries.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import chosen_names, machine_facts  # noqa: E402
from detr_hf import DetrHfConfig, DetrHfForObjectDetection  # noqa: E402
from detr_hf.data import load_synthetic_splits  # noqa: E402
from detr_hf.data.synthetic import SHAPE_NAMES  # noqa: E402
from detr_hf.data.transforms import build_eval_transform  # noqa: E402
from detr_hf.image_processing_detr_hf import DetrHfImageProcessor  # noqa: E402
from detr_hf.training import DetectionCollator, DetectionDataset, EpochSampler, evaluate_coco  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = dict(d_model=128, layers=2, heads=4, ffn=512, queries=10)
# name → extra DetrHfConfig fields ("transformers" builds transformers' DETR instead).
SETTINGS: dict[str, dict | None] = {
    "transformers": None,
    "plain": {},
    "groups": {"num_query_groups": 3},
    "denoising": {"num_denoising_groups": 3},
    "groups+denoising": {"num_query_groups": 3, "num_denoising_groups": 3},
}


def build_model(setting: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    id2label = dict(enumerate(SHAPE_NAMES))
    common = dict(
        d_model=SIZES["d_model"], encoder_layers=SIZES["layers"], decoder_layers=SIZES["layers"],
        encoder_attention_heads=SIZES["heads"], decoder_attention_heads=SIZES["heads"],
        encoder_ffn_dim=SIZES["ffn"], decoder_ffn_dim=SIZES["ffn"], num_queries=SIZES["queries"],
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, auxiliary_loss=True,
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )  # fmt: skip
    if SETTINGS[setting] is None:
        from transformers import DetrConfig, DetrForObjectDetection, TimmBackboneConfig

        # An explicit backbone config: given only a name, transformers would look the name up on the Hub.
        backbone = TimmBackboneConfig(backbone="resnet10t", out_indices=[2])
        config = DetrConfig(
            use_timm_backbone=True, backbone_config=backbone, use_pretrained_backbone=False, **common
        )
        return DetrForObjectDetection(config)
    config = DetrHfConfig(
        backbone="resnet10t", backbone_kwargs={"out_indices": (2,)}, **common, **SETTINGS[setting]
    )
    return DetrHfForObjectDetection(config)


def run_setting(setting: str, args: argparse.Namespace) -> dict:
    splits = load_synthetic_splits(
        num_train=args.train_size, num_validation=200, image_size=64, seed=args.seed
    )
    from torchvision.transforms import v2

    eval_transform = build_eval_transform(64, 96)
    train_set = DetectionDataset(
        splits["train"],
        v2.Compose([v2.RandomHorizontalFlip(0.5), eval_transform]),
        seed=args.seed,
        split="train",
    )
    val_set = DetectionDataset(splits["validation"], eval_transform, seed=args.seed, split="validation")
    processor = DetrHfImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    collator = DetectionCollator(processor)
    val_loader = DataLoader(val_set, batch_size=32, shuffle=False, collate_fn=collator)
    model = build_model(setting, args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-4)

    budget = args.budget_minutes * 60.0
    checkpoints = [budget * (i + 1) / args.num_evals for i in range(args.num_evals)]
    points, steps, epoch, used = [], 0, 0, 0.0
    sampler = EpochSampler(len(train_set), seed=args.seed)
    loader = DataLoader(train_set, batch_size=8, sampler=sampler, collate_fn=collator, drop_last=True)
    wall_start = time.perf_counter()
    model.train()
    mark = time.process_time()  # the budget counts data loading and training steps, not evaluation
    while checkpoints:
        sampler.start_epoch(epoch)
        for batch in loader:
            out = model(
                pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.1)
            optimizer.step()
            steps += 1
            now = time.process_time()
            used, mark = used + now - mark, now
            if used >= checkpoints[0]:
                metrics = evaluate_coco(model, val_loader, processor)
                model.train()
                points.append({
                    "cpu_minutes": round(used / 60, 3), "steps": steps, "epoch": epoch,
                    "AP": metrics["AP"], "AP50": metrics["AP50"], "loss": float(out.loss),
                })  # fmt: skip
                print(f"[{setting}] {points[-1]}", flush=True)
                checkpoints.pop(0)
                mark = time.process_time()
                if not checkpoints:
                    break
        epoch += 1
    return {
        "setting": setting, "config": SETTINGS[setting], "budget_cpu_minutes": args.budget_minutes,
        "torch_threads": torch.get_num_threads(), "wall_minutes": round((time.perf_counter() - wall_start) / 60, 2),
        "points": points, "machine": machine_facts(),
    }  # fmt: skip


def table(results: dict) -> str:
    rows = [f"{'setting':<18} {'CPU min':>8} {'steps':>6} {'AP':>6} {'AP50':>6}"]
    for name in SETTINGS:
        for p in results.get(name, {}).get("points", []):
            rows.append(
                f"{name:<18} {p['cpu_minutes']:>8.2f} {p['steps']:>6d} {p['AP']:>6.3f} {p['AP50']:>6.3f}"
            )
    return "\n".join(rows)


def first_time_reaching(points: list[dict], target: float) -> float | None:
    return next((p["cpu_minutes"] for p in points if p["AP"] >= target), None)


def summary(results: dict) -> str:
    """Best setting at the end, and whether it reaches plain detr_hf's final AP in at most half the time."""
    finished = {n: r for n, r in results.items() if r.get("points")}
    if "plain" not in finished:
        return "(no plain detr_hf result to compare with)"
    plain = finished["plain"]["points"]
    best = max(finished, key=lambda n: finished[n]["points"][-1]["AP"])
    lines = [f"best final AP: {best} ({finished[best]['points'][-1]['AP']:.3f})"]
    target, budget = plain[-1]["AP"], plain[-1]["cpu_minutes"]
    for name, result in finished.items():
        reached = first_time_reaching(result["points"], target)
        verdict = "not reached" if reached is None else f"at {reached:.2f} CPU min"
        half = reached is not None and reached <= budget / 2 + 1e-6
        lines.append(
            f"{name}: plain's final AP {target:.3f} {verdict}{' (<= half the budget)' if half else ''}"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in SETTINGS:
        points = results.get(name, {}).get("points", [])
        if points:
            ax.plot(
                [0] + [p["cpu_minutes"] for p in points],
                [0] + [p["AP50"] for p in points],
                marker="o",
                label=name,
            )
    ax.set_xlabel("training CPU time (minutes, time.process_time)")
    ax.set_ylabel("COCO AP50 (200 validation images)")
    ax.set_title("DETR convergence on the synthetic shapes (same small model and recipe)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {list(SETTINGS)}"
    )
    parser.add_argument("--budget_minutes", type=float, default=10.0, help="training CPU minutes per setting")
    parser.add_argument("--num_evals", type=int, default=4, help="evaluations, evenly spaced over the budget")
    parser.add_argument("--train_size", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time counts all of them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "convergence.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = chosen_names(args.settings, SETTINGS)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        result = run_setting(name, args)
        # Settings run in parallel processes merge into the same file: re-read and write under a lock.
        with open(output.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = json.loads(output.read_text()) if output.is_file() else {}
            results[name] = result
            output.write_text(json.dumps(results, indent=1))
    results = json.loads(output.read_text())
    print(table(results))
    print(summary(results))
    plot(results, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
