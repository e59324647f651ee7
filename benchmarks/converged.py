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
    "static": "static",
    "distilled": "distilled",
    "cascade": "cascade",
    "assembled": "assembled cascade",
    "multi_exit": "multi-exit",
}


@dataclass
class Point:
    """One method at one target in one seed, as measured on dev."""

    accuracy: float
    flops_speedup: float
    wallclock: dict[str, float]
    latency_p90_ms: dict[str, float]
    reached: bool = True


@dataclass
class Row:
    """A method across seeds: `points[target][seed]`; fixed-speed models (static, distilled, full) have one target,
    `None`."""

    name: str
    kind: str
    model: str  # the trained model behind the row (a multi-exit model gives a row per criterion)
    points: dict[float | None, dict[int, Point]] = field(default_factory=lambda: defaultdict(dict))
    oracle: dict[int, dict] = field(default_factory=dict)


def _point(measured: dict, reached: bool = True) -> Point:
    return Point(
        accuracy=measured["metric"],
        flops_speedup=measured["flops_speedup"],
        wallclock=measured.get("wallclock_speedup", {}),
        latency_p90_ms=measured.get("latency_p90_ms", {}),
        reached=reached,
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
        if kind in ("full", "static", "distilled"):
            name = "full model" if kind == "full" else f"{kind} {settings['layers']}L"
            row = rows.setdefault(name, Row(name, kind, name))
            row.points[None][seed] = _point(result["measured"])
            continue
        if kind == "multi_exit":
            model = "multi-exit " + ("+ bypasses" if settings["use_bypass"] else "no bypass")
        elif kind == "cascade":
            model = f"cascade {_depths(settings['member_layers'])} ({settings['recipe']})"
        else:
            model = f"assembled {_depths(settings['member_layers'])}"
        for point in result["points"]:
            name = f"{model} ({point['criterion']})" if kind == "multi_exit" else model
            row = rows.setdefault(name, Row(name, kind, model))
            row.points[point["target"]][seed] = _point(point["measured"], point["reached"])
            if "oracle" in result:
                row.oracle[seed] = result["oracle"]
    return rows, curve


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _cell_text(points: dict[int, Point], label: str = "") -> str:
    accuracy, spread = _mean_std([100 * p.accuracy for p in points.values()])
    speed = statistics.fmean(p.flops_speedup for p in points.values())
    mark = "" if all(p.reached for p in points.values()) else " †"
    seeds = f" ± {spread:.2f} (n={len(points)})" if len(points) > 1 else " (1 seed)"
    return f"{accuracy:.2f}{seeds}, {speed:.2f}x{label}{mark}"


def best_row(rows: dict[str, Row], kind: str, target: float, seeds_needed: int = 1):
    """The most accurate row of `kind` (mean over its seeds) that meets `target`: exit methods through their calibrated
    point for it (reached in every seed), fixed-speed models when their speed-up is within `STATIC_TOLERANCE`."""
    candidates = []
    for row in rows.values():
        if row.kind != kind:
            continue
        if None in row.points:
            points = row.points[None]
            if statistics.fmean(p.flops_speedup for p in points.values()) < target * (1 - STATIC_TOLERANCE):
                continue
        else:
            points = row.points.get(target, {})
            if not points or not all(p.reached for p in points.values()):
                continue
        if len(points) >= seeds_needed:
            candidates.append((statistics.fmean(p.accuracy for p in points.values()), row.name, points))
    if not candidates:
        return None
    _, name, points = max(candidates)
    return name, points


def render_benchmark(title: str, folder: Path, expected: list[str] | None = None) -> list[str]:
    cells = load_cells(folder)
    if not cells:
        return [f"### {title}", "", f"No cell has run yet (`{folder.as_posix()}` holds no result file).", ""]
    rows, curve = rows_of(cells)
    first = cells[0]["settings"]
    seconds = sum(cell["seconds"] for cell in cells)
    sizes = next((cell["result"]["data"] for cell in cells if "data" in cell["result"]), {})
    machines = sorted(
        {f"{c['machine']['processor']}, {c['machine']['cpu_count']} cores" for c in cells if c["machine"]}
    )
    lines = [
        f"### {title}",
        "",
        f"Backbone {first['backbone']}; {sizes.get('train', '?')} training sentences (all but the calibration slice), "
        f"{sizes.get('calibration', '?')} held-out calibration sentences of at least "
        f"{first['data']['calibration_min_words']} words, {sizes.get('dev', '?')} dev sentences; batch "
        f"{first['training']['batch_size']}, every model trained for the same budget ("
        + ", ".join(sorted({f"{c['settings']['epochs']:g} epochs" for c in cells if c["kind"] != "curve"}))
        + f"). {len(cells)} cells, {seconds / 3600:.1f} h of CPU time (training, calibration and measuring), on "
        + "; ".join(machines)
        + f", {first['measuring']['threads']} torch thread(s) while measuring. Timing: "
        f"{first['measuring']['timing_sentences']} dev sentences per batch size, interleaved batch by batch with the "
        f"plain transformers model of the full size, median of {first['measuring']['timing_rounds']} rounds.",
        "",
    ]
    if curve is not None:
        epochs = curve["result"]["training"]["dev_per_epoch"]
        lines += [
            f"Full model's dev accuracy after each epoch ({len(epochs)}-epoch schedule, seed {curve['settings']['seed']}; "
            "the budget of every model was chosen from it):",
            "",
            "| epoch | " + " | ".join(f"{e['epoch']:g}" for e in epochs) + " |",
            "| --- | " + " | ".join("---:" for _ in epochs) + " |",
            "| dev accuracy (%) | " + " | ".join(f"{100 * e['eval_accuracy_member_0']:.2f}" for e in epochs) + " |",
            "",
        ]

    lines += [
        "**Headline** (each cell: dev accuracy %, mean ± standard deviation over seeds, and the measured FLOPs "
        "speed-up; the best row of each kind at each target; † the calibration slice could not reach the target):",
        "",
        "| | " + " | ".join(f"{t:g}x" for t in TARGETS) + " |",
        "| --- | " + " | ".join("---:" for _ in TARGETS) + " |",
    ]
    full = rows.get("full model")
    if full is not None:
        lines.append("| full model (1x) | " + " | ".join(_cell_text(full.points[None]) for _ in TARGETS) + " |")
    for kind in ("cascade", "assembled", "multi_exit", "static", "distilled"):
        cells_text = []
        for target in TARGETS:
            best = best_row(rows, kind, target)
            cells_text.append("-" if best is None else _cell_text(best[1], f", {best[0]}"))
        lines.append(f"| best {KIND_LABELS[kind]} | " + " | ".join(cells_text) + " |")
    lines.append("")

    lines += ["Every row (calibrated on the slice, measured on dev):", ""]
    lines += ["| method | " + " | ".join(f"{t:g}x" for t in TARGETS) + " |"]
    lines += ["| --- | " + " | ".join("---:" for _ in TARGETS) + " |"]
    for row in sorted(rows.values(), key=lambda r: (list(KIND_LABELS).index(r.kind), r.name)):
        if None in row.points:
            text = _cell_text(row.points[None])
            lines.append(f"| {row.name} | " + " | ".join(text for _ in TARGETS[:1]) + " | | | |")
        else:
            texts = [_cell_text(row.points[t]) if row.points.get(t) else "-" for t in TARGETS]
            lines.append(f"| {row.name} | " + " | ".join(texts) + " |")
    lines += ["", "Static, distilled and full models have one speed-up; it is shown in the first column.", ""]

    oracle_rows = {}
    for row in rows.values():
        for seed, oracle in row.oracle.items():
            oracle_rows.setdefault(row.model, {})[seed] = oracle
    if oracle_rows:
        lines += [
            "**Oracle bound**: each example leaves at the first exit (cascade member) whose prediction equals the "
            "last one's, so the accuracy is the full depth's; the speed-up is the most any criterion could reach "
            "without losing an answer:",
            "",
            "| model | accuracy (%) | FLOPs speed-up | layer speed-up | share leaving at each exit |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for name, by_seed in sorted(oracle_rows.items()):
            accuracy, _ = _mean_std([100 * o["metric"] for o in by_seed.values()])
            flops, _ = _mean_std([o["flops_speedup"] for o in by_seed.values()])
            layers, _ = _mean_std([o["layer_speedup"] for o in by_seed.values()])
            shares = " / ".join(f"{100 * s:.0f}%" for s in next(iter(by_seed.values()))["exit_fraction"])
            lines.append(f"| {name} | {accuracy:.2f} | {flops:.2f}x | {layers:.2f}x | {shares} |")
        lines.append("")

    sizes_timed = sorted(
        {size for row in rows.values() for pts in row.points.values() for p in pts.values() for size in p.wallclock},
        key=int,
    )
    if sizes_timed:
        header = " | ".join(f"wall-clock x (bs {s})" for s in sizes_timed)
        lines += [
            "Wall-clock (first seed that ran; x against the plain full-size model) and the 90th-percentile latency "
            "per sentence at batch size 1 (the plain full model's in parentheses):",
            "",
            f"| method | target | FLOPs x | {header} | p90 latency bs 1 (ms) |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in sizes_timed) + " | ---: |",
        ]
        for row in sorted(rows.values(), key=lambda r: (list(KIND_LABELS).index(r.kind), r.name)):
            for target, by_seed in sorted(row.points.items(), key=lambda item: item[0] or 0):
                point = by_seed[min(by_seed)]
                walls = " | ".join(f"{point.wallclock[s]:.2f}x" if s in point.wallclock else "-" for s in sizes_timed)
                p90 = point.latency_p90_ms
                latency = f"{p90['1']:.1f} ({p90['1_reference']:.1f})" if "1" in p90 else "-"
                label = "-" if target is None else f"{target:g}x"
                lines.append(f"| {row.name} | {label} | {point.flops_speedup:.2f}x | {walls} | {latency} |")
        lines.append("")
    if expected:
        done = {cell["cell"] for cell in cells}
        missing = [name for name in expected if name not in done]
        if missing:
            lines += [f"Cells not run yet ({len(missing)}): " + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    return lines


def plot_benchmark(title: str, folder: Path, path: Path) -> Path | None:
    """Dev accuracy against the FLOPs speed-up and the wall-clock speed-up at each timed batch size: a curve per exit
    method (mean over seeds, one point per target), one per kind of fixed model (static, distilled: a point per depth),
    the oracle bounds as single points, and the full model as a reference line."""
    from hf_earlyexit.plots import plot_rows

    rows, _ = rows_of(load_cells(folder))
    if not rows:
        return None
    sizes = sorted({s for r in rows.values() for pts in r.points.values() for p in pts.values() for s in p.wallclock})

    def mean(points, attribute, size=None):
        values = [getattr(p, attribute) if size is None else p.wallclock.get(size) for p in points.values()]
        return None if None in values else statistics.fmean(values)

    panels = []
    for label, size in [("measured FLOPs speed-up (x)", None)] + [
        (f"measured wall-clock speed-up at batch size {s} (x)", s) for s in sorted(sizes, key=int)
    ]:
        curves: dict[str, list[tuple[float, float]]] = {}
        for row in rows.values():
            if row.kind == "full":
                continue
            # exit methods: a curve each; fixed models: a curve per kind through their depths
            name = row.name if None not in row.points else KIND_LABELS[row.kind]
            for points in row.points.values():
                x = mean(points, "flops_speedup") if size is None else mean(points, "wallclock", size)
                if x is not None:
                    curves.setdefault(name, []).append((x, 100 * mean(points, "accuracy")))
            if size is None and row.oracle:
                oracle = list(row.oracle.values())
                speedup = statistics.fmean(o["flops_speedup"] for o in oracle)
                curves[f"oracle: {row.model}"] = [(speedup, 100 * statistics.fmean(o["metric"] for o in oracle))]
        panels.append((label, dict(sorted(curves.items()))))
    references = []
    if "full model" in rows:
        references.append(("full model", 100 * mean(rows["full model"].points[None], "accuracy")))
    return plot_rows([(None, panels, references)], path, title=title, ylabel="dev accuracy (%)", marks=TARGETS)


__all__ = ["best_row", "load_cells", "plot_benchmark", "render_benchmark", "rows_of"]
