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

Modules: `backbone_base` (the interface and the per-batch state), `backbone_bert_like` (BERT, RoBERTa, XLM-R,
ELECTRA, DistilBERT), `backbone_deberta` (DeBERTa-v2 and -v3), `backbone_modernbert`; this one maps model types to
backbones ([`backbone_for`]). They live flat beside the families' modules because remote code is one flat folder
(transformers resolves only single-dot imports of siblings); the package re-exports this module as `models.backbones`.

Shipped with `trust_remote_code` checkpoints: every module imports only torch, transformers and single-dot siblings.
"""

from transformers import PreTrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .backbone_base import (
    FULL_ATTENTION,
    PACKED_ATTENTION,
    SLIDING_ATTENTION,
    ActiveQueries,
    EncoderBackbone,
    HeadStyle,
    LayerContext,
)
from .backbone_bert_like import BertBackbone, DistilBertBackbone
from .backbone_deberta import DebertaV2Backbone
from .backbone_modernbert import ModernBertBackbone


# RoBERTa, XLM-R and ELECTRA classify with a `classifier` module of their own (`dense`, then `out_proj`)
_CLASSIFICATION_HEAD = {"pooler": "classifier.dense", "classifier": "classifier.out_proj"}
_BACKBONES: tuple[EncoderBackbone, ...] = (
    BertBackbone("bert", "BertModel", {"add_pooling_layer": False}),
    *(
        BertBackbone(
            model_type,
            model_class_name,
            {"add_pooling_layer": False},
            stock_sequence_head=_CLASSIFICATION_HEAD,
            positions_after_padding=True,
        )
        for model_type, model_class_name in (("roberta", "RobertaModel"), ("xlm-roberta", "XLMRobertaModel"))
    ),
    BertBackbone("electra", "ElectraModel", {}, head_activation="gelu", stock_sequence_head=_CLASSIFICATION_HEAD),
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
    encoder = getattr(config, "encoder_config", None)  # a family config on another encoder than BERT
    if isinstance(config, str):
        candidates = [config]
    elif isinstance(encoder, dict):
        candidates = [encoder.get("model_type")]
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


# keys of a saved config that describe a checkpoint or a task head, not the encoder (the family's own apply)
_NOT_ENCODER_KEYS = frozenset(
    {
        "transformers_version",
        "architectures",
        "_name_or_path",
        "name_or_path",
        "dtype",
        "torch_dtype",
        "auto_map",
        "custom_pipelines",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "_commit_hash",
        "_attn_implementation_autoset",
        "attn_implementation",
    }
)


def encoder_config_dict(config: PreTrainedConfig | dict, what: str = "the encoder config") -> dict:
    """The JSON-ready dict of an encoder's config as the family configs store it (`encoder_config`): its `model_type`
    and the fields that differ from that architecture's defaults, without checkpoint and label fields.

    Raises:
        ValueError: for an architecture without a backbone (listing the supported ones), or a config its own class
            refuses.
        TypeError: for anything but a config or a dict.
    """
    if isinstance(config, PreTrainedConfig):
        values = config.to_diff_dict()
    elif isinstance(config, dict):
        values = dict(config)
    else:
        raise TypeError(f"{what} must be a transformers config or a dict, got {type(config).__name__}.")
    model_type = values.get("model_type")
    backbone_for(str(model_type))
    fields = {key: value for key, value in values.items() if key not in _NOT_ENCODER_KEYS and key != "model_type"}
    try:
        built = CONFIG_MAPPING[model_type](**fields)
    except Exception as error:  # the architecture's own (strict) validation, with what it was validating
        raise ValueError(f"{what} is not a valid {model_type!r} configuration: {error}") from error
    return {key: value for key, value in built.to_diff_dict().items() if key not in _NOT_ENCODER_KEYS}


def build_encoder_config(encoder_config: dict, **kwargs) -> PreTrainedConfig:
    """The config object of an `encoder_config` dict (see [`encoder_config_dict`]), with `kwargs` on top (e.g.
    `attn_implementation`)."""
    fields = dict(encoder_config)
    return CONFIG_MAPPING[fields.pop("model_type")](**fields, **kwargs)


__all__ = [
    "FULL_ATTENTION",
    "PACKED_ATTENTION",
    "SLIDING_ATTENTION",
    "ActiveQueries",
    "BACKBONES",
    "BertBackbone",
    "DebertaV2Backbone",
    "DistilBertBackbone",
    "EncoderBackbone",
    "HeadStyle",
    "LayerContext",
    "ModernBertBackbone",
    "SUPPORTED_MODEL_TYPES",
    "backbone_for",
    "build_encoder_config",
    "encoder_config_dict",
]
