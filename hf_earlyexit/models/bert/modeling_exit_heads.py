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
"""Building blocks shared by the early-exit families: classification heads, bypass modules, the per-layer encoder
step, and the standard sequence-classification loss.

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import importlib
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask

from .checkpoint_utils import raise_if_damaged_weights, remote_code_auto_map, remote_code_files, write_sharing_fields
from .exit_utils import classifier_head_flops


POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean")


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden_states` over the positions where `attention_mask` is 1. `(batch, seq, d) -> (batch, d)`."""
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


def scale_gradient(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
    if scale == 1.0 or not tensor.requires_grad:
        return tensor
    return _ScaleGradient.apply(tensor, scale)


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

    `pooling` is `"cls"` (the [CLS] state), `"pooler"` ([CLS] through dense + tanh, as BERT's pooler) or `"mean"` (mean
    over real tokens).
    """

    def __init__(self, config: BertConfig, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown exit pooling {pooling!r}; expected one of {POOLINGS}.")
        self.pooling = pooling
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooling == "pooler" else None
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`attention_mask=None` means no position is padding."""
        if self.pooling == "mean":
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
            pooled = torch.tanh(self.pooler(pooled))
        if self.training:  # a head runs after every exit layer at inference: skip even the no-op module call there
            pooled = self.dropout(pooled)
        return self.classifier(pooled)

    def flops(self, bypass_dim: int = 0) -> int:
        """FLOPs of this head for one example (METHODS.md section 4)."""
        hidden_size = self.classifier.in_features
        return classifier_head_flops(hidden_size, self.classifier.out_features, self.pooler is not None, bypass_dim)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def _optional_hub_module():
    """`hf_earlyexit.hub` when the package is installed, else `None` (remote-code checkpoints run without it).

    Imported by name at call time, never at module level: transformers scans remote-code files for import statements
    and would otherwise demand hf_earlyexit from users who load the checkpoint with `trust_remote_code=True`.
    """
    try:
        return importlib.import_module("hf_earlyexit.hub")
    except ImportError:
        return None


class EarlyExitModelMixin:
    """Loading, saving and publishing behaviour shared by the early-exit families.

    - Loading: transformers re-initialises a classifier whose size does not match the checkpoint and only warns. For an
      early-exit checkpoint that would silently throw away every trained exit head, so asking for another `num_labels`
      than the checkpoint's own is an error here. Starting from a plain BERT checkpoint (no heads yet) takes any
      `num_labels`. A damaged safetensors file raises a [`~checkpoint_utils.DamagedCheckpointError`] naming the file.
    - Saving: `save_pretrained(..., remote_code=True)` also writes the Python files of this folder and an `auto_map`
      listing `AutoConfig` and every Auto class in `hub_auto_classes`, so that users without hf_earlyexit can load the
      checkpoint with `trust_remote_code=True`. Nothing global changes (no `register_for_auto_class`): a later plain
      save is a plain checkpoint again.
    - Publishing: `push_to_hub` is `hf_earlyexit.hub.push_to_hub` (model, tokenizer, remote code and our model card in
      one commit) when hf_earlyexit is installed, and transformers' own `push_to_hub` otherwise (a remote-code user).
    """

    # Auto classes written into `auto_map` by `save_pretrained(remote_code=True)`; every family overrides it.
    hub_auto_classes: tuple[str, ...] = ("AutoModel",)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        requested = kwargs.get("num_labels")
        if requested is None and kwargs.get("id2label") is not None:
            requested = len(kwargs["id2label"])
        if requested is None and isinstance(kwargs.get("config"), PreTrainedConfig):
            # the Auto classes build the config (with the caller's `num_labels`) before calling us
            requested = kwargs["config"].num_labels
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        if requested is not None:
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
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            raise_if_damaged_weights(pretrained_model_name_or_path, hub_kwargs, error)
            raise

    def save_pretrained(self, save_directory, *args, remote_code: bool | None = None, **kwargs):
        """transformers' `save_pretrained`, plus:

        Args:
            remote_code (`bool`, *optional*):
                `True`: also write this folder's Python files and an `auto_map`, so the checkpoint loads with
                `trust_remote_code=True` without hf_earlyexit. `False`: a plain checkpoint. `None` (default): keep what
                the model came with (remote code when its config has an `auto_map`).
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", args[0] if args else True):
            return
        if remote_code is None:
            remote_code = bool(getattr(self.config, "auto_map", None))
        files = remote_code_files(self)
        if not remote_code:
            if self.is_remote_code():  # transformers copied the files itself: a plain checkpoint has none
                for file in files:
                    copy = Path(save_directory, file.name)
                    if copy.exists() and copy.resolve() != file.resolve():
                        copy.unlink()
            write_sharing_fields(save_directory, None, None)
            return
        extra_files, custom_pipelines = [], {}
        hub = _optional_hub_module()
        if hub is not None:
            extra_files, custom_pipelines = hub.remote_code_pipelines(self)
        for file in [*files, *map(Path, extra_files)]:
            copy = Path(save_directory, file.name)
            if not (copy.exists() and copy.resolve() == file.resolve()):
                shutil.copyfile(file, copy)
        write_sharing_fields(save_directory, remote_code_auto_map(self), custom_pipelines)

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """Publishes the model. With hf_earlyexit installed: [`hf_earlyexit.hub.push_to_hub`] (see there for the
        arguments). Without it: transformers' `push_to_hub`, then `tokenizer.push_to_hub` when a `tokenizer` is given.
        """
        hub = _optional_hub_module()
        if hub is not None:
            return hub.push_to_hub(self, repo_id, *args, **kwargs)
        tokenizer = kwargs.pop("tokenizer", None)
        for key in ("remote_code", "card_data", "model_card"):
            kwargs.pop(key, None)
        commit = super().push_to_hub(repo_id, *args, **kwargs)
        if tokenizer is not None:
            passed = ("commit_message", "private", "token", "revision", "create_pr")
            tokenizer.push_to_hub(repo_id, **{key: kwargs[key] for key in passed if key in kwargs})
        return commit


def embed_and_mask(
    bert: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of a `BertModel` and the 2D attention mask (all ones when none is given)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
    hidden_states = bert.embeddings(
        input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
    )
    if attention_mask is None:
        attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
    elif attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)} but the inputs have shape "
            f"{tuple(hidden_states.shape[:2])}."
        )
    return hidden_states, attention_mask


def layer_mask(config: BertConfig, hidden_states: torch.Tensor, attention_mask: torch.Tensor):
    """The mask `BertLayer` expects for the current attention implementation (`None` when nothing is masked)."""
    if bool(attention_mask.all()):  # an encoder with no padding attends everywhere, whatever the implementation
        return None
    return create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask)


def full_depth_exit_logits(
    bert: nn.Module,
    config: BertConfig,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    exit_layers: list[int],
    exit_logits: Callable[[int, torch.Tensor], torch.Tensor],
    all_exits: bool,
    active_depth: torch.Tensor | None = None,
    gradient_equilibrium: bool = False,
) -> torch.Tensor:
    """Run every encoder layer on every position and stack the exits' logits.

    Args:
        bert: The `BertModel` whose `encoder.layer` runs.
        config: Its config (attention implementation for the mask).
        hidden_states: `(batch, seq, d)` embeddings.
        attention_mask: `(batch, seq)` 2D mask.
        exit_layers: 1-based exit layers.
        exit_logits: `exit_logits(exit_index, hidden_states)`, the logits of one exit.
        all_exits: Evaluate every exit; otherwise only the last layer's.
        active_depth: Optional `(batch, seq)` number of layers that update each position: from layer
            `active_depth + 1` on, a position's state is copied forward unchanged, `h_i = m_i * Layer_i(h_{i-1}) +
            (1 - m_i) * h_{i-1}` (the training forward of sequence-labelling self-sampling, Li et al., 2021).
        gradient_equilibrium: With every exit evaluated, rescale the gradients where an exit branches off (Li et al.,
            2019, "Improved Techniques for Training Adaptive Deep Networks", https://arxiv.org/abs/1908.06294): with
            `r` exits from this one to the last, the gradient reaching the backbone through exit `k`'s head is scaled
            by `1 / r` and the one coming back from the deeper layers by `(r - 1) / r`, so the layers below average the
            exits' gradients instead of summing them. The forward values are unchanged.

    Returns:
        `(num_exits, ...)` logits, or `(1, ...)` with the last exit only.
    """
    mask = layer_mask(config, hidden_states, attention_mask)
    exit_position = {layer: k for k, layer in enumerate(exit_layers)}
    num_layers = len(bert.encoder.layer)
    logits = []
    for i, layer_module in enumerate(bert.encoder.layer):
        updated = layer_module(hidden_states, mask)
        if active_depth is None:
            hidden_states = updated
        else:
            hidden_states = torch.where((active_depth > i).unsqueeze(-1), updated, hidden_states)
        k = exit_position.get(i + 1)
        if k is not None and (all_exits or i + 1 == num_layers):
            head_input = hidden_states
            remaining = len(exit_layers) - k
            if gradient_equilibrium and all_exits and remaining > 1:
                head_input = scale_gradient(hidden_states, 1.0 / remaining)
                hidden_states = scale_gradient(hidden_states, (remaining - 1) / remaining)
            logits.append(exit_logits(k, head_input))
    return torch.stack(logits)


def problem_type_of(config: BertConfig, labels: torch.Tensor) -> str:
    """transformers' rule for the classification problem type, without writing it into the config."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """The loss `BertForSequenceClassification` uses for `problem_type`, on `(batch, num_labels)` logits."""
    if problem_type == "regression":
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def weighted_exit_loss(
    per_exit_logits: torch.Tensor, labels: torch.Tensor, problem_type: str, weights: list[float] | torch.Tensor
) -> torch.Tensor:
    """`sum_i w_i * loss_i / sum_i w_i` over exits (PABEE's joint objective when `w_i` is the exit's layer number).

    Args:
        per_exit_logits: `(num_exits, batch, num_labels)`.
        labels: The labels of the batch.
        problem_type: As returned by [`problem_type_of`].
        weights: One weight per exit.
    """
    weights = torch.as_tensor(weights, dtype=per_exit_logits.dtype, device=per_exit_logits.device)
    losses = torch.stack([sequence_classification_loss(logits, labels, problem_type) for logits in per_exit_logits])
    return (weights * losses).sum() / weights.sum()


__all__ = [
    "BypassModule",
    "ClassificationHead",
    "EarlyExitModelMixin",
    "embed_and_mask",
    "full_depth_exit_logits",
    "layer_mask",
    "masked_mean",
    "problem_type_of",
    "scale_gradient",
    "sequence_classification_loss",
    "weighted_exit_loss",
    "ZeroInitLinear",
]
