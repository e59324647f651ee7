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
"""The members of a cascade: one complete classifier ([`CascadeMember`]) of any supported encoder, and what a cascade
is assembled from (fine-tuned classifiers, plain encoders, members of other cascades, one encoder cut to several
depths).

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import copy
import os
import re
from contextlib import nullcontext

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
    BertPreTrainedModel,
    PreTrainedConfig,
    PreTrainedModel,
)

from .active_batch import LayerOutputs
from .backbones import BACKBONES, SUPPORTED_MODEL_TYPES, backbone_for
from .checkpoint_utils import check_local_path
from .exit_forward import drop_padding_columns_of, embed_encoder
from .modeling_exit_heads import ClassificationHead, attach_encoder, stock_head_modules, tabulated_encoder_flops


class CascadeMember(BertPreTrainedModel):
    """One member of a cascade: a complete encoder (BERT or another supported architecture, under the attribute its
    architecture's task models use: `bert`, `roberta`, ...) with its own classification head.

    It is a `PreTrainedModel` of its own so that its weights are initialised with its own config and attention
    implementation changes reach it.
    """

    def __init__(self, config: PreTrainedConfig, pooling: str):
        attn_implementation = config._attn_implementation  # as asked for, before the model resolves its own
        super().__init__(config)
        attach_encoder(self, config, attn_implementation)
        backbone = self.encoder_backbone
        style = backbone.sequence_head_style(self.base_model.config)
        self.head = ClassificationHead(config, pooling, style, dropout=backbone.classifier_dropout(config))
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        layer_outputs: LayerOutputs | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(batch, num_labels)` logits of this member. The positions that are padding in every row are dropped after
        the embeddings (every token keeps its position). With `layer_outputs`, also records this member's hidden states
        and attention maps there (every position kept), for the examples `rows` of the caller's batch (`None`: all of
        them)."""
        backbone, encoder = self.encoder_backbone, self.base_model
        if not backbone.takes_token_type_ids:  # a member without token types in a cascade of members with them
            token_type_ids = None
        hidden_states, attention_mask, context = embed_encoder(
            self, input_ids, attention_mask, token_type_ids, position_ids, None
        )
        recording = layer_outputs is not None and layer_outputs.active
        if recording:
            context.output_attentions = layer_outputs.attentions is not None
            layer_outputs.add_hidden_states(hidden_states, rows)
        else:
            hidden_states, context = drop_padding_columns_of(backbone, hidden_states, context)
        layers = backbone.layers(encoder)
        with (
            layer_outputs.capture([backbone.attention_module(layer) for layer in layers])
            if recording
            else nullcontext()
        ):
            for index in range(len(layers)):
                hidden_states = backbone.run_layer(encoder, index, hidden_states, context)
                if recording:
                    layer_outputs.add_hidden_states(hidden_states, rows)
                    layer_outputs.add_attentions(layer_outputs.take_captured(), rows)
        return self.head(backbone.finalize(encoder, hidden_states), context.attention_mask)

    @property
    def max_positions(self) -> int:
        """The most tokens this member takes."""
        return self.encoder_backbone.max_positions(self.base_model.config)

    def record_skipped(self, layer_outputs: LayerOutputs, batch_size: int, seq_len: int, like: torch.Tensor) -> None:
        """Zeros in `layer_outputs` for a member that ran on no example."""
        config = self.config
        if layer_outputs.hidden_states is not None:
            shape = (batch_size, seq_len, config.hidden_size)
            layer_outputs.hidden_states.extend(like.new_zeros(shape) for _ in range(config.num_hidden_layers + 1))
        if layer_outputs.attentions is not None and self.base_model.config._attn_implementation == "eager":
            shape = (batch_size, config.num_attention_heads, seq_len, seq_len)
            layer_outputs.attentions.extend(like.new_zeros(shape) for _ in range(config.num_hidden_layers))

    def flops(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs of this member, encoder and head, on examples of the given real lengths. Shape of `lengths`."""
        config = self.base_model.config
        return (
            tabulated_encoder_flops(self, self.encoder_backbone, config, lengths, config.num_hidden_layers)
            + self.head.flops()
        )


_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


def resolve_labels(trained: list[tuple[int, dict]], num_labels: int | None, id2label: dict | None) -> dict:
    """The cascade's label setting, from the arguments and the members' trained classifiers (which must agree)."""
    head_labels = {i: source["config"].num_labels for i, source in trained}
    if len(set(head_labels.values())) > 1:
        found = ", ".join(f"member {i}: {n}" for i, n in head_labels.items())
        raise ValueError(f"Cascade members must agree on `num_labels`, but their classifiers have {found}.")
    trained_labels = next(iter(head_labels.values()), None)
    if num_labels is not None and trained_labels is not None and num_labels != trained_labels:
        raise ValueError(
            f"num_labels={num_labels} does not match the members' trained classifiers ({trained_labels} labels)."
        )
    if id2label is None:
        named = {
            i: source["config"].id2label
            for i, source in trained
            if not all(_DEFAULT_LABEL.fullmatch(str(name)) for name in source["config"].id2label.values())
        }
        if len({tuple(sorted(names.items())) for names in named.values()}) > 1:
            raise ValueError(f"Cascade members label the classes differently: {named}.")
        id2label = next(iter(named.values()), None)
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2):
        raise ValueError(
            f"num_labels must be an integer >= 2 (a cascade routes on class probabilities), got {num_labels!r}."
        )
    if num_labels is None:
        num_labels = trained_labels
    if id2label is None:
        return {"num_labels": 2 if num_labels is None else num_labels}
    if num_labels is not None and len(id2label) != num_labels:
        raise ValueError(f"`id2label` has {len(id2label)} entries but num_labels={num_labels}.")
    return {"id2label": id2label}


def member_source(index: int, member, load_kwargs: dict) -> dict:
    """What a cascade member is made of: its encoder config, encoder weights, the head weights it comes with (by head
    module: `classifier`, `pooler`, `pooler_norm`; a plain encoder has none, a plain BERT keeps its pretrained pooler),
    and the pooling its classifier was trained on (`None` without a classifier)."""
    if isinstance(member, (str, os.PathLike)):
        member = _load_member(index, member, load_kwargs)
    if isinstance(member, CascadeMember):
        return _source(member.base_model, _head_states(member.head), member.head.pooling)
    if isinstance(member, BertForSequenceClassification):  # BERT's pooler sits in its base model
        pooler = member.bert.pooler
        head = {"classifier": member.classifier.state_dict()}
        if pooler is not None:
            head["pooler"] = pooler.dense.state_dict()
        return _source(member.bert, head, "pooler")
    if isinstance(member, BertModel):
        head = {"pooler": member.pooler.dense.state_dict()} if member.pooler is not None else {}
        return _source(member, head, None)
    if not isinstance(member, PreTrainedModel) or getattr(member.config, "model_type", None) not in BACKBONES:
        raise TypeError(
            f"`members[{index}]` must be a checkpoint path or Hub id, a sequence classifier or a base model of a "
            f"supported encoder ({', '.join(SUPPORTED_MODEL_TYPES)}), or a CascadeMember; got {type(member).__name__}."
        )
    backbone = _backbone_of_member(index, member.config)
    if isinstance(member, backbone.model_class):
        return _source(member, {}, None)
    if type(member).__name__ != backbone.task_model_class("sequence").__name__:
        raise TypeError(
            f"`members[{index}]` is a {type(member).__name__}; cascade members are sequence classifiers "
            f"({backbone.task_model_class('sequence').__name__}) or base models ({backbone.model_class_name})."
        )
    # the architecture's own head, read into an exit head with the architecture's pooling
    head = ClassificationHead(member.config, "pooler", backbone.sequence_head_style(member.config), dropout=0.0)
    for ours, theirs in stock_head_modules(backbone, "sequence", head, member):
        ours.load_state_dict(theirs.state_dict())
    return _source(getattr(member, backbone.base_model_prefix), _head_states(head), "pooler")


def _backbone_of_member(index: int, config: PreTrainedConfig):
    try:
        return backbone_for(config.model_type)
    except ValueError as error:
        raise ValueError(f"`members[{index}]`: {error}") from None


def _load_member(index: int, member, load_kwargs: dict) -> PreTrainedModel:
    """A member given as a checkpoint: its sequence classifier when it has one (its `architectures` say so), else its
    base model."""
    check_local_path(member)
    member_config = AutoConfig.from_pretrained(member, **load_kwargs)
    backbone = _backbone_of_member(index, member_config)
    if backbone.task_model_class("sequence").__name__ in (member_config.architectures or []):
        return AutoModelForSequenceClassification.from_pretrained(member, **load_kwargs)
    return AutoModel.from_pretrained(member, **load_kwargs)


def _head_states(head: ClassificationHead) -> dict:
    return {
        name: module.state_dict()
        for name in ("pooler", "pooler_norm", "classifier")
        if (module := getattr(head, name, None)) is not None
    }


def _source(encoder: PreTrainedModel, head: dict, pooling: str | None) -> dict:
    trained = "classifier" in head
    return {
        "config": encoder.config,
        "encoder": {name: t for name, t in encoder.state_dict().items() if not name.startswith("pooler.")},
        "head": head,
        "classifier": head.get("classifier") if trained else None,
        "pooling": pooling if trained else None,
    }


def truncated(backbone: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """A copy of a base model `backbone` keeping its first `num_layers` encoder layers."""
    member = copy.deepcopy(backbone)
    layers_attribute = backbone_for(member.config).layers_attribute
    owner_path, _, name = layers_attribute.rpartition(".")
    owner = member.get_submodule(owner_path) if owner_path else member
    setattr(owner, name, getattr(owner, name)[:num_layers])
    member.config.num_hidden_layers = num_layers
    if getattr(member.config, "layer_types", None):  # ModernBERT: one attention kind per layer
        member.config.layer_types = member.config.layer_types[:num_layers]
    return member


__all__ = ["CascadeMember", "member_source", "resolve_labels", "truncated"]
