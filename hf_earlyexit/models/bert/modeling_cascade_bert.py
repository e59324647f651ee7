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
"""CascadeBERT: a cascade of complete BERT classifiers of increasing size, where each member runs only on the examples
that the smaller members before it did not answer."""

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, BertForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from .active_batch import ActiveBatch, LayerOutputs
from .backbones import BACKBONES, backbone_for
from .cascade_inputs import (
    check_member_inputs,
    load_tokenizers,
    member_tokenizers,
    pop_member_inputs,
    save_tokenizers,
    tokenize_for_members,
)
from .cascade_members import CascadeMember, member_source, resolve_labels, truncated
from .checkpoint_utils import check_local_path
from .configuration_early_exit_bert import CascadeBertConfig
from .exit_forward import ExitCall, exit_loss
from .exit_utils import ExitRule, kept_columns, max_prob
from .forward_checks import check_forward_kwargs, check_mask, check_sequence_labels
from .modeling_exit_heads import EarlyExitModelMixin, plain_bert_model, plain_task_model


@dataclass
class CascadeSequenceClassifierOutput(ModelOutput):
    r"""
    Output of [`BertForCascadeClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is provided):
            With every member computed (training, or `output_all_exits=True`): CascadeBERT's joint loss
            `sum_k loss_k` over members. Otherwise: the loss of the returned `logits`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Logits of the member that answered each example.
        exit_stage (`torch.LongTensor` of shape `(batch_size,)`):
            0-based index of the member that answered each example.
        exit_layer (`torch.LongTensor` of shape `(batch_size,)`):
            Encoder layers the routing costs each example, cumulated over the members it went through (a hard example
            of a 2-layer/12-layer cascade pays 14); with `early_exit=False`, the last member's depth.
        flops (`torch.LongTensor` of shape `(batch_size,)`):
            FLOPs this call spent on each example, counted from its real length (a multiply-add is 2 FLOPs;
            embeddings, norms and activations are free), summed over every member that ran on it, heads and poolers
            included. With `output_all_exits=True` or in training every member ran on every example, and this counts
            them all.
        confidence (`torch.FloatTensor` of shape `(batch_size,)`):
            Largest class probability of the answering member.
        all_logits (`torch.FloatTensor` of shape `(num_members, batch_size, num_labels)`, *optional*):
            Every member's logits, returned in training and with `output_all_exits=True`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The members' hidden states one after the other, the smallest member's first: for each member, its
            embeddings output then each of its layers' outputs, `num_hidden_layers + 1` tensors of shape
            `(batch_size, sequence_length, hidden_size)` with that member's depth and width (`sum_k (L_k + 1)` tensors
            in all). A member's tensors are zero for the examples it did not run on (answered by an earlier member).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The members' attention probabilities in the same order, one tensor per layer of shape `(batch_size,
            num_attention_heads, sequence_length, sequence_length)` with that member's number of heads, zero for the
            examples a member did not run on. Only the eager attention implementation computes them; with another one
            the tuple is empty (and a warning says so).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    exit_stage: torch.LongTensor | None = None
    exit_layer: torch.LongTensor | None = None
    flops: torch.LongTensor | None = None
    confidence: torch.FloatTensor | None = None
    all_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class BertForCascadeClassification(EarlyExitModelMixin, PreTrainedModel):
    r"""
    CascadeBERT (Li et al., Findings of EMNLP 2021, https://huggingface.co/papers/2012.14682): a cascade of complete
    BERT classifiers of increasing size that share a tokenizer. An example is answered by the first member whose
    confidence passes its threshold (`config.exit_criterion`, `config.exit_threshold`); the last member answers the
    rest.

    In evaluation mode the routing is real: member 1 runs on the whole batch, member `k + 1` only on the examples
    member `k` did not answer (a compacted sub-batch without the columns that are padding for all of them), and the
    answers are put back in input order. The released CascadeBERT code ran every member on every example and
    simulated the routing afterwards, saving nothing. In training mode every member runs on every example.

    Per-call settings are forward arguments and never change the module or its config: `exit_threshold`,
    `exit_criterion`, `early_exit` (`False`: only the last member runs) and `output_all_exits` (every member on every
    example, e.g. to calibrate thresholds; the answer is still chosen by the routing rule).

    Build one with [`~BertForCascadeClassification.from_members`] (separately fine-tuned checkpoints or models) or
    [`~BertForCascadeClassification.from_backbone`] (one pretrained BERT cut to several depths); a saved cascade is a
    single checkpoint that loads with `from_pretrained` and the Auto classes.

    Example:

    ```python
    >>> from transformers import AutoTokenizer

    >>> model = BertForCascadeClassification.from_backbone("path/to/bert", member_layers=[2, 12], num_labels=2)
    >>> tokenizer = AutoTokenizer.from_pretrained("path/to/bert")
    >>> sentences = ["a gem", "a slow, muddled and ultimately forgettable film"]
    >>> batch = tokenizer(sentences, padding=True, return_tensors="pt")
    >>> out = model(**batch, exit_threshold=0.8)
    >>> out.exit_stage, out.exit_layer  # which member answered, layers paid (cumulative)
    ```
    """

    config: CascadeBertConfig
    config_class = CascadeBertConfig
    base_model_prefix = "cascade"
    hub_auto_classes = ("AutoModel", "AutoModelForSequenceClassification")
    # the loss is a per-batch mean that ignores `num_items_in_batch` (see `BertWithBypassExits`)
    accepts_loss_kwargs = False
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertLayer"]
    # what the members (BERT) support; the top-level choice is passed on to every member
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: CascadeBertConfig):
        attn_implementation = config._attn_implementation  # as asked for, before the model resolves its own
        super().__init__(config)
        self.num_labels = config.num_labels
        self.members = nn.ModuleList(
            CascadeMember(config.member_config(k, attn_implementation), pooling)
            for k, pooling in enumerate(config.resolved_exit_pooling)
        )
        # each member's tokenizer when they have their own (`config.separate_tokenizers`): set by `from_members` and
        # `from_pretrained`, saved by `save_pretrained`, used by `tokenize` and the pipelines
        self.tokenizers: list | None = None
        self.post_init()

    # ----------------------------------------------------------------------------------------------------------------
    # Assembly
    # ----------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_members(
        cls,
        members: list,
        *,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        exit_pooling: str | list[str] | None = None,
        load_kwargs: dict | None = None,
        tokenizers: list | None = None,
        **config_kwargs,
    ) -> "BertForCascadeClassification":
        r"""
        Assemble a cascade from complete models, given from the smallest to the largest.

        Args:
            members (`list`):
                Each a checkpoint path or Hub id, a sequence classifier or a base model of a supported encoder (BERT,
                RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT: `AutoModelForSequenceClassification`
                / `AutoModel` of them), or a [`CascadeMember`] (a member of another cascade, e.g. of a one-member
                cascade fine-tuned on its own). Members may be of different architectures, sizes and vocabularies. A
                sequence classifier (a model object, or a checkpoint whose `architectures` name its
                `...ForSequenceClassification`) or a cascade member keeps its encoder and head weights exactly, so the
                member alone gives that model's logits. A plain encoder gets a fresh classifier (a plain BERT keeps its
                pretrained pooler when its head uses `"pooler"`).
            num_labels (`int`, *optional*):
                Defaults to the members' classifiers' (which must agree), else to `len(id2label)`, else 2.
            id2label (`dict[int, str]`, *optional*):
                Defaults to the members' non-default label names (which must agree).
            exit_pooling (`str` or `list[str]`, *optional*):
                One value or one per member. By default a member with a trained classifier uses the pooling it was
                trained with (`"pooler"` for a sequence classifier, its head's for a cascade member; anything else is
                an error) and the others the config's default (`"mean"`).
            load_kwargs (`dict`, *optional*):
                Passed to `from_pretrained` for the members given as paths or ids (e.g. `revision`, `cache_dir`).
            tokenizers (`list`, *optional*):
                One tokenizer per member (`None` where unknown). Members given as checkpoints bring their own. When
                the members' tokenizers differ (or their configs show different vocabularies), the cascade gets
                `separate_tokenizers=True`: every member tokenizes the texts itself (`model.tokenize`, the pipelines,
                the server), and the saved cascade carries every tokenizer.
            config_kwargs:
                Further [`CascadeBertConfig`] fields, e.g. `exit_criterion`, `exit_threshold`.

        Returns:
            [`BertForCascadeClassification`] in evaluation mode.

        Raises:
            ValueError: no members, members with different vocabularies whose tokenizers are not all known, members
                that disagree on `num_labels` or on the label names and their order, come in decreasing size, or a
                trained classifier asked to read anything but the pooled state it was trained on; an architecture
                without a backbone (the message lists the supported ones).
            TypeError: a member of another kind.

        Example:

        ```python
        >>> members = ["path/to/small-sst2", "path/to/large-sst2"]  # fine-tuned BertForSequenceClassification
        >>> model = BertForCascadeClassification.from_members(members, exit_threshold=0.9)
        ```
        """
        if not isinstance(members, (list, tuple)) or not members:
            raise ValueError(
                "`members` must be a non-empty list of checkpoints or models, from the smallest to the largest."
            )
        sources = [member_source(i, member, load_kwargs or {}) for i, member in enumerate(members)]
        trained = [(i, source) for i, source in enumerate(sources) if source["classifier"] is not None]

        labels = resolve_labels(trained, num_labels, id2label)
        tokenizers, separate = member_tokenizers(members, sources, tokenizers, load_kwargs or {})

        if exit_pooling is None:
            default = CascadeBertConfig.__dataclass_fields__["exit_pooling"].default
            exit_pooling = [s["pooling"] or default for s in sources]
        elif isinstance(exit_pooling, str):
            exit_pooling = [exit_pooling] * len(sources)
        for i, source in trained:
            if i < len(exit_pooling) and exit_pooling[i] != source["pooling"]:
                trained_on = (
                    "BERT's pooler output" if source["pooling"] == "pooler" else f"{source['pooling']!r} pooling"
                )
                raise ValueError(
                    f"Member {i} comes with a classifier trained on {trained_on}, so its `exit_pooling` must be "
                    f"{source['pooling']!r}, got {exit_pooling[i]!r}; to train a new head on another pooling, pass its "
                    "base model (`.bert`, `.roberta`, ...)."
                )

        if separate:
            config_kwargs = {"separate_tokenizers": True, **config_kwargs}
        config = CascadeBertConfig(
            members=[source["config"] for source in sources], exit_pooling=exit_pooling, **labels, **config_kwargs
        )
        model = cls(config)
        with torch.no_grad():
            for member, source in zip(model.members, sources):
                member.base_model.load_state_dict(source["encoder"])
                for name, state in source["head"].items():
                    module = getattr(member.head, name, None)
                    if module is not None:  # a plain BERT's pretrained pooler, kept only for a `"pooler"` head
                        module.load_state_dict(state)
        model.tokenizers = tokenizers if config.separate_tokenizers else None
        return model.eval()

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel,
        member_layers: list[int],
        *,
        num_labels: int | None = None,
        load_kwargs: dict | None = None,
        **kwargs,
    ) -> "BertForCascadeClassification":
        r"""
        Build a cascade by cutting one pretrained encoder (BERT or another supported architecture) to its first `k`
        layers for each `k` in `member_layers`.

        Every member is a complete model (its own copy of the embeddings and of the first `k` layers, its own head),
        so the members can be fine-tuned apart from each other. Heads are new; pretrained pooler weights are kept for
        members whose head uses `"pooler"`.

        Args:
            backbone (`str`, `os.PathLike` or `PreTrainedModel`):
                A checkpoint path or Hub id of a supported encoder, or its loaded base model (`BertModel`,
                `RobertaModel`, ...).
            member_layers (`list[int]`):
                Depth of each member, strictly increasing, each within `1..num_hidden_layers` of the backbone, e.g.
                `[1, 2, 6]` for all-MiniLM-L6-v2.
            num_labels (`int`, *optional*):
                Number of classes; defaults to `len(id2label)` when `id2label` is given, else 2.
            load_kwargs (`dict`, *optional*):
                Passed to `AutoModel.from_pretrained` when `backbone` is a path or id.
            kwargs:
                As for [`~BertForCascadeClassification.from_members`]: `exit_pooling`, `id2label`, and
                [`CascadeBertConfig`] fields such as `exit_criterion`, `exit_threshold`.

        Returns:
            [`BertForCascadeClassification`] in evaluation mode.

        Example:

        ```python
        >>> model = BertForCascadeClassification.from_backbone(
        ...     "sentence-transformers/all-MiniLM-L6-v2", member_layers=[1, 2, 6]
        ... )
        ```
        """
        if isinstance(backbone, (str, os.PathLike)):
            check_local_path(backbone)
            backbone_type = AutoConfig.from_pretrained(backbone, **(load_kwargs or {})).model_type
            try:
                encoder_class = backbone_for(backbone_type).model_class
            except ValueError as error:
                raise ValueError(f"`backbone` ({str(backbone)!r}): {error}") from None
            backbone = encoder_class.from_pretrained(backbone, **(load_kwargs or {}))
        elif not isinstance(backbone, PreTrainedModel) or not any(
            isinstance(backbone, encoder.model_class) for encoder in BACKBONES.values()
        ):
            raise TypeError(
                "`backbone` must be a BERT checkpoint path or id or a BertModel, or those of another supported encoder "
                f"({', '.join(encoder.model_class_name for encoder in BACKBONES.values())}), got "
                f"{type(backbone).__name__}."
            )
        depth = backbone.config.num_hidden_layers
        if (
            not isinstance(member_layers, (list, tuple))
            or not member_layers
            or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= depth for k in member_layers)
        ):
            raise ValueError(
                f"`member_layers` must be a non-empty list of layer counts within 1..{depth} (the backbone's depth), "
                f"got {member_layers!r}."
            )
        if list(member_layers) != sorted(set(member_layers)):
            raise ValueError(f"`member_layers` must be strictly increasing, got {list(member_layers)}.")
        return cls.from_members([truncated(backbone, k) for k in member_layers], num_labels=num_labels, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Cost accounting
    # ----------------------------------------------------------------------------------------------------------------

    @property
    def exit_layers(self) -> list[int]:
        """Encoder layers paid by an example answered by each member: cumulative depths, e.g. `[2, 14]`."""
        layers, total = [], 0
        for member in self.members:
            total += member.config.num_hidden_layers
            layers.append(total)
        return layers

    @property
    def full_depth_layers(self) -> int:
        """Depth of the full model, the last member: the `L` of the layer speed-up `L * N / sum(exit_layer)`."""
        return self.members[-1].config.num_hidden_layers

    def reference_flops(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs of the full model (the last member alone, what `early_exit=False` runs) per example of each real
        length; the numerator of the FLOPs speed-up. Shape `(batch,)`. With `separate_tokenizers`, `lengths` are the
        first member's tokens and every member is priced at them (the forward's `flops` counts each member at its own
        tokens)."""
        return self.members[-1].flops(lengths)

    def flops_per_exit(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs an example of each real length spends when member `k` answers it, with routing (every earlier member
        ran on it too). Shape `(num_members, batch)`; used by the calibration to price hypothetical exits (with
        `separate_tokenizers`, priced at the given lengths, see [`reference_flops`])."""
        return self._member_flops([lengths] * len(self.members)).cumsum(dim=0)

    def _member_flops(self, lengths: list[torch.Tensor]) -> torch.Tensor:
        """`(num_members, batch)`: what each member costs on each example, at its own real lengths."""
        return torch.stack([member.flops(length) for member, length in zip(self.members, lengths)])

    def plain_baseline(self) -> PreTrainedModel:
        """The stock `...ForSequenceClassification` of the full model, the last member (`BertForSequenceClassification`
        for BERT): its encoder and classifier (and pooler, when its head has one). A stock classifier reads the
        architecture's pooled state (BERT: [CLS] through a pooler), so with another pooling its predictions differ
        from the member's; its cost is the same (give or take a pooler's `2 d^2`)."""
        member = self.members[-1]
        if member.base_model_prefix != "bert":
            return plain_task_model(
                member.encoder_backbone, "sequence", member.base_model, member.head, self.num_labels
            )
        return plain_bert_model(
            BertForSequenceClassification,
            member.bert,
            member.head.classifier,
            self.config.num_labels,
            self.config._attn_implementation,
            member.head.pooler,
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------------------------------

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
        output_all_exits: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CascadeSequenceClassifierOutput | tuple:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids from the members' shared tokenizer (with `separate_tokenizers`: the first member's).
            `inputs_embeds` is not supported: every member embeds the tokens with its own embeddings (possibly of
            another width).
        input_ids_k, attention_mask_k, token_type_ids_k (`torch.LongTensor`, *optional*):
            With `config.separate_tokenizers`, the same texts tokenized by member `k`'s tokenizer (`k >= 1`; one row
            per example, in the same order; `model.tokenize(texts)` builds them all).
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            As for `BertForSequenceClassification`.
        early_exit (`bool`, *optional*):
            Defaults to `True` in evaluation mode. `False` answers with the last member only (and runs only it, unless
            every member is computed anyway).
        exit_criterion, exit_threshold (*optional*):
            Override the config's routing for this call only (see [`CascadeBertConfig`]); `exit_threshold` is one
            number or one per non-final member, or a tensor of one threshold per example (`(batch_size,)` or
            `(batch_size, num_members - 1)`): requests with different thresholds then share one forward pass.
        output_all_exits (`bool`, *optional*):
            Run every member on every example and return their logits in `all_logits`; the answering member is still
            chosen by the routing rule, from the same logits. Always on in training.
        output_attentions, output_hidden_states, return_dict (`bool`, *optional*):
            As for transformers models (defaults from the config); see [`CascadeSequenceClassifierOutput`] for how the
            members' layers are listed. `return_dict=False` returns the output's non-`None` fields as a tuple.

        Any other keyword argument is an error (transformers' `num_items_in_batch` is accepted and unused: the loss is
        a per-batch mean).
        """
        others = pop_member_inputs(kwargs, len(self.members), self.config.separate_tokenizers)
        check_forward_kwargs(self, kwargs)
        call = ExitCall.start(
            self, early_exit, output_all_exits, exit_threshold, output_attentions, output_hidden_states, return_dict
        )
        if inputs_embeds is not None or input_ids is None:
            raise ValueError(
                "BertForCascadeClassification needs `input_ids` (and does not take `inputs_embeds`): every member "
                "embeds the tokens with its own embeddings."
            )
        rule = self.config.exit_rule(exit_criterion=exit_criterion, exit_threshold=call.exit_threshold)
        member_inputs = self._member_inputs(input_ids, attention_mask, token_type_ids, position_ids, others)
        if call.example_thresholds is not None:
            rule = rule.for_examples(self._stage_thresholds(call.example_thresholds), input_ids.shape[0])
        member_lengths = []
        for inputs in member_inputs:
            if member_lengths and inputs is member_inputs[0]:  # one shared tokenizer
                member_lengths.append(member_lengths[0])
                continue
            member_lengths.append(inputs["attention_mask"].sum(dim=-1))
            check_mask(inputs["attention_mask"], member_lengths[-1])
        lengths = member_lengths[0]
        member_flops = self._member_flops(member_lengths)
        last = len(self.members) - 1
        # while recording, every sequence position is kept, so that the recorded states need no mapping
        layer_outputs = call.record_layers(lengths.shape[0])

        all_logits = None
        if call.all_exits:
            stacked = torch.stack(
                [
                    member(**_drop_padding(inputs, None, member, layer_outputs), layer_outputs=layer_outputs)
                    for member, inputs in zip(self.members, member_inputs)
                ]
            )
            logits, exit_stage, all_logits = call.pick_exits(stacked, rule, lengths, len(self.members))
            flops = member_flops.sum(dim=0)
        elif not call.early_exit:
            if layer_outputs is not None:
                for member, inputs in zip(self.members[:-1], member_inputs):
                    member.record_skipped(
                        layer_outputs, *inputs["input_ids"].shape, like=self.members[-1].head.classifier.weight
                    )
            last_member = self.members[-1]
            logits = last_member(
                **_drop_padding(member_inputs[-1], None, last_member, layer_outputs), layer_outputs=layer_outputs
            )
            exit_stage = torch.full_like(lengths, last)
            flops = member_flops[-1]
        else:
            logits, exit_stage = self._route(member_inputs, rule, layer_outputs)
            examples = torch.arange(lengths.shape[0], device=lengths.device)
            flops = member_flops.cumsum(dim=0)[exit_stage, examples]

        if call.early_exit:
            exit_layer = torch.tensor(self.exit_layers, device=lengths.device)[exit_stage]
        else:
            exit_layer = torch.full_like(lengths, self.full_depth_layers)

        loss = None
        if labels is not None:
            problem_type = check_sequence_labels(self.config, labels, lengths.shape[0])
            loss = exit_loss(labels, logits, all_logits, problem_type, [1.0] * len(self.members))
            if all_logits is not None:  # CascadeBERT's sum over members: the mean over members times their number
                loss = len(self.members) * loss

        return call.finish(
            CascadeSequenceClassifierOutput,
            self.config,
            loss=loss,
            logits=logits,
            exit_stage=exit_stage,
            exit_layer=exit_layer,
            flops=flops,
            confidence=max_prob(logits),
            all_logits=all_logits,
        )

    def _member_inputs(self, input_ids, attention_mask, token_type_ids, position_ids, others: list[dict]) -> list:
        """Each member's inputs, a dict of `(batch, seq)` tensors (one shared dict when the members share a tokenizer),
        with clear errors."""
        first = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
        )
        if not self.config.separate_tokenizers:
            return [check_member_inputs(self, None, first)] * len(self.members)
        batch_size = input_ids.shape[0] if isinstance(input_ids, torch.Tensor) else None
        return [check_member_inputs(self, k, inputs, batch_size) for k, inputs in enumerate([first, *others])]

    def _route(
        self, member_inputs: list[dict], rule: ExitRule, layer_outputs: LayerOutputs | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference path: each member runs on the examples that the members before it passed on."""
        batch_size, seq_len = member_inputs[0]["input_ids"].shape
        device = member_inputs[0]["input_ids"].device
        batch = ActiveBatch(batch_size, seq_len, device, layer_outputs, rule.example_thresholds is not None)
        exit_stage = torch.full((batch_size,), len(self.members) - 1, dtype=torch.long, device=device)
        out_logits = None
        for k, (member, inputs) in enumerate(zip(self.members, member_inputs)):
            if batch.rows.numel() == 0:  # every example answered (while recording): the rest ran on nothing
                member.record_skipped(layer_outputs, batch_size, inputs["input_ids"].shape[1], like=out_logits)
                continue
            rows = batch.recorded_rows
            logits = member(
                **_drop_padding(inputs, rows, member, layer_outputs), layer_outputs=layer_outputs, rows=rows
            )
            if out_logits is None:
                out_logits = logits.new_empty(batch_size, logits.shape[-1])
            if k == len(self.members) - 1:
                batch.scatter(None, (out_logits, logits))
                break
            fires, _ = rule.step(k, logits, None, None, batch.threshold_rows)
            if bool(fires.any()):
                batch.scatter(fires, (out_logits, logits), (exit_stage, k))
                if batch.drop_rows(~fires) is None and layer_outputs is None:  # every example answered
                    break
        return out_logits, exit_stage

    def _stage_thresholds(self, thresholds: torch.Tensor) -> torch.Tensor:
        """Per-example thresholds `(batch,)` or `(batch, stages)` (one per non-final member) in the rule's layout, one
        per member (the last member's is never read)."""
        stages = self.config.num_exit_thresholds
        if thresholds.dim() == 2 and thresholds.shape[1] == stages:
            return torch.cat([thresholds, thresholds[:, -1:]], dim=1)
        if thresholds.dim() == 2:
            raise ValueError(
                f"`exit_threshold` per example must have shape (batch,) or (batch, {stages}) (one per non-final "
                f"member), got {tuple(thresholds.shape)}."
            )
        return thresholds

    # ----------------------------------------------------------------------------------------------------------------
    # Tokenizers (members with tokenizers of their own)
    # ----------------------------------------------------------------------------------------------------------------

    def tokenize(self, text, text_pair=None, **tokenizer_kwargs) -> dict:
        """`text` (one text or a list; with `text_pair` for pairs) tokenized for every member by its own tokenizer
        (`config.separate_tokenizers`), each padded and truncated at its own member's limit: the forward's inputs,
        `input_ids`, `attention_mask` of the first member and `input_ids_k`, `attention_mask_k` of member `k`.

        Example:

        ```python
        >>> model = BertForCascadeClassification.from_members(["path/to/small-roberta", "path/to/large-deberta"])
        >>> out = model(**model.tokenize(["a gem", "a slow, muddled and ultimately forgettable film"]))
        ```
        """
        return tokenize_for_members(self, text, text_pair, **tokenizer_kwargs)

    def _save_extra_files(self, save_directory) -> None:
        if self.config.separate_tokenizers:
            save_tokenizers(self.tokenizers, save_directory)

    def _load_extra_files(self, pretrained_model_name_or_path, hub_kwargs: dict) -> None:
        if self.config.separate_tokenizers and pretrained_model_name_or_path is not None:
            self.tokenizers = load_tokenizers(pretrained_model_name_or_path, len(self.members), hub_kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Embeddings
    # ----------------------------------------------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Embedding:
        """The word embeddings of the first member, which every input goes through first. Each member has its own
        (their widths may differ); they share the vocabulary, so [`resize_token_embeddings`] resizes them all."""
        return self.members[0].get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Sets the first member's word embeddings (see [`get_input_embeddings`]); the other members keep theirs."""
        self.members[0].set_input_embeddings(value)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resizes the word embeddings of every member (they share one tokenizer) and records the new vocabulary size
        in each member's config; as transformers' `resize_token_embeddings` otherwise. Returns the first member's
        embeddings."""
        if self.config.separate_tokenizers:
            raise ValueError(
                "The members of this cascade have tokenizers of their own, of different sizes: resize the member whose "
                "tokenizer grew, `model.members[k].resize_token_embeddings(len(model.tokenizers[k]))`, and set "
                "`model.config.members[k]['vocab_size']` to its new size."
            )
        for k, member in enumerate(self.members):
            member.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
            self.config.members[k]["vocab_size"] = member.config.vocab_size
        if new_num_tokens is not None or pad_to_multiple_of is not None:
            self.vocab_size = self.config.vocab_size  # as transformers' own `resize_token_embeddings` records it
        return self.get_input_embeddings()


def _drop_padding(inputs: dict, rows: torch.Tensor | None, member: CascadeMember, layer_outputs) -> dict:
    """A member's `inputs` (tensors of the caller's batch) for the examples `rows` still running (`None`: all), without
    the sequence positions that are padding in every one of them, unless layer outputs are recorded.

    Every token keeps the position it has in the caller's batch: a member that numbers positions by column (BERT,
    ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT) is given the caller's columns as `position_ids` (with left padding,
    positions counted in the compacted batch would shift every token and make a row's answer depend on its
    batch-mates); RoBERTa and XLM-R number them from the padding, which dropping columns does not change.
    """
    if rows is not None:
        inputs = {name: None if t is None else t.index_select(0, rows) for name, t in inputs.items()}
    if layer_outputs is not None:
        return inputs
    columns = kept_columns(inputs["attention_mask"])
    if columns is None:
        return inputs
    position_ids = inputs["position_ids"]
    inputs = {name: None if t is None else t.index_select(1, columns) for name, t in inputs.items()}
    if position_ids is None and not member.encoder_backbone.positions_after_padding:
        inputs["position_ids"] = columns.expand(inputs["input_ids"].shape[0], -1)
    return inputs


__all__ = ["BertForCascadeClassification", "CascadeMember", "CascadeSequenceClassifierOutput"]
