"""Frozen BN folded into its conv: same values and gradients as conv → frozen BN, same state dict, a weight
cache that follows every change, non-ResNet bodies left alone, and the fold undone on request."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torchvision.ops.misc import FrozenBatchNorm2d

from detr_hf.frozen_bn_folding import (
    ConvFrozenBatchNorm2d,
    FoldedFrozenBatchNorm2d,
    fold_frozen_batch_norm,
    unfold_frozen_batch_norm,
)
from helpers import assert_close_scaled, frozen_timm_body

TOL = dict(atol=1e-4, rtol=1e-4)
# A detection-sized image (the backbone sees 800-1333 px; 320 × 480 keeps the test fast on 2 cores).
IMAGE_SHAPE = (2, 3, 320, 480)


def _conv_inputs(body: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input activation of every conv of `body` on `x`, by module name."""
    inputs, hooks = {}, []
    for name, module in body.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_pre_hook(lambda _m, args, n=name: inputs.__setitem__(n, args[0])))
    with torch.no_grad():
        body(x)
    for hook in hooks:
        hook.remove()
    return inputs


@pytest.mark.parametrize("name", ["test_resnet", "resnet18"])
def test_every_folded_conv_equals_conv_then_frozen_bn_within_1e5(name):
    """Layer by layer, on the activations a 320 × 480 image produces: folded conv = conv → frozen BN."""
    reference = frozen_timm_body(name).eval()
    folded = copy.deepcopy(reference)
    assert fold_frozen_batch_norm(folded) == sum(isinstance(m, torch.nn.Conv2d) for m in reference.modules())
    inputs = _conv_inputs(reference, torch.randn(*IMAGE_SHAPE, generator=torch.Generator().manual_seed(0)))
    modules, ref_modules = dict(folded.named_modules()), dict(reference.named_modules())
    checked = 0
    for conv_name, activation in inputs.items():
        conv = modules[conv_name]
        assert isinstance(conv, ConvFrozenBatchNorm2d), conv_name
        norm = conv.folded_norm
        assert isinstance(norm, FoldedFrozenBatchNorm2d)
        norm_name = next(n for n, m in folded.named_modules() if m is norm)
        ref_conv, ref_norm = ref_modules[conv_name], ref_modules[norm_name]
        assert type(ref_norm) is FrozenBatchNorm2d
        with torch.no_grad():
            expected = ref_norm(ref_conv(activation))
            for x in (activation, activation.contiguous(memory_format=torch.channels_last)):
                scale = max(1.0, expected.abs().max().item())
                error = (conv(x) - expected).abs().max().item()  # cached inference path
                assert error <= 1e-5 * scale, f"{conv_name}: {error:.3g} > 1e-5 × {scale:.3g}"
                assert torch.equal(norm(x), x)  # the BN itself passes its input through
        with torch.enable_grad():
            error = (conv(activation) - expected).abs().max().item()  # autograd path, rebuilt every call
        assert error <= 1e-5 * max(1.0, expected.abs().max().item()), conv_name
        checked += 1
    assert checked == len(inputs) > 0


@pytest.mark.parametrize("name", ["test_resnet", "resnet18"])
def test_folded_body_equals_conv_then_bn_in_values_and_gradients(name):
    reference = frozen_timm_body(name)
    folded = copy.deepcopy(reference)
    fold_frozen_batch_norm(folded)
    assert isinstance(folded.layer1[0].conv1, ConvFrozenBatchNorm2d)
    x = torch.randn(2, 3, 48, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = folded(x)[-1], reference(x_ref)[-1]
    torch.testing.assert_close(out, ref, **TOL)
    # Training through the folded conv: same gradients for the conv weights and the input.
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert_close_scaled(x.grad, x_ref.grad, "input")
    for (n, p), (_, p_ref) in zip(folded.named_parameters(), reference.named_parameters()):
        assert_close_scaled(p.grad, p_ref.grad, n)


def test_folding_keeps_state_dict_and_follows_loaded_weights():
    reference = frozen_timm_body()
    folded = copy.deepcopy(reference)
    fold_frozen_batch_norm(folded)
    ref_state, state = reference.state_dict(), folded.state_dict()
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    # New BN statistics loaded after folding are used (the scale is not cached).
    other = frozen_timm_body(seed=1)
    folded.load_state_dict(other.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[-1], other(x)[-1], **TOL)
    assert unfold_frozen_batch_norm(folded) > 0
    assert not any(isinstance(m, ConvFrozenBatchNorm2d) for m in folded.modules())
    assert list(folded.state_dict()) == list(ref_state)
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[-1], other(x)[-1], **TOL)


def test_non_resnet_bodies_are_left_alone():
    body = freeze_batch_norm_2d(
        timm.create_model("mobilenetv3_small_050", features_only=True, out_indices=(-1,))
    )
    assert fold_frozen_batch_norm(body) == 0


def test_inference_cache_of_folded_weights_follows_every_change():
    reference = frozen_timm_body().eval()
    folded = copy.deepcopy(reference)
    fold_frozen_batch_norm(folded)
    x = torch.randn(1, 3, 64, 64)
    x_last = x.contiguous(memory_format=torch.channels_last)
    conv = folded.layer1[0].conv1
    with torch.no_grad():
        for inputs in (x, x_last, x):  # cached per memory format, reused on the repeat
            torch.testing.assert_close(folded(inputs)[-1], reference(inputs)[-1], **TOL)
        cached = conv.__dict__["_folded_cache"]
        folded(x)
        assert conv.__dict__["_folded_cache"] is cached  # nothing changed: the cache is reused
        # In-place updates (an optimiser step, a statistics copy) bump the version: the cache is rebuilt.
        for model in (folded, reference):
            model.layer1[0].conv1.weight.mul_(1.5)
            model.layer2[0].bn2.running_var.mul_(2.0)
        torch.testing.assert_close(folded(x)[-1], reference(x)[-1], **TOL)
        assert conv.__dict__["_folded_cache"] is not cached
        # A new tensor (load_state_dict with assign, or a module swap) is seen too.
        for model in (folded, reference):
            model.layer1[0].bn1.weight = model.layer1[0].bn1.weight * 0.5
        torch.testing.assert_close(folded(x)[-1], reference(x)[-1], **TOL)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x_last)[-1], reference(x_last)[-1], **TOL)
    # Autograd on: no cache, gradients reach the conv weight.
    folded(x)[-1].sum().backward()
    assert conv.weight.grad is not None


def _saved_activation_bytes(body: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of `body(x)`, parameters and buffers excluded (storages counted once)."""
    own = {t.untyped_storage().data_ptr() for t in (*body.parameters(), *body.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        body(x)
    return sum(saved.values())


def test_training_keeps_no_scaled_weight_copy_for_the_backward():
    """conv → frozen BN keeps the conv inputs for the backward; the folded body keeps no more (the scaled
    weights it convolves with are rebuilt in the backward, not kept per conv)."""
    reference = frozen_timm_body("test_resnet")
    folded = copy.deepcopy(reference)
    fold_frozen_batch_norm(folded)
    x = torch.randn(1, 3, 64, 96, requires_grad=True)
    assert _saved_activation_bytes(folded, x) <= _saved_activation_bytes(reference, x)
