"""Recipes: which one a command gets, explicit flags win, contradictions and unknown names fail before any step,
both scripts share the flags, and the saved training_config.json / preprocessor_config.json show the recipe."""

from __future__ import annotations

import json

import pytest

from detr_hf.training.recipes import RECIPES, lr_drop_step_for, scaled_detr_augmentation
from helpers import make_coco_folder
from script_helpers import (
    COCO_AND_NEW_CATEGORIES,
    QUIET_RUN,
    TINY_FRESH_MODEL,
    coco_folder_argv,
    load_script,
    save_tiny_checkpoint,
)

SCRIPTS = ("train", "train_trainer")


@pytest.fixture(scope="module", params=SCRIPTS)
def script(request):
    return load_script(request.param)


@pytest.fixture(scope="module")
def train_script():
    return load_script("train")


@pytest.fixture(scope="module")
def checkpoint_64(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt64")
    return save_tiny_checkpoint(folder, {0: "square", 1: "circle"}, {"shortest_edge": 64, "longest_edge": 96})


def test_default_recipe_follows_what_the_user_named(script, tmp_path):
    assert script.parse_args([]).recipe == "demo"
    assert script.parse_args(["--coco_dir", str(tmp_path)]).recipe == "detr-r50"
    assert script.parse_args(["--dataset_name", "cppe-5"]).recipe == "detr-r50"


def test_detr_r50_has_the_papers_values(script):
    args = script.parse_args(["--dataset_name", "cppe-5"])
    assert (args.d_model, args.encoder_layers, args.decoder_layers, args.num_heads) == (256, 6, 6, 8)
    assert (args.ffn_dim, args.num_queries, args.dropout, args.no_aux_loss) == (2048, 100, 0.1, False)
    assert (args.learning_rate, args.backbone_learning_rate, args.weight_decay, args.max_grad_norm) == (
        1e-4, 1e-5, 1e-4, 0.1,
    )  # fmt: skip
    assert args.backbone == "resnet50.tv_in1k" and args.pretrained_backbone is True
    assert (args.eval_size, args.max_size, args.augmentation) == (800, 1333, "detr")
    assert args.train_scales == ",".join(str(s) for s in range(480, 801, 32))
    assert (args.crop_size_range, args.crop_resize_scales) == ("384,600", "400,500,600")
    assert args.lr_scheduler == "step" and lr_drop_step_for(args, 300) == 200
    assert (args.num_query_groups, args.num_denoising_groups, args.ema_decay) == (1, 0, None)  # no training aids


def test_explicit_flags_win_over_the_recipe(script):
    args = script.parse_args(["--dataset_name", "x", "--learning_rate", "3e-4", "--eval_size", "512", "--dropout", "0"])
    assert (args.learning_rate, args.eval_size, args.dropout) == (3e-4, 512, 0.0)
    assert args.backbone_learning_rate == 1e-5 and args.max_size == 1333
    args = script.parse_args(["--recipe", "demo", "--lr_scheduler", "step", "--lr_drop_step", "7"])
    assert lr_drop_step_for(args, 300) == 7
    assert (args.num_denoising_groups, args.ema_decay, args.learning_rate) == (3, 0.9998, 4e-4)  # the demo's aids
    args = script.parse_args(["--num_denoising_groups", "0", "--ema_decay", "0"])
    assert (args.recipe, args.num_denoising_groups, args.ema_decay) == ("demo", 0, 0.0)


def test_finetune_takes_sizes_from_the_checkpoint_processor(script, checkpoint_64):
    args = script.parse_args(["--model_name_or_path", str(checkpoint_64)])
    assert args.recipe == "finetune"
    assert (args.eval_size, args.max_size, args.augmentation) == (64, 96, "detr")
    assert args.train_scales == scaled_detr_augmentation(64, 96)["train_scales"]
    assert (args.learning_rate, args.backbone_learning_rate) == (1e-4, 1e-5)
    assert args.d_model is None  # architecture comes from the checkpoint


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "fast"], "unknown --recipe 'fast'; known recipes: detr-r50, finetune, demo"),
        (["--recipe", "finetune"], "--recipe finetune needs --model_name_or_path"),
        (["--coco_recipe", "--recipe", "demo"], "--coco_recipe (= --recipe detr-r50) contradicts --recipe demo"),
        (["--learning", "1e-3"], "unrecognized arguments: --learning 1e-3"),
    ],
)
def test_bad_flags_are_one_clear_usage_error(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--d_model", "64"], ["--backbone", "resnet18"], ["--num_queries", "10"]])
def test_architecture_flags_contradict_a_checkpoint(script, checkpoint_64, flag, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--model_name_or_path", str(checkpoint_64), *flag])
    err = capsys.readouterr().err
    assert f"{flag[0]} contradicts --model_name_or_path" in err and "architecture comes from the checkpoint" in err
    with pytest.raises(SystemExit):
        script.parse_args(["--model_name_or_path", str(checkpoint_64), "--recipe", "detr-r50"])
    assert "fine-tuning a checkpoint uses --recipe finetune" in capsys.readouterr().err


def test_coco_recipe_is_a_deprecated_alias(script, caplog):
    with caplog.at_level("WARNING"):
        args = script.parse_args(["--coco_recipe", "--backbone", "resnet50"])
    assert args.recipe == "detr-r50" and args.backbone == "resnet50" and args.d_model == 256
    assert "--coco_recipe is deprecated" in caplog.text


def test_both_scripts_share_flag_names_and_values():
    parsers = {}
    for name in SCRIPTS:
        module = load_script(name)
        captured = {}
        original = module.parse_and_resolve

        def keep(parser, argv, captured=captured, original=original):
            captured["parser"] = parser
            return original(parser, argv)

        module.parse_and_resolve = keep
        module.parse_args([])
        parsers[name] = captured["parser"]
    options = {name: set(p._option_string_actions) for name, p in parsers.items()}
    shared = options["train"] & options["train_trainer"]
    for flag in (
        "--recipe", "--max_train_steps", "--num_train_epochs", "--resume_from_checkpoint", "--lr_scheduler",
        "--learning_rate", "--backbone_learning_rate", "--push_to_hub", "--hub_model_id", "--checkpoints_total_limit",
        "--print_config_only", "--per_device_train_batch_size",
    ):  # fmt: skip
        assert flag in shared, flag
    argv = ["--dataset_name", "x", "--max_train_steps", "9", "--lr_scheduler", "cosine", "--resume_from_checkpoint", "latest"]
    a, b = (load_script(name).parse_args(argv) for name in SCRIPTS)
    for key in ("max_train_steps", "lr_scheduler", "resume_from_checkpoint", "learning_rate", "eval_size", "recipe"):
        assert getattr(a, key) == getattr(b, key), key


def test_every_recipe_names_known_flags(train_script):
    known = vars(train_script.parse_args([]))
    for name, values in RECIPES.items():
        assert set(values) <= set(known), (name, set(values) - set(known))


@pytest.mark.parametrize("script_name", SCRIPTS)
def test_detr_r50_config_and_processor_show_800_1333(script_name, tmp_path):
    coco = make_coco_folder(tmp_path / "coco", num_train=3, num_val=1, categories=COCO_AND_NEW_CATEGORIES)
    out = tmp_path / "out"
    quiet = QUIET_RUN if script_name == "train" else ["--report_to", "none"]
    load_script(script_name).main(
        [*coco_folder_argv(coco), "--output_dir", str(out), "--print_config_only", "--no_pretrained_backbone",
         "--num_train_epochs", "3", "--per_device_train_batch_size", "1", *quiet]
    )  # fmt: skip
    config = json.loads((out / "training_config.json").read_text())
    assert config["recipe"] == "detr-r50"
    assert config["images"]["processor_size"] == {"shortest_edge": 800, "longest_edge": 1333}
    assert (config["images"]["eval_size"], config["images"]["max_size"]) == (800, 1333)
    model = config["model"]
    assert (model["backbone"], model["d_model"], model["num_queries"], model["encoder_layers"]) == (
        "resnet50.tv_in1k", 256, 100, 6,
    )  # fmt: skip
    assert model["frozen_backbone_batch_norm"] is False  # --no_pretrained_backbone: random BN stays trainable
    assert 40e6 < model["parameters"] < 43e6  # DETR-R50 ≈ 41.5 M
    assert config["data"]["labels"] == ["person", "car", "train", "dog", "widget"]
    assert config["steps"] == {
        "max_train_steps": 9, "steps_per_epoch": 3, "num_epochs": 3, "time_budget_minutes": None, "stops_at": "9 steps",
    }  # fmt: skip
    assert config["optimisation"]["lr_drop_step"] == 6
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 800, "longest_edge": 1333}
    assert not (out / "model.safetensors").exists()  # nothing trained


def test_finetune_keeps_the_checkpoint_processor(tmp_path, train_script):
    ckpt = save_tiny_checkpoint(
        tmp_path / "ckpt", {0: "person", 1: "car"}, {"shortest_edge": 800, "longest_edge": 1333}
    )
    coco = make_coco_folder(tmp_path / "coco", num_train=3, num_val=1, categories=COCO_AND_NEW_CATEGORIES)
    out = tmp_path / "out"
    train_script.main(
        [*coco_folder_argv(coco), "--model_name_or_path", str(ckpt), "--output_dir", str(out), "--print_config_only",
         "--per_device_train_batch_size", "1", *QUIET_RUN]
    )  # fmt: skip
    config = json.loads((out / "training_config.json").read_text())
    assert config["recipe"] == "finetune" and config["model"]["from"] == str(ckpt)
    assert config["model"]["d_model"] == 32 and config["model"]["auxiliary_loss"] is True  # training-only: on
    assert config["images"]["train_scales"] == ",".join(str(s) for s in range(480, 801, 32))
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {
        "shortest_edge": 800, "longest_edge": 1333,
    }  # fmt: skip
    # Only an explicit flag changes the loaded processor's size.
    train_script.main(
        [*coco_folder_argv(coco), "--model_name_or_path", str(ckpt), "--output_dir", str(out), "--print_config_only",
         "--eval_size", "640", "--per_device_train_batch_size", "1", *QUIET_RUN]
    )  # fmt: skip
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {
        "shortest_edge": 640, "longest_edge": 1333,
    }  # fmt: skip


def test_fresh_runs_use_the_tiny_model_flags(train_script):
    args = train_script.parse_args(["--dataset_name", "x", *TINY_FRESH_MODEL])
    assert args.backbone == "test_resnet" and args.pretrained_backbone is False and args.backbone_out_indices is None


def test_finetune_reads_a_transformers_detr_processor_config(script, tmp_path):
    folder = tmp_path / "transformers_detr"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DetrImageProcessor", "format": "coco_detection", "do_resize": True, "size": 600,
        "max_size": 1000, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
    }))  # fmt: skip
    args = script.parse_args(["--model_name_or_path", str(folder)])
    assert (args.recipe, args.eval_size, args.max_size) == ("finetune", 600, 1000)
    assert args.train_scales.split(",")[0] == "360" and args.train_scales.split(",")[-1] == "600"
    processor = script.build_processor(args)
    assert processor.size == {"shortest_edge": 600, "longest_edge": 1000} and list(processor.image_mean) == [0.5] * 3


def test_an_explicit_epoch_count_beats_the_recipes_step_count(train_script):
    assert train_script.parse_args([]).max_train_steps == 5000
    args = train_script.parse_args(["--num_train_epochs", "2"])
    assert (args.num_train_epochs, args.max_train_steps) == (2, None)
