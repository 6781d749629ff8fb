"""Where the time and memory go: torch.profiler op tables of DETR-R50 inference and a training step, and the
bytes each part keeps for the backward of a training step, both models.

python benchmarks/profile_model.py [--rows 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import BATCH_512, load, make_batch, save_pair, training_step  # noqa: E402


def stage_times(model: torch.nn.Module, pixels, mask) -> dict[str, float]:
    """Wall ms of detr_hf's stages in one inference forward (input checks, backbone, transformer + heads)."""
    inner = model.model
    with torch.inference_mode():
        start = time.perf_counter()
        valid = inner._check_inputs(pixels, mask)
        checked = time.perf_counter()
        inner.backbone(pixels, valid)
        backbone = time.perf_counter()
        model(pixel_values=pixels, pixel_mask=mask)
        total = time.perf_counter()
    return {
        "input_checks_ms": 1e3 * (checked - start),
        "backbone_ms": 1e3 * (backbone - checked),
        "rest_of_forward_ms": 1e3 * (total - backbone) - 1e3 * (backbone - start),
    }


def saved_for_backward_mib(model: torch.nn.Module, pixels, mask, labels, depth: int = 3) -> dict[str, float]:
    """MiB autograd keeps for the backward of one training forward, by module (names up to `depth` dots; each
    storage counted once, where it is first saved; parameters and buffers excluded)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    stack, saved, hooks = ["(outside modules)"], {}, []

    def leave(_module, _args, _output) -> None:  # a forward hook returning a value would replace the output
        stack.pop()

    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            hooks.append(module.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n)))
            hooks.append(module.register_forward_hook(leave))

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = (stack[-1], storage.nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(pixel_values=pixels, pixel_mask=mask, labels=labels)
    for hook in hooks:
        hook.remove()
    per_module: dict[str, float] = {}
    for name, nbytes in saved.values():
        per_module[name] = per_module.get(name, 0.0) + nbytes / 2**20
    return {"total": sum(per_module.values())} | dict(sorted(per_module.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    pixels, mask, labels = make_batch(BATCH_512)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = dict(zip(("transformers", "detr_hf"), save_pair(Path(tmp))))
        models = {name: load(name, folder) for name, folder in dirs.items()}
    for name, model in models.items():
        for mode in ("inference", "training"):
            if mode == "inference":
                model.eval()
                step = lambda m=model: m(pixel_values=pixels, pixel_mask=mask)  # noqa: E731
                context = torch.inference_mode
            else:
                model.train()
                step = lambda m=model: training_step(m, pixels, mask, labels)  # noqa: E731
                context = torch.enable_grad
            with context():
                step()  # warm-up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step()
            print(f"\n== {name}, {mode}, batch 2 padded to 512²")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    for name, model in models.items():
        saved = saved_for_backward_mib(model, pixels, mask, labels)
        print(f"\n== {name}: MiB kept for the backward of a training forward, batch 2 padded to 512²")
        print("\n".join(f"{mib:8.1f}  {module}" for module, mib in list(saved.items())[: args.rows]))
    models["detr_hf"].eval()
    print("detr_hf stages:", stage_times(models["detr_hf"], pixels, mask))


if __name__ == "__main__":
    main()
