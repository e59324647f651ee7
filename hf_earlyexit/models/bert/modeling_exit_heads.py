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
"""Building blocks shared by the early-exit families: classification heads and bypass modules, and the loading, saving,
publishing and cost interface of every family ([`EarlyExitModelMixin`]).

The rest of what the families share lives next to this module: the checks a forward starts with (`forward_checks`),
the bookkeeping of the early-exit loops (`active_batch`), and the shared parts of a forward (`exit_forward`); the
names this module defined before they moved there are still importable from here.

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import BertConfig, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

# the imports marked F401 re-export what this module defined before its siblings took it over
from .active_batch import LayerOutputs, logger  # noqa: F401
from .backbone_base import EncoderBackbone, HeadStyle
from .backbones import backbone_for
from .checkpoint_utils import (
    check_local_path,
    move_saved_files,
    raise_if_damaged_weights,
    raise_if_quantized,
    remote_code_auto_map,
    remote_code_files,
    write_sharing_fields,
)
from .exit_forward import (  # noqa: F401
    embed_and_mask,
    finish_output,
    full_depth_exit_logits,
    layer_mask,
    scale_gradient,
    sequence_classification_loss,
    weighted_exit_loss,
)
from .exit_utils import classifier_head_flops
from .forward_checks import (  # noqa: F401
    check_flag,
    check_forward_kwargs,
    check_labels,
    check_mask,
    check_token_inputs,
    forward_settings,
    problem_type_of,
    raise_for_bad_ids,
)


POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean")


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden_states` over the positions where `attention_mask` is 1. `(batch, seq, d) -> (batch, d)`."""
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class ZeroInitLinear(nn.Linear):
    """A linear layer that the model's `_init_weights` sets to zero (weight and bias).

    Its own class rather than a check on the parent module: transformers initialises children before their parents
    and skips parameters already initialised, so a zero init written for the parent would never run.
    """


class BypassModule(nn.Module):
    """BADGE block-wise bypass (our interpretation, see [`BypassBertConfig`]): `z + W_up(act(W_down(z)))`.

    `W_up` is a [`ZeroInitLinear`], so a freshly initialised bypass is the identity.
    """

    def __init__(self, hidden_size: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACT2FN["gelu"]
        self.up = ZeroInitLinear(bottleneck, hidden_size)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled + self.up(self.act(self.down(pooled)))


class ClassificationHead(nn.Module):
    """One exit: pool the layer's states, optionally pass them through a bypass, classify.

    `pooling` is `"cls"` (the [CLS] state), `"pooler"` (what the encoder architecture's own sequence-classification head
    does before its classifier, `style`: BERT's pooler, dense + tanh on [CLS]; ELECTRA's dense + GELU; ModernBERT's
    dense, activation and LayerNorm on its `classifier_pooling`; see [`HeadStyle`]) or `"mean"` (mean over real
    tokens).
    """

    def __init__(self, config: BertConfig, pooling: str, style: HeadStyle | None = None, dropout: float | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown exit pooling {pooling!r}; expected one of {POOLINGS}.")
        style = style if style is not None else HeadStyle()
        self.pooling = pooling
        # the states it reads: the first token's or the mean over real tokens
        self.reads = style.pooling if pooling == "pooler" else pooling
        self.pooler = None
        if pooling == "pooler":
            self.pooler = nn.Linear(config.hidden_size, config.hidden_size, bias=style.dense_bias)
            self.pooler_activation = ACT2FN[style.activation]
            if style.norm_eps is not None:
                self.pooler_norm = nn.LayerNorm(config.hidden_size, eps=style.norm_eps, bias=style.norm_bias)
        if dropout is None:
            dropout = config.classifier_dropout
            dropout = config.hidden_dropout_prob if dropout is None else dropout
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`attention_mask=None` means no position is padding."""
        if self.reads == "mean":
            return hidden_states.mean(dim=1) if attention_mask is None else masked_mean(hidden_states, attention_mask)
        return hidden_states[:, 0]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        bypass: BypassModule | None = None,
    ) -> torch.Tensor:
        pooled = self.pool(hidden_states, attention_mask)
        if bypass is not None:
            pooled = bypass(pooled)
        if self.pooler is not None:
            pooled = self.pooler_activation(self.pooler(pooled))
            norm = getattr(self, "pooler_norm", None)
            if norm is not None:
                pooled = norm(pooled)
        if self.training:  # a head runs after every exit layer at inference: skip even the no-op module call there
            pooled = self.dropout(pooled)
        return self.classifier(pooled)

    def flops(self, bypass_dim: int = 0) -> int:
        """FLOPs of this head for one example: the classifier `2 d C`, plus `2 d^2` with a pooler and `4 d r` with a
        bypass of width `r`."""
        hidden_size = self.classifier.in_features
        return classifier_head_flops(hidden_size, self.classifier.out_features, self.pooler is not None, bypass_dim)


class TokenHead(nn.Module):
    """A token-classification exit that transforms each state before its classifier, as the encoder architecture's
    own token classifier does (ModernBERT: dense, activation, LayerNorm; see [`HeadStyle`]). The other architectures'
    token exits are a plain `nn.Linear`."""

    def __init__(self, hidden_size: int, num_labels: int, style: HeadStyle):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size, bias=style.dense_bias)
        self.act = ACT2FN[style.activation]
        self.norm = nn.LayerNorm(hidden_size, eps=style.norm_eps, bias=style.norm_bias)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.act(self.dense(hidden_states))))

    def flops(self) -> int:
        """FLOPs at one position: dense `2 d^2` and classifier `2 d C`."""
        return classifier_head_flops(self.classifier.in_features, self.classifier.out_features, pooler=True)


def token_head(hidden_size: int, num_labels: int, style: HeadStyle | None) -> nn.Module:
    """A token exit: a [`TokenHead`] for an architecture whose token classifier has one (`style`), else a linear
    classifier."""
    return nn.Linear(hidden_size, num_labels) if style is None else TokenHead(hidden_size, num_labels, style)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class EarlyExitModelMixin:
    """Loading, saving and publishing behaviour shared by the early-exit families.

    - Loading: transformers re-initialises a classifier whose size does not match the checkpoint and only warns. For an
      early-exit checkpoint that would silently throw away every trained exit head, so asking for another `num_labels`
      than the checkpoint's own is an error here. Starting from a plain BERT checkpoint (no heads yet) takes any
      `num_labels`. A damaged safetensors file raises a [`~checkpoint_utils.DamagedCheckpointError`] naming the file.
    - Saving: `save_pretrained(..., remote_code=True)` also writes the Python files of this folder and an `auto_map`
      listing `AutoConfig` and every Auto class in `hub_auto_classes`, so that the checkpoint loads with
      `trust_remote_code=True` and nothing else installed. Nothing global changes (no `register_for_auto_class`): a
      later plain save is a plain checkpoint again.
    - Publishing: `push_to_hub` is the `publisher`'s when one is set, else transformers' own `push_to_hub` followed by
      the tokenizer's.
    """

    # Auto classes written into `auto_map` by `save_pretrained(remote_code=True)`; every family overrides it.
    hub_auto_classes: tuple[str, ...] = ("AutoModel",)

    # What publishing adds around transformers' saving and pushing; `None` (the default, and what a checkpoint loaded
    # with `trust_remote_code=True` has) is transformers' behaviour. The library that registers these models sets it
    # when it is imported; this code never imports that library. An object with two methods:
    # - `remote_code_pipelines(model) -> (files, custom_pipelines)`: the pipeline files that
    #   `save_pretrained(remote_code=True)` ships next to the modeling files, and the `custom_pipelines` entry of
    #   `config.json` that declares them;
    # - `push_to_hub(model, repo_id, *args, **kwargs)`: replaces `push_to_hub` entirely.
    publisher: ClassVar[object | None] = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        check_local_path(pretrained_model_name_or_path)
        requested = kwargs.get("num_labels")
        if requested is None and kwargs.get("id2label") is not None:
            requested = len(kwargs["id2label"])
        if requested is None and isinstance(kwargs.get("config"), PreTrainedConfig):
            # the Auto classes build the config (with the caller's `num_labels`) before calling us
            requested = kwargs["config"].num_labels
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        # `None` with a `config` (and a `state_dict`): transformers' documented way to build a model from given weights
        if requested is not None and pretrained_model_name_or_path is not None:
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            if config_dict.get("model_type") == cls.config_class.model_type:
                saved = len(config_dict["id2label"]) if config_dict.get("id2label") else 2
                if saved != requested:
                    raise ValueError(
                        f"num_labels={requested} does not match the checkpoint {pretrained_model_name_or_path!r}, "
                        f"whose exit heads were trained with {saved} labels. Leave `num_labels` out to load it as "
                        f"saved, or start from the plain backbone to train new heads."
                    )
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            if pretrained_model_name_or_path is not None:
                raise_if_damaged_weights(pretrained_model_name_or_path, hub_kwargs, error)
            raise
        # `output_loading_info=True` returns `(model, loading_info)`
        (model[0] if isinstance(model, tuple) else model)._load_extra_files(pretrained_model_name_or_path, hub_kwargs)
        return model

    def _load_extra_files(self, pretrained_model_name_or_path, hub_kwargs: dict) -> None:
        """Reads what a family saves beside the weights (a cascade: its members' tokenizers); nothing by default."""

    def _save_extra_files(self, save_directory) -> None:
        """Writes what a family saves beside the weights (see [`_load_extra_files`]); nothing by default."""

    def save_pretrained(self, save_directory, *args, remote_code: bool | None = None, **kwargs):
        """transformers' `save_pretrained`, plus:

        - A model with dynamically quantized (int8 or fp16) layers is refused with a clear error (a checkpoint cannot
          hold them).
        - Saving over a checkpoint replaces it as a whole or not at all: everything is first written into a temporary
          folder inside `save_directory`, and only a complete save is moved into place (a rename per file, the config
          last; weights files of the previous save that the new one does not have are then removed). A failure while
          writing (a full disk, a permission error, an interrupted process) leaves the previous checkpoint as it was.
          Files that `save_pretrained` does not write (tokenizer, model card, calibration results) are kept.

        Args:
            remote_code (`bool`, *optional*):
                `True`: also write this folder's Python files and an `auto_map` (and the `publisher`'s pipelines), so
                the checkpoint loads with `trust_remote_code=True`. `False`: a plain checkpoint. `None` (default): keep
                what the model came with (remote code when its config has an `auto_map`).
        """
        raise_if_quantized(self)
        is_main_process = kwargs.get("is_main_process", args[0] if args else True)
        if not is_main_process or os.path.isfile(save_directory):
            # other processes write nothing; transformers refuses (and logs) a path that is a file
            return super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", target.resolve().name)  # transformers' default, from the real folder's name
        staging = Path(tempfile.mkdtemp(dir=target, prefix=".saving-"))
        try:
            super().save_pretrained(staging, *args, **kwargs)
            self._write_sharing_files(staging, remote_code)
            move_saved_files(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._save_extra_files(target)
        if remote_code is False or (remote_code is None and not getattr(self.config, "auto_map", None)):
            if (
                self.is_remote_code()
            ):  # copies of the code from an earlier remote-code save: a plain checkpoint has none
                for file in remote_code_files(self):
                    copy = target / file.name
                    if copy.exists() and copy.resolve() != file.resolve():
                        copy.unlink()

    def _write_sharing_files(self, save_directory: Path, remote_code: bool | None) -> None:
        """The remote-code files and the `auto_map` / `custom_pipelines` of `config.json` (see `save_pretrained`)."""
        if remote_code is None:
            remote_code = bool(getattr(self.config, "auto_map", None))
        files = remote_code_files(self)
        if not remote_code:
            for file in files:  # transformers copies the files of a remote-code model itself
                Path(save_directory, file.name).unlink(missing_ok=True)
            write_sharing_fields(save_directory, None, None)
            return
        extra_files, custom_pipelines = [], {}
        if self.publisher is not None:
            extra_files, custom_pipelines = self.publisher.remote_code_pipelines(self)
        for file in [*files, *map(Path, extra_files)]:
            shutil.copyfile(file, Path(save_directory, file.name))
        write_sharing_fields(save_directory, remote_code_auto_map(self), custom_pipelines)

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """Publishes the model: the `publisher`'s `push_to_hub` when one is set (see there for the arguments), else
        transformers' `push_to_hub`, then `tokenizer.push_to_hub` when a `tokenizer` is given (the publisher's other
        arguments, `remote_code`, `card_data` and `model_card`, are dropped).
        """
        if self.publisher is not None:
            return self.publisher.push_to_hub(self, repo_id, *args, **kwargs)
        tokenizer = kwargs.pop("tokenizer", None)
        for key in ("remote_code", "card_data", "model_card"):
            kwargs.pop(key, None)
        commit = super().push_to_hub(repo_id, *args, **kwargs)
        if tokenizer is not None:
            passed = ("commit_message", "private", "token", "revision", "create_pr")
            tokenizer.push_to_hub(repo_id, **{key: kwargs[key] for key in passed if key in kwargs})
        return commit

    # ----------------------------------------------------------------------------------------------------------------
    # The encoder
    # ----------------------------------------------------------------------------------------------------------------

    def _build_encoder(self, config: PreTrainedConfig, attn_implementation: str | None = None) -> None:
        """See [`attach_encoder`]."""
        attach_encoder(self, config, attn_implementation)

    def encoder_flops(self, lengths: torch.Tensor, layers: torch.Tensor | int) -> torch.Tensor:
        """See [`encoder_flops`] (read from a table of every length and depth, see [`tabulated_encoder_flops`])."""
        return tabulated_encoder_flops(self, self.encoder_backbone, self.base_model.config, lengths, layers)

    # ----------------------------------------------------------------------------------------------------------------
    # Cost interface: what evaluation, calibration and the benchmarks read from every family
    # ----------------------------------------------------------------------------------------------------------------

    @property
    def exit_layers(self) -> list[int]:
        """The encoder layers an example answered by each exit has paid for, one per exit, 1-based (for a cascade
        cumulated over the members it went through)."""
        raise NotImplementedError

    @property
    def full_depth_layers(self) -> int:
        """Depth of the full model (what `early_exit=False` runs): the `L` of the layer speed-up
        `L * N / sum(exit layers)`."""
        raise NotImplementedError

    def reference_flops(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs of the full model (what `early_exit=False` spends) on each example of the given real lengths, the
        numerator of the FLOPs speed-up; shape of `lengths`. Multiply-adds count 2 FLOPs; embeddings, norms and
        activations are free; an encoder layer with `n` positions costs `n (8 d^2 + 4 d f) + 4 n^2 d`."""
        raise NotImplementedError

    def flops_per_exit(self, lengths: torch.Tensor) -> torch.Tensor:
        """FLOPs an example of each real length spends when it leaves at each exit with early exit (every exit before
        evaluated too), `(num_exits, batch)`: what the calibration prices hypothetical exits with. Counted as the
        forward's `flops` output counts them."""
        raise NotImplementedError

    def plain_baseline(self) -> PreTrainedModel:
        """The stock transformers model that wall-clock speed-ups are measured against: the full model of this one,
        same size and encoder weights, with the last exit's classifier, in evaluation mode."""
        raise NotImplementedError


def plain_bert_model(
    model_class: type[PreTrainedModel],
    encoder: nn.Module,
    classifier: nn.Linear,
    num_labels: int,
    attn_implementation: str | None,
    pooler: nn.Linear | None = None,
) -> PreTrainedModel:
    """A stock BERT task model (`BertForSequenceClassification`, `BertForTokenClassification`) with the weights of
    `encoder` (a `BertModel` without pooler), `classifier` and, for a stock model with a pooler, of the dense layer
    `pooler` (left freshly initialised without one); in evaluation mode, with the given attention implementation."""
    config = BertConfig(**{**encoder.config.to_dict(), "num_labels": num_labels})
    config.model_type = "bert"
    baseline = model_class(config)
    # a stock sequence classifier has a pooler that `encoder` lacks
    baseline.bert.load_state_dict(encoder.state_dict(), strict=baseline.bert.pooler is None)
    baseline.classifier.load_state_dict(classifier.state_dict())
    if pooler is not None:
        baseline.bert.pooler.dense.load_state_dict(pooler.state_dict())
    baseline.set_attn_implementation(attn_implementation or "sdpa")
    return baseline.eval()


def attach_encoder(model: PreTrainedModel, config: PreTrainedConfig, attn_implementation: str | None = None) -> None:
    """Builds the encoder of `config` without a pooler and sets it on `model` under the attribute that the encoder
    architecture's own task models use (`bert`, `roberta`, `deberta`, `model`, ...; `model.base_model_prefix` follows):
    the prefix of its weights in checkpoints, so a plain checkpoint of that architecture loads into it. Also sets
    `model.encoder_backbone`.

    `config` is a family config (BERT in its own fields, another architecture in its `encoder_config`) or the config of
    the architecture itself (a cascade member). A BERT encoder shares `config`; another one gets a config of its own,
    with `attn_implementation`, the one the caller asked for (`None`: the architecture's default, so an architecture
    without sdpa, DeBERTa-v2, is not handed the family's).
    """
    backbone = backbone_for(config)
    encoder_config = config
    if getattr(config, "encoder_config", None) is not None:
        encoder_config = config.get_encoder_config(attn_implementation=attn_implementation)
    elif "bert" not in backbone.model_types:
        encoder_config = copy.deepcopy(config)
        encoder_config._attn_implementation = attn_implementation
    if backbone.base_model_prefix != model.base_model_prefix:
        model.base_model_prefix = backbone.base_model_prefix
    setattr(model, model.base_model_prefix, backbone.build_base_model(encoder_config))
    model.encoder_backbone = backbone


def encoder_flops(
    backbone: EncoderBackbone, config: PreTrainedConfig, lengths: torch.Tensor, layers: torch.Tensor | int
) -> torch.Tensor:
    """FLOPs of the first `layers` encoder layers (a number, or a tensor of one per example) on sequences of `lengths`
    real tokens, each priced as if it ran alone (`backbone.layer_flops` plus the work a layer does once per call,
    DeBERTa-v2's relative position projections): what an example leaving after `layers` layers paid. Layers after the
    first all cost the same (DeBERTa-v2's convolution follows the first only)."""
    lengths = lengths.long()
    first = backbone.layer_flops(config, lengths, layer_index=0) + backbone.batch_layer_flops(config, 0)
    rest = backbone.layer_flops(config, lengths, layer_index=1) + backbone.batch_layer_flops(config, 1)
    return layers * rest + (layers > 0) * (first - rest)


def tabulated_encoder_flops(
    owner: nn.Module,
    backbone: EncoderBackbone,
    config: PreTrainedConfig,
    lengths: torch.Tensor,
    layers: torch.Tensor | int,
) -> torch.Tensor:
    """[`encoder_flops`], looked up in a table of every length up to the encoder's positions and every depth, built on
    the first call and kept on `owner`: one indexing instead of a dozen small tensor operations per forward (at batch
    size 1 they cost more than the exit criterion). Lengths beyond the table fall back to the formula."""
    table = owner.__dict__.get("_encoder_flops_table")
    if table is None or table.device != lengths.device:
        positions = torch.arange(getattr(config, "max_position_embeddings", 512) + 1, device=lengths.device)
        depths = torch.arange(config.num_hidden_layers + 1, device=lengths.device).unsqueeze(-1)
        table = encoder_flops(backbone, config, positions, depths)
        owner.__dict__["_encoder_flops_table"] = table
    try:
        return table[layers, lengths.long()]
    except IndexError:
        return encoder_flops(backbone, config, lengths, layers)


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    for name in filter(None, path.split(".")):
        module = getattr(module, name, None)
    return module


def stock_head_modules(backbone: EncoderBackbone, task: str, head: nn.Module, stock: nn.Module):
    """`(ours, theirs)` pairs of the modules of an exit `head` and of the architecture's task model `stock` that hold
    the same weights (`task`: `"sequence"` or `"token"`); a module the head does not have (no pooler) is left out."""
    mapping = backbone.stock_sequence_head if task == "sequence" else backbone.stock_token_head
    pairs = [(_submodule(head, ours), _submodule(stock, theirs)) for ours, theirs in mapping.items()]
    return [(ours, theirs) for ours, theirs in pairs if ours is not None]


def plain_task_model(
    backbone: EncoderBackbone, task: str, encoder: PreTrainedModel, head: nn.Module, num_labels: int
) -> PreTrainedModel:
    """The architecture's own task model (`...ForSequenceClassification` for `task="sequence"`,
    `...ForTokenClassification` for `"token"`) with the weights of `encoder` (a base model without pooler) and of the
    exit `head` where the stock head has them (a module it lacks stays freshly initialised); in evaluation mode, with
    the encoder's attention implementation."""
    config = copy.deepcopy(encoder.config)
    config.num_labels = num_labels
    stock = backbone.task_model_class(task)(config)
    missing, unexpected = getattr(stock, backbone.base_model_prefix).load_state_dict(
        encoder.state_dict(), strict=False
    )
    if unexpected or any(not name.startswith("pooler.") for name in missing):
        raise RuntimeError(f"The encoder's weights do not fit {type(stock).__name__}: {missing} {unexpected}.")
    for ours, theirs in stock_head_modules(backbone, task, head, stock):
        theirs.load_state_dict(ours.state_dict())
    stock.set_attn_implementation(encoder.config._attn_implementation or "eager")
    return stock.eval()


__all__ = [
    "BypassModule",
    "attach_encoder",
    "encoder_flops",
    "tabulated_encoder_flops",
    "ClassificationHead",
    "EarlyExitModelMixin",
    "POOLINGS",
    "TokenHead",
    "ZeroInitLinear",
    "masked_mean",
    "plain_bert_model",
    "plain_task_model",
    "stock_head_modules",
    "token_head",
]
