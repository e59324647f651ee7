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
"""The parts of a forward that every early-exit family shares: the call's settings and outputs ([`ExitCall`]), the
embeddings, the full-depth layer loop, and the default losses.

A family's `forward` reads:

```python
check_forward_kwargs(self, kwargs)  # unknown keyword arguments raise
call = ExitCall.start(self, early_exit, output_all_exits, exit_threshold, ...)
rule = self.config.exit_rule(..., exit_threshold=call.exit_threshold)  # per-example thresholds: rule.for_examples
...  # check and embed the inputs, `layer_outputs = call.record_layers(batch_size)`
if call.full_depth:  # every exit (training, output_all_exits) or the last one (early_exit=False)
    ...
else:  # the early-exit loop, bookkept by an ActiveBatch
    ...
return call.finish(OutputClass, self.config, loss=exit_loss(...), logits=..., ...)
```

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig
from transformers.masking_utils import create_bidirectional_mask

from .active_batch import LayerOutputs
from .backbone_base import EncoderBackbone, LayerContext
from .backbones import backbone_for
from .exit_utils import kept_columns
from .forward_checks import forward_settings, raise_for_bad_ids


@dataclass
class ExitCall:
    """The settings of one forward call, resolved once at its start by [`ExitCall.start`] from the arguments, the
    model's mode and its config, and the end every family's `forward` shares ([`ExitCall.finish`]).

    Attributes:
        early_exit: Examples leave at the first exit whose criterion fires (default: in evaluation mode).
        all_exits: Every exit is computed for every example (default: in training mode; `output_all_exits`).
        exit_threshold: The call's `exit_threshold` for the config's `exit_rule`; `None` when it is a tensor of one
            threshold per example, which is then `example_thresholds`.
        example_thresholds: The per-example thresholds, for the rule's `for_examples`, or `None`.
        output_attentions, output_hidden_states, return_dict: As for transformers models (defaults from the config).
        outputs: The call's [`LayerOutputs`] once [`record_layers`] made it (`None` when nothing is recorded).
    """

    early_exit: bool
    all_exits: bool
    exit_threshold: float | list[float] | None
    example_thresholds: torch.Tensor | None
    output_attentions: bool
    output_hidden_states: bool | list[int]
    return_dict: bool
    outputs: LayerOutputs | None = field(default=None, init=False)

    @classmethod
    def start(
        cls,
        model: nn.Module,
        early_exit: bool | None,
        output_all_exits: bool | None,
        exit_threshold,
        output_attentions: bool | None,
        output_hidden_states,
        return_dict: bool | None,
        all_exits_in_training: bool = True,
    ) -> "ExitCall":
        """Checks the flags every family takes (booleans; see [`forward_settings`]) and resolves their defaults. A
        `forward` checks its other keyword arguments first ([`check_forward_kwargs`]: unknown ones raise).

        Args:
            all_exits_in_training: Training computes every exit whatever `output_all_exits` says. `False`: training
                computes every exit by default, and `output_all_exits=False` the last one only (a recipe that trains
                the final exit alone).
        """
        output_attentions, output_hidden_states, return_dict = forward_settings(
            model, {}, early_exit, output_all_exits, output_attentions, output_hidden_states, return_dict
        )
        training = model.training
        if output_all_exits is None:
            all_exits = training
        else:
            all_exits = (training and all_exits_in_training) or output_all_exits
        per_example = isinstance(exit_threshold, torch.Tensor)
        return cls(
            early_exit=(not training) if early_exit is None else early_exit,
            all_exits=all_exits,
            exit_threshold=None if per_example else exit_threshold,
            example_thresholds=exit_threshold if per_example else None,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )

    @property
    def full_depth(self) -> bool:
        """Every layer runs on every example: every exit is computed, or early exit is off."""
        return self.all_exits or not self.early_exit

    def record_layers(self, batch_size: int) -> LayerOutputs | None:
        """The recorder of the hidden states and attention maps the call asks for (`None` when it asks for none)."""
        self.outputs = LayerOutputs.if_asked(batch_size, self.output_hidden_states, self.output_attentions)
        return self.outputs

    def pick_exits(
        self, stacked: torch.Tensor, rule, lengths: torch.Tensor, num_exits: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The answers of a full-depth run of a sequence classifier.

        Args:
            stacked: `(num_exits, batch, num_labels)` logits of every exit when `all_exits`, else `(1, batch,
                num_labels)`, the last exit's.
            rule: The call's exit rule; with early exit, it picks each example's exit from the logits of every exit
                (`rule.simulate`, the live loop's decisions).
            lengths: `(batch,)` real lengths (their dtype and device are the exit indices').
            num_exits: Exits of the model.

        Returns:
            `(logits, exit_index, all_logits)`: the answering exit's logits, its 0-based index (the last exit without
            early exit) and `stacked` when every exit was computed (else `None`).
        """
        if self.all_exits and self.early_exit:
            exit_index = rule.simulate(stacked)
        else:
            exit_index = torch.full_like(lengths, num_exits - 1)
        if not self.all_exits:
            return stacked[-1], exit_index, None
        examples = torch.arange(exit_index.shape[0], device=exit_index.device)
        return stacked[exit_index, examples], exit_index, stacked

    def finish(self, output_class: type, config, **fields):
        """The output with `fields` and what the call recorded (see [`finish_output`])."""
        return finish_output(output_class, self.return_dict, self.outputs, config, **fields)


def finish_output(output_class: type, return_dict: bool, layer_outputs: "LayerOutputs | None", config, **fields):
    """The output dataclass with `fields` and what `layer_outputs` recorded, or with `return_dict=False` its
    non-`None` fields as a tuple (transformers' convention)."""
    if layer_outputs is not None:
        fields["hidden_states"], fields["attentions"] = layer_outputs.results(config)
    output = output_class(**fields)
    return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------------------------------
# Embeddings and the full-depth layer loop
# --------------------------------------------------------------------------------------------------------------------


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


def embed_and_mask(
    bert: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of a base model (`BertModel`, or any supported encoder's) and the 2D attention mask (all ones when
    none is given): [`embed_encoder`] without the [`LayerContext`]. Check the inputs first ([`check_token_inputs`])."""
    owner = SimpleNamespace(base_model=bert, encoder_backbone=backbone_for(bert.config))
    hidden_states, attention_mask, _ = embed_encoder(
        owner, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
    )
    return hidden_states, attention_mask


def layer_mask(config: BertConfig, hidden_states: torch.Tensor, attention_mask: torch.Tensor):
    """The mask `BertLayer` expects for the current attention implementation (`None` when nothing is masked)."""
    if bool(attention_mask.all()):  # an encoder with no padding attends everywhere, whatever the implementation
        return None
    return create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask)


def embed_encoder(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, LayerContext]:
    """The embeddings of `model`'s encoder (`model.base_model`, run by `model.encoder_backbone`), the 2D attention mask
    (all ones when none is given) and the batch's [`LayerContext`]. Check the inputs first ([`check_token_inputs`]);
    ids outside the embeddings are named."""
    encoder = model.base_model
    try:
        return model.encoder_backbone.embed(
            encoder, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
    except (IndexError, RuntimeError) as error:
        raise_for_bad_ids(encoder.config, input_ids, token_type_ids, position_ids, error)
        raise


def drop_padding_columns_of(
    backbone: EncoderBackbone, hidden_states: torch.Tensor, context: LayerContext
) -> tuple[torch.Tensor, LayerContext]:
    """`hidden_states` and `context` without the positions that are padding in every row (attention masks them out,
    so no real position's output changes); the remaining tokens keep their positions."""
    columns = kept_columns(context.attention_mask)
    if columns is None:
        return hidden_states, context
    return hidden_states.index_select(1, columns), backbone.compact(context, None, columns)


def full_depth_exit_logits(
    model: nn.Module,
    hidden_states: torch.Tensor,
    context: LayerContext,
    exit_layers: list[int],
    exit_logits: Callable[[int, torch.Tensor], torch.Tensor],
    all_exits: bool,
    active_depth: torch.Tensor | None = None,
    outputs: LayerOutputs | None = None,
    gradient_equilibrium: bool = False,
) -> torch.Tensor:
    """Run every encoder layer on every position and stack the exits' logits.

    Args:
        model: The early-exit model, whose encoder (`model.base_model`) runs through `model.encoder_backbone`.
        hidden_states: `(batch, seq, d)` embeddings.
        context: The batch's [`LayerContext`] (from [`embed_encoder`]).
        exit_layers: 1-based exit layers.
        exit_logits: `exit_logits(exit_index, hidden_states)`, the logits of one exit, from the states the
            architecture's heads read (`backbone.finalize`: ModernBERT's final norm).
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
    backbone, encoder = model.encoder_backbone, model.base_model
    layers = backbone.layers(encoder)
    exit_position = {layer: k for k, layer in enumerate(exit_layers)}
    num_layers = len(layers)
    logits = []
    recording = outputs is not None and outputs.active
    if recording:
        outputs.add_hidden_states(hidden_states)
    attention_modules = [backbone.attention_module(layer) for layer in layers] if recording else None
    with outputs.capture(attention_modules) if recording else nullcontext():
        for i in range(num_layers):
            updated = backbone.run_layer(encoder, i, hidden_states, context)
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
                logits.append(exit_logits(k, backbone.finalize(encoder, head_input)))
    return torch.stack(logits)


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------


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


def exit_loss(
    labels: torch.Tensor,
    logits: torch.Tensor,
    all_logits: torch.Tensor | None,
    problem_type: str,
    weights: list[float] | torch.Tensor,
) -> torch.Tensor:
    """The default loss of a forward: with every exit computed (`all_logits`), [`weighted_exit_loss`] over them with
    `weights`; otherwise the loss of the answer `logits`."""
    if all_logits is not None:
        return weighted_exit_loss(all_logits, labels, problem_type, weights)
    return sequence_classification_loss(logits, labels, problem_type)


__all__ = [
    "ExitCall",
    "drop_padding_columns_of",
    "embed_and_mask",
    "embed_encoder",
    "exit_loss",
    "finish_output",
    "full_depth_exit_logits",
    "layer_mask",
    "scale_gradient",
    "sequence_classification_loss",
    "weighted_exit_loss",
]
