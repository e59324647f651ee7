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
"""The converged benchmarks' section of `benchmarks/RESULTS.md`, from whatever cell result files exist.

Reads `<results_dir>/<benchmark>/*.json` (written by `benchmarks/cells.py` for `python -m benchmarks.sst2`) and
renders: the budget and the CPU time spent, the full model's per-epoch dev curve, the headline table (at each target
FLOPs speed-up: the full model, the best cascade, the best multi-exit setting, the best static and the best distilled
model, mean ± standard deviation over the seeds that ran), every row, wall-clock and latency, the oracle bound, and
the cells still missing.
"""

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


TARGETS = (1.5, 2.0, 3.0, 4.0)
# a static model counts as reaching a target when its fixed FLOPs speed-up is within this of it (a k-layer model's
# speed-up is just under L/k: its head costs as much as the full model's)
STATIC_TOLERANCE = 0.01
KIND_LABELS = {
    "full": "full model",
    "cascade": "cascade",
    "assembled": "assembled cascade",
    "multi_exit": "multi-exit",
    "tokee": "TOKEE",
    "sentee": "SENTEE",
    "static": "static",
    "distilled": "distilled",
    "oracle": "oracle",
}


@dataclass
class Point:
    """One method at one target in one seed, as measured on dev."""

    accuracy: float
    flops_speedup: float
    wallclock: dict[str, float]
    latency_p90_ms: dict[str, float]
    reached: bool = True
    # the FLOPs speed-up of the sentences timed at each batch size (absent in cells measured before it was recorded)
    timed_flops: dict[str, float] = field(default_factory=dict)
    # an exit method's FLOPs speed-up on the calibration slice, where its setting was chosen (`None`: a fixed model)
    calibrated_flops: float | None = None

    def fidelity(self, size: str) -> float | None:
        """Wall-clock over FLOPs speed-up at batch size `size`, on the sentences that were timed."""
        if size not in self.wallclock:
            return None
        return self.wallclock[size] / self.timed_flops.get(size, self.flops_speedup)


@dataclass
class Row:
    """A method across seeds: `points[target][seed]`; fixed-speed models (static, distilled, full) have one target,
    `None`."""

    name: str
    kind: str
    model: str  # the trained model behind the row (a multi-exit model gives a row per criterion)
    cells: dict[int, str] = field(default_factory=dict)  # the cell behind the row, per seed
    points: dict[float | None, dict[int, Point]] = field(default_factory=lambda: defaultdict(dict))
    oracle: dict[int, dict] = field(default_factory=dict)
    # a training option tried on top of a recipe (issue 13's ablation): in its own table, not a headline candidate
    ablation: bool = False


def _point(measured: dict, reached: bool = True, calibration: dict | None = None) -> Point:
    return Point(
        accuracy=measured["metric"],
        flops_speedup=measured["flops_speedup"],
        wallclock=measured.get("wallclock_speedup", {}),
        latency_p90_ms=measured.get("latency_p90_ms", {}),
        reached=reached,
        timed_flops=measured.get("timed_flops_speedup", {}),
        calibrated_flops=(calibration or {}).get("flops_speedup"),
    )


def _depths(layers: list[int]) -> str:
    return "->".join(f"{k}L" for k in layers)


def load_cells(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def rows_of(cells: list[dict]) -> tuple[dict[str, Row], dict]:
    """The rows of a benchmark's cells, and its curve cell (or `None`)."""
    rows: dict[str, Row] = {}
    curve = None
    for cell in cells:
        kind, settings, result, seed = cell["kind"], cell["settings"], cell["result"], cell["settings"]["seed"]
        if kind == "curve":
            curve = cell
            continue
        if kind in ("full", "static", "distilled", "stage1"):
            # fixed-depth models; a token model's stage 1 is also the full model (its full-depth run)
            name = {"full": "full model", "stage1": "full model"}.get(kind, f"{kind} {settings['layers']}L")
            row = rows.setdefault(name, Row(name, "full" if kind == "stage1" else kind, name))
            row.points[None][seed] = _point(result["measured"])
            row.cells[seed] = cell["cell"]
        if "points" not in result:
            continue
        options = []  # training options on top of a recipe (an ablation row)
        if kind == "multi_exit" and "first_stage" in settings:  # exits trained on the frozen full model
            model = f"frozen full model + exits, {settings['recipe'].replace('_', '-')}"
        elif kind == "multi_exit":
            model = "multi-exit " + ("+ bypasses" if settings["use_bypass"] else "no bypass")
            if settings.get("recipe") == "teacher_distillation":
                model += ", exits distilled from the full model"
            options = [o for o in settings.get("training_options", {}) if not o.endswith("_temperature")]
            model += "".join(" + " + option.replace("_weight", "").replace("_", " ") for option in options)
        elif kind == "cascade":
            model = f"cascade {_depths(settings['member_layers'])} ({settings['recipe']})"
        elif kind == "assembled":
            model = f"assembled {_depths(settings['member_layers'])}"
        else:  # a token model's training stage
            model = kind.replace("stage", "stage ")
        for point in result["points"]:
            criterion = point["criterion"]
            if kind in ("stage1", "stage2"):
                name, row_kind = f"{criterion} ({model})", criterion.lower()
            else:
                name = f"{model} ({criterion})" if kind == "multi_exit" else model
                row_kind = kind
            row = rows.setdefault(name, Row(name, row_kind, model, ablation=bool(options)))
            row.points[point["target"]][seed] = _point(point["measured"], point["reached"], point.get("calibration"))
            row.cells[seed] = cell["cell"]
        for mode, oracle in _oracles(result):
            key = f"{model} ({mode})" if mode else model
            rows.setdefault(f"oracle: {key}", Row(f"oracle: {key}", "oracle", key)).oracle[seed] = oracle
    return rows, curve


def _oracles(result: dict) -> list[tuple[str | None, dict]]:
    """The oracle bounds of a cell: one for a classifier, one per exit granularity for a tagger."""
    oracle = result.get("oracle")
    if oracle is None:
        return []
    if "metric" in oracle:
        return [(None, oracle)]
    return [({"token": "TOKEE", "sentence": "SENTEE"}[mode], value) for mode, value in oracle.items()]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _cell_text(points: dict[int, Point], label: str = "", per_seed: bool = False) -> str:
    """Mean ± std of the metric over the seeds, and the mean speed-up; `per_seed` adds each seed's metric."""
    accuracy, spread = _mean_std([100 * p.accuracy for p in points.values()])
    speed = statistics.fmean(p.flops_speedup for p in points.values())
    mark = "" if all(p.reached for p in points.values()) else " †"
    seeds = f" ± {spread:.2f} (n={len(points)})" if len(points) > 1 else " (1 seed)"
    if per_seed and len(points) > 1:
        seeds = f" ± {spread:.2f} ({_each_seed({seed: 100 * p.accuracy for seed, p in points.items()})})"
    return f"{accuracy:.2f}{seeds}, {speed:.2f}x{label}{mark}"


def _seeds_text(by_seed: dict[int, dict], key: str, scale: float = 1.0, unit: str = "") -> str:
    """The mean of `key` over the seeds, and each seed's value where several ran."""
    values = {seed: scale * value[key] for seed, value in by_seed.items()}
    text = f"{_mean_std(list(values.values()))[0]:.2f}{unit}"
    return text + (f" ({_each_seed(values, unit)})" if len(values) > 1 else "")


def _each_seed(values: dict[int, float], unit: str = "") -> str:
    """`seeds 0, 1: 88.88, 89.45`: each seed's value, in seed order."""
    seeds = sorted(values)
    return f"seeds {', '.join(map(str, seeds))}: " + ", ".join(f"{values[seed]:.2f}{unit}" for seed in seeds)


def best_row(rows: dict[str, Row], kind: str, target: float, ablations: bool = False):
    """The most accurate row of `kind` (mean over its seeds) that meets `target`: exit methods through their calibrated
    point for it (reached in every seed), fixed-speed models when their speed-up is within `STATIC_TOLERANCE`.

    Rows are compared on the seeds they all ran (paired: a seed's value against the same seed's), ties going to the
    row with more seeds, and the chosen row comes with its mean over all its seeds. Rows of training options tried on
    top of a recipe count only with `ablations=True`: the headline compares the recipes a user picks from."""
    candidates = []
    for row in rows.values():
        if row.kind != kind or (row.ablation and not ablations):
            continue
        if None in row.points:
            points = row.points[None]
            if statistics.fmean(p.flops_speedup for p in points.values()) < target * (1 - STATIC_TOLERANCE):
                continue
        else:
            points = row.points.get(target, {})
            if not points or not all(p.reached for p in points.values()):
                continue
        candidates.append((row.name, points))
    if not candidates:
        return None
    shared = set.intersection(*(set(points) for _, points in candidates)) or None  # None: no seed in common

    def score(candidate):
        name, points = candidate
        seeds = shared or points
        return statistics.fmean(points[seed].accuracy for seed in seeds), len(points), name

    return max(candidates, key=score)


def headline_cells(rows: dict[str, Row], seed: int = 0) -> list[str]:
    """The cells (of `seed`) behind the headline: the full model, and the best row of each kind at any target."""
    names = {rows["full model"].cells[seed]} if seed in rows.get("full model", Row("", "", "")).cells else set()
    for kind in KIND_LABELS:
        for target in TARGETS:
            best = best_row(rows, kind, target)
            if best is not None and seed in rows[best[0]].cells:
                names.add(rows[best[0]].cells[seed])
    return sorted(names)


def expected_cells(plan_names: list[str], rows: dict[str, Row], seeds: tuple[int, ...] = (1, 2)) -> list[str]:
    """What the benchmark asks for: every cell of the plan (seed 0), and the headline cells again for `seeds`."""
    again = [name.replace("seed0", f"seed{seed}") for seed in seeds for name in headline_cells(rows)]
    return list(dict.fromkeys([*plan_names, *again]))


def _timing_turns(cells: list[dict]) -> str:
    """How the measured cells interleaved the timed batches with the plain model's (recorded with each point since
    the models take turns by blocks; earlier cells took turns at every batch)."""
    blocks = set()
    for cell in cells:
        result = cell["result"]
        measured = [result["measured"]] if "measured" in result else []
        measured += [point["measured"] for point in result.get("points", [])]
        blocks |= {m.get("timing_block_examples") for m in measured}
    texts = sorted("at every batch" if block is None else f"every block of {block} sentences" for block in blocks)
    if len(texts) > 1:
        return " or ".join(texts) + " (cells differ: see each cell's `timing_block_examples`)"
    return texts[0] if texts else "at every batch"


def _metric_name(cells: list[dict]) -> str:
    for cell in cells:
        measured = cell["result"].get("measured") or next(iter(cell["result"].get("points", [])), {}).get("measured")
        if measured:
            return measured.get("metric_name", "accuracy")
    return "accuracy"


def _curve_values(curve: dict) -> list[tuple[float, float]]:
    """`(epoch, dev metric)` of a curve cell: the trainer's accuracy of the full model, or the callback's F1."""
    values = []
    for entry in curve["result"]["training"]["dev_per_epoch"]:
        metric = entry["dev"]["f1"] if "dev" in entry else entry["eval_accuracy_member_0"]
        values.append((entry["epoch"], metric))
    return values


def _training_budgets(cells: list[dict]) -> set[float]:
    """The epochs of the cells trained from the backbone: not the curve (its length is no budget), not the exits
    trained on a frozen full model (their heads' own epochs)."""
    return {c["settings"]["epochs"] for c in cells if c["kind"] != "curve" and "first_stage" not in c["settings"]}


def _budget_against_curve(values: list[tuple[float, float]], epochs: set[float]) -> str:
    """What the curve says of the models' budget (`epochs`, those of every cell trained from the backbone): chosen from
    it, or (one budget, fixed before the curve ran) how far the curve rises past it."""
    best_epoch, best = max(values, key=lambda item: item[1])
    budget = next(iter(epochs)) if len(epochs) == 1 else None
    at_budget = dict(values).get(budget)
    if at_budget is None or best_epoch <= budget:
        return "the budget of every model was chosen from it"
    return (
        f"the models were trained for {budget:g} epochs, fixed before this curve ran; it still rises past them, to "
        f"{100 * best:.2f} at epoch {best_epoch:g} ({100 * (best - at_budget):+.2f} over epoch {budget:g} of the same "
        "schedule)"
    )


def _curve_model_text(curve: dict, last_epoch: float) -> str | None:
    """The curve's own model (the end of its schedule), calibrated and measured as the stage-1 cells are, when its
    cell measured it (the token benchmark's curve does): each criterion's points in order of speed-up, a setting
    reached by several targets once."""
    points = [p for p in curve["result"].get("points", []) if p.get("measured")]
    if not points:
        return None
    by_criterion: dict[str, dict[tuple[float, float], None]] = {}
    for point in sorted(points, key=lambda p: p["measured"]["flops_speedup"]):
        measured = point["measured"]
        landing = (round(100 * measured["metric"], 2), round(measured["flops_speedup"], 2))
        by_criterion.setdefault(point["criterion"], {})[landing] = None
    parts = [
        f"{criterion} " + ", ".join(f"{metric:.2f} at {speedup:.2f}x" for metric, speedup in landings)
        for criterion, landings in by_criterion.items()
    ]
    return (
        f"The curve's model after epoch {last_epoch:g}, calibrated on the slice and measured on dev as the stage-1 "
        f"cells are (seed {curve['settings']['seed']}, `{curve['cell']}`): " + "; ".join(parts) + "."
    )


def _training_options_table(rows: dict[str, Row], metric: str) -> list[str]:
    """The multi-exit models side by side (training recipe and options, issue 13's ablation): the last exit's metric
    and the oracle bound, and at each target the best criterion's calibrated point. Empty with fewer than two."""
    models = sorted({row.model for row in rows.values() if row.kind == "multi_exit"})
    if len(models) < 2:
        return []
    lines = [
        "**Multi-exit training options** (the same model trained with each recipe or option; at each target the best "
        "criterion; last exit and oracle as in the oracle table):",
        "",
        f"| model | last exit {metric} (%) | oracle | " + " | ".join(f"{t:g}x" for t in TARGETS) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in TARGETS) + " |",
    ]
    for model in models:
        variant = {name: row for name, row in rows.items() if row.kind == "multi_exit" and row.model == model}
        oracle = rows.get(f"oracle: {model}")
        last = oracle_speed = "-"
        if oracle is not None:
            last = f"{_mean_std([100 * o['metric'] for o in oracle.oracle.values()])[0]:.2f}"
            oracle_speed = f"{_mean_std([o['flops_speedup'] for o in oracle.oracle.values()])[0]:.2f}x"
        texts = []
        for target in TARGETS:
            best = best_row(variant, "multi_exit", target, ablations=True)
            criterion = "" if best is None else best[0][len(model) :].strip(" ()")
            texts.append("-" if best is None else _cell_text(best[1], f", {criterion}"))
        lines.append(f"| {model} | {last} | {oracle_speed} | " + " | ".join(texts) + " |")
    return lines + [""]


def target_columns(first: str, targets=TARGETS) -> list[str]:
    """The header of a table with one column per target speed-up, after a first column named `first`."""
    head = f"| {first} |" if first else "| |"
    return [head + "".join(f" {t:g}x |" for t in targets), "| --- |" + " ---: |" * len(targets)]


def best_of_kind_line(label: str, rows: dict[str, Row], kind: str, targets=TARGETS, text=_cell_text) -> str:
    """A table line: at each target the best row of `kind` (`best_row`), as `text(points, ", <row name>")`."""
    texts = []
    for target in targets:
        best = best_row(rows, kind, target)
        texts.append("-" if best is None else text(best[1], f", {best[0]}"))
    return f"| {label} | " + " | ".join(texts) + " |"


def _ordered(rows: dict[str, Row]) -> list[Row]:
    return sorted(rows.values(), key=lambda r: (list(KIND_LABELS).index(r.kind), r.name))


def render_benchmark(title: str, folder: Path, plan_names: list[str] | None = None) -> list[str]:
    """The section of one converged benchmark; `plan_names`: the seed-0 cells it plans (to list the missing ones, with
    the headline cells of seeds 1 and 2)."""
    cells = load_cells(folder)
    if not cells:
        return [f"### {title}", "", f"No cell has run yet (`{folder.as_posix()}` holds no result file).", ""]
    rows, curve = rows_of(cells)
    metric = _metric_name(cells)
    first = cells[0]["settings"]
    seconds = sum(cell["seconds"] for cell in cells)
    # CPU time as the cells recorded it; a cell written before CPU time was recorded counts its wall-clock time
    cpu_seconds = sum(cell.get("cpu_seconds") or cell["seconds"] for cell in cells)
    sizes = next((cell["result"]["data"] for cell in cells if "data" in cell["result"]), {})
    machines = sorted(
        {f"{c['machine']['processor']}, {c['machine']['cpu_count']} cores" for c in cells if c["machine"]}
    )
    # exits trained on a frozen full model add their own (heads-only) epochs to that model's budget
    frozen = sorted({f"{c['settings']['epochs']:g}" for c in cells if "first_stage" in c["settings"]})
    epochs = _training_budgets(cells)
    budgets = [f"{budget:g} epoch(s)" for budget in sorted(epochs)]
    if frozen:
        budgets.append(f"the exits added to a frozen full model: {', '.join(frozen)} more epoch(s) of their heads")
    lines = [
        f"### {title}",
        "",
        f"Backbone {first['backbone']}; {sizes.get('train', '?')} training sentences (all but the calibration slice), "
        f"{sizes.get('calibration', '?')} held-out calibration sentences, {sizes.get('dev', '?')} dev sentences; batch "
        f"{first['training']['batch_size']}; every model trained for the same budget ({', '.join(budgets)}). "
        f"{len(cells)} cells, {cpu_seconds / 3600:.1f} h of CPU time ({seconds / 3600:.1f} h wall-clock) in all "
        "(training, calibration and measuring), on "
        + "; ".join(machines)
        + f", {first['measuring']['threads']} torch thread(s) while measuring. Timing: "
        f"{first['measuring']['timing_sentences']} dev sentences per batch size, timed against the plain "
        "transformers model of the full size, the two taking turns "
        + _timing_turns(cells)
        + f", median of {first['measuring']['timing_rounds']} rounds.",
        "",
    ]
    if curve is not None:
        values = _curve_values(curve)
        lines += [
            f"The full model's dev {metric} after each epoch ({len(values)}-epoch schedule, seed "
            f"{curve['settings']['seed']}); {_budget_against_curve(values, epochs)}:",
            "",
            "| epoch | " + " | ".join(f"{epoch:g}" for epoch, _ in values) + " |",
            "| --- | " + " | ".join("---:" for _ in values) + " |",
            f"| dev {metric} (%) | " + " | ".join(f"{100 * value:.2f}" for _, value in values) + " |",
            "",
        ]
        measured = _curve_model_text(curve, values[-1][0])
        lines += [measured, ""] if measured else []

    lines += [
        f"**Headline** (each cell: dev {metric} %, mean ± standard deviation over the seeds that ran, and the measured "
        "FLOPs speed-up; the best row of each kind at each target, compared on the seeds every candidate ran; training "
        "options tried on top of a recipe left to their own table below; † the calibration slice could not reach the "
        "target):",
        "",
        *target_columns(""),
    ]
    if "full model" in rows:
        full = _cell_text(rows["full model"].points[None])
        lines.append("| full model (1x) | " + " | ".join(full for _ in TARGETS) + " |")
    kinds = [
        kind for kind in KIND_LABELS if kind not in ("full", "oracle") and any(r.kind == kind for r in rows.values())
    ]
    lines += [best_of_kind_line(f"best {KIND_LABELS[kind]}", rows, kind) for kind in kinds]
    lines += [
        "",
        "Every row (calibrated on the slice, measured on dev; fixed-depth models in the first column; each seed's value "
        "where several ran):",
        "",
    ]
    lines += target_columns("method")
    for row in _ordered(rows):
        if row.kind == "oracle":
            continue
        if None in row.points:
            texts = [_cell_text(row.points[None], per_seed=True)] + [""] * (len(TARGETS) - 1)
        else:
            texts = [_cell_text(row.points[t], per_seed=True) if row.points.get(t) else "-" for t in TARGETS]
        lines.append(f"| {row.name} | " + " | ".join(texts) + " |")
    lines.append("")

    lines += _training_options_table(rows, metric)
    oracles = [row for row in _ordered(rows) if row.kind == "oracle"]
    if oracles:
        lines += [
            "**Oracle bound**: each example (for taggers: each word, TOKEE, or each sentence, SENTEE) leaves at the "
            f"first exit whose prediction equals the last one's, so the {metric} is the full depth's and the speed-up "
            "is the most an exit criterion could reach without changing an answer (mean over the seeds, each seed's "
            "value where several ran; the shares of the first seed):",
            "",
            f"| model | {metric} (%) | FLOPs speed-up | layer speed-up | share leaving at each exit |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for row in oracles:
            by_seed = row.oracle
            shares = " / ".join(f"{100 * share:.0f}%" for share in by_seed[min(by_seed)]["exit_fraction"])
            lines.append(
                f"| {row.model} | {_seeds_text(by_seed, 'metric', 100)} | {_seeds_text(by_seed, 'flops_speedup', unit='x')} "
                f"| {_seeds_text(by_seed, 'layer_speedup', unit='x')} | {shares} |"
            )
        lines.append("")

    timed = sorted(
        {s for r in rows.values() for pts in r.points.values() for p in pts.values() for s in p.wallclock}, key=int
    )
    if timed:
        lines += [
            "Wall-clock speed-up against the plain full-size model (first seed that ran; in parentheses, over the "
            "FLOPs speed-up of the sentences timed, or of the dev set in cells measured before that was recorded), "
            "and the 90th-percentile latency per sentence at batch size 1 (the plain model's in parentheses); a "
            "setting reached by several targets is shown once:",
            "",
            "| method | FLOPs x | "
            + " | ".join(f"wall-clock x (bs {s})" for s in timed)
            + " | p90 latency bs 1 (ms) |",
            "| --- | ---: | " + " | ".join("---:" for _ in timed) + " | ---: |",
        ]
        for row in _ordered(rows):
            shown = set()
            for _, by_seed in sorted(row.points.items(), key=lambda item: item[0] or 0):
                point = by_seed[min(by_seed)]
                if point.flops_speedup in shown:
                    continue
                shown.add(point.flops_speedup)
                walls = " | ".join(
                    f"{point.wallclock[s]:.2f}x ({point.fidelity(s):.2f})" if s in point.wallclock else "-"
                    for s in timed
                )
                p90 = point.latency_p90_ms
                latency = f"{p90['1']:.1f} ({p90['1_reference']:.1f})" if "1" in p90 else "-"
                lines.append(f"| {row.name} | {point.flops_speedup:.2f}x | {walls} | {latency} |")
        lines.append("")
    if plan_names is not None:
        done = {cell["cell"] for cell in cells}
        missing = [name for name in expected_cells(plan_names, rows) if name not in done]
        if missing:
            lines += [
                f"Cells not run yet ({len(missing)}; seeds 1 and 2 only for the headline rows): "
                + ", ".join(f"`{n}`" for n in missing)
                + ".",
                "",
            ]
    return lines


def _data_and_calibration(cells: list[dict]) -> dict:
    """The data settings of a run's cells, with the calibration settings its exit cells record and the training budget
    of the cells trained from the backbone (`epochs`)."""
    settings = next((dict(cell["settings"]["data"]) for cell in cells), {})
    for cell in cells:
        settings.update({key: value for key, value in cell["settings"].items() if key.startswith("calibration_")})
    budgets = sorted(_training_budgets(cells))
    if budgets:
        settings["epochs"] = ", ".join(f"{budget:g}" for budget in budgets)
    return settings


def _setting_changes(cells: list[dict], earlier: list[dict]) -> list[str]:
    """The data and calibration settings and the training budget in which a rerun's cells differ from the earlier
    run's (`key new (earlier: old)`)."""
    new, old = _data_and_calibration(cells), _data_and_calibration(earlier)
    return [
        f"`{key}` {new.get(key, 'absent')} (earlier: {old.get(key, 'absent')})"
        for key in sorted(set(new) | set(old))
        if new.get(key) != old.get(key)
    ]


def _landing_text(point: Point | None) -> str:
    """`90.14, 1.83x (slice 2.01x)`: a point's dev metric and speed-up, and for a calibrated setting the speed-up it
    was chosen for on the slice."""
    if point is None:
        return "-"
    text = f"{100 * point.accuracy:.2f}, {point.flops_speedup:.2f}x"
    if point.calibrated_flops is not None:
        text += f" (slice {point.calibrated_flops:.2f}x)"
    return text + ("" if point.reached else " †")


def render_rerun(title: str, folder: Path, earlier: Path, intro: str = "", plan_names: list[str] = ()) -> list[str]:
    """A benchmark run again with changed data settings, cell by cell against the same cell of the earlier run: for
    each row, target and seed the dev metric and FLOPs speed-up, and for calibrated settings the speed-up they were
    chosen for on the calibration slice. `plan_names`: the seed-0 cells to list as not rerun yet."""
    cells, earlier_cells = load_cells(folder), load_cells(earlier)
    rows, old_rows = rows_of(cells)[0], rows_of(earlier_cells)[0]
    lines = [f"### {title}", ""] + ([intro, ""] if intro else [])
    changes = _setting_changes(cells, earlier_cells)
    facts = [f"Changed from the earlier run (`{earlier.as_posix()}`): {'; '.join(changes)}."] if changes else []
    train = [
        next((c["result"]["data"]["train"] for c in group if "data" in c["result"]), "?")
        for group in (cells, earlier_cells)
    ]
    if cells:
        facts.append(f"Training sentences: {train[0]} (earlier {train[1]}).")
    lines += [" ".join(facts), ""] if facts else []
    if not cells:
        return lines + [f"No cell has run yet (`{folder.as_posix()}` holds no result file).", ""]
    metric = _metric_name(cells)
    lines += [
        f"| model | target | seed | this run: dev {metric} (%), speed-up | earlier run, same cell |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in _ordered(rows):
        if row.kind == "oracle":
            continue
        for target, points in sorted(row.points.items(), key=lambda item: item[0] or 0):
            for seed, point in sorted(points.items()):
                old = old_rows.get(row.name)
                old_point = old.points.get(target, {}).get(seed) if old else None
                target_text = "-" if target is None else f"{target:g}x"
                lines.append(
                    f"| {row.name} | {target_text} | {seed} | {_landing_text(point)} | {_landing_text(old_point)} |"
                )
    lines.append("")
    if any("†" in line for line in lines):
        lines += ["† the calibrated setting did not reach its target on the calibration slice.", ""]
    landed = {cell["cell"] for cell in cells}
    missing = [name for name in plan_names if name not in landed]
    if missing:
        lines += [f"Cells of seed 0 not rerun yet: {', '.join(f'`{name}`' for name in missing)}.", ""]
    return lines


def plot_benchmark(title: str, folder: Path, path: Path) -> Path | None:
    """The dev metric against the FLOPs speed-up and the wall-clock speed-up at each timed batch size: a curve per
    exit method (mean over seeds, a point per target), one per kind of fixed-depth model (a point per depth), the
    oracle bounds as single points, and the full model as a reference line."""
    from hf_earlyexit.plots import plot_rows

    cells = load_cells(folder)
    rows, _ = rows_of(cells)
    if not rows:
        return None
    timed = sorted(
        {s for r in rows.values() for pts in r.points.values() for p in pts.values() for s in p.wallclock}, key=int
    )

    def mean(points: dict[int, Point], size: str | None = None) -> tuple[float, float] | None:
        if size is not None and not all(size in p.wallclock for p in points.values()):
            return None
        x = statistics.fmean(p.flops_speedup if size is None else p.wallclock[size] for p in points.values())
        return x, 100 * statistics.fmean(p.accuracy for p in points.values())

    panels = []
    for label, size in [("measured FLOPs speed-up (x)", None)] + [
        (f"measured wall-clock speed-up at batch size {s} (x)", s) for s in timed
    ]:
        curves: dict[str, list[tuple[float, float]]] = {}
        for row in _ordered(rows):
            if row.kind == "full":
                continue
            if row.kind == "oracle":
                if size is None:
                    oracle = list(row.oracle.values())
                    speedup = statistics.fmean(o["flops_speedup"] for o in oracle)
                    curves[row.name] = [(speedup, 100 * statistics.fmean(o["metric"] for o in oracle))]
                continue
            name = row.name if None not in row.points else KIND_LABELS[row.kind]
            for points in row.points.values():
                point = mean(points, size)
                if point is not None:
                    curves.setdefault(name, []).append(point)
        panels.append((label, curves))
    references = []
    if "full model" in rows:
        references.append(("full model", mean(rows["full model"].points[None])[1]))
    metric = _metric_name(cells)
    return plot_rows([(None, panels, references)], path, title=title, ylabel=f"dev {metric} (%)", marks=TARGETS)


__all__ = [
    "best_row",
    "expected_cells",
    "headline_cells",
    "load_cells",
    "plot_benchmark",
    "render_benchmark",
    "rows_of",
]
