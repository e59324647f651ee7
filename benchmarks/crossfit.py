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
"""The converged SST-2 models calibrated on dev sentences they have not seen, by cross-fitting on dev.

The SST-2 benchmark calibrates on sentences held out of its training file, but their phrases stayed in training (see
`benchmarks/calibration_overlap.py`): the models are surer of those sentences than of new ones, and a setting
calibrated there for 2x lands at 1.6-1.9x on dev. Retraining every model without those phrases takes hours per seed.
This script asks what the trained models give when calibrated on new sentences, today: dev is split in two halves at
random; settings calibrated for a target on one half are scored on the other, and the other way round, so every dev
sentence is answered by settings chosen without it. The split is repeated (`--repeats`), and the figures averaged.

For each exit-method cell of the benchmark whose checkpoint is on this machine (`--runs_dir`): the model runs once
over dev with every exit evaluated (checked against the predictions its result file recorded, so it is the model that
was measured); each criterion is calibrated on the calibration half and scored there by replay
(`hf_earlyexit.calibration.score_settings`, exactly what a live run measures); the row's "best criterion" is the one
most accurate on the calibration half among those that reach the target there. No timing: the benchmark's cells
measure the clock against the FLOPs. A cell whose checkpoint is not here keeps its entry from the earlier run of this
script with the same `--output` (same split count and rule) when its settings have not changed since (each entry
records its cell's settings hash); otherwise it is listed as without a checkpoint. With `--cells`, only those are
cross-fitted and the others keep their entries of `--output` the same way.

    python -m benchmarks.crossfit --output benchmarks/results/crossfit/sst2.json
"""

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

import hf_earlyexit  # noqa: F401  (registers the early-exit models with the Auto classes)
from benchmarks import sst2
from benchmarks.cells import Cell
from benchmarks.common import load_tokenizer, log
from benchmarks.converged import (
    TARGETS,
    Point,
    Row,
    _cell_text,
    best_of_kind_line,
    load_cells,
    rows_of,
    target_columns,
)
from benchmarks.profile_batch1 import report
from hf_earlyexit.calibration import calibrate, record, score_settings
from hf_earlyexit.calibration.result import DEFAULT_MAX_OVERSHOOT
from hf_earlyexit.commands.calibrate import overshoot
from hf_earlyexit.commands.common import batches_with_labels
from hf_earlyexit.data import load_text_classification
from hf_earlyexit.evaluation import machine_info


EXIT_KINDS = ("multi_exit", "cascade", "assembled")


def settings_key(cell: dict) -> str:
    """The short hash of a finished cell's settings (`benchmarks.cells.Cell.key`)."""
    return Cell(cell["cell"], cell["kind"], cell["settings"]).key


def checkpoint_of(cell: dict, runs_dir: Path) -> Path:
    """A finished cell's final checkpoint: `<runs_dir>/<name>-<settings hash>/final` (`benchmarks/cells.py`)."""
    return runs_dir / f"{cell['cell']}-{settings_key(cell)}" / "final"


def earlier_entries(args) -> dict[str, dict]:
    """The cells of an earlier run of this script with the same `--output`, split count and rule: reused for cells
    whose checkpoint is not on this machine (checkpoints live in an ignored folder; the result files outlive them)."""
    path = Path(args.output) if args.output else None
    if path is None or not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if (earlier["repeats"], earlier["max_overshoot"]) != (args.repeats, args.max_overshoot):
        return {}
    cells = earlier["cells"]
    for name, entry in cells.items():  # files written before entries recorded their run: the file's is theirs
        if "computed_by" not in entry and name not in earlier["carried_over"]:
            entry["computed_by"] = {"command": earlier["command"], "machine": earlier["machine"]}
    return cells


def dev_record(model, tokenizer, dev, settings: dict, batch_size: int):
    """The model's record of the dev set, every exit evaluated, in the benchmark's batches."""
    return record(model, batches_with_labels(tokenizer, dev, batch_size, settings["data"]["max_length"]))


def crossfit_cell(
    model, rec, criteria: list[str], targets: list[float], repeats: int, max_overshoot=DEFAULT_MAX_OVERSHOOT
) -> dict:
    """`{target: {criterion or "best": {accuracy, flops_speedup, calibrated_flops_speedup, reached}}}`, each the mean
    over `repeats` random halvings of the record (both halves answered by settings calibrated on the other)."""
    n = len(rec)
    runs: dict[float, dict[str, list[dict]]] = {t: {c: [] for c in [*criteria, "best"]} for t in targets}
    for repeat in range(repeats):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(repeat))
        halves = (order[: n // 2], order[n // 2 :])
        for target in targets:
            totals = {c: {"correct": 0.0, "flops": 0.0, "calibrated": [], "reached": True} for c in runs[target]}
            for calibration, scored in (halves, halves[::-1]):
                fold, other = rec.select(calibration), rec.select(scored)
                reference = float(other.reference_flops.sum())
                chosen = {}
                for criterion in criteria:
                    result = calibrate(
                        model,
                        fold,
                        target_speedup=target,
                        criterion=criterion,
                        apply=False,
                        max_overshoot=max_overshoot,
                    )
                    chosen[criterion] = (result, score_settings(model, other, result.forward_kwargs()))
                reached = [c for c in criteria if chosen[c][0].reached]
                # the criterion a user would pick: the most accurate on the calibration half that reaches the target
                best = max(reached or criteria, key=lambda c: (chosen[c][0].expected_accuracy, -criteria.index(c)))
                for name, (result, score) in [*chosen.items(), ("best", chosen[best])]:
                    total = totals[name]
                    total["correct"] += score["accuracy"] * len(other)
                    total["flops"] += reference / score["flops_speedup"]
                    total["calibrated"].append(result.expected_flops_speedup)
                    total["reached"] &= result.reached
            reference_all = float(rec.reference_flops.sum())
            for name, total in totals.items():
                runs[target][name].append(
                    {
                        "accuracy": total["correct"] / n,
                        "flops_speedup": reference_all / total["flops"],
                        "calibrated_flops_speedup": statistics.fmean(total["calibrated"]),
                        "reached": total["reached"],
                    }
                )
    return {
        str(target): {
            name: {
                "accuracy": statistics.fmean(r["accuracy"] for r in values),
                "accuracy_std_over_repeats": statistics.pstdev(r["accuracy"] for r in values),
                "flops_speedup": statistics.fmean(r["flops_speedup"] for r in values),
                "calibrated_flops_speedup": statistics.fmean(r["calibrated_flops_speedup"] for r in values),
                "reached": all(r["reached"] for r in values),
            }
            for name, values in by_name.items()
        }
        for target, by_name in runs.items()
    }


def run(args) -> dict:
    results_dir, runs_dir = Path(args.results_dir), Path(args.runs_dir)
    dev = load_text_classification(args.dev)
    logging.getLogger("hf_earlyexit.calibration").setLevel(logging.ERROR)  # unreachable targets are recorded
    earlier = earlier_entries(args)
    computed_by = {"command": "python -m benchmarks.crossfit " + " ".join(args.argv), "machine": machine_info()}
    cells, carried_over, skipped = {}, [], []
    for cell in load_cells(results_dir):
        if cell["kind"] not in EXIT_KINDS:
            continue
        selected = not args.cells or cell["cell"] in args.cells
        path = checkpoint_of(cell, runs_dir)
        if not selected or not path.is_dir():
            entry = earlier.get(cell["cell"])
            # the same trained model (settings unchanged), answered for every target asked now
            if (
                entry
                and entry.get("key") == settings_key(cell)
                and set(map(str, args.targets)) <= set(entry["targets"])
            ):
                cells[cell["cell"]] = entry
                carried_over.append(cell["cell"])
            elif selected:
                skipped.append(cell["cell"])
            continue
        log(f"{cell['cell']}: recording dev")
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        tokenizer = load_tokenizer(str(path), backbone=args.model)
        rec = dev_record(model, tokenizer, dev, cell["settings"], args.eval_batch_size)
        predictions = ["".join(map(str, p.tolist())) for p in rec.all_logits.argmax(-1)]
        if predictions != cell["result"]["dev_predictions"]:
            raise RuntimeError(
                f"{path}: its dev predictions differ from {cell['cell']}.json's: not the measured model"
            )
        criteria = list(dict.fromkeys(point["criterion"] for point in cell["result"]["points"]))
        row = next(r for r in rows_of([cell])[0].values() if r.kind != "oracle")
        cells[cell["cell"]] = {
            "kind": cell["kind"],
            "model": row.model,
            "ablation": row.ablation,
            "seed": cell["settings"]["seed"],
            "key": settings_key(cell),
            "last_exit_accuracy": cell["result"]["exit_accuracy"][-1],
            "targets": crossfit_cell(model, rec, criteria, args.targets, args.repeats, args.max_overshoot),
            "computed_by": computed_by,
        }
        log(f"{cell['cell']}: done")
    return {
        "dev_sentences": len(dev),
        "repeats": args.repeats,
        "max_overshoot": args.max_overshoot,
        "cells": cells,
        "carried_over": carried_over,
        "without_checkpoint": skipped,
        **computed_by,  # this run's; each entry records the run that computed it
    }


def crossfit_rows(result: dict) -> dict[str, Row]:
    """The cross-fitted cells as report rows (best criterion per target), one per trained model across seeds."""
    rows: dict[str, Row] = {}
    for name, cell in result["cells"].items():
        row = rows.setdefault(
            cell["model"], Row(cell["model"], cell["kind"], cell["model"], ablation=cell["ablation"])
        )
        row.cells[cell["seed"]] = name
        for target, by_name in cell["targets"].items():
            best = by_name["best"]
            row.points[float(target)][cell["seed"]] = Point(
                best["accuracy"], best["flops_speedup"], {}, {}, best["reached"], {}, best["calibrated_flops_speedup"]
            )
    return rows


def markdown(result: dict, benchmark_rows: dict[str, Row]) -> str:
    """At each target: the best cross-fitted exit model of each kind against the full model of the same seeds and the
    benchmark's static and distilled models; then every cross-fitted model."""
    rows = crossfit_rows(result)
    full = {seed: point.accuracy for seed, point in benchmark_rows["full model"].points[None].items()}
    targets = [t for t in TARGETS if any(t in row.points for row in rows.values())]

    def against_full(points: dict[int, Point], label: str = "") -> str:
        gap = statistics.fmean(100 * (p.accuracy - full[seed]) for seed, p in points.items())
        return f"{_cell_text(points)} ({gap:+.2f}){label}"

    rule = result["max_overshoot"]
    rule = "at any speed-up" if rule is None else f"within {100 * rule:g} % above it"
    lines = [
        f"**Calibrated for each target with the most accurate setting {rule}** (`max_overshoot={result['max_overshoot']}`). "
        f"Dev split in halves at random, {result['repeats']} times; each half answered by settings calibrated on the "
        f"other ({result['dev_sentences']} dev sentences). Accuracy (%), mean ± std over seeds, the FLOPs speed-up "
        "reached on dev, and in parentheses the difference to the same seeds' full model "
        f"({_cell_text(benchmark_rows['full model'].points[None])}). Static and distilled: the benchmark's cells, "
        "which need no calibration.",
        "",
        *target_columns("target", targets),
    ]
    headline = [("multi-exit", rows, "multi_exit"), ("cascade (assembled)", rows, "assembled")]
    headline += [("static", benchmark_rows, "static"), ("distilled", benchmark_rows, "distilled")]
    for label, source, kind in headline:
        lines.append(
            best_of_kind_line(f"best {label}", source, kind, targets, against_full if source is rows else _cell_text)
        )
    lines += [
        "",
        "Every cross-fitted model (best criterion on the calibration half; † it missed the target there in some "
        "split):",
        "",
        *target_columns("model", targets),
    ]
    for name, row in sorted(rows.items()):
        texts = [against_full(row.points[t]) if t in row.points else "-" for t in targets]
        lines.append(f"| {name} | " + " | ".join(texts) + " |")
    if result["carried_over"]:
        lines += [
            "",
            f"Carried over from the earlier run of this script ({len(result['carried_over'])} cells, settings "
            "unchanged; not cross-fitted again, their checkpoints not being on the machine of this run or the run "
            "naming other cells; each entry of the JSON file records the command and machine that computed it): "
            f"{', '.join(result['carried_over'])}.",
        ]
    if result["without_checkpoint"]:
        lines += ["", f"Cells without a checkpoint here: {', '.join(result['without_checkpoint'])}."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crossfit", description=__doc__.split("\n\n")[0])
    defaults = sst2.parse_args(["--list"])
    parser.add_argument("--results_dir", default="benchmarks/results/sst2", help="the SST-2 benchmark's cells")
    parser.add_argument("--runs_dir", default="runs/sst2", help="their checkpoints")
    parser.add_argument("--dev", default=defaults.dev)
    parser.add_argument("--model", default=None, help="the backbone, for its tokenizer (default: the embedded one)")
    parser.add_argument(
        "--cells",
        nargs="+",
        default=None,
        help="cell names to cross-fit (default: every exit-method cell); the others keep their entries of --output",
    )
    parser.add_argument("--targets", nargs="+", type=float, default=defaults.targets)
    parser.add_argument("--repeats", type=int, default=5, help="random halvings of dev")
    parser.add_argument(
        "--max_overshoot",
        type=overshoot,
        default=DEFAULT_MAX_OVERSHOOT,
        help=f"`calibrate(max_overshoot=...)` (default {DEFAULT_MAX_OVERSHOOT}, the library's; 'none': the most "
        "accurate setting at any speed-up above the target, the rule of the benchmark's cells)",
    )
    parser.add_argument("--eval_batch_size", type=int, default=defaults.eval_batch_size)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="JSON file (a Markdown table is written beside it)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    args.argv = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    benchmark_rows = rows_of(load_cells(Path(args.results_dir)))[0]
    report(result, markdown(result, benchmark_rows), args.output)
    return result


if __name__ == "__main__":
    main()
