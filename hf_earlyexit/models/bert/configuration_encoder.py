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
"""The encoder under a family config: BERT in the config's own fields (today's format), any other supported
architecture in `encoder_config`.

A family config derives from `BertConfig`, and a BERT encoder is described by its fields, as every checkpoint written
before other encoders were supported is. For another architecture (RoBERTa, XLM-R, ELECTRA, DistilBERT, DeBERTa-v2,
ModernBERT) the config holds the encoder's own config as a dict in `encoder_config` (its `model_type` and its fields,
as that architecture's config class reads them), the way transformers' composite configs hold a sub-config; the BERT
fields that the rest of the package reads (`num_hidden_layers`, `hidden_size`, `intermediate_size`,
`num_attention_heads`, `max_position_embeddings`, `vocab_size`, `initializer_range`, `pad_token_id`,
`classifier_dropout`) are then copies of the encoder's, written when the config is built (`max_position_embeddings`:
the tokens a sequence may have, which for RoBERTa and XLM-R is `pad_token_id + 1` fewer than its embeddings).

Shipped with `trust_remote_code` checkpoints: imports only transformers and single-dot siblings.
"""

from transformers import PreTrainedConfig

from .backbones import BACKBONES, backbone_for, build_encoder_config, encoder_config_dict


class EncoderConfigMixin:
    """The `encoder_config` of a family config (the field itself is declared by each config class): see the module
    docstring."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.encoder_config is None:
            return
        encoder = encoder_config_dict(self.encoder_config, "`encoder_config`")
        if encoder["model_type"] == "bert":  # BERT keeps the format of every BERT checkpoint: the config's own fields
            for name, value in encoder.items():
                if name != "model_type":
                    setattr(self, name, value)
            self.encoder_config = None
            return
        self.encoder_config = encoder
        config = self.get_encoder_config()
        backbone = backbone_for(config)
        self.hidden_size, self.intermediate_size = backbone.dims(config)
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        self.max_position_embeddings = backbone.max_positions(config)  # the tokens it takes (RoBERTa: 2 fewer)
        self.vocab_size = config.vocab_size
        self.initializer_range = config.initializer_range
        self.pad_token_id = config.pad_token_id
        self.classifier_dropout = backbone.classifier_dropout(config)

    def to_dict(self) -> dict:
        """transformers' `to_dict`, without `encoder_config` for BERT: a BERT checkpoint is saved as it always was."""
        output = super().to_dict()
        if output.get("encoder_config") is None:
            output.pop("encoder_config", None)
        return output

    @property
    def encoder_model_type(self) -> str:
        """The `model_type` of the encoder: `"bert"`, or that of `encoder_config`."""
        return "bert" if self.encoder_config is None else self.encoder_config["model_type"]

    def get_encoder_config(self, **kwargs) -> PreTrainedConfig:
        """The config the encoder is built from: this config itself for BERT, else a new config object of the encoder's
        architecture from `encoder_config` (with `kwargs` on top, e.g. `attn_implementation`)."""
        if self.encoder_config is None:
            return self
        return build_encoder_config(self.encoder_config, **kwargs)


def is_other_encoder(model_type: str | None) -> bool:
    """Whether `model_type` is a supported encoder other than BERT (whose checkpoints a family starts from through
    `encoder_config`)."""
    return model_type != "bert" and model_type in BACKBONES


def family_dict_of_encoder(config_dict: dict, family_model_type: str, source) -> dict:
    """The config dict of a family that starts from the plain checkpoint of another encoder (`config_dict`): the
    encoder's config in `encoder_config`, its labels (if any) as the family's."""
    labels = {key: config_dict[key] for key in ("id2label", "label2id", "problem_type") if key in config_dict}
    encoder = encoder_config_dict(config_dict, f"The config of {str(source)!r}")
    return {"model_type": family_model_type, "encoder_config": encoder, **labels}


__all__ = ["EncoderConfigMixin", "family_dict_of_encoder", "is_other_encoder"]
