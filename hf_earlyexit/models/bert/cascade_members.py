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
"""The members of a cascade: one complete BERT classifier ([`CascadeMember`]), and what a cascade is assembled from
(fine-tuned classifiers, plain encoders, members of other cascades, one encoder cut to several depths).

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import copy
import os
import re

import torch
from transformers import AutoConfig, BertConfig, BertForSequenceClassification, BertModel, BertPreTrainedModel

from .active_batch import LayerOutputs
from .checkpoint_utils import check_local_path
from .exit_utils import encoder_layer_flops
from .forward_checks import raise_for_bad_ids
from .modeling_exit_heads import ClassificationHead


class CascadeMember(BertPreTrainedModel):
    """One member of a cascade: a complete BERT encoder with its own classification head.

    It is a `PreTrainedModel` of its own so that its weights are initialised with its own config and attention
    implementation changes reach it.
    """

    def __init__(self, config: BertConfig, pooling: str):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = ClassificationHead(config, pooling)
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
        """`(batch, num_labels)` logits of this member. With `layer_outputs`, also records this member's hidden states
        and attention maps there, for the examples `rows` of the caller's batch (`None`: all of them)."""
        recording = layer_outputs is not None and layer_outputs.active
        try:
            encoded = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                output_hidden_states=recording and layer_outputs.hidden_states is not None,
                output_attentions=recording and layer_outputs.attentions is not None,
            )
        except (IndexError, RuntimeError) as error:
            raise_for_bad_ids(self.config, input_ids, token_type_ids, position_ids, error)
            raise
        if recording:
            for states in encoded.hidden_states or ():
                layer_outputs.add_hidden_states(states, rows)
            for weights in encoded.attentions or ():
                layer_outputs.add_attentions(weights, rows)
        return self.head(encoded.last_hidden_state, attention_mask)

    def record_skipped(self, layer_outputs: LayerOutputs, batch_size: int, seq_len: int, like: torch.Tensor) -> None:
        """Zeros in `layer_outputs` for a member that ran on no example."""
        config = self.config
        if layer_outputs.hidden_states is not None:
            shape = (batch_size, seq_len, config.hidden_size)
            layer_outputs.hidden_states.extend(like.new_zeros(shape) for _ in range(config.num_hidden_layers + 1))
        if layer_outputs.attentions is not None and config._attn_implementation == "eager":
            shape = (batch_size, config.num_attention_heads, seq_len, seq_len)
            layer_outputs.attentions.extend(like.new_zeros(shape) for _ in range(config.num_hidden_layers))

    def flops(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs of this member, encoder and head, on examples of the given real lengths. Shape of `lengths`."""
        layer = encoder_layer_flops(lengths.long(), self.config.hidden_size, self.config.intermediate_size)
        return self.config.num_hidden_layers * layer + self.head.flops()


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
    """What a cascade member is made of: its BERT config, encoder weights, pooler and classifier weights if any, and the
    pooling its classifier was trained on."""
    if isinstance(member, (str, os.PathLike)):
        check_local_path(member)
        member_config = AutoConfig.from_pretrained(member, **load_kwargs)
        if member_config.model_type != "bert":
            raise ValueError(
                f"`members[{index}]` ({str(member)!r}) has model_type {member_config.model_type!r}; cascade members "
                "are BERT checkpoints."
            )
        if "BertForSequenceClassification" in (member_config.architectures or []):
            member = BertForSequenceClassification.from_pretrained(member, **load_kwargs)
        else:
            member = BertModel.from_pretrained(member, **load_kwargs)
    if isinstance(member, CascadeMember):
        head = member.head
        return {
            "config": member.bert.config,
            "encoder": member.bert.state_dict(),
            "pooler": head.pooler.state_dict() if head.pooler is not None else None,
            "classifier": head.classifier.state_dict(),
            "pooling": head.pooling,
        }
    if isinstance(member, BertForSequenceClassification):
        encoder, classifier = member.bert, member.classifier.state_dict()
    elif isinstance(member, BertModel):
        encoder, classifier = member, None
    else:
        raise TypeError(
            f"`members[{index}]` must be a checkpoint path or Hub id, a BertForSequenceClassification, a BertModel or "
            f"a CascadeMember, got {type(member).__name__}."
        )
    state = encoder.state_dict()
    return {
        "config": encoder.config,
        "encoder": {name: t for name, t in state.items() if not name.startswith("pooler.")},
        "pooler": encoder.pooler.dense.state_dict() if encoder.pooler is not None else None,
        "classifier": classifier,
        # the pooling the classifier was trained on (None: no classifier, the head is new)
        "pooling": "pooler" if classifier is not None else None,
    }


def truncated(backbone: BertModel, num_layers: int) -> BertModel:
    """A copy of `backbone` keeping its first `num_layers` encoder layers."""
    member = copy.deepcopy(backbone)
    member.encoder.layer = member.encoder.layer[:num_layers]
    member.config.num_hidden_layers = num_layers
    return member


__all__ = ["CascadeMember", "member_source", "resolve_labels", "truncated"]
