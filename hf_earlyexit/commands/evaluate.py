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
"""`hf-earlyexit evaluate`: a threshold sweep of an early-exit checkpoint on a labelled dataset.

Every point is a real early-exit run over the data: accuracy, mean exit layer, layer and FLOPs speed-up against the
full model (`docs/methods.md` section 4) and, at each `--timing_batch_sizes`, the measured latency and wall-clock
speed-up against a plain `BertForSequenceClassification` of the same size and weights (same process, same threads,
interleaved). Without `--thresholds`, the thresholds are read off the accuracy/FLOPs frontier of one recorded pass over
the same data (`hf_earlyexit.calibration`), evenly spread from the full model to the fastest setting.

A token model (SENTEE / TOKEE) is swept the same way on a CoNLL column file: `--criterion` is its exit mode (`token`
or `sentence`), `--window_sizes` the TOKEE windows to try, the metric entity F1 (seqeval; word accuracy for tags that
are not IOB-style, e.g. POS), speed-ups count words, and the wall-clock reference is a plain
`BertForTokenClassification` with the same weights. Without `--thresholds` the points come from the frontier of the
rule replayed on one recorded pass (`hf_earlyexit.calibration.token_frontier`), and each is then measured for real.

Writes `results.json`, `results.md` and `speed_accuracy.png` to `--output_dir` and prints the table:

    hf-earlyexit evaluate --model runs/bypass --data data/sst2/dev.tsv --output_dir runs/bypass/eval
    hf-earlyexit evaluate --model runs/tokee --data conll2003/valid.txt --window_sizes 5 15 --output_dir runs/tokee/eval
"""

import argparse
import sys
from pathlib import Path

import torch

from .common import UsageError, add_data_arguments, add_tokenizer_argument, dump_json, load_for_sweep, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="An early-exit checkpoint (any family).")
    add_tokenizer_argument(parser)
    add_data_arguments(parser)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--criterion",
        default=None,
        help="Exit criterion to sweep (default: the checkpoint's); for a token model its exit mode, token or sentence.",
    )
    sweep.add_argument(
        "--thresholds", type=float, nargs="+", default=None, help="Thresholds to measure (default: from the frontier)."
    )
    sweep.add_argument(
        "--window_sizes",
        type=int,
        nargs="+",
        default=None,
        help="Token models, TOKEE: the windows to sweep (odd; default: the checkpoint's).",
    )
    sweep.add_argument("--num_points", type=int, default=8, help="Frontier points measured without --thresholds.")
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--timing_batch_sizes",
        type=positive_int,
        nargs="*",
        default=[1, 32],
        help="Batch sizes timed (none: no timing).",
    )
    timing.add_argument("--timing_size", type=positive_int, default=64, help="Examples timed per batch size.")
    timing.add_argument(
        "--rounds", type=positive_int, default=3, help="Interleaved timing rounds (the median counts)."
    )
    timing.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--output_dir", default="outputs/evaluate", help="Where the results and the plot go.")


def sweep_settings(model, batches, criterion: str, thresholds, num_points: int) -> list[tuple[str, dict]]:
    """`(method, forward settings)` of the sweep: the given thresholds, or frontier points of a recorded pass."""
    from ..calibration import calibrate, record

    if thresholds is not None:
        for threshold in thresholds:
            try:
                model.config.exit_rule(exit_criterion=criterion, exit_threshold=threshold)
            except ValueError as error:
                raise UsageError(f"`--thresholds` {threshold:g}: {error}") from None
        return [(criterion, {"exit_criterion": criterion, "exit_threshold": t}) for t in thresholds]
    result = calibrate(model, record(model, batches), target_speedup=1.0, criterion=criterion, apply=False)
    frontier = sorted(result.frontier, key=lambda p: p["flops_speedup"])
    if len(frontier) > num_points:
        frontier = [frontier[round(i * (len(frontier) - 1) / (num_points - 1))] for i in range(num_points)]
    settings = []
    for point in frontier:
        setting = {"exit_criterion": criterion}
        if criterion in ("patience", "divergence"):  # the criteria that count agreeing exits (not a cascade's)
            setting["patience"] = point["patience"]
        if point["threshold"] is not None:
            setting["exit_threshold"] = point["threshold"]
        if setting not in [s for _, s in settings]:
            settings.append((criterion, setting))
    return settings


def token_sweep_settings(model, batches, exit_mode: str, thresholds, window_sizes, num_points: int) -> list:
    """`(method, forward settings)` of a token model's sweep: the given thresholds at every window, or frontier points
    of the rule replayed on a recorded pass."""
    from ..calibration import token_frontier

    method = {"token": "TOKEE", "sentence": "SENTEE"}[exit_mode]

    def setting(threshold, window):
        values = {"exit_mode": exit_mode, "exit_threshold": threshold}
        return values if exit_mode == "sentence" else {**values, "window_size": window}

    windows = window_sizes or [model.config.window_size]
    if thresholds is not None:
        for threshold in thresholds:
            if not 0 <= threshold <= 1:
                raise UsageError(
                    f"`--thresholds`: a token model's threshold bounds a normalised entropy, in [0, 1]; got {threshold}."
                )
        return [(method, setting(t, w)) for w in windows for t in thresholds]
    frontier = sorted(
        token_frontier(model, batches, exit_mode=exit_mode, window_sizes=windows), key=lambda p: p["flops_speedup"]
    )
    if len(frontier) > num_points:
        frontier = [frontier[round(i * (len(frontier) - 1) / (num_points - 1))] for i in range(num_points)]
    settings = []
    for point in frontier:
        values = setting(point["threshold"], point["window_size"])
        if values not in [s for _, s in settings]:
            settings.append((method, values))
    return settings


def plot_points(points: list[dict], path: Path, title: str, ylabel: str = "accuracy (%)") -> Path:
    """Accuracy against FLOPs and layer speed-up, and against the measured wall-clock speed-up per batch size."""
    from ..plots import plot_curves

    swept = [p for p in points if p["settings"] != {"early_exit": False}]
    full = next((p for p in points if p["settings"] == {"early_exit": False}), None)
    speed = {
        "FLOPs speed-up": [(p["flops_speedup"], 100 * p["metric"]) for p in swept],
        "layer speed-up": [(p["layer_speedup"], 100 * p["metric"]) for p in swept],
    }
    panels = [("speed-up (x, against the full model)", speed)]
    sizes = sorted({size for p in swept for size in p["wallclock_speedup"]}, key=int)
    if sizes:
        wall = {f"batch {size}": [(p["wallclock_speedup"][size], 100 * p["metric"]) for p in swept] for size in sizes}
        panels.append(("measured wall-clock speed-up (x, against plain BERT)", wall))
    reference = ("full model", 100 * full["metric"]) if full is not None else None
    return plot_curves(panels, path, title=title, ylabel=ylabel, reference=reference)


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> dict:
    if args is None:
        parser = argparse.ArgumentParser(prog="hf-earlyexit evaluate", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    from ..evaluation import SweepPoint, machine_info, markdown_table, measure_points, measure_token_points

    if args.num_points < 2:
        raise UsageError(f"`--num_points` must be >= 2, got {args.num_points}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = load_for_sweep(args)
    model, criterion, dataset, batches = inputs.model, inputs.criterion, inputs.dataset, inputs.batches
    if inputs.is_token:
        settings = token_sweep_settings(model, batches, criterion, args.thresholds, args.window_sizes, args.num_points)
    else:
        settings = sweep_settings(model, batches, criterion, args.thresholds, args.num_points)
    timing = inputs.timing_batches(args.timing_batch_sizes or [], args.timing_size)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(settings) + 1, desc="measuring", unit="point", file=sys.stderr)

    def progress(line):
        bar.set_postfix_str(line[:60])
        bar.update(1)

    points = [("full depth", {"early_exit": False}), *settings]
    if inputs.is_token:
        # with entity precision, recall, per-type F1 and word accuracy beside the sweep point's fields
        point_dicts = measure_token_points(
            model, points, batches, timing_batches=timing, rounds=args.rounds, progress=progress
        )
        measured = [SweepPoint.from_dict(point) for point in point_dicts]
    else:
        eval_batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
        measured = measure_points(
            model,
            points,
            eval_batches,
            torch.tensor(dataset["label"]),
            timing_batches=timing,
            rounds=args.rounds,
            progress=progress,
        )
        point_dicts = [point.to_dict() for point in measured]
    bar.close()
    table = markdown_table(measured, batch_sizes=list(timing))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "model": args.model,
        "architecture": type(model).__name__,
        "data": args.data,
        "split": args.split,
        "num_examples": len(dataset),
        "criterion": criterion,
        "machine": machine_info(),
        "points": point_dicts,
    }
    (output_dir / "results.json").write_text(dump_json(results), encoding="utf-8")
    unit = "sentences" if inputs.is_token else "examples"
    (output_dir / "results.md").write_text(
        f"# {type(model).__name__} on {args.data}\n\n{len(dataset)} {unit}, criterion `{criterion}`, "
        f"{results['machine']['torch_threads']} torch threads.\n\n{table}",
        encoding="utf-8",
    )
    metric_name = measured[0].metric_name
    plot = plot_points(
        results["points"],
        output_dir / "speed_accuracy.png",
        f"{Path(args.model).name}: {criterion}",
        ylabel=f"{metric_name} (%)",
    )
    print(table)
    print(f"Results in {output_dir}/results.json, results.md and {plot.name}.")
    return results
