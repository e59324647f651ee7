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
"""Word alignment and the SENTEE / TOKEE exit rules of sequence-labelling early exit (Li et al., ACL 2021).

Everything here works on words, not word-pieces: a word is a maximal run of consecutive positions with the same
non-negative word id (the tokenizer's `word_ids()`); its first position is where its label and prediction live, the
other positions follow it. Special tokens and padding have word id `-1` and never decide anything.

The same [`ActiveWords.decide`] decides exits in the live forward of [`BertForTokenEarlyExit`] and in
[`TokenExitRule.simulate`] (which replays stored per-layer logits, as stage-2 self-sampling does), so the two cannot
drift apart.

Shipped with `trust_remote_code` checkpoints: imports only torch (a tokenizer is passed in, never imported).
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .exit_utils import classifier_head_flops, encoder_layer_flops, normalized_entropy, resolve_thresholds


EXIT_MODES: tuple[str, ...] = ("token", "sentence")
SENTENCE_POOLINGS: tuple[str, ...] = ("max", "mean")
THRESHOLD_SCHEDULES: tuple[str, ...] = ("constant", "paper")

# label id that losses ignore, as in transformers' token-classification examples
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------------
# Validation and thresholds
# --------------------------------------------------------------------------------------------------------------------


def check_window_size(value: int, name: str = "window_size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(
            f"`{name}` must be an odd integer >= 1 (the window is centred on the word: W // 2 words on each side), "
            f"got {value!r}."
        )
    return value


def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def layer_thresholds(
    threshold: float | list[float],
    exit_layers: list[int],
    num_hidden_layers: int,
    schedule: str = "constant",
    cap: float = 1.0,
) -> list[float]:
    """One threshold on the normalised uncertainty `u = H(p) / log C` per exit.

    Args:
        threshold: One number in `[0, 1]`, or (schedule `"constant"` only) one number per exit.
        exit_layers: 1-based layers that carry an exit head.
        num_hidden_layers: `L`.
        schedule: `"constant"` (the threshold as given) or `"paper"`: the released code's rule, `threshold` for exits
            in the lower half of the layers (`layer <= L // 2`) and `min(2 * threshold, cap)` for the upper half.
        cap: Upper bound of the doubled threshold, in `[0, 1]`.

    Raises:
        ValueError: a value outside `[0, 1]`, a list of the wrong length, or a list with the `"paper"` schedule.
    """
    check_choice(schedule, THRESHOLD_SCHEDULES, "threshold_schedule")
    if schedule == "constant":
        return resolve_thresholds("normalized_entropy", threshold, len(exit_layers))
    if isinstance(threshold, (list, tuple)):
        raise ValueError(
            "`exit_threshold` must be a single number with threshold_schedule='paper' (the schedule derives the "
            f"per-layer values from it), got a list of {len(threshold)}; use threshold_schedule='constant' for a list."
        )
    (tau,) = resolve_thresholds("normalized_entropy", threshold, 1)
    (cap,) = resolve_thresholds("normalized_entropy", cap, 1, name="threshold_cap")
    return [tau if layer <= num_hidden_layers // 2 else min(2 * tau, cap) for layer in exit_layers]


# --------------------------------------------------------------------------------------------------------------------
# Word alignment
# --------------------------------------------------------------------------------------------------------------------


def word_layout(
    attention_mask: torch.Tensor, word_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which word each position belongs to, numbered within its sentence, and where each word starts.

    Args:
        attention_mask: `(batch, seq)`, 1 for real positions.
        word_ids: `(batch, seq)` word id of each position (the tokenizer's `word_ids()`, with `-1` for special tokens
            and padding), as built by [`encode_words`]. Without it, every real position except the first and the last
            one of each row is its own word: BERT's `[CLS] ... [SEP]` layout of a single sequence whose word-pieces
            are all whole words.

    Returns:
        `(word_index, word_start)`, both `(batch, seq)`: `word_index` is the 0-based rank of the position's word among
        the words of its sentence in reading order (`-1` for special tokens and padding), so windows count words, not
        word-pieces; `word_start` is True at the first word-piece of each word.
    """
    real = attention_mask.bool()
    if word_ids is None:
        seq_len = real.shape[1]
        positions = torch.arange(seq_len, device=real.device).expand_as(real)
        first = torch.where(real, positions, seq_len).min(dim=1, keepdim=True).values
        last = torch.where(real, positions, -1).max(dim=1, keepdim=True).values
        in_word = real & (positions > first) & (positions < last)
        word_start = in_word
    else:
        if not isinstance(word_ids, torch.Tensor):
            raise TypeError(f"`word_ids` must be a torch.Tensor, got {type(word_ids).__name__}.")
        if word_ids.shape != real.shape:
            raise ValueError(
                f"`word_ids` has shape {tuple(word_ids.shape)} but the inputs have shape {tuple(real.shape)}."
            )
        in_word = real & (word_ids >= 0)
        previous_id = F.pad(word_ids, (1, 0), value=-1)[:, :-1]
        previous_in_word = F.pad(in_word, (1, 0), value=False)[:, :-1]
        word_start = in_word & ~(previous_in_word & (previous_id == word_ids))
    word_index = torch.where(in_word, word_start.long().cumsum(dim=1) - 1, -1)
    return word_index, word_start


# --------------------------------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------------------------------


def window_max(word_uncertainty: torch.Tensor, window_size: int) -> torch.Tensor:
    """`max_{k in [j - W//2, j + W//2]} u_k` for every word `j`, the window clipped at the sentence's edges.

    Args:
        word_uncertainty: `(batch, max_words)` non-negative uncertainties; slots that must not hold a neighbour back
            (exited words, slots past a sentence's last word) hold 0, which never raises a maximum of values >= 0,
            so a window reaching past the sentence is the clipped window.
        window_size: Odd `W >= 1`.
    """
    if word_uncertainty.shape[-1] == 0 or window_size == 1:
        return word_uncertainty
    pooled = F.max_pool1d(word_uncertainty.unsqueeze(1), kernel_size=window_size, stride=1, padding=window_size // 2)
    return pooled.squeeze(1)


@dataclass(frozen=True)
class TokenExitRule:
    """A fully resolved SENTEE / TOKEE rule. Build it with [`TokenExitRule.build`] (or the config's `exit_rule`).

    Attributes:
        mode: `"token"` (TOKEE) or `"sentence"` (SENTEE).
        thresholds: One threshold on `u = H(p) / log C` per exit; a word (TOKEE) or sentence (SENTEE) leaves at exit
            `k` when its statistic is strictly below `thresholds[k]` (so 0 never exits).
        window_size: TOKEE's odd window width `W`, in words.
        sentence_pooling: SENTEE's statistic over the words of a sentence, `"max"` or `"mean"`.
    """

    mode: str
    thresholds: tuple[float, ...]
    window_size: int = 5
    sentence_pooling: str = "max"
    # `(batch, num_exits)` thresholds of each sentence of one call (see `for_examples`), instead of `thresholds`
    example_thresholds: torch.Tensor | None = field(default=None, compare=False, hash=False)

    def for_examples(
        self,
        thresholds: torch.Tensor,
        batch_size: int,
        exit_layers: list[int],
        num_hidden_layers: int,
        threshold_schedule: str = "constant",
        threshold_cap: float = 1.0,
    ) -> "TokenExitRule":
        """This rule with a threshold per sentence of one batch, `(batch,)`, spread over the exits by the schedule
        as a single threshold is (see [`layer_thresholds`]); or `(batch, num_exits)` with the `"constant"` schedule.
        Every sentence decides exactly as it would alone with its own threshold."""
        from .exit_utils import resolve_example_thresholds

        values = resolve_example_thresholds("normalized_entropy", thresholds, batch_size, len(exit_layers))
        if threshold_schedule == "paper":
            if thresholds.dim() != 1:
                raise ValueError(
                    "`exit_threshold` per example must be one number per sentence, shape (batch,), with "
                    "threshold_schedule='paper' (the schedule derives the per-layer values from it)."
                )
            (cap,) = resolve_thresholds("normalized_entropy", threshold_cap, 1, name="threshold_cap")
            upper = torch.tensor([layer > num_hidden_layers // 2 for layer in exit_layers])
            values = torch.where(upper, (2 * values).clamp_max(cap), values)
        return replace(self, example_thresholds=values)

    @classmethod
    def build(
        cls,
        mode: str,
        threshold: float | list[float],
        exit_layers: list[int],
        num_hidden_layers: int,
        window_size: int = 5,
        sentence_pooling: str = "max",
        threshold_schedule: str = "constant",
        threshold_cap: float = 1.0,
    ) -> "TokenExitRule":
        check_choice(mode, EXIT_MODES, "exit_mode")
        check_choice(sentence_pooling, SENTENCE_POOLINGS, "sentence_pooling")
        check_window_size(window_size)
        thresholds = layer_thresholds(threshold, exit_layers, num_hidden_layers, threshold_schedule, threshold_cap)
        return cls(mode=mode, thresholds=tuple(thresholds), window_size=window_size, sentence_pooling=sentence_pooling)

    def word_fires(
        self, exit_index: int, uncertainty: torch.Tensor, active: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Which active words leave at exit `exit_index`.

        Args:
            exit_index: 0-based position of the exit among the model's exits.
            uncertainty: `(batch, max_words)` normalised uncertainty of each word at this exit (any value where
                `active` is False).
            active: `(batch, max_words)` True for words not yet exited.
            rows: With per-sentence thresholds, the position in the original batch of each row here (the batch
                shrinks as sentences leave); `None` when the rows are the whole batch, in order.

        Returns:
            `(batch, max_words)` bool, True for active words that leave now.

        TOKEE: word `j` leaves when the maximum of `u` over the active words `k` with `|k - j| <= W // 2` is below the
        threshold. Exited words count as certain (`u = 0`): a frozen word no longer changes, so it is no reason for a
        neighbour to wait. This is a deliberate departure from the released code, where exited words stay in their
        neighbours' windows by accident (a stale mask) with an uncertainty recomputed by the later head on their
        copied state. With non-decreasing thresholds, keeping the uncertainty a word had when it exited would decide
        exactly the same, because that value was already below every later threshold.

        SENTEE: every word of a sentence leaves when the maximum (or mean) of `u` over its words is below the
        threshold; a sentence without words has nothing to decide.
        """
        u = torch.where(active, uncertainty.float(), 0.0)
        if self.example_thresholds is None:
            threshold = self.thresholds[exit_index]
        else:  # one per sentence, at the statistic's precision
            threshold = self.example_thresholds[:, exit_index]
            threshold = (threshold if rows is None else threshold[rows.cpu()]).to(device=u.device, dtype=u.dtype)
            threshold = threshold.unsqueeze(-1) if self.mode == "token" else threshold
        if self.mode == "token":
            return active & (window_max(u, self.window_size) < threshold)
        if self.sentence_pooling == "max":
            statistic = u.max(dim=-1).values if u.shape[-1] else u.new_zeros(u.shape[0])
        else:
            statistic = u.sum(dim=-1) / active.sum(dim=-1).clamp_min(1)
        return active & (statistic < threshold).unsqueeze(-1)

    def simulate(
        self,
        all_logits: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The exit each position would take if every layer's logits were those in `all_logits`.

        For SENTEE this is exactly what the live early exit picks. For TOKEE it is the released code's offline replay
        (stage-2 self-sampling): with real early exit, frozen words stop updating and later states differ.

        Args:
            all_logits: `(num_exits, batch, seq, num_labels)` logits of every exit at every position.
            attention_mask: `(batch, seq)`.
            word_ids: As for [`word_layout`].

        Returns:
            `(batch, seq)` long: 0-based exit index of every real position (word-pieces follow their word; special
            tokens take the exit at which their sentence ran out of active words); `-1` at padding.
        """
        num_exits, batch_size, seq_len = all_logits.shape[:3]
        word_index, word_start = word_layout(attention_mask, word_ids)
        active = attention_mask.bool().clone()
        exit_index = torch.where(active, num_exits - 1, -1)
        for k in range(num_exits - 1):
            state = ActiveWords.build(active, word_index, word_start)
            if state.positions.numel() == 0:
                break
            logits = all_logits[k].reshape(batch_size * seq_len, -1).index_select(0, state.positions)
            freeze, remaining = state.decide(self, k, logits)
            # whole sentences leave when they run out of words: their special tokens go with their last words
            stop = state.positions[freeze | ~remaining.index_select(0, state.rows)]
            exit_index.view(-1)[stop] = k
            active.view(-1)[stop] = False
        return exit_index


@functools.lru_cache(maxsize=128, typed=True)
def cached_token_exit_rule(
    mode: str,
    threshold: float | tuple[float, ...],
    exit_layers: tuple[int, ...],
    num_hidden_layers: int,
    window_size: int,
    sentence_pooling: str,
    threshold_schedule: str,
    threshold_cap: float,
) -> TokenExitRule:
    """[`TokenExitRule.build`] for hashable settings, memoised: a forward call resolves its rule in microseconds
    (errors are raised again on every call, they are not cached). `typed` keeps `True` from sharing `1`'s entry."""
    return TokenExitRule.build(
        mode,
        threshold,
        list(exit_layers),
        num_hidden_layers,
        window_size=window_size,
        sentence_pooling=sentence_pooling,
        threshold_schedule=threshold_schedule,
        threshold_cap=threshold_cap,
    )


@dataclass
class ActiveWords:
    """Bookkeeping for exit decisions over the positions still active in a batch.

    Built once per change of the active set (a word exited, a sentence left) and used by every exit until the next
    change, so that a decision costs a fixed handful of tensor operations. Positions are flat indices
    `row * seq + column` of the `(batch, seq)` layout; words are slots `row * max_words + word` of a `(batch,
    max_words)` layout, plus one spare slot past the end for special tokens, which never fires.

    Attributes:
        positions: `(N,)` flat index of every active position, in reading order.
        rows: `(N,)` row of each active position.
        word_slot: `(N,)` word slot of each active position (the spare slot for special tokens).
        starts: `(S,)` indices into `positions` of the first word-piece of every active word.
        start_slot: `(S,)` their word slots.
        active_words: `(batch, max_words)` bool.
    """

    positions: torch.Tensor
    rows: torch.Tensor
    word_slot: torch.Tensor
    starts: torch.Tensor
    start_slot: torch.Tensor
    active_words: torch.Tensor

    @classmethod
    def build(
        cls, active: torch.Tensor, word_index: torch.Tensor, word_start: torch.Tensor, max_words: int | None = None
    ) -> "ActiveWords":
        """From the `(batch, seq)` active mask and the [`word_layout`] of the same rows; `max_words`, slots per row, at
        least the most words of a row (default: counted, a host synchronisation; a loop that rebuilds the layout
        passes the count of its first batch)."""
        batch_size, seq_len = active.shape
        positions = active.reshape(-1).nonzero().squeeze(-1)
        rows = torch.div(positions, seq_len, rounding_mode="floor")
        words = word_index.reshape(-1).index_select(0, positions)
        # at least one slot per row, so that rows without words (only [CLS] [SEP]) have a layout with nothing active
        if max_words is None:
            max_words = max(int(word_index.max()) + 1, 1) if word_index.numel() else 1
        spare = batch_size * max_words
        word_slot = torch.where(words >= 0, rows * max_words + words, spare)
        starts = word_start.reshape(-1).index_select(0, positions).nonzero().squeeze(-1)
        start_slot = word_slot.index_select(0, starts)
        active_words = torch.zeros(spare + 1, dtype=torch.bool, device=active.device)
        active_words = active_words.index_fill_(0, start_slot, True)[:spare].view(batch_size, max_words)
        return cls(positions, rows, word_slot, starts, start_slot, active_words)

    def decide(
        self, rule: TokenExitRule, exit_index: int, logits: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One exit decision.

        Args:
            rule: The resolved rule.
            exit_index: 0-based exit number.
            logits: `(N, num_labels)` logits of this exit at `positions`.
            rows: The original batch position of each row of the layout (see [`TokenExitRule.word_fires`]).

        Returns:
            `(freeze, remaining)`: `(N,)` bool, True for positions whose word leaves now (special tokens never); and
            `(batch,)` bool, True for rows that still have an active word afterwards.
        """
        batch_size, max_words = self.active_words.shape
        uncertainty = normalized_entropy(logits.index_select(0, self.starts))
        word_uncertainty = uncertainty.new_zeros(batch_size * max_words + 1)
        word_uncertainty = word_uncertainty.index_copy_(0, self.start_slot, uncertainty)[:-1]
        fires = rule.word_fires(exit_index, word_uncertainty.view(batch_size, max_words), self.active_words, rows)
        with_spare = torch.cat([fires.reshape(-1), fires.new_zeros(1)])
        freeze = with_spare.index_select(0, self.word_slot)
        remaining = (self.active_words & ~fires).any(dim=-1)
        return freeze, remaining


@dataclass
class SentenceWords:
    """[`ActiveWords`] for a batch of one sentence under TOKEE, in Python lists.

    At batch size 1 the fixed dozen tensor operations of [`ActiveWords.decide`] cost more than the exit head that feeds
    them (a CoNLL sentence has about 15 words); the window over a short list costs microseconds. It decides exactly as
    [`TokenExitRule.word_fires`] in token mode: a word leaves when every active word within `W // 2` of it (itself
    included; exited words count as certain) has an uncertainty below the threshold, compared at float32 as there (a
    NaN uncertainty holds its window back).

    Attributes:
        pieces: The positions of each word of the sentence (a run of positions of one word id), in reading order.
        specials: The positions outside every word (special tokens): active until the sentence leaves.
        words: The words not yet exited, in order.
        positions: The active positions, in order.
    """

    pieces: list[list[int]]
    specials: list[int]
    words: list[int]
    positions: list[int]

    @classmethod
    def build(cls, word_index: list[int]) -> "SentenceWords":
        """From one row of [`word_layout`]'s `word_index` (every position active)."""
        pieces: list[list[int]] = [[] for _ in range(max(word_index, default=-1) + 1)]
        specials = []
        for position, word in enumerate(word_index):
            (pieces[word] if word >= 0 else specials).append(position)
        return cls(pieces, specials, list(range(len(pieces))), list(range(len(word_index))))

    def start_rows(self) -> list[int]:
        """The row of each active word's first piece among `positions` (the rows of an exit's logits)."""
        row_of = {position: row for row, position in enumerate(self.positions)}
        return [row_of[self.pieces[word][0]] for word in self.words]

    def decide(self, uncertainty: list[float], threshold: float, window_size: int) -> bool:
        """Drops the words that leave at this exit and returns whether any did.

        Args:
            uncertainty: `u = H(p) / log C` of each active word (at its first piece), in the order of `words`, as
                float32 values.
            threshold: The exit's threshold, already rounded to float32 (so that `u < threshold` compares as the
                batched rule does).
            window_size: The odd window `W`.
        """
        by_word = [0.0] * len(self.pieces)
        for word, value in zip(self.words, uncertainty):
            by_word[word] = value
        half = window_size // 2
        staying = [
            word
            for word in self.words
            if not all(value < threshold for value in by_word[max(word - half, 0) : word + half + 1])
        ]
        if len(staying) == len(self.words):
            return False
        self.words = staying
        self.positions = sorted(self.specials + [position for word in staying for position in self.pieces[word]])
        return True


def token_exit_flops(
    exit_layer: torch.Tensor,
    lengths: torch.Tensor,
    exit_layers: list[int],
    hidden_size: int,
    intermediate_size: int,
    num_labels: int,
    layer_flops: Callable | None = None,
    head_flops: int | None = None,
    call_flops: int = 0,
    per_length: torch.Tensor | None = None,
) -> torch.Tensor:
    """FLOPs of each sentence of an early-exit run, from the layer at which each of its positions stopped.

    A position is a query in layers `1..exit_layer` and a head is evaluated on it at every exit layer up to its own,
    so with `q_l` the active positions in layer `l` (`n` the sentence's real length):
    `sum_l encoder_layer_flops(n, q_l) = depth * 4nd^2 + (sum_p exit_layer_p) * (4d^2 + 4nd + 4df)`, plus `2dC` per
    head evaluation. The depth is the sentence's largest exit layer (its special tokens run until it leaves).

    Args:
        exit_layer: `(batch, seq)` 1-based exit layer of each position, 0 at padding.
        lengths: `(batch,)` real lengths.
        exit_layers: The model's 1-based exit layers.
        hidden_size, intermediate_size, num_labels: `d`, `f`, `C`.
        layer_flops: `layer_flops(n, q, layer_index)`, the cost of a layer of another architecture than BERT (its
            backbone's `layer_flops`, linear in `q`; layers after the first all cost the same). Default: BERT's.
        head_flops: The cost of one head at one position (default `2dC`).
        call_flops: What each layer a sentence runs costs it besides (DeBERTa-v2's relative position projections).
        per_length: Optional `(3, max_length + 1)` table of [`token_layer_costs`] for every length (read instead of
            computed, for the lengths it covers: at batch size 1 the dozen small operations cost more than a head).

    Returns:
        `(batch,)` long.
    """
    lengths = lengths.long()
    depth = exit_layer.amax(dim=-1)
    query_layers = exit_layer.sum(dim=-1)
    if per_length is not None and int(lengths.max()) < per_length.shape[1]:
        keys_and_values, per_query, first_layer_extra = per_length[:, lengths]
    else:
        keys_and_values, per_query, first_layer_extra = token_layer_costs(
            lengths, hidden_size, intermediate_size, layer_flops
        )
    layers = torch.tensor(exit_layers, device=exit_layer.device)
    head_evaluations = (exit_layer.unsqueeze(-1) >= layers).sum(dim=(1, 2))
    head = classifier_head_flops(hidden_size, num_labels) if head_flops is None else head_flops
    flops = depth * (keys_and_values + call_flops) + query_layers * per_query + head_evaluations * head
    return flops + (depth > 0) * first_layer_extra


def token_layer_costs(
    lengths: torch.Tensor, hidden_size: int, intermediate_size: int, layer_flops: Callable | None = None
) -> torch.Tensor:
    """`(3, batch)` per sentence of each length: what a layer costs it for keys and values, what each query adds, and
    what the first layer costs beyond that (the terms of [`token_exit_flops`]; `layer_flops` as there)."""
    if layer_flops is None:

        def layer_flops(n, q, layer_index=0):
            return encoder_layer_flops(n, hidden_size, intermediate_size, num_queries=q)

    keys_and_values = torch.as_tensor(layer_flops(lengths, 0, 1), device=lengths.device).long()
    per_query = torch.as_tensor(layer_flops(lengths, 1, 1), device=lengths.device).long() - keys_and_values
    first_layer_extra = torch.as_tensor(layer_flops(lengths, 0, 0), device=lengths.device).long() - keys_and_values
    return torch.stack([keys_and_values, per_query, first_layer_extra.expand_as(keys_and_values)])


# --------------------------------------------------------------------------------------------------------------------
# Inputs from words
# --------------------------------------------------------------------------------------------------------------------


def encode_words(
    tokenizer,
    sentences: list[list[str]],
    labels: list[list[int]] | None = None,
    max_length: int | None = None,
    padding: bool | str = True,
    return_tensors: str | None = "pt",
):
    """Turn pre-split sentences into [`BertForTokenEarlyExit`] inputs, with word alignment and first-word-piece labels.

    Args:
        tokenizer: A fast tokenizer (one with `word_ids()`), e.g. `AutoTokenizer.from_pretrained(checkpoint)`.
        sentences: One list of words per sentence.
        labels: Optional label ids, one per word of each sentence. Each word's label goes to its first word-piece;
            its other word-pieces, special tokens and padding get -100 (ignored by the loss).
        max_length: Truncation length in word-pieces, special tokens included. Defaults to the tokenizer's
            `model_max_length`. This is where truncation happens: words past it get no position, so no prediction;
            the model itself rejects inputs longer than its position embeddings instead of truncating.
        padding: Passed to the tokenizer (`True`: pad to the longest sentence).
        return_tensors: Passed to the tokenizer.

    Returns:
        The tokenizer's `BatchEncoding` plus `word_ids` (`(batch, seq)`, the index of the word each position comes
        from, -1 for special tokens and padding) and, with `labels`, `labels` (`(batch, seq)`).

    A word that tokenises to nothing (an empty string, a lone zero-width or control character) is replaced by the
    tokenizer's unknown token, so every word keeps exactly one word index and gets a prediction.

    Example:

    ```python
    >>> batch = encode_words(tokenizer, [["EU", "rejects", "German", "call"]], labels=[[3, 0, 7, 0]])
    >>> sorted(batch.keys())
    ['attention_mask', 'input_ids', 'labels', 'token_type_ids', 'word_ids']
    ```
    """
    sentences = [list(words) for words in sentences]
    if labels is not None:
        if len(labels) != len(sentences):
            raise ValueError(f"`labels` has {len(labels)} sentences but `sentences` has {len(sentences)}.")
        for i, (words, tags) in enumerate(zip(sentences, labels)):
            if len(tags) != len(words):
                raise ValueError(f"labels[{i}] has {len(tags)} labels but sentence {i} has {len(words)} words.")
    if max_length is None:
        max_length = tokenizer.model_max_length
    kwargs = dict(is_split_into_words=True, truncation=True, max_length=max_length)

    # replace words that tokenise to nothing; sentences without one are not tokenised twice
    probe = tokenizer(sentences, **kwargs)
    for i, words in enumerate(sentences):
        present = {w for w in probe.word_ids(i) if w is not None}
        last = max(present, default=-1)
        missing = [w for w in range(len(words)) if w not in present]
        empty = [w for w in missing if w < last]
        trailing = [w for w in missing if w > last]  # cut off by truncation, or empty themselves
        if trailing:
            pieces = tokenizer([words[w] for w in trailing], add_special_tokens=False)["input_ids"]
            empty += [w for w, ids in zip(trailing, pieces) if not ids]
        for w in empty:
            words[w] = tokenizer.unk_token

    encoding = tokenizer(sentences, padding=padding, **kwargs)
    word_ids = [[-1 if w is None else w for w in encoding.word_ids(i)] for i in range(len(sentences))]
    encoding["word_ids"] = word_ids
    if labels is not None:
        aligned = []
        for ids, tags in zip(word_ids, labels):
            row, previous = [], -1
            for w in ids:
                row.append(int(tags[w]) if w >= 0 and w != previous else IGNORE_INDEX)
                previous = w
            aligned.append(row)
        encoding["labels"] = aligned
    if return_tensors is not None:
        encoding = encoding.convert_to_tensors(return_tensors)
    return encoding


def uncertainty_of(logits: torch.Tensor) -> torch.Tensor:
    """Normalised uncertainty `H(p) / log C` of `(..., num_labels)` logits, shape `(...)`."""
    return normalized_entropy(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape[:-1])


__all__ = [
    "EXIT_MODES",
    "ActiveWords",
    "IGNORE_INDEX",
    "SENTENCE_POOLINGS",
    "SentenceWords",
    "THRESHOLD_SCHEDULES",
    "TokenExitRule",
    "cached_token_exit_rule",
    "encode_words",
    "token_exit_flops",
    "layer_thresholds",
    "uncertainty_of",
    "window_max",
    "word_layout",
]
