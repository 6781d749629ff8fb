"""Train detr_hf with the Hugging Face Trainer (same data, model options and COCO mAP as examples/train.py).

    python examples/train_trainer.py --output_dir outputs/trainer --num_train_epochs 10
    python examples/train_trainer.py --use_cpu --max_steps 50        # force CPU

The Trainer needs `remove_unused_columns=False` (label dicts are not model columns), the processor-based
collator, and `eval_do_concat_batches=False` so `compute_metrics` sees per-batch predictions for COCO mAP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from detr_hf.data import DetectionCollator
from detr_hf.evaluation import CocoTrainerMetrics, write_evaluation_files
from detr_hf.training import build_param_groups
from detr_hf.training.cli import add_data_args, add_model_args, build_datasets, build_model, build_processor

# Output fields that are not predictions: left out of what the Trainer collects at evaluation.
IGNORE_KEYS = [
    "loss_dict", "auxiliary_outputs", "last_hidden_state", "encoder_last_hidden_state",
    "encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions", "cross_attentions",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_model_args(parser)
    parser.add_argument("--output_dir", default="outputs/detr_hf_trainer")
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--backbone_learning_rate", type=float, default=None, help="default: --learning_rate")
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--max_grad_norm", type=float, default=0.1)
    parser.add_argument("--lr_scheduler_type", default="constant", help="any transformers scheduler name")
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--num_train_epochs", type=float, default=10)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--use_cpu", action="store_true")
    parser.add_argument("--logging_steps", type=int, default=20)
    parser.add_argument("--save_strategy", default="epoch", choices=("no", "epoch", "steps"))
    parser.add_argument("--eval_strategy", default="epoch", choices=("no", "epoch", "steps"))
    parser.add_argument("--report_to", default="none")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--resume_from_checkpoint", default=None)
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    return parser.parse_args(argv)


# compute_metrics: the official COCO protocol on the validation split's ground truth (see detr_hf.evaluation).
CocoMetrics = CocoTrainerMetrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    train_set, val_set, class_names = build_datasets(args, args.seed)
    processor = build_processor(args)
    model = build_model(args, class_names)
    backbone_lr = args.learning_rate if args.backbone_learning_rate is None else args.backbone_learning_rate
    optimizer = torch.optim.AdamW(build_param_groups(model, args.learning_rate, backbone_lr, args.weight_decay))
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        remove_unused_columns=False,
        eval_do_concat_batches=False,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        seed=args.seed,
        use_cpu=args.use_cpu,
        logging_steps=args.logging_steps,
        save_strategy=args.save_strategy,
        eval_strategy=args.eval_strategy,
        report_to=args.report_to,
        dataloader_num_workers=args.dataloader_num_workers,
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
    )
    metrics_fn = CocoMetrics(processor, val_set)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=DetectionCollator(processor, model_inputs_only=True),
        compute_metrics=metrics_fn,
        optimizers=(optimizer, None),
        processing_class=processor,
    )
    # Our loss ignores `num_items_in_batch`: let the Trainer scale it for gradient accumulation itself.
    trainer.model_accepts_loss_kwargs = False
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint, ignore_keys_for_eval=IGNORE_KEYS)
    metrics = trainer.evaluate(ignore_keys=IGNORE_KEYS)
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    if trainer.is_world_process_zero():
        Path(args.output_dir, "eval_results.json").write_text(json.dumps(metrics, indent=2))
        write_evaluation_files(args.output_dir, metrics_fn.last_results, val_set)
    if args.push_to_hub:
        trainer.push_to_hub()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
