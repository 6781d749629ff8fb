"""What a saved or pushed detr_hf model carries besides weights: the code of all four auto classes and a model card."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers.dynamic_module_utils import get_relative_import_files

from .modelcard import GENERATED_MARKER, write_model_card

# auto class → (module file, class); the module files and everything they import relatively travel together.
AUTO_CLASSES: dict[str, tuple[str, str]] = {
    "AutoConfig": ("configuration_detr_hf", "DetrHfConfig"),
    "AutoModel": ("modeling_detr_hf", "DetrHfModel"),
    "AutoModelForObjectDetection": ("modeling_detr_hf", "DetrHfForObjectDetection"),
    "AutoImageProcessor": ("image_processing_detr_hf", "DetrHfImageProcessor"),
    "AutoModelForImageSegmentation": ("modeling_detr_hf_segmentation", "DetrHfForSegmentation"),
}
_CODE_DIR = Path(__file__).parent


def full_auto_map(code_dir: str | os.PathLike = _CODE_DIR) -> dict[str, str]:
    """`auto_map` naming every auto class whose module is present in `code_dir` (default: the package).

    A model loaded as remote code may run from a cache holding only the modeling modules; classes
    whose code is absent there are left out rather than pointing at a file the folder will not have.
    """
    return {
        auto_class: f"{module}.{name}"
        for auto_class, (module, name) in AUTO_CLASSES.items()
        if (Path(code_dir) / f"{module}.py").is_file()
    }


def copy_code(folder: str | os.PathLike, code_dir: str | os.PathLike = _CODE_DIR) -> list[str]:
    """Copy the module of every auto class found in `code_dir` and all modules they import relatively into `folder`."""
    copied = []
    for module in sorted({module for module, _ in AUTO_CLASSES.values()}):
        source = Path(code_dir) / f"{module}.py"
        if not source.is_file():
            continue
        for file in (str(source), *get_relative_import_files(source)):
            destination = Path(folder) / Path(file).name
            if Path(file).resolve() != destination.resolve():
                shutil.copyfile(file, destination)
            copied.append(destination.name)
    return sorted(set(copied))


def save_with_code_and_card(
    save: Callable[..., Any],
    config: Any,
    save_directory: str | os.PathLike,
    args: tuple,
    kwargs: dict[str, Any],
    model_card: Mapping[str, Any] | None,
    code_dir: str | os.PathLike = _CODE_DIR,
) -> Any:
    """Run transformers' `save` with the full auto_map, then add the code files (from `code_dir`, the saved
    model's own code) and the model card.

    `push_to_hub=True` is handled here so the upload happens after the folder is complete.
    """
    push = kwargs.pop("push_to_hub", False)
    hub_kwargs = {
        k: kwargs.pop(k)
        for k in ("repo_id", "commit_message", "create_pr", "token", "private")
        if k in kwargs
    }
    config.auto_map = full_auto_map(code_dir)
    result = save(save_directory, *args, **kwargs)
    if not kwargs.get("is_main_process", True):
        return result
    copy_code(save_directory, code_dir)
    write_model_card(save_directory, config, **dict(model_card or {}))
    if push:
        repo_id = hub_kwargs.pop("repo_id", Path(save_directory).name)
        return upload_folder(save_directory, repo_id, **hub_kwargs)
    return result


def push_with_card(
    save_pretrained: Callable[..., Any],
    repo_id: str,
    *,
    token: bool | str | None = None,
    private: bool | None = None,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    model_card: Mapping[str, Any] | None = None,
    **commit_kwargs: Any,
) -> Any:
    """`push_to_hub` for a detr_hf model: the pushed README is our generated card (with `repo_id` in its
    usage snippet) unless the repo already holds a hand-written one, which is kept.

    commit_kwargs: `commit_message`, `commit_description`, `revision`, `create_pr` as in `push_to_hub`.
    """
    repo_id = HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as work_dir:
        card = {"repo_id": repo_id, **dict(model_card or {})}
        if tags:
            card.setdefault("tags", list(tags))
        save_pretrained(work_dir, max_shard_size=max_shard_size, model_card=card)
        if _has_hand_written_card(repo_id, token):
            os.remove(Path(work_dir) / "README.md")
        return upload_folder(work_dir, repo_id, token=token, **commit_kwargs)


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Create `repo_id` if needed and commit every file of `folder` to it in one commit."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message or "Upload detr_hf model",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


def _has_hand_written_card(repo_id: str, token: bool | str | None) -> bool:
    try:
        existing = ModelCard.load(repo_id, token=token)
    except EntryNotFoundError:
        return False
    return GENERATED_MARKER not in existing.content
