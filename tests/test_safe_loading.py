"""Safe loading: weights only through safetensors, no unpickling of code, clear errors for broken files and configs."""

from __future__ import annotations

import ast
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import detr_hf
from detr_hf import DetrHfConfig, DetrHfForObjectDetection
from helpers import tiny_config

PACKAGE_DIR = Path(detr_hf.__file__).parent


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = DetrHfForObjectDetection(tiny_config()).eval()
    folder = tmp_path_factory.mktemp("safe") / "saved"
    model.save_pretrained(folder)
    return model, folder


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def test_save_pretrained_writes_weights_only_as_safetensors(saved):
    model, folder = saved
    weight_like = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert weight_like == []
    assert (folder / "model.safetensors").is_file()
    loaded = DetrHfForObjectDetection.from_pretrained(folder).eval()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_pytorch_model_bin_alone_is_refused_not_used_silently(saved, tmp_path):
    model, folder = saved
    bin_only = tmp_path / "bin_only"
    bin_only.mkdir()
    shutil.copy(folder / "config.json", bin_only / "config.json")
    torch.save(model.state_dict(), bin_only / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"pytorch_model\.bin.*safetensors"):
        DetrHfForObjectDetection.from_pretrained(bin_only)
    # The explicit opt-in still works (transformers then loads with weights_only=True).
    loaded = DetrHfForObjectDetection.from_pretrained(bin_only, use_safetensors=False)
    assert torch.equal(loaded.class_labels_classifier.weight, model.class_labels_classifier.weight)


def test_safetensors_preferred_when_both_files_exist(saved, tmp_path):
    model, folder = saved
    both = _copy(folder, tmp_path / "both")
    poisoned = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    torch.save(poisoned, both / "pytorch_model.bin")
    loaded = DetrHfForObjectDetection.from_pretrained(both)
    assert torch.equal(loaded.class_labels_classifier.weight, model.class_labels_classifier.weight)


@pytest.mark.parametrize("keep", ["half", "5 bytes", "all but 100 bytes"])
def test_truncated_safetensors_names_the_file(saved, tmp_path, keep):
    _, folder = saved
    broken = _copy(folder, tmp_path / "broken")
    data = (broken / "model.safetensors").read_bytes()
    size = {"half": len(data) // 2, "5 bytes": 5, "all but 100 bytes": len(data) - 100}[keep]
    (broken / "model.safetensors").write_bytes(data[:size])
    with pytest.raises(OSError, match=r"unreadable safetensors file .*broken/model\.safetensors"):
        DetrHfForObjectDetection.from_pretrained(broken)


def _with_config_field(folder: Path, dest: Path, **fields) -> Path:
    dest = _copy(folder, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(fields)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("d_model", -3, "d_model must be an integer >= 1"),
        ("num_queries", "7", "num_queries must be an integer >= 1"),
        ("encoder_layers", 2.5, "encoder_layers must be an integer >= 1"),
        ("dropout", 2.0, "dropout must be in"),
        ("eos_coefficient", float("nan"), "eos_coefficient must be a number >= 0"),
        ("class_cost", "high", "class_cost must be a number >= 0"),
        ("activation_function", "swish2", "activation_function must be one of"),
        ("position_embedding_type", "rope", "position_embedding_type must be one of"),
        ("backbone", "no_such_net", "backbone='no_such_net' is not a timm model"),
        ("backbone_kwargs", {"pretrained": True}, "backbone_kwargs must not set"),
        ("id2label", {}, "num_labels must be >= 1"),
    ],
)
def test_invalid_config_field_is_named(saved, tmp_path, field, value, message):
    _, folder = saved
    bad = _with_config_field(folder, tmp_path / "bad", **{field: value})
    with pytest.raises(ValueError, match=message):
        DetrHfForObjectDetection.from_pretrained(bad)


def test_backbone_kwargs_timm_rejects_are_named(tmp_path):
    from detr_hf import DetrHfModel

    for kwargs in ({"out_indices": [9]}, {"no_such_option": 1}):
        with pytest.raises(ValueError, match="backbone_kwargs") as info:
            DetrHfModel(tiny_config(backbone_kwargs=kwargs))
        assert next(iter(kwargs)) in str(info.value)


def test_unknown_config_field_is_kept_with_a_warning_naming_it(saved, tmp_path, caplog):
    _, folder = saved
    odd = _with_config_field(folder, tmp_path / "odd", num_querys=50, future_option={"a": 1})
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        model = DetrHfForObjectDetection.from_pretrained(odd)
    text = caplog.text
    assert "'num_querys'" in text and "did you mean 'num_queries'" in text
    assert "'future_option'" in text
    assert model.config.future_option == {"a": 1}
    assert model.config.num_queries == 5  # the typo did not change the model


def test_known_config_fields_do_not_warn(saved, caplog):
    _, folder = saved
    with caplog.at_level(logging.WARNING, logger="detr_hf"):
        DetrHfConfig.from_pretrained(folder)
        DetrHfConfig(num_labels=4, output_hidden_states=True, torch_dtype="float32")
    assert "unknown field" not in caplog.text


def test_num_channels_reaches_the_backbone():
    model = DetrHfForObjectDetection(tiny_config(num_channels=1)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64))
    assert out.logits.shape == (1, 5, 4)


class _Payload:
    """Unpickling this would create a file: the stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_original_pth_with_pickled_object_is_rejected(tmp_path):
    from detr_hf import convert
    marker = tmp_path / "code_ran"
    checkpoint = {"model": {"class_embed.weight": torch.zeros(92, 256)}, "extra": _Payload(str(marker))}
    torch.save(checkpoint, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        convert.convert_original_checkpoint(tmp_path / "evil.pth", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_package_never_unpickles():
    """Static check of every module: no pickle import, torch.load only with weights_only=True, no allow_pickle."""
    problems = []
    for file in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for n in names):
                    problems.append(f"{file.name}:{node.lineno} imports a pickle module")
        for call, name in _calls(tree):
            keywords = {k.arg: k.value for k in call.keywords}
            if name in ("torch.load", "load"):
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{file.name}:{call.lineno} torch.load without weights_only=True")
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(f"{file.name}:{call.lineno} allow_pickle")
            if name.endswith(("pickle.load", "pickle.loads")):
                problems.append(f"{file.name}:{call.lineno} {name}")
    assert problems == []
