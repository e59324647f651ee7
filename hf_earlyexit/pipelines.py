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
"""Exit-aware pipelines: exit settings per pipeline or per call, exit layers in every result.

This file imports only the standard library and transformers, so that it can also be shipped with a checkpoint as the
`custom_pipelines` code of `pipeline(..., trust_remote_code=True)`.
"""

import difflib
import inspect
from typing import Any

import torch
from transformers import TextClassificationPipeline, TokenClassificationPipeline
from transformers.pipelines.token_classification import AggregationStrategy
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
      name (an exit argument of another family, such as `window_size` for a text classifier) is an error here, and so
      is a near miss of one (`exit_treshold`), which the stock pipeline would hand to the tokenizer, which ignores it.
    - inputs that are not text (`None`, numbers, bytes, or such items in a list) are refused with a message that names
      them (the stock pipelines fail with messages about other arguments).
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
    #: Whether an input may be a dict (`{"text": ..., "text_pair": ...}`), as for text classification.
    text_pair_inputs: bool = True
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
        # another family's exit arguments and near misses: unexpected arguments (the stock pipeline would give some to
        # the tokenizer, which ignores them)
        unknown = [name for name in ALL_EXIT_ARGUMENTS if name in kwargs and name not in accepted]
        if unknown:
            raise TypeError(
                f"{type(self.model).__name__}.forward does not take {', '.join(f'`{n}`' for n in unknown)}; the exit "
                f"arguments it takes are {', '.join(f'`{n}`' for n in accepted)}."
            )
        for name in kwargs:
            close = difflib.get_close_matches(name, ALL_EXIT_ARGUMENTS, n=1, cutoff=0.85)
            if close and name not in ALL_EXIT_ARGUMENTS:
                raise TypeError(
                    f"Unknown pipeline argument `{name}` (did you mean `{close[0]}`?); the exit arguments of "
                    f"{type(self.model).__name__} are {', '.join(f'`{n}`' for n in accepted)}."
                )
        return {name: kwargs.pop(name) for name in accepted if name in kwargs}

    def _sanitize_parameters(self, **kwargs):
        exit_params = self._pop_exit_parameters(kwargs)
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        return preprocess_params, {**forward_params, **exit_params}, postprocess_params

    def __call__(self, inputs, *args, **kwargs):
        """As the stock pipeline's `__call__`, plus the exit arguments of this call (they override those given at
        construction, for this call only). With an early-exit model, an empty list returns `[]`, and inputs that are
        not text are refused with a message that names them."""
        if self.is_early_exit_model:
            _check_text_inputs(inputs, self.text_pair_inputs)
            # stock pipelines fail with an IndexError on an empty list (they peek at `inputs[0]`)
            if isinstance(inputs, list) and not inputs:
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


def _check_text_inputs(inputs, text_pairs: bool) -> None:
    """Refuses inputs that are not text: `None`, numbers, bytes (and dicts where text pairs are not taken), at the top
    or as items of a list (a dict of a text pair, a list of words and anything iterable, such as a dataset or a
    generator, are the stock pipeline's to read)."""
    not_text = (type(None), bytes, bytearray, int, float, bool) + (() if text_pairs else (dict,))
    if isinstance(inputs, not_text):
        raise TypeError(f"The pipeline's inputs must be a text or a list of texts, got {type(inputs).__name__}.")
    if isinstance(inputs, (list, tuple)):
        for i, item in enumerate(inputs):
            if isinstance(item, not_text):
                raise TypeError(f"The pipeline's inputs must be texts, but item {i} is {type(item).__name__}.")


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

    A cascade whose members have tokenizers of their own (`config.separate_tokenizers`) gets the text tokenized by
    every member's tokenizer (`model.tokenize`), each truncated at its own member's positions.

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
            if getattr(self.model.config, "separate_tokenizers", False):
                # a cascade whose members tokenize differently: each member's tokenizer reads the text, truncating at
                # its own member's limit
                return self.model.tokenize(*_text_and_pair(inputs), **tokenizer_kwargs)
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


def _text_and_pair(inputs) -> tuple:
    """`(text, text_pair)` of one text-classification input, in the forms the stock pipeline takes: a text, a
    `{"text": ..., "text_pair": ...}` dict or a `[[text, pair]]` list."""
    if isinstance(inputs, dict):
        return inputs["text"], inputs.get("text_pair")
    if isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], list) and len(inputs[0]) == 2:
        return inputs[0][0], inputs[0][1]
    return inputs, None


class EarlyExitTokenClassificationPipeline(EarlyExitPipelineMixin, TokenClassificationPipeline):
    r"""
    [`~transformers.TokenClassificationPipeline`] that takes exit settings per pipeline or per call and reports, for
    every token or entity, the number of encoder layers that computed it. Importing `hf_earlyexit` makes
    `pipeline("token-classification", ...)` (and its alias `"ner"`) build this class; for a model without early exit
    (e.g. a plain `BertForTokenClassification`) it behaves exactly like the stock class.

    Exit arguments (construction or call time; the call wins; passed to the model's `forward` for that call only):
        exit_threshold (`float` or `list[float]`, *optional*): threshold on the normalised uncertainty, one or one per
            exit.
        exit_mode (`str`, *optional*): `"token"` (TOKEE) or `"sentence"` (SENTEE).
        window_size (`int`, *optional*), threshold_schedule (`str`, *optional*), sentence_pooling (`str`, *optional*).
        early_exit (`bool`, *optional*): `False` runs the full model.
    An argument that the model's `forward` does not name is an error; values are validated by the model.

    Words: the model decides exits per word, so the pipeline passes it `word_ids`. With `is_split_into_words=True`
    they are the tokenizer's; for raw text a word is a run of word-pieces whose continuations carry the tokenizer's
    continuing-subword prefix (`##` for BERT's WordPiece: the tokenizer's own `word_ids()` for BERT tokenizers). A
    tokenizer without such a prefix makes every word-piece a word.

    `exit_layer` in each result: with `aggregation_strategy="none"`, the exit layer of that word-piece (its word's);
    with any other strategy, the largest exit layer among the word-pieces of the entity (the depth the entity needed).

    Example:

    ```python
    >>> import hf_earlyexit  # registers the exit-aware pipelines
    >>> from transformers import pipeline

    >>> ner = pipeline("token-classification", model="path/to/token-exit-bert-conll", aggregation_strategy="simple")
    >>> ner("EU rejects German call to boycott British lamb.", exit_threshold=0.2, window_size=5)
    [{'entity_group': 'ORG', 'score': 0.99, 'word': 'EU', 'start': 0, 'end': 2, 'exit_layer': 2}, ...]
    ```
    """

    exit_arguments: tuple[str, ...] = (
        "early_exit",
        "exit_mode",
        "exit_threshold",
        "threshold_schedule",
        "window_size",
        "sentence_pooling",
    )
    exit_output_fields: tuple[str, ...] = ("exit_layer",)
    text_pair_inputs = False

    def preprocess(self, sentence, offset_mapping=None, **preprocess_params):
        for model_inputs in super().preprocess(sentence, offset_mapping=offset_mapping, **preprocess_params):
            if self.is_early_exit_model:
                # a tensor, so that batching pads it with the other inputs
                model_inputs["exit_word_ids"] = self._word_ids(model_inputs)
            yield model_inputs

    def _word_ids(self, model_inputs: dict) -> torch.Tensor:
        """`(1, seq)` word id of every position, -1 for special tokens (see the class docstring)."""
        special = model_inputs["special_tokens_mask"][0].bool()
        given = model_inputs.get("word_ids")
        if given is not None:  # `is_split_into_words=True`: the tokenizer's own
            ids = torch.tensor([-1 if w is None else w for w in given])
        else:
            backend = getattr(getattr(self.tokenizer, "_tokenizer", None), "model", None)
            prefix = getattr(backend, "continuing_subword_prefix", None)
            tokens = self.tokenizer.convert_ids_to_tokens(model_inputs["input_ids"][0].tolist())
            starts = torch.tensor([not (prefix and token.startswith(prefix)) for token in tokens]) & ~special
            ids = starts.long().cumsum(0) - 1
        return torch.where(special, -1, ids).unsqueeze(0)

    def _forward(self, model_inputs, **exit_params):
        if not self.is_early_exit_model:
            return super()._forward(model_inputs)
        if self.model.training:
            logger.warning_once(
                f"{type(self.model).__name__} is in training mode: dropout is active and early-exit models compute "
                "every exit there instead of exiting early. Call `model.eval()` before using it in a pipeline."
            )
        # the stock `_forward`, plus the words and the exit settings in the model call and the exit layers kept
        model_inputs = dict(model_inputs)
        word_ids = model_inputs.pop("exit_word_ids")
        # padding added by batching (zeros) lies outside the attention mask, where word ids are not read
        fields = {
            name: model_inputs.pop(name, None)
            for name in (
                "special_tokens_mask",
                "offset_mapping",
                "sentence",
                "is_last",
                "word_ids",
                "word_to_chars_map",
            )
        }
        output = self.model(**model_inputs, word_ids=word_ids, **exit_params)
        return {"logits": output.logits, "exit_layer": output.exit_layer, **fields, **model_inputs}

    def postprocess(self, all_outputs, aggregation_strategy=AggregationStrategy.NONE, ignore_labels=None):
        if not self.is_early_exit_model:
            return TokenClassificationPipeline.postprocess(self, all_outputs, aggregation_strategy, ignore_labels)
        # every chunk on its own (with the sentence and word map the stock code reads from the first), so that each
        # entity is matched with the exit layers of its own chunk; overlapping chunks are then merged as stock does
        shared = {key: all_outputs[0].get(key) for key in ("sentence", "word_to_chars_map")}
        entities = []
        for chunk in all_outputs:
            chunk = {**chunk, **shared}
            chunk_entities = TokenClassificationPipeline.postprocess(
                self, [chunk], aggregation_strategy, ignore_labels
            )
            entities.extend(self._with_exit_layers(chunk, chunk_entities, aggregation_strategy))
        if len(all_outputs) > 1:
            entities = self.aggregate_overlapping_entities(entities)
        return entities

    def _with_exit_layers(self, chunk: dict, entities: list[dict], aggregation_strategy) -> list[dict]:
        exit_layer = chunk["exit_layer"][0].tolist()
        if aggregation_strategy == AggregationStrategy.NONE:
            return [{**entity, "exit_layer": exit_layer[entity["index"]]} for entity in entities]
        # the character span of every word-piece, as the stock code computes it (pre-split words rescaled)
        offset_mapping = chunk["offset_mapping"][0] if chunk["offset_mapping"] is not None else None
        pieces = self.gather_pre_entities(
            chunk["sentence"],
            chunk["input_ids"][0],
            chunk["logits"][0].float().numpy(),
            offset_mapping,
            chunk["special_tokens_mask"][0].numpy(),
            AggregationStrategy.NONE,
            word_ids=chunk.get("word_ids"),
            word_to_chars_map=chunk.get("word_to_chars_map"),
        )
        result = []
        for entity in entities:
            layers = [
                exit_layer[piece["index"]]
                for piece in pieces
                if piece["start"] is not None and entity["start"] <= piece["start"] and piece["end"] <= entity["end"]
            ]
            result.append({**entity, "exit_layer": max(layers) if layers else None})
        return result


# every family's exit arguments: one of them that the model does not take is an error, not a tokenizer argument
ALL_EXIT_ARGUMENTS: tuple[str, ...] = tuple(
    dict.fromkeys(
        EarlyExitTextClassificationPipeline.exit_arguments + EarlyExitTokenClassificationPipeline.exit_arguments
    )
)


__all__ = ["EarlyExitPipelineMixin", "EarlyExitTextClassificationPipeline", "EarlyExitTokenClassificationPipeline"]
