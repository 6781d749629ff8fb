"""Train detr_hf with Accelerate: `accelerate launch examples/train.py` (no arguments = the built-in demo).

Recipes (`--recipe`, see detr_hf/training/recipes.py) preset every flag not given: `detr-r50` (the paper's
recipe; default with --dataset_name/--coco_dir), `finetune` (default with --model_name_or_path: architecture,
processor and labels from the checkpoint) and `demo` (default with neither). The resolved settings are printed
once and written to OUTPUT_DIR/training_config.json; `--print_config_only` stops there.

Data: the built-in synthetic shapes (default), `--dataset_name` (HF datasets name or path, cppe-5 schema) or
`--coco_dir` (+ `--train_annotations`, `--val_annotations`). Model: `--model_name_or_path` (a detr_hf folder
or Hub id; a new label set gets new heads) or a fresh model (`--backbone` any timm name,
`--pretrained_backbone` / `--backbone_weights FILE`, size options). Multi-process on CPU:
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/train.py ...`. Precision:
`--mixed_precision bf16` (CPU with bf16 instructions, recent GPUs) or `fp16` (GPU), `--torch_compile`.

`--task panoptic` trains DetrHfForSegmentation (detr_hf/training/panoptic.py): COCO panoptic `--coco_dir` or the
synthetic panoptic shapes; from a detection checkpoint the detector is frozen unless `--train_detector`;
eval_results.json then holds PQ / SQ / RQ (all, _th, _st).

`--ema_decay D` evaluates and saves an exponential moving average of the weights (detr_hf/training/ema.py).

Outputs in --output_dir: the final model + processor (`save_pretrained`), `eval_results.json` (COCO AP/AR of the
last evaluation), `train_results.json`, `loss_history.json`, tensorboard logs in `logs/`, and checkpoints:

    checkpoints/step_00000500/   model.safetensors, optimizer.bin, random_states_<rank>.pkl,
                                 custom_checkpoint_0.pkl (lr scheduler), custom_checkpoint_1.pkl (counters),
                                 custom_checkpoint_2.pkl (the weight EMA, with --ema_decay),
                                 COMPLETE (written last; JSON step/epoch/batches_in_epoch)
    checkpoints/.tmp-step_.../   an unfinished save: ignored, removed by the next save

A checkpoint is saved in `.tmp-step_N`, fsync'ed, marked COMPLETE, then renamed to `step_N`; only folders
with COMPLETE are resumed from. `--resume_from_checkpoint latest|PATH` continues exactly: same data order
(per-epoch seeded sampler, skipped batches), same augmentations (seeded per sample), RNG states, lr
schedule and counters; on CPU a resumed run ends with bit-identical weights.

Non-finite loss policy: a step whose predictions, loss or gradient norm are NaN/inf (on any process) is SKIPPED (no
optimiser update, gradients dropped; the step counter and lr schedule advance) with a counted warning;
after --max_consecutive_nonfinite such steps in a row training stops with an error and leaves the last
complete checkpoint untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader

from detr_hf.data import DetectionCollator, EpochSampler
from detr_hf.evaluation import evaluate_coco, write_evaluation_files
from detr_hf.evaluation.panoptic_loop import evaluate_panoptic
from detr_hf.targets import NonFinitePredictionError
from detr_hf.training import (
    TrainState,
    build_lr_lambda,
    build_param_groups,
    find_latest_checkpoint,
    is_complete_checkpoint,
    save_checkpoint_atomically,
)
from detr_hf.training.cli import build_datasets, build_model, build_processor, make_parser, parse_and_resolve
from detr_hf.training.ema import build_ema
from detr_hf.training.panoptic import is_panoptic
from detr_hf.training.precision import accelerator_options, check_precision
from detr_hf.training.progress import TrainProgress
from detr_hf.training.publish import hub_dataset_id, push_trained_model
from detr_hf.training.recipes import lr_drop_step_for
from detr_hf.training.run_config import format_settings, plan_steps, run_settings, write_settings

logger = logging.getLogger("detr_hf.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__, output_dir="outputs/detr_hf", report_to="tensorboard")
    opt = parser.add_argument_group("accelerate script")
    opt.add_argument(
        "--time_budget_minutes", type=float, default=None,
        help="also stop training after this wall time (then evaluate and save); makes the step count machine-dependent",
    )  # fmt: skip
    opt.add_argument("--max_consecutive_nonfinite", type=int, default=10)
    opt.add_argument("--torch_threads", type=int, default=None, help="torch.set_num_threads (1 helps on busy machines)")
    opt.add_argument("--checkpointing_steps", default="epoch", help="an integer N (every N steps), 'epoch' or 'no'")
    opt.add_argument("--checkpoints_total_limit", type=int, default=2)
    opt.add_argument("--eval_every_epochs", type=int, default=1, help="evaluate every N epochs (0 = only at the end)")
    opt.add_argument("--no_progress_bar", action="store_true")
    return parse_and_resolve(parser, argv)


def _resolve_resume(args: argparse.Namespace, checkpoints_dir: Path) -> Path | None:
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = find_latest_checkpoint(checkpoints_dir)
        if found is None:
            logger.warning("no complete checkpoint in %s: starting from scratch", checkpoints_dir)
        return found
    path = Path(args.resume_from_checkpoint)
    if not is_complete_checkpoint(path):
        raise ValueError(f"{path} is not a complete checkpoint (a step_N folder with a COMPLETE file)")
    return path


def _log_terms(sums: dict[str, torch.Tensor], count: int, accelerator: Accelerator) -> dict[str, float]:
    """Mean of each logged term over the interval and over processes."""
    names = sorted(sums)
    stacked = torch.stack([sums[n] for n in names]).to(accelerator.device) / max(count, 1)
    stacked = accelerator.reduce(stacked, "mean")
    return {f"train/{n}": float(v) for n, v in zip(names, stacked)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    report_to = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
        **accelerator_options(args),  # --mixed_precision, --torch_compile
    )
    check_precision(accelerator.mixed_precision, accelerator.device)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    set_seed(args.seed)

    train_set, val_set, class_names = build_datasets(args, args.seed)
    processor = build_processor(args)
    model = build_model(args, class_names, train_set)
    collator = DetectionCollator(processor)
    sampler = EpochSampler(len(train_set), seed=args.seed)
    train_loader = DataLoader(
        train_set, batch_size=args.per_device_train_batch_size, sampler=sampler, collate_fn=collator,
        num_workers=args.dataloader_num_workers, drop_last=True, pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG out of loader start-up
    )  # fmt: skip
    val_loader = DataLoader(
        val_set, batch_size=args.per_device_eval_batch_size, shuffle=False, collate_fn=collator,
        num_workers=args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda",
    )  # fmt: skip

    optimizer = torch.optim.AdamW(
        build_param_groups(model, args.learning_rate, args.backbone_learning_rate, args.weight_decay)
    )
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)

    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise ValueError(
            f"the train split ({len(train_set)} images) is smaller than one global batch "
            f"({args.per_device_train_batch_size} × {accelerator.num_processes} processes)"
        )
    steps_per_epoch, max_steps, num_epochs = plan_steps(
        batches_per_epoch, args.gradient_accumulation_steps, args.num_train_epochs, args.max_train_steps
    )
    lr_drop_step = lr_drop_step_for(args, max_steps)
    settings = run_settings(
        args=args, model=accelerator.unwrap_model(model), processor=processor, class_names=class_names,
        num_train_images=len(train_set), num_val_images=len(val_set), steps_per_epoch=steps_per_epoch,
        max_steps=max_steps, num_epochs=num_epochs, lr_drop_step=lr_drop_step,
        num_processes=accelerator.num_processes,
    )  # fmt: skip
    if accelerator.is_main_process:
        logger.info("resolved settings:\n%s", format_settings(settings))
        write_settings(settings, output_dir)
        if args.print_config_only:
            processor.save_pretrained(output_dir)
    if args.print_config_only:
        accelerator.end_training()
        return {}
    # Stepped by hand once per optimiser step (accelerate's wrapper would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, build_lr_lambda(args.lr_scheduler, args.warmup_steps, max_steps, lr_drop_step, args.lr_drop_factor)
    )
    state = TrainState()
    ema = build_ema(args, accelerator.unwrap_model(model))  # None without --ema_decay; else evaluated and saved
    accelerator.register_for_checkpointing(scheduler, state, *([ema] if ema else []))

    resume = _resolve_resume(args, checkpoints_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        logger.info("resumed from %s at step %d (epoch %d)", resume, state.completed_steps, state.epoch)
    if state.batches_in_epoch >= batches_per_epoch:  # a checkpoint from the last batch of an epoch
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0

    if report_to:
        hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("detr_hf", config=hparams)

    checkpoint_every = None if args.checkpointing_steps in ("epoch", "no") else int(args.checkpointing_steps)

    def checkpoint() -> None:
        marker = {"step": state.completed_steps, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch}
        save_checkpoint_atomically(accelerator, checkpoints_dir, state.completed_steps, marker, args.checkpoints_total_limit)

    progress = TrainProgress(
        max_steps=max_steps, initial_step=state.completed_steps, time_budget_minutes=args.time_budget_minutes,
        disable=not accelerator.is_local_main_process or args.no_progress_bar,
    )  # fmt: skip
    sums: dict[str, torch.Tensor] = {}
    count = 0
    metrics: dict[str, float] = {}
    stop = state.completed_steps >= max_steps
    out_of_time = False
    nonfinite_local = False
    while not stop and state.epoch < num_epochs:
        sampler.start_epoch(state.epoch)
        model.train()
        loader = train_loader
        if state.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
        epoch_done = False
        for batch in loader:
            with accelerator.accumulate(model):
                try:
                    outputs = model(
                        pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
                    )
                    loss, loss_dict = outputs.loss, outputs.loss_dict
                except NonFinitePredictionError as error:
                    # Raised on every process together (the loss syncs it), so all of them skip backward.
                    logger.warning("step %d: %s", state.completed_steps, error)
                    loss, loss_dict = torch.tensor(float("nan"), device=accelerator.device), {}
                nonfinite_local |= not bool(torch.isfinite(loss.detach()))
                if loss.requires_grad:
                    accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                skip = False
                if accelerator.sync_gradients:
                    flags = torch.tensor(
                        [float(nonfinite_local or (grad_norm is not None and not torch.isfinite(grad_norm))),
                         float(progress.out_of_time())],
                        device=accelerator.device,
                    )  # fmt: skip
                    flags = accelerator.reduce(flags, "sum") if accelerator.num_processes > 1 else flags
                    skip, out_of_time = bool(flags[0] > 0), bool(flags[1] > 0)
                    nonfinite_local = False
                if not skip:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            with torch.no_grad():
                for name, value in loss_dict.items():
                    sums[name] = sums.get(name, 0) + value.detach().float()
                sums["loss"] = sums.get("loss", 0) + loss.detach().float()
            count += 1
            if not accelerator.sync_gradients:
                continue
            state.completed_steps += 1
            scheduler.step()
            if ema:
                ema.update(accelerator.unwrap_model(model), state.completed_steps)
            progress.advance()
            if skip:
                state.skipped_steps += 1
                state.consecutive_skipped += 1
                logger.warning(
                    "step %d: non-finite loss or gradient norm, optimiser step skipped (%d skipped in total)",
                    state.completed_steps, state.skipped_steps,
                )  # fmt: skip
                if state.consecutive_skipped >= args.max_consecutive_nonfinite:
                    raise RuntimeError(
                        f"{state.consecutive_skipped} consecutive non-finite steps: training has diverged; "
                        f"the last complete checkpoint is {find_latest_checkpoint(checkpoints_dir)}"
                    )
            else:
                state.consecutive_skipped = 0
            if state.completed_steps % args.logging_steps == 0:
                logs = _log_terms(sums, count, accelerator)
                logs["train/lr"] = scheduler.get_last_lr()[0]
                if grad_norm is not None:
                    logs["train/grad_norm"] = float(grad_norm)
                state.loss_history.append([state.completed_steps, logs["train/loss"]])
                progress.set_loss(logs["train/loss"])
                if report_to:
                    accelerator.log(logs, step=state.completed_steps)
                sums, count = {}, 0
            # The last batch of the epoch: the epoch counts (and is checkpointed) even when training stops here.
            epoch_done = state.batches_in_epoch >= batches_per_epoch
            if epoch_done:
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            if (checkpoint_every and state.completed_steps % checkpoint_every == 0) or (
                epoch_done and args.checkpointing_steps == "epoch"
            ):
                checkpoint()
            if state.completed_steps >= max_steps or out_of_time:
                stop = True
                break
        if epoch_done and not stop and args.eval_every_epochs and state.epoch % args.eval_every_epochs == 0:
            metrics = _evaluate(ema.module if ema else model, val_loader, processor, accelerator, args, state, report_to)
    progress.close()
    train_seconds = progress.elapsed()
    if out_of_time:
        logger.info(
            "the time budget of %g minutes ended training after %d of %d steps (epoch %d, %.0f s)",
            args.time_budget_minutes, state.completed_steps, max_steps, state.epoch, train_seconds,
        )  # fmt: skip
    else:
        logger.info("training ended after %d steps (%d epochs, %.0f s)", state.completed_steps, state.epoch, train_seconds)

    final_predictions: list = []
    metrics = _evaluate(ema.module if ema else model, val_loader, processor, accelerator, args, state, report_to, final_predictions)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = ema.module if ema else accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        train_results = {
            "completed_steps": state.completed_steps,
            "epochs": state.epoch,
            "stopped_by": "time budget" if out_of_time else "max_train_steps",
            "skipped_nonfinite_steps": state.skipped_steps,
            "train_seconds": train_seconds,
            "num_processes": accelerator.num_processes,
            "unreadable_images": train_set.unreadable_images,
            "fixed_boxes": train_set.fixed_boxes,
        }
        (output_dir / "train_results.json").write_text(json.dumps(train_results, indent=2))
        (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        (output_dir / "loss_history.json").write_text(json.dumps(state.loss_history))
        # Final validation detections in the COCO results format (+ the ground truth unless a COCO json is it).
        if not is_panoptic(args):
            write_evaluation_files(output_dir, final_predictions, val_set)
        if args.push_to_hub:
            repo_id = push_trained_model(
                model=unwrapped, processor=processor, repo_id=args.hub_model_id or output_dir.name,
                settings={**settings, "results": train_results}, metrics=metrics,
                dataset_id=hub_dataset_id(args.dataset_name), token=args.hub_token, private=args.hub_private_repo,
            )  # fmt: skip
            logger.info("pushed model, processor and model card to %s", repo_id)
    accelerator.end_training()
    return metrics


def _evaluate(model, val_loader, processor, accelerator, args, state, report_to, predictions_out=None) -> dict:
    if is_panoptic(args):  # PQ / SQ / RQ (all, things, stuff) on the PNG ground truth
        metrics = evaluate_panoptic(model, val_loader, val_loader.dataset, accelerator, threshold=args.panoptic_threshold)
        model.train()
        logger.info(
            "epoch %d step %d: PQ %.4f SQ %.4f RQ %.4f PQ_th %.4f PQ_st %.4f (%d images)", state.epoch,
            state.completed_steps, *(metrics[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "num_images")),
        )  # fmt: skip
    else:
        metrics = evaluate_coco(model, val_loader, processor, accelerator, predictions_out=predictions_out)
        model.train()
        logger.info(
            "epoch %d step %d: AP %.4f AP50 %.4f AP75 %.4f (%d images)",
            state.epoch, state.completed_steps, metrics["AP"], metrics["AP50"], metrics["AP75"], metrics["num_images"],
        )  # fmt: skip
    if report_to:
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.completed_steps)
    return metrics


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
