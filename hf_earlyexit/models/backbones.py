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
"""The backbone layer: what the early-exit loops need from each supported encoder architecture, behind one interface.

An early-exit loop embeds a batch, runs the encoder layers one at a time, and between layers may drop examples that
exited (rows) and the positions that became padding in every remaining example (columns); token exit also runs layers
in which only some positions are queries. Each architecture embeds, masks and positions its tokens differently; an
[`EncoderBackbone`] hides that:

```python
backbone = backbone_for(model.config)
hidden_states, attention_mask, context = backbone.embed(model, input_ids, attention_mask)
for index in range(backbone.num_layers(model)):
    hidden_states = backbone.run_layer(model, index, hidden_states, context)
    ...  # some examples exit: keep the others, drop the columns that are now padding everywhere
    rows = stay.nonzero().squeeze(-1)
    columns = context.attention_mask[rows].bool().any(dim=0).nonzero().squeeze(-1)
    hidden_states, context = hidden_states[rows][:, columns], backbone.compact(context, rows, columns)
states = backbone.finalize(model, hidden_states)  # what the architecture's heads read (ModernBERT's final norm)
```

`model` is always the architecture's base model (`BertModel`, `RobertaModel`, ..., `ModernBertModel`), built with
[`EncoderBackbone.build_base_model`] (no pooler) or taken from a task model as `getattr(task_model,
backbone.base_model_prefix)`.

Positions after compaction are those of the original columns: a [`LayerContext`] keeps the original column of every
current column, and everything positional (DeBERTa's relative positions, ModernBERT's rotary embeddings and sliding
window) is taken from it, so dropping a column never shifts the remaining tokens. Absolute position embeddings (BERT,
RoBERTa, XLM-R, ELECTRA, DistilBERT) are added once at embedding time and travel with the hidden states.

Shipped with `trust_remote_code` checkpoints: imports only torch and transformers.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_bidirectional_sliding_window_mask,
    find_packed_sequence_indices,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward as bert_eager_attention
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position, scaled_size_sqrt
from transformers.models.modernbert.modeling_modernbert import eager_attention_forward as modernbert_eager_attention
from transformers.models.modernbert.modeling_modernbert import rotate_half
from transformers.pytorch_utils import apply_chunking_to_forward


FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"

# attention implementations whose masks fit packed queries against all keys (a rectangular padding mask)
PACKED_ATTENTION: tuple[str, ...] = ("eager", "sdpa")


@dataclass
class LayerContext:
    """What the encoder layers need besides the hidden states, for the current (possibly compacted) batch.

    Built by [`EncoderBackbone.embed`], shrunk by [`EncoderBackbone.compact`]; never mutated.

    Attributes:
        config: The base model's config (attention implementation, sizes).
        attention_mask: `(batch, seq)`, 1 for real tokens.
        columns: `(seq,)` long, the original column of each current column (`arange(seq)` before any compaction).
        masks: The attention mask of each attention kind (`"full_attention"`, ModernBERT's `"sliding_attention"`) in
            the form the layers expect for the attention implementation; `None` where nothing is masked.
        dtype: The dtype of the hidden states (the additive eager masks are built in it).
        position_embeddings: ModernBERT only: rotary `(cos, sin)` per attention kind, each `(1 or batch, seq,
            head_dim)`, computed from the original positions.
        relative_pos: DeBERTa-v2 only: `(seq, seq)` bucketed relative positions of the original columns.
        rel_embeddings: DeBERTa-v2 only: the (normalised) relative position embeddings, `(2 * span, hidden)`.
    """

    config: PreTrainedConfig
    attention_mask: torch.Tensor
    columns: torch.Tensor
    masks: dict[str, Any]
    dtype: torch.dtype
    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    relative_pos: torch.Tensor | None = None
    rel_embeddings: torch.Tensor | None = None


@dataclass
class ActiveQueries:
    """Where the active positions of a batch are, and where they go when packed per example.

    Built by [`EncoderBackbone.active_queries`] once per change of the active set; every layer until the next change
    reuses it.

    Attributes:
        active: `(batch, seq)` bool, the positions that are queries.
        positions: `(N,)` flat index `row * seq + column` of each active position, in reading order.
        packed: `(N,)` flat index `row * num_queries + rank` of each in the packed `(batch, num_queries)` layout.
        num_queries: Largest number of active positions in a row.
        query_columns: `(batch, num_queries)` original column of each packed query (a real column of the row for the
            packing slots that hold no query).
        masks: Attention mask between packed queries and all keys, per attention kind, `(batch, 1, num_queries, seq)`
            in the form the attention implementation expects, or `None` where nothing is masked.
        relative_pos: DeBERTa-v2 only: `(batch, num_queries, seq)` bucketed relative positions query -> key.
    """

    active: torch.Tensor
    positions: torch.Tensor
    packed: torch.Tensor
    num_queries: int
    query_columns: torch.Tensor
    masks: dict[str, Any]
    relative_pos: torch.Tensor | None = None

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """`(N, x)` values of the active positions -> `(batch, num_queries, x)`, zeros in the empty slots."""
        batch_size = self.active.shape[0]
        out = values.new_zeros(batch_size * self.num_queries, values.shape[-1])
        return out.index_copy_(0, self.packed, values).view(batch_size, self.num_queries, -1)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """`(batch, num_queries, ...)` -> `(N, x)`, the values of the active positions in reading order."""
        return packed.reshape(self.active.shape[0] * self.num_queries, -1).index_select(0, self.packed)


def _shape_only(attention_mask: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty `(batch, length, 0)` tensor: transformers' mask builders read only the shape, dtype and device of
    their `inputs_embeds`, and a compacted context has no hidden states at hand."""
    return torch.empty(attention_mask.shape[0], length, 0, dtype=dtype, device=attention_mask.device)


def _index(keep: torch.Tensor | None) -> torch.Tensor | None:
    if keep is None or keep.dtype != torch.bool:
        return keep
    return keep.nonzero().squeeze(-1)


def _is_contiguous(columns: torch.Tensor) -> bool:
    """Whether the original columns are one unbroken run (dropping only leading or trailing columns keeps every
    distance between the remaining positions)."""
    return columns.numel() == 0 or int(columns[-1] - columns[0]) == columns.numel() - 1


class EncoderBackbone:
    """How the early-exit loops embed, mask and run the layers of one encoder architecture.

    Subclasses set the class attributes and override the `_`-prefixed hooks; the public methods are the interface.

    Attributes:
        model_types: The `model_type`s this backbone serves.
        model_class_name: The transformers base model class (`"BertModel"`).
        layers_attribute: Dotted path of the `nn.ModuleList` of encoder layers in the base model (`"encoder.layer"`).
        base_model_kwargs: Constructor arguments that build the base model without a pooler, where it has one.
    """

    model_types: tuple[str, ...] = ()
    model_class_name: str = ""
    layers_attribute: str = "encoder.layer"
    base_model_kwargs: dict[str, Any] = {}
    eager_attention: Callable = staticmethod(bert_eager_attention)

    # --- the base model -------------------------------------------------------------------------------------------

    @property
    def model_class(self) -> type[PreTrainedModel]:
        """The transformers base model class."""
        return getattr(transformers, self.model_class_name)

    @property
    def base_model_prefix(self) -> str:
        """The attribute under which the architecture's task models hold the base model (checkpoint key prefix)."""
        return self.model_class.base_model_prefix

    def build_base_model(self, config: PreTrainedConfig) -> PreTrainedModel:
        """A freshly initialised base model for `config`, without a pooler where the architecture has one."""
        return self.model_class(config, **self.base_model_kwargs)

    def layers(self, base_model: nn.Module) -> nn.ModuleList:
        """The encoder layers of `base_model`."""
        module = base_model
        for name in self.layers_attribute.split("."):
            module = getattr(module, name)
        return module

    def num_layers(self, base_model: nn.Module) -> int:
        return len(self.layers(base_model))

    def dims(self, config: PreTrainedConfig) -> tuple[int, int]:
        """`(hidden_size, intermediate_size)` of the layers."""
        return config.hidden_size, config.intermediate_size

    # --- embedding ------------------------------------------------------------------------------------------------

    def embed(
        self,
        base_model: nn.Module,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, LayerContext]:
        """The embeddings that enter the first layer, as the base model computes them.

        Args:
            base_model: The architecture's base model.
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds: As for the base model's forward
                (exactly one of `input_ids` and `inputs_embeds`; the architecture's own rules for absent ids).

        Returns:
            `hidden_states` `(batch, seq, d)`, the 2D `attention_mask` (all ones when none was given) and the
            [`LayerContext`] of the batch.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if attention_mask is None:
            self._check_not_packed(position_ids, shape[0])
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        elif attention_mask.shape != shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but the inputs have shape {tuple(shape)}."
            )
        hidden_states = self._embeddings(
            base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
        columns = torch.arange(shape[1], device=device)
        context = LayerContext(
            config=base_model.config,
            attention_mask=attention_mask,
            columns=columns,
            masks={},
            dtype=hidden_states.dtype,
            **self._positional(base_model, hidden_states, position_ids),
        )
        return hidden_states, attention_mask, self._derive(context)

    def finalize(self, base_model: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """The states the architecture's heads read, from a layer's output (identity except for ModernBERT, whose
        base model ends with a LayerNorm). Apply it to the states of every exit."""
        return hidden_states

    # --- running layers -------------------------------------------------------------------------------------------

    def run_layer(
        self, base_model: nn.Module, index: int, hidden_states: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """Layer `index` (0-based) on the batch of `context`: `(batch, seq, d) -> (batch, seq, d)`."""
        raise NotImplementedError

    def active_queries(self, context: LayerContext, active: torch.Tensor) -> ActiveQueries:
        """The packing of the `active` `(batch, seq)` bool positions for [`run_layer_active`], reusable by every
        layer until the active set changes."""
        batch_size, seq_len = active.shape
        positions = active.reshape(-1).nonzero().squeeze(-1)
        rows = torch.div(positions, seq_len, rounding_mode="floor")
        ranks = active.long().cumsum(dim=1).reshape(-1).index_select(0, positions) - 1
        num_queries = int(active.sum(dim=1).max()) if positions.numel() else 0
        packed = rows * num_queries + ranks
        # empty packing slots get the row's first real column: under a sliding window they still see one key
        first_real = context.attention_mask.bool().long().argmax(dim=1)
        query_columns = context.columns.index_select(0, first_real).unsqueeze(1).repeat(1, num_queries)
        query_columns = query_columns.reshape(-1).index_copy(
            0, packed, context.columns.index_select(0, positions % seq_len)
        )
        queries = ActiveQueries(
            active=active,
            positions=positions,
            packed=packed,
            num_queries=num_queries,
            query_columns=query_columns.view(batch_size, num_queries),
            masks={},
        )
        if num_queries:
            self._query_masks(context, queries)
        return queries

    def run_layer_active(
        self,
        base_model: nn.Module,
        index: int,
        hidden_states: torch.Tensor,
        context: LayerContext,
        active: torch.Tensor | ActiveQueries,
    ) -> torch.Tensor:
        """Layer `index` with only the `active` positions as queries.

        The query projection, the attention-output projection and the feed-forward block run on the active positions
        only (gathered, no padding); keys and values are computed from every position; the attention runs per example
        on its active queries, packed to the largest active count in the batch. With every real position active it
        equals [`run_layer`] at the real positions (which then does the same work without the gathers: prefer it when
        nothing is frozen and nothing is padding).

        Args:
            active: `(batch, seq)` bool (a subset of the real positions), or its [`ActiveQueries`].

        Returns:
            `(batch, seq, d)`: new states at the active positions, the input states (the same tensors' values)
            elsewhere.
        """
        queries = active if isinstance(active, ActiveQueries) else self.active_queries(context, active)
        if not queries.num_queries:
            return hidden_states
        layer = self.layers(base_model)[index]
        batch_size, seq_len, hidden_size = hidden_states.shape
        flat_states = hidden_states.reshape(batch_size * seq_len, hidden_size)
        updated = self._active_layer(layer, index, hidden_states, flat_states, context, queries)
        return flat_states.index_copy(0, queries.positions, updated).view(batch_size, seq_len, hidden_size)

    def compact(
        self,
        context: LayerContext,
        keep_rows: torch.Tensor | None = None,
        keep_columns: torch.Tensor | None = None,
    ) -> LayerContext:
        """The context of the batch that keeps `keep_rows` and `keep_columns` (index tensors or bool masks over the
        current rows / columns; `None` keeps all). Slice the hidden states (and anything else of the batch) the same
        way, rows first.

        Dropping a column keeps the remaining tokens' positions: they are those of their original columns.
        """
        rows, columns = _index(keep_rows), _index(keep_columns)
        attention_mask, column_ids = context.attention_mask, context.columns
        position_embeddings = context.position_embeddings
        if rows is not None:
            attention_mask = attention_mask.index_select(0, rows)
            if position_embeddings is not None:
                position_embeddings = {
                    kind: tuple(t.index_select(0, rows) if t.shape[0] > 1 else t for t in pair)
                    for kind, pair in position_embeddings.items()
                }
        if columns is not None:
            attention_mask = attention_mask.index_select(1, columns)
            column_ids = column_ids.index_select(0, columns)
            if position_embeddings is not None:
                position_embeddings = {
                    kind: tuple(t.index_select(1, columns) for t in pair) for kind, pair in position_embeddings.items()
                }
        return self._derive(
            replace(
                context, attention_mask=attention_mask, columns=column_ids, position_embeddings=position_embeddings
            )
        )

    # --- cost model -----------------------------------------------------------------------------------------------

    def layer_flops(
        self,
        config: PreTrainedConfig,
        num_positions: torch.Tensor | int,
        num_queries: torch.Tensor | int | None = None,
        layer_index: int = 0,
    ) -> torch.Tensor | int:
        """FLOPs of layer `layer_index` for one sequence of `n` positions of which `q` are queries (default `q = n`).

        BERT-like layers (hidden `d`, intermediate `f`): K and V projections `4nd^2`, Q and attention-output
        projections `4qd^2`, scores and context `4qnd`, feed-forward `4qdf`. Architectures with other layers override
        it; work a layer does once per call for the whole batch is in [`batch_layer_flops`].
        """
        d, f = self.dims(config)
        n = num_positions
        q = n if num_queries is None else num_queries
        return 4 * n * d * d + 4 * q * d * d + 4 * q * n * d + 4 * q * d * f

    def batch_layer_flops(self, config: PreTrainedConfig, layer_index: int = 0) -> int:
        """FLOPs layer `layer_index` spends once per call, whatever the batch (DeBERTa-v2's projections of the relative
        position embeddings; 0 elsewhere). A sequence run alone costs `layer_flops + batch_layer_flops`."""
        return 0

    # --- hooks ----------------------------------------------------------------------------------------------------

    # whether the base model passes `position_ids` to `create_bidirectional_mask` (packed-sequence detection)
    _detects_packing = False

    def _check_not_packed(self, position_ids: torch.Tensor | None, batch_size: int) -> None:
        """BERT-like base models read restarting `position_ids` without an attention mask as several sequences packed
        in a row; the layer loop has one sequence per row."""
        if position_ids is None or not self._detects_packing:
            return
        if find_packed_sequence_indices(position_ids.expand(batch_size, -1)) is not None:
            raise ValueError(
                "`position_ids` restart within a row and no `attention_mask` was given: the base model would read the "
                "rows as packed sequences, which the early-exit layer loop does not support. Pass an `attention_mask`."
            )

    def _embeddings(self, base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        raise NotImplementedError

    def _positional(self, base_model, hidden_states, position_ids) -> dict[str, Any]:
        """Extra [`LayerContext`] fields computed at embedding time."""
        return {}

    def _derive(self, context: LayerContext) -> LayerContext:
        """Fill in what follows from the batch's attention mask and columns (the layer masks)."""
        context.masks = self._masks(context)
        return context

    def _masks(self, context: LayerContext) -> dict[str, Any]:
        seq_len = context.attention_mask.shape[1]
        mask = create_bidirectional_mask(
            config=context.config,
            inputs_embeds=_shape_only(context.attention_mask, seq_len, context.dtype),
            attention_mask=context.attention_mask,
        )
        return {FULL_ATTENTION: mask}

    def _require_packed_attention(self, config: PreTrainedConfig) -> None:
        if config._attn_implementation not in PACKED_ATTENTION:
            raise ValueError(
                f"`run_layer_active` packs the active queries against all keys, which the {PACKED_ATTENTION} attention "
                f"implementations support; this model uses {config._attn_implementation!r}. Call "
                "`model.set_attn_implementation('sdpa')`."
            )

    def _query_masks(self, context: LayerContext, queries: ActiveQueries) -> None:
        self._require_packed_attention(context.config)
        queries.masks[FULL_ATTENTION] = self._rectangular_mask(context, queries)

    def _rectangular_mask(self, context: LayerContext, queries: ActiveQueries, and_mask_function=None):
        """The `(batch, 1, num_queries, seq)` padding mask between packed queries and all keys (as for
        cross-attention), optionally intersected with `and_mask_function`."""
        seq_len = context.attention_mask.shape[1]
        return create_bidirectional_mask(
            config=context.config,
            inputs_embeds=_shape_only(context.attention_mask, queries.num_queries, context.dtype),
            attention_mask=context.attention_mask,
            encoder_hidden_states=_shape_only(context.attention_mask, seq_len, context.dtype),
            and_mask_function=and_mask_function,
        )

    def _active_layer(self, layer, index, hidden_states, flat_states, context, queries) -> torch.Tensor:
        """The new `(N, d)` states of the active positions."""
        raise NotImplementedError

    def _packed_attention(self, module, query, key, value, mask, scaling, dropout, **kwargs) -> torch.Tensor:
        """The architecture's attention function on packed queries; returns `(batch, num_queries, heads * head_dim)`."""
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, self.eager_attention)
        context, _ = interface(
            module,
            query,
            key,
            value,
            mask,
            dropout=dropout if module.training else 0.0,
            scaling=scaling,
            **kwargs,
        )
        return context.reshape(query.shape[0], query.shape[2], -1)


def _split_heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """`(batch, length, heads * head_dim) -> (batch, heads, length, head_dim)`."""
    return states.view(*states.shape[:2], -1, head_dim).transpose(1, 2)


class BertBackbone(EncoderBackbone):
    """BERT and its copies with the same layer: RoBERTa and XLM-RoBERTa (position ids from the padding, which makes
    left padding harmless), ELECTRA (plus a projection when `embedding_size != hidden_size`)."""

    _detects_packing = True

    def __init__(self, model_type: str, model_class_name: str, base_model_kwargs: dict[str, Any]):
        self.model_types = (model_type,)
        self.model_class_name = model_class_name
        self.base_model_kwargs = base_model_kwargs

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
        return apply_chunking_to_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, 0, attention_output)

    def _active_layer(self, layer, index, hidden_states, flat_states, context, queries):
        attention, query_proj, key_proj, value_proj = self._projections(layer)
        head_dim = attention.attention_head_size
        key = _split_heads(key_proj(hidden_states), head_dim)
        value = _split_heads(value_proj(hidden_states), head_dim)
        queries_in = flat_states.index_select(0, queries.positions)
        query = _split_heads(queries.pack(query_proj(queries_in)), head_dim)
        attention_context = self._packed_attention(
            attention,
            query,
            key,
            value,
            queries.masks[FULL_ATTENTION],
            scaling=attention.scaling,
            dropout=attention.dropout.p,
        )
        return self._after_attention(layer, queries.unpack(attention_context), queries_in)


class DistilBertBackbone(BertBackbone):
    """DistilBERT: BERT's layer with other module names (`transformer.layer`, `q_lin`, `sa_layer_norm`, `ffn`), no
    token types, no pooler, `dim` / `hidden_dim` for the sizes."""

    layers_attribute = "transformer.layer"
    _detects_packing = False  # DistilBertModel never passes position ids to its mask

    def __init__(self):
        super().__init__("distilbert", "DistilBertModel", {})

    def dims(self, config):
        return config.dim, config.hidden_dim

    def _embeddings(self, base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        if token_type_ids is not None:
            raise ValueError("DistilBERT has no token type embeddings: pass `token_type_ids=None`.")
        return base_model.embeddings(input_ids, inputs_embeds, position_ids)

    def _projections(self, layer):
        attention = layer.attention
        return attention, attention.q_lin, attention.k_lin, attention.v_lin

    def _after_attention(self, layer, attention_context, residual):
        attention_output = layer.sa_layer_norm(layer.attention.out_lin(attention_context) + residual)
        ffn = layer.ffn
        ffn_output = apply_chunking_to_forward(ffn.ff_chunk, ffn.chunk_size_feed_forward, 0, attention_output)
        return layer.output_layer_norm(ffn_output + attention_output)


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
        if _is_contiguous(columns):
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
        query = _split_heads(queries.pack(attention.query_proj(queries_in)), head_dim)
        key = _split_heads(attention.key_proj(hidden_states), head_dim)
        value = _split_heads(attention.value_proj(hidden_states), head_dim)

        scale_factor = 1 + ("c2p" in attention.pos_att_type) + ("p2c" in attention.pos_att_type)
        scale = scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)
        scores = torch.matmul(query, key.transpose(-1, -2) / scale)
        if attention.relative_attention:
            scores = scores + self._disentangled_bias(attention, query, key, context, queries, scale)

        scores = scores.masked_fill(~queries.masks[FULL_ATTENTION], torch.finfo(query.dtype).min)
        probs = attention.dropout(nn.functional.softmax(scores, dim=-1))
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
            return _split_heads(linear(rel_embeddings), attention.attention_head_size)

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
    eager_attention = staticmethod(modernbert_eager_attention)

    def _embeddings(self, base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        if token_type_ids is not None:
            raise ValueError("ModernBERT has no token type embeddings: pass `token_type_ids=None`.")
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
            "inputs_embeds": _shape_only(context.attention_mask, seq_len, context.dtype),
            "attention_mask": context.attention_mask,
        }
        masks = {FULL_ATTENTION: create_bidirectional_mask(**mask_kwargs)}
        if SLIDING_ATTENTION in config.layer_types:
            if _is_contiguous(context.columns):
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
        query = _split_heads(queries.pack(query), head_dim)
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


_BACKBONES: tuple[EncoderBackbone, ...] = (
    BertBackbone("bert", "BertModel", {"add_pooling_layer": False}),
    BertBackbone("roberta", "RobertaModel", {"add_pooling_layer": False}),
    BertBackbone("xlm-roberta", "XLMRobertaModel", {"add_pooling_layer": False}),
    BertBackbone("electra", "ElectraModel", {}),
    DistilBertBackbone(),
    DebertaV2Backbone(),
    ModernBertBackbone(),
)
BACKBONES: dict[str, EncoderBackbone] = {
    model_type: backbone for backbone in _BACKBONES for model_type in backbone.model_types
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(BACKBONES)


def backbone_for(config_or_model: PreTrainedConfig | PreTrainedModel | str) -> EncoderBackbone:
    """The [`EncoderBackbone`] of a config, a model or a `model_type`.

    A config whose own `model_type` is not supported is matched by the classes it derives from, so a family config
    built on `BertConfig` (`model_type="bypass-bert"`) gets BERT's backbone.

    Raises:
        ValueError: for an architecture without a backbone, listing the supported model types.

    Example:

    ```python
    >>> from transformers import AutoConfig
    >>> backbone_for(AutoConfig.for_model("xlm-roberta")).model_class_name
    'XLMRobertaModel'
    >>> backbone_for("gpt2")
    Traceback (most recent call last):
    ValueError: No early-exit backbone for model_type 'gpt2'. Supported model types: bert, roberta, xlm-roberta, electra, distilbert, deberta-v2, modernbert.
    ```
    """
    config = getattr(config_or_model, "config", config_or_model)
    if isinstance(config, str):
        candidates = [config]
    else:
        candidates = [getattr(config, "model_type", None)]
        candidates += [getattr(cls, "model_type", None) for cls in type(config).__mro__]
    for model_type in candidates:
        if model_type in BACKBONES:
            return BACKBONES[model_type]
    raise ValueError(
        f"No early-exit backbone for model_type {candidates[0]!r}. Supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}."
    )


__all__ = [
    "ActiveQueries",
    "BACKBONES",
    "BertBackbone",
    "DebertaV2Backbone",
    "DistilBertBackbone",
    "EncoderBackbone",
    "LayerContext",
    "ModernBertBackbone",
    "SUPPORTED_MODEL_TYPES",
    "backbone_for",
]
