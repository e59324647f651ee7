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
"""What an early-exit loop keeps track of while examples leave its batch: which examples of the caller's batch are
still running ([`ActiveBatch`]), and the hidden states and attention maps it records for them ([`LayerOutputs`]).

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import threading
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.utils import logging

from .exit_utils import kept_columns


logger = logging.get_logger(__name__)

# the layer loop's context when nothing is recorded: one shared instance, so that the loop at batch size 1 pays no
# generator-based context manager
_NOT_RECORDING = nullcontext()


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
    def capture(self, attention_modules: list[nn.Module]):
        """Keeps the attention probabilities that the self-attention modules of the layers (`attention_modules`, one
        per layer, each returning `(context, probabilities)`) compute, which are not part of a layer's output, for this
        thread's calls only, while the block runs."""
        if self.attentions is None:
            yield
            return
        owner = threading.get_ident()

        def hook(module, args, output):
            if threading.get_ident() == owner and isinstance(output, tuple) and output[1] is not None:
                self._captured.append(output[1])

        handles = [module.register_forward_hook(hook) for module in attention_modules]
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


# --------------------------------------------------------------------------------------------------------------------
# The examples still running
# --------------------------------------------------------------------------------------------------------------------


class ActiveBatch:
    """The examples (rows) of a caller's batch that an early-exit loop still runs, and how its compacted batch maps
    back to the caller's.

    Every early-exit path (the multi-exit layer loop, the cascade's routing, token exit) works the same way: after an
    exit decision, the rows that answered write their results into full-batch outputs ([`scatter`]) and leave
    ([`drop_rows`]); then the sequence positions that became padding in every remaining row are dropped
    ([`drop_padding_columns`]), so that the next layers run on smaller tensors. The loop's own tensors stay in the
    loop and go through these methods, which slice them all alike; this object keeps only the maps: `rows`, the
    caller's row of each current row, and `columns`, the caller's column of each current column.

    While `outputs` records hidden states or attention maps, every column is kept (the recorded tensors need no
    column map; see [`LayerOutputs`]), and [`record_layer`] writes each layer's tensors at the rows that ran it.

    Args:
        batch_size: Rows of the caller's batch.
        seq_len: Columns of the caller's batch.
        device: Where the index tensors live.
        outputs: The call's [`LayerOutputs`], or `None` when nothing is recorded.
        example_thresholds: The exit rule has one threshold per example: its decisions need [`threshold_rows`].

    Example (the shape of every loop; `fires` is the rule's decision for the current rows):

    ```python
    >>> batch = ActiveBatch(batch_size, seq_len, device, outputs, rule.example_thresholds is not None)
    >>> if bool(fires.any()):
    ...     batch.scatter(fires, (out_logits, logits), (exit_index, k))
    ...     kept = batch.drop_rows(~fires, hidden_states, attention_mask)
    ...     if kept is None:  # every example answered
    ...         break
    ...     hidden_states, attention_mask = kept
    ...     attention_mask, hidden_states = batch.drop_padding_columns(attention_mask, hidden_states)
    ```
    """

    def __init__(
        self,
        batch_size: int,
        seq_len: int,
        device: torch.device,
        outputs: LayerOutputs | None = None,
        example_thresholds: bool = False,
    ):
        self.rows = torch.arange(batch_size, device=device)
        self.seq_len = seq_len
        self.outputs = outputs
        self._columns: torch.Tensor | None = None  # None: every column of the caller's batch, in order
        self._shrunk = False  # some rows have left
        self._example_thresholds = example_thresholds
        self._layers_recorded = 0

    @property
    def columns(self) -> torch.Tensor:
        """`(current_seq,)` the caller's column of each current column."""
        if self._columns is None:
            return torch.arange(self.seq_len, device=self.rows.device)
        return self._columns

    @property
    def is_whole(self) -> bool:
        """No row has left yet: the current rows are the caller's batch, in order."""
        return not self._shrunk

    @property
    def recorded_rows(self) -> torch.Tensor | None:
        """The rows [`LayerOutputs`] writes the current tensors at: `None` while every row runs (the tensors are the
        whole batch's), else `rows`."""
        return self.rows if self._shrunk else None

    @property
    def threshold_rows(self) -> torch.Tensor | None:
        """What an exit rule with one threshold per example needs to pick those of the current rows (the `rows`
        argument of `ExitRule.step` and `ActiveWords.decide`): `rows`, or `None` without per-example thresholds."""
        return self.rows if self._example_thresholds else None

    def scatter(self, where: torch.Tensor | None, *outputs: tuple[torch.Tensor, torch.Tensor | int]) -> None:
        """Writes results of the current rows into full-batch outputs: for each `(out, value)`,
        `out[caller's rows] = value`.

        Args:
            where: `(current_rows,)` bool, the rows to write (those that answer now); `None`: every current row.
            outputs: Pairs of a full-batch output (dimension 0 is the caller's batch) and the value to write: a tensor
                with one entry per current row, or a number written at every selected row. A value of another dtype
                (bf16 logits of a head under autocast) is cast to the output's.
        """
        rows = self.rows if where is None else self.rows[where]
        for out, value in outputs:
            if isinstance(value, torch.Tensor):
                value = value.to(out.dtype) if where is None else value[where].to(out.dtype)
            out[rows] = value

    def drop_rows(self, stay: torch.Tensor, *tensors: torch.Tensor | None) -> tuple | None:
        """Keeps the rows where `stay` (`(current_rows,)` bool) is true: updates `rows` and returns `tensors` (dimension
        0 the current rows, `None` passes through) with those rows only; `None` when no row stays (the tensors are
        then not sliced: the loop ends)."""
        rows = self.rows[stay]
        self.rows = rows
        self._shrunk = True
        if rows.numel() == 0:
            return None
        return tuple(None if tensor is None else tensor[stay] for tensor in tensors)

    def padding_columns(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The current columns that are a real token in some row of `attention_mask` (the current rows), as an index
        tensor, when some are padding in every row, and `columns` follows; `None` when there is nothing to drop or
        while recording. The caller slices its tensors (and its layer context) with it."""
        if self.outputs is not None:
            return None
        kept = kept_columns(attention_mask)
        if kept is not None:
            self._columns = kept if self._columns is None else self._columns.index_select(0, kept)
        return kept

    def drop_padding_columns(self, attention_mask: torch.Tensor, *tensors: torch.Tensor | None) -> tuple:
        """`(attention_mask, *tensors)` without the columns that are padding in every current row (dimension 1 of each
        tensor is the sequence; `None` passes through), and `columns` follows. Attention masks those positions out, so
        dropping them changes no real position's output. Unchanged while recording."""
        kept = self.padding_columns(attention_mask)
        if kept is None:
            return (attention_mask, *tensors)
        return (attention_mask[:, kept], *(None if tensor is None else tensor[:, kept] for tensor in tensors))

    def position_ids(self, position_ids: torch.Tensor | None) -> torch.Tensor | None:
        """The position ids of the current columns for a model that embeds them after compaction (a cascade member):
        `position_ids` as the loop compacted them, or when it is `None` and columns were dropped, the caller's columns
        (BERT's default positions). With left padding, positions counted in the compacted batch would shift every
        token and make a row's answer depend on its batch-mates."""
        if position_ids is not None or self._columns is None:
            return position_ids
        return self._columns.expand(self.rows.shape[0], -1)

    def caller_positions(self, positions: torch.Tensor, position_rows: torch.Tensor, width: int) -> torch.Tensor:
        """Flat indices `row * seq_len + column` in the caller's `(batch, seq)` layout of the current flat positions
        `positions` (`row * width + column` in the current `(rows, width)` layout), whose rows are `position_rows`."""
        columns = positions - position_rows * width
        if self._columns is not None:
            columns = self._columns.index_select(0, columns)
        rows = self.rows.index_select(0, position_rows) if self._shrunk else position_rows
        return rows * self.seq_len + columns

    def recording(self, attention_modules: list[nn.Module], hidden_states: torch.Tensor):
        """A context manager that wraps the layer loop when `outputs` records: records the embeddings `hidden_states`,
        captures each layer's attention probabilities (from its self-attention module, one per layer in
        `attention_modules`) while the loop runs, and at its end adds zeros for the layers that no row ran. Nothing
        otherwise."""
        return _NOT_RECORDING if self.outputs is None else self._recording(attention_modules, hidden_states)

    @contextmanager
    def _recording(self, attention_modules: list[nn.Module], hidden_states: torch.Tensor):
        self.outputs.add_hidden_states(hidden_states)
        with self.outputs.capture(attention_modules):
            yield
        self.outputs.add_skipped_layers(len(attention_modules) - self._layers_recorded)

    def record_layer(self, hidden_states: torch.Tensor, captured_attentions: bool = True) -> None:
        """Records a layer's output `hidden_states` (the current rows and columns) and, with `captured_attentions`, the
        attention probabilities [`recording`] captured from it, at the rows that ran it. Nothing when not recording."""
        if self.outputs is None:
            return
        rows = self.recorded_rows
        if captured_attentions:
            self.outputs.add_attentions(self.outputs.take_captured(), rows)
        self.outputs.add_hidden_states(hidden_states, rows)
        self._layers_recorded += 1


__all__ = ["ActiveBatch", "LayerOutputs"]
