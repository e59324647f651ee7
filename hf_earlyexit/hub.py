# Copyright 2026 The hf-earlyexit Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Publishing early-exit models on the Hugging Face Hub.

`model.push_to_hub(...)` on every family calls [`push_to_hub`] here, and `model.save_pretrained(..., remote_code=True)`
asks [`remote_code_pipelines`] which pipelines to ship: importing hf_earlyexit sets the models' `publisher` hook
(`registration.install_hub_publisher`), which imports this module on first use. The model code never imports the
package, so remote-code checkpoints carry none of this and publish as transformers does. One push is one commit holding
the weights (safetensors), the config, the tokenizer files, optionally the modeling code, and our model card.
transformers' own `PreTrainedModel.push_to_hub` would replace the card with a generic one fetched from the Hub; here
the card is rendered locally and is exactly what is sent.

Loading needs nothing from this module: a published repository loads by id through `AutoModel.from_pretrained`,
the task Auto class or `pipeline(...)`, exactly as any model (with `trust_remote_code=True` and without hf_earlyexit
when it was pushed with `remote_code=True`).
"""

import json
import sys
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

from .model_card import EarlyExitModelCardData, model_card_data_of, model_card_for
from .registration import (
    _REMOTE_CODE_PIPELINES,
    RemoteCodePipeline,
    register_remote_code_pipeline,
    unregister_remote_code_pipeline,
)


DEFAULT_COMMIT_MESSAGE = "Upload early-exit model with hf_earlyexit"


class MissingTokenizerError(ValueError):
    """Publishing a model without its tokenizer: the repository could not be used by `pipeline(...)` or
    `AutoTokenizer.from_pretrained`."""


# --------------------------------------------------------------------------------------------------------------------
# Remote-code pipelines (extension point)
# --------------------------------------------------------------------------------------------------------------------


def remote_code_pipelines(model) -> tuple[list[Path], dict[str, dict]]:
    """The pipeline files to copy and the `custom_pipelines` entry of a remote-code checkpoint of `model`.

    Called by `EarlyExitModelMixin.save_pretrained(remote_code=True)` through the models' `publisher` hook.

    Raises:
        ValueError: a registered pipeline's module imports hf_earlyexit (it could not run without the package).
    """
    files: list[Path] = []
    custom_pipelines: dict[str, dict] = {}
    model_auto_classes = set(getattr(model, "hub_auto_classes", ()))
    for task, spec in sorted(_REMOTE_CODE_PIPELINES.items()):
        if not model_auto_classes & set(spec.auto_classes):
            continue
        module_file = Path(sys.modules[spec.pipeline_class.__module__].__file__)
        needed = [module_file, *map(Path, get_relative_import_files(module_file))]
        for file in needed:
            if any(name.split(".")[0] == "hf_earlyexit" for name in get_imports(file)):
                raise ValueError(
                    f"The pipeline {spec.pipeline_class.__name__} for task {task!r} cannot be shipped as remote code: "
                    f"{file} imports hf_earlyexit, which remote-code users do not have. Import only torch, "
                    "transformers and single-dot siblings there."
                )
        files.extend(needed)
        entry = {
            "impl": f"{module_file.stem}.{spec.pipeline_class.__name__}",
            "pt": list(spec.auto_classes),
            "type": spec.type,
        }
        if spec.default is not None:
            entry["default"] = spec.default
        custom_pipelines[task] = entry
    return files, custom_pipelines


# --------------------------------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------------------------------


def _check_tokenizer(model, tokenizer) -> None:
    if tokenizer is None:
        raise MissingTokenizerError(
            "push_to_hub needs the model's tokenizer, so that the published repository works with "
            "`AutoTokenizer.from_pretrained` and `pipeline(...)`: pass `tokenizer=` (e.g. "
            "`AutoTokenizer.from_pretrained(<the backbone you trained from>)`)."
        )
    if not callable(getattr(tokenizer, "save_pretrained", None)):
        raise TypeError(f"`tokenizer` must be a transformers tokenizer, got {type(tokenizer).__name__}.")
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embeddings have {vocab_size}: it is not the "
            "model's tokenizer (its ids would fall outside the embedding table)."
        )


def save_for_hub(
    model,
    save_directory,
    *,
    tokenizer,
    remote_code: bool | None = None,
    card_data: EarlyExitModelCardData | None = None,
    model_card: ModelCard | str | None = None,
    max_shard_size: int | str = "50GB",
) -> list[str]:
    """Writes exactly the folder [`push_to_hub`] publishes: weights, config, tokenizer, remote code (optional) and the
    model card as `README.md`. Returns the written files, relative to `save_directory`, sorted.

    Args:
        model: An early-exit model.
        save_directory: Where to write.
        tokenizer: The model's tokenizer (required, see [`MissingTokenizerError`]).
        remote_code (`bool`, *optional*): As in `save_pretrained`: ship the modeling code and an `auto_map`.
        card_data ([`EarlyExitModelCardData`], *optional*): Defaults to the model's own (`model.model_card_data`).
        model_card (`ModelCard` or `str`, *optional*): A ready card to publish instead of rendering one.
        max_shard_size: As in `save_pretrained`.
    """
    _check_tokenizer(model, tokenizer)
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_directory, remote_code=remote_code, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(save_directory)
    if model_card is None:
        shipped_code = any(save_directory.glob("*.py"))
        custom_pipelines = json.loads((save_directory / "config.json").read_text(encoding="utf-8")).get(
            "custom_pipelines"
        )
        model_card = model_card_for(
            model,
            card_data,
            remote_code=shipped_code,
            remote_pipeline_task=min(custom_pipelines) if custom_pipelines else None,
        )
    # written last: nothing saved before may replace our card
    (save_directory / "README.md").write_text(str(model_card), encoding="utf-8")
    return sorted(path.relative_to(save_directory).as_posix() for path in save_directory.rglob("*") if path.is_file())


def push_to_hub(
    model,
    repo_id: str,
    *,
    tokenizer=None,
    remote_code: bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    card_data: EarlyExitModelCardData | None = None,
    model_card: ModelCard | str | None = None,
    tags: list[str] | None = None,
    max_shard_size: int | str = "50GB",
):
    """Publishes an early-exit model in a single commit: `create_repo` (if needed), then one `create_commit`.

    Args:
        model: An early-exit model (any family).
        repo_id (`str`): `"user/name"` or `"org/name"`.
        tokenizer: The model's tokenizer; required (raises [`MissingTokenizerError`] when missing).
        remote_code (`bool`, *optional*): Also publish the modeling code, loadable with `trust_remote_code=True`
            without hf_earlyexit. `None`: as the model came (see `save_pretrained`).
        private (`bool`, *optional*): Visibility of a repository created by this call.
        revision (`str`, *optional*): The branch to commit to (created from the default branch if missing).
        commit_message, commit_description (`str`, *optional*): Of the commit.
        token (`str` or `bool`, *optional*): The Hub token; defaults to the logged-in one.
        create_pr (`bool`, *optional*, defaults to `False`): Open a pull request instead of committing.
        card_data ([`EarlyExitModelCardData`], *optional*): Defaults to `model.model_card_data`.
        model_card (`ModelCard` or `str`, *optional*): A ready card to publish instead of rendering one.
        tags (`list[str]`, *optional*): Extra Hub tags for the card.
        max_shard_size: As in `save_pretrained`.

    Returns:
        `huggingface_hub.CommitInfo` of the commit (or pull request).

    Example:

    ```python
    >>> model.push_to_hub("my-org/bypass-sst2", tokenizer=tokenizer, remote_code=True, private=True)
    ```
    """
    validate_repo_id(repo_id)
    _check_tokenizer(model, tokenizer)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model", token=token).repo_id
    if model_card is None:
        card_data = card_data if card_data is not None else model_card_data_of(model)
        updates = {"model_id": card_data.model_id or repo_id}
        if tags:
            updates["tags"] = [*card_data.tags, *(t for t in tags if t not in card_data.tags)]
        card_data = EarlyExitModelCardData(**{**card_data.to_dict(), **updates})
    if revision is not None and not revision.startswith("refs/pr/"):
        try:
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
        except HfHubHTTPError as error:
            # without write access a pull request can still target an existing branch
            if not (create_pr and error.response is not None and error.response.status_code == 403):
                raise
    with tempfile.TemporaryDirectory() as folder:
        files = save_for_hub(
            model,
            folder,
            tokenizer=tokenizer,
            remote_code=remote_code,
            card_data=card_data,
            model_card=model_card,
            max_shard_size=max_shard_size,
        )
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(folder, name))) for name in files]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
            token=token,
        )


__all__ = [
    "DEFAULT_COMMIT_MESSAGE",
    "MissingTokenizerError",
    "RemoteCodePipeline",
    "push_to_hub",
    "register_remote_code_pipeline",
    "remote_code_pipelines",
    "save_for_hub",
    "unregister_remote_code_pipeline",
]
