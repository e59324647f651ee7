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
"""The DeBERTa-v2 / -v3 backbone: disentangled attention over relative positions, kept through compaction.

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position, scaled_size_sqrt

from .backbone_base import FULL_ATTENTION, ActiveQueries, EncoderBackbone, HeadStyle, is_contiguous, split_heads


class DebertaV2Backbone(EncoderBackbone):
    """DeBERTa-v2 and -v3: disentangled attention with relative positions.

    The layer adds content-to-position (`c2p`) and position-to-content (`p2c`) scores from relative position
    embeddings shared by every layer (`encoder.rel_embeddings`, normalised once per forward) and bucketed relative
    positions; layer 0 is followed by a convolution when `conv_kernel_size > 0` (DeBERTa-v2 xlarge). The attention is
    DeBERTa's own (no sdpa/flash), with padding rows masked as well.

    The relative positions are those of the original columns, so compaction keeps them, gaps included.
    `run_layer_active` reimplements the disentangled attention on packed queries from the layer's own modules: the
    relative-position gathers index `(query column, key column)` pairs per example instead of one square table.
    """

    model_types = ("deberta-v2",)
    model_class_name = "DebertaV2Model"
    stock_sequence_head = {"pooler": "pooler.dense", "classifier": "classifier"}

    def sequence_head_style(self, config):
        """`ContextPooler`: dense (`pooler_hidden_size`, which must be the hidden size) and `pooler_hidden_act`."""
        if getattr(config, "pooler_hidden_size", config.hidden_size) != config.hidden_size:
            raise ValueError(
                f"DeBERTa's `pooler_hidden_size` ({config.pooler_hidden_size}) differs from its `hidden_size` "
                f"({config.hidden_size}); the exit heads pool at the hidden size."
            )
        return HeadStyle(activation=config.pooler_hidden_act)

    def classifier_dropout(self, config):
        dropout = getattr(config, "cls_dropout", None)  # DebertaV2ForSequenceClassification's own rule
        return config.hidden_dropout_prob if dropout is None else dropout

    def _embeddings(self, base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        return base_model.embeddings(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            mask=attention_mask,
            inputs_embeds=inputs_embeds,
        )

    def _positional(self, base_model, hidden_states, position_ids):
        encoder = base_model.encoder
        return {"rel_embeddings": encoder.get_rel_embedding()}

    @staticmethod
    def _position_settings(config) -> tuple[int, int]:
        """`(position_buckets, max_relative_positions)` as the encoder resolves them."""
        max_relative_positions = getattr(config, "max_relative_positions", -1)
        if max_relative_positions < 1:
            max_relative_positions = config.max_position_embeddings
        return getattr(config, "position_buckets", -1), max_relative_positions

    def _relative(self, config, query_columns: torch.Tensor, key_columns: torch.Tensor) -> torch.Tensor:
        """Bucketed `query - key` relative positions, as `build_relative_position` computes them for arange columns."""
        relative = query_columns.unsqueeze(-1) - key_columns
        buckets, max_position = self._position_settings(config)
        if buckets > 0 and max_position > 0:
            relative = make_log_bucket_position(relative, buckets, max_position)
        return relative.to(torch.long)

    def _derive(self, context):
        if getattr(context.config, "relative_attention", False):
            context.relative_pos = self._relative(context.config, context.columns, context.columns)
        return super()._derive(context)

    def _masks(self, context):
        # DebertaV2Encoder.get_attention_mask: a query and a key must both be real
        mask = context.attention_mask[:, None, None, :]
        return {FULL_ATTENTION: mask * mask.squeeze(-2).unsqueeze(-1)}

    def _conv(self, base_model, context, layer_input, layer_output):
        """The convolution after layer 0 over the original columns (zeros where columns were dropped, which are
        padding, whose embeddings DeBERTa zeroes)."""
        columns = context.columns
        if is_contiguous(columns):
            return base_model.encoder.conv(layer_input, layer_output, context.attention_mask)
        span = int(columns[-1] - columns[0]) + 1
        offsets = columns - columns[0]

        def spread(tensor):
            full = tensor.new_zeros(tensor.shape[0], span, *tensor.shape[2:])
            return full.index_copy_(1, offsets, tensor)

        output = base_model.encoder.conv(spread(layer_input), spread(layer_output), spread(context.attention_mask))
        return output.index_select(1, offsets)

    def run_layer(self, base_model, index, hidden_states, context):
        layer = self.layers(base_model)[index]
        output, _ = layer(
            hidden_states,
            context.masks[FULL_ATTENTION],
            relative_pos=context.relative_pos,
            rel_embeddings=context.rel_embeddings,
            output_attentions=context.output_attentions,
        )
        if index == 0 and base_model.encoder.conv is not None:
            output = self._conv(base_model, context, hidden_states, output)
        return output

    def run_layer_active(self, base_model, index, hidden_states, context, active):
        if index == 0 and base_model.encoder.conv is not None:
            # the convolution mixes neighbouring positions: run the layer on the active queries, then the convolution
            # on the whole row (inactive positions keep their input states as its residual), and keep the active ones
            queries = active if isinstance(active, ActiveQueries) else self.active_queries(context, active)
            updated = super().run_layer_active(base_model, index, hidden_states, context, queries)
            convolved = self._conv(base_model, context, hidden_states, updated)
            return torch.where(queries.active.unsqueeze(-1), convolved, hidden_states)
        return super().run_layer_active(base_model, index, hidden_states, context, active)

    def _query_masks(self, context, queries):
        # DeBERTa's own attention for any attention implementation: a key mask broadcast over the packed queries
        queries.masks[FULL_ATTENTION] = context.attention_mask.bool()[:, None, None, :]
        if getattr(context.config, "relative_attention", False):
            queries.relative_pos = self._relative(context.config, queries.query_columns, context.columns)

    def _active_layer(self, layer, index, hidden_states, flat_states, context, queries):
        attention = layer.attention.self
        head_dim = attention.attention_head_size
        queries_in = flat_states.index_select(0, queries.positions)
        query = split_heads(queries.pack(attention.query_proj(queries_in)), head_dim)
        key = split_heads(attention.key_proj(hidden_states), head_dim)
        value = split_heads(attention.value_proj(hidden_states), head_dim)

        scale_factor = 1 + ("c2p" in attention.pos_att_type) + ("p2c" in attention.pos_att_type)
        scale = scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)
        scores = torch.matmul(query, key.transpose(-1, -2) / scale)
        if attention.relative_attention:
            scores = scores + self._disentangled_bias(attention, query, key, context, queries, scale)

        scores = scores.masked_fill(~queries.masks[FULL_ATTENTION], torch.finfo(query.dtype).min)
        probs = attention.dropout(nn.functional.softmax(scores, dim=-1))
        if queries.keep_attentions:
            queries.attention_probs = probs
        attention_context = torch.matmul(probs, value).transpose(1, 2).reshape(query.shape[0], query.shape[2], -1)
        attention_output = layer.attention.output(queries.unpack(attention_context), queries_in)
        return layer.output(layer.intermediate(attention_output), attention_output)

    def _disentangled_bias(self, attention, query, key, context, queries, scale) -> torch.Tensor:
        """`c2p` and `p2c` scores `(batch, heads, num_queries, seq)` as `DisentangledSelfAttention` computes them,
        for packed queries at their original columns."""
        heads = attention.num_attention_heads
        span = attention.pos_ebd_size
        rel_embeddings = attention.pos_dropout(context.rel_embeddings)[: span * 2].unsqueeze(0)

        def project(linear):  # (1, 2 * span, d) -> (1, heads, 2 * span, head_dim)
            return split_heads(linear(rel_embeddings), attention.attention_head_size)

        if attention.share_att_key:
            pos_query, pos_key = project(attention.query_proj), project(attention.key_proj)
        else:
            pos_key = project(attention.pos_key_proj) if "c2p" in attention.pos_att_type else None
            pos_query = project(attention.pos_query_proj) if "p2c" in attention.pos_att_type else None
        # `make_log_bucket_position` is odd, so the index `span - relative(key, query)` that DeBERTa's p2c gather reads
        # for (query, key) equals the c2p index `relative(query, key) + span`
        index = torch.clamp(queries.relative_pos + span, 0, span * 2 - 1).unsqueeze(1)
        batch_size, num_queries, seq_len = queries.relative_pos.shape
        score = 0
        if "c2p" in attention.pos_att_type:
            c2p = torch.matmul(query, pos_key.transpose(-1, -2))
            c2p = torch.gather(c2p, dim=-1, index=index.expand(batch_size, heads, num_queries, seq_len))
            score = score + c2p / scale
        if "p2c" in attention.pos_att_type:
            p2c = torch.matmul(key, pos_query.transpose(-1, -2))  # (batch, heads, seq, 2 * span)
            p2c = torch.gather(
                p2c, dim=-1, index=index.transpose(-1, -2).expand(batch_size, heads, seq_len, num_queries)
            ).transpose(-1, -2)
            score = score + p2c / scale
        return score

    def layer_flops(self, config, num_positions, num_queries=None, layer_index=0):
        """BERT's terms, plus with relative attention `c2p` `4 q S d` and `p2c` `4 n S d` (`2S` relative embedding
        rows, `S = position_buckets`, or `max_relative_positions` without buckets), plus after layer 0 the convolution
        `2 n d^2 k / groups` (`k = conv_kernel_size`, run on all `n` positions)."""
        flops = super().layer_flops(config, num_positions, num_queries, layer_index)
        n = num_positions
        q = n if num_queries is None else num_queries
        d = config.hidden_size
        if getattr(config, "relative_attention", False):
            span = self._span(config)
            pos_att_type = config.pos_att_type or []
            if "c2p" in pos_att_type:
                flops = flops + 4 * q * span * d
            if "p2c" in pos_att_type:
                flops = flops + 4 * n * span * d
        kernel = getattr(config, "conv_kernel_size", 0)
        if layer_index == 0 and kernel > 0:
            flops = flops + 2 * n * d * (d // getattr(config, "conv_groups", 1)) * kernel
        return flops

    def batch_layer_flops(self, config, layer_index=0):
        """The projections of the `2S` relative embeddings: `4 S d^2` each, two with `share_att_key` (query and key
        projections), else one per `c2p` / `p2c`."""
        if not getattr(config, "relative_attention", False):
            return 0
        pos_att_type = config.pos_att_type or []
        projections = (
            2 if getattr(config, "share_att_key", False) else ("c2p" in pos_att_type) + ("p2c" in pos_att_type)
        )
        return projections * 4 * self._span(config) * config.hidden_size**2

    def _span(self, config) -> int:
        buckets, max_relative_positions = self._position_settings(config)
        return buckets if buckets > 0 else max_relative_positions


__all__ = ["DebertaV2Backbone"]
