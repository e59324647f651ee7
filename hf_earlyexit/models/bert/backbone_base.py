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
"""The interface every encoder architecture implements for the early-exit loops ([`EncoderBackbone`]), the per-batch
state the layers need ([`LayerContext`], [`ActiveQueries`]) and the helpers the architectures share.

Shipped with `trust_remote_code` checkpoints: imports only torch and transformers.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask, find_packed_sequence_indices
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward as bert_eager_attention


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
        output_attentions: The layers compute their attention probabilities (for an output that records them; only
            DeBERTa-v2 needs to be told).
    """

    config: PreTrainedConfig
    attention_mask: torch.Tensor
    columns: torch.Tensor
    masks: dict[str, Any]
    dtype: torch.dtype
    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    relative_pos: torch.Tensor | None = None
    rel_embeddings: torch.Tensor | None = None
    output_attentions: bool = False


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
        keep_attentions: Set it to have [`EncoderBackbone.run_layer_active`] leave the attention probabilities of the
            packed queries, `(batch, heads, num_queries, seq)`, in `attention_probs` (eager attention only).
    """

    active: torch.Tensor
    positions: torch.Tensor
    packed: torch.Tensor
    num_queries: int
    query_columns: torch.Tensor
    masks: dict[str, Any]
    relative_pos: torch.Tensor | None = None
    keep_attentions: bool = False
    attention_probs: torch.Tensor | None = None

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """`(N, x)` values of the active positions -> `(batch, num_queries, x)`, zeros in the empty slots."""
        batch_size = self.active.shape[0]
        if batch_size == 1:  # one row: the active positions fill its slots in order
            return values.unsqueeze(0)
        out = values.new_zeros(batch_size * self.num_queries, values.shape[-1])
        return out.index_copy_(0, self.packed, values).view(batch_size, self.num_queries, -1)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """`(batch, num_queries, ...)` -> `(N, x)`, the values of the active positions in reading order."""
        if self.active.shape[0] == 1:
            return packed.reshape(self.num_queries, -1)
        return packed.reshape(self.active.shape[0] * self.num_queries, -1).index_select(0, self.packed)


def shape_only(attention_mask: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty `(batch, length, 0)` tensor: transformers' mask builders read only the shape, dtype and device of
    their `inputs_embeds`, and a compacted context has no hidden states at hand."""
    return torch.empty(attention_mask.shape[0], length, 0, dtype=dtype, device=attention_mask.device)


@dataclass(frozen=True)
class HeadStyle:
    """What an architecture's own classification head does between the pooled (or per-token) state and the classifier:
    a dense layer, an activation, optionally a LayerNorm. The exit heads with `"pooler"` pooling follow it, so that the
    last exit of a full-depth run computes exactly what the architecture's `...ForSequenceClassification` computes.

    Attributes:
        activation: Name in transformers' `ACT2FN` (`"tanh"` for BERT's pooler, `"gelu"` for ELECTRA, ...).
        pooling: Which state the sequence head reads: `"cls"` (the first token) or `"mean"` (over real tokens;
            ModernBERT's `classifier_pooling="mean"`).
        dense_bias: Whether the dense layer has a bias (ModernBERT's `classifier_bias`).
        norm_eps: A LayerNorm after the activation with this epsilon (ModernBERT), or `None`.
        norm_bias: Whether that LayerNorm has a bias (ModernBERT's `norm_bias`).
    """

    activation: str = "tanh"
    pooling: str = "cls"
    dense_bias: bool = True
    norm_eps: float | None = None
    norm_bias: bool = True


def _index(keep: torch.Tensor | None) -> torch.Tensor | None:
    if keep is None or keep.dtype != torch.bool:
        return keep
    return keep.nonzero().squeeze(-1)


def is_contiguous(columns: torch.Tensor) -> bool:
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

    # whether the embeddings take `token_type_ids` (DistilBERT's and ModernBERT's do not)
    takes_token_type_ids: bool = True
    # whether position ids count from the padding (RoBERTa, XLM-R) rather than by column
    positions_after_padding: bool = False

    def max_positions(self, config: PreTrainedConfig) -> int:
        """The most tokens a sequence may have."""
        return config.max_position_embeddings

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
        if attention_mask is not None and attention_mask.shape != shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but the inputs have shape {tuple(shape)}."
            )
        given_mask = attention_mask is not None
        if not given_mask:
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        if token_type_ids is not None and not self.takes_token_type_ids:
            raise ValueError(
                f"{self.model_class_name.removesuffix('Model')} has no token type embeddings: pass "
                "`token_type_ids=None`."
            )
        # embedding first: ids outside the embeddings fail there, before what the ids mean is looked at
        hidden_states = self._embeddings(
            base_model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
        if not given_mask:
            self._check_not_packed(position_ids, shape[0])
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

    def plain_context(
        self, config: PreTrainedConfig, attention_mask: torch.Tensor, dtype: torch.dtype
    ) -> LayerContext:
        """The context of a batch of given states with `attention_mask` `(batch, seq)`, for running one layer on them
        outside a forward: for architectures whose layers need no positional state (BERT-like ones)."""
        columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        context = LayerContext(config=config, attention_mask=attention_mask, columns=columns, masks={}, dtype=dtype)
        return self._derive(context)

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

    # --- the architecture's task models and heads ------------------------------------------------------------------

    # where the architecture's `...ForSequenceClassification` keeps what an exit head with `"pooler"` pooling holds:
    # head submodule -> submodule of the stock model (BERT's pooler sits in the base model)
    stock_sequence_head: dict[str, str] = {"pooler": "bert.pooler.dense", "classifier": "classifier"}
    # the same for the token head of `...ForTokenClassification` (`""`: the head is the classifier itself)
    stock_token_head: dict[str, str] = {"": "classifier"}

    def task_model_class(self, task: str) -> type[PreTrainedModel]:
        """The architecture's own task model: `task` is `"sequence"` (`...ForSequenceClassification`) or `"token"`
        (`...ForTokenClassification`)."""
        suffix = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}[task]
        return getattr(transformers, self.model_class_name.removesuffix("Model") + suffix)

    def sequence_head_style(self, config: PreTrainedConfig) -> HeadStyle:
        """What the architecture's sequence-classification head does to the pooled state (BERT: dense + tanh)."""
        return HeadStyle()

    def token_head_style(self, config: PreTrainedConfig) -> HeadStyle | None:
        """What the architecture's token-classification head does to each state before the classifier; `None` for a
        classifier alone (every architecture here but ModernBERT)."""
        return None

    def classifier_dropout(self, config: PreTrainedConfig) -> float:
        """The dropout the architecture's classification heads apply."""
        for name in ("classifier_dropout", "hidden_dropout_prob"):
            value = getattr(config, name, None)
            if value is not None:
                return value
        return 0.1

    def attention_module(self, layer: nn.Module) -> nn.Module:
        """The self-attention module of a layer, whose forward returns `(context, attention probabilities)`."""
        return layer.attention.self

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
        if bool(context.attention_mask.all()):
            # no padding: full attention needs no mask under any implementation (and building one through
            # transformers' mask utilities costs more than a small layer at batch size 1)
            return {FULL_ATTENTION: None}
        seq_len = context.attention_mask.shape[1]
        mask = create_bidirectional_mask(
            config=context.config,
            inputs_embeds=shape_only(context.attention_mask, seq_len, context.dtype),
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
        cross-attention), optionally intersected with `and_mask_function`; `None` when it would mask nothing (no
        padding, no `and_mask_function`)."""
        if and_mask_function is None and bool(context.attention_mask.all()):
            return None
        seq_len = context.attention_mask.shape[1]
        return create_bidirectional_mask(
            config=context.config,
            inputs_embeds=shape_only(context.attention_mask, queries.num_queries, context.dtype),
            attention_mask=context.attention_mask,
            encoder_hidden_states=shape_only(context.attention_mask, seq_len, context.dtype),
            and_mask_function=and_mask_function,
        )

    def _active_layer(self, layer, index, hidden_states, flat_states, context, queries) -> torch.Tensor:
        """The new `(N, d)` states of the active positions."""
        raise NotImplementedError

    def _packed_attention(
        self, module, query, key, value, mask, scaling, dropout, queries: ActiveQueries | None = None, **kwargs
    ) -> torch.Tensor:
        """The architecture's attention function on packed queries; returns `(batch, num_queries, heads * head_dim)`
        (and leaves the probabilities in `queries` when it keeps them)."""
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, self.eager_attention)
        context, weights = interface(
            module,
            query,
            key,
            value,
            mask,
            dropout=dropout if module.training else 0.0,
            scaling=scaling,
            **kwargs,
        )
        if queries is not None and queries.keep_attentions:
            queries.attention_probs = weights
        return context.reshape(query.shape[0], query.shape[2], -1)


def split_heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """`(batch, length, heads * head_dim) -> (batch, heads, length, head_dim)`."""
    return states.view(*states.shape[:2], -1, head_dim).transpose(1, 2)


__all__ = [
    "FULL_ATTENTION",
    "PACKED_ATTENTION",
    "SLIDING_ATTENTION",
    "ActiveQueries",
    "EncoderBackbone",
    "HeadStyle",
    "LayerContext",
    "is_contiguous",
    "shape_only",
    "split_heads",
]
