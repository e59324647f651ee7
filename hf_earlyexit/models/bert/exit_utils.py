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
"""Exit criteria as pure tensor functions, and the analytic FLOPs accounting shared by every family.

Every function here works per example: a criterion maps `(batch, num_labels)` logits to a `(batch,)` tensor and never
reduces over the batch. Entropies and divergences are computed from `log_softmax`, so logits of any magnitude give
finite values.

This module is shipped with `trust_remote_code` checkpoints: it imports only torch.
"""

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F


ExitCriterion = Literal["max_prob", "entropy", "normalized_entropy", "patience", "divergence"]
Divergence = Literal["jsd", "kl", "symmetric_kl"]

EXIT_CRITERIA: tuple[str, ...] = ("max_prob", "entropy", "normalized_entropy", "patience", "divergence")
DIVERGENCES: tuple[str, ...] = ("jsd", "kl", "symmetric_kl")

# Used when `exit_threshold` is left unset. `patience` has no threshold (it compares predictions).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "max_prob": 0.9,
    "entropy": 0.3,
    "normalized_entropy": 0.3,
    "divergence": 0.01,
}


# --------------------------------------------------------------------------------------------------------------------
# Criteria
# --------------------------------------------------------------------------------------------------------------------


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """Largest class probability `max_c softmax(logits)_c`, per example. Shape `(batch,)`."""
    return F.log_softmax(logits.float(), dim=-1).max(dim=-1).values.exp()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy `H(p) = -sum_c p_c log p_c` in nats of `p = softmax(logits)`, per example. Shape `(batch,)`.

    Computed from `log_softmax`; classes with zero probability contribute exactly 0 (not `0 * -inf = nan`).
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=-1)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy divided by its maximum `log C`, in `[0, 1]`, per example. Shape `(batch,)`."""
    num_labels = logits.shape[-1]
    if num_labels < 2:
        raise ValueError(f"normalized_entropy needs at least 2 classes, got logits with {num_labels}.")
    return entropy(logits) / math.log(num_labels)


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """`KL(p || q)` in nats between `softmax(logits_p)` and `softmax(logits_q)`, per example. Shape `(batch,)`."""
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0)


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """True Jensen-Shannon divergence `KL(p || m) / 2 + KL(q || m) / 2` with `m = (p + q) / 2`, in nats.

    Bounded by `log 2`. This is not F-PABEE's "JSD", which is a cross-entropy to the mixture (JSD plus the mean entropy).
    Shape `(batch,)`.
    """
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    p, q = log_p.exp(), log_q.exp()
    kl_pm = torch.where(p > 0, p * (log_p - log_m), torch.zeros_like(p)).sum(dim=-1)
    kl_qm = torch.where(q > 0, q * (log_q - log_m), torch.zeros_like(q)).sum(dim=-1)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, math.log(2.0))


def divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, measure: str = "jsd") -> torch.Tensor:
    """Divergence `D(p, q)` between two exits' distributions, per example. Shape `(batch,)`.

    Args:
        logits_p: Logits of the current exit (`p_i`).
        logits_q: Logits of the previous exit (`p_{i-1}`).
        measure: `"jsd"` (true Jensen-Shannon), `"kl"` (`KL(p_i || p_{i-1})`) or `"symmetric_kl"`
            (`KL(p_i || p_{i-1}) + KL(p_{i-1} || p_i)`).
    """
    if measure == "jsd":
        return js_divergence(logits_p, logits_q)
    if measure == "kl":
        return kl_divergence(logits_p, logits_q)
    if measure == "symmetric_kl":
        return kl_divergence(logits_p, logits_q) + kl_divergence(logits_q, logits_p)
    raise ValueError(f"Unknown divergence measure {measure!r}; expected one of {DIVERGENCES}.")


def predictions_agree(
    logits: torch.Tensor, prev_logits: torch.Tensor, regression_tolerance: float = 0.1
) -> torch.Tensor:
    """Whether two consecutive exits agree, per example (PABEE's test). Shape `(batch,)`, bool.

    Classification: same argmax. Regression (`num_labels == 1`): `|y_i - y_{i-1}| < regression_tolerance`.
    """
    if logits.shape[-1] == 1:
        return (logits.float() - prev_logits.float()).abs().squeeze(-1) < regression_tolerance
    return logits.argmax(dim=-1) == prev_logits.argmax(dim=-1)


def patience(
    all_logits: torch.Tensor, patience: int = 1, regression_tolerance: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """PABEE's patience counters over a stack of exits, per example.

    Args:
        all_logits: `(num_exits, batch, num_labels)` logits of consecutive exits.
        patience: Consecutive agreements needed to exit.
        regression_tolerance: Agreement tolerance when `num_labels == 1`.

    Returns:
        `(counters, fires)`, both `(num_exits, batch)`: `counters[i]` is how many consecutive exits up to `i` agreed
        with their predecessor; `fires[i]` is `counters[i] >= patience`.
    """
    counters = torch.zeros(all_logits.shape[:2], dtype=torch.long, device=all_logits.device)
    for i in range(1, all_logits.shape[0]):
        agree = predictions_agree(all_logits[i], all_logits[i - 1], regression_tolerance)
        counters[i] = torch.where(agree, counters[i - 1] + 1, 0)
    return counters, counters >= patience


# --------------------------------------------------------------------------------------------------------------------
# Exit rule: validation and the single step used both by the live forward and by offline simulation
# --------------------------------------------------------------------------------------------------------------------


def _check_threshold(criterion: str, value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    if criterion in ("max_prob", "normalized_entropy") and not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` for criterion {criterion!r} is a probability-scale value in [0, 1], got {value}.")
    if criterion in ("entropy", "divergence") and value < 0.0:
        raise ValueError(f"`{name}` for criterion {criterion!r} is a non-negative entropy/divergence, got {value}.")


def resolve_thresholds(
    criterion: str,
    threshold: float | list[float] | tuple[float, ...] | None,
    num_exits: int,
    name: str = "exit_threshold",
) -> list[float] | None:
    """Validate a threshold setting and expand it to one value per exit.

    Args:
        criterion: One of `EXIT_CRITERIA`.
        threshold: A number, one number per exit, or `None` for the criterion's default.
        num_exits: Number of exits the list must cover.
        name: Argument name used in error messages.

    Returns:
        One threshold per exit, or `None` for `"patience"` (which has no threshold).

    Raises:
        ValueError: unknown criterion, a value out of the criterion's range, or a list of the wrong length.
    """
    if criterion not in EXIT_CRITERIA:
        raise ValueError(f"Unknown exit criterion {criterion!r}; expected one of {EXIT_CRITERIA}.")
    if criterion == "patience":
        return None
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[criterion]
    if isinstance(threshold, (list, tuple)):
        if len(threshold) != num_exits:
            raise ValueError(
                f"`{name}` has {len(threshold)} values but the model has {num_exits} exits; give one number or "
                f"exactly one per exit."
            )
        for i, value in enumerate(threshold):
            _check_threshold(criterion, value, f"{name}[{i}]")
        return [float(v) for v in threshold]
    _check_threshold(criterion, threshold, name)
    return [float(threshold)] * num_exits


def resolve_example_thresholds(
    criterion: str, thresholds: torch.Tensor, batch_size: int, num_exits: int, name: str = "exit_threshold"
) -> torch.Tensor:
    """Validate per-example thresholds and expand them to `(batch, num_exits)` float64.

    Args:
        criterion: One of `EXIT_CRITERIA` (not `"patience"`, which has no threshold).
        thresholds: `(batch,)` (one per example, for every exit) or `(batch, num_exits)`.
        batch_size: The batch the thresholds are for.
        num_exits: Exits per example.
        name: Argument name used in error messages.
    """
    if criterion == "patience":
        raise ValueError(f"`{name}` per example: criterion 'patience' has no threshold.")
    if not torch.is_tensor(thresholds) or not (thresholds.is_floating_point() or thresholds.dtype == torch.long):
        raise ValueError(f"`{name}` per example must be a float tensor, got {type(thresholds).__name__}.")
    if thresholds.dim() == 1:
        thresholds = thresholds.unsqueeze(-1).expand(-1, num_exits)
    if thresholds.dim() != 2 or thresholds.shape != (batch_size, num_exits):
        raise ValueError(
            f"`{name}` per example must have shape ({batch_size},) or ({batch_size}, {num_exits}) (batch, exits), got "
            f"{tuple(thresholds.shape)}."
        )
    values = thresholds.detach().double()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"`{name}` per example must be finite numbers, got {values.tolist()}.")
    low, high = (0.0, 1.0) if criterion in ("max_prob", "normalized_entropy") else (0.0, math.inf)
    if bool((values < low).any() | (values > high).any()):
        raise ValueError(
            f"`{name}` per example for criterion {criterion!r} must lie in [{low}, {high}], got {values.tolist()}."
        )
    return values


def check_patience(value: int, name: str = "patience") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return value


def check_criterion_fits_labels(criterion: str, num_labels: int) -> None:
    if num_labels == 1 and criterion != "patience":
        raise ValueError(
            f"Exit criterion {criterion!r} needs class probabilities, but num_labels=1 (regression); use 'patience', "
            "which compares consecutive predictions within `regression_tolerance`."
        )


@dataclass(frozen=True)
class ExitRule:
    """A fully resolved exit criterion: what `exit_step` needs at every exit.

    Build it with [`ExitRule.build`], which validates every field and gives a specific error for each bad value.
    """

    criterion: str
    thresholds: tuple[float, ...] | None
    patience: int = 1
    divergence: str = "jsd"
    regression_tolerance: float = 0.1
    # `max_prob` fires at `max p > t` rather than `max p >= t` (CascadeBERT's routing rule; the multi-exit criteria
    # of PABEE / FastBERT use `>=`); the two differ only on exact ties
    strict_confidence: bool = False
    # `(batch, num_exits)` thresholds of each example of one call (see `for_examples`), instead of `thresholds`
    example_thresholds: torch.Tensor | None = field(default=None, compare=False, hash=False)

    def for_examples(self, thresholds: torch.Tensor, batch_size: int) -> "ExitRule":
        """This rule with a threshold per example of one batch: `(batch,)` (one per example, every exit) or
        `(batch, num_exits)`, validated as `exit_threshold` is. Lets requests with different thresholds share one
        forward pass (a serving batch); every example decides exactly as it would alone with its own threshold."""
        return replace(
            self,
            example_thresholds=resolve_example_thresholds(
                self.criterion, thresholds, batch_size, len(self.thresholds or ())
            ),
        )

    @classmethod
    def build(
        cls,
        criterion: str,
        threshold: float | list[float] | None,
        num_exits: int,
        num_labels: int,
        patience: int = 1,
        divergence: str = "jsd",
        regression_tolerance: float = 0.1,
        strict_confidence: bool = False,
    ) -> "ExitRule":
        if isinstance(threshold, list):
            threshold = tuple(threshold)
        arguments = (criterion, threshold, num_exits, num_labels, patience, divergence, regression_tolerance)
        try:
            return _build_rule(cls, *arguments, strict_confidence)
        except TypeError:  # an unhashable argument: validate without the cache (it raises the specific error)
            return _build_rule.__wrapped__(cls, *arguments, strict_confidence)

    @classmethod
    def _build(
        cls, criterion, threshold, num_exits, num_labels, patience, divergence, regression_tolerance, strict_confidence
    ) -> "ExitRule":
        thresholds = resolve_thresholds(criterion, threshold, num_exits)
        check_criterion_fits_labels(criterion, num_labels)
        if criterion in ("patience", "divergence"):
            check_patience(patience)
        if divergence not in DIVERGENCES:
            raise ValueError(f"Unknown divergence measure {divergence!r}; expected one of {DIVERGENCES}.")
        if not regression_tolerance >= 0:
            raise ValueError(f"`regression_tolerance` must be >= 0, got {regression_tolerance}.")
        return cls(
            criterion=criterion,
            thresholds=None if thresholds is None else tuple(thresholds),
            patience=patience,
            divergence=divergence,
            regression_tolerance=float(regression_tolerance),
            strict_confidence=bool(strict_confidence),
        )

    @property
    def is_stateful(self) -> bool:
        return self.criterion in ("patience", "divergence")

    def score(self, logits: torch.Tensor, prev_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The criterion's per-example value at one exit (confidence, entropy or divergence)."""
        if self.criterion == "max_prob":
            return max_prob(logits)
        if self.criterion == "entropy":
            return entropy(logits)
        if self.criterion == "normalized_entropy":
            return normalized_entropy(logits)
        if prev_logits is None:
            return torch.full(logits.shape[:1], float("inf"), device=logits.device)
        if self.criterion == "divergence":
            return divergence(logits, prev_logits, self.divergence)
        raise ValueError(f"Criterion {self.criterion!r} has no scalar score.")

    def step(
        self,
        exit_index: int,
        logits: torch.Tensor,
        prev_logits: torch.Tensor | None,
        counter: torch.Tensor | None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decide, per example, whether to leave at exit number `exit_index` (0-based).

        Args:
            exit_index: Position of this exit among the model's exits.
            logits: `(batch, num_labels)` logits of this exit.
            prev_logits: Logits of the previous exit for the same examples, `None` at the first exit.
            counter: Consecutive-agreement counters of the stateful criteria, `None` at the first exit.
            rows: With per-example thresholds, the positions in the original batch of the examples in `logits` (the
                batch shrinks as examples leave); `None` when it is the whole batch.

        Returns:
            `(fires, counter)`: a `(batch,)` bool tensor and the updated counters (`None` for stateless criteria).
        """
        if not self.is_stateful:
            return self.passes(self.score(logits), exit_index, rows), None
        if counter is None:
            counter = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        if prev_logits is not None:
            if self.criterion == "patience":
                agree = predictions_agree(logits, prev_logits, self.regression_tolerance)
            else:
                agree = self.passes(self.score(logits, prev_logits), exit_index, rows)
            counter = torch.where(agree, counter + 1, 0)
        return counter >= self.patience, counter

    def passes(self, score: torch.Tensor, exit_index: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Compare criterion scores with the threshold of exit `exit_index`, in the criterion's direction:
        `max_prob >= t` (`> t` with `strict_confidence`), `entropy < t`, `normalized_entropy <= t`, `divergence < t`.
        With per-example thresholds, `rows` picks those of the examples in `score` (default: all, in order)."""
        if self.example_thresholds is None:
            threshold = self.thresholds[exit_index]
        else:
            column = self.example_thresholds[:, exit_index]
            # the score's precision, as a Python float threshold would be: a per-example threshold decides exactly
            # as the same value given for the whole call
            threshold = (column if rows is None else column[rows]).to(device=score.device, dtype=score.dtype)
        if self.criterion == "max_prob":
            return score > threshold if self.strict_confidence else score >= threshold
        if self.criterion == "normalized_entropy":
            return score <= threshold
        return score < threshold

    def simulate(self, all_logits: torch.Tensor) -> torch.Tensor:
        """Exit index (0-based) each example would take, from the logits of every exit.

        Uses the same [`ExitRule.step`] as the live forward, so a model run with early exit gives exactly these exits
        for the same logits. The last exit answers every example that did not leave before.

        Args:
            all_logits: `(num_exits, batch, num_labels)`.

        Returns:
            `(batch,)` long tensor of exit indices.
        """
        fires, counter = [], None
        for i in range(all_logits.shape[0] - 1):
            fired, counter = self.step(i, all_logits[i], all_logits[i - 1] if i > 0 else None, counter)  # all rows
            fires.append(fired)
        fires.append(torch.ones_like(all_logits[0, :, 0], dtype=torch.bool))
        return first_exit(torch.stack(fires))


def first_exit(fires: torch.Tensor) -> torch.Tensor:
    """Index of the first exit that fired, per example; the last exit always answers.

    Args:
        fires: `(num_exits, batch)` bool.

    Returns:
        `(batch,)` long tensor.
    """
    fires = fires.clone()
    fires[-1] = True
    return fires.to(torch.uint8).argmax(dim=0)


@functools.lru_cache(maxsize=256)
def _build_rule(
    cls, criterion, threshold, num_exits, num_labels, patience, divergence, regression_tolerance, strict_confidence
):
    # every forward call resolves its rule; validation is pure, so identical settings share one validated rule
    return cls._build(
        criterion, threshold, num_exits, num_labels, patience, divergence, regression_tolerance, strict_confidence
    )


# --------------------------------------------------------------------------------------------------------------------
# FLOPs accounting: multiply-adds count as 2 FLOPs; embeddings, norms and activations are free.
# --------------------------------------------------------------------------------------------------------------------


def encoder_layer_flops(
    num_positions: torch.Tensor | int,
    hidden_size: int,
    intermediate_size: int,
    num_queries: torch.Tensor | int | None = None,
) -> torch.Tensor | int:
    """FLOPs of one BERT encoder layer for one sequence.

    With `n` positions of which `q` are queries (active), hidden `d`, intermediate `f`: K and V projections `4nd^2`,
    Q and attention-output projections `4qd^2`, scores and context `4qnd`, feed-forward `4qdf`.

    Args:
        num_positions: `n`, an int or a tensor of per-example lengths.
        hidden_size: `d`.
        intermediate_size: `f`.
        num_queries: `q`; defaults to `n` (no token exited).
    """
    n = num_positions
    d, f = hidden_size, intermediate_size
    if num_queries is None:  # q = n: one polynomial, fewer tensor ops on the hot path
        return n * (8 * d * d + 4 * d * f) + 4 * d * n * n
    q = num_queries
    return 4 * n * d * d + 4 * q * d * d + 4 * q * n * d + 4 * q * d * f


def classifier_head_flops(hidden_size: int, num_labels: int, pooler: bool = False, bypass_dim: int = 0) -> int:
    """FLOPs of one exit head on one example: optional pooler `2d^2`, bypass `4dr`, classifier `2dC`."""
    flops = 2 * hidden_size * num_labels
    if pooler:
        flops += 2 * hidden_size * hidden_size
    if bypass_dim:
        flops += 4 * hidden_size * bypass_dim
    return flops


def speedup(reference_flops: torch.Tensor | float, actual_flops: torch.Tensor | float) -> float:
    """`sum(reference) / sum(actual)`: the FLOPs speed-up, a ratio of sums over examples (not a mean of ratios)."""
    reference = float(reference_flops.sum()) if torch.is_tensor(reference_flops) else float(reference_flops)
    actual = float(actual_flops.sum()) if torch.is_tensor(actual_flops) else float(actual_flops)
    return reference / actual


def kept_columns(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The sequence positions that are a real token in at least one row of `attention_mask` `(batch, seq)`, as an index
    tensor; `None` when that is every position (nothing to drop). One synchronisation."""
    keep = attention_mask.bool().any(dim=0)
    if bool(keep.all()):
        return None
    return keep.nonzero().squeeze(-1)


def drop_padding_columns(attention_mask: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Remove the sequence positions that are padding in every row (any padding side).

    Attention masks those positions out, so removing them changes no real position's output, only the work done.

    Args:
        attention_mask: `(batch, seq)` with 1 for real tokens.
        tensors: Tensors whose dimension 1 is the sequence dimension (`None` passes through).

    Returns:
        The trimmed mask followed by the trimmed tensors.
    """
    columns = kept_columns(attention_mask)
    if columns is None:
        return (attention_mask, *tensors)
    return (attention_mask[:, columns], *(None if t is None else t[:, columns] for t in tensors))
