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
"""Multi-exit BERT with block-wise bypasses (BADGE) and per-example early exit in batches."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertForSequenceClassification, BertPreTrainedModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .active_batch import ActiveBatch, LayerOutputs
from .configuration_early_exit_bert import BypassBertConfig
from .exit_forward import (
    ExitCall,
    drop_padding_columns_of,
    embed_encoder,
    exit_loss,
    full_depth_exit_logits,
    scale_gradient,
)
from .exit_utils import max_prob
from .forward_checks import check_flag, check_forward_kwargs, check_mask, check_sequence_labels, check_token_inputs
from .modeling_exit_heads import (
    _HUB_KWARGS,
    BypassModule,
    ClassificationHead,
    EarlyExitModelMixin,
    ZeroInitLinear,
    plain_bert_model,
    plain_task_model,
)


logger = logging.get_logger(__name__)


@dataclass
class EarlyExitSequenceClassifierOutput(ModelOutput):
    r"""
    Output of [`BertWithBypassExits`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is provided):
            With every exit computed (training, or `output_all_exits=True`): the joint loss
            `sum_i i * loss_i / sum_i i` over exits at layers `i`. Otherwise: the loss of the returned `logits`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Logits of the exit that answered each example.
        exit_layer (`torch.LongTensor` of shape `(batch_size,)`):
            1-based number of encoder layers computed for each example (the layer of the exit that answered).
        flops (`torch.LongTensor` of shape `(batch_size,)`):
            FLOPs this call spent on each example, counted from its real length (a multiply-add is 2 FLOPs;
            embeddings, norms and activations are free): encoder layers run, plus every exit head evaluated (fired or
            not), bypasses and poolers included.
        confidence (`torch.FloatTensor` of shape `(batch_size,)`):
            Largest class probability of the answering exit (for regression: `None`).
        all_logits (`torch.FloatTensor` of shape `(num_exits, batch_size, num_labels)`, *optional*):
            Every exit's logits, returned when every exit is computed (`output_all_exits`, on by default in training).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            `num_hidden_layers + 1` tensors of shape `(batch_size, sequence_length, hidden_size)`: the embeddings
            output, then each layer's output. An example that left at layer `e` has zeros in the tensors of the layers
            after `e` (they did not run for it).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            `num_hidden_layers` tensors of shape `(batch_size, num_attention_heads, sequence_length,
            sequence_length)`: each layer's attention probabilities, zeros for the examples that had left. Only the
            eager attention implementation computes them; with another one the tuple is empty (and a warning says so).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    exit_layer: torch.LongTensor | None = None
    flops: torch.LongTensor | None = None
    confidence: torch.FloatTensor | None = None
    all_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class BertWithBypassExits(EarlyExitModelMixin, BertPreTrainedModel):
    r"""
    BERT for sequence classification with an exit head after each layer of `config.exit_layers`, BADGE's block-wise
    bypasses, and per-example early exit in batches.

    In evaluation mode, after each exit layer the examples whose criterion fired leave the batch: the following layers
    run only on the examples still active (the batch is compacted, and sequence positions that became padding for every
    remaining example are dropped). The last exit answers the rest. In training mode every exit is computed for every
    example.

    Per-call settings are forward arguments and never change the module or its config: `exit_threshold`,
    `exit_criterion`, `patience`, `divergence`, `regression_tolerance`, `early_exit` (`False`: full depth, only the last
    exit is evaluated) and `output_all_exits` (compute every exit for every example, e.g. to calibrate thresholds).

    Criteria: PABEE (Zhou et al., 2020, https://huggingface.co/papers/2006.04152), DeeBERT (Xin et al., 2020,
    https://huggingface.co/papers/2004.12993), FastBERT (Liu et al., 2020, https://huggingface.co/papers/2004.02178);
    BADGE's block-wise bypasses and divergence-based exit as interpreted in [`BypassBertConfig`].

    From a `BertForSequenceClassification` you have already fine-tuned, `from_pretrained(path, exit_pooling="pooler")`
    also takes its classification head (pooler and classifier) as the last exit, so that at full depth the model answers
    exactly as the classifier does (a fresh bypass is the identity); train the other exits with the `two_stage` or
    `distillation` recipe's `exit_stage=2`, which leaves the encoder and the last exit as they are.

    Example:

    ```python
    >>> from transformers import AutoTokenizer

    >>> model = BertWithBypassExits.from_pretrained("path/to/bert", num_labels=2, exit_criterion="entropy")
    >>> tokenizer = AutoTokenizer.from_pretrained("path/to/bert")
    >>> batch = tokenizer(["a gem", "a slow, muddled and ultimately forgettable film"], padding=True, return_tensors="pt")
    >>> out = model.eval()(**batch, exit_threshold=0.2)
    >>> out.exit_layer  # layers computed per example
    ```
    """

    config: BypassBertConfig
    config_class = BypassBertConfig
    # a plain BERT checkpoint carries a pooler that the exit heads do not use
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]
    # `forward` takes `**kwargs` but its loss is a per-batch mean that ignores `num_items_in_batch`: without this a
    # plain `Trainer` would take the loss as already scaled for gradient accumulation and not divide it
    accepts_loss_kwargs = False
    hub_auto_classes = ("AutoModel", "AutoModelForSequenceClassification")

    def __init__(self, config: BypassBertConfig):
        attn_implementation = config._attn_implementation  # as asked for, before the model resolves its own
        super().__init__(config)
        self.num_labels = config.num_labels
        self._build_encoder(config, attn_implementation)
        style = self.encoder_backbone.sequence_head_style(self.base_model.config)
        self.exit_heads = nn.ModuleList(
            ClassificationHead(config, config.exit_pooling, style) for _ in config.resolved_exit_layers
        )
        if config.use_bypass:
            num_blocks = -(-config.num_hidden_layers // config.bypass_block_size)
            self.bypasses = nn.ModuleList(
                BypassModule(config.hidden_size, config.bypass_dim) for _ in range(num_blocks)
            )
        else:
            self.bypasses = None
        # architecture facts read on every forward, kept as plain attributes: a config attribute read goes through
        # transformers' `__getattribute__` and costs microseconds, dozens of times per call at batch size 1
        self._exit_layers = tuple(config.resolved_exit_layers)
        self._exit_position = {layer: k for k, layer in enumerate(self._exit_layers)}
        self._exit_bypass = tuple(
            (layer - 1) // config.bypass_block_size if config.use_bypass else None for layer in self._exit_layers
        )
        self._sizes = (
            config.num_hidden_layers,
            config.hidden_size,
            config.intermediate_size,
            config.max_position_embeddings,
        )
        self.post_init()
        self._head_flops = self.exit_heads[0].flops(config.bypass_dim if config.use_bypass else 0)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        output = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if pretrained_model_name_or_path is not None and kwargs.get("state_dict") is None:
            model = output[0] if isinstance(output, tuple) else output
            model._take_classifier_head(
                pretrained_model_name_or_path, {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            )
        return output

    @torch.no_grad()
    def _take_classifier_head(self, pretrained_model_name_or_path, hub_kwargs: dict) -> None:
        """When the checkpoint is a fine-tuned `BertForSequenceClassification`, copies its pooler and classifier into the
        last exit (the exit heads of a plain checkpoint are otherwise new): needs `exit_pooling="pooler"`, what that
        head reads, and the same number of labels."""
        config, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        if config.get("model_type") != "bert" or "BertForSequenceClassification" not in (
            config.get("architectures") or []
        ):
            return
        head = self.exit_heads[-1]
        if head.pooling != "pooler":
            logger.warning(
                f"{pretrained_model_name_or_path} is a fine-tuned BertForSequenceClassification whose head reads BERT's "
                f"pooler; the last exit pools with {head.pooling!r}, so it starts new. Load with exit_pooling='pooler' "
                "to keep the classifier's answers at full depth."
            )
            return
        classifier = BertForSequenceClassification.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if classifier.classifier.out_features != self.num_labels or classifier.bert.pooler is None:
            logger.warning(
                f"{pretrained_model_name_or_path}'s classifier has {classifier.classifier.out_features} labels (this "
                f"model: {self.num_labels}) or no pooler: the last exit starts new."
            )
            return
        head.pooler.load_state_dict(classifier.bert.pooler.dense.state_dict())
        head.classifier.load_state_dict(classifier.classifier.state_dict())
        logger.info(f"the last exit is {pretrained_model_name_or_path}'s classification head (pooler and classifier)")

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    @property
    def exit_layers(self) -> list[int]:
        """The 1-based encoder layers that carry an exit."""
        return list(self._exit_layers)

    def _exit_logits(self, exit_index: int, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bypass = None
        if self.bypasses is not None:
            bypass = self.bypasses[self._exit_bypass[exit_index]]
            if self.training and exit_index < len(self.exit_heads) - 1:
                hidden_states = scale_gradient(hidden_states, float(self.config.bypass_grad_scale))
        return self.exit_heads[exit_index](hidden_states, attention_mask, bypass)

    def head_flops(self) -> int:
        """FLOPs of one exit head (bypass included) for one example."""
        return self._head_flops

    @property
    def full_depth_layers(self) -> int:
        """Depth of the full model: the `L` of the layer speed-up `L * N / sum(exit_layer)`."""
        return self._sizes[0]

    def reference_flops(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs of the full model (what `early_exit=False` spends: every layer, the last exit only) per example of
        each real length; the numerator of the FLOPs speed-up. Shape `(batch,)`."""
        return self.encoder_flops(lengths, self.full_depth_layers) + self.head_flops()

    def flops_per_exit(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs an example of each real length spends when it leaves at each exit, with early exit (every earlier head
        evaluated). Shape `(num_exits, batch)`; used by the calibration to price hypothetical exits."""
        layers = torch.tensor(self._exit_layers, device=lengths.device).unsqueeze(-1)
        heads = torch.arange(1, len(self._exit_layers) + 1, device=lengths.device).unsqueeze(-1)
        return self.encoder_flops(lengths, layers) + heads * self.head_flops()

    def plain_baseline(self) -> PreTrainedModel:
        """The encoder architecture's stock `...ForSequenceClassification` of the full model (`BertForSequenceClassification`
        for BERT): this encoder and the last exit's classifier (and pooler, when the exit has one). A stock classifier
        reads the architecture's pooled state (BERT: [CLS] through a pooler), so with another exit pooling (mean,
        plain [CLS]) or a bypass its predictions differ from this model's; its cost is the same (give or take a
        pooler's `2 d^2` per example), which is what it is for. With `exit_pooling="pooler"` and no bypass it computes
        exactly what `early_exit=False` computes."""
        head = self.exit_heads[-1]
        if self.base_model_prefix != "bert":
            return plain_task_model(self.encoder_backbone, "sequence", self.base_model, head, self.num_labels)
        return plain_bert_model(
            BertForSequenceClassification,
            self.bert,
            head.classifier,
            self.config.num_labels,
            self.config._attn_implementation,
            head.pooler,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        early_exit: bool | None = None,
        exit_criterion: str | None = None,
        exit_threshold: float | list[float] | torch.Tensor | None = None,
        patience: int | None = None,
        divergence: str | None = None,
        regression_tolerance: float | None = None,
        output_all_exits: bool | None = None,
        gradient_equilibrium: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EarlyExitSequenceClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            As for `BertForSequenceClassification`.
        early_exit (`bool`, *optional*):
            Defaults to `True` in evaluation mode. `False` runs every layer and answers with the last exit only.
        exit_criterion, exit_threshold, patience, divergence, regression_tolerance (*optional*):
            Override the config's exit settings for this call only (see [`BypassBertConfig`]). `exit_threshold` may
            also be a tensor of one threshold per example, shape `(batch_size,)` or `(batch_size, num_exits)`: requests
            with different thresholds then share one forward pass, each example deciding as it would alone.
        output_all_exits (`bool`, *optional*):
            Compute every exit for every example and return them in `all_logits`; the answering exit is still chosen
            by the criterion, from the same logits. Defaults to `True` in training mode and `False` in evaluation
            mode. `False` in training computes the last exit only, so the other exits get no gradient at all (not even
            a zero one), as when a recipe trains the final exit alone.
        gradient_equilibrium (`bool`, *optional*):
            With every exit computed, average rather than sum the exits' gradients in the backbone (Li et al., 2019;
            see `full_depth_exit_logits`); the outputs are unchanged. Set by the trainer's `gradient_equilibrium`.
        output_attentions, output_hidden_states, return_dict (`bool`, *optional*):
            As for transformers models (defaults from the config); see [`EarlyExitSequenceClassifierOutput`] for what
            the layers an example did not run give. `return_dict=False` returns the output's non-`None` fields as a
            tuple.

        Any other keyword argument is an error (transformers' `num_items_in_batch` is accepted and unused: the loss is
        a per-batch mean).
        """
        check_forward_kwargs(self, kwargs)
        call = ExitCall.start(
            self,
            early_exit,
            output_all_exits,
            exit_threshold,
            output_attentions,
            output_hidden_states,
            return_dict,
            all_exits_in_training=False,  # `output_all_exits=False` trains the last exit alone
        )
        check_flag("gradient_equilibrium", gradient_equilibrium)
        rule = self.config.exit_rule(
            exit_criterion=exit_criterion,
            exit_threshold=call.exit_threshold,
            patience=patience,
            divergence=divergence,
            regression_tolerance=regression_tolerance,
        )

        check_token_inputs(
            self,
            input_ids,
            inputs_embeds,
            attention_mask,
            self._sizes[3],
            token_type_ids,
            position_ids,
            hidden_size=self._sizes[1],
        )
        hidden_states, attention_mask, context = embed_encoder(
            self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
        if call.example_thresholds is not None:
            rule = rule.for_examples(call.example_thresholds, hidden_states.shape[0])
        lengths = attention_mask.sum(dim=-1)
        check_mask(attention_mask, lengths)
        layer_outputs = call.record_layers(lengths.shape[0])
        if layer_outputs is None:  # positions that are padding in every row: dropped (recorded outputs keep them all)
            hidden_states, context = drop_padding_columns_of(self.encoder_backbone, hidden_states, context)
        else:
            context.output_attentions = layer_outputs.attentions is not None

        num_exits = len(self._exit_layers)
        if call.full_depth:
            stacked = self._forward_full_depth(
                hidden_states, context, call.all_exits, layer_outputs, bool(gradient_equilibrium)
            )
            logits, exit_index, all_logits = call.pick_exits(stacked, rule, lengths, num_exits)
            heads = num_exits if call.all_exits else 1
            flops = self.encoder_flops(lengths, self.full_depth_layers) + heads * self.head_flops()
        else:
            logits, exit_index = self._forward_early_exit(hidden_states, context, rule, layer_outputs)
            flops = None
            all_logits = None

        exit_layer = torch.tensor(self._exit_layers, device=exit_index.device)[exit_index]
        if flops is None:  # every head up to the answering one was evaluated
            flops = self.encoder_flops(lengths, exit_layer) + (exit_index + 1) * self._head_flops

        loss = None
        if labels is not None:
            problem_type = check_sequence_labels(self.config, labels, lengths.shape[0])
            loss = exit_loss(labels, logits, all_logits, problem_type, self.exit_layers)

        return call.finish(
            EarlyExitSequenceClassifierOutput,
            self.config,
            loss=loss,
            logits=logits,
            exit_layer=exit_layer,
            flops=flops,
            confidence=max_prob(logits) if self.num_labels > 1 else None,
            all_logits=all_logits,
        )

    def _forward_full_depth(
        self,
        hidden_states: torch.Tensor,
        context,
        all_exits: bool,
        layer_outputs: LayerOutputs | None = None,
        gradient_equilibrium: bool = False,
    ) -> torch.Tensor:
        """Every layer on every example; returns `(num_exits, batch, num_labels)` logits, or `(1, batch, num_labels)`
        with the last exit only."""
        attention_mask = context.attention_mask
        head_mask = None if bool(attention_mask.all()) else attention_mask  # heads pool without a mask when they can
        return full_depth_exit_logits(
            self,
            hidden_states,
            context,
            self.exit_layers,
            lambda k, states: self._exit_logits(k, states, head_mask),
            all_exits,
            outputs=layer_outputs,
            gradient_equilibrium=gradient_equilibrium,
        )

    def _forward_early_exit(
        self, hidden_states, context, rule, layer_outputs: LayerOutputs | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference path: examples leave the batch as soon as their criterion fires."""
        backbone, encoder = self.encoder_backbone, self.base_model
        batch_size, seq_len = context.attention_mask.shape
        num_exits = len(self._exit_layers)
        batch = ActiveBatch(
            batch_size, seq_len, hidden_states.device, layer_outputs, rule.example_thresholds is not None
        )
        out_logits = hidden_states.new_empty(batch_size, self.num_labels)
        exit_index = torch.full((batch_size,), num_exits - 1, dtype=torch.long, device=hidden_states.device)
        # no padding left means no mask: the heads can pool without one
        head_mask = None if bool(context.attention_mask.all()) else context.attention_mask
        prev_logits, counter = None, None
        layers = backbone.layers(encoder)
        attention_modules = [backbone.attention_module(layer) for layer in layers] if layer_outputs else None
        with batch.recording(attention_modules, hidden_states):
            for i in range(len(layers)):
                hidden_states = backbone.run_layer(encoder, i, hidden_states, context)
                batch.record_layer(hidden_states)
                k = self._exit_position.get(i + 1)
                if k is None:
                    continue
                logits = self._exit_logits(k, backbone.finalize(encoder, hidden_states), head_mask)
                if k == num_exits - 1:
                    batch.scatter(None, (out_logits, logits))
                    break
                fires, counter = rule.step(k, logits, prev_logits, counter, batch.threshold_rows)
                if bool(fires.any()):
                    if fires.shape[0] == 1 or bool(fires.all()):  # every current row answers: nothing to compact
                        if batch.is_whole:  # nor to write back: the current rows are the caller's, in order
                            return logits.to(out_logits.dtype), exit_index.fill_(k)
                        batch.scatter(None, (out_logits, logits), (exit_index, k))
                        break
                    batch.scatter(fires, (out_logits, logits), (exit_index, k))
                    stay = ~fires
                    kept = batch.drop_rows(stay, hidden_states, logits, counter)
                    if kept is None:
                        break
                    hidden_states, logits, counter = kept
                    rows = stay.nonzero().squeeze(-1)
                    columns = batch.padding_columns(context.attention_mask.index_select(0, rows))
                    if columns is not None:
                        hidden_states = hidden_states.index_select(1, columns)
                    context = backbone.compact(context, rows, columns)
                    head_mask = None if bool(context.attention_mask.all()) else context.attention_mask
                prev_logits = logits
        return out_logits, exit_index


__all__ = ["BertWithBypassExits", "EarlyExitSequenceClassifierOutput"]
