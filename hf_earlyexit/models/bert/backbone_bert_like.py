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
"""BERT-like backbones: BERT, RoBERTa, XLM-RoBERTa and ELECTRA share BERT's layer; DistilBERT has it under other
module names.

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import apply_chunking_to_forward

from .backbone_base import FULL_ATTENTION, EncoderBackbone, HeadStyle, split_heads


def feed_forward(chunk: Callable[[torch.Tensor], torch.Tensor], chunk_size: int, states: torch.Tensor) -> torch.Tensor:
    """A layer's feed-forward block on `(N, d)` states, in chunks of `chunk_size` positions as the layer would run it
    (`apply_chunking_to_forward`); called directly when there is no chunking, which spares the signature inspection
    that helper does on every call (a few percent of a small layer at batch size 1)."""
    if chunk_size == 0:
        return chunk(states)
    return apply_chunking_to_forward(chunk, chunk_size, 0, states)


class BertBackbone(EncoderBackbone):
    """BERT and its copies with the same layer: RoBERTa and XLM-RoBERTa (position ids from the padding, which makes
    left padding harmless), ELECTRA (plus a projection when `embedding_size != hidden_size`)."""

    _detects_packing = True

    def __init__(
        self,
        model_type: str,
        model_class_name: str,
        base_model_kwargs: dict[str, Any],
        head_activation: str = "tanh",
        stock_sequence_head: dict[str, str] | None = None,
        positions_after_padding: bool = False,
    ):
        """
        Args:
            positions_after_padding: Position ids count from `pad_token_id + 1` (RoBERTa, XLM-R), so a sequence takes
                `max_position_embeddings - pad_token_id - 1` tokens.
            head_activation: The activation of the architecture's sequence-classification head (BERT's pooler and
                RoBERTa's head: tanh; ELECTRA's: GELU).
            stock_sequence_head: Where its `...ForSequenceClassification` keeps the head (default: BERT's layout).
        """
        self.model_types = (model_type,)
        self.model_class_name = model_class_name
        self.base_model_kwargs = base_model_kwargs
        self.head_activation = head_activation
        self.positions_after_padding = positions_after_padding
        if stock_sequence_head is not None:
            self.stock_sequence_head = stock_sequence_head

    def sequence_head_style(self, config):
        return HeadStyle(activation=self.head_activation)

    def max_positions(self, config):
        if self.positions_after_padding:
            return config.max_position_embeddings - config.pad_token_id - 1
        return config.max_position_embeddings

    def _embeddings(self, base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        hidden_states = base_model.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        projection = getattr(base_model, "embeddings_project", None)  # ELECTRA with embedding_size != hidden_size
        return hidden_states if projection is None else projection(hidden_states)

    def run_layer(self, base_model, index, hidden_states, context):
        return self.layers(base_model)[index](hidden_states, context.masks[FULL_ATTENTION])

    def _projections(self, layer) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """`(attention module, query, key, value)` of a layer."""
        attention = layer.attention.self
        return attention, attention.query, attention.key, attention.value

    def _after_attention(self, layer, attention_context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Attention output (projection, residual, norm) and feed-forward block on `(N, ...)` gathered positions."""
        attention_output = layer.attention.output(attention_context, residual)
        return feed_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, attention_output)

    def _active_layer(self, layer, index, hidden_states, flat_states, context, queries):
        attention, query_proj, key_proj, value_proj = self._projections(layer)
        head_dim = attention.attention_head_size
        key = split_heads(key_proj(hidden_states), head_dim)
        value = split_heads(value_proj(hidden_states), head_dim)
        queries_in = flat_states.index_select(0, queries.positions)
        query = split_heads(queries.pack(query_proj(queries_in)), head_dim)
        attention_context = self._packed_attention(
            attention,
            query,
            key,
            value,
            queries.masks[FULL_ATTENTION],
            scaling=attention.scaling,
            dropout=attention.dropout.p,
            queries=queries,
        )
        return self._after_attention(layer, queries.unpack(attention_context), queries_in)


class DistilBertBackbone(BertBackbone):
    """DistilBERT: BERT's layer with other module names (`transformer.layer`, `q_lin`, `sa_layer_norm`, `ffn`), no
    token types, no pooler, `dim` / `hidden_dim` for the sizes."""

    layers_attribute = "transformer.layer"
    takes_token_type_ids = False
    _detects_packing = False  # DistilBertModel never passes position ids to its mask

    def __init__(self):
        super().__init__(
            "distilbert",
            "DistilBertModel",
            {},
            head_activation="relu",
            stock_sequence_head={"pooler": "pre_classifier", "classifier": "classifier"},
        )

    def dims(self, config):
        return config.dim, config.hidden_dim

    def classifier_dropout(self, config):
        return config.seq_classif_dropout

    def attention_module(self, layer):
        return layer.attention

    def _embeddings(self, base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        return base_model.embeddings(input_ids, inputs_embeds, position_ids)

    def _projections(self, layer):
        attention = layer.attention
        return attention, attention.q_lin, attention.k_lin, attention.v_lin

    def _after_attention(self, layer, attention_context, residual):
        attention_output = layer.sa_layer_norm(layer.attention.out_lin(attention_context) + residual)
        ffn = layer.ffn
        ffn_output = feed_forward(ffn.ff_chunk, ffn.chunk_size_feed_forward, attention_output)
        return layer.output_layer_norm(ffn_output + attention_output)


__all__ = ["BertBackbone", "DistilBertBackbone"]
