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
"""`hf-earlyexit quickstart`: the main job on the embedded default, end to end, in about 6 minutes on 2 CPU cores.

1. Splits the shipped SST-2 copy (`data/sst2/train.tsv`) into a training set (`--train_size` sentences) and a held-out
   calibration slice (`--calibration_size` examples of at least `--calibration_min_words` words, never trained on,
   nor are their phrases of `--calibration_exclusive_words` words or more); the splits are written to
   `<output_dir>/data/`.
2. Fine-tunes two early-exit models from the all-MiniLM-L6-v2 backbone with `hf-earlyexit train`: a CascadeBERT
   cascade cut from the backbone (members of `--member_layers` layers, default 1 and 6; joint recipe) and a BADGE
   multi-exit model (`BertWithBypassExits`, an exit after every layer, block-wise bypasses, joint recipe).
3. Calibrates both to `--target_speedup` (2x) FLOPs speed-up on the held-out slice with `hf-earlyexit calibrate`,
   aiming `--calibration_margin` above the target so that the dev set, a different sample, still lands on it.
4. Measures on the SST-2 dev sentences (`--dev_size`, default all 872), on real early-exit runs: accuracy, FLOPs
   speed-up and wall-clock speed-up at batch size 1 and 32 against a plain `BertForSequenceClassification` of the
   full model's size, for each model at full depth and calibrated.

Prints the table and writes `results.json`, `results.md` and `speed_accuracy.png` (accuracy against FLOPs speed-up on
dev, the calibrated points marked; accuracy against wall-clock speed-up) to `--output_dir` (default
`outputs/quickstart`), with the two checkpoints in `cascade/` and `badge/`. Bigger runs: `--train_size 20000
--epochs 2`; `--train_size 0` trains on everything but the calibration slice.
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from .common import (
    UsageError,
    batches_with_labels,
    dump_json,
    input_length,
    int_at_least,
    positive_int,
    size_or_all,
    without_labels,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="BERT backbone (path or Hub id); default: the embedded MiniLM-L6."
    )
    parser.add_argument("--data_dir", default=None, help="Folder with train.tsv and dev.tsv (default: data/sst2).")
    parser.add_argument("--output_dir", default="outputs/quickstart", help="Where checkpoints, tables and plot go.")
    parser.add_argument(
        "--train_size", type=size_or_all, default=4800, help="Training sentences (0: all but calibration)."
    )
    parser.add_argument(
        "--calibration_size", type=positive_int, default=500, help="Held-out sentences for the thresholds."
    )
    parser.add_argument(
        "--calibration_min_words",
        type=int,
        default=12,
        help="Draw the held-out sentences among training examples of at least this many words: SST-2's training "
        "file is mostly short phrases (9 words on average), its dev set full sentences (20), and thresholds "
        "calibrated on phrases exit too early there (0: any example).",
    )
    parser.add_argument(
        "--calibration_exclusive_words",
        type=int_at_least(0, " (0: keep the phrases)"),
        default=3,
        help="Leave out of training every phrase of at least this many words found in a held-out sentence: SST-2's "
        "training file holds its sentences' phrases as examples of their own, and a model that read most of a "
        "held-out sentence is surer of it than of new text (0: keep them).",
    )
    parser.add_argument("--dev_size", type=size_or_all, default=0, help="Dev sentences measured (0: all).")
    parser.add_argument("--epochs", type=float, default=1.0, help="Training epochs of each model.")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="Training batch size.")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="The backbone's learning rate.")
    parser.add_argument("--head_learning_rate", type=float, default=2e-4, help="Exit heads, bypasses, small members.")
    parser.add_argument("--member_layers", type=int, nargs="+", default=None, help="Cascade members (default 1 L).")
    parser.add_argument("--target_speedup", type=float, default=2.0, help="FLOPs speed-up to calibrate for (>= 1).")
    parser.add_argument("--calibration_margin", type=float, default=0.05, help="Aim this fraction above the target.")
    parser.add_argument("--max_seq_length", type=positive_int, default=128, help="Word-pieces per sentence at most.")
    parser.add_argument("--timing_size", type=positive_int, default=32, help="Dev sentences timed at batch size 1.")
    parser.add_argument(
        "--timing_size_batched", type=positive_int, default=64, help="Dev sentences timed at batch size 32."
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="Interleaved timing rounds (the median counts)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data split and the training.")


def _write_tsv(path: Path, dataset) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        writer.writerow(["sentence", "label"])
        for text, label in zip(dataset["text"], dataset["label"]):
            writer.writerow([text.replace("\t", " "), label])


def split_data(args, output_dir: Path):
    """(train TSV, calibration dataset, dev dataset): the splits, the training one written for `train`."""
    from ..data import load_text_classification, phrases_within
    from .train import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    for name in ("train.tsv", "dev.tsv"):
        if not (data_dir / name).is_file():
            raise UsageError(f"`--data_dir` {data_dir}: no {name} there (expected GLUE-style SST-2 files).")
    pool = load_text_classification(data_dir / "train.tsv").shuffle(seed=args.seed)
    eligible = [i for i, text in enumerate(pool["text"]) if len(text.split()) >= args.calibration_min_words]
    if args.calibration_size < 1 or args.calibration_size > len(eligible) or args.calibration_size >= len(pool):
        raise UsageError(
            f"`--calibration_size` must be in [1, {min(len(eligible), len(pool) - 1)}] (training examples of at least "
            f"--calibration_min_words={args.calibration_min_words} words), got {args.calibration_size}."
        )
    chosen = eligible[: args.calibration_size]
    calibration = pool.select(chosen)
    rest = sorted(set(range(len(pool))) - set(chosen))
    if args.calibration_exclusive_words:
        texts = pool["text"]
        inside = set(
            phrases_within([texts[i] for i in rest], [texts[i] for i in chosen], args.calibration_exclusive_words)
        )
        rest = [i for j, i in enumerate(rest) if j not in inside]
    train = pool.select(rest[: args.train_size] if args.train_size else rest)
    dev = load_text_classification(data_dir / "dev.tsv")
    if args.dev_size:
        dev = dev.select(range(min(args.dev_size, len(dev))))
    split_dir = output_dir / "data"
    split_dir.mkdir(parents=True, exist_ok=True)
    _write_tsv(split_dir / "train.tsv", train)
    _write_tsv(split_dir / "calibration.tsv", calibration)
    return split_dir / "train.tsv", data_dir / "dev.tsv", calibration, dev


def train_model(args, family: list[str], train_file: Path, dev_file: Path, output_dir: Path) -> dict:
    from ..data import SST2_LABEL_NAMES
    from . import train

    argv = [
        *family,
        "--model_name_or_path", args.model,
        "--train_file", str(train_file), "--validation_file", str(dev_file), "--class_names", *SST2_LABEL_NAMES,
        "--do_train", "--output_dir", str(output_dir),
        "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--head_learning_rate", str(args.head_learning_rate),
        "--warmup_steps", "0.1", "--lr_scheduler_type", "linear", "--weight_decay", "0.01",
        "--max_seq_length", str(args.max_seq_length), "--seed", str(args.seed),
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--logging_steps", "25",
        "--disable_tqdm", "false",  # transformers hides the bar when its logging is quiet; this is the long part
    ]  # fmt: skip
    start = time.perf_counter()
    results = train.main(argv, prog="hf-earlyexit train")
    return {"seconds": round(time.perf_counter() - start, 1), "steps": results["global_step"]}


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> dict:
    if args is None:
        parser = argparse.ArgumentParser(prog="hf-earlyexit quickstart", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    if not args.target_speedup >= 1:
        raise UsageError(f"`--target_speedup` is a FLOPs speed-up and must be >= 1, got {args.target_speedup}.")
    import datasets
    from transformers import AutoConfig
    from transformers import logging as hf_logging

    from ..calibration import apply_calibration, calibrate, record
    from ..evaluation import machine_info, make_batches, measure_points
    from ..utils import DEFAULT_BACKBONE_PACKAGE, default_backbone
    from .calibrate import write_calibration
    from .common import load_checkpoint

    started = time.perf_counter()
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()  # the trainer's bars are the ones that tell how long is left
    embedded = args.model is None
    args.model = args.model or default_backbone()
    depth = AutoConfig.from_pretrained(args.model).num_hidden_layers
    layers = args.member_layers or [1, depth]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_file, dev_file, calibration, dev = split_data(args, output_dir)

    def say(text):
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", file=sys.stderr, flush=True)

    models = {
        "cascade": (
            "CascadeBERT " + "->".join(f"{k}L" for k in layers),
            ["--family", "cascade", "--member_layers", *map(str, layers)],
        ),
        "badge": ("BADGE multi-exit + bypasses", ["--family", "bypass", "--exit_pooling", "mean"]),
    }
    rows, curves, summary = [], {}, {}
    for key, (name, family) in models.items():
        say(f"training {name} on {train_file}")
        training = train_model(args, family, train_file, dev_file, output_dir / key)
        model, tokenizer = load_checkpoint(str(output_dir / key))
        max_length = input_length(args.max_seq_length, model, tokenizer)
        say(f"calibrating {name} for {args.target_speedup:g}x FLOPs on {len(calibration)} held-out sentences")
        calibration_batches = batches_with_labels(tokenizer, calibration, 64, max_length)
        result = calibrate(
            model,
            record(model, calibration_batches),
            target_speedup=args.target_speedup * (1 + args.calibration_margin),
            apply=False,
        )
        apply_calibration(model, result)
        write_calibration(output_dir / key, model, result, dataset_name="SST-2 (held-out training slice)")

        say(f"measuring {name} on {len(dev)} dev sentences")
        dev_batches = batches_with_labels(tokenizer, dev, 64, max_length)
        labels = torch.tensor(dev["label"])
        timing = {
            1: make_batches(tokenizer, dev.select(range(min(args.timing_size, len(dev)))), 1, max_length),
            32: make_batches(tokenizer, dev.select(range(min(args.timing_size_batched, len(dev)))), 32, max_length),
        }
        measured = measure_points(
            model,
            [("full depth", {"early_exit": False}), (f"{args.target_speedup:g}x", result.forward_kwargs())],
            without_labels(dev_batches),
            labels,
            timing_batches=timing,
            rounds=args.rounds,
        )
        # the whole accuracy / FLOPs frontier on dev, from one recorded pass (what a real run gives, see calibration)
        frontier = calibrate(model, record(model, dev_batches), target_speedup=1.0, apply=False).frontier
        curves[name] = [(p["flops_speedup"], 100 * p["accuracy"]) for p in frontier]
        for point in measured:
            rows.append({"model": name, **point.to_dict()})
        summary[key] = {
            "name": name,
            "training": training,
            "calibration": {k: v for k, v in result.to_dict().items() if k != "frontier"},
            "full_depth": measured[0].to_dict(),
            "calibrated": measured[1].to_dict(),
            "dev_frontier": frontier,
        }
    elapsed = time.perf_counter() - started
    results = {
        "command": "hf-earlyexit quickstart " + " ".join(argv or []),
        # the embedded backbone by its package, not by this machine's site-packages path
        "backbone": f"{DEFAULT_BACKBONE_PACKAGE}/model" if embedded else args.model,
        "backbone_name": "all-MiniLM-L6-v2 (embedded)" if embedded else args.model,
        "data": {
            "train": len(Path(train_file).read_text().splitlines()) - 1,
            "calibration": len(calibration),
            "dev": len(dev),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "command")},
        "machine": machine_info(),
        "models": summary,
        "elapsed_seconds": round(elapsed, 1),
    }
    table = render_table(rows)
    (output_dir / "results.json").write_text(dump_json(results), encoding="utf-8")
    (output_dir / "results.md").write_text(render_markdown(results, table), encoding="utf-8")
    plot = plot_quickstart(summary, curves, output_dir / "speed_accuracy.png", args.target_speedup)
    print(table)
    for data in summary.values():
        speedup = data["calibrated"]["flops_speedup"]
        if speedup < args.target_speedup:
            print(
                f"note: {data['name']} measured {speedup:.2f}x FLOPs on dev, below the {args.target_speedup:g}x "
                "it was calibrated for on the held-out slice (a different sample); raise --calibration_margin."
            )
    print(
        f"Done in {elapsed / 60:.1f} min. Outputs in {output_dir.resolve()}: results.md, results.json, {plot.name}, "
        f"checkpoints cascade/ and badge/ (calibrated, with their model cards)."
    )
    return results


def render_table(rows: list[dict]) -> str:
    header = (
        "| model | setting | dev accuracy (%) | FLOPs speed-up | layer speed-up | wall-clock x (bs 1) | "
        "wall-clock x (bs 32) |"
    )
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        setting = "full model" if row["settings"] == {"early_exit": False} else f"calibrated {row['method']}"
        wall = row["wallclock_speedup"]
        lines.append(
            f"| {row['model']} | {setting} | {100 * row['metric']:.2f} | {row['flops_speedup']:.2f}x | "
            f"{row['layer_speedup']:.2f}x | {wall.get('1', float('nan')):.2f}x | {wall.get('32', float('nan')):.2f}x |"
        )
    return "\n".join(lines) + "\n"


def render_markdown(results: dict, table: str) -> str:
    m = results["machine"]
    data = results["data"]
    return "\n".join(
        [
            "# Quick start: CascadeBERT and BADGE on SST-2",
            "",
            f"Command: `{results['command'].strip()}`. Backbone: {results['backbone_name']}. "
            f"{data['train']} training sentences, {data['calibration']} held out for calibration, {data['dev']} dev "
            f"sentences measured. Total {results['elapsed_seconds'] / 60:.1f} min on {m['processor']}, "
            f"{m['cpu_count']} cores, {m['torch_threads']} torch threads.",
            "",
            "FLOPs speed-up: full model's FLOPs / FLOPs spent (cumulative for the cascade). Wall-clock: a plain "
            "`BertForSequenceClassification` of the full model's size / the early-exit model, same batches, "
            "interleaved, median of rounds.",
            "",
            table,
            "![accuracy against speed-up](speed_accuracy.png)",
            "",
        ]
    )


def plot_quickstart(summary: dict, curves: dict, path: Path, target: float) -> Path:
    from ..plots import plot_curves

    flops = {f"{name} (dev, every threshold)": points for name, points in curves.items()}
    wall = {}
    for data in summary.values():
        calibrated, full = data["calibrated"], data["full_depth"]
        flops[f"{data['name']} calibrated (measured)"] = [(calibrated["flops_speedup"], 100 * calibrated["metric"])]
        for size, value in sorted(calibrated["wallclock_speedup"].items(), key=lambda kv: int(kv[0])):
            wall[f"{data['name']}, batch {size}"] = [
                (full["wallclock_speedup"][size], 100 * full["metric"]),
                (value, 100 * calibrated["metric"]),
            ]
    panels = [
        ("FLOPs speed-up (x, against the full model)", flops),
        ("measured wall-clock speed-up (x, against plain BERT)", wall),
    ]
    return plot_curves(panels, path, title="SST-2 dev: accuracy against speed-up", marks=(target,))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])["models"], indent=2))
