"""A saved detr_hf folder carries its code: a process without detr_hf loads all four auto classes with trust_remote_code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import get_relative_import_files

from remote_code_helpers import (
    PACKAGE_DIR,
    assert_same_outputs,
    build_tiny_detector,
    reference_outputs,
    run_child,
    save_folder,
)


def test_saved_folder_holds_all_code_and_auto_map(tmp_path):
    save_folder(build_tiny_detector(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_detr_hf.DetrHfConfig",
        "AutoModel": "modeling_detr_hf.DetrHfModel",
        "AutoModelForObjectDetection": "modeling_detr_hf.DetrHfForObjectDetection",
        "AutoImageProcessor": "image_processing_detr_hf.DetrHfImageProcessor",
        "AutoModelForImageSegmentation": "modeling_detr_hf_segmentation.DetrHfForSegmentation",
    }
    processor_config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"] == {
        "AutoImageProcessor": "image_processing_detr_hf.DetrHfImageProcessor"
    }
    needed = {"modeling_detr_hf.py", "configuration_detr_hf.py", "image_processing_detr_hf.py"}
    for module in list(needed):
        needed |= {Path(f).name for f in get_relative_import_files(PACKAGE_DIR / module)}
    # The closure must include the modules the model really runs on, not just the file it is defined in.
    assert {"criterion.py", "matcher.py", "box_ops.py", "backbone.py", "transformer.py"} <= needed
    assert needed <= {p.name for p in tmp_path.iterdir()}
    for name in needed:
        assert (tmp_path / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()


def test_copied_code_imports_nothing_from_detr_hf_absolutely():
    """Absolute `detr_hf` imports would fail in the remote-code process (transformers checks imports first)."""
    from transformers.dynamic_module_utils import get_imports

    modules = {"modeling_detr_hf.py", "configuration_detr_hf.py", "image_processing_detr_hf.py"}
    files = set()
    for module in modules:
        files |= {PACKAGE_DIR / module, *map(Path, get_relative_import_files(PACKAGE_DIR / module))}
    offenders = sorted(f.name for f in files if "detr_hf" in get_imports(f))
    assert offenders == []


@pytest.mark.slow
def test_fresh_process_without_detr_hf_loads_every_auto_class(tmp_path):
    model = build_tiny_detector()
    folder = tmp_path / "saved"
    processor = save_folder(model, folder)
    inputs_file = tmp_path / "inputs.pt"
    expected = reference_outputs(model, processor, inputs_file)

    got, classes = run_child(str(folder), tmp_path, inputs_file, {"HF_HUB_OFFLINE": "1"})

    assert classes["loaded_detr_hf"] == []
    # pipeline() without detr_hf: no "not supported for object-detection" error, and it detects.
    assert not [e for e in classes["pipeline_errors"] if "not supported" in e], classes["pipeline_errors"]
    assert classes["pipeline_detections"] > 0
    for name, expected_class in (
        ("config", "configuration_detr_hf.DetrHfConfig"),
        ("detector", "modeling_detr_hf.DetrHfForObjectDetection"),
        ("base", "modeling_detr_hf.DetrHfModel"),
        ("processor", "image_processing_detr_hf.DetrHfImageProcessor"),
    ):
        assert classes[name].startswith("transformers_modules."), classes[name]
        assert classes[name].endswith(expected_class), classes[name]
    assert_same_outputs(expected, got)
