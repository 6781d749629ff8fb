"""Train detr_hf with the Hugging Face Trainer (same data, model options and COCO mAP as examples/train.py).

    python examples/train_trainer.py --output_dir outputs/trainer --num_train_epochs 10
    python examples/train_trainer.py --use_cpu --max_train_steps 50        # force CPU
    python examples/train_trainer.py --mixed_precision bf16 --torch_compile  # bf16 autocast, compiled model

Recipes, flags and their values are shared with examples/train.py (`--recipe`, `--max_train_steps`,
`--lr_scheduler`, `--ema_decay`, `--resume_from_checkpoint latest`, `--push_to_hub`, ...); `training_config.json`
records the resolved settings. `--task panoptic` as in examples/train.py (evaluation: eval_PQ, eval_SQ, ...).

The Trainer needs `remove_unused_columns=False` (label dicts are not model columns), the processor-based
collator, and `eval_do_concat_batches=False` so `compute_metrics` sees per-batch predictions for COCO mAP.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from detr_hf.data import DetectionCollator
from detr_hf.evaluation import CocoTrainerMetrics, write_evaluation_files
from detr_hf.evaluation.panoptic_loop import evaluate_panoptic
from detr_hf.training import build_lr_lambda, build_param_groups
from detr_hf.training.cli import build_datasets, build_model, build_processor, make_parser, parse_and_resolve
from detr_hf.training.ema import EmaCallback, build_ema
from detr_hf.training.panoptic import is_panoptic
from detr_hf.training.precision import check_precision, trainer_options
from detr_hf.training.publish import hub_dataset_id, push_trained_model
from detr_hf.training.recipes import lr_drop_step_for
from detr_hf.training.run_config import format_settings, plan_steps, run_settings, write_settings

logger = logging.getLogger("detr_hf.train_trainer")

# Output fields that are not predictions: left out of what the Trainer collects at evaluation.
IGNORE_KEYS = [
    "loss_dict", "auxiliary_outputs", "last_hidden_state", "encoder_last_hidden_state",
    "encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions", "cross_attentions",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__, output_dir="outputs/detr_hf_trainer", report_to="none")
    trainer = parser.add_argument_group("Trainer script")
    trainer.add_argument("--use_cpu", action="store_true")
    trainer.add_argument("--save_strategy", default="epoch", choices=("no", "epoch", "steps"))
    trainer.add_argument("--save_steps", type=int, default=500, help="with --save_strategy steps")
    trainer.add_argument("--eval_strategy", default="epoch", choices=("no", "epoch", "steps"))
    trainer.add_argument("--eval_steps", type=int, default=None, help="with --eval_strategy steps")
    trainer.add_argument("--checkpoints_total_limit", type=int, default=2)
    return parse_and_resolve(parser, argv)


class DetrTrainer(Trainer):
    """The Trainer with detr_hf's lr schedules (warm-up + constant / step drop / cosine, as examples/train.py);
    with `panoptic_threshold`, evaluation is PQ / SQ / RQ by `evaluate_panoptic` (as examples/train.py)."""

    def __init__(
        self, *args: Any, lr_lambda_args: dict[str, Any], panoptic_threshold: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lr_lambda_args = lr_lambda_args
        self.panoptic_threshold = panoptic_threshold

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.panoptic_threshold is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        found = evaluate_panoptic(
            self.model, self.get_eval_dataloader(dataset), dataset, self.accelerator, threshold=self.panoptic_threshold
        )  # fmt: skip
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in found.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, build_lr_lambda(total_steps=num_training_steps, **self.lr_lambda_args)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler


# compute_metrics: the official COCO protocol on the validation split's ground truth (see detr_hf.evaluation).
CocoMetrics = CocoTrainerMetrics


def _resume_path(args: argparse.Namespace) -> str | None:
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint
    found = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if found is None:
        logger.warning("no checkpoint in %s: starting from scratch", args.output_dir)
    return found


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    train_set, val_set, class_names = build_datasets(args, args.seed)
    processor = build_processor(args)
    model = build_model(args, class_names, train_set)
    optimizer = torch.optim.AdamW(
        build_param_groups(model, args.learning_rate, args.backbone_learning_rate, args.weight_decay)
    )
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        remove_unused_columns=False,
        eval_do_concat_batches=False,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed,
        logging_steps=args.logging_steps,
        save_strategy=args.save_strategy,
        save_steps=args.save_steps,
        save_total_limit=args.checkpoints_total_limit,
        eval_strategy=args.eval_strategy,
        eval_steps=args.eval_steps,
        report_to=args.report_to,
        dataloader_num_workers=args.dataloader_num_workers,
        **trainer_options(args),  # --mixed_precision -> bf16 / fp16, --torch_compile, --use_cpu
    )
    check_precision(training_args.mixed_precision, training_args.device)
    # The Trainer keeps the last partial batch: its dataloader_drop_last would also drop evaluation images.
    global_batch = args.per_device_train_batch_size * training_args.world_size
    steps_per_epoch, max_steps, num_epochs = plan_steps(
        -(-len(train_set) // global_batch), args.gradient_accumulation_steps, args.num_train_epochs, args.max_train_steps
    )
    training_args.max_steps = max_steps  # the step count printed below is the one the Trainer runs
    lr_drop_step = lr_drop_step_for(args, max_steps)
    settings = run_settings(
        args=args, model=model, processor=processor, class_names=class_names, num_train_images=len(train_set),
        num_val_images=len(val_set), steps_per_epoch=steps_per_epoch, max_steps=max_steps, num_epochs=num_epochs,
        lr_drop_step=lr_drop_step, num_processes=training_args.world_size,
    )  # fmt: skip
    if training_args.process_index == 0:
        logger.info("resolved settings:\n%s", format_settings(settings))
        write_settings(settings, args.output_dir)
        if args.print_config_only:
            processor.save_pretrained(args.output_dir)
    if args.print_config_only:
        return {}
    metrics_fn = None if is_panoptic(args) else CocoMetrics(processor, val_set)
    trainer = DetrTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=DetectionCollator(processor, model_inputs_only=True),
        compute_metrics=metrics_fn,
        optimizers=(optimizer, None),
        processing_class=processor,
        lr_lambda_args=dict(
            schedule=args.lr_scheduler, warmup_steps=args.warmup_steps, lr_drop_step=lr_drop_step,
            lr_drop_factor=args.lr_drop_factor,
        ),
        panoptic_threshold=args.panoptic_threshold if is_panoptic(args) else None,
    )  # fmt: skip
    # Our loss ignores `num_items_in_batch`: let the Trainer scale it for gradient accumulation itself.
    trainer.model_accepts_loss_kwargs = False
    resume = _resume_path(args)
    ema = build_ema(args, trainer.model)  # --ema_decay: the final evaluation and save_model use the average
    if ema:
        trainer.add_callback(EmaCallback(ema, resume_from=resume))
    trainer.train(resume_from_checkpoint=resume, ignore_keys_for_eval=IGNORE_KEYS)
    metrics = trainer.evaluate(ignore_keys=IGNORE_KEYS)
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(args.output_dir)
        Path(args.output_dir, "eval_results.json").write_text(json.dumps(metrics, indent=2))
        if metrics_fn is not None:
            write_evaluation_files(args.output_dir, metrics_fn.last_results, val_set)
        if args.push_to_hub:
            repo_id = push_trained_model(
                model=trainer.model, processor=processor, repo_id=args.hub_model_id or Path(args.output_dir).name,
                settings=settings, metrics=metrics, dataset_id=hub_dataset_id(args.dataset_name),
                token=args.hub_token, private=args.hub_private_repo,
            )  # fmt: skip
            logger.info("pushed model, processor and model card to %s", repo_id)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(sys.argv[1:])
