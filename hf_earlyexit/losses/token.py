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
"""Recipes of sequence labelling ([`BertForTokenEarlyExit`], `docs/methods.md` section 3): `outputs.all_logits` is
`(num_exits, batch, seq, num_labels)`.

| recipe | class | objective |
| --- | --- | --- |
| `joint` | [`JointTokenExitLoss`] | stage 1: `sum_i w_i CE_i / sum_i w_i` over token losses |
| `self_sampling` | [`SelfSamplingTokenLoss`] | stage 2: sampled TOKEE replay, sandwich, loss on active words only |
| `teacher_distillation` | [`~hf_earlyexit.losses.distillation.TokenTeacherDistillationLoss`] | see there |
"""

import torch

from ..callbacks import add_example_index, record_exit_logits
from ..distributed import global_batch_share, sum_across_processes
from ..metrics import token_classification_metrics
from ..models.bert.modeling_exit_heads import sequence_classification_loss
from .base import ExitLoss, is_finite_number, resolve_exit_weights


SELF_SAMPLING_RECIPE = "self_sampling"
# the sampling space of the released code (LeeSureman/Sequence-Labeling-Early-Exit): windows 3, 5, ..., 15 words and
# this threshold grid, bounded by `max_threshold`
SELF_SAMPLING_WINDOWS: tuple[int, ...] = (3, 5, 7, 9, 11, 13, 15)
SELF_SAMPLING_THRESHOLDS: tuple[float, ...] = (0.01, 0.03, 0.05, *(round(0.05 * k, 2) for k in range(2, 11)))
SELF_SAMPLING_THRESHOLD_STEP = 0.01
# the released replay schedule: tau in the lower half of the layers, min(2 tau, 0.5) in the upper half
SELF_SAMPLING_REPLAY_CAP = 0.5
# our departures from the released self-sampling, each off by default (see `SelfSamplingTokenLoss`)
SELF_SAMPLING_DEPARTURES: dict[str, str] = {
    "fine_threshold_grid": "thresholds 0.01, 0.02, ... up to max_threshold instead of the released grid",
    "flooding_per_exit": "flooding on each exit's mean loss instead of on each word's loss",
    "mean_over_active_words": "each exit's loss is the mean over its active words instead of their sum divided by "
    "all labelled words",
    "config_replay_schedule": "the replay follows the model config's threshold schedule instead of the released "
    "one (tau, then min(2 tau, 0.5) in the upper half of the layers)",
    "sandwich_both": "the most aggressive sandwich member takes both the smallest window and max_threshold instead "
    "of one of the two by coin flip",
}
# the sandwich: instances per batch forced to the most aggressive setting, and to no exit
SANDWICH_AGGRESSIVE = 2
SANDWICH_NO_EXIT = 4
STAGE_ONE_INDEX_COLUMN = "self_sampling_example_index"


def token_cross_entropy(all_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(num_exits, batch, seq)` cross-entropy of every exit at every position (meaningless where `labels` is -100:
    mask it)."""
    num_exits, _, _, num_labels = all_logits.shape
    return torch.nn.functional.cross_entropy(
        all_logits.reshape(-1, num_labels).float(),
        labels.clamp_min(0).unsqueeze(0).expand(num_exits, -1, -1).reshape(-1),
        reduction="none",
    ).view(all_logits.shape[:3])


def masked_token_losses(
    all_logits: torch.Tensor,
    labels: torch.Tensor,
    active: torch.Tensor | None = None,
    across_processes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per exit, the mean cross-entropy over the labelled positions (active at that exit, when `active` is given).

    Args:
        all_logits: `(num_exits, batch, seq, num_labels)`.
        labels: `(batch, seq)`, -100 where there is nothing to predict.
        active: Optional `(num_exits, batch, seq)` bool.
        across_processes: In a multi-process run, average over the positions of the global batch (every process's
            share; see [`~hf_earlyexit.distributed.sum_across_processes`]) rather than over this process's share,
            whose number of labelled words differs from the other shares'.

    Returns:
        `(losses, counts)`, both `(num_exits,)`: the mean loss (0 where an exit has no position to score) and the
        number of positions it averages.
    """
    labelled = (labels != -100).unsqueeze(0).expand(all_logits.shape[0], -1, -1)
    keep = labelled if active is None else labelled & active
    per_position = token_cross_entropy(all_logits, labels)
    sums, counts = (per_position * keep).sum(dim=(1, 2)), keep.sum(dim=(1, 2))
    if across_processes:
        totals = sum_across_processes(torch.stack([sums, counts.to(sums.dtype)]))
        sums, counts = totals[0], totals[1].round().long()
    return sums / counts.clamp_min(1), counts


def check_self_sampling_settings(max_threshold, flooding, departures=()) -> None:
    """Validate the self-sampling settings (shared by [`SelfSamplingTokenLoss`] and the training arguments)."""
    if not is_finite_number(max_threshold) or not SELF_SAMPLING_THRESHOLD_STEP <= max_threshold <= 1:
        raise ValueError(
            f"`self_sampling_max_threshold` must be a number in [{SELF_SAMPLING_THRESHOLD_STEP}, 1] (thresholds are "
            f"sampled from {SELF_SAMPLING_THRESHOLD_STEP} up to it), got {max_threshold!r}."
        )
    if flooding is not None and (not is_finite_number(flooding) or flooding < 0):
        raise ValueError(
            f"`self_sampling_flooding` must be a finite number >= 0 (or None for none), got {flooding!r}."
        )
    unknown = [name for name in departures if name not in SELF_SAMPLING_DEPARTURES]
    if unknown:
        raise ValueError(
            f"Unknown `self_sampling_departures` {unknown}; expected some of {sorted(SELF_SAMPLING_DEPARTURES)} (none: "
            "the released behaviour)."
        )


class TokenExitLoss(ExitLoss):
    """Shared behaviour of the recipes of [`BertForTokenEarlyExit`]: training computes every exit at every position;
    evaluation runs the model's own early exit (its config's rule, the real packed skipping) and reports
    [`~hf_earlyexit.metrics.token_classification_metrics`].

    Args:
        config ([`TokenExitBertConfig`]): The model's config.
        weights (`str` or `list[float]`, *optional*, defaults to `"linear"`): Exit weights `w_i`: `"linear"` (the
            layer number, the paper's `sum_i i L_i / sum_i i`), `"uniform"` or one number per exit.
    """

    citation = """@inproceedings{li2021accelerating,
  title = {Accelerating {BERT} Inference for Sequence Labeling via Early-Exit},
  author = {Li, Xiaonan and Shao, Yunfan and Sun, Tianxiang and Yan, Hang and Qiu, Xipeng and Huang, Xuanjing},
  booktitle = {Proceedings of the 59th Annual Meeting of the Association for Computational Linguistics},
  pages = {189--199},
  year = {2021}
}"""

    def __init__(self, config, weights: str | list[float] = "linear"):
        super().__init__()
        self.config = config
        self.exit_layers = config.resolved_exit_layers
        self.weights_setting = weights
        self.weights = resolve_exit_weights(weights, self.exit_layers)

    def model_inputs(self, inputs, step=None):
        return {**super().model_inputs(inputs, step), "output_all_exits": step is not None}

    def eval_loss(self, outputs, inputs) -> dict[str, torch.Tensor]:
        return {"loss": sequence_classification_loss(outputs.logits, inputs["labels"], "single_label_classification")}

    def per_exit_losses(self, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detached `loss_exit_<layer>` of every exit, from the `(num_exits,)` losses of the batch, for the logs."""
        return {f"loss_exit_{layer}": loss for layer, loss in zip(self.exit_layers, losses.detach())}

    def weighted_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """`sum_i w_i L_i / sum_i w_i` of the `(num_exits,)` losses."""
        weights = torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)
        return (weights * losses).sum() / weights.sum()

    def metrics(self, model, outputs, inputs):
        return token_classification_metrics(model, outputs, inputs)

    def get_config_dict(self):
        return {"weights": self.weights_setting}


class JointTokenExitLoss(TokenExitLoss):
    """Stage 1 of sequence-labelling early exit: `L = sum_i w_i CE_i / sum_i w_i` over every exit, `CE_i` the mean
    token cross-entropy of exit `i` over labelled positions (with linear weights, the model's own training loss).

    In a multi-process run the mean is over the labelled words of the global batch (every process's share), so two
    processes train exactly as one does on the whole batch, though their shares hold different numbers of words.
    """

    @classmethod
    def from_args(cls, model, args):
        return cls(model.config, args.exit_loss_weights)

    def forward(self, outputs, inputs, step=None):
        if outputs.all_logits is None:
            return self.eval_loss(outputs, inputs)
        losses, _ = masked_token_losses(outputs.all_logits, inputs["labels"], across_processes=True)
        return {"loss": self.weighted_mean(losses), **self.per_exit_losses(losses)}


class SelfSamplingTokenLoss(TokenExitLoss):
    """Stage 2 of sequence-labelling early exit: self-sampling fine-tuning (Li et al., ACL 2021; `docs/methods.md`
    section 3).

    Before training ([`setup`], through [`~hf_earlyexit.callbacks.record_exit_logits`]), the model as it is (the
    stage-1 model) runs once over the training set with every exit computed, and its per-exit logits are stored per
    sentence (`stage_one_logits`). Every training step then, per sentence of the batch:

    1. samples a TOKEE setting: a window `W` from `windows` and a threshold `tau` from the released grid `0.01, 0.03,
       0.05, 0.1, 0.15, ..., 0.5` up to `max_threshold`; the "sandwich" sets 2 sentences of the batch (chosen at
       random) to the most aggressive setting (a coin flip per sentence: the smallest window, or `max_threshold`) and
       4 others to no exit (`tau = 0`); batches smaller than 6 take them in that order;
    2. replays the TOKEE rule on the stored stage-1 logits ([`TokenExitRule.simulate`]) with the released schedule
       (`tau` for the exits in the lower half of the layers, `min(2 tau, 0.5)` in the upper half) to get each word's
       exit layer (word-pieces follow their word, special tokens their sentence);
    3. runs the model with copying, `h_i = m_i * Layer_i(h_{i-1}) + (1 - m_i) * h_{i-1}` (the model's `active_depth`
       argument), so that an exited word's state stays as it was when it left;
    4. the loss at exit `i` is the sum of the cross-entropies of the labelled words still active there (exit layer
       >= layer `i`) divided by the number of labelled words of the batch, and `L = sum_i w_i L_i / sum_i w_i`, `w_i`
       the layer number by default. With `flooding = b`, each word's term becomes `|CE - CE^old - b|`, `CE^old` its
       stage-1 loss at that exit from the stored logits (keeps it near its stage-1 loss plus `b` instead of pushing
       it further down).

    Steps 1 and 2 are `model_inputs`'s (the sampled exit layers go to the model as `active_depth`), step 4 is
    `forward`'s: it reads each word's exit layer back from the output (`exit_layer`) and, for flooding, looks the
    batch's stage-1 logits up again ([`batch_stage_one`]); nothing is carried from one call to the other.

    That is the released code's behaviour. `departures` names any of our variants to use instead (each was the
    library's behaviour before the released one was matched; kept for the ablation in `benchmarks/conll.py`):

    - `"fine_threshold_grid"`: thresholds `0.01, 0.02, ...` up to `max_threshold`;
    - `"flooding_per_exit"`: flooding on each exit's loss, `|L_i - L_i^old - b|`;
    - `"mean_over_active_words"`: `L_i` is the mean over the words active at exit `i`, and exits without active words
      leave the weighted mean;
    - `"config_replay_schedule"`: the replay follows the model config's `threshold_schedule` and `threshold_cap`;
    - `"sandwich_both"`: the most aggressive member takes both the smallest window and `max_threshold`.

    Evaluation runs the model's own early exit, as for stage 1.

    The training set must be a `datasets.Dataset` of tokenized rows (e.g. [`tokenize_token_dataset`]) batched by a
    collator that pads `word_ids` ([`DataCollatorForTokenEarlyExit`]); the trainer's collator also serves the
    recording pass.

    The stored logits take `num_exits x (sentence length) x num_labels` floats per sentence (about 80 MB for the
    14k CoNLL-2003 training sentences with 6 exits and 9 tags). In a multi-process run each process records a share
    of the training set and every process keeps all of it.

    In a multi-process run the batch is the global one: the settings are drawn for all the processes' shares together
    (the same draw in every process, each taking its own rows) and the per-exit means run over the global batch's
    words, so two processes train exactly as one process on the whole batch.

    Args:
        config ([`TokenExitBertConfig`]): The model's config.
        max_threshold (`float`, *optional*, defaults to 0.5): Largest sampled threshold, in `[0.01, 1]`.
        flooding (`float`, *optional*): The flooding level `b` (>= 0); `None` trains without flooding.
        windows (`tuple[int, ...]`, *optional*): Windows to sample from (odd, >= 1), defaults to 3, 5, ..., 15.
        weights: As for [`TokenExitLoss`].
        seed (`int`, *optional*, defaults to 0): Seed of the sampling.
        departures (`tuple[str, ...]`, *optional*): Our variants to use instead of the released behaviour (above).
    """

    input_columns = ("labels", STAGE_ONE_INDEX_COLUMN)

    def __init__(
        self,
        config,
        max_threshold: float = 0.5,
        flooding: float | None = None,
        windows: tuple[int, ...] = SELF_SAMPLING_WINDOWS,
        weights: str | list[float] = "linear",
        seed: int = 0,
        departures: tuple[str, ...] = (),
    ):
        super().__init__(config, weights)
        check_self_sampling_settings(max_threshold, flooding, departures)
        from ..models.bert.token_exit_utils import check_window_size

        if not windows:
            raise ValueError("`windows` must name at least one window size.")
        self.windows = tuple(check_window_size(w, "windows") for w in windows)
        self.max_threshold = float(max_threshold)
        self.flooding = None if flooding is None else float(flooding)
        self.departures = frozenset(departures)
        if "fine_threshold_grid" in self.departures:
            steps = max(int(round(self.max_threshold / SELF_SAMPLING_THRESHOLD_STEP)), 1)
            self.thresholds = tuple(round(SELF_SAMPLING_THRESHOLD_STEP * k, 6) for k in range(1, steps + 1))
        else:
            self.thresholds = tuple(t for t in SELF_SAMPLING_THRESHOLDS if t <= self.max_threshold + 1e-9) or (
                self.max_threshold,
            )
        self.generator = torch.Generator().manual_seed(seed)
        # training-set row -> `(num_exits, length, num_labels)` stage-1 logits, given by `setup` before training
        self.stage_one_logits: list[torch.Tensor] | None = None

    @classmethod
    def from_args(cls, model, args):
        return cls(
            model.config,
            max_threshold=args.self_sampling_max_threshold,
            flooding=args.self_sampling_flooding,
            weights=args.exit_loss_weights,
            seed=args.seed,
            departures=tuple(args.self_sampling_departures or ()),
        )

    def get_config_dict(self):
        return {
            "weights": self.weights_setting,
            "max_threshold": self.max_threshold,
            "flooding": self.flooding,
            "windows": list(self.windows),
            "thresholds": list(self.thresholds),
            "sandwich": {"most_aggressive": SANDWICH_AGGRESSIVE, "no_exit": SANDWICH_NO_EXIT},
            "departures": sorted(self.departures),
        }

    # --- stage-1 logits ---------------------------------------------------------------------------------------------

    def setup(self, trainer) -> None:
        """Index the training set and record the stage-1 logits of every sentence with the trainer's model as it is
        now ([`~hf_earlyexit.callbacks.record_exit_logits`])."""
        if trainer.train_dataset is None:
            return
        trainer.train_dataset = add_example_index(
            trainer.train_dataset,
            STAGE_ONE_INDEX_COLUMN,
            "Self-sampling stores the stage-1 logits of every training sentence by its position",
        )
        self.stage_one_logits = record_exit_logits(trainer, STAGE_ONE_INDEX_COLUMN, self.input_columns)

    def batch_stage_one(self, inputs) -> torch.Tensor:
        """`(num_exits, batch, seq, num_labels)` stored stage-1 logits of this batch (zero at padding)."""
        if self.stage_one_logits is None:
            raise ValueError(
                "Self-sampling has no stage-1 logits: `EarlyExitTrainer` records them when it is built with a training "
                "set; outside it, set `stage_one_logits` from `hf_earlyexit.callbacks.record_exit_logits` first."
            )
        index = inputs.get(STAGE_ONE_INDEX_COLUMN)
        if index is None:
            raise ValueError(
                f"The batch has no `{STAGE_ONE_INDEX_COLUMN}` column (the trainer adds it to the training set)."
            )
        attention_mask = inputs["attention_mask"]
        batch_size, seq_len = attention_mask.shape
        first = self.stage_one_logits[int(index[0])]
        out = first.new_zeros(first.shape[0], batch_size, seq_len, first.shape[-1])
        for row, i in enumerate(index.tolist()):
            logits = self.stage_one_logits[i]
            positions = attention_mask[row].nonzero().squeeze(-1).cpu()
            if len(positions) != logits.shape[1]:
                raise ValueError(
                    f"Training sentence {i} has {len(positions)} positions in this batch but {logits.shape[1]} when its "
                    "stage-1 logits were recorded: the training set must not change between them."
                )
            out[:, row, positions] = logits
        return out.to(attention_mask.device)

    # --- sampling and replay ----------------------------------------------------------------------------------------

    def sample_settings(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sentence of a batch, a window `(batch,)` long and a threshold `(batch,)` float (0: no exit), with the
        sandwich (see the class docstring)."""
        windows = torch.tensor(self.windows)[torch.randint(len(self.windows), (batch_size,), generator=self.generator)]
        thresholds = torch.tensor(self.thresholds)[
            torch.randint(len(self.thresholds), (batch_size,), generator=self.generator)
        ]
        order = torch.randperm(batch_size, generator=self.generator)
        aggressive = order[:SANDWICH_AGGRESSIVE]
        no_exit = order[SANDWICH_AGGRESSIVE : SANDWICH_AGGRESSIVE + SANDWICH_NO_EXIT]
        largest = self.thresholds[-1]
        if "sandwich_both" in self.departures:
            windows[aggressive], thresholds[aggressive] = min(self.windows), largest
        else:  # the released code: per sentence, a coin flip between the smallest window and the largest threshold
            smallest_window = torch.rand(len(aggressive), generator=self.generator) < 0.5
            windows[aggressive[smallest_window]] = min(self.windows)
            thresholds[aggressive[~smallest_window]] = largest
        thresholds[no_exit] = 0.0
        return windows, thresholds

    def replay(
        self,
        all_logits: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None,
        windows: torch.Tensor,
        thresholds: torch.Tensor,
    ) -> torch.Tensor:
        """`(batch, seq)` exit layer of every position under each sentence's own TOKEE setting, replayed on
        `all_logits` (0 at padding)."""
        from ..models.bert.token_exit_utils import TokenExitRule

        config = self.config
        exit_index = torch.full(attention_mask.shape, -1, dtype=torch.long, device=attention_mask.device)
        settings = torch.stack([windows.float(), thresholds.float()], dim=-1)
        for window, threshold in torch.unique(settings, dim=0).tolist():
            rows = ((windows == int(window)) & (thresholds.float() == threshold)).nonzero().squeeze(-1)
            rows = rows.to(attention_mask.device)
            if "config_replay_schedule" in self.departures:
                schedule = {"threshold_schedule": config.threshold_schedule, "threshold_cap": config.threshold_cap}
            else:
                schedule = {"threshold_schedule": "paper", "threshold_cap": SELF_SAMPLING_REPLAY_CAP}
            rule = TokenExitRule.build(
                "token",
                float(threshold),
                self.exit_layers,
                config.num_hidden_layers,
                window_size=int(window),
                **schedule,
            )
            exit_index[rows] = rule.simulate(
                all_logits[:, rows], attention_mask[rows], None if word_ids is None else word_ids[rows]
            )
        layers = torch.tensor(self.exit_layers, device=exit_index.device)
        return torch.where(exit_index >= 0, layers[exit_index.clamp_min(0)], 0)

    def model_inputs(self, inputs, step=None):
        if step is None:
            return super().model_inputs(inputs, step)
        stage_one = self.batch_stage_one(inputs)
        attention_mask = inputs["attention_mask"]
        # one draw for the global batch, of which this process takes its own rows: the sandwich is per global batch
        # and a multi-process run samples what one process on the whole batch samples
        total, start = global_batch_share(attention_mask.shape[0], attention_mask.device)
        windows, thresholds = self.sample_settings(total)
        windows, thresholds = (t[start : start + attention_mask.shape[0]] for t in (windows, thresholds))
        depth = self.replay(stage_one, attention_mask, inputs.get("word_ids"), windows, thresholds)
        model_inputs = {key: value for key, value in inputs.items() if key not in self.input_columns}
        return {**model_inputs, "output_all_exits": True, "active_depth": depth}

    def forward(self, outputs, inputs, step=None):
        if outputs.all_logits is None:
            return self.eval_loss(outputs, inputs)
        labels = inputs["labels"]
        layers = torch.tensor(self.exit_layers, device=labels.device)
        # the exit layers `model_inputs` sampled, as the model ran them (`active_depth` comes back as `exit_layer`)
        active = outputs.exit_layer.unsqueeze(0) >= layers.view(-1, 1, 1)
        keep = (labels != -100).unsqueeze(0) & active
        per_word = token_cross_entropy(outputs.all_logits, labels)
        old_per_word = None
        if self.flooding is not None:
            stage_one = self.batch_stage_one(inputs).to(outputs.all_logits.device)
            old_per_word = token_cross_entropy(stage_one, labels)
        per_exit_flooding = "flooding_per_exit" in self.departures
        terms = {}
        if old_per_word is not None and not per_exit_flooding:  # the released flooding, word by word
            gap = per_word - old_per_word
            terms["flooding_gap"] = (gap.detach() * keep).sum() / keep.sum().clamp_min(1)
            per_word = (gap - self.flooding).abs()
        # sums over the global batch's words (every process's share, see `masked_token_losses`)
        totals = sum_across_processes(torch.stack([(per_word * keep).sum(dim=(1, 2)), keep.sum(dim=(1, 2)).float()]))
        sums, counts = totals[0], totals[1]
        words = sum_across_processes((labels != -100).sum()).clamp_min(1)
        mean_over_active = "mean_over_active_words" in self.departures
        denominators = counts.clamp_min(1) if mean_over_active else words
        losses = sums / denominators
        if old_per_word is not None and per_exit_flooding:
            old = sum_across_processes((old_per_word * keep).sum(dim=(1, 2))) / denominators
            terms["flooding_gap"] = ((losses - old).detach() * (counts > 0)).sum() / (counts > 0).sum().clamp_min(1)
            losses = (losses - old - self.flooding).abs()
        weights = torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)
        if mean_over_active:  # an exit without active words has no mean: it leaves the weighted mean
            weights = weights * (counts > 0)
        loss = (weights * losses).sum() / weights.sum().clamp_min(1e-12)
        terms.update(self.per_exit_losses(losses))
        for layer, count in zip(self.exit_layers, counts):
            terms[f"active_words_exit_{layer}"] = count / words
        return {"loss": loss, **terms}


__all__ = [
    "JointTokenExitLoss",
    "SelfSamplingTokenLoss",
    "TokenExitLoss",
    "check_self_sampling_settings",
    "masked_token_losses",
    "token_cross_entropy",
]
