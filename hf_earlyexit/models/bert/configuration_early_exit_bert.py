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
"""Configurations of the early-exit BERT families.

Each family has its own `model_type` (transformers refuses to register a custom model under `BertConfig`). Inference
behaviour (criterion, thresholds, patience, window) lives here so that it is saved and published with the checkpoint;
training behaviour lives in `EarlyExitTrainingArguments`.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

from .exit_utils import ExitRule, check_patience
from .token_exit_utils import TokenExitRule, cached_token_exit_rule


class _StartsFromPlainBertMixin:
    """Lets a family config be read from a plain `bert` checkpoint, which is how every family starts.

    The checkpoint's `model_type` is `bert`; rewriting it here keeps transformers from warning that the checkpoint is of
    another type, and keeps the instance's `model_type` equal to the family's.
    """

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "bert":
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs


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
        return len(self.resolved_exit_layers)

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
class BypassBertConfig(_ExitLayersMixin, _StartsFromPlainBertMixin, BertConfig):
    r"""
    Configuration of [`BertWithBypassExits`]: a BERT encoder with an exit head after chosen layers, block-wise bypass
    modules (BADGE), and the classic exit criteria. Every [`~transformers.BertConfig`] field keeps its meaning.

    Args:
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
            of sentence-embedding backbones such as all-MiniLM-L6-v2 are weak (METHODS.md section 5).
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
    >>> from hf_earlyexit import BypassBertConfig

    >>> config = BypassBertConfig(num_hidden_layers=6, exit_criterion="entropy", exit_threshold=0.2)
    >>> config.resolved_exit_layers
    [1, 2, 3, 4, 5, 6]
    ```"""

    model_type = "bypass-bert"

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

    def validate_bypass(self):
        if self.bypass_block_size < 1:
            raise ValueError(f"`bypass_block_size` must be >= 1, got {self.bypass_block_size}.")
        if self.bypass_dim < 1:
            raise ValueError(f"`bypass_dim` must be >= 1, got {self.bypass_dim}.")
        if not self.bypass_grad_scale >= 0:
            raise ValueError(f"`bypass_grad_scale` must be >= 0, got {self.bypass_grad_scale}.")


@strict
class TokenExitBertConfig(_ExitLayersMixin, _StartsFromPlainBertMixin, BertConfig):
    r"""
    Configuration of [`BertForTokenEarlyExit`]: a BERT token classifier with a head per exit layer and
    sequence-labelling early exit, SENTEE or TOKEE (Li et al., ACL 2021, https://aclanthology.org/2021.acl-long.16).
    Every [`~transformers.BertConfig`] field keeps its meaning; `num_labels` is the number of tags.

    The uncertainty of a word at an exit is `u = H(p) / log C` of that exit's prediction at the word's first
    word-piece, in `[0, 1]`. Decisions are made per sentence (SENTEE) or per word (TOKEE), never per batch.

    Args:
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
    >>> from hf_earlyexit import TokenExitBertConfig

    >>> config = TokenExitBertConfig(num_hidden_layers=6, exit_threshold=0.15, threshold_schedule="paper")
    >>> config.exit_rule().thresholds
    (0.15, 0.15, 0.15, 0.3, 0.3, 0.3)
    ```"""

    model_type = "token-exit-bert"

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


__all__ = ["BypassBertConfig", "TokenExitBertConfig"]
