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
"""Checkpoints that travel: `trust_remote_code` export, config fields written by a newer version, damaged weights,
paths that do not exist, checkpoints of another family, saves that replace a checkpoint all at once.

Shipped with `trust_remote_code` checkpoints: imports only the standard library, transformers, huggingface_hub (a
dependency of transformers) and single-dot siblings.
"""

import dataclasses
import json
import os
import re
import struct
import sys
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import CONFIG_NAME, logging

from .backbones import SUPPORTED_MODEL_TYPES


logger = logging.get_logger(__name__)

# Keys that transformers writes into or reads from `config.json` beside the dataclass fields of a config.
_TRANSFORMERS_KEYS = frozenset(
    {
        "model_type",
        "auto_map",
        "custom_pipelines",
        "transformers_version",
        "_name_or_path",
        "name_or_path",
        "torch_dtype",
        "num_labels",
        "attn_implementation",
        "experts_implementation",
        "output_attentions",
        "_commit_hash",
        "_attn_implementation_autoset",
        # `Trainer` sets these on the config of every model it trains (the token ids from its tokenizer)
        "use_cache",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        # written by older transformers versions into BERT checkpoints (all-MiniLM-L6-v2's among them), carried along
        # by every model fine-tuned from one; they mean nothing to transformers 5
        "gradient_checkpointing",
        "position_embedding_type",
    }
)


class DamagedCheckpointError(OSError):
    """A weights file of a checkpoint cannot be read (truncated, overwritten, not a safetensors file)."""


# model_type -> the class that loads checkpoints of that family (for messages)
FAMILY_CLASSES = {
    "bypass-bert": "BertWithBypassExits",
    "cascade-bert": "BertForCascadeClassification",
    "token-exit-bert": "BertForTokenEarlyExit",
}


# --------------------------------------------------------------------------------------------------------------------
# Where a checkpoint is, and what it holds
# --------------------------------------------------------------------------------------------------------------------


def check_local_path(pretrained_model_name_or_path) -> None:
    """Clear errors for what `from_pretrained` cannot read as a checkpoint: not a path or a Hub id (`TypeError`), a file
    (`NotADirectoryError`), a local path that does not exist (`FileNotFoundError`).

    transformers takes any string it cannot find on disk for a Hub id, so a mistyped folder such as `runs/bypass/best`
    fails with "Repo id must be in the form 'repo_name' or 'namespace/repo_name'" (or an offline error). A name that
    cannot be a Hub id (absolute, starting with `.` or `~`, with a backslash or more than one `/`) or a `PathLike` is a
    local path; a missing one is named here. `None` (transformers' "config and state_dict given") passes.
    """
    if pretrained_model_name_or_path is None:
        return
    is_path_object = isinstance(pretrained_model_name_or_path, os.PathLike)
    name = os.fspath(pretrained_model_name_or_path) if is_path_object else pretrained_model_name_or_path
    if not isinstance(name, str):
        raise TypeError(
            f"`pretrained_model_name_or_path` must be a checkpoint folder or a Hub id (str or os.PathLike), got "
            f"{type(pretrained_model_name_or_path).__name__}."
        )
    if os.path.isfile(name):
        raise NotADirectoryError(
            f"{name!r} is a file; `from_pretrained` reads a checkpoint folder (config.json and the weights)."
        )
    if os.path.exists(name):
        return
    if is_path_object or name.startswith((".", "~")) or os.path.isabs(name) or "\\" in name or name.count("/") > 1:
        raise FileNotFoundError(
            f"{name!r} does not exist: no such checkpoint folder (and it is not a Hub id, which has the form "
            "'name' or 'namespace/name')."
        )


def raise_if_quantized(model) -> None:
    """`save_pretrained` of a model with `torch.ao` dynamically quantized linear layers: a clear error instead of
    transformers' failure deep inside the safetensors writer."""
    import torch

    if any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.modules()):
        raise ValueError(
            f"save_pretrained: {type(model).__name__} has dynamically quantized linear layers "
            "(`quantize_layers` or `torch.ao.quantization.quantize_dynamic`), which a checkpoint cannot hold; "
            "save the fp32 model and quantize it again after loading"
        )


def raise_if_other_family(config_class: type, config_dict: dict, source) -> None:
    """Raises `ValueError` naming the family (or model type) of a checkpoint that `config_class` does not load.

    A plain `bert` checkpoint and one of the class's own family pass; the caller decides what `bert` means for it.
    """
    found = config_dict.get("model_type")
    expected = config_class.model_type
    if found in (None, expected, "bert"):
        return
    loader = FAMILY_CLASSES.get(expected, config_class.__name__)
    if found in FAMILY_CLASSES:
        raise ValueError(
            f"{str(source)!r} holds a {FAMILY_CLASSES[found]} checkpoint (model_type {found!r}), not a {loader} one: "
            f"load it with {FAMILY_CLASSES[found]}.from_pretrained, or with AutoModel / AutoConfig, which pick the "
            "family from the checkpoint."
        )
    raise ValueError(
        f"{str(source)!r} holds a {found!r} model; {loader} loads its own checkpoints (model_type {expected!r}) and "
        f"starts from plain checkpoints of the encoders it supports (model_type {', '.join(SUPPORTED_MODEL_TYPES)})."
    )


# --------------------------------------------------------------------------------------------------------------------
# Config fields
# --------------------------------------------------------------------------------------------------------------------


def _transformers_base(config_class: type) -> type:
    return next(k for k in config_class.__mro__ if k.__module__.startswith("transformers."))


# fields of the family configs that describe the architecture (which encoder, whose tokenizers), not a setting
ARCHITECTURE_FIELDS = frozenset({"encoder_config", "separate_tokenizers"})


def family_config_fields(config_class: type) -> tuple[str, ...]:
    """The settings an early-exit family adds to its transformers base config (e.g. `exit_criterion`), in order; the
    fields that describe the architecture (`ARCHITECTURE_FIELDS`: the encoder, the members' tokenizers) are not
    settings."""
    inherited = {f.name for f in dataclasses.fields(_transformers_base(config_class))} | ARCHITECTURE_FIELDS
    return tuple(f.name for f in dataclasses.fields(config_class) if f.name not in inherited)


def unknown_config_fields(config_class: type, config_dict: dict) -> list[str]:
    """Keys of a saved early-exit config that `config_class` does not know, sorted.

    Only a checkpoint saved by an early-exit family is checked (its `model_type` is the family's and it holds at least
    one of the family's own fields): a plain BERT checkpoint, which every family starts from, often carries keys from
    older transformers versions that mean nothing to anyone, and warning about those would be noise.
    """
    if config_dict.get("model_type") != config_class.model_type:
        return []
    if not set(family_config_fields(config_class)) & set(config_dict):
        return []
    known = {f.name for f in dataclasses.fields(config_class)} | _TRANSFORMERS_KEYS
    known |= set(getattr(config_class, "attribute_map", {}))
    return sorted(key for key in config_dict if key not in known)


def warn_unknown_config_fields(config_class: type, config_dict: dict) -> list[str]:
    """Warns about [`unknown_config_fields`] and returns them.

    transformers itself keeps unknown keys of a config as plain attributes and says nothing. For an early-exit
    checkpoint an unknown key almost always means a newer version of the family wrote it, and silently ignoring it can
    change how the model exits, so we say so.
    """
    unknown = unknown_config_fields(config_class, config_dict)
    if unknown:
        logger.warning(
            f"The checkpoint's config has fields that this version of {config_class.__name__} does not know: "
            f"{unknown}. They are kept on the config (and saved again) but have no effect; the checkpoint was probably "
            f"saved by a newer version of the code that defines {config_class.__name__}; upgrade it to use them."
        )
    return unknown


# --------------------------------------------------------------------------------------------------------------------
# Remote code
# --------------------------------------------------------------------------------------------------------------------


def _module_file(cls: type) -> Path:
    return Path(sys.modules[cls.__module__].__file__)


def remote_code_files(model) -> list[Path]:
    """The Python files that define `model`'s class and its config class, with every file they import relatively."""
    files: dict[str, Path] = {}
    for cls in (type(model), type(model.config)):
        module_file = _module_file(cls)
        for file in [module_file, *map(Path, get_relative_import_files(module_file))]:
            previous = files.setdefault(file.name, file)
            if previous.resolve() != file.resolve():
                raise ValueError(f"Two remote-code files share the name {file.name}: {previous} and {file}.")
    return [files[name] for name in sorted(files)]


def remote_code_auto_map(model) -> dict[str, str]:
    """`auto_map` of a remote-code checkpoint: `AutoConfig` and every Auto class in `model.hub_auto_classes`."""
    model_ref = f"{type(model).__module__.split('.')[-1]}.{type(model).__name__}"
    config_class = type(model.config)
    auto_map = {"AutoConfig": f"{config_class.__module__.split('.')[-1]}.{config_class.__name__}"}
    for auto_class in getattr(model, "hub_auto_classes", ("AutoModel",)):
        auto_map[auto_class] = model_ref
    return auto_map


def write_sharing_fields(save_directory, auto_map: dict | None, custom_pipelines: dict | None) -> None:
    """Sets (or removes, when empty) `auto_map` and `custom_pipelines` in a saved `config.json`.

    Editing the saved file instead of the config object keeps the model's config, and every later save, untouched.
    The file keeps the layout transformers writes (sorted keys, 2-space indent).
    """
    path = Path(save_directory) / CONFIG_NAME
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, value in (("auto_map", auto_map), ("custom_pipelines", custom_pipelines)):
        if value:
            config[key] = value
        else:
            config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# Saving over a checkpoint
# --------------------------------------------------------------------------------------------------------------------

# weights files that transformers' `save_pretrained` writes (any variant, sharded or not)
_WEIGHTS_FILE = re.compile(r"(model|pytorch_model)(\.[\w-]+)?(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?")


def move_saved_files(staging, target) -> None:
    """Moves the files of a complete save in `staging` into `target`, each with an atomic `os.replace`, then removes
    the weights files of an earlier save that this one does not have (shards of a larger model, an unsharded file
    after a sharded save). Other files of `target` (tokenizer, model card, calibration) stay.

    The config goes last, so that the window in which a reader could see new files next to old ones is only the
    renames themselves (no data is written any more by then).
    """
    staging, target = Path(staging), Path(target)
    names = sorted((path.name for path in staging.iterdir()), key=lambda name: name == CONFIG_NAME)
    for name in names:
        os.replace(staging / name, target / name)
    for path in target.iterdir():
        if path.name not in names and path.is_file() and _WEIGHTS_FILE.fullmatch(path.name):
            path.unlink()


# --------------------------------------------------------------------------------------------------------------------
# Damaged weights
# --------------------------------------------------------------------------------------------------------------------


def safetensors_problem(path) -> str | None:
    """What is wrong with the safetensors file at `path` (truncated, bad header), or `None` if its layout is sound.

    Reads the 8-byte header length and the JSON header only; tensor bytes are not checked (safetensors has no
    checksum).
    """
    size = os.path.getsize(path)
    if size < 8:
        return f"it is {size} bytes long, too short to hold a safetensors header"
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        if 8 + header_size > size:
            return f"its header announces {header_size} bytes but the file is only {size} bytes long"
        try:
            header = json.loads(f.read(header_size))
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            return f"its header is not valid JSON ({error})"
    try:
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        return "its header does not describe tensors"
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        return f"it is {size} bytes long but its header describes {expected} bytes: the file is truncated"
    return None


def _weight_files(pretrained_model_name_or_path, hub_kwargs: dict) -> list[Path]:
    subfolder = hub_kwargs.get("subfolder") or ""
    path = Path(str(pretrained_model_name_or_path))
    if path.is_dir():
        folder = path / subfolder
    else:  # a repo id: look at the snapshot the config was read from, without touching the network
        config_file = try_to_load_from_cache(
            str(pretrained_model_name_or_path),
            f"{subfolder}/{CONFIG_NAME}" if subfolder else CONFIG_NAME,
            cache_dir=hub_kwargs.get("cache_dir"),
            revision=hub_kwargs.get("revision"),
        )
        if not isinstance(config_file, str):
            return []
        folder = Path(config_file).parent
    return sorted(folder.glob("*.safetensors"))


def raise_if_damaged_weights(pretrained_model_name_or_path, hub_kwargs: dict, error: BaseException) -> None:
    """Turns safetensors' anonymous "Error while deserializing header" into a [`DamagedCheckpointError`] that names the
    damaged file. Does nothing for any other error. Never writes to the checkpoint."""
    if type(error).__name__ != "SafetensorError":
        return
    for file in _weight_files(pretrained_model_name_or_path, hub_kwargs):
        problem = safetensors_problem(file)
        if problem is not None:
            raise DamagedCheckpointError(
                f"Cannot load the weights of {str(pretrained_model_name_or_path)!r}: {file} is damaged: {problem}. "
                "The file was left as it is. Save the model again, or delete the file from the cache and download it "
                f"again. (safetensors said: {error})"
            ) from error


__all__ = [
    "DamagedCheckpointError",
    "FAMILY_CLASSES",
    "check_local_path",
    "family_config_fields",
    "move_saved_files",
    "raise_if_damaged_weights",
    "raise_if_other_family",
    "raise_if_quantized",
    "remote_code_auto_map",
    "remote_code_files",
    "safetensors_problem",
    "unknown_config_fields",
    "warn_unknown_config_fields",
    "write_sharing_fields",
]
