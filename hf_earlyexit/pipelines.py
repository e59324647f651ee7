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
"""Exit-aware pipelines: exit settings per pipeline or per call, exit layers in every result.

This file imports only the standard library and transformers, so that it can also be shipped with a checkpoint as the
`custom_pipelines` code of `pipeline(..., trust_remote_code=True)`.
"""

import inspect
from typing import Any

from transformers import TextClassificationPipeline
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Tokenizers report "no maximum" with a huge sentinel (transformers' VERY_LARGE_INTEGER); anything above this is one.
_NO_LIMIT = 10**9


class EarlyExitPipelineMixin:
    r"""
    Makes a transformers pipeline exit-aware. Mix it in before the stock pipeline class.

    With an early-exit model (one whose `forward` names at least one of `exit_arguments`):
    - the exit arguments given to the pipeline (construction or call; the call wins) are passed to `model.forward` for
      that call only, never written into the model or its config. Whether a value is valid is the model's business: a
      bad one fails at the first call, with the model's own error. An exit argument that the model's `forward` does not
      name is an error here.
    - every per-example field of `exit_output_fields` that the model returns is added to each result;
    - an empty list of inputs gives `[]`.

    With any other model the pipeline behaves exactly like the stock one: stock transformers passes unknown keyword
    arguments such as `exit_threshold` on to the tokenizer, which ignores them, and this mixin changes nothing about it.

    An early-exit model is recognised by its `forward` signature, so a wrapper whose `forward` takes only `**kwargs`
    counts as a model without early exit.

    A subclass for another task sets `exit_arguments` / `exit_output_fields` if its models differ, makes sure its
    `_forward` returns the model's exit fields (the stock token-classification `_forward` keeps only the logits), and
    overrides `_add_exit_fields` when its results are not one dict or one list of dicts per input.
    """

    #: Forward arguments of the early-exit models that are per-call exit settings.
    exit_arguments: tuple[str, ...] = (
        "early_exit",
        "exit_criterion",
        "exit_threshold",
        "patience",
        "divergence",
        "regression_tolerance",
    )
    #: Per-example output fields copied into each result when the model returns them (shape `(batch_size, ...)`).
    exit_output_fields: tuple[str, ...] = ("exit_layer", "exit_stage")

    def model_exit_arguments(self) -> tuple[str, ...]:
        """The `exit_arguments` that the model's `forward` names; empty for a model without early exit."""
        parameters = inspect.signature(self.model.forward).parameters
        return tuple(name for name in self.exit_arguments if name in parameters)

    @property
    def is_early_exit_model(self) -> bool:
        return bool(self.model_exit_arguments())

    def _pop_exit_parameters(self, kwargs: dict) -> dict:
        accepted = self.model_exit_arguments()
        if not accepted:
            return {}
        unknown = [name for name in self.exit_arguments if name in kwargs and name not in accepted]
        if unknown:
            raise ValueError(
                f"{type(self.model).__name__}.forward does not take {', '.join(f'`{n}`' for n in unknown)}; the exit "
                f"arguments it takes are {', '.join(f'`{n}`' for n in accepted)}."
            )
        return {name: kwargs.pop(name) for name in accepted if name in kwargs}

    def _sanitize_parameters(self, **kwargs):
        exit_params = self._pop_exit_parameters(kwargs)
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        return preprocess_params, {**forward_params, **exit_params}, postprocess_params

    def __call__(self, inputs, *args, **kwargs):
        """As the stock pipeline's `__call__`, plus the exit arguments of this call (they override those given at
        construction, for this call only). With an early-exit model, an empty list returns `[]`."""
        # stock pipelines fail with an IndexError on an empty list (they peek at `inputs[0]`)
        if isinstance(inputs, list) and not inputs and self.is_early_exit_model:
            self._sanitize_parameters(**kwargs)  # a bad argument is still reported
            return []
        return super().__call__(inputs, *args, **kwargs)

    def _forward(self, model_inputs, **exit_params):
        if self.is_early_exit_model:
            if self.model.training:
                logger.warning_once(
                    f"{type(self.model).__name__} is in training mode: dropout is active and early-exit models compute "
                    "every exit there instead of exiting early. Call `model.eval()` before using it in a pipeline."
                )
            model_inputs = {**model_inputs, **exit_params}
        return super()._forward(model_inputs)

    def postprocess(self, model_outputs, **postprocess_params):
        result = super().postprocess(model_outputs, **postprocess_params)
        if not self.is_early_exit_model:
            return result
        return self._add_exit_fields(result, self._exit_fields(model_outputs))

    def _exit_fields(self, model_outputs) -> dict[str, Any]:
        """Python values of this example's `exit_output_fields` (the model outputs hold a batch of one here)."""
        fields = {}
        for name in self.exit_output_fields:
            value = model_outputs.get(name)
            if value is not None:
                value = value[0]
                fields[name] = value.item() if value.ndim == 0 else value.tolist()
        return fields

    def _add_exit_fields(self, result, fields: dict[str, Any]):
        if isinstance(result, dict):
            return {**result, **fields}
        return [{**item, **fields} for item in result]


class EarlyExitTextClassificationPipeline(EarlyExitPipelineMixin, TextClassificationPipeline):
    r"""
    [`~transformers.TextClassificationPipeline`] that takes exit settings per pipeline or per call and reports where
    each example left the model. Importing `hf_earlyexit` makes `pipeline("text-classification", ...)` (and its alias
    `"sentiment-analysis"`) build this class; for a model without early exit it behaves exactly like the stock class.

    Exit arguments (construction or call time; the call wins; passed to the model's `forward` for that call only):
        exit_threshold (`float` or `list[float]`, *optional*): one threshold, or one per exit.
        exit_criterion (`str`, *optional*): e.g. `"max_prob"`, `"entropy"`, `"patience"`.
        patience (`int`, *optional*), divergence (`str`, *optional*), regression_tolerance (`float`, *optional*).
        early_exit (`bool`, *optional*): `False` runs the full model.
    An argument that the model's `forward` does not name is an error; values are validated by the model.

    Each result also holds the per-example exit fields the model returns (`exit_layer`: the number of encoder layers
    computed for that text; `exit_stage` for a cascade), also with `top_k` (on every label's dict).

    Edge inputs, with an early-exit model:
    - an empty list returns `[]` (the stock pipeline raises an `IndexError`);
    - an empty string is classified like any text (from `[CLS] [SEP]`), as the stock pipeline does;
    - a text longer than the model's positions is truncated to `min(tokenizer.model_max_length,
      config.max_position_embeddings)` tokens: `truncation` defaults to `True` (the stock pipeline does not truncate,
      and fails inside the model). Pass `truncation=False` or a `max_length` to override.

    Example:

    ```python
    >>> import hf_earlyexit  # registers the exit-aware pipelines
    >>> from transformers import pipeline

    >>> classifier = pipeline("text-classification", model="path/to/bypass-bert-sst2", exit_threshold=0.9)
    >>> classifier("a gem of a film")
    [{'label': 'POSITIVE', 'score': 0.97, 'exit_layer': 2}]
    >>> classifier(["a gem of a film", "not as bad as I feared, yet not good"], exit_threshold=0.99, batch_size=16)
    ```
    """

    def preprocess(self, inputs, **tokenizer_kwargs):
        if self.is_early_exit_model:
            tokenizer_kwargs.setdefault("truncation", True)
            truncation = tokenizer_kwargs["truncation"]
            if truncation and truncation != "do_not_truncate" and "max_length" not in tokenizer_kwargs:
                limit = self._max_input_length()
                if limit is not None:
                    tokenizer_kwargs["max_length"] = limit
        return super().preprocess(inputs, **tokenizer_kwargs)

    def _max_input_length(self) -> int | None:
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < _NO_LIMIT]
        return min(limits, default=None)


__all__ = ["EarlyExitPipelineMixin", "EarlyExitTextClassificationPipeline"]
