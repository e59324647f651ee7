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
"""The checks an early-exit forward starts with: keyword arguments, flags, inputs, the attention mask, ids outside the
embeddings, labels. Each turns what would fail deep inside the model (or silently do something else) into an error
that names the argument.

Shipped with `trust_remote_code` checkpoints: imports only torch and transformers.
"""

import difflib
import inspect

import torch
from torch import nn
from transformers import BertConfig


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


# --------------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------------


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


def check_sequence_labels(config: BertConfig, labels: torch.Tensor, batch_size: int) -> str:
    """[`problem_type_of`] the labels of a sequence classifier, after [`check_labels`] on one label per example."""
    problem_type = problem_type_of(config, labels)
    check_labels(labels, config.num_labels, problem_type, (batch_size,))
    return problem_type


__all__ = [
    "check_flag",
    "check_forward_kwargs",
    "check_labels",
    "check_mask",
    "check_sequence_labels",
    "check_token_inputs",
    "forward_settings",
    "problem_type_of",
    "raise_for_bad_ids",
]
