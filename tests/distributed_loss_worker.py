"""Worker launched by test_criterion_distributed: DETR loss and DDP gradients on this process's share of a batch.

Usage: `<launcher> distributed_loss_worker.py {torchrun|accelerate} OUT.json [nan]`; rank 0 writes the loss
terms (averaged over processes) and the DDP-averaged parameter gradients. `single_process_result()` gives the
same numbers for the whole batch in one process. With `nan`, rank 0's predictions are NaN and every rank
writes the error its loss raised to OUT.json.rank<r> (no rank may hang waiting for the other).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from detr_hf.criterion import DetrHfLoss
from detr_hf.matcher import HungarianMatcher
from loss_problems import random_labels

BATCH, QUERIES, LAYERS, NUM_LABELS, DIM = 4, 12, 3, 5, 8
# The halves hold 7 and 2 targets: a per-process normaliser (box count or class weights) would differ.
COUNTS = [5, 2, 0, 2]
TERMS = [f"{name}{suffix}" for suffix in ("", "_0", "_1") for name in ("loss_ce", "loss_bbox", "loss_giou")]


class TinyDetectionHead(nn.Module):
    """Class and box heads shared by all decoder layers: features [L, B, Q, D] → logits, boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.class_head = nn.Linear(DIM, NUM_LABELS + 1)
        self.box_head = nn.Linear(DIM, 4)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.class_head(features), self.box_head(features).sigmoid()


def build() -> tuple[TinyDetectionHead, torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    model = TinyDetectionHead()
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(LAYERS, BATCH, QUERIES, DIM, generator=gen)
    return model, features, random_labels(gen, COUNTS, NUM_LABELS)


def loss_terms(model: nn.Module, features: torch.Tensor, labels: list) -> torch.Tensor:
    """[loss, *TERMS] for this batch share."""
    logits, boxes = model(features)
    aux = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
    criterion = DetrHfLoss(NUM_LABELS, HungarianMatcher(1.0, 5.0, 2.0), 0.1, 5.0, 2.0, auxiliary_loss=True)
    loss, loss_dict = criterion(logits[-1], boxes[-1], labels, aux)
    return torch.stack([loss] + [loss_dict[k] for k in TERMS])


def single_process_result() -> dict:
    model, features, labels = build()
    terms = loss_terms(model, features, labels)
    terms[0].backward()
    return {"terms": terms.tolist(), "grads": {n: p.grad.tolist() for n, p in model.named_parameters()}}


def main(launcher: str, out_path: str, scenario: str = "") -> None:
    if launcher == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        rank, world = accelerator.process_index, accelerator.num_processes
    else:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if world != 2 or not dist.is_initialized():
        raise RuntimeError(f"expected 2 initialised processes, got world size {world}")
    model, features, labels = build()
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    if scenario == "nan":
        from detr_hf.targets import NonFinitePredictionError

        model = nn.parallel.DistributedDataParallel(model) if launcher == "torchrun" else accelerator.prepare(model)
        shard = features[:, share] * (float("nan") if rank == 0 else 1.0)
        try:
            loss_terms(model, shard, labels[share])
            message = "no error"
        except NonFinitePredictionError as error:
            message = f"NonFinitePredictionError: {error}"
        with open(f"{out_path}.rank{rank}", "w") as f:
            f.write(message)
        dist.barrier()
        dist.destroy_process_group()
        return
    if launcher == "accelerate":
        ddp_model = accelerator.prepare(model)
        terms = loss_terms(ddp_model, features[:, share], labels[share])
        accelerator.backward(terms[0])
    else:
        ddp_model = nn.parallel.DistributedDataParallel(model)
        terms = loss_terms(ddp_model, features[:, share], labels[share])
        terms[0].backward()
    terms = terms.detach().clone()
    dist.all_reduce(terms)
    if rank == 0:
        result = {
            "terms": (terms / world).tolist(),
            "grads": {n: p.grad.tolist() for n, p in model.named_parameters()},
        }
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
