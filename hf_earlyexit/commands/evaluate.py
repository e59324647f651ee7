"""`hf-earlyexit evaluate`: a threshold sweep of an early-exit checkpoint on a labelled dataset.

Every point is a real early-exit run over the data: accuracy, mean exit layer, layer and FLOPs speed-up against the
full model (METHODS.md section 4) and, at each `--timing_batch_sizes`, the measured latency and wall-clock speed-up
against a plain `BertForSequenceClassification` of the same size and weights (same process, same threads,
interleaved). Without `--thresholds`, the thresholds are read off the accuracy/FLOPs frontier of one recorded pass
over the same data (`hf_earlyexit.calibration`), evenly spread from the full model to the fastest setting.

Writes `results.json`, `results.md` and `speed_accuracy.png` to `--output_dir` and prints the table:

    hf-earlyexit evaluate --model runs/bypass --data data/sst2/dev.tsv --output_dir runs/bypass/eval
"""

import argparse
import sys
from pathlib import Path

import torch

from .common import UsageError, add_data_arguments, dump_json, load_for_sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="An early-exit checkpoint (bypass or cascade family).")
    add_data_arguments(parser)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--criterion", default=None, help="Exit criterion to sweep (default: the checkpoint's).")
    sweep.add_argument(
        "--thresholds", type=float, nargs="+", default=None, help="Thresholds to measure (default: from the frontier)."
    )
    sweep.add_argument("--num_points", type=int, default=8, help="Frontier points measured without --thresholds.")
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--timing_batch_sizes", type=int, nargs="*", default=[1, 32], help="Batch sizes timed (none: no timing)."
    )
    timing.add_argument("--timing_size", type=int, default=64, help="Examples timed per batch size.")
    timing.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds (the median counts).")
    timing.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--output_dir", default="outputs/evaluate", help="Where the results and the plot go.")


def sweep_settings(model, batches, criterion: str, thresholds, num_points: int) -> list[tuple[str, dict]]:
    """`(method, forward settings)` of the sweep: the given thresholds, or frontier points of a recorded pass."""
    from ..calibration import calibrate, record

    if thresholds is not None:
        return [(criterion, {"exit_criterion": criterion, "exit_threshold": t}) for t in thresholds]
    result = calibrate(model, record(model, batches), target_speedup=1.0, criterion=criterion, apply=False)
    frontier = sorted(result.frontier, key=lambda p: p["flops_speedup"])
    if len(frontier) > num_points:
        frontier = [frontier[round(i * (len(frontier) - 1) / (num_points - 1))] for i in range(num_points)]
    settings = []
    for point in frontier:
        setting = {"exit_criterion": criterion, "patience": point["patience"]}
        if point["threshold"] is not None:
            setting["exit_threshold"] = point["threshold"]
        if setting not in [s for _, s in settings]:
            settings.append((criterion, setting))
    return settings


def plot_points(points: list[dict], path: Path, title: str) -> Path:
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
    return plot_curves(panels, path, title=title, reference=reference)


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> dict:
    if args is None:
        parser = argparse.ArgumentParser(prog="hf-earlyexit evaluate", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    from ..evaluation import machine_info, make_batches, markdown_table, measure_points

    if args.num_points < 2:
        raise UsageError(f"`--num_points` must be >= 2, got {args.num_points}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = load_for_sweep(args)
    model, criterion, dataset, batches = inputs.model, inputs.criterion, inputs.dataset, inputs.batches
    eval_batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    labels = torch.tensor(dataset["label"])

    settings = sweep_settings(model, batches, criterion, args.thresholds, args.num_points)
    timed = dataset.select(range(min(args.timing_size, len(dataset))))
    timing = {
        size: make_batches(inputs.tokenizer, timed, size, inputs.max_length) for size in args.timing_batch_sizes or []
    }
    from tqdm.auto import tqdm

    bar = tqdm(total=len(settings) + 1, desc="measuring", unit="point", file=sys.stderr)

    def progress(line):
        bar.set_postfix_str(line[:60])
        bar.update(1)

    measured = measure_points(
        model,
        [("full depth", {"early_exit": False}), *settings],
        eval_batches,
        labels,
        timing_batches=timing,
        rounds=args.rounds,
        progress=progress,
    )
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
        "points": [p.to_dict() for p in measured],
    }
    (output_dir / "results.json").write_text(dump_json(results), encoding="utf-8")
    (output_dir / "results.md").write_text(
        f"# {type(model).__name__} on {args.data}\n\n{len(dataset)} examples, criterion `{criterion}`, "
        f"{results['machine']['torch_threads']} torch threads.\n\n{table}",
        encoding="utf-8",
    )
    plot = plot_points(results["points"], output_dir / "speed_accuracy.png", f"{Path(args.model).name}: {criterion}")
    print(table)
    print(f"Results in {output_dir}/results.json, results.md and {plot.name}.")
    return results
