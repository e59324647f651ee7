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
"""Configurations of the early-exit BERT families.

Each family has its own `model_type` (transformers refuses to register a custom model under `BertConfig`). Inference
behaviour (criterion, thresholds, patience, window) lives here so that it is saved and published with the checkpoint;
training behaviour lives in `EarlyExitTrainingArguments`.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, PreTrainedConfig
from transformers.utils import logging

from .backbones import SUPPORTED_MODEL_TYPES, backbone_for, build_encoder_config, encoder_config_dict
from .checkpoint_utils import (
    FAMILY_CLASSES,
    check_local_path,
    family_config_fields,
    raise_if_other_family,
    warn_unknown_config_fields,
)
from .configuration_encoder import EncoderConfigMixin, family_dict_of_encoder, is_other_encoder
from .exit_utils import EXIT_CRITERIA, ExitRule, check_patience
from .token_exit_utils import TokenExitRule, cached_token_exit_rule


logger = logging.get_logger(__name__)


class _CheckpointKindMixin:
    """What a family config accepts to read from a checkpoint.

    - A local path that does not exist is named (transformers would take it for a Hub id).
    - A checkpoint of another family, or of another model type, is refused with a message naming what it holds.
    - A plain `bert` checkpoint: the families with `starts_from_plain_bert` (bypass, token) start from one; its
      `model_type` is rewritten to the family's, which keeps transformers from warning that the checkpoint is of another
      type. A cascade does not (cut a BERT checkpoint with `from_backbone` instead).
    - A plain checkpoint of another supported encoder (RoBERTa, XLM-R, ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT):
      the same families start from it, its config becoming the family's `encoder_config` (see
      `configuration_encoder`); an architecture without a backbone is refused with the list of the supported ones.
    - A `bert` checkpoint that holds an early-exit family's settings (its `config.json` edited, or written by another
      tool): loaded by that family's class with a warning, since transformers' Auto classes would load it as a plain
      BERT with new random heads; refused by another family's class.
    """

    starts_from_plain_bert = False

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        check_local_path(pretrained_model_name_or_path)
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if is_other_encoder(config_dict.get("model_type")):
            if cls.starts_from_plain_bert:
                return family_dict_of_encoder(config_dict, cls.model_type, pretrained_model_name_or_path), kwargs
            raise ValueError(_not_a_cascade(pretrained_model_name_or_path, config_dict["model_type"]))
        if config_dict.get("model_type") != "bert":
            raise_if_other_family(cls, config_dict, pretrained_model_name_or_path)
            return config_dict, kwargs
        source = str(pretrained_model_name_or_path)
        found = _family_of_settings(config_dict)
        if found is None and cls.starts_from_plain_bert:
            return {**config_dict, "model_type": cls.model_type}, kwargs
        if found is None:
            raise ValueError(_not_a_cascade(source, "bert"))
        if found is not cls:
            raise ValueError(
                f"{source!r} says model_type 'bert' but holds the settings of a {FAMILY_CLASSES[found.model_type]} "
                f"checkpoint ({', '.join(sorted(_own_settings(found) & set(config_dict)))}); load it with "
                f"{FAMILY_CLASSES[found.model_type]}.from_pretrained."
            )
        logger.warning(
            f"{source!r} says model_type 'bert' but holds {FAMILY_CLASSES[cls.model_type]} settings: loading it as a "
            f"{FAMILY_CLASSES[cls.model_type]}. Save it again to write its model_type ({cls.model_type!r}); "
            "transformers' Auto classes would load it as a plain BERT, with new random heads instead of its exits."
        )
        return {**config_dict, "model_type": cls.model_type}, kwargs


def _not_a_cascade(source, model_type: str) -> str:
    name = "BERT" if model_type == "bert" else model_type
    return (
        f"{str(source)!r} is a plain {name} checkpoint (model_type {model_type!r}), not a cascade: cut it into one with "
        "`BertForCascadeClassification.from_backbone(path, member_layers=[...])`, or assemble fine-tuned "
        "classifiers with `from_members`."
    )


class _LoadedConfigChecksMixin:
    """Checks of a config read from a checkpoint.

    - Fields this version does not know (a checkpoint from a newer version) are kept, as transformers does, but named
      in a warning (see `checkpoint_utils.unknown_config_fields`).
    - Settings passed as keyword arguments (`from_pretrained(path, exit_threshold=...)`) are set by transformers after
      the config's own validation ran; they are validated here, so a bad value fails before any weight is loaded.
    """

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        warn_unknown_config_fields(cls, config_dict)
        loaded = super().from_dict(config_dict, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        config.validate()
        return loaded


class _ExitLayersMixin:
    """`exit_layers` handling shared by the multi-exit families (the field itself is declared by each config)."""

    @property
    def resolved_exit_layers(self) -> list[int]:
        """The 1-based exit layers, `exit_layers` or every layer."""
        if self.exit_layers is None:
            return list(range(1, self.num_hidden_layers + 1))
        return list(self.exit_layers)

    @property
    def num_exits(self) -> int:
        return self.num_hidden_layers if self.exit_layers is None else len(self.exit_layers)

    @property
    def num_exit_thresholds(self) -> int:
        """Length of a per-exit `exit_threshold` list: one per exit (the last exit's value is never read)."""
        return self.num_exits

    def validate_exit_layers(self):
        layers = self.resolved_exit_layers
        if not layers:
            raise ValueError("`exit_layers` must name at least one layer.")
        if any(isinstance(layer, bool) or not 1 <= layer <= self.num_hidden_layers for layer in layers):
            raise ValueError(
                f"`exit_layers` must be 1-based layer numbers within 1..{self.num_hidden_layers}, got {layers}."
            )
        if layers != sorted(set(layers)):
            raise ValueError(f"`exit_layers` must be strictly increasing, got {layers}.")
        if layers[-1] != self.num_hidden_layers:
            raise ValueError(
                f"`exit_layers` must end with the last layer ({self.num_hidden_layers}), which answers every example "
                f"that did not exit earlier; got {layers}."
            )


@strict
class BypassBertConfig(
    _LoadedConfigChecksMixin, _ExitLayersMixin, _CheckpointKindMixin, EncoderConfigMixin, BertConfig
):
    r"""
    Configuration of [`BertWithBypassExits`]: a BERT encoder with an exit head after chosen layers, block-wise bypass
    modules (BADGE), and the classic exit criteria. Every [`~transformers.BertConfig`] field keeps its meaning.

    Args:
        encoder_config (`dict` or `PreTrainedConfig`, *optional*):
            The encoder, when it is not BERT: the config of a RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2 or
            ModernBERT model (stored as a dict with its `model_type`). `None` (the default): a BERT encoder, described
            by the BERT fields of this config. `from_pretrained` on a plain checkpoint of one of those architectures
            sets it; the BERT fields the package reads (sizes, depth) then copy the encoder's.
        exit_layers (`list[int]`, *optional*):
            1-based encoder layers that carry an exit head, increasing, ending with the last layer (which answers every
            example that did not leave earlier). Defaults to every layer.
        exit_criterion (`str`, *optional*, defaults to `"max_prob"`):
            `"max_prob"` (leave when `max_c p(c) >= threshold`), `"entropy"` (`H(p) < threshold`, nats),
            `"normalized_entropy"` (`H(p) / log C <= threshold`), `"patience"` (PABEE: the prediction did not change
            for `patience` consecutive exits) or `"divergence"` (DGE: `D(p_i, p_{i-1}) < threshold` for `patience`
            consecutive exits).
        exit_threshold (`float` or `list[float]`, *optional*):
            One value, or one per exit. Defaults to 0.9 (`max_prob`), 0.3 (`entropy`, `normalized_entropy`) or 0.01
            (`divergence`). Unused by `patience`.
        patience (`int`, *optional*, defaults to 1):
            Consecutive agreeing exits needed by `"patience"` and `"divergence"`.
        divergence (`str`, *optional*, defaults to `"jsd"`):
            `"jsd"` (true Jensen-Shannon), `"kl"` (`KL(p_i || p_{i-1})`) or `"symmetric_kl"`.
        regression_tolerance (`float`, *optional*, defaults to 0.1):
            With `num_labels == 1`, two predictions agree when they differ by less than this.
        exit_pooling (`str`, *optional*, defaults to `"mean"`):
            What an exit head reads: `"cls"` (the [CLS] state), `"pooler"` ([CLS] through a per-exit dense + tanh,
            like BERT's pooler) or `"mean"` (mean over real tokens). Mean is the default because shallow [CLS] states
            of sentence-embedding backbones such as all-MiniLM-L6-v2 are weak.
        use_bypass (`bool`, *optional*, defaults to `True`):
            Adds BADGE's block-wise bypasses (our interpretation, see below).
        bypass_block_size (`int`, *optional*, defaults to 2):
            Consecutive layers that share one bypass module.
        bypass_dim (`int`, *optional*, defaults to 32):
            Bottleneck width `r` of a bypass module.
        bypass_grad_scale (`float`, *optional*, defaults to 1.0):
            Scale applied to the gradient that intermediate exits' losses send into the backbone (1.0: unchanged,
            0.0: intermediate exits do not train the backbone). The last exit is never scaled.

    BADGE's paper text and code are not public. Our interpretation of a block-wise bypass: layers are grouped into
    blocks of `bypass_block_size`; each block owns a bottleneck `Linear(d, r) -> GELU -> Linear(r, d)` with a
    zero-initialised output, added residually to the pooled state before the block's exit heads, so exit-specific
    features are learned off the main residual stream. It costs `4 d r` FLOPs per exit evaluated.

    Example:

    ```python
    >>> config = BypassBertConfig(num_hidden_layers=6, exit_criterion="entropy", exit_threshold=0.2)
    >>> config.resolved_exit_layers
    [1, 2, 3, 4, 5, 6]
    ```"""

    model_type = "bypass-bert"
    starts_from_plain_bert = True

    encoder_config: dict | PreTrainedConfig | None = None
    exit_layers: list[int] | None = None
    exit_criterion: Literal["max_prob", "entropy", "normalized_entropy", "patience", "divergence"] = "max_prob"
    exit_threshold: float | int | list[float | int] | None = None
    patience: int = 1
    divergence: Literal["jsd", "kl", "symmetric_kl"] = "jsd"
    regression_tolerance: float | int = 0.1
    exit_pooling: Literal["cls", "pooler", "mean"] = "mean"
    use_bypass: bool = True
    bypass_block_size: int = 2
    bypass_dim: int = 32
    bypass_grad_scale: float | int = 1.0

    def exit_rule(self, **overrides) -> ExitRule:
        """The validated [`ExitRule`] of this config, with optional per-call overrides (`exit_criterion`,
        `exit_threshold`, `patience`, `divergence`, `regression_tolerance`); `None` values keep the config's."""
        settings = {
            "criterion": self.exit_criterion,
            "threshold": self.exit_threshold,
            "patience": self.patience,
            "divergence": self.divergence,
            "regression_tolerance": self.regression_tolerance,
        }
        renamed = {"exit_criterion": "criterion", "exit_threshold": "threshold"}
        for key, value in overrides.items():
            if value is not None:
                settings[renamed.get(key, key)] = value
        if overrides.get("exit_criterion") is not None and overrides.get("exit_threshold") is None:
            if overrides["exit_criterion"] != self.exit_criterion:
                # the saved threshold belongs to another criterion's scale
                settings["threshold"] = None
        return ExitRule.build(num_exits=self.num_exits, num_labels=self.num_labels, **settings)

    def validate_exit_rule(self):
        check_patience(self.patience)
        self.exit_rule()

    def validate_num_labels(self):
        if self.num_labels < 1:
            raise ValueError(
                f"num_labels must be >= 1 (the size of every exit head; 1 for regression), got {self.num_labels}."
            )

    def validate_bypass(self):
        if self.bypass_block_size < 1:
            raise ValueError(f"`bypass_block_size` must be >= 1, got {self.bypass_block_size}.")
        if self.bypass_dim < 1:
            raise ValueError(f"`bypass_dim` must be >= 1, got {self.bypass_dim}.")
        if not self.bypass_grad_scale >= 0:
            raise ValueError(f"`bypass_grad_scale` must be >= 0, got {self.bypass_grad_scale}.")


# A cascade routes on how sure a member is of its own answer. `patience` and `divergence` compare a member with the one
# before it, so the first (cheapest) member could never answer and every example would pay for two members at least.
CASCADE_EXIT_CRITERIA: tuple[str, ...] = ("max_prob", "entropy", "normalized_entropy")

# Keys of a member's saved config that describe a checkpoint rather than the member's architecture.
_MEMBER_BOOKKEEPING_KEYS = ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype")
# The cascade's own label fields apply to every member.
_MEMBER_LABEL_KEYS = ("id2label", "label2id", "num_labels", "problem_type")


def _member_dict(index: int, member, num_labels: int) -> dict:
    """A member's architecture as the complete, JSON-ready dict that the cascade config stores: BERT's fields as they
    always were, another supported encoder's as its `encoder_config_dict` (with its `model_type`)."""
    model_type = member.model_type if isinstance(member, PreTrainedConfig) else "bert"
    if isinstance(member, dict):
        model_type = member.get("model_type", "bert")
    if model_type != "bert":
        if not is_other_encoder(model_type):
            raise ValueError(
                f"`members[{index}]` has model_type {model_type!r}; cascade members are plain BERT models or models "
                f"of another supported encoder (model_type {', '.join(SUPPORTED_MODEL_TYPES)})."
            )
        values = member.to_diff_dict() if isinstance(member, PreTrainedConfig) else dict(member)
        _check_member_labels(index, values, num_labels)  # labels other than the defaults must agree
        return encoder_config_dict(values, f"`members[{index}]`")
    if isinstance(member, PreTrainedConfig):
        member = member.to_diff_dict()
    elif isinstance(member, dict):
        member = {"model_type": "bert", **member}
    member = {key: value for key, value in member.items() if key not in _MEMBER_BOOKKEEPING_KEYS}
    _check_member_labels(index, member, num_labels)
    member = {key: value for key, value in member.items() if key not in _MEMBER_LABEL_KEYS}
    try:
        # every BERT field written out, so a member never depends on the defaults of the installed transformers
        member = BertConfig(**member).to_diff_dict()
    except Exception as err:  # BertConfig's own strict validation, re-raised with the member's position
        raise ValueError(f"`members[{index}]` is not a valid BERT configuration: {err}") from err
    return {key: value for key, value in member.items() if key not in _MEMBER_BOOKKEEPING_KEYS + _MEMBER_LABEL_KEYS}


def _check_member_labels(index: int, member: dict, num_labels: int) -> None:
    id2label = member.get("id2label")
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(
            f"`members[{index}]` is configured for {len(id2label)} labels but the cascade for {num_labels}; "
            f"set `num_labels` (or `id2label`) on the cascade config, it applies to every member."
        )


@strict
class CascadeBertConfig(_LoadedConfigChecksMixin, _CheckpointKindMixin, PreTrainedConfig):
    r"""
    Configuration of [`BertForCascadeClassification`]: a cascade of complete BERT classifiers of increasing size
    (CascadeBERT, Li et al., Findings of EMNLP 2021, https://huggingface.co/papers/2012.14682). An example is answered
    by the first member whose confidence passes its threshold; the last member answers the rest.

    The cascade's own `num_labels`, `id2label`, `label2id` and `problem_type` apply to every member.

    Args:
        members (`list[dict | PreTrainedConfig]`, *optional*):
            The members' encoder configurations, from the smallest to the largest; each is a complete model with its
            own depth and width (hidden sizes may differ): BERT, or any supported encoder (RoBERTa, XLM-RoBERTa,
            ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT; their configs keep their `model_type`), architectures may
            differ. Stored as one dict per member, so the config saves as one `config.json` and reloads exactly.
            Unless `separate_tokenizers`, members share a tokenizer: `vocab_size` and every `*_token_id` must agree.
            They must come in order of size, measured by the encoder FLOPs of a one-token input (for BERT
            `num_hidden_layers x (8 d^2 + 4 d f + 4 d)`, the cost per token before attention grows); equal sizes are
            allowed, a smaller member after a larger one is an error (it would only add cost to the examples that
            reach it). Label fields of a member are dropped (they must agree with the cascade's). Defaults to
            CascadeBERT's own setting: BERT-base cut to its first 2 layers, then BERT-base (12 layers), as
            `BertConfig()` describes BERT-base.
        separate_tokenizers (`bool`, *optional*, defaults to `False`):
            Each member has a tokenizer of its own (members of different architectures or vocabularies): the forward
            takes every member's inputs (`input_ids` for the first, `input_ids_1`, `attention_mask_1`, ... for the
            others; `model.tokenize(texts)` builds them), the saved cascade carries every member's tokenizer, and the
            pipelines tokenize each text with each of them.
        exit_criterion (`str`, *optional*, defaults to `"max_prob"`):
            How a member decides to answer: `"max_prob"` (`max_c p(c) > threshold`, CascadeBERT's rule), `"entropy"`
            (`H(p) < threshold`, nats) or `"normalized_entropy"` (`H(p) / log C <= threshold`). `"patience"` and
            `"divergence"` are refused: they compare a member with the previous one, so the first member could never
            answer.
        exit_threshold (`float` or `list[float]`, *optional*):
            One value, or one per non-final member (the last member answers every example that reaches it). Defaults
            to 0.9 (`max_prob`) or 0.3 (`entropy`, `normalized_entropy`).
        exit_pooling (`str` or `list[str]`, *optional*, defaults to `"mean"`):
            What each member's head reads, one value for all or one per member: `"cls"` (the [CLS] state), `"pooler"`
            ([CLS] through dense + tanh, BERT's pooler: what a fine-tuned `BertForSequenceClassification` uses) or
            `"mean"` (mean over real tokens; the default, because shallow [CLS] states of sentence-embedding backbones
            such as all-MiniLM-L6-v2 are weak and its pooler puts a 1-layer member at chance level).

    Example:

    ```python
    >>> from transformers import BertConfig

    >>> small = BertConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=12, intermediate_size=1536)
    >>> large = BertConfig(hidden_size=768, num_hidden_layers=12)
    >>> config = CascadeBertConfig(members=[small, large], num_labels=2, exit_threshold=0.8)
    >>> config.member_config(1).hidden_size
    768
    ```"""

    model_type = "cascade-bert"

    members: list[dict | PreTrainedConfig] | None = None
    exit_criterion: Literal["max_prob", "entropy", "normalized_entropy", "patience", "divergence"] = "max_prob"
    exit_threshold: float | int | list[float | int] | None = None
    exit_pooling: Literal["cls", "pooler", "mean"] | list[Literal["cls", "pooler", "mean"]] = "mean"
    separate_tokenizers: bool = False

    def __post_init__(self, **kwargs):
        vocab_size = kwargs.pop("vocab_size", None)
        super().__post_init__(**kwargs)
        if self.members is None:  # CascadeBERT's 2-layer / 12-layer BERT-base
            self.members = [BertConfig(num_hidden_layers=2), BertConfig()]
        self.members = [_member_dict(i, member, self.num_labels) for i, member in enumerate(self.members)]
        if vocab_size is not None:
            self.vocab_size = vocab_size
        types = [member.get("model_type", "bert") for member in self.members]
        vocabularies = {(member.get("vocab_size"), member.get("pad_token_id")) for member in self.members}
        if not self.separate_tokenizers and len(set(types)) > 1 and len(vocabularies) > 1:
            raise ValueError(
                f"The members are of different architectures ({', '.join(f'model_type {t!r}' for t in types)}) "
                "with different vocabularies, so they cannot share one tokenizer: set `separate_tokenizers=True` (each "
                "member then reads its own tokens), or assemble them with `BertForCascadeClassification.from_members`, "
                "which does."
            )

    @property
    def num_members(self) -> int:
        return len(self.members or [])

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size of the members' shared tokenizer (setting it sets every member's)."""
        if not self.members:
            return None
        first = self.members[0]
        return first.get("vocab_size") if isinstance(first, dict) else first.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        for member in self.members or []:
            if isinstance(member, dict):
                member["vocab_size"] = value
            else:
                member.vocab_size = value

    @property
    def num_exit_thresholds(self) -> int:
        """Length of a per-stage `exit_threshold` list: one per non-final member."""
        return self.num_members - 1

    def member_config(self, index: int, attn_implementation: str | None = "cascade") -> PreTrainedConfig:
        """A new config of member `index` ([`~transformers.BertConfig`], or that of the member's architecture), with
        the cascade's labels and its attention implementation (or `attn_implementation`, `None` for the
        architecture's default)."""
        if attn_implementation == "cascade":
            attn_implementation = self._attn_implementation
        labels = dict(
            id2label=dict(self.id2label),
            label2id=dict(self.label2id) if self.label2id is not None else None,
            problem_type=self.problem_type,
            attn_implementation=attn_implementation,
        )
        member = self.members[index]
        if member.get("model_type", "bert") != "bert":
            return build_encoder_config(member, **labels)
        return BertConfig(**member, **labels)

    @property
    def resolved_exit_pooling(self) -> list[str]:
        """The pooling of each member's head."""
        if isinstance(self.exit_pooling, str):
            return [self.exit_pooling] * self.num_members
        return list(self.exit_pooling)

    def exit_rule(
        self, exit_criterion: str | None = None, exit_threshold: float | list[float] | None = None
    ) -> ExitRule:
        """The validated routing rule, with optional per-call overrides; `None` keeps the config's value. A criterion
        other than the config's, given without a threshold, uses its own default threshold (the saved one belongs to
        another scale)."""
        criterion = self.exit_criterion if exit_criterion is None else exit_criterion
        threshold = exit_threshold
        if threshold is None and criterion == self.exit_criterion:
            threshold = self.exit_threshold
        if criterion in EXIT_CRITERIA and criterion not in CASCADE_EXIT_CRITERIA:
            raise ValueError(
                f"Exit criterion {criterion!r} compares a member with the previous one, so the first member of a "
                f"cascade could never answer; a cascade routes on each member's own confidence: use one of "
                f"{CASCADE_EXIT_CRITERIA}."
            )
        if self.num_labels < 2:
            raise ValueError(
                f"A cascade routes on class probabilities and needs num_labels >= 2, got num_labels={self.num_labels}."
            )
        if isinstance(threshold, (list, tuple)):
            if len(threshold) != self.num_members - 1:
                raise ValueError(
                    f"`exit_threshold` has {len(threshold)} values but the cascade has {self.num_members - 1} "
                    f"non-final members; give one number or exactly one per non-final member (the last member answers "
                    f"every example that reaches it)."
                )
            # ExitRule keeps one value per exit; the last member's is never read
            threshold = [*threshold, threshold[-1]] if threshold else None
        # CascadeBERT answers with member k when `max p_k > threshold` (paper and released code)
        return ExitRule.build(
            criterion, threshold, num_exits=self.num_members, num_labels=self.num_labels, strict_confidence=True
        )

    # named to run before the other validators (they are called in alphabetical order), which need the members
    def validate_cascade_members(self):
        if not self.members:
            raise ValueError(
                "`members` must list at least one BERT configuration, from the smallest to the largest (to cut one "
                "BERT checkpoint into members, use `BertForCascadeClassification.from_backbone`)."
            )
        configs = [self.member_config(i, attn_implementation=None) for i in range(self.num_members)]
        token_fields = ["vocab_size"] + sorted(
            {name for config in configs for name in config.to_dict() if name.endswith("_token_id")}
        )
        for name in token_fields if not self.separate_tokenizers else ():
            values = [getattr(config, name, None) for config in configs]
            if len({repr(value) for value in values}) > 1:
                raise ValueError(
                    f"Cascade members must share one tokenizer, but their `{name}` differ: {values} (members 0.."
                    f"{len(values) - 1}, model_type {', '.join(repr(config.model_type) for config in configs)}). Members with tokenizers of their own need `separate_tokenizers=True` "
                    "(`BertForCascadeClassification.from_members` sets it when given their tokenizers, `tokenizers=[...]`)."
                )
        sizes = [
            config.num_hidden_layers * backbone_for(config).layer_flops(config, 1, layer_index=1) for config in configs
        ]
        for k in range(1, len(sizes)):
            if sizes[k] < sizes[k - 1]:
                raise ValueError(
                    f"Cascade members must be ordered from the smallest to the largest, but member {k} "
                    f"({sizes[k]:,} encoder FLOPs per token) is smaller than member {k - 1} ({sizes[k - 1]:,}); a "
                    f"larger member before a smaller one only adds cost to the examples it passes on."
                )

    def validate_exit_pooling(self):
        poolings = self.resolved_exit_pooling
        if len(poolings) != self.num_members:
            raise ValueError(
                f"`exit_pooling` has {len(poolings)} values but the cascade has {self.num_members} members; give one "
                "value or one per member."
            )

    def validate_exit_rule(self):
        self.exit_rule()


@strict
class TokenExitBertConfig(
    _LoadedConfigChecksMixin, _ExitLayersMixin, _CheckpointKindMixin, EncoderConfigMixin, BertConfig
):
    r"""
    Configuration of [`BertForTokenEarlyExit`]: a BERT token classifier with a head per exit layer and
    sequence-labelling early exit, SENTEE or TOKEE (Li et al., ACL 2021, https://aclanthology.org/2021.acl-long.16).
    Every [`~transformers.BertConfig`] field keeps its meaning; `num_labels` is the number of tags.

    The uncertainty of a word at an exit is `u = H(p) / log C` of that exit's prediction at the word's first
    word-piece, in `[0, 1]`. Decisions are made per sentence (SENTEE) or per word (TOKEE), never per batch.

    Args:
        encoder_config (`dict` or `PreTrainedConfig`, *optional*):
            The encoder, when it is not BERT: the config of a RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2 or
            ModernBERT model (stored as a dict with its `model_type`). `None` (the default): a BERT encoder, described
            by the BERT fields of this config. `from_pretrained` on a plain checkpoint of one of those architectures
            sets it; the BERT fields the package reads (sizes, depth) then copy the encoder's.
        exit_layers (`list[int]`, *optional*):
            1-based encoder layers that carry a token-classification head, increasing, ending with the last layer
            (which answers every word still active). Defaults to every layer.
        exit_mode (`str`, *optional*, defaults to `"token"`):
            `"sentence"` (SENTEE: a whole sentence leaves at the first exit where the maximum, or mean, of `u` over
            its words is below the threshold) or `"token"` (TOKEE: word `j` leaves at the first exit where
            `max_{|k - j| <= W // 2} u_k` is below the threshold).
        exit_threshold (`float` or `list[float]`, *optional*, defaults to 0.1):
            Threshold on `u`, in `[0, 1]`: one value, or one per exit (with `threshold_schedule="constant"`). The test
            is strict (`<`), so 0 never exits.
        threshold_schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"`: `exit_threshold` as given. `"paper"`: the released code's rule, `exit_threshold` for exits
            at layers `<= L // 2` and `min(2 * exit_threshold, threshold_cap)` above.
        threshold_cap (`float`, *optional*, defaults to 1.0):
            Cap of the doubled threshold of the `"paper"` schedule, in `[0, 1]`.
        window_size (`int`, *optional*, defaults to 5):
            TOKEE's window `W` (odd, >= 1), counted in words, not word-pieces; clipped at the sentence's edges.
            The released recipes: about 2x with `W=15, tau=0.1`, 3x with `W=5, tau=0.15`, 4x with `W=5, tau=0.25`.
        sentence_pooling (`str`, *optional*, defaults to `"max"`):
            SENTEE's statistic over a sentence's words: `"max"` or `"mean"`.

    Exited words and the window (a deliberate choice): an exited word counts as certain (`u = 0`) in its neighbours'
    windows, because a frozen word no longer changes and is no reason for them to wait. The released code keeps exited
    words in the window by accident (a stale mask), with an uncertainty recomputed by the later head on their copied
    state; with non-decreasing thresholds, keeping the uncertainty a word had when it exited would decide identically,
    since that value was already below every later threshold.

    Example:

    ```python
    >>> config = TokenExitBertConfig(num_hidden_layers=6, exit_threshold=0.15, threshold_schedule="paper")
    >>> config.exit_rule().thresholds
    (0.15, 0.15, 0.15, 0.3, 0.3, 0.3)
    ```"""

    model_type = "token-exit-bert"
    starts_from_plain_bert = True

    encoder_config: dict | PreTrainedConfig | None = None
    exit_layers: list[int] | None = None
    exit_mode: Literal["token", "sentence"] = "token"
    exit_threshold: float | int | list[float | int] = 0.1
    threshold_schedule: Literal["constant", "paper"] = "constant"
    threshold_cap: float | int = 1.0
    window_size: int = 5
    sentence_pooling: Literal["max", "mean"] = "max"

    def exit_rule(self, **overrides) -> TokenExitRule:
        """The validated [`TokenExitRule`] of this config, with optional per-call overrides (`exit_mode`,
        `exit_threshold`, `threshold_schedule`, `window_size`, `sentence_pooling`); `None` values keep the config's."""
        settings = {
            "exit_mode": self.exit_mode,
            "exit_threshold": self.exit_threshold,
            "threshold_schedule": self.threshold_schedule,
            "window_size": self.window_size,
            "sentence_pooling": self.sentence_pooling,
        }
        unknown = set(overrides) - set(settings)
        if unknown:
            raise TypeError(f"Unknown exit settings {sorted(unknown)}; expected some of {sorted(settings)}.")
        settings.update({key: value for key, value in overrides.items() if value is not None})
        threshold = settings["exit_threshold"]
        arguments = dict(
            mode=settings["exit_mode"],
            threshold=tuple(threshold) if isinstance(threshold, (list, tuple)) else threshold,
            exit_layers=tuple(self.resolved_exit_layers),
            num_hidden_layers=self.num_hidden_layers,
            window_size=settings["window_size"],
            sentence_pooling=settings["sentence_pooling"],
            threshold_schedule=settings["threshold_schedule"],
            threshold_cap=self.threshold_cap,
        )
        values = arguments["threshold"] if isinstance(arguments["threshold"], tuple) else ()
        if not any(isinstance(value, bool) for value in values):  # (True,) would share the cache entry of (1,)
            try:
                return cached_token_exit_rule(**arguments)
            except TypeError:  # unhashable settings: build without the cache, which reports what is wrong
                pass
        return TokenExitRule.build(**{**arguments, "exit_layers": list(arguments["exit_layers"])})

    def validate_exit_rule(self):
        self.exit_rule()

    def validate_num_labels(self):
        if self.num_labels < 2:
            raise ValueError(
                f"num_labels must be >= 2 (the tags; a word's uncertainty is H(p) / log C), got {self.num_labels}."
            )


def _own_settings(config_class: type) -> set[str]:
    """The fields only `config_class`, of the three families, declares (those that tell its checkpoints apart)."""
    others = [
        other for other in (BypassBertConfig, CascadeBertConfig, TokenExitBertConfig) if other is not config_class
    ]
    return set(family_config_fields(config_class)) - {name for other in others for name in family_config_fields(other)}


def _family_of_settings(config_dict: dict) -> type | None:
    """The family whose own settings a saved config holds, if any."""
    for config_class in (BypassBertConfig, CascadeBertConfig, TokenExitBertConfig):
        if _own_settings(config_class) & set(config_dict):
            return config_class
    return None


__all__ = ["BypassBertConfig", "CascadeBertConfig", "TokenExitBertConfig"]
