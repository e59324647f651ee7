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
"""What the members of a cascade read: one batch of token ids that they share, or, for members with tokenizers of their
own (`separate_tokenizers`), each member's own ids of the same texts; the tokenizers themselves, tokenizing texts for
every member, and saving them with the cascade.

Member `k > 0` of a cascade with separate tokenizers reads `input_ids_k`, `attention_mask_k` and `token_type_ids_k`
(flat keys, so that a pipeline pads them like any other input); member 0 reads `input_ids` and the rest as usual.

Shipped with `trust_remote_code` checkpoints: imports only torch, transformers and single-dot siblings.
"""

import os
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.utils import logging

from .forward_checks import check_token_inputs


logger = logging.get_logger(__name__)

MEMBER_INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
_MEMBER_KEY = re.compile(r"(input_ids|attention_mask|token_type_ids)_(\d+)")
# above this, a tokenizer's `model_max_length` is transformers' "no limit" sentinel
_NO_LIMIT = 10**9


def tokenizer_folder(index: int) -> str:
    """The folder of member `index`'s tokenizer in a saved cascade (member 0's sits at the top, as the cascade's own)."""
    return f"tokenizer_{index}"


def pop_member_inputs(kwargs: dict, num_members: int, separate: bool) -> list[dict]:
    """Takes the inputs of members `1..num_members - 1` (`input_ids_k`, ...) out of a forward's `kwargs`.

    Raises:
        ValueError: a member's inputs missing from a cascade with separate tokenizers, given to one without, or given
            for a member the cascade does not have.
    """
    given: dict[int, dict] = {}
    for key in [key for key in kwargs if _MEMBER_KEY.fullmatch(key)]:
        name, index = _MEMBER_KEY.fullmatch(key).groups()
        given.setdefault(int(index), {})[name] = kwargs.pop(key)
    if not separate:
        if given:
            raise ValueError(
                f"This cascade's members share one tokenizer: pass `input_ids` (and `attention_mask`) only, not "
                f"{sorted(name + '_' + str(k) for k, names in given.items() for name in names)}."
            )
        return []
    unknown = sorted(index for index in given if not 1 <= index < num_members)
    if unknown:
        raise ValueError(f"Inputs for members {unknown}, but the cascade's members are 0..{num_members - 1}.")
    missing = [index for index in range(1, num_members) if given.get(index, {}).get("input_ids") is None]
    if missing:
        raise ValueError(
            f"Every member of this cascade has a tokenizer of its own: pass each member's token ids too, "
            f"{', '.join(f'`input_ids_{k}`' for k in missing)} (and `attention_mask_k`), from `model.tokenize(texts)` "
            "or `model.tokenizers[k]`."
        )
    return [given[index] for index in range(1, num_members)]


def check_member_inputs(model, index: int | None, inputs: dict, batch_size: int | None = None) -> dict:
    """Member `index`'s inputs as a dict of `(batch, seq)` tensors: `attention_mask` filled in, padding given the
    member's pad id (architectures that number positions from the padding, RoBERTa's, read it), with errors that name
    the member's arguments. `index=None`: the inputs every member of a cascade without `separate_tokenizers` reads,
    at most as long as its smallest member takes."""
    suffix = "" if not index else f"_{index}"
    input_ids, attention_mask = inputs.get("input_ids"), inputs.get("attention_mask")
    token_type_ids, position_ids = inputs.get("token_type_ids"), inputs.get("position_ids")
    try:
        check_token_inputs(model, input_ids, None, attention_mask, None, token_type_ids, position_ids)
    except (TypeError, ValueError) as error:
        if not index:
            raise
        raise type(error)(f"{error} (the inputs of member {index}: `input_ids{suffix}`, ...)") from None
    rows, seq_len = input_ids.shape
    if batch_size is not None and rows != batch_size:
        raise ValueError(f"`input_ids{suffix}` has {rows} rows but `input_ids` has {batch_size}: one per example.")
    if index is None:
        limit = min(member.max_positions for member in model.members)
        too_long = (
            f"The inputs have {seq_len} positions but the cascade's smallest `max_position_embeddings` is {limit}"
        )
    else:
        limit = model.members[index].max_positions
        too_long = f"The inputs of member {index} have {seq_len} positions but it has {limit}"
    if seq_len > limit:
        raise ValueError(f"{too_long}; truncate them to {limit} tokens.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    pad = model.members[index].config.pad_token_id if index else None
    if pad is not None:  # batching pads the other members' ids with zeros
        input_ids = input_ids.masked_fill(attention_mask == 0, pad)
    if position_ids is not None:
        position_ids = position_ids.reshape(-1, seq_len).expand(rows, -1)
    checked = dict(
        input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids
    )
    for name, tensor in checked.items():
        if tensor is not None and tensor.shape != input_ids.shape:
            raise ValueError(
                f"`{name}{suffix}` has shape {tuple(tensor.shape)} but `input_ids{suffix}` {tuple(input_ids.shape)}."
            )
    return checked


def max_input_length(tokenizer, max_positions: int | None) -> int | None:
    """The most tokens a member takes: its tokenizer's `model_max_length` and its positions, whichever is smaller."""
    limits = [max_positions, getattr(tokenizer, "model_max_length", None)]
    limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < _NO_LIMIT]
    return min(limits, default=None)


def tokenize_for_members(model, text, text_pair=None, **tokenizer_kwargs) -> dict:
    """`text` (and `text_pair`; one text or a list) tokenized by every member's tokenizer, each truncated at its own
    member's limit (unless `truncation=False`): `input_ids`, `attention_mask` ... of member 0, `input_ids_k`, ... of
    member `k`. Returns PyTorch tensors, padded per member."""
    tokenizers = model.tokenizers
    if not tokenizers or any(tokenizer is None for tokenizer in tokenizers):
        raise ValueError(
            "This cascade has no tokenizer for every member (`model.tokenizers`): give them to `from_members` "
            "(`tokenizers=[...]`), or load a cascade saved with them."
        )
    tokenizer_kwargs = {"return_tensors": "pt", "padding": True, "truncation": True, **tokenizer_kwargs}
    encoded = {}
    for index, tokenizer in enumerate(tokenizers):
        kwargs = dict(tokenizer_kwargs)
        if kwargs["truncation"] and "max_length" not in kwargs:
            limit = max_input_length(tokenizer, model.members[index].max_positions)
            if limit is not None:
                kwargs["max_length"] = limit
        member = tokenizer(text, text_pair, **kwargs)
        suffix = "" if index == 0 else f"_{index}"
        encoded.update({name + suffix: member[name] for name in MEMBER_INPUT_NAMES if name in member})
    return encoded


def member_tokenizers(members: list, sources: list[dict], tokenizers: list | None, load_kwargs: dict):
    """Each member's tokenizer (given in `tokenizers`, or loaded from a member given as a checkpoint) and whether the
    members need their own: their configs show different vocabularies (`vocab_size`, pad id), or their tokenizers
    differ.

    Returns:
        `(tokenizers, separate)`: `tokenizers` is `None` unless `separate`.

    Raises:
        ValueError: `tokenizers` of another length than `members`, or members that need their own tokenizers without
            every one of them known.
    """
    if tokenizers is not None and (not isinstance(tokenizers, (list, tuple)) or len(tokenizers) != len(members)):
        raise ValueError(
            f"`tokenizers` must list one tokenizer per member ({len(members)}), `None` where unknown; got {tokenizers!r}."
        )
    known = list(tokenizers) if tokenizers is not None else [None] * len(members)
    for index, member in enumerate(members):
        if known[index] is None and isinstance(member, (str, os.PathLike)):
            try:
                known[index] = AutoTokenizer.from_pretrained(member, **load_kwargs)
            except (OSError, ValueError):  # a checkpoint saved without its tokenizer
                pass
    vocabularies = [(source["config"].vocab_size, source["config"].pad_token_id) for source in sources]
    # members of different architectures and vocabularies cannot share a tokenizer; members of one architecture
    # whose configs disagree without their tokenizers known are the config's to report
    separate = len(set(vocabularies)) > 1 and len({source["config"].model_type for source in sources}) > 1
    if all(tokenizer is not None for tokenizer in known):
        separate = separate or len({_fingerprint(tokenizer) for tokenizer in known}) > 1
    if separate and any(tokenizer is None for tokenizer in known):
        missing = [index for index, tokenizer in enumerate(known) if tokenizer is None]
        raise ValueError(
            f"The members tokenize differently (vocabulary size and pad id per member: {vocabularies}), so each "
            f"needs its own tokenizer, but those of members {missing} are unknown: pass `tokenizers=[...]`, one per "
            "member, or give those members as checkpoints saved with their tokenizers."
        )
    return (known if separate else None), separate


def _fingerprint(tokenizer) -> tuple:
    """What decides the ids a tokenizer gives a text: its class, vocabulary and special tokens."""
    vocabulary = tokenizer.get_vocab()
    return type(tokenizer).__name__, hash(tuple(sorted(vocabulary.items()))), tuple(tokenizer.all_special_tokens)


def save_tokenizers(tokenizers, save_directory) -> None:
    """Member 0's tokenizer at the top of `save_directory` (the cascade's own), member `k`'s in `tokenizer_k/`."""
    for index, tokenizer in enumerate(tokenizers or ()):
        if tokenizer is not None:
            folder = Path(save_directory) / (tokenizer_folder(index) if index else "")
            tokenizer.save_pretrained(folder)


def load_tokenizers(pretrained_model_name_or_path, num_members: int, hub_kwargs: dict) -> list | None:
    """The members' tokenizers saved with a cascade (see [`save_tokenizers`]), or `None` (with a warning) when one is
    missing."""
    tokenizers = []
    for index in range(num_members):
        kwargs = dict(hub_kwargs)
        if index:
            kwargs["subfolder"] = "/".join(filter(None, [hub_kwargs.get("subfolder"), tokenizer_folder(index)]))
        try:
            tokenizers.append(AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs))
        except (OSError, ValueError) as error:
            logger.warning(
                f"{str(pretrained_model_name_or_path)!r} is a cascade whose members have tokenizers of their own, but "
                f"member {index}'s could not be loaded ({error}); `model.tokenizers` is None, so the pipelines cannot "
                "tokenize texts for it. Pass each member's inputs yourself, or save the cascade with its tokenizers."
            )
            return None
    return tokenizers


__all__ = [
    "MEMBER_INPUT_NAMES",
    "check_member_inputs",
    "load_tokenizers",
    "max_input_length",
    "member_tokenizers",
    "pop_member_inputs",
    "save_tokenizers",
    "tokenize_for_members",
    "tokenizer_folder",
]
