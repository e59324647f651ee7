# Copyright 2026 The hf_earlyexit Authors.
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
"""Building blocks shared by the early-exit families: classification heads, bypass modules, the per-layer encoder
step, and the standard sequence-classification loss.

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import difflib
import inspect
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging

from .checkpoint_utils import (
    check_local_path,
    move_saved_files,
    raise_if_damaged_weights,
    remote_code_auto_map,
    remote_code_files,
    write_sharing_fields,
)
from .exit_utils import classifier_head_flops


logger = logging.get_logger(__name__)


POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean")


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden_states` over the positions where `attention_mask` is 1. `(batch, seq, d) -> (batch, d)`."""
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


def scale_gradient(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
    if scale == 1.0 or not tensor.requires_grad:
        return tensor
    return _ScaleGradient.apply(tensor, scale)


class ZeroInitLinear(nn.Linear):
    """A linear layer that the model's `_init_weights` sets to zero (weight and bias).

    Its own class rather than a check on the parent module: transformers initialises children before their parents
    and skips parameters already initialised, so a zero init written for the parent would never run.
    """


class BypassModule(nn.Module):
    """BADGE block-wise bypass (our interpretation, see [`BypassBertConfig`]): `z + W_up(act(W_down(z)))`.

    `W_up` is a [`ZeroInitLinear`], so a freshly initialised bypass is the identity.
    """

    def __init__(self, hidden_size: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACT2FN["gelu"]
        self.up = ZeroInitLinear(bottleneck, hidden_size)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled + self.up(self.act(self.down(pooled)))


class ClassificationHead(nn.Module):
    """One exit: pool the layer's states, optionally pass them through a bypass, classify.

    `pooling` is `"cls"` (the [CLS] state), `"pooler"` ([CLS] through dense + tanh, as BERT's pooler) or `"mean"` (mean
    over real tokens).
    """

    def __init__(self, config: BertConfig, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown exit pooling {pooling!r}; expected one of {POOLINGS}.")
        self.pooling = pooling
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooling == "pooler" else None
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`attention_mask=None` means no position is padding."""
        if self.pooling == "mean":
            return hidden_states.mean(dim=1) if attention_mask is None else masked_mean(hidden_states, attention_mask)
        return hidden_states[:, 0]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        bypass: BypassModule | None = None,
    ) -> torch.Tensor:
        pooled = self.pool(hidden_states, attention_mask)
        if bypass is not None:
            pooled = bypass(pooled)
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(pooled))
        if self.training:  # a head runs after every exit layer at inference: skip even the no-op module call there
            pooled = self.dropout(pooled)
        return self.classifier(pooled)

    def flops(self, bypass_dim: int = 0) -> int:
        """FLOPs of this head for one example (METHODS.md section 4)."""
        hidden_size = self.classifier.in_features
        return classifier_head_flops(hidden_size, self.classifier.out_features, self.pooler is not None, bypass_dim)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class EarlyExitModelMixin:
    """Loading, saving and publishing behaviour shared by the early-exit families.

    - Loading: transformers re-initialises a classifier whose size does not match the checkpoint and only warns. For an
      early-exit checkpoint that would silently throw away every trained exit head, so asking for another `num_labels`
      than the checkpoint's own is an error here. Starting from a plain BERT checkpoint (no heads yet) takes any
      `num_labels`. A damaged safetensors file raises a [`~checkpoint_utils.DamagedCheckpointError`] naming the file.
    - Saving: `save_pretrained(..., remote_code=True)` also writes the Python files of this folder and an `auto_map`
      listing `AutoConfig` and every Auto class in `hub_auto_classes`, so that the checkpoint loads with
      `trust_remote_code=True` and nothing else installed. Nothing global changes (no `register_for_auto_class`): a
      later plain save is a plain checkpoint again.
    - Publishing: `push_to_hub` is the `publisher`'s when one is set, else transformers' own `push_to_hub` followed by
      the tokenizer's.
    """

    # Auto classes written into `auto_map` by `save_pretrained(remote_code=True)`; every family overrides it.
    hub_auto_classes: tuple[str, ...] = ("AutoModel",)

    # What publishing adds around transformers' saving and pushing; `None` (the default, and what a checkpoint loaded
    # with `trust_remote_code=True` has) is transformers' behaviour. The library that registers these models sets it
    # when it is imported; this code never imports that library. An object with two methods:
    # - `remote_code_pipelines(model) -> (files, custom_pipelines)`: the pipeline files that
    #   `save_pretrained(remote_code=True)` ships next to the modeling files, and the `custom_pipelines` entry of
    #   `config.json` that declares them;
    # - `push_to_hub(model, repo_id, *args, **kwargs)`: replaces `push_to_hub` entirely.
    publisher: ClassVar[object | None] = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        check_local_path(pretrained_model_name_or_path)
        requested = kwargs.get("num_labels")
        if requested is None and kwargs.get("id2label") is not None:
            requested = len(kwargs["id2label"])
        if requested is None and isinstance(kwargs.get("config"), PreTrainedConfig):
            # the Auto classes build the config (with the caller's `num_labels`) before calling us
            requested = kwargs["config"].num_labels
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        # `None` with a `config` (and a `state_dict`): transformers' documented way to build a model from given weights
        if requested is not None and pretrained_model_name_or_path is not None:
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            if config_dict.get("model_type") == cls.config_class.model_type:
                saved = len(config_dict["id2label"]) if config_dict.get("id2label") else 2
                if saved != requested:
                    raise ValueError(
                        f"num_labels={requested} does not match the checkpoint {pretrained_model_name_or_path!r}, "
                        f"whose exit heads were trained with {saved} labels. Leave `num_labels` out to load it as "
                        f"saved, or start from the plain backbone to train new heads."
                    )
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            if pretrained_model_name_or_path is not None:
                raise_if_damaged_weights(pretrained_model_name_or_path, hub_kwargs, error)
            raise

    def save_pretrained(self, save_directory, *args, remote_code: bool | None = None, **kwargs):
        """transformers' `save_pretrained`, plus:

        - Saving over a checkpoint replaces it as a whole or not at all: everything is first written into a temporary
          folder inside `save_directory`, and only a complete save is moved into place (a rename per file, the config
          last; weights files of the previous save that the new one does not have are then removed). A failure while
          writing (a full disk, a permission error, an interrupted process) leaves the previous checkpoint as it was.
          Files that `save_pretrained` does not write (tokenizer, model card, calibration results) are kept.

        Args:
            remote_code (`bool`, *optional*):
                `True`: also write this folder's Python files and an `auto_map` (and the `publisher`'s pipelines), so
                the checkpoint loads with `trust_remote_code=True`. `False`: a plain checkpoint. `None` (default): keep what
                the model came with (remote code when its config has an `auto_map`).
        """
        is_main_process = kwargs.get("is_main_process", args[0] if args else True)
        if not is_main_process or os.path.isfile(save_directory):
            # other processes write nothing; transformers refuses (and logs) a path that is a file
            return super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", target.resolve().name)  # transformers' default, from the real folder's name
        staging = Path(tempfile.mkdtemp(dir=target, prefix=".saving-"))
        try:
            super().save_pretrained(staging, *args, **kwargs)
            self._write_sharing_files(staging, remote_code)
            move_saved_files(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if remote_code is False or (remote_code is None and not getattr(self.config, "auto_map", None)):
            if (
                self.is_remote_code()
            ):  # copies of the code from an earlier remote-code save: a plain checkpoint has none
                for file in remote_code_files(self):
                    copy = target / file.name
                    if copy.exists() and copy.resolve() != file.resolve():
                        copy.unlink()

    def _write_sharing_files(self, save_directory: Path, remote_code: bool | None) -> None:
        """The remote-code files and the `auto_map` / `custom_pipelines` of `config.json` (see `save_pretrained`)."""
        if remote_code is None:
            remote_code = bool(getattr(self.config, "auto_map", None))
        files = remote_code_files(self)
        if not remote_code:
            for file in files:  # transformers copies the files of a remote-code model itself
                Path(save_directory, file.name).unlink(missing_ok=True)
            write_sharing_fields(save_directory, None, None)
            return
        extra_files, custom_pipelines = [], {}
        if self.publisher is not None:
            extra_files, custom_pipelines = self.publisher.remote_code_pipelines(self)
        for file in [*files, *map(Path, extra_files)]:
            shutil.copyfile(file, Path(save_directory, file.name))
        write_sharing_fields(save_directory, remote_code_auto_map(self), custom_pipelines)

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """Publishes the model: the `publisher`'s `push_to_hub` when one is set (see there for the arguments), else
        transformers' `push_to_hub`, then `tokenizer.push_to_hub` when a `tokenizer` is given (the publisher's other
        arguments, `remote_code`, `card_data` and `model_card`, are dropped).
        """
        if self.publisher is not None:
            return self.publisher.push_to_hub(self, repo_id, *args, **kwargs)
        tokenizer = kwargs.pop("tokenizer", None)
        for key in ("remote_code", "card_data", "model_card"):
            kwargs.pop(key, None)
        commit = super().push_to_hub(repo_id, *args, **kwargs)
        if tokenizer is not None:
            passed = ("commit_message", "private", "token", "revision", "create_pr")
            tokenizer.push_to_hub(repo_id, **{key: kwargs[key] for key in passed if key in kwargs})
        return commit


# --------------------------------------------------------------------------------------------------------------------
# Forward arguments
# --------------------------------------------------------------------------------------------------------------------

# transformers' loss keyword argument. `Trainer` passes it only to models whose `accepts_loss_kwargs` is true, which ours
# are not (their losses are per-batch means), so only a caller's own code passes it; accepted, and changes nothing.
_ACCEPTED_KWARGS = frozenset({"num_items_in_batch"})


def check_forward_kwargs(model: nn.Module, kwargs: dict) -> None:
    """Raises `TypeError` for keyword arguments that `model.forward` does not take (a misspelled `exit_treshold` would
    otherwise vanish into `**kwargs` and the default be used), naming them and the closest known names."""
    unknown = [name for name in kwargs if name not in _ACCEPTED_KWARGS]
    if not unknown:
        return
    known = [name for name in inspect.signature(model.forward).parameters if name != "kwargs"]
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    raise TypeError(
        f"{type(model).__name__}.forward() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(hints)}. It takes: {', '.join(known)}."
    )


def check_flag(name: str, value) -> None:
    """`True`, `False` or `None` only: `early_exit="no"` must not be taken as true."""
    if value is not None and value is not True and value is not False:
        raise TypeError(f"`{name}` must be True, False or None, got {value!r}.")


def forward_settings(
    model: nn.Module,
    kwargs: dict,
    early_exit,
    output_all_exits,
    output_attentions,
    output_hidden_states,
    return_dict,
) -> tuple[bool, bool | list[int], bool]:
    """The checks every family's `forward` starts with: no unknown keyword argument ([`check_forward_kwargs`]), flags
    that are booleans; returns `(output_attentions, output_hidden_states, return_dict)` for this call: the arguments,
    or the config's defaults (as transformers models read them). `output_hidden_states` may also select hidden states
    by index (an int or a list of ints, negative ones counting from the end), as in transformers."""
    if kwargs:
        check_forward_kwargs(model, kwargs)
    check_flag("early_exit", early_exit)
    check_flag("output_all_exits", output_all_exits)
    check_flag("output_attentions", output_attentions)
    check_flag("return_dict", return_dict)
    config = model.config
    if output_hidden_states is None:
        output_hidden_states = config.output_hidden_states
    elif not isinstance(output_hidden_states, bool):
        selection = [output_hidden_states] if isinstance(output_hidden_states, int) else output_hidden_states
        if not isinstance(selection, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in selection
        ):
            raise TypeError(
                "`output_hidden_states` must be True, False, None, or the index (or a list of indices) of the hidden "
                f"states to return, got {output_hidden_states!r}."
            )
        output_hidden_states = list(selection)
    return (
        config.output_attentions if output_attentions is None else output_attentions,
        output_hidden_states,
        config.return_dict if return_dict is None else return_dict,
    )


def _ids_tensor(name: str, ids, shapes: list[tuple[int, ...]]) -> None:
    """`ids` must be a tensor of integer ids with one of `shapes`."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(ids).__name__}.")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer ids (torch.long), got dtype {ids.dtype}.")
    if tuple(ids.shape) not in shapes:
        raise ValueError(f"`{name}` has shape {tuple(ids.shape)} but the inputs have shape {shapes[0]}.")


def check_token_inputs(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    max_positions: int | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    hidden_size: int | None = None,
) -> None:
    """Clear errors for inputs that would otherwise fail deep inside the model: not exactly one of `input_ids` /
    `inputs_embeds`, wrong types, dtypes, ranks or widths, an empty batch or empty rows, more positions than the model
    has (`max_positions`, unless `None`), an `attention_mask`, `token_type_ids` or `position_ids` of another shape.
    Types and shapes only: no tensor is read (see [`check_mask`] for the mask's values)."""
    name = type(model).__name__
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"{name} needs exactly one of `input_ids` or `inputs_embeds`.")
    tokens = input_ids if input_ids is not None else inputs_embeds
    if not isinstance(tokens, torch.Tensor):
        argument = "input_ids" if input_ids is not None else "inputs_embeds"
        raise TypeError(f"`{argument}` must be a torch.Tensor, got {type(tokens).__name__}.")
    if input_ids is not None and (
        input_ids.dim() != 2
        or input_ids.is_floating_point()
        or input_ids.is_complex()
        or input_ids.dtype == torch.bool
    ):
        raise ValueError(
            f"`input_ids` must be a (batch_size, sequence_length) tensor of token ids, got shape "
            f"{tuple(input_ids.shape)} and dtype {input_ids.dtype}."
        )
    if inputs_embeds is not None and (
        inputs_embeds.dim() != 3 or (hidden_size is not None and inputs_embeds.shape[-1] != hidden_size)
    ):
        raise ValueError(
            f"`inputs_embeds` must be a (batch_size, sequence_length, hidden_size={hidden_size}) tensor, got shape "
            f"{tuple(inputs_embeds.shape)}."
        )
    batch_size, seq_len = tokens.shape[:2]
    if batch_size == 0 or seq_len == 0:
        raise ValueError(
            f"{name} got an empty batch (inputs of shape {tuple(tokens.shape)}): give at least one example of at least "
            "one token."
        )
    if max_positions is not None and seq_len > max_positions:
        raise ValueError(
            f"The inputs have {seq_len} positions but {name} has {max_positions} position embeddings; truncate them "
            f"to {max_positions} tokens (e.g. `tokenizer(..., truncation=True, max_length={max_positions})`)."
        )
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != tokens.shape[:2]:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(
                f"`attention_mask` has shape {shape} but the inputs have shape {tuple(tokens.shape[:2])}."
            )
    if token_type_ids is not None:
        _ids_tensor("token_type_ids", token_type_ids, [(batch_size, seq_len)])
    if position_ids is not None:
        _ids_tensor("position_ids", position_ids, [(batch_size, seq_len), (1, seq_len)])


def check_mask(attention_mask: torch.Tensor, lengths: torch.Tensor) -> None:
    """Refuses mask values other than 0 and 1 (a length, and the FLOPs counted from it, would be wrong) and rows
    without any real token (nothing to classify, and attention over no key at all). `lengths` is the `(batch,)` sum of
    the mask. One synchronisation for an integer or boolean mask (a few microseconds)."""
    if attention_mask.dtype == torch.bool:
        other_values, shortest = False, int(lengths.min())
    else:
        low, high, shortest = torch.stack([*torch.aminmax(attention_mask), lengths.min()]).tolist()
        other_values = low < 0 or high > 1
        if not other_values and attention_mask.is_floating_point():  # 0.5 lies between 0 and 1
            other_values = bool(((attention_mask != 0) & (attention_mask != 1)).any())
    if other_values:
        found = sorted(set(attention_mask[(attention_mask != 0) & (attention_mask != 1)].tolist()))
        raise ValueError(f"`attention_mask` must hold 0 (padding) and 1 (real token) only, got {found[:5]}.")
    if shortest == 0:
        empty = (lengths == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"Rows {empty[:10]} have no real token (their `attention_mask` is all 0): every example needs at least one."
        )


def raise_for_bad_ids(
    config: BertConfig,
    input_ids: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    error: Exception,
) -> None:
    """Called when an embedding lookup failed: names the ids outside the vocabulary, the token types or the positions
    (torch says only "index out of range in self"); does nothing otherwise, so that the caller re-raises the original
    error."""
    for name, ids, size, advice in (
        (
            "input_ids",
            input_ids,
            config.vocab_size,
            "Use the model's own tokenizer, or `model.resize_token_embeddings` after adding tokens to it.",
        ),
        ("token_type_ids", token_type_ids, config.type_vocab_size, "BERT uses 0 (first text) and 1 (second text)."),
        ("position_ids", position_ids, config.max_position_embeddings, "Positions count from 0."),
    ):
        if isinstance(ids, torch.Tensor) and not ids.is_floating_point():
            bad = (ids < 0) | (ids >= size)
            if bool(bad.any()):
                raise ValueError(
                    f"`{name}` holds ids outside [0, {size}): {sorted(set(ids[bad].tolist()))[:10]}. {advice}"
                ) from error


def finish_output(output_class: type, return_dict: bool, layer_outputs: "LayerOutputs | None", config, **fields):
    """The output dataclass with `fields` and what `layer_outputs` recorded, or with `return_dict=False` its
    non-`None` fields as a tuple (transformers' convention)."""
    if layer_outputs is not None:
        fields["hidden_states"], fields["attentions"] = layer_outputs.results(config)
    output = output_class(**fields)
    return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------------------------------
# Hidden states and attention maps of the layers each example ran
# --------------------------------------------------------------------------------------------------------------------


class LayerOutputs:
    """Collects what `output_hidden_states` / `output_attentions` ask for, in the caller's `(batch, seq)` layout.

    The early-exit forwards drop examples from their batch as they leave; a layer's tensors then cover only the
    examples still running (`rows`, indices into the caller's batch). They are written into tensors of the whole batch,
    zero for the examples that did not run that layer. While recording, the forwards keep every sequence position
    (they do not drop the columns that are padding for every remaining example), so positions need no mapping and the
    values at padding positions are those BERT computes there.

    Args:
        batch_size: Rows of the caller's batch.
        hidden_states: Collect `hidden_states` (the embeddings output, then each layer's): `True`, or the indices of
            those to return (the others are `None` in the result, as in transformers).
        attentions: Collect `attentions` (each layer's attention probabilities, eager attention only).
    """

    @classmethod
    def if_asked(cls, batch_size: int, hidden_states: bool | list[int], attentions: bool) -> "LayerOutputs | None":
        """A recorder when the call asks for hidden states or attentions, else `None` (nothing recorded)."""
        return cls(batch_size, hidden_states, attentions) if hidden_states or attentions else None

    def __init__(self, batch_size: int, hidden_states: bool | list[int], attentions: bool):
        self.batch_size = batch_size
        self.hidden_states = [] if hidden_states is True or isinstance(hidden_states, list) else None
        self.selection = hidden_states if isinstance(hidden_states, list) else None
        self.attentions = [] if attentions else None
        self._captured: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        return self.hidden_states is not None or self.attentions is not None

    def _whole_batch(self, tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:  # every example ran: the tensor itself, so that gradients reach it (`retain_grad`)
            return tensor
        return tensor.new_zeros(self.batch_size, *tensor.shape[1:]).index_copy(0, rows, tensor)

    def add_hidden_states(self, hidden_states: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        if self.hidden_states is not None:
            self.hidden_states.append(self._whole_batch(hidden_states, rows))

    def add_attentions(self, weights: torch.Tensor | None, rows: torch.Tensor | None = None) -> None:
        if self.attentions is not None and weights is not None:
            self.attentions.append(self._whole_batch(weights, rows))

    def take_captured(self) -> torch.Tensor | None:
        """The attention probabilities of the last layer call made under [`LayerOutputs.capture`], if any."""
        return self._captured.pop() if self._captured else None

    @contextmanager
    def capture(self, layers: nn.ModuleList):
        """Keeps the attention probabilities each `BertLayer` of `layers` computes (they are not part of its
        output), for this thread's calls only, while the block runs."""
        if self.attentions is None:
            yield
            return
        owner = threading.get_ident()

        def hook(module, args, output):
            if threading.get_ident() == owner and isinstance(output, tuple) and output[1] is not None:
                self._captured.append(output[1])

        handles = [layer.attention.self.register_forward_hook(hook) for layer in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def add_skipped_layers(self, num_layers: int) -> None:
        """Zeros for `num_layers` layers that no example ran (every example left before them), shaped as the first
        layer's tensors."""
        for _ in range(num_layers):
            if self.hidden_states is not None:
                self.hidden_states.append(torch.zeros_like(self.hidden_states[0]))
            if self.attentions:
                self.attentions.append(torch.zeros_like(self.attentions[0]))

    def results(self, config: PreTrainedConfig) -> tuple[tuple | None, tuple | None]:
        """`(hidden_states, attentions)` as tuples (`None` when not asked for). Attention implementations other than
        eager compute no probabilities; `attentions` is then empty, with a warning, as for transformers' models."""
        attentions = None
        if self.attentions is not None:
            attentions = tuple(self.attentions)
            if not attentions:
                logger.warning_once(
                    f"`{config._attn_implementation}` attention does not compute attention probabilities, so "
                    "`output_attentions=True` returns no `attentions`. Load the model with "
                    '`attn_implementation="eager"` (or call `model.set_attn_implementation("eager")`) to get them.'
                )
        hidden_states = None
        if self.hidden_states is not None:
            hidden_states = tuple(self.hidden_states)
            if self.selection is not None:
                count = len(hidden_states)
                kept = {i % count for i in self.selection if -count <= i < count}
                hidden_states = tuple(states if i in kept else None for i, states in enumerate(hidden_states))
        return hidden_states, attentions


def embed_and_mask(
    bert: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of a `BertModel` and the 2D attention mask (all ones when none is given). Check the inputs first
    ([`check_token_inputs`])."""
    try:
        hidden_states = bert.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
    except (IndexError, RuntimeError) as error:
        raise_for_bad_ids(bert.config, input_ids, token_type_ids, position_ids, error)
        raise
    if attention_mask is None:
        attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
    return hidden_states, attention_mask


def layer_mask(config: BertConfig, hidden_states: torch.Tensor, attention_mask: torch.Tensor):
    """The mask `BertLayer` expects for the current attention implementation (`None` when nothing is masked)."""
    if bool(attention_mask.all()):  # an encoder with no padding attends everywhere, whatever the implementation
        return None
    return create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask)


def full_depth_exit_logits(
    bert: nn.Module,
    config: BertConfig,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    exit_layers: list[int],
    exit_logits: Callable[[int, torch.Tensor], torch.Tensor],
    all_exits: bool,
    active_depth: torch.Tensor | None = None,
    outputs: LayerOutputs | None = None,
    gradient_equilibrium: bool = False,
) -> torch.Tensor:
    """Run every encoder layer on every position and stack the exits' logits.

    Args:
        bert: The `BertModel` whose `encoder.layer` runs.
        config: Its config (attention implementation for the mask).
        hidden_states: `(batch, seq, d)` embeddings.
        attention_mask: `(batch, seq)` 2D mask.
        exit_layers: 1-based exit layers.
        exit_logits: `exit_logits(exit_index, hidden_states)`, the logits of one exit.
        all_exits: Evaluate every exit; otherwise only the last layer's.
        active_depth: Optional `(batch, seq)` number of layers that update each position: from layer
            `active_depth + 1` on, a position's state is copied forward unchanged, `h_i = m_i * Layer_i(h_{i-1}) +
            (1 - m_i) * h_{i-1}` (the training forward of sequence-labelling self-sampling, Li et al., 2021).
        gradient_equilibrium: With every exit evaluated, rescale the gradients where an exit branches off (Li et al.,
            2019, "Improved Techniques for Training Adaptive Deep Networks", https://arxiv.org/abs/1908.06294): with
            `r` exits from this one to the last, the gradient reaching the backbone through exit `k`'s head is scaled
            by `1 / r` and the one coming back from the deeper layers by `(r - 1) / r`, so the layers below average the
            exits' gradients instead of summing them. The forward values are unchanged.
        outputs: Where to record hidden states and attention maps, if asked for.

    Returns:
        `(num_exits, ...)` logits, or `(1, ...)` with the last exit only.
    """
    mask = layer_mask(config, hidden_states, attention_mask)
    exit_position = {layer: k for k, layer in enumerate(exit_layers)}
    num_layers = len(bert.encoder.layer)
    logits = []
    recording = outputs is not None and outputs.active
    if recording:
        outputs.add_hidden_states(hidden_states)
    with outputs.capture(bert.encoder.layer) if recording else nullcontext():
        for i, layer_module in enumerate(bert.encoder.layer):
            updated = layer_module(hidden_states, mask)
            if active_depth is None:
                hidden_states = updated
            else:
                hidden_states = torch.where((active_depth > i).unsqueeze(-1), updated, hidden_states)
            if recording:
                outputs.add_hidden_states(hidden_states)
                outputs.add_attentions(outputs.take_captured())
            k = exit_position.get(i + 1)
            if k is not None and (all_exits or i + 1 == num_layers):
                head_input = hidden_states
                remaining = len(exit_layers) - k
                if gradient_equilibrium and all_exits and remaining > 1:
                    head_input = scale_gradient(hidden_states, 1.0 / remaining)
                    hidden_states = scale_gradient(hidden_states, (remaining - 1) / remaining)
                logits.append(exit_logits(k, head_input))
    return torch.stack(logits)


def problem_type_of(config: BertConfig, labels: torch.Tensor) -> str:
    """transformers' rule for the classification problem type, without writing it into the config."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def check_labels(labels, num_labels: int, problem_type: str, shape: tuple[int, ...]) -> None:
    """Clear errors for labels that torch would reject with a message about targets and input sizes. `shape` is the
    batch shape of the logits without the class dimension: `(batch,)`, or `(batch, seq)` for tokens."""
    if problem_type == "single_label_classification":
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(
                f"`labels` of dtype {labels.dtype} on a classifier: give class ids as integers (torch.long) in "
                f"[0, {num_labels}); float labels mean multi-label classification (`problem_type="
                '"multi_label_classification"`, one 0/1 target per class).'
            )
        if tuple(labels.shape) != tuple(shape):
            raise ValueError(f"`labels` has shape {tuple(labels.shape)}; expected one class id per example, {shape}.")
        bad = (labels != -100) & ((labels < 0) | (labels >= num_labels))
        if bool(bad.any()):
            raise ValueError(
                f"`labels` must be class ids in [0, {num_labels}) (or -100), got {labels[bad][:5].tolist()}."
            )
    elif problem_type == "multi_label_classification" and tuple(labels.shape) != (*shape, num_labels):
        raise ValueError(
            f"`labels` of dtype {labels.dtype} mean multi-label classification: one 0/1 target per class, shape "
            f"{(*shape, num_labels)}, got {tuple(labels.shape)}. For one class per example give integer class ids "
            "(torch.long)."
        )


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """The loss `BertForSequenceClassification` uses for `problem_type`, on `(batch, num_labels)` logits."""
    if problem_type == "regression":
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def weighted_exit_loss(
    per_exit_logits: torch.Tensor, labels: torch.Tensor, problem_type: str, weights: list[float] | torch.Tensor
) -> torch.Tensor:
    """`sum_i w_i * loss_i / sum_i w_i` over exits (PABEE's joint objective when `w_i` is the exit's layer number).

    Args:
        per_exit_logits: `(num_exits, batch, num_labels)`.
        labels: The labels of the batch.
        problem_type: As returned by [`problem_type_of`].
        weights: One weight per exit.
    """
    weights = torch.as_tensor(weights, dtype=per_exit_logits.dtype, device=per_exit_logits.device)
    losses = torch.stack([sequence_classification_loss(logits, labels, problem_type) for logits in per_exit_logits])
    return (weights * losses).sum() / weights.sum()


__all__ = [
    "BypassModule",
    "ClassificationHead",
    "EarlyExitModelMixin",
    "LayerOutputs",
    "check_flag",
    "check_forward_kwargs",
    "check_labels",
    "check_mask",
    "check_token_inputs",
    "embed_and_mask",
    "finish_output",
    "forward_settings",
    "raise_for_bad_ids",
    "full_depth_exit_logits",
    "layer_mask",
    "masked_mean",
    "problem_type_of",
    "scale_gradient",
    "sequence_classification_loss",
    "weighted_exit_loss",
    "ZeroInitLinear",
]
