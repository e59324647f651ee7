"""Threshold calibration: choose exit thresholds for a target FLOPs speed-up or a largest accuracy drop.

The model runs once over the calibration set with every exit evaluated (`output_all_exits=True`); every candidate
setting is then scored on those recorded logits with the same [`ExitRule`] the live forward uses, so no candidate
re-runs the model, and the expected accuracy and speed-up are exactly what the model measures on the same set.
Candidate thresholds sit halfway between consecutive observed scores, never on one, so the tiny numerical differences
between a full batch and a compacted sub-batch cannot flip a decision.

Sequence-labelling early exit ([`BertForTokenEarlyExit`], SENTEE / TOKEE) has its own search, [`calibrate_token`]
(which `calibrate` hands it to): entity F1 by default, and live runs to check TOKEE candidates (see there).

The classification families: works for every family whose forward accepts `output_all_exits=True` and that provides `exit_layers` (encoder layers
computed when answering at each exit, cumulative for a cascade), `full_depth_layers`, `flops_per_exit(lengths)` and
`reference_flops(lengths)`.
"""

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from .evaluation import map_batches
from .families import family_of
from .models.bert.exit_utils import ExitRule, first_exit


logger = logging.getLogger(__name__)

THRESHOLD_CRITERIA = ("max_prob", "entropy", "normalized_entropy", "divergence")


@dataclass
class CalibrationRecord:
    """What one full pass over the calibration set recorded."""

    all_logits: torch.Tensor  # (num_exits, N, num_labels)
    labels: torch.Tensor  # (N,)
    exit_flops: torch.Tensor  # (num_exits, N): FLOPs of answering at each exit
    reference_flops: torch.Tensor  # (N,): FLOPs of the full model
    exit_layers: list[int]
    full_layers: int


@dataclass
class CalibrationResult:
    """The chosen exit settings and what they are expected to give on the calibration set.

    Accuracies are fractions in [0, 1]; speed-ups follow METHODS.md section 4 (FLOPs against the full model, layers
    against its depth).
    """

    criterion: str
    exit_threshold: float | list[float] | None
    patience: int
    expected_accuracy: float
    expected_flops_speedup: float
    expected_layer_speedup: float
    full_accuracy: float
    target: dict
    reached: bool
    message: str
    num_examples: int
    frontier: list[dict] = field(default_factory=list)

    def forward_kwargs(self) -> dict:
        """The settings as forward arguments (`model(**inputs, **result.forward_kwargs())`). `patience` only for the
        criteria that count agreeing exits (a cascade's `forward` has no such argument)."""
        kwargs = {"exit_criterion": self.criterion}
        if self.criterion in ("patience", "divergence"):
            kwargs["patience"] = self.patience
        if self.exit_threshold is not None:
            kwargs["exit_threshold"] = self.exit_threshold
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def record(model, batches: Iterable[dict], split_across_processes: bool = False) -> CalibrationRecord:
    """Run `model` once over `batches` (tokenized dicts that include `labels`) with every exit evaluated.

    With `split_across_processes=True` in a multi-process run (`accelerate launch`, `torchrun`), every process records
    a share of the batches and gets back the whole record, identical to a single-process one and in the same order
    (see [`~hf_earlyexit.evaluation.map_batches`]); every process must call it.
    """
    if split_across_processes:
        # checked on every process before any of them waits for the others
        batches = list(batches)
        if any("labels" not in batch for batch in batches):
            raise ValueError("Every calibration batch needs `labels`.")
        for batch in batches:
            check_calibration_labels(model, batch["labels"])

    def run(batch):
        batch = dict(batch)
        if "labels" not in batch:
            raise ValueError("Every calibration batch needs `labels`.")
        labels = batch.pop("labels")
        check_calibration_labels(model, labels)
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        return {"labels": labels, "lengths": mask.sum(-1), "logits": model(**batch, output_all_exits=True).all_logits}

    was_training = model.training
    model.eval()
    try:
        outputs = map_batches(run, batches, split_across_processes)
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("The calibration set is empty.")
    lengths = torch.cat([out["lengths"] for out in outputs])
    return CalibrationRecord(
        all_logits=torch.cat([out["logits"] for out in outputs], dim=1).float(),
        labels=torch.cat([out["labels"] for out in outputs]),
        exit_flops=model.flops_per_exit(lengths),
        reference_flops=model.reference_flops(lengths),
        exit_layers=list(model.exit_layers),
        full_layers=model.full_depth_layers,
    )


def check_calibration_labels(model, labels, ignore_index: int | None = None) -> None:
    """Refuses labels that the model cannot predict: the calibration would count them as errors at every exit and
    choose its thresholds on a wrong accuracy. Class ids in `[0, num_labels)` (or `ignore_index`) for a classifier;
    numbers for a regression model (`num_labels == 1`)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"Calibration `labels` must be a torch.Tensor, got {type(labels).__name__}.")
    num_labels = model.config.num_labels
    if num_labels == 1:
        return
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"Calibration `labels` must be class ids (integers), got dtype {labels.dtype}.")
    bad = (labels < 0) | (labels >= num_labels)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        names = [model.config.id2label[i] for i in range(num_labels)]
        raise ValueError(
            f"Calibration `labels` must be class ids in [0, {num_labels}) (the model's labels {names}), got "
            f"{sorted(set(labels[bad].tolist()))[:10]}."
        )


class _Scorer:
    """Scores exit settings on a record: accuracy, FLOPs and layer speed-up."""

    def __init__(self, rec: CalibrationRecord, metric: Callable[[torch.Tensor, torch.Tensor], float] | None):
        self.rec = rec
        self.metric = metric or (lambda logits, labels: float((logits.argmax(-1) == labels).float().mean()))
        self.positions = torch.arange(rec.labels.numel())
        self.reference = float(rec.reference_flops.sum())
        self.layers = torch.tensor(rec.exit_layers)
        self.num_exits = len(rec.exit_layers)
        self._scores = {}

    def scores(self, rule: ExitRule) -> torch.Tensor:
        """Per-exit criterion scores `(num_exits - 1, N)` of a stateless criterion (the last exit never decides)."""
        if rule.criterion not in self._scores:
            self._scores[rule.criterion] = torch.stack(
                [rule.score(self.rec.all_logits[i]) for i in range(self.num_exits - 1)]
            )
        return self._scores[rule.criterion]

    def exit_index(self, rule: ExitRule) -> torch.Tensor:
        if rule.is_stateful:
            return rule.simulate(self.rec.all_logits)
        scores = self.scores(rule)
        fires = [rule.passes(scores[i], i) for i in range(self.num_exits - 1)]
        return first_exit(torch.stack([*fires, torch.ones_like(fires[0])]))

    def evaluate(self, rule: ExitRule) -> dict:
        index = self.exit_index(rule)
        logits = self.rec.all_logits[index, self.positions]
        flops = float(self.rec.exit_flops[index, self.positions].sum())
        return {
            "accuracy": self.metric(logits, self.rec.labels),
            "flops_speedup": self.reference / flops,
            "layer_speedup": self.rec.full_layers * index.numel() / float(self.layers[index].sum()),
        }


def _midpoints(values: torch.Tensor, max_candidates: int) -> list[float]:
    """Thresholds halfway between consecutive distinct values, plus one beyond each end."""
    distinct = torch.unique(values.flatten().double())
    distinct = distinct[torch.isfinite(distinct)]
    if distinct.numel() == 0:
        return []
    if distinct.numel() > max_candidates + 1:
        picks = torch.linspace(0, distinct.numel() - 2, max_candidates).round().long().unique()
        mids = (distinct[picks] + distinct[picks + 1]) / 2
    else:
        mids = (distinct[:-1] + distinct[1:]) / 2
    spread = float(distinct[-1] - distinct[0]) or 1.0
    ends = [float(distinct[0]) - 0.5 * spread, float(distinct[-1]) + 0.5 * spread]
    return sorted({*(float(m) for m in mids), *ends})


def _clip(criterion: str, value: float) -> float:
    if criterion in ("max_prob", "normalized_entropy"):
        return min(max(value, 0.0), 1.0)
    return max(value, 0.0)


def calibrate(
    model,
    batches: Iterable[dict] | CalibrationRecord,
    *,
    target_speedup: float | None = None,
    max_accuracy_drop: float | None = None,
    criterion: str | None = None,
    per_exit: bool | None = None,
    max_candidates: int = 64,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    apply: bool = True,
    split_across_processes: bool = False,
) -> CalibrationResult:
    """Choose exit thresholds for a target, from one recorded pass over a calibration set.

    Args:
        model: An early-exit model (any family, see the module docstring). A [`BertForTokenEarlyExit`] is handed
            to [`calibrate_token`] (`criterion` is then its `exit_mode`, `metric` its metric, entity F1 by default).
        batches: Tokenized batches with `labels` (e.g. from `hf_earlyexit.evaluation.make_batches` plus labels), or a
            [`CalibrationRecord`] from [`record`] to reuse one pass for several targets.
        target_speedup: FLOPs speed-up to reach (>= 1): the most accurate setting that reaches it is chosen.
        max_accuracy_drop: Largest accuracy drop allowed against the full model, as a fraction (0.01 = one point):
            the fastest setting within it is chosen. Give exactly one of the two targets.
        criterion: Exit criterion to calibrate; defaults to the model config's. For `patience` the patience is chosen;
            for `divergence` the threshold and patience (1 to 3).
        per_exit: Search one threshold per exit (per layer, or per stage of a cascade) rather than one for all.
            Defaults to per stage for cascades of more than two members, and one shared threshold otherwise.
        max_candidates: Candidate thresholds per search dimension.
        metric: `metric(logits, labels) -> float` to maximise instead of accuracy (higher is better).
        apply: Write the chosen settings into `model.config` (then `save_pretrained` saves them).
        split_across_processes: In a multi-process run, record the calibration set with each process running a share
            of the batches (see [`record`], [`record_token`]; a token model's live TOKEE checks are shared out too);
            every process then searches the same record and chooses the same setting.

    Returns:
        A [`CalibrationResult`]. A target that cannot be reached is reported (`reached=False`, a warning) with the
        nearest reachable setting, never silently.
    """
    if family_of(model).is_token:
        if per_exit:
            raise ValueError(
                "`per_exit` is not supported for sequence-labelling early exit: SENTEE / TOKEE calibrate one "
                "threshold (and a window); see `calibrate_token`."
            )
        if split_across_processes and not isinstance(batches, TokenCalibrationRecord):
            batches = record_token(model, batches, split_across_processes=True)
        return calibrate_token(
            model,
            batches,
            target_speedup=target_speedup,
            max_accuracy_drop=max_accuracy_drop,
            exit_mode=criterion,
            max_candidates=max_candidates,
            metric=metric,
            apply=apply,
        )
    if (target_speedup is None) == (max_accuracy_drop is None):
        raise ValueError("Give exactly one calibration target: `target_speedup` or `max_accuracy_drop`.")
    if target_speedup is not None and not (target_speedup >= 1.0 and math.isfinite(target_speedup)):
        raise ValueError(f"`target_speedup` is a FLOPs speed-up and must be >= 1, got {target_speedup}.")
    if max_accuracy_drop is not None and not 0.0 <= max_accuracy_drop <= 1.0:
        raise ValueError(f"`max_accuracy_drop` is a fraction in [0, 1] (0.01 = one point), got {max_accuracy_drop}.")
    criterion = criterion or model.config.exit_criterion
    model.config.exit_rule(exit_criterion=criterion)  # the family refuses criteria it cannot use, with its own message
    rec = batches if isinstance(batches, CalibrationRecord) else record(model, batches, split_across_processes)
    scorer = _Scorer(rec, metric)
    num_exits = scorer.num_exits
    if num_exits < 2:
        raise ValueError("The model has a single exit: there is nothing to calibrate.")
    if per_exit is None:
        per_exit = getattr(model.config, "num_members", 0) > 2
    build = _rule_builder(model, criterion, num_exits)
    full_accuracy = scorer.metric(rec.all_logits[-1], rec.labels)

    points = _search(scorer, build, criterion, per_exit, max_candidates)
    choice, reached = _select(points, full_accuracy, target_speedup, max_accuracy_drop)
    target = (
        {"flops_speedup": target_speedup} if target_speedup is not None else {"max_accuracy_drop": max_accuracy_drop}
    )
    if reached:
        message = (
            f"{criterion}: expected accuracy {choice['accuracy']:.4f} (full model {full_accuracy:.4f}) at "
            f"{choice['flops_speedup']:.2f}x FLOPs speed-up on {rec.labels.numel()} examples."
        )
    else:
        best = "fastest" if target_speedup is not None else "most accurate"
        message = (
            f"target {target} cannot be reached with criterion {criterion!r} on this set; returning the {best} "
            f"reachable setting: accuracy {choice['accuracy']:.4f} at {choice['flops_speedup']:.2f}x FLOPs speed-up."
        )
        logger.warning(message)
    threshold = choice["threshold"]
    if isinstance(threshold, list):  # in the family's convention (e.g. a cascade takes one per non-final member)
        threshold = threshold[: model.config.num_exit_thresholds]
    result = CalibrationResult(
        criterion=criterion,
        exit_threshold=threshold,
        patience=choice["patience"],
        expected_accuracy=choice["accuracy"],
        expected_flops_speedup=choice["flops_speedup"],
        expected_layer_speedup=choice["layer_speedup"],
        full_accuracy=full_accuracy,
        target=target,
        reached=reached,
        message=message,
        num_examples=int(rec.labels.numel()),
        frontier=_pareto(points),
    )
    if apply:
        apply_calibration(model, result)
    return result


def apply_calibration(model, result: "CalibrationResult | TokenCalibrationResult") -> None:
    """Write a calibration's settings into `model.config` (validated like any config value). Only the settings the
    family's config declares are written: a cascade has no `patience`. A [`TokenCalibrationResult`] writes
    `exit_mode`, `exit_threshold` and `window_size`."""
    from .models.bert.checkpoint_utils import family_config_fields

    config = model.config
    declared = family_config_fields(type(config))
    if isinstance(result, TokenCalibrationResult):
        settings = result.forward_kwargs()
    else:
        settings = {
            "exit_criterion": result.criterion,
            "patience": result.patience,
            "exit_threshold": result.exit_threshold,
        }
    for name, value in settings.items():
        if name in declared:
            setattr(config, name, value)
    config.validate()


def _rule_builder(model, criterion: str, num_exits: int):
    config = model.config
    # the family's own comparison (a cascade answers on `max p > t`, multi-exit models on `>=`)
    strict_confidence = config.exit_rule(exit_criterion=criterion).strict_confidence

    def build(threshold=None, patience=None):
        return ExitRule.build(
            criterion,
            threshold,
            num_exits=num_exits,
            num_labels=config.num_labels,
            patience=patience if patience is not None else getattr(config, "patience", 1),
            divergence=getattr(config, "divergence", "jsd"),
            regression_tolerance=getattr(config, "regression_tolerance", 0.1),
            strict_confidence=strict_confidence,
        )

    return build


def _never_threshold(criterion: str):
    return {"max_prob": 1.0, "normalized_entropy": 0.0, "entropy": 0.0, "divergence": 0.0}.get(criterion)


def _point(scores: dict, threshold, patience: int) -> dict:
    return {**scores, "threshold": threshold, "patience": patience}


def _search(scorer, build, criterion, per_exit, max_candidates) -> list[dict]:
    num_exits = scorer.num_exits
    if criterion == "patience":
        return [_point(scorer.evaluate(build(patience=p)), None, p) for p in range(1, num_exits)]
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(f"Unknown exit criterion {criterion!r}; expected 'patience' or one of {THRESHOLD_CRITERIA}.")

    if criterion == "divergence":
        all_logits = scorer.rec.all_logits
        rule = build(threshold=0.0, patience=1)
        # divergence between consecutive exits; the first exit has no predecessor and never fires
        pairs = range(1, num_exits - 1) if num_exits > 2 else range(0)
        observed = torch.stack(
            [torch.zeros(all_logits.shape[1])] + [rule.score(all_logits[i], all_logits[i - 1]) for i in pairs]
        )
        patiences = range(1, min(3, num_exits - 1) + 1)
        pool = observed[1:]
    else:
        observed = scorer.scores(build(threshold=_never_threshold(criterion)))
        patiences = [1]
        pool = observed

    candidates = [_clip(criterion, t) for t in _midpoints(pool, max_candidates)]
    points = [
        _point(scorer.evaluate(build(threshold=t, patience=p)), t, p)
        for p in patiences
        for t in sorted(set(candidates))
    ]
    if not per_exit or num_exits < 3:
        return points

    # one threshold per exit: coordinate ascent on accuracy - lambda * relative cost, for a range of lambdas; every
    # setting visited is kept, and the target picks from all of them
    grids = [[_clip(criterion, t) for t in _midpoints(observed[i], max_candidates)] for i in range(num_exits - 1)]
    never = _never_threshold(criterion)
    for patience in patiences:
        for lam in [0.0, *torch.logspace(-3, 0, 16).tolist()]:

            def objective(point, lam=lam):
                return point["accuracy"] - lam / point["flops_speedup"]

            start = max((p for p in points if p["patience"] == patience), key=objective)
            thresholds = (
                list(start["threshold"])
                if isinstance(start["threshold"], list)
                else [start["threshold"]] * (num_exits - 1) + [never]
            )
            best = start
            for _ in range(3):
                improved = False
                for i in range(num_exits - 1):
                    for t in grids[i]:
                        trial = list(thresholds)
                        trial[i] = t
                        point = _point(scorer.evaluate(build(threshold=trial, patience=patience)), trial, patience)
                        points.append(point)
                        if objective(point) > objective(best) + 1e-12:
                            best, thresholds, improved = point, trial, True
                if not improved:
                    break
    return points


def _select(points: list[dict], full_accuracy: float, target_speedup, max_accuracy_drop) -> tuple[dict, bool]:
    if target_speedup is not None:
        feasible = [p for p in points if p["flops_speedup"] >= target_speedup]
        if feasible:
            return max(feasible, key=lambda p: (p["accuracy"], p["flops_speedup"])), True
        return max(points, key=lambda p: (p["flops_speedup"], p["accuracy"])), False
    floor = full_accuracy - max_accuracy_drop - 1e-12
    feasible = [p for p in points if p["accuracy"] >= floor]
    if feasible:
        return max(feasible, key=lambda p: (p["flops_speedup"], p["accuracy"])), True
    return max(points, key=lambda p: (p["accuracy"], p["flops_speedup"])), False


def _pareto(points: list[dict]) -> list[dict]:
    """The accuracy / FLOPs speed-up frontier of the settings searched, fastest first."""
    frontier, best_accuracy = [], -math.inf
    for point in sorted(points, key=lambda p: (-p["flops_speedup"], -p["accuracy"])):
        if point["accuracy"] > best_accuracy:
            frontier.append(point)
            best_accuracy = point["accuracy"]
    return frontier


# --------------------------------------------------------------------------------------------------------------------
# Sequence-labelling early exit (BertForTokenEarlyExit): SENTEE / TOKEE thresholds and windows
# --------------------------------------------------------------------------------------------------------------------

TOKEN_METRICS = ("f1", "token_accuracy")


@dataclass
class TokenCalibrationRecord:
    """One full pass of a [`BertForTokenEarlyExit`] over a calibration set, padded to one length.

    `batches` keeps the inputs (labels removed) for the live runs that check TOKEE candidates; a record made with
    `split_across_processes=True` shares those runs out between the processes too.
    """

    all_logits: torch.Tensor  # (num_exits, N, S, num_labels)
    attention_mask: torch.Tensor  # (N, S)
    word_ids: torch.Tensor | None  # (N, S)
    labels: torch.Tensor  # (N, S), -100 where no word starts
    batches: list[dict]
    batch_labels: list[torch.Tensor]
    split_across_processes: bool = False


@dataclass
class TokenCalibrationResult:
    """The chosen SENTEE / TOKEE settings and what they give on the calibration set.

    `metric` is entity F1 (seqeval, micro) or word accuracy, as a fraction; speed-ups follow METHODS.md section 4
    (FLOPs against the full-depth model per sentence from its real length; layers over words). `verified` says where
    the expected numbers come from: `"live"` (real early-exit runs of the model on the calibration set: exactly what it
    measures there) or `"replay"` (the rule replayed on the recorded full-depth logits, exact for SENTEE).
    """

    exit_mode: str
    exit_threshold: float
    window_size: int
    metric_name: str
    expected_metric: float
    expected_flops_speedup: float
    expected_layer_speedup: float
    full_metric: float
    target: dict
    reached: bool
    message: str
    num_sentences: int
    verified: str
    frontier: list[dict] = field(default_factory=list)

    def forward_kwargs(self) -> dict:
        """The settings as forward arguments (`model(**inputs, **result.forward_kwargs())`)."""
        return {"exit_mode": self.exit_mode, "exit_threshold": self.exit_threshold, "window_size": self.window_size}

    def to_dict(self) -> dict:
        return asdict(self)


def _pad_cat(tensors: list[torch.Tensor], dim: int, value) -> torch.Tensor:
    """Concatenate along dim 0 (dim 1 for stacked exits) after right-padding the sequence dimension `dim`."""
    length = max(t.shape[dim] for t in tensors)
    padded = []
    for t in tensors:
        pad = [0, 0] * (t.dim() - dim - 1) + [0, length - t.shape[dim]]
        padded.append(torch.nn.functional.pad(t, pad, value=value))
    return torch.cat(padded, dim=0 if dim == 1 else 1)


@torch.inference_mode()
def record_token(model, batches: Iterable[dict], split_across_processes: bool = False) -> TokenCalibrationRecord:
    """Run a [`BertForTokenEarlyExit`] once over `batches` (from [`encode_words`] with `labels`, right-padded) with
    every exit evaluated at full depth.

    With `split_across_processes=True` in a multi-process run, every process records a share of the batches and gets
    back the whole record, as [`record`] does; every process must call it.
    """
    batches = [dict(batch) for batch in batches]
    if any("labels" not in batch for batch in batches):
        raise ValueError("Every calibration batch needs `labels` (word tags on first word-pieces, -100 elsewhere).")
    if not batches:
        raise ValueError("The calibration set is empty.")
    word_ids = [batch.get("word_ids") for batch in batches]
    if any(w is None for w in word_ids) and not all(w is None for w in word_ids):
        raise ValueError("Some calibration batches have `word_ids` and others do not; give them to all or none.")
    inputs = [{key: value for key, value in batch.items() if key != "labels"} for batch in batches]
    labels = [batch["labels"] for batch in batches]
    for batch_labels in labels:
        check_calibration_labels(model, batch_labels, ignore_index=-100)
    masks = [
        batch["attention_mask"] if batch.get("attention_mask") is not None else torch.ones_like(batch["input_ids"])
        for batch in batches
    ]

    def run(batch):
        return model(**batch, output_all_exits=True).all_logits.float()

    was_training = model.training
    model.eval()
    try:
        logits = map_batches(run, inputs, split_across_processes)
    finally:
        model.train(was_training)
    return TokenCalibrationRecord(
        all_logits=_pad_cat(logits, 2, 0.0),
        attention_mask=_pad_cat(masks, 1, 0),
        word_ids=None if word_ids[0] is None else _pad_cat(word_ids, 1, -1),
        labels=_pad_cat(labels, 1, -100),
        batches=inputs,
        batch_labels=labels,
        split_across_processes=split_across_processes,
    )


def _token_metric(model, metric):
    from .metrics import entity_scores, entity_types, word_tags

    if callable(metric):
        return "custom", metric
    if metric is None:
        metric = "f1" if entity_types(model.config.id2label.values()) else "token_accuracy"
    if metric not in TOKEN_METRICS:
        raise ValueError(f"`metric` must be one of {TOKEN_METRICS} or a callable, got {metric!r}.")
    if metric == "f1":

        def score(logits, labels):
            return entity_scores(*word_tags(logits, labels, model.config.id2label))["f1"]

    else:

        def score(logits, labels):
            words = labels != -100
            return int((logits.argmax(-1)[words] == labels[words]).sum()) / max(int(words.sum()), 1)

    return metric, score


class _TokenScorer:
    def __init__(self, model, rec: TokenCalibrationRecord, metric):
        from .models.bert.exit_utils import encoder_layer_flops

        self.model, self.rec = model, rec
        self.metric_name, self.metric = _token_metric(model, metric)
        config = model.config
        self.lengths = rec.attention_mask.sum(-1)
        self.reference = float(
            (
                config.num_hidden_layers
                * encoder_layer_flops(self.lengths, config.hidden_size, config.intermediate_size)
                + self.lengths * model.head_flops()
            ).sum()
        )
        self.words = rec.labels != -100
        self.exit_layers = torch.tensor(model.exit_layers)

    def summary(self, logits, exit_layer, flops) -> dict:
        layers = float(exit_layer[self.words].sum())
        return {
            "metric": self.metric(logits, self.rec.labels),
            "flops_speedup": self.reference / float(flops.sum()),
            "layer_speedup": self.model.config.num_hidden_layers * int(self.words.sum()) / layers,
        }

    def replay(self, rule) -> dict:
        from .models.bert.token_exit_utils import token_exit_flops

        rec, config = self.rec, self.model.config
        index = rule.simulate(rec.all_logits, rec.attention_mask, rec.word_ids)
        logits = rec.all_logits.gather(0, index.clamp_min(0)[None, ..., None].expand_as(rec.all_logits[:1]))[0]
        exit_layer = torch.where(index >= 0, self.exit_layers[index.clamp_min(0)], 0)
        flops = token_exit_flops(
            exit_layer,
            self.lengths,
            self.model.exit_layers,
            config.hidden_size,
            config.intermediate_size,
            config.num_labels,
        )
        return self.summary(logits, exit_layer, flops)

    @torch.inference_mode()
    def live(self, settings: dict) -> dict:
        was_training = self.model.training
        self.model.eval()

        def run(batch):
            out = self.model(**batch, **settings)
            return {"logits": out.logits.float(), "exit_layer": out.exit_layer, "flops": out.flops}

        try:
            outs = map_batches(run, self.rec.batches, self.rec.split_across_processes)
        finally:
            self.model.train(was_training)
        logits = _pad_cat([out["logits"] for out in outs], 1, 0.0)
        exit_layer = _pad_cat([out["exit_layer"] for out in outs], 1, 0)
        flops = torch.cat([out["flops"] for out in outs])
        return self.summary(logits, exit_layer, flops)


def calibrate_token(
    model,
    batches: Iterable[dict] | TokenCalibrationRecord,
    *,
    target_speedup: float | None = None,
    max_accuracy_drop: float | None = None,
    exit_mode: str | None = None,
    window_sizes: Iterable[int] | None = None,
    max_candidates: int = 48,
    max_live_checks: int = 12,
    metric: str | Callable | None = None,
    apply: bool = True,
) -> TokenCalibrationResult:
    """Choose the threshold (and, for TOKEE, the window) of a [`BertForTokenEarlyExit`] for a target.

    The model runs once over the calibration set at full depth with every exit; candidate settings (thresholds halfway
    between observed word uncertainties, for each window) are scored by replaying the rule on those logits
    ([`TokenExitRule.simulate`]). For SENTEE the replay is what the live early exit does. For TOKEE it is not (frozen
    words stop updating, so the states of the others change), so the replay only shortlists: the `max_live_checks`
    candidates nearest the target run live over the calibration set, and the choice and the expected numbers come
    from those real runs, which the model then reproduces exactly on the same set.

    Args:
        model: A [`BertForTokenEarlyExit`].
        batches: Batches from [`encode_words`] with `labels` (and `word_ids`), or a [`TokenCalibrationRecord`].
        target_speedup: FLOPs speed-up to reach (>= 1); the best-scoring setting that reaches it is chosen.
        max_accuracy_drop: Largest drop of the metric against the full model, as a fraction (0.01 = one point of
            F1); the fastest setting within it is chosen. Give exactly one of the two targets.
        exit_mode: `"token"` (TOKEE) or `"sentence"` (SENTEE); defaults to the config's.
        window_sizes: TOKEE windows to search; defaults to the config's `window_size` alone.
        max_candidates: Candidate thresholds per window.
        max_live_checks: TOKEE candidates checked by live runs.
        metric: `"f1"` (entity F1 with seqeval, the default when `config.id2label` has IOB entity tags),
            `"token_accuracy"` (accuracy over words, the default otherwise), or `metric(logits, labels) -> float` on the
            padded `(N, seq, num_labels)` logits and `(N, seq)` labels (higher is better).
        apply: Write the chosen `exit_mode`, `exit_threshold` and `window_size` into `model.config`.
    """
    if (target_speedup is None) == (max_accuracy_drop is None):
        raise ValueError("Give exactly one calibration target: `target_speedup` or `max_accuracy_drop`.")
    if target_speedup is not None and not (target_speedup >= 1.0 and math.isfinite(target_speedup)):
        raise ValueError(f"`target_speedup` is a FLOPs speed-up and must be >= 1, got {target_speedup}.")
    if max_accuracy_drop is not None and not 0.0 <= max_accuracy_drop <= 1.0:
        raise ValueError(f"`max_accuracy_drop` is a fraction in [0, 1] (0.01 = one point), got {max_accuracy_drop}.")
    exit_mode, windows = _token_search_space(model, exit_mode, window_sizes, max_candidates)
    if isinstance(max_live_checks, bool) or not isinstance(max_live_checks, int) or max_live_checks < 1:
        raise ValueError(f"`max_live_checks` must be an integer >= 1, got {max_live_checks!r}.")
    rec = batches if isinstance(batches, TokenCalibrationRecord) else record_token(model, batches)
    scorer = _TokenScorer(model, rec, metric)
    full, points = _token_replay_grid(model, scorer, exit_mode, windows, max_candidates)

    verified = "replay"
    if exit_mode == "token":
        verified = "live"
        # the candidates nearest the target on the replay, run for real
        if target_speedup is not None:
            distance = [abs(math.log(p["flops_speedup"] / target_speedup)) for p in points]
        else:
            floor = full["metric"] - max_accuracy_drop
            distance = [abs(p["metric"] - floor) for p in points]
        order = sorted(range(len(points)), key=lambda i: (distance[i], -points[i]["metric"]))
        shortlist = [points[i] for i in order[:max_live_checks]]
        points = [
            {
                **scorer.live(_token_settings(exit_mode, p)),
                "threshold": p["threshold"],
                "window_size": p["window_size"],
            }
            for p in shortlist
        ]
        full = scorer.live({"early_exit": False})
        points.append({**full, "threshold": 0.0, "window_size": windows[0]})

    renamed = [{**p, "accuracy": p["metric"]} for p in points]
    choice, reached = _select(renamed, full["metric"], target_speedup, max_accuracy_drop)
    target = (
        {"flops_speedup": target_speedup} if target_speedup is not None else {"max_accuracy_drop": max_accuracy_drop}
    )
    description = f"{exit_mode} exit, threshold {choice['threshold']:.4g}"
    if exit_mode == "token":
        description += f", window {choice['window_size']}"
    if reached:
        message = (
            f"{description}: expected {scorer.metric_name} {choice['metric']:.4f} (full model {full['metric']:.4f}) at "
            f"{choice['flops_speedup']:.2f}x FLOPs speed-up on {rec.labels.shape[0]} sentences ({verified})."
        )
    else:
        best = "fastest" if target_speedup is not None else "best-scoring"
        message = (
            f"target {target} cannot be reached on this set; returning the {best} setting found: {description}, "
            f"{scorer.metric_name} {choice['metric']:.4f} at {choice['flops_speedup']:.2f}x FLOPs speed-up."
        )
        logger.warning(message)
    result = TokenCalibrationResult(
        exit_mode=exit_mode,
        exit_threshold=float(choice["threshold"]),
        window_size=int(choice["window_size"]),
        metric_name=scorer.metric_name,
        expected_metric=choice["metric"],
        expected_flops_speedup=choice["flops_speedup"],
        expected_layer_speedup=choice["layer_speedup"],
        full_metric=full["metric"],
        target=target,
        reached=reached,
        message=message,
        num_sentences=int(rec.labels.shape[0]),
        verified=verified,
        frontier=[{k: v for k, v in p.items() if k != "accuracy"} for p in _pareto(renamed)],
    )
    if apply:
        apply_calibration(model, result)
    return result


def _token_search_space(
    model, exit_mode: str | None, window_sizes: Iterable[int] | None, max_candidates: int
) -> tuple[str, list[int]]:
    """The checked exit mode (default: the config's) and windows (default: the config's; SENTEE has none to search),
    before anything runs."""
    from .models.bert.token_exit_utils import EXIT_MODES, check_window_size

    config = model.config
    exit_mode = exit_mode or config.exit_mode
    if exit_mode not in EXIT_MODES:
        raise ValueError(f"`exit_mode` must be one of {EXIT_MODES}, got {exit_mode!r}.")
    windows = [config.window_size] if window_sizes is None else list(window_sizes)
    if not windows:
        raise ValueError("`window_sizes` must name at least one window.")
    windows = [check_window_size(w, "window_sizes") for w in windows]
    if exit_mode == "sentence":
        windows = [config.window_size]
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
        raise ValueError(f"`max_candidates` must be an integer >= 1, got {max_candidates!r}.")
    if len(model.exit_layers) < 2:
        raise ValueError("The model has a single exit: there is nothing to calibrate.")
    return exit_mode, windows


def _token_replay_grid(model, scorer: _TokenScorer, exit_mode: str, windows: list[int], max_candidates: int):
    """The full model's scores and every candidate `(threshold, window)` scored by replaying the rule on the record:
    thresholds halfway between the observed word uncertainties, for each window."""
    from .models.bert.token_exit_utils import TokenExitRule, uncertainty_of, word_layout

    config, rec = model.config, scorer.rec

    def rule(threshold, window):
        return TokenExitRule.build(
            exit_mode,
            threshold,
            model.exit_layers,
            config.num_hidden_layers,
            window_size=window,
            sentence_pooling=config.sentence_pooling,
            threshold_schedule=config.threshold_schedule,
            threshold_cap=config.threshold_cap,
        )

    full = scorer.replay(rule(0.0, windows[0]))
    _, starts = word_layout(rec.attention_mask, rec.word_ids)
    # word uncertainties at the deciding exits (a SENTEE mean falls within their range, which the grid covers)
    observed = uncertainty_of(rec.all_logits[:-1])[:, starts]
    thresholds = [min(max(t, 0.0), 1.0) for t in _midpoints(observed, max_candidates)]
    points = []
    for window in windows:
        for threshold in sorted(set(thresholds)):
            points.append({**scorer.replay(rule(threshold, window)), "threshold": threshold, "window_size": window})
    return full, points


def token_frontier(
    model,
    batches: Iterable[dict] | TokenCalibrationRecord,
    *,
    exit_mode: str | None = None,
    window_sizes: Iterable[int] | None = None,
    max_candidates: int = 48,
    metric: str | Callable | None = None,
) -> list[dict]:
    """The speed/metric frontier of SENTEE / TOKEE settings of a [`BertForTokenEarlyExit`] from one recorded pass,
    each candidate scored by replaying the rule on the full-depth logits (exact for SENTEE, an estimate for TOKEE; see
    [`calibrate_token`]), e.g. to choose the settings a sweep then measures for real.

    Args:
        model, batches, exit_mode, window_sizes, max_candidates, metric: As for [`calibrate_token`].

    Returns:
        The Pareto-optimal points, `{"threshold", "window_size", "metric", "flops_speedup", "layer_speedup"}` each.
    """
    exit_mode, windows = _token_search_space(model, exit_mode, window_sizes, max_candidates)
    rec = batches if isinstance(batches, TokenCalibrationRecord) else record_token(model, batches)
    _, points = _token_replay_grid(model, _TokenScorer(model, rec, metric), exit_mode, windows, max_candidates)
    return [
        {k: v for k, v in p.items() if k != "accuracy"}
        for p in _pareto([{**p, "accuracy": p["metric"]} for p in points])
    ]


def _token_settings(exit_mode: str, point: dict) -> dict:
    return {"exit_mode": exit_mode, "exit_threshold": point["threshold"], "window_size": point["window_size"]}
