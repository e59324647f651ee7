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
"""BERT token classifier with sequence-labelling early exit: SENTEE and TOKEE (Li et al., ACL 2021).

TOKEE skips the work of exited words for real: after a word exits, its word-pieces are no longer queries. Each later
layer gathers the active positions of every sentence, computes their query projection, attention, attention-output
projection and feed-forward block only, with keys and values from all positions of the sentence (frozen ones
included), and scatters the results back; frozen positions keep their hidden state bit for bit.
"""

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from transformers import BertForTokenClassification, BertPreTrainedModel, PreTrainedModel
from transformers.utils import ModelOutput

from .active_batch import ActiveBatch, LayerOutputs
from .backbone_base import ActiveQueries, EncoderBackbone, LayerContext
from .backbones import backbone_for
from .configuration_early_exit_bert import TokenExitBertConfig
from .exit_forward import ExitCall, drop_padding_columns_of, embed_encoder, exit_loss, full_depth_exit_logits
from .exit_utils import classifier_head_flops, normalized_entropy
from .forward_checks import check_forward_kwargs, check_mask, check_token_inputs
from .modeling_exit_heads import EarlyExitModelMixin, TokenHead, plain_bert_model, plain_task_model, token_head
from .token_exit_utils import (
    IGNORE_INDEX,
    ActiveWords,
    SentenceWords,
    TokenExitRule,
    token_exit_flops,
    token_layer_costs,
    word_layout,
)


# attention implementations whose masks fit packed queries against all keys (a rectangular padding mask)
PACKED_ATTENTION: tuple[str, ...] = ("eager", "sdpa")


@dataclass
class EarlyExitTokenClassifierOutput(ModelOutput):
    r"""
    Output of [`BertForTokenEarlyExit`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is provided):
            With every exit computed (training, or `output_all_exits=True`): the joint token loss
            `sum_i i * CE_i / sum_i i` over exits at layers `i`, `CE_i` the mean cross-entropy over labelled positions.
            Otherwise: the cross-entropy of the returned `logits`.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, num_labels)`):
            At every real position, the logits of the head at the layer where that position stopped being computed
            (`exit_layer`): a word-piece's own logits from its word's exit layer, a special token's from the layer its
            sentence ran to. Zero at padding.
        exit_layer (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            1-based number of encoder layers that computed each position: for word-pieces, their word's exit layer;
            for special tokens ([CLS], [SEP], which never exit on their own), the depth their sentence ran to (the
            layer at which its last word exited, or the last layer); 0 at padding.
        flops (`torch.LongTensor` of shape `(batch_size,)`):
            FLOPs this call spent on each sentence, counted from its real length `n` (a multiply-add is 2 FLOPs;
            embeddings, norms and activations are free): every encoder layer it ran with `q` = its positions active in
            that layer, plus `2 d C` per position at which a head was evaluated (with early exit, every head on the
            positions active in its layer, fired or not).
        all_logits (`torch.FloatTensor` of shape `(num_exits, batch_size, sequence_length, num_labels)`, *optional*):
            Every exit's logits at every position from full-depth states, returned in training and with
            `output_all_exits=True`. Zero at padding.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            `num_hidden_layers + 1` tensors of shape `(batch_size, sequence_length, hidden_size)`: the embeddings
            output, then each layer's output, as the next layer saw them: a position frozen with its word (TOKEE) keeps
            the state it had when the word exited (it is copied forward, and serves as keys and values); a sentence that
            left the batch has zeros in the layers after it left.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            `num_hidden_layers` tensors of shape `(batch_size, num_attention_heads, sequence_length,
            sequence_length)`: each layer's attention probabilities of the positions that were queries in it; zero
            rows for frozen positions and for sentences that had left. Only the eager attention implementation
            computes them; with another one the tuple is empty (and a warning says so).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    exit_layer: torch.LongTensor | None = None
    flops: torch.LongTensor | None = None
    all_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def active_query_layer(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    active: torch.Tensor,
    config,
    queries: ActiveQueries | None = None,
    layer_outputs: LayerOutputs | None = None,
    rows: torch.Tensor | None = None,
    backbone: EncoderBackbone | None = None,
    encoder: nn.Module | None = None,
    index: int = 0,
    context: LayerContext | None = None,
) -> torch.Tensor:
    """One encoder layer in which only the `active` positions are queries; the others are copied forward unchanged.

    Built from the layer's own submodules, so the checkpoint's weights drive it (see
    [`EncoderBackbone.run_layer_active`]). The query projection, the attention-output projection and the feed-forward
    block run on the active positions only (gathered, no padding); keys and values run on every position; the
    attention itself runs per sentence on its active queries, padded to the largest active count in the batch. With
    every real position active it equals the full layer at the real positions.

    Args:
        layer: The encoder layer (a `BertLayer` when no `backbone` is given).
        hidden_states: `(batch, seq, d)`.
        attention_mask: `(batch, seq)` 2D mask, 1 for real positions (the keys).
        active: `(batch, seq)` bool, the positions to update (a subset of the real ones).
        config: The encoder's config (attention implementation, `eager` or `sdpa`).
        queries: The [`ActiveQueries`] of `active`, when the caller already has them.
        layer_outputs: Where to record this layer's attention probabilities (at the rows and columns of the queries),
            for the examples `rows` of the caller's batch (`None`: all of them), if asked for.
        backbone, encoder, index, context: The early-exit loop's backbone, encoder, 0-based layer index and
            [`LayerContext`]; without them, `layer` is a BERT layer run on a fresh context of `attention_mask`.

    Returns:
        `(batch, seq, d)`: new states at active positions, the input states (the same values) elsewhere.
    """
    if backbone is None:
        backbone = backbone_for("bert")
        context = backbone.plain_context(config, attention_mask, hidden_states.dtype)
        encoder = SimpleNamespace(encoder=SimpleNamespace(layer=[layer]))
    if queries is None:
        queries = backbone.active_queries(context, active)
    recording = layer_outputs is not None and layer_outputs.attentions is not None
    queries.keep_attentions = recording
    updated = backbone.run_layer_active(encoder, index, hidden_states, context, queries)
    weights = queries.attention_probs
    if recording and weights is not None:
        # (batch, heads, queries, keys) -> the rows of the queries' positions in (batch, heads, seq, seq)
        batch_size, seq_len = active.shape
        heads = weights.shape[1]
        per_query = weights.transpose(1, 2).reshape(batch_size * queries.num_queries, heads, seq_len)
        placed = per_query.new_zeros(batch_size * seq_len, heads, seq_len)
        placed = placed.index_copy(0, queries.positions, per_query.index_select(0, queries.packed))
        layer_outputs.add_attentions(placed.view(batch_size, seq_len, heads, seq_len).transpose(1, 2), rows)
        queries.attention_probs = None
    return updated


class BertForTokenEarlyExit(EarlyExitModelMixin, BertPreTrainedModel):
    r"""
    BERT for token classification with a head after each layer of `config.exit_layers` and sequence-labelling early
    exit (Li et al., "Accelerating BERT Inference for Sequence Labeling via Early-Exit", ACL 2021,
    https://aclanthology.org/2021.acl-long.16).

    Labels follow transformers' token-classification convention: a word's label sits on its first word-piece, -100
    everywhere else. At inference the model must know the words without labels: pass `word_ids` (built by
    [`encode_words`] from the tokenizer's `word_ids()`), or it treats every real position except the first and last
    of each row ([CLS], [SEP]) as a word of its own. Special tokens and padding never decide; a word's other
    word-pieces follow it (they freeze with it and report its exit layer).

    In evaluation mode with early exit:

    - SENTEE (`exit_mode="sentence"`): after each exit, a sentence whose statistic (max or mean of its words' `u`)
      is below the threshold leaves the batch; the rest run on.
    - TOKEE (`exit_mode="token"`): after each exit, a word whose window maximum of `u` is below the threshold
      freezes, word-pieces included: from then on its states are copied forward unchanged and its prediction is
      fixed, and later layers compute queries, attention, output projection and feed-forward for active positions
      only (keys and values for all; see [`active_query_layer`]). [CLS] and [SEP] stay active. A sentence whose words
      have all exited leaves the batch.

    Heads are evaluated on the positions active in their layer only (word-pieces and special tokens included, so that
    every real position has logits); frozen positions are never evaluated again. The last exit answers everything
    still active. In training mode every exit is computed at every position (no exit).

    Speed: the packed step also skips the padding of shorter sentences (for everything but keys and values), so in
    padded batches the wall-clock gain can exceed the FLOPs gain. On CPU, a matrix product over fewer than about 16
    rows costs nearly as much as one over 16-32 rows (MKL's small-matrix path), so with one short sentence at a time
    most of the gain comes from layers that sentences skip entirely, not from the words frozen inside them.

    Per-call settings are forward arguments and never change the module or its config: `exit_mode`,
    `exit_threshold`, `threshold_schedule`, `window_size`, `sentence_pooling`, `early_exit` (`False`: full depth,
    only the last head) and `output_all_exits`.

    Example:

    ```python
    >>> from transformers import AutoTokenizer

    >>> model = BertForTokenEarlyExit.from_pretrained("path/to/bert", num_labels=9, exit_mode="token", window_size=5)
    >>> tokenizer = AutoTokenizer.from_pretrained("path/to/bert")
    >>> batch = encode_words(tokenizer, [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]])
    >>> out = model.eval()(**batch, exit_threshold=0.2)
    >>> out.exit_layer  # per position: layers computed
    ```
    """

    config: TokenExitBertConfig
    config_class = TokenExitBertConfig
    # a batch of one sentence under TOKEE takes `_forward_one_sentence` (False: the batched loop, for comparisons)
    _one_sentence_path = True
    hub_auto_classes = ("AutoModel", "AutoModelForTokenClassification")
    # the loss is a per-batch mean that ignores `num_items_in_batch` (see `BertWithBypassExits`)
    accepts_loss_kwargs = False
    # a plain BERT checkpoint carries a pooler that token classification does not use
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def __init__(self, config: TokenExitBertConfig):
        attn_implementation = config._attn_implementation  # as asked for, before the model resolves its own
        super().__init__(config)
        self.num_labels = config.num_labels
        self._build_encoder(config, attn_implementation)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        style = self.encoder_backbone.token_head_style(self.base_model.config)
        self.exit_heads = nn.ModuleList(
            token_head(config.hidden_size, config.num_labels, style) for _ in config.resolved_exit_layers
        )
        self.post_init()

    @property
    def exit_layers(self) -> list[int]:
        return self.config.resolved_exit_layers

    def head_flops(self) -> int:
        """FLOPs of one exit head at one position."""
        head = self.exit_heads[0]
        if isinstance(head, TokenHead):
            return head.flops()
        # a plain classifier (an `nn.Linear`, or what int8 quantization made of it)
        return classifier_head_flops(self.config.hidden_size, self.config.num_labels)

    @property
    def full_depth_layers(self) -> int:
        """Depth of the full model: the `L` of the layer speed-up `L * words / sum(exit layers)`."""
        return self.config.num_hidden_layers

    def reference_flops(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs of the full model (what `early_exit=False` spends: every layer, the last exit's head at every
        position) per sentence of each real length; the numerator of the FLOPs speed-up. Shape `(batch,)`."""
        return self.encoder_flops(lengths, self.full_depth_layers) + lengths.long() * self.head_flops()

    def token_flops(self, exit_layer: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs of each sentence of an early-exit run from the layer at which each of its positions stopped
        (`exit_layer` `(batch, seq)`, 0 at padding), as the forward's `flops` counts them (see `token_exit_flops`);
        what calibration prices replayed exits with. Shape `(batch,)`."""
        backbone, config = self.encoder_backbone, self.base_model.config

        def layer_flops(n, q, layer_index):
            return backbone.layer_flops(config, n, q, layer_index)

        table = self.__dict__.get("_token_flops_table")  # every length's layer costs, built on the first call
        if table is None or table.device != lengths.device:
            every_length = torch.arange(getattr(config, "max_position_embeddings", 512) + 1, device=lengths.device)
            table = token_layer_costs(
                every_length, self.config.hidden_size, self.config.intermediate_size, layer_flops
            )
            self.__dict__["_token_flops_table"] = table
        return token_exit_flops(
            exit_layer,
            lengths,
            self.exit_layers,
            self.config.hidden_size,
            self.config.intermediate_size,
            self.num_labels,
            layer_flops=layer_flops,
            head_flops=self.head_flops(),
            call_flops=backbone.batch_layer_flops(config, 1),
            per_length=table,
        )

    def flops_per_exit(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs a sentence of each real length spends when it leaves entirely at each exit with early exit: every
        position a query in every layer up to the exit, and every head up to it evaluated at every position (the
        convention of `token_exit_flops`, which gives exactly this for a sentence whose positions all stop at the same
        exit; a TOKEE sentence whose words leave at different exits costs in between). Shape `(num_exits, batch)`."""
        lengths = lengths.long()
        layers = torch.tensor(self.exit_layers, device=lengths.device).unsqueeze(-1)
        heads = torch.arange(1, len(self.exit_layers) + 1, device=lengths.device).unsqueeze(-1)
        return self.encoder_flops(lengths, layers) + heads * lengths * self.head_flops()

    def plain_baseline(self) -> PreTrainedModel:
        """The encoder architecture's stock `...ForTokenClassification` of the full model (`BertForTokenClassification`
        for BERT): this encoder and the last exit's head, which computes what `early_exit=False` computes."""
        if self.base_model_prefix != "bert":
            return plain_task_model(
                self.encoder_backbone, "token", self.base_model, self.exit_heads[-1], self.num_labels
            )
        return plain_bert_model(
            BertForTokenClassification,
            self.bert,
            self.exit_heads[-1],
            self.config.num_labels,
            self.config._attn_implementation,
        )

    def _head(self, exit_index: int, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.exit_heads[exit_index](self.dropout(hidden_states))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        early_exit: bool | None = None,
        exit_mode: str | None = None,
        exit_threshold: float | list[float] | torch.Tensor | None = None,
        threshold_schedule: str | None = None,
        window_size: int | None = None,
        sentence_pooling: str | None = None,
        output_all_exits: bool | None = None,
        active_depth: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EarlyExitTokenClassifierOutput | tuple:
        r"""
        word_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Word id of each position, -1 for special tokens and padding (see [`encode_words`]). A word is a run of
            consecutive positions with the same id; it exits as one. Without it, every real position but the first and
            the last of each row is a word.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Tag ids in `[0, num_labels)` on the first word-piece of each word, -100 elsewhere.
        early_exit (`bool`, *optional*):
            Defaults to `True` in evaluation mode. `False` runs every layer at every position and answers with the last
            head only.
        exit_mode, exit_threshold, threshold_schedule, window_size, sentence_pooling (*optional*):
            Override the config's exit settings for this call only (see [`TokenExitBertConfig`]). `exit_threshold` may
            also be a tensor of one threshold per sentence, `(batch_size,)` (or `(batch_size, num_exits)` with the
            constant schedule): requests with different thresholds then share one forward pass.
        output_all_exits (`bool`, *optional*):
            Compute every head at every position from full-depth states and return them in `all_logits`; `logits`
            and `exit_layer` are then the rule's choice replayed on those logits ([`TokenExitRule.simulate`]), which
            for TOKEE is the offline replay of stage-2 training, not the live computation. Always on in training.
        active_depth (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Stage-2 self-sampling's training forward (Li et al., 2021): every layer runs at every position, but
            a position's state is only updated by its first `active_depth` layers and copied forward unchanged after
            (`h_i = m_i * Layer_i(h_{i-1}) + (1 - m_i) * h_{i-1}`). Every exit is evaluated (`all_logits`) on those
            states; `exit_layer` is `active_depth` (0 at padding) and `logits` come from each position's last exit
            at or below it. Values must lie in `[1, num_hidden_layers]` at real positions. Only with full depth
            (training, or `early_exit=False` / `output_all_exits=True`).
        output_attentions, output_hidden_states, return_dict (`bool`, *optional*):
            As for transformers models (defaults from the config); see [`EarlyExitTokenClassifierOutput`] for what
            frozen words and sentences that left give. `return_dict=False` returns the output's non-`None` fields as
            a tuple.

        Any other keyword argument is an error (transformers' `num_items_in_batch` is accepted and unused: the loss is
        a mean over labelled positions).
        """
        check_forward_kwargs(self, kwargs)
        call = ExitCall.start(
            self, early_exit, output_all_exits, exit_threshold, output_attentions, output_hidden_states, return_dict
        )
        rule = self.config.exit_rule(
            exit_mode=exit_mode,
            exit_threshold=call.exit_threshold,
            threshold_schedule=threshold_schedule,
            window_size=window_size,
            sentence_pooling=sentence_pooling,
        )

        check_token_inputs(
            self,
            input_ids,
            inputs_embeds,
            attention_mask,
            None,
            token_type_ids,
            position_ids,
            hidden_size=self.config.hidden_size,
        )
        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"The inputs have {seq_len} positions but the model has {self.config.max_position_embeddings} "
                "position embeddings. Truncate when building inputs (`encode_words` truncates to the tokenizer's "
                "`model_max_length`, or to `max_length`)."
            )
        attn_implementation = self.base_model.config._attn_implementation
        if not call.full_depth and active_depth is None and attn_implementation not in PACKED_ATTENTION:
            raise ValueError(
                f"Early exit runs the packed-query layer step, which supports the {PACKED_ATTENTION} attention "
                f"implementations; this model uses {attn_implementation!r}. Call "
                "`model.set_attn_implementation('sdpa')`, or pass `early_exit=False` for full depth."
            )
        hidden_states, attention_mask, context = embed_encoder(
            self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
        if call.example_thresholds is not None:  # one threshold per sentence, spread over the exits by the schedule
            rule = rule.for_examples(
                call.example_thresholds,
                hidden_states.shape[0],
                self.exit_layers,
                self.config.num_hidden_layers,
                self.config.threshold_schedule if threshold_schedule is None else threshold_schedule,
                self.config.threshold_cap,
            )
        if labels is not None:
            self._check_labels(labels, attention_mask)
        word_index, word_start = word_layout(attention_mask, word_ids)
        real = attention_mask.bool()
        lengths = attention_mask.sum(dim=-1)
        check_mask(attention_mask, lengths)
        layer_outputs = call.record_layers(lengths.shape[0])
        context.output_attentions = layer_outputs is not None and layer_outputs.attentions is not None

        if active_depth is not None:
            active_depth = self._check_active_depth(active_depth, real)
            call.all_exits = True
        if call.full_depth:
            stacked = self._forward_full_depth(hidden_states, context, call.all_exits, active_depth, layer_outputs)
            stacked = stacked.masked_fill(~real[..., None], 0.0)
            num_exits = len(self.exit_layers)
            if active_depth is not None:
                # the last exit at or below each position's depth
                layers = torch.tensor(self.exit_layers, device=active_depth.device)
                exit_index = torch.where(real, torch.searchsorted(layers, active_depth, right=True) - 1, -1)
                exit_index = torch.where(real & (exit_index < 0), 0, exit_index)
                logits = stacked.gather(0, exit_index.clamp_min(0)[None, ..., None].expand_as(stacked[:1]))[0]
            elif call.all_exits and call.early_exit:
                exit_index = rule.simulate(stacked, attention_mask, word_ids)
                logits = stacked.gather(0, exit_index.clamp_min(0)[None, ..., None].expand_as(stacked[:1]))[0]
            else:
                exit_index = torch.where(real, num_exits - 1, -1)
                logits = stacked[-1]
            layer_numbers = torch.tensor(self.exit_layers, device=exit_index.device)
            exit_layer = torch.where(real, layer_numbers[exit_index.clamp_min(0)], 0)
            if active_depth is not None:
                exit_layer = torch.where(real, active_depth, 0)
            # every layer at every position, and each computed exit's head at every position
            flops = (
                self.reference_flops(lengths) + (num_exits - 1 if call.all_exits else 0) * lengths * self.head_flops()
            )
            all_logits = stacked if call.all_exits else None
        else:
            logits, exit_layer, flops = self._forward_early_exit(
                hidden_states, context, word_index, word_start, rule, layer_outputs
            )
            all_logits = None

        loss = None
        if labels is not None:  # cross-entropy over positions, -100 ignored
            loss = exit_loss(labels, logits, all_logits, "single_label_classification", self.exit_layers)

        return call.finish(
            EarlyExitTokenClassifierOutput,
            self.config,
            loss=loss,
            logits=logits,
            exit_layer=exit_layer,
            flops=flops,
            all_logits=all_logits,
        )

    def _check_labels(self, labels: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
        if labels.shape != attention_mask.shape:
            raise ValueError(
                f"`labels` has shape {tuple(labels.shape)} but the inputs have shape {tuple(attention_mask.shape)}: "
                "give one label per position, the word's tag on its first word-piece and -100 elsewhere "
                "(`encode_words` aligns word labels this way)."
            )
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_labels))
        if bool(bad.any()):
            raise ValueError(
                f"`labels` must be tag ids in [0, {self.num_labels}) or -100, got {labels[bad][:5].tolist()}."
            )

    def _check_active_depth(self, active_depth: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if not isinstance(active_depth, torch.Tensor) or active_depth.shape != real.shape:
            shape = (
                tuple(active_depth.shape) if isinstance(active_depth, torch.Tensor) else type(active_depth).__name__
            )
            raise ValueError(
                f"`active_depth` must be a tensor of shape {tuple(real.shape)} (one depth per position), got {shape}."
            )
        if active_depth.is_floating_point() or active_depth.dtype == torch.bool:
            raise ValueError(f"`active_depth` must hold integers (layers), got dtype {active_depth.dtype}.")
        depth = active_depth.long()
        bad = real & ((depth < 1) | (depth > self.config.num_hidden_layers))
        if bool(bad.any()):
            raise ValueError(
                f"`active_depth` must lie in [1, {self.config.num_hidden_layers}] at real positions, got "
                f"{depth[bad][:5].tolist()}."
            )
        return torch.where(real, depth, 0)

    def _forward_full_depth(
        self,
        hidden_states: torch.Tensor,
        context: LayerContext,
        all_exits: bool,
        active_depth: torch.Tensor | None = None,
        layer_outputs: LayerOutputs | None = None,
    ) -> torch.Tensor:
        """Every layer at every position; `(num_exits, batch, seq, num_labels)` logits, or only the last exit's."""
        return full_depth_exit_logits(
            self,
            hidden_states,
            context,
            self.exit_layers,
            self._head,
            all_exits,
            active_depth,
            outputs=layer_outputs,
        )

    def _forward_early_exit(
        self,
        hidden_states: torch.Tensor,
        context: LayerContext,
        word_index: torch.Tensor,
        word_start: torch.Tensor,
        rule: TokenExitRule,
        layer_outputs: LayerOutputs | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inference path: words (TOKEE) or sentences (SENTEE) stop being computed once they exit.

        The batch is compacted as sentences leave (rows) and as positions become padding for every remaining sentence
        (columns, except while recording `layer_outputs`); an [`ActiveBatch`] maps the compacted batch back to the
        caller's positions.
        """
        backbone, encoder = self.encoder_backbone, self.base_model
        attention_mask = context.attention_mask
        batch_size, seq_len = attention_mask.shape
        if batch_size == 1 and rule.mode == "token" and layer_outputs is None and self._one_sentence_path:
            return self._forward_one_sentence(hidden_states, context, word_index, rule)
        device = hidden_states.device
        out_logits = hidden_states.new_zeros(batch_size, seq_len, self.num_labels)
        exit_layer = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
        num_exits = len(self.exit_layers)
        exit_position = {layer: k for k, layer in enumerate(self.exit_layers)}

        batch = ActiveBatch(batch_size, seq_len, device, layer_outputs, rule.example_thresholds is not None)
        lengths = attention_mask.sum(dim=-1)
        columns = batch.padding_columns(attention_mask)
        if columns is not None:
            hidden_states, word_index, word_start = (
                t.index_select(1, columns) for t in (hidden_states, word_index, word_start)
            )
            context = backbone.compact(context, None, columns)
        active = context.attention_mask.bool()
        # word slots per row of every layout the loop builds (rows only leave, so their count never grows)
        max_words = max(int(word_index.max()) + 1, 1) if word_index.numel() else 1
        flat_logits, flat_exit_layer = out_logits.view(-1, self.num_labels), exit_layer.view(-1)
        changed = True  # the active set (or the batch) changed since the last layer

        layers = backbone.layers(encoder)
        attention_modules = [backbone.attention_module(layer) for layer in layers] if layer_outputs else None
        with batch.recording(attention_modules, hidden_states):
            for i, layer_module in enumerate(layers):
                layer_number = i + 1
                if changed:
                    words = ActiveWords.build(active, word_index, word_start, max_words)
                    # where each active position's outputs go in the caller's (batch, seq) layout
                    out_positions = batch.caller_positions(words.positions, words.rows, active.shape[1])
                    # the plain layer only when it wastes nothing: no frozen position and no padding; otherwise the
                    # packed step, which also skips the padding of shorter sentences for everything but keys and values
                    all_active = words.positions.numel() == active.numel()
                    if not all_active:
                        queries = backbone.active_queries(context, active)
                    changed = False
                if all_active:
                    hidden_states = backbone.run_layer(encoder, i, hidden_states, context)
                else:
                    hidden_states = active_query_layer(
                        layer_module,
                        hidden_states,
                        context.attention_mask,
                        active,
                        encoder.config,
                        queries=queries,
                        layer_outputs=layer_outputs,
                        rows=batch.recorded_rows,
                        backbone=backbone,
                        encoder=encoder,
                        index=i,
                        context=context,
                    )
                # the plain layer's attention probabilities were captured; the packed step recorded its own
                batch.record_layer(hidden_states, captured_attentions=all_active)
                k = exit_position.get(layer_number)
                if k is None:
                    continue

                flat_states = hidden_states.reshape(-1, hidden_states.shape[-1])
                if not all_active:
                    flat_states = flat_states.index_select(0, words.positions)
                logits = self._head(k, backbone.finalize(encoder, flat_states))
                flat_logits.index_copy_(0, out_positions, logits.to(flat_logits.dtype))  # bf16 under autocast
                flat_exit_layer.index_fill_(0, out_positions, layer_number)
                if k == num_exits - 1:
                    break
                if rule.example_thresholds is None and rule.thresholds[k] <= 0:
                    # `u < 0` never holds: no word leaves, only rows without words
                    freeze, remaining = None, words.active_words.any(dim=-1)
                else:
                    freeze, remaining = words.decide(rule, k, logits, batch.threshold_rows)
                if freeze is not None and bool(freeze.any()):
                    active = active.reshape(-1).index_put((words.positions,), ~freeze).view_as(active)
                    changed = True
                if not bool(remaining.all()):
                    kept = batch.drop_rows(remaining, hidden_states, active, word_index, word_start)
                    if kept is None:
                        break
                    rows = remaining.nonzero().squeeze(-1)
                    columns = batch.padding_columns(context.attention_mask.index_select(0, rows))
                    if columns is not None:
                        kept = tuple(t.index_select(1, columns) for t in kept)
                    hidden_states, active, word_index, word_start = kept
                    context = backbone.compact(context, rows, columns)
                    changed = True

        return out_logits, exit_layer, self.token_flops(exit_layer, lengths)

    def _forward_one_sentence(
        self, hidden_states: torch.Tensor, context: LayerContext, word_index: torch.Tensor, rule: TokenExitRule
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[`_forward_early_exit`] for a batch of one sentence under TOKEE (the latency case of a service).

        The same layers and heads on the same positions, so the same outputs, with the bookkeeping of the words in
        Python lists ([`SentenceWords`]): no rows to drop, the padding columns dropped once, and per exit one head, one
        entropy and one host transfer of the words' uncertainties.
        """
        backbone, encoder = self.encoder_backbone, self.base_model
        seq_len = hidden_states.shape[1]
        out_logits = hidden_states.new_zeros(1, seq_len, self.num_labels)
        exit_layer = torch.zeros(1, seq_len, dtype=torch.long, device=hidden_states.device)
        lengths = context.attention_mask.sum(dim=-1)
        hidden_states, context = drop_padding_columns_of(backbone, hidden_states, context)
        columns = context.columns  # the caller's column of each column left
        if columns.shape[0] != seq_len:
            word_index = word_index.index_select(1, columns)
        sentence = SentenceWords.build(word_index[0].tolist())
        # float32, the precision at which the batched rule compares
        if rule.example_thresholds is None:
            thresholds = torch.tensor(rule.thresholds, dtype=torch.float32).tolist()
        else:
            thresholds = rule.example_thresholds[0].to(torch.float32).tolist()
        exit_position = {layer: k for k, layer in enumerate(self.exit_layers)}
        last_exit = len(self.exit_layers) - 1
        flat_logits, flat_exit_layer = out_logits.view(-1, self.num_labels), exit_layer.view(-1)
        rows = queries = None  # None: every position is active
        out_positions = columns

        for i in range(len(backbone.layers(encoder))):
            if queries is None:
                hidden_states = backbone.run_layer(encoder, i, hidden_states, context)
            else:
                hidden_states = backbone.run_layer_active(encoder, i, hidden_states, context, queries)
            k = exit_position.get(i + 1)
            if k is None:
                continue
            states = hidden_states[0] if rows is None else hidden_states[0].index_select(0, rows)
            logits = self._head(k, backbone.finalize(encoder, states))
            flat_logits.index_copy_(0, out_positions, logits.to(flat_logits.dtype))  # bf16 under autocast
            flat_exit_layer.index_fill_(0, out_positions, i + 1)
            if k == last_exit or not sentence.words:  # a sentence without words leaves at the first exit
                break
            if thresholds[k] <= 0:  # `u < 0` never holds
                continue
            starts = torch.tensor(sentence.start_rows(), device=logits.device)
            uncertainty = normalized_entropy(logits.index_select(0, starts)).tolist()
            if not sentence.decide(uncertainty, thresholds[k], rule.window_size):
                continue
            if not sentence.words:
                break
            rows = torch.tensor(sentence.positions, device=logits.device)
            out_positions = columns.index_select(0, rows)
            active = torch.zeros(1, columns.shape[0], dtype=torch.bool, device=logits.device)
            queries = backbone.active_queries(context, active.index_fill_(1, rows, True))

        return out_logits, exit_layer, self.token_flops(exit_layer, lengths)


__all__ = ["BertForTokenEarlyExit", "EarlyExitTokenClassifierOutput", "active_query_layer"]
