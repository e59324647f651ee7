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
"""`python -m benchmarks.report`: run the benchmark scripts, then regenerate `benchmarks/RESULTS.md` and its plots.

The report is made from the committed result files only, so `--report_only` reproduces it byte for byte:

- `benchmarks/results/bypass/results.json` (`examples/benchmark_bypass.py`: BADGE with and without bypasses, every
  multi-exit criterion, on SST-2);
- `benchmarks/results/cascade/benchmark_cascade.json` (`examples/benchmark_cascade.py`: cascades with and without
  DAR, assembled cascades, static truncated models, the multi-exit model, on SST-2);
- `benchmarks/results/token/results.json` (`examples/benchmark_token.py`: SENTEE, TOKEE and truncated models on
  CoNLL-2003), read when present. Its reader is data-driven: `stages` (per training stage, `calibration` entries and
  measured `points`, as the bypass file's variants), a `summary` in the cascade file's shape (`{method: {target:
  cell}}`), or `rows` (`[{"method", "target", "metric", "flops_speedup", "wallclock_speedup": {batch size: x},
  "reached"}]`), plus optional `dataset`, `metric_name`, `machine` and `command`.

The quick start's own result, `benchmarks/results/quickstart/results.json` (what `hf-earlyexit quickstart` writes to
its output folder; `python -m benchmarks.report` runs it and copies the file there, without its checkpoints), is shown
first, as the table the quick start prints, with its run time and machine.

Each result becomes rows `(dataset, method, target FLOPs speed-up) -> metric, measured FLOPs speed-up, wall-clock
speed-up per batch size`; RESULTS.md has one accuracy table and one wall-clock table per dataset, the machines, and
the numbers the original papers and their released code published (labelled as theirs, with their backbone), and one
plot per dataset (`benchmarks/plots/<dataset>.png`: a row per benchmark, a curve per method).

Run from the repository root (the scripts and result files are the repository's, not the installed package's):

    python -m benchmarks.report --report_only    # the report from the committed result files (`make report`)
    python -m benchmarks.report                  # every benchmark first (hours on a CPU; `make benchmark`)
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.converged import load_cells, plot_benchmark, render_benchmark, render_rerun
from hf_earlyexit.cli import HelpFormatter, report_errors
from hf_earlyexit.commands.common import UsageError


PROG = "python -m benchmarks.report"
REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS = (1.5, 2.0, 3.0, 4.0)
BATCH_SIZES = ("1", "32")


@dataclass(frozen=True)
class Source:
    """A benchmark script under `examples/`, the arguments of its committed run (besides `--output_dir`), and the result
    file it writes under the results folder."""

    result: str
    script: str
    arguments: tuple[str, ...] = ()

    def command(self, output_dir: str | Path) -> list[str]:
        """The command line `python -m benchmarks.report` runs, as the script records it in its result file."""
        return ["python", f"examples/{self.script}", *self.arguments, "--output_dir", Path(output_dir).as_posix()]


# one torch thread: the timings of a shared 2-core machine are steadier with one (README, "Results")
SOURCES = {
    "bypass": Source("bypass/results.json", "benchmark_bypass.py", ("--threads", "1")),
    "cascade": Source("cascade/benchmark_cascade.json", "benchmark_cascade.py", ("--threads", "1")),
    "token": Source(
        "token/results.json",
        "benchmark_token.py",
        ("--threads", "1", "--epochs", "3", "--learning_rate", "1e-4", "--head_learning_rate", "5e-4"),
    ),
}

QUICKSTART_RESULT = "quickstart/results.json"

# The converged benchmarks (`python -m benchmarks.sst2`, `python -m benchmarks.conll`): one result file per cell under
# these folders, rendered by `benchmarks.converged`
CONVERGED = {"sst2": "SST-2, converged models", "conll": "CoNLL-2003, converged models"}
# Reruns of a converged benchmark with changed data settings, each cell against the same cell of the earlier run:
# folder -> (earlier run's folder, title, introduction)
RERUNS = {
    "sst2_clean": (
        "sst2",
        "SST-2 again, with a calibration slice new to the models (in progress)",
        "`python -m benchmarks.sst2 --calibration_exclusive_words 3 --calibration_max_overshoot 0.05 --results_dir "
        "benchmarks/results/sst2_clean --runs_dir runs/sst2_clean`: the same cells with the calibration sentences' "
        'phrases (3 words or more) left out of training (see "Is the calibration slice new to the models?" below), so '
        "that a setting calibrated for a target lands near it on dev, and calibrated with `calibrate`'s default rule "
        "(the most accurate setting within 5 % above the target). Each row: dev accuracy and FLOPs speed-up on dev, "
        "and for calibrated settings the speed-up they were chosen for on the slice; beside it, the same cell of the "
        "run above.",
    ),
    "conll_5ep": (
        "conll",
        "CoNLL-2003 again, every tagger trained for 5 epochs (in progress)",
        "`python -m benchmarks.conll --epochs 5 --results_dir benchmarks/results/conll_5ep --runs_dir "
        "runs/conll_5ep`: the same cells with the budget of the curve above (5 epochs instead of 3), to see whether "
        "the comparison between early exit and the smaller taggers holds on taggers trained longer. The stage-1 tagger "
        "of seed 0 at this budget is the curve's own model (the same settings, data and seed), measured above. Each "
        "row: dev entity F1 and FLOPs speed-up, and for calibrated settings the speed-up they were chosen for on the "
        "slice; beside it, the same cell of the 3-epoch run.",
    ),
}

# What the original papers and their released code published (their setups, not ours: other backbones, other data)
PUBLISHED = [
    {
        "method": "CascadeBERT (Li et al., 2021), released code",
        "backbone": "2-layer -> 12-layer BERT cascade, DAR",
        "dataset": "MRPC dev",
        "rows": [
            ("tau=0.9", "2.13x (layers, cumulative)", "acc 84.31 / F1 89.40"),
            ("tau=0.8", "2.63x (layers, cumulative)", "acc 82.60 / F1 88.34"),
            ("tau=0.7", "3.21x (layers, cumulative)", "acc 81.62 / F1 87.73"),
            ("tau=0.6", "4.12x (layers, cumulative)", "acc 80.88 / F1 87.30"),
        ],
        "source": "the MRPC dev results published with the released code (the method as implemented here: "
        "`docs/methods.md` section 2)",
    },
    {
        "method": "SENTEE / TOKEE (Li et al., 2021), released code",
        "backbone": "12-layer BERT, joint training, no exit",
        "dataset": "CoNLL-2003",
        "rows": [("full depth", "1x", "F1 91.67")],
        "source": "the released code's results table; the paper's abstract: 66%-75% of the inference cost saved with "
        "minimal degradation (the method as implemented here: `docs/methods.md` section 3)",
    },
]


@dataclass
class Cell:
    metric: float
    flops_speedup: float
    wallclock: dict[str, float] = field(default_factory=dict)
    reached: bool = True
    model: str | None = None  # the model a row picked for this target (the best static model)
    timed_flops: dict[str, float] = field(default_factory=dict)  # FLOPs speed-up of the sentences timed


@dataclass
class Benchmark:
    """The rows of one result file: `cells[method][target]`."""

    source: str
    dataset: str
    metric_name: str
    cells: dict[str, dict[float, Cell]]
    machine: dict
    command: str | None = None
    full_metric: float | None = None
    # the full model of each training stage, when the benchmark trains in stages (the first is `full_metric`)
    full_by_stage: dict[str, float] = field(default_factory=dict)


def _cell(data: dict) -> Cell:
    wallclock = data.get("wallclock_speedup") or {}
    return Cell(
        metric=float(data.get("metric", data.get("accuracy"))),
        flops_speedup=float(data["flops_speedup"]),
        wallclock={str(k): float(v) for k, v in wallclock.items()},
        reached=bool(data.get("reached", True)),
        model=data.get("model"),
        timed_flops={str(k): float(v) for k, v in (data.get("timed_flops_speedup") or {}).items()},
    )


def _calibrated_cells(cells: dict, points: list[dict], calibration: list[dict], label) -> None:
    """Adds the measured point of every calibrated target: `label(entry, point)` names its method."""
    for entry in calibration:
        match = next(
            (p for p in points if p["settings"] == entry["settings"] and p["settings"] != {"early_exit": False}), None
        )
        if match is None:  # a target whose setting an earlier target already measured, and not recorded again
            continue
        cell = _cell({**match, "reached": entry["reached_on_calibration"]})
        cells.setdefault(label(entry, match), {})[float(entry["target_flops_speedup"])] = cell


def _full_metric(points: list[dict]) -> float | None:
    return next((p["metric"] for p in points if p["method"] == "full depth"), None)


def read_bypass(data: dict) -> Benchmark:
    cells: dict[str, dict[float, Cell]] = {}
    full = None
    for variant, result in data["variants"].items():
        prefix = "BADGE multi-exit" + (" + bypasses" if variant == "bypass" else ", no bypass")
        full = full if full is not None else _full_metric(result["points"])
        _calibrated_cells(
            cells, result["points"], result["calibration"], lambda entry, _, p=prefix: f"{p} ({entry['criterion']})"
        )
    return Benchmark(
        "bypass", "SST-2", "accuracy", cells, data.get("machine", {}), data.get("command"), full_metric=full
    )


STATIC_TOLERANCE = 0.01  # as examples/benchmark_cascade.py picks its best static model


def _static_cells(cells: dict, points: list[dict], suffix: str) -> None:
    """Truncated models as one row, the best per target as the cascade benchmark picks it: the most accurate of those
    whose FLOPs speed-up meets the target (within 1 %)."""
    static = [point for point in points if point["method"].startswith("truncated")]
    for target in TARGETS:
        meeting = [point for point in static if point["flops_speedup"] >= target * (1 - STATIC_TOLERANCE)]
        if meeting:
            best = max(meeting, key=lambda point: point["metric"])
            layers = best.get("layers", best["method"].split()[-1])
            cell = _cell({**best, "model": f"static {layers}L"})
            cells.setdefault(f"static truncated (best per target){suffix}", {})[target] = cell


def read_summary(summary: dict) -> dict[str, dict[float, Cell]]:
    cells = {}
    for method, targets in summary.items():
        cells[method] = {float(target): _cell(cell) for target, cell in targets.items()}
    return cells


def read_cascade(data: dict) -> Benchmark:
    cells = read_summary(data["summary"])
    if "best static model" in cells:  # name the picked model in the method, the targets differ
        cells["static truncated (best per target)"] = cells.pop("best static model")
    full = None
    for run in data.get("runs", [])[:1]:
        if "full" in run["models"]:
            full = run["models"]["full"].get("accuracy")
    config = data.get("config", {})
    command = data.get("command") or "python examples/benchmark_cascade.py " + " ".join(
        f"--{k} {v}" for k, v in sorted(config.items()) if k in ("train_size", "epochs", "calibration_size")
    )
    return Benchmark("cascade", "SST-2", "accuracy", cells, data.get("machine", {}), command, full_metric=full)


def read_token(data: dict) -> Benchmark:
    cells: dict[str, dict[float, Cell]] = {}
    full = data.get("full_metric")
    full_by_stage = {}
    if "stages" in data:  # examples/benchmark_token.py: per training stage, calibration entries and measured points
        for stage, result in data["stages"].items():
            if (stage_full := _full_metric(result["points"])) is not None:
                full_by_stage[stage] = stage_full
            full = full if full is not None else stage_full
            _calibrated_cells(
                cells, result["points"], result["calibration"], lambda _, point, s=stage: f"{point['method']} ({s})"
            )
            _static_cells(cells, result["points"], f" ({stage})")
    elif "summary" in data:
        cells = read_summary(data["summary"])
    elif "rows" in data:
        for row in data["rows"]:
            cells.setdefault(row["method"], {})[float(row["target"])] = _cell(row)
    else:
        raise ValueError(
            "token/results.json: expected `stages`, `summary` or `rows`; found " + ", ".join(sorted(data))
        )
    return Benchmark(
        "token",
        data.get("dataset", "CoNLL-2003"),
        data.get("metric_name", "F1"),
        cells,
        data.get("machine", {}),
        data.get("command"),
        full_metric=full,
        full_by_stage=full_by_stage,
    )


READERS = {"bypass": read_bypass, "cascade": read_cascade, "token": read_token}


def load_benchmarks(results_dir: Path) -> tuple[list[Benchmark], list[str]]:
    """The benchmarks whose result files exist, and a note for each that does not."""
    found, missing = [], []
    for name, source in SOURCES.items():
        path = results_dir / source.result
        if not path.is_file():
            command = " ".join(source.command(Path("benchmarks/results", source.result).parent))
            missing.append(f"`{source.result}` (run `{command}`)")
            continue
        try:
            found.append(READERS[name](json.loads(path.read_text(encoding="utf-8"))))
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{path}: not the structure `examples/{source.script}` writes (missing {error})."
            ) from None
    return found, missing


def load_quickstart(results_dir: Path) -> dict | None:
    """The committed quick-start result, or `None` when there is none."""
    path = results_dir / QUICKSTART_RESULT
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        data["table"] = quickstart_table(data)
        data["elapsed_seconds"], data["machine"]["processor"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not the structure `hf-earlyexit quickstart` writes (missing {error}).") from None
    return data


def quickstart_table(data: dict) -> str:
    from hf_earlyexit.commands.quickstart import render_table

    rows = [
        {"model": model["name"], **model[setting]}
        for model in data["models"].values()
        for setting in ("full_depth", "calibrated")
    ]
    return render_table(rows)


def render_quickstart(data: dict | None) -> list[str]:
    if data is None:
        return [
            "## Quick start",
            "",
            f"Not run yet (no `{QUICKSTART_RESULT}`: run `hf-earlyexit quickstart` and copy its `results.json` "
            "there, or `python -m benchmarks.report --only quickstart`).",
            "",
        ]
    m, sizes = data["machine"], data["data"]
    return [
        "## Quick start",
        "",
        f"`{data['command'].strip()}` (what `make quickstart` runs), backbone {data['backbone_name']}: "
        f"{sizes['train']} SST-2 training sentences, {sizes['calibration']} held out for calibration, {sizes['dev']} "
        f"dev sentences measured; {data['elapsed_seconds'] / 60:.1f} min on {m['processor']}, {m['cpu_count']} "
        f"cores, {m['torch_threads']} torch threads (the run's own time, without the install).",
        "",
        data["table"],
    ]


def _fmt_target(target: float) -> str:
    return f"{target:g}x"


def _batch_sizes(group: list[Benchmark]) -> list[str]:
    """The timing batch sizes of a dataset's benchmarks, smallest first (1 and 32 when none was timed)."""
    sizes = {size for bench in group for cells in bench.cells.values() for c in cells.values() for size in c.wallclock}
    return sorted(sizes, key=int) if sizes else list(BATCH_SIZES)


def render(
    benchmarks: list[Benchmark],
    missing: list[str],
    plots: dict[str, str],
    command: str,
    quickstart: dict | None = None,
    converged: list[str] = (),
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{command}` from the result files in `benchmarks/results/`; do not edit by hand.",
        "",
        "Every number is measured on real early-exit runs of the dev data. Thresholds were calibrated on held-out "
        "training sentences for each target FLOPs speed-up; a cell shows the dev metric (%) with the measured FLOPs "
        "speed-up in parentheses; † marks a target the calibration slice could not reach (the fastest setting is "
        "shown). FLOPs speed-up: sum of the full model's FLOPs / sum of the FLOPs spent, per example from its real "
        "length (cumulative for cascades). Wall-clock speed-up: time of a plain transformers "
        "`BertForSequenceClassification` of the same size / time of the early-exit model, same batches, same "
        "process and threads, interleaved (median of rounds).",
        "",
        *render_quickstart(quickstart),
        *converged,
    ]
    if benchmarks and converged:
        lines += [
            "## Small-budget benchmarks",
            "",
            "The first benchmarks: every model trained one epoch on 3,000-4,800 SST-2 sentences (CoNLL-2003: three "
            "epochs on 14,041 sentences). They show that the mechanism skips real work (FLOPs and clock agree), not how "
            "the methods compare on trained models; the converged benchmarks above answer that. Their wall-clock "
            "figures were timed with the two models taking turns at every batch, which at batch size 1 understates "
            "a smaller or early-exiting model's speed by up to about 15 % (see how often the timed models take turns).",
            "",
        ]
    if missing:
        lines += ["Not run yet (no result file): " + "; ".join(missing) + ".", ""]
    datasets = list(dict.fromkeys(b.dataset for b in benchmarks))
    for dataset in datasets:
        group = [b for b in benchmarks if b.dataset == dataset]
        metric = group[0].metric_name
        lines += [f"## {dataset}", ""]
        fulls = []
        for b in group:
            if b.full_by_stage:
                fulls += [f"{100 * value:.2f} ({b.source} run, {stage})" for stage, value in b.full_by_stage.items()]
            elif b.full_metric is not None:
                fulls.append(f"{100 * b.full_metric:.2f} ({b.source} run)")
        if fulls:
            lines += [f"Full model (no exit), dev {metric}: " + ", ".join(fulls) + ".", ""]
        lines += [f"### {metric} (%) at a target FLOPs speed-up", ""]
        lines += _method_table(group, _metric_text)
        sizes = _batch_sizes(group)
        lines += ["", f"### Wall-clock speed-up at batch size {' / '.join(sizes)}", ""]
        lines += _method_table(
            group, lambda cell, s=sizes: _per_size_text([cell.wallclock.get(size) for size in s], "x")
        )
        lines += ["", f"### Wall-clock over FLOPs speed-up at batch size {' / '.join(sizes)}", ""]
        lines += [
            "How much of the FLOPs saving the clock sees (1 = all of it; above 1 where the plain model also pays for "
            "padding that the early-exit path skips). Below the table, per source and kind of method (the first "
            "word of its name; static models left out): the median over its cells, the smallest value, and how many "
            "cells reach 0.9.",
            "",
        ]
        lines += _method_table(group, lambda cell, s=sizes: _per_size_text([_ratio(cell, size) for size in s], ""))
        lines.append("")
        for bench in group:
            kinds = dict.fromkeys(method.split()[0] for method in bench.cells if not method.startswith("static"))
            for kind in kinds:
                cells = [
                    cell
                    for method, by_target in bench.cells.items()
                    if method.split()[0] == kind
                    for cell in by_target.values()
                ]
                summaries = [f"batch {size}: {_ratio_summary(cells, size)}" for size in sizes]
                lines.append(f"- {bench.source}, {kind} rows: " + "; ".join(summaries) + ".")
        if dataset in plots:
            lines += ["", f"![{dataset}: {metric} against speed-up]({plots[dataset]})"]
        lines.append("")
    lines += ["## Machines", ""] if benchmarks else []
    for bench in benchmarks:
        m = bench.machine
        text = (
            f"{m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, {m.get('torch_threads', '?')} torch "
            f"threads, {m.get('device', 'cpu')}, torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}"
        )
        command = f"; command: `{bench.command}`" if bench.command else ""
        lines.append(f"- {bench.source}: {text}{command}")
    lines += [
        *([""] if benchmarks else []),
        "## Published numbers of the original papers (theirs, for context)",
        "",
        "Quoted from the papers and their released code (references in `docs/methods.md`); their backbones, data and "
        "speed conventions differ from ours (ours: all-MiniLM-L6-v2, 6 layers, small training budgets), so they are "
        "not comparable cell by cell. BADGE (Zhu et al., 2023): its text and code are not public (`docs/methods.md` "
        "section 1), so no numbers are quoted.",
        "",
        "| method (theirs) | backbone | data | setting | speed-up | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for paper in PUBLISHED:
        for setting, speedup, result in paper["rows"]:
            lines.append(
                f"| {paper['method']} | {paper['backbone']} | {paper['dataset']} | {setting} | {speedup} | {result} |"
            )
    lines += [""] + [f"- {p['method']}: {p['source']}." for p in PUBLISHED] + [""]
    return "\n".join(lines)


def _method_table(group: list[Benchmark], text) -> list[str]:
    """A Markdown table, a row per method of the group's benchmarks and a column per target: `text(cell)`, or `-`."""
    lines = ["| method | source | " + " | ".join(_fmt_target(t) for t in TARGETS) + " |"]
    lines += ["| --- | --- | " + " | ".join("---:" for _ in TARGETS) + " |"]
    for bench in group:
        for method, cells in bench.cells.items():
            row = [text(cells[target]) if target in cells else "-" for target in TARGETS]
            lines.append(f"| {method} | {bench.source} | " + " | ".join(row) + " |")
    return lines


def _metric_text(cell: Cell) -> str:
    mark = "" if cell.reached else " †"
    label = f", {cell.model}" if cell.model else ""
    return f"{100 * cell.metric:.2f} ({cell.flops_speedup:.2f}x{label}){mark}"


def _per_size_text(values: list[float | None], unit: str) -> str:
    if all(value is None for value in values):
        return "-"
    return " / ".join("-" if value is None else f"{value:.2f}{unit}" for value in values)


def _ratio(cell: Cell, size: str) -> float | None:
    wallclock = cell.wallclock.get(size)
    return None if wallclock is None else wallclock / cell.timed_flops.get(size, cell.flops_speedup)


def _ratio_summary(cells: list[Cell], size: str) -> str:
    import statistics

    ratios = [ratio for cell in cells if (ratio := _ratio(cell, size)) is not None]
    if not ratios:
        return "not timed"
    reaching = sum(ratio >= 0.9 for ratio in ratios)
    return (
        f"median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, {reaching} of {len(ratios)} cells at 0.9 "
        "or more"
    )


def plot_dataset(group: list[Benchmark], path: Path, dataset: str) -> Path:
    """A row per benchmark of the dataset (each against its own full model): the metric against the FLOPs speed-up and
    against the wall-clock speed-up at each timed batch size."""
    from hf_earlyexit.plots import plot_rows

    rows = []
    for bench in group:
        flops = {
            method: [(c.flops_speedup, 100 * c.metric) for c in cells.values()]
            for method, cells in bench.cells.items()
        }
        panels = [("measured FLOPs speed-up (x)", flops)]
        for size in _batch_sizes([bench]):
            wall = {
                method: [(c.wallclock[size], 100 * c.metric) for c in cells.values() if size in c.wallclock]
                for method, cells in bench.cells.items()
            }
            if any(wall.values()):  # (a benchmark that timed nothing gets the FLOPs panel only)
                panels.append((f"measured wall-clock speed-up at batch size {size} (x)", wall))
        if bench.full_by_stage:
            references = [(f"full model ({stage})", 100 * value) for stage, value in bench.full_by_stage.items()]
        else:
            references = [("full model", 100 * bench.full_metric)] if bench.full_metric is not None else []
        rows.append((f"{bench.source} benchmark", panels, references))
    return plot_rows(rows, path, title=dataset, ylabel=f"{group[0].metric_name} (%)", marks=TARGETS)


def plan_names(benchmark: str, folder: Path) -> list[str]:
    """The seed-0 cells `python -m benchmarks.<benchmark>` plans with its default arguments, for the backbone's depth
    as the full-depth cells in `folder` record it (6 for the embedded MiniLM-L6 before any ran)."""
    script = importlib.import_module(f"benchmarks.{benchmark}")
    full = (c for c in load_cells(folder) if c["kind"] in ("curve", "full", "stage1"))
    depth = next((cell["settings"]["layers"] for cell in full), 6)
    return [cell.name for cell in script.plan(script.parse_args(["--list"]), depth)]


def converged_sections(results_dir: Path, plots_dir: Path, output: Path) -> list[str]:
    """The converged benchmarks' section (tables and plot), when any of their result folders exists."""
    folders = {name: results_dir / name for name in CONVERGED if (results_dir / name).is_dir()}
    if not folders:
        return []
    lines = [
        "## Converged benchmarks",
        "",
        "Is early exit better than simply using a smaller model, on models trained properly? Every model below "
        "trains on the whole training set but a held-out calibration slice, for the same budget; the baselines are "
        "the ones a user would pick instead: truncated models fine-tuned on their own (static) and the same depths "
        "distilled from the fine-tuned full model (KL at a temperature plus cross-entropy). Each cell of the "
        "benchmark has its own result file (`benchmarks/cells.py`), with its command and settings.",
        "",
    ]
    for name, folder in folders.items():
        lines += render_benchmark(CONVERGED[name], folder, plan_names(name, folder))
        plot = plot_benchmark(CONVERGED[name], folder, plots_dir / f"{name}_converged.png")
        if plot is not None:
            relative = Path(os.path.relpath(Path(plot).resolve(), output.parent.resolve())).as_posix()
            lines += [f"![{CONVERGED[name]}: dev accuracy against speed-up]({relative})", ""]
    for name, (earlier, title, intro) in RERUNS.items():
        if (results_dir / name).is_dir():
            folder = results_dir / name
            lines += render_rerun(title, folder, results_dir / earlier, intro, plan_names(earlier, folder))
    return lines


def table_sections(results_dir: Path, folder: str, title: str, pattern: str = "*.json", intro: str = "") -> list[str]:
    """The runs of a benchmark that writes its own Markdown table beside its JSON result (serving, composition with
    int8/bf16/compile, the divergence analysis): each run's table with its command, under `title`."""
    runs = sorted((results_dir / folder).glob(pattern), key=lambda path: (len(path.parts), path))
    if not runs:
        return []
    lines = [f"## {title}", ""] + ([intro, ""] if intro else [])
    for path in runs:
        data = json.loads(path.read_text(encoding="utf-8"))
        lines += [
            path.with_suffix(".md").read_text(encoding="utf-8").strip(),
            "",
            f"Command: `{data['command']}`.",
            "",
        ]
    return lines


MEASURED_SECTIONS = (
    # folder, title, file pattern, introduction
    ("serving", "Serving", "**/results.json", ""),
    (
        "compose",
        "Early exit under int8, bf16 and torch.compile",
        "*.json",
        "Each treatment applied alike to the early-exit model and to the plain model of the full size, timed side by "
        "side (`benchmarks/compose.py`); in parentheses the early-exit speed-up relative to its fp32 value.",
    ),
    (
        "profile",
        "Where the time goes at batch size 1",
        "*.json",
        "`benchmarks/profile_batch1.py`: each sentence alone through the plain model and the early-exit model "
        "(interleaved, medians over rounds), the pieces of the exit loop timed by wrapping them.",
    ),
    (
        "timing",
        "How often the timed models take turns",
        "*.json",
        "`benchmarks/timing_turns.py`: the early-exit model against the plain one at batch size 1, the two taking "
        "turns every N sentences. Turns at every sentence push the plain model's weights through the caches before "
        "each early-exit call, which a model serving request after request never meets; the benchmarks take turns "
        "every 32 examples (`hf_earlyexit.timing.interleaved_batch_latency`).",
    ),
    (
        "calibration",
        "Is the calibration slice new to the models?",
        "*.json",
        "`benchmarks/calibration_overlap.py`: the converged SST-2 benchmark's calibration sentences against its "
        "training set and its dev set, and the calibrated settings' FLOPs speed-up on dev against the slice.",
    ),
    (
        "crossfit",
        "SST-2 calibrated on sentences new to the models (cross-fitting on dev)",
        "*.json",
        "`benchmarks/crossfit.py`: the converged SST-2 models above, calibrated without the flaw just shown: dev split "
        "in halves, settings calibrated on one half answer the other, so every dev sentence is answered by settings "
        "chosen without it. Two rules for a speed-up target: the most accurate setting at any speed-up above it (the "
        "rule the benchmark's cells were calibrated with) and the most accurate within 5 % above it (`calibrate`'s "
        "default, `max_overshoot=0.05`). Until the benchmark has run again with a clean slice, this is where its "
        "trade-offs stand.",
    ),
    (
        "divergence",
        "Why the divergence criterion trails max-prob",
        "*.json",
        "`benchmarks/divergence.py`: at each exit, the examples each criterion would let leave first.",
    ),
)


def make_report(results_dir: Path, output: Path, plots_dir: Path, command: str) -> dict:
    benchmarks, missing = load_benchmarks(results_dir)
    plots = {}
    for dataset in dict.fromkeys(b.dataset for b in benchmarks):
        slug = "".join(ch if ch.isalnum() else "_" for ch in dataset.lower()).strip("_")
        path = plot_dataset([b for b in benchmarks if b.dataset == dataset], plots_dir / f"{slug}.png", dataset)
        plots[dataset] = Path(os.path.relpath(Path(path).resolve(), output.parent.resolve())).as_posix()
    output.parent.mkdir(parents=True, exist_ok=True)
    quickstart = load_quickstart(results_dir)
    converged = converged_sections(results_dir, plots_dir, output)
    for folder, title, pattern, intro in MEASURED_SECTIONS:
        converged += table_sections(results_dir, folder, title, pattern, intro)
    output.write_text(render(benchmarks, missing, plots, command, quickstart, converged), encoding="utf-8")
    return {
        "report": str(output),
        "plots": sorted(str(plots_dir / Path(p).name) for p in plots.values()),
        "sources": [b.source for b in benchmarks],
        "missing": missing,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--report_only", action="store_true", help="Only regenerate the report from the results.")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*sorted(SOURCES), "quickstart"],
        default=[*sorted(SOURCES), "quickstart"],
        help="Benchmarks to run.",
    )
    parser.add_argument("--results_dir", default="benchmarks/results", help="Folder of the result files.")
    parser.add_argument("--output", default="benchmarks/RESULTS.md", help="The report to write.")
    parser.add_argument("--plots_dir", default="benchmarks/plots", help="Folder of the plots (one PNG per dataset).")
    return parser.parse_args(argv)


def run_quickstart(results_dir: Path) -> Path:
    """Runs the quick start as `make quickstart` does (into `outputs/quickstart`) and copies its `results.json` (not
    its checkpoints) to `results_dir/quickstart/`."""
    import shutil

    from hf_earlyexit.commands import quickstart

    print(f"running hf-earlyexit quickstart -> {results_dir / QUICKSTART_RESULT}", file=sys.stderr)
    results = quickstart.main([])
    target = results_dir / QUICKSTART_RESULT
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(results["settings"]["output_dir"]) / "results.json", target)
    return target


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmarks asked for (none with `--report_only`), then writes the report and its plots.

    Returns:
        `dict` with `report` (its path), `plots` (their paths), `sources` (the benchmarks in it) and `missing` (a
        note for each benchmark without a result file).

    Raises:
        [`~hf_earlyexit.commands.common.UsageError`]: a bad `--results_dir` or a benchmark script not found.
        `ValueError`: a result file that is not the structure its script writes.
    """
    args = parse_args(argv)
    results_dir = Path(args.results_dir)
    if not args.report_only:
        for name in args.only:
            if name == "quickstart":
                run_quickstart(results_dir)
                continue
            source = SOURCES[name]
            path = REPO_ROOT / "examples" / source.script
            if not path.is_file():
                raise UsageError(f"`--only {name}`: {path} not found (the benchmarks run from a source checkout).")
            _, script, *arguments = source.command(results_dir / Path(source.result).parent)
            print(f"running {' '.join([script, *arguments])}", file=sys.stderr)
            subprocess.run([sys.executable, str(path), *arguments], check=True)

    elif results_dir.exists() and not results_dir.is_dir():
        raise UsageError(f"`--results_dir` {results_dir} is a file; give the folder of the result files.")
    elif not results_dir.is_dir():
        print(
            f"warning: `--results_dir` {results_dir} does not exist: the report will say no benchmark ran yet",
            file=sys.stderr,
        )
    result = make_report(results_dir, Path(args.output), Path(args.plots_dir), command=f"{PROG} --report_only")
    print(f"wrote {result['report']} and {', '.join(result['plots']) or 'no plot'}")
    return result


def cli(argv: list[str] | None = None) -> int:
    """The command line: runs [`main`]; returns 0, or 2 after printing a usage error (a bad argument, a malformed
    result file), or 1 after printing why a file could not be written, as `hf-earlyexit` does."""
    return report_errors(f"{PROG}: error:", main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(cli())
