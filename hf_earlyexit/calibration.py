"""Threshold calibration: choose exit thresholds for a target FLOPs speed-up or a largest accuracy drop.

The model runs once over the calibration set with every exit evaluated (`output_all_exits=True`); every candidate
setting is then scored on those recorded logits with the same [`ExitRule`] the live forward uses, so no candidate
re-runs the model, and the expected accuracy and speed-up are exactly what the model measures on the same set.
Candidate thresholds sit halfway between consecutive observed scores, never on one, so the tiny numerical differences
between a full batch and a compacted sub-batch cannot flip a decision.

Works for every family whose forward accepts `output_all_exits=True` and that provides `exit_layers` (encoder layers
computed when answering at each exit, cumulative for a cascade), `full_depth_layers`, `flops_per_exit(lengths)` and
`reference_flops(lengths)`.
"""

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from .evaluation import map_batches
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
        """The settings as forward arguments (`model(**inputs, **result.forward_kwargs())`)."""
        kwargs = {"exit_criterion": self.criterion, "patience": self.patience}
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

    def run(batch):
        batch = dict(batch)
        if "labels" not in batch:
            raise ValueError("Every calibration batch needs `labels`.")
        labels = batch.pop("labels")
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
        model: An early-exit model (any family, see the module docstring).
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
            of the batches (see [`record`]); every process then searches the same record and chooses the same setting.

    Returns:
        A [`CalibrationResult`]. A target that cannot be reached is reported (`reached=False`, a warning) with the
        nearest reachable setting, never silently.
    """
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


def apply_calibration(model, result: CalibrationResult) -> None:
    """Write a calibration's settings into `model.config` (validated like any config value)."""
    config = model.config
    config.exit_criterion = result.criterion
    config.patience = result.patience
    config.exit_threshold = result.exit_threshold
    config.validate()


def _rule_builder(model, criterion: str, num_exits: int):
    config = model.config

    def build(threshold=None, patience=None):
        return ExitRule.build(
            criterion,
            threshold,
            num_exits=num_exits,
            num_labels=config.num_labels,
            patience=patience if patience is not None else getattr(config, "patience", 1),
            divergence=getattr(config, "divergence", "jsd"),
            regression_tolerance=getattr(config, "regression_tolerance", 0.1),
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
