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
"""The ModernBERT backbone: rotary positions, a gated feed-forward block, global and sliding-window layers, a final
norm.

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

from collections.abc import Callable

import torch
from torch.nn import functional as F
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask
from transformers.models.modernbert.modeling_modernbert import eager_attention_forward as modernbert_eager_attention
from transformers.models.modernbert.modeling_modernbert import rotate_half

from .backbone_base import (
    FULL_ATTENTION,
    PACKED_ATTENTION,
    SLIDING_ATTENTION,
    EncoderBackbone,
    HeadStyle,
    is_contiguous,
    shape_only,
    split_heads,
)


class ModernBertBackbone(EncoderBackbone):
    """ModernBERT: pre-norm layers with rotary position embeddings, a gated (GLU) feed-forward block, and global
    (`"full_attention"`) layers alternating with local (`"sliding_attention"`) ones that see `config.sliding_window`
    positions on each side; the base model ends with a LayerNorm ([`finalize`]).

    transformers 5 no longer unpads ModernBERT's inputs: it runs padded batches with a padding mask (plus the window
    for local layers), which is what this backbone does. The rotary embeddings are computed once from the original
    position ids and sliced with the columns, and the window is measured in original columns, so compaction keeps
    both, gaps included (for a gap, the window mask is built from the original columns, which needs the eager or sdpa
    implementation).
    """

    model_types = ("modernbert",)
    model_class_name = "ModernBertModel"
    layers_attribute = "layers"
    takes_token_type_ids = False
    eager_attention = staticmethod(modernbert_eager_attention)
    # `ModernBertPredictionHead` (dense, activation, LayerNorm) then the classifier, in both task models
    stock_sequence_head = {"pooler": "head.dense", "pooler_norm": "head.norm", "classifier": "classifier"}
    stock_token_head = {"dense": "head.dense", "norm": "head.norm", "classifier": "classifier"}

    def sequence_head_style(self, config):
        return HeadStyle(
            activation=config.classifier_activation,
            pooling=config.classifier_pooling,
            dense_bias=config.classifier_bias,
            norm_eps=config.norm_eps,
            norm_bias=config.norm_bias,
        )

    def token_head_style(self, config):
        return self.sequence_head_style(config)

    def classifier_dropout(self, config):
        return config.classifier_dropout

    def attention_module(self, layer):
        return layer.attn

    def _embeddings(self, base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        return base_model.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)

    def _positional(self, base_model, hidden_states, position_ids):
        if position_ids is None:
            position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
        return {
            "position_embeddings": {
                kind: base_model.rotary_emb(hidden_states, position_ids, kind)
                for kind in set(base_model.config.layer_types)
            }
        }

    def finalize(self, base_model, hidden_states):
        return base_model.final_norm(hidden_states)

    def _masks(self, context):
        config = context.config
        seq_len = context.attention_mask.shape[1]
        mask_kwargs = {
            "config": config,
            "inputs_embeds": shape_only(context.attention_mask, seq_len, context.dtype),
            "attention_mask": context.attention_mask,
        }
        masks = {FULL_ATTENTION: create_bidirectional_mask(**mask_kwargs)}
        if SLIDING_ATTENTION in config.layer_types:
            if is_contiguous(context.columns):
                masks[SLIDING_ATTENTION] = create_bidirectional_sliding_window_mask(**mask_kwargs)
            else:
                if config._attn_implementation not in PACKED_ATTENTION:
                    raise ValueError(
                        "A compacted ModernBERT batch with a gap in its columns needs the window mask of the original "
                        f"columns, which the {PACKED_ATTENTION} attention implementations take; this model uses "
                        f"{config._attn_implementation!r}."
                    )
                masks[SLIDING_ATTENTION] = create_bidirectional_mask(
                    **mask_kwargs, and_mask_function=self._window(config, context.columns, context.columns[None, :])
                )
        return masks

    @staticmethod
    def _window(config, key_columns: torch.Tensor, query_columns: torch.Tensor) -> Callable:
        """Mask function: query and key at most `config.sliding_window` original columns apart.

        `query_columns` is `(1 or batch, num_queries)`."""
        window = config.sliding_window
        per_row = query_columns.shape[0] > 1

        def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
            query = query_columns[batch_idx if per_row else 0, q_idx]
            return (query - key_columns[kv_idx]).abs() <= window

        return inner_mask

    def run_layer(self, base_model, index, hidden_states, context):
        layer = self.layers(base_model)[index]
        kind = layer.attention_type
        return layer(
            hidden_states,
            attention_mask=context.masks[kind],
            position_embeddings=context.position_embeddings[kind],
        )

    def _query_masks(self, context, queries):
        self._require_packed_attention(context.config)
        queries.masks[FULL_ATTENTION] = self._rectangular_mask(context, queries)
        if SLIDING_ATTENTION in context.config.layer_types:
            window = self._window(context.config, context.columns, queries.query_columns)
            queries.masks[SLIDING_ATTENTION] = self._rectangular_mask(context, queries, and_mask_function=window)

    def _active_layer(self, layer, index, hidden_states, flat_states, context, queries):
        attention = layer.attn
        kind = layer.attention_type
        head_dim = attention.head_dim
        batch_size, seq_len, hidden_size = hidden_states.shape
        normed = layer.attn_norm(hidden_states)
        # Wqkv's rows are [query; key; value]: project the keys and values of every position, the queries of the
        # active ones only
        weight, bias = attention.Wqkv.weight, attention.Wqkv.bias
        width = weight.shape[0] // 3
        key_value = F.linear(normed, weight[width:], None if bias is None else bias[width:])
        key, value = key_value.view(batch_size, seq_len, 2, -1, head_dim).unbind(dim=2)
        query = F.linear(
            normed.reshape(-1, hidden_size).index_select(0, queries.positions),
            weight[:width],
            None if bias is None else bias[:width],
        )
        query = split_heads(queries.pack(query), head_dim)
        key, value = key.transpose(1, 2), value.transpose(1, 2)

        cos, sin = context.position_embeddings[kind]
        query_cos, query_sin = (
            queries.pack(t.expand(batch_size, -1, -1).reshape(-1, head_dim).index_select(0, queries.positions))
            for t in (cos, sin)
        )
        query, key = _rotate(query, query_cos, query_sin), _rotate(key, cos, sin)

        attention_context = self._packed_attention(
            attention,
            query,
            key,
            value,
            queries.masks[kind],
            scaling=head_dim**-0.5,
            dropout=attention.attention_dropout,
            sliding_window=attention.sliding_window,
            deterministic=attention.deterministic_flash_attn,
            queries=queries,
        )
        states = flat_states.index_select(0, queries.positions)
        states = states + attention.out_drop(attention.Wo(queries.unpack(attention_context)))
        return states + layer.mlp(layer.mlp_norm(states))

    def layer_flops(self, config, num_positions, num_queries=None, layer_index=0):
        """K and V projections `4nd^2`, Q and attention-output projections `4qd^2`, scores and context `4qnd` (local
        layers too: the window is a mask on the dense scores with the eager and sdpa implementations), gated
        feed-forward `6qdf` (`Wi` maps to `2f`, `Wo` back from `f`)."""
        d, f = self.dims(config)
        n = num_positions
        q = n if num_queries is None else num_queries
        return 4 * n * d * d + 4 * q * d * d + 4 * q * n * d + 6 * q * d * f


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """ModernBERT's `apply_rotary_pos_emb` for one tensor `(batch, heads, length, head_dim)`, `cos`/`sin` `(1 or
    batch, length, head_dim)`: in float32, back to the input dtype."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotated = states.float() * cos + rotate_half(states.float()) * sin
    return rotated.to(states.dtype)


__all__ = ["ModernBertBackbone"]
