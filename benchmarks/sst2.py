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
"""The converged SST-2 benchmark: is early exit better than simply using a smaller model, on models trained properly?

Every model trains on the whole SST-2 training set except a held-out calibration slice (`--calibration_size`
sentence-length examples, at least `--calibration_min_words` words: SST-2's training set is mostly phrases), for the
same budget (`--epochs`, chosen from the full model's per-epoch dev curve, the `curve` cell). Cells, one result file
each under `--results_dir` (see `benchmarks/cells.py`; checkpoints under `--runs_dir`):

| kind | what | trained with |
| --- | --- | --- |
| `curve` | the full L-layer model, `--curve_epochs` epochs, dev accuracy after each | cross-entropy |
| `full` | the full model at the budget (the teacher of `distilled`) | cross-entropy |
| `static` | the first k layers (`--static_layers`), fine-tuned on their own | cross-entropy |
| `distilled` | the same depths, distilled from `full` of the same seed | `teacher_distillation` (KL at T + CE) |
| `cascade` | CascadeBERT cascades cut from the backbone (`--cascades`), `joint` and `dar` | the cascade recipes |
| `assembled` | cascades assembled from `static` members and `full` (no training) | - |
| `multi_exit` | BADGE multi-exit model, with and without bypasses, four criteria | `joint` |
| `multi_exit-bypass-<ablation>` | the same with bypasses and one training option (`--ablations`) | `joint` + option |
| `multi_exit-bypass-teacher` | the same with bypasses, every exit also learning `full`'s answers (`--teacher_exits`) | `teacher_distillation` |
| `multi_exit-frozen-<recipe>` | exits added to `full` of the same seed, its encoder and last exit frozen (`--frozen_recipes`) | stage 2 of `two_stage` / `distillation` |

Every model with more than one exit is calibrated on the slice for each target FLOPs speed-up (`--targets`) and run
for real on the 872 dev sentences; the oracle bound (each example leaves at the first exit that agrees with the last)
comes from the same dev run. Wall-clock: `--timing_sentences` dev sentences at each batch size, interleaved batch by
batch with a plain transformers model of the full size, median of `--timing_rounds` rounds, and the 90th-percentile
latency per sentence at batch size 1.

Seeds change the training seed and the calibration slice together. Run it in pieces, e.g.:

    python -m benchmarks.sst2 --only curve                 # the per-epoch curve; pick --epochs from it
    python -m benchmarks.sst2 --only full static --seeds 0
    python -m benchmarks.sst2 --only distilled cascade multi_exit assembled --seeds 0
    python -m benchmarks.sst2 --list                       # every cell and whether it is done

`python -m benchmarks.report` builds RESULTS.md from whatever cells exist.
"""

import argparse
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DataCollatorWithPadding, set_seed

from benchmarks.cells import Cell
from benchmarks.common import (
    CellBenchmark,
    add_timing_arguments,
    benchmark_parser,
    check_common_arguments,
    log,
    run_benchmark,
    train_model,
)
from hf_earlyexit import BertForCascadeClassification, BertWithBypassExits
from hf_earlyexit.calibration import calibrate, record
from hf_earlyexit.commands.calibrate import overshoot
from hf_earlyexit.commands.common import batches_with_labels
from hf_earlyexit.data import load_text_classification, phrases_within
from hf_earlyexit.evaluation import (
    collect,
    make_batches,
    measure_points,
    oracle_point,
    plain_baseline,
    timed_flops_speedup,
)


REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("curve", "full", "static", "distilled", "cascade", "assembled", "multi_exit")
CASCADE_RECIPES = {"joint": "joint", "dar": "difficulty_aware"}
CRITERIA = ("max_prob", "entropy", "patience", "divergence")
# the multi-exit training options the ablation cells add to the joint recipe (`EarlyExitTrainingArguments` fields)
ABLATIONS = {
    "self_distillation": {"self_distillation_weight": 1.0, "self_distillation_temperature": 2.0},
    "gradient_equilibrium": {"gradient_equilibrium": True},
}
# recipes whose second stage trains exits on a frozen fine-tuned model (`full`): the first stage is that model
FROZEN_RECIPES = ("two_stage", "distillation")
DEFAULT_BACKBONE_NAME = "all-MiniLM-L6-v2 (embedded default)"

logger = logging.getLogger("benchmarks.sst2")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("sst2", __doc__.split("\n\n")[0], KINDS)

    data = parser.add_argument_group("data")
    data.add_argument("--train", default="data/sst2/train.tsv")
    data.add_argument("--dev", default="data/sst2/dev.tsv")
    data.add_argument("--train_size", type=int, default=0, help="training sentences (0: all but the slice)")
    data.add_argument("--calibration_size", type=int, default=2000)
    data.add_argument("--calibration_min_words", type=int, default=12)
    data.add_argument(
        "--calibration_exclusive_words",
        type=int,
        default=0,
        help="drop from training every phrase of at least this many words found in a calibration sentence (0: keep "
        "them; see benchmarks/calibration_overlap.py)",
    )
    data.add_argument("--dev_size", type=int, default=0, help="dev sentences (0: all)")
    data.add_argument("--max_length", type=int, default=128)

    models = parser.add_argument_group("models")
    models.add_argument("--model", default=None, help="BERT backbone path or id (default: the embedded MiniLM-L6)")
    models.add_argument("--static_layers", nargs="+", type=int, default=[1, 2, 3])
    models.add_argument(
        "--cascades", nargs="+", default=["1-6"], help="trained cascades' member depths (2-6: use the assembled one)"
    )
    models.add_argument("--cascade_recipes", nargs="+", choices=sorted(CASCADE_RECIPES), default=["dar", "joint"])
    models.add_argument("--assembled", nargs="+", default=["1-6", "2-6", "3-6", "1-3-6"])
    models.add_argument("--bypass", nargs="+", choices=["bypass", "no_bypass"], default=["bypass", "no_bypass"])
    models.add_argument(
        "--frozen_recipes",
        nargs="+",
        choices=sorted(FROZEN_RECIPES),
        default=sorted(FROZEN_RECIPES),
        help="exits trained on the frozen full model (DeeBERT's second stage), one cell each",
    )
    models.add_argument(
        "--teacher_exits",
        nargs="*",
        choices=["bypass"],
        default=["bypass"],
        help="the multi-exit model trained jointly with every exit distilled from the full model (the "
        "teacher_distillation recipe), one cell each; none: leave it out",
    )
    models.add_argument(
        "--ablations",
        nargs="+",
        choices=sorted(ABLATIONS),
        default=sorted(ABLATIONS),
        help="training options tried on the multi-exit model with bypasses, one cell each",
    )

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=float, default=2.0, help="the budget of every model")
    training.add_argument("--curve_epochs", type=int, default=3)
    training.add_argument(
        "--frozen_epochs", type=float, default=1.0, help="the exits' training on the frozen full model (heads only)"
    )
    training.add_argument("--batch_size", type=int, default=32)
    training.add_argument("--learning_rate", type=float, default=5e-5, help="encoders of full-depth models")
    training.add_argument("--head_learning_rate", type=float, default=2e-4, help="heads, shallow models and members")
    training.add_argument("--warmup_ratio", type=float, default=0.1)
    training.add_argument("--distillation_temperature", type=float, default=2.0)
    training.add_argument("--distillation_alpha", type=float, default=0.5)
    training.add_argument("--train_threads", type=int, default=None, help="torch threads while training")

    measuring = parser.add_argument_group("measuring")
    measuring.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0, 3.0, 4.0])
    measuring.add_argument(
        "--calibration_max_overshoot",
        type=overshoot,
        default=None,
        help="`calibrate(max_overshoot=...)` for the exit methods' points (default 'none', the rule the finished "
        "cells were calibrated with: the most accurate setting at any speed-up above the target; the library's "
        "default is 0.05)",
    )
    add_timing_arguments(measuring)
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    for option in ("cascades", "assembled"):
        for spec in getattr(args, option):
            depths = spec.split("-")
            if len(depths) < 2 or not all(d.isdigit() and int(d) > 0 for d in depths):
                parser.error(f"--{option} takes member depths joined by '-', e.g. 1-6; got {spec!r}")
    if args.epochs <= 0 or args.curve_epochs < 1:
        parser.error("--epochs and --curve_epochs must be positive")
    if args.calibration_size < 1:
        parser.error("--calibration_size must be positive")
    return args


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def split(texts: list[str], args, seed: int) -> tuple[list[int], list[int]]:
    """(calibration slice, training set) as indices of the training file's `texts`: `--calibration_size` sentences of
    at least `--calibration_min_words` words drawn with `seed`, and the rest (less, with
    `--calibration_exclusive_words`, the slice's own phrases; `--train_size` of them when set)."""
    generator = torch.Generator().manual_seed(seed)
    eligible = [i for i, text in enumerate(texts) if len(text.split()) >= args.calibration_min_words]
    if len(eligible) < args.calibration_size:
        raise ValueError(
            f"--calibration_size {args.calibration_size}: only {len(eligible)} training sentences have "
            f"--calibration_min_words {args.calibration_min_words} words or more."
        )
    picked = [eligible[i] for i in torch.randperm(len(eligible), generator=generator)[: args.calibration_size]]
    held_out = set(picked)
    train_indices = [i for i in range(len(texts)) if i not in held_out]
    if args.calibration_exclusive_words:  # the calibration sentences' own phrases are not trained on either
        inside = phrases_within(
            [texts[i] for i in train_indices], [texts[i] for i in picked], args.calibration_exclusive_words
        )
        dropped = {train_indices[j] for j in inside}
        train_indices = [i for i in train_indices if i not in dropped]
    if args.train_size:
        order = torch.randperm(len(train_indices), generator=generator)[: args.train_size]
        train_indices = sorted(train_indices[i] for i in order)
    return picked, train_indices


class Data:
    """The splits of one seed: training set (tokenized), calibration batches (with labels), dev batches, timing."""

    def __init__(self, args, tokenizer, seed: int):
        pool = load_text_classification(args.train)
        picked, train_indices = split(pool["text"], args, seed)
        self.train_text = pool.select(train_indices)
        calibration = pool.select(sorted(picked))
        dev = load_text_classification(args.dev)
        if args.dev_size:
            dev = dev.select(range(min(args.dev_size, len(dev))))

        def tokenize(rows):
            return tokenizer(rows["text"], truncation=True, max_length=args.max_length)

        self.train = self.train_text.map(tokenize, batched=True, remove_columns=["text"]).rename_column(
            "label", "labels"
        )
        self.dev_set = dev.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
        self.calibration_batches = batches_with_labels(tokenizer, calibration, args.eval_batch_size, args.max_length)
        self.dev_batches = make_batches(tokenizer, dev, args.eval_batch_size, args.max_length)
        self.dev_labels = torch.tensor(dev["label"])
        self.dev_lengths = torch.cat([batch["attention_mask"].sum(-1) for batch in self.dev_batches])
        timed = dev.select(range(min(args.timing_sentences, len(dev))))
        self.timing = {size: make_batches(tokenizer, timed, size, args.max_length) for size in args.timing_batch_sizes}
        self.sizes = {"train": len(self.train), "calibration": len(calibration), "dev": len(dev), "timed": len(timed)}


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def train(model, args, data: Data, tokenizer, seed: int, run_dir: Path, learning_rate: float, recipe: str, **extra):
    """Fine-tune `model` in place (see [`benchmarks.common.train_model`]), evaluating on dev after every epoch.
    Returns the training record (time, steps, losses, the per-epoch dev metrics)."""
    return train_model(
        model,
        extra.pop("train_set", data.train),
        run_dir=run_dir,
        recipe=recipe,
        epochs=extra.pop("epochs", args.epochs),
        learning_rate=learning_rate,
        head_learning_rate=args.head_learning_rate,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup_ratio,
        seed=seed,
        collator=DataCollatorWithPadding(tokenizer),
        tokenizer=tokenizer,
        eval_set=data.dev_set,
        eval_batch_size=args.eval_batch_size,
        threads=args.train_threads,
        **extra,
    )


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def exit_record(model, data: Data) -> dict:
    """Every exit's dev accuracy and predictions (one digit per sentence), and the oracle bound."""
    with torch.inference_mode():
        all_logits = torch.cat([model(**batch, output_all_exits=True).all_logits for batch in data.dev_batches], dim=1)
    predictions = all_logits.argmax(-1)
    record_ = {
        "exit_accuracy": [float((p == data.dev_labels).float().mean()) for p in predictions],
        "dev_predictions": ["".join(map(str, p.tolist())) for p in predictions],
    }
    if all_logits.shape[0] > 1:
        record_["oracle"] = oracle_point(model, all_logits, data.dev_lengths, data.dev_labels)
    return record_


def measure_exits(model, data: Data, args, criteria, progress) -> list[dict]:
    """Calibrate each criterion for each target on the slice, then measure every distinct setting on dev."""
    recorded = record(model, data.calibration_batches)
    points = []
    for criterion in criteria:
        for target in args.targets:
            result = calibrate(
                model,
                recorded,
                target_speedup=target,
                criterion=criterion,
                apply=False,
                max_overshoot=args.calibration_max_overshoot,
            )
            points.append(
                {
                    "criterion": criterion,
                    "target": target,
                    "reached": result.reached,
                    "settings": result.forward_kwargs(),
                    "calibration": {
                        "accuracy": result.expected_accuracy,
                        "flops_speedup": result.expected_flops_speedup,
                        "full_accuracy": result.full_accuracy,
                    },
                }
            )
    distinct = []
    for point in points:
        if point["settings"] not in distinct:
            distinct.append(point["settings"])
    measured = measure_points(
        model,
        [(settings["exit_criterion"], settings) for settings in distinct],
        data.dev_batches,
        data.dev_labels,
        timing_batches=data.timing,
        rounds=args.timing_rounds,
        progress=progress,
    )
    for point in points:
        point["measured"] = measured[distinct.index(point["settings"])].to_dict()
    return points


def measure_static(model, reference_model, data: Data, args, progress) -> dict:
    """A model without exits against the full-size plain transformers model: accuracy, FLOPs, wall-clock."""
    (point,) = measure_points(
        model,
        [("static", {"early_exit": False})],
        data.dev_batches,
        data.dev_labels,
        timing_batches=data.timing,
        reference=plain_baseline(reference_model),
        rounds=args.timing_rounds,
        progress=progress,
    )
    point.flops_speedup = float(reference_model.reference_flops(data.dev_lengths).sum()) / float(
        model.reference_flops(data.dev_lengths).sum()
    )
    point.layer_speedup = reference_model.full_depth_layers / model.full_depth_layers
    point.timed_flops_speedup = timed_flops_speedup(
        model, data.timing, reference_model.reference_flops, early_exit=False
    )
    return point.to_dict()


# --------------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------------


def common_settings(args, seed: int) -> dict:
    """The settings every cell of a seed shares: data, training batch and rates, measuring."""
    data = {
        "train": Path(args.train).name,
        "train_size": args.train_size,
        "calibration_size": args.calibration_size,
        "calibration_min_words": args.calibration_min_words,
        "dev_size": args.dev_size,
        "max_length": args.max_length,
    }
    if args.calibration_exclusive_words:  # recorded only when set: the cells run before the option keep their key
        data["calibration_exclusive_words"] = args.calibration_exclusive_words
    return {
        "backbone": args.model or DEFAULT_BACKBONE_NAME,
        "seed": seed,
        "data": data,
        "training": {
            "batch_size": args.batch_size,
            "warmup_ratio": args.warmup_ratio,
            "head_learning_rate": args.head_learning_rate,
        },
        "measuring": {
            "targets": args.targets,
            "timing_batch_sizes": args.timing_batch_sizes,
            "timing_sentences": args.timing_sentences,
            "timing_rounds": args.timing_rounds,
            "threads": args.threads,
        },
    }


def plan(args, depth: int) -> list[Cell]:
    """Every cell the arguments ask for (without their `run`), dependencies first; `depth` is the backbone's."""
    a = args
    cells = [
        Cell(
            f"curve-seed{a.seeds[0]}",
            "curve",
            {**common_settings(a, a.seeds[0]), "layers": depth, "epochs": a.curve_epochs, "lr": a.learning_rate},
        )
    ]
    for seed in a.seeds:
        common = {**common_settings(a, seed), "epochs": a.epochs}
        # the cells that calibrate exits; the rule is recorded only when set, so the finished cells keep their key
        calibrated = dict(common)
        if a.calibration_max_overshoot is not None:
            calibrated["calibration_max_overshoot"] = a.calibration_max_overshoot
        full = Cell(f"full-seed{seed}", "full", {**common, "layers": depth, "lr": a.learning_rate})
        cells.append(full)
        shallow = [k for k in a.static_layers if k < depth]
        for k in shallow:
            cells.append(
                Cell(f"static-{k}L-seed{seed}", "static", {**common, "layers": k, "lr": a.head_learning_rate})
            )
        for k in shallow:
            settings = {
                **common,
                "layers": k,
                "lr": a.head_learning_rate,
                "temperature": a.distillation_temperature,
                "alpha": a.distillation_alpha,
                "teacher": full.key,  # the teacher's logits must come from these settings
            }
            cells.append(Cell(f"distilled-{k}L-seed{seed}", "distilled", settings, needs=(full.name,)))
        for spec in a.cascades:
            for recipe in a.cascade_recipes:
                layers = [int(d) for d in spec.split("-")]
                settings = {**calibrated, "member_layers": layers, "recipe": recipe, "lr": a.learning_rate}
                cells.append(Cell(f"cascade-{spec}-{recipe}-seed{seed}", "cascade", settings))
        for variant in a.bypass:
            settings = {**calibrated, "use_bypass": variant == "bypass", "lr": a.learning_rate, "recipe": "joint"}
            cells.append(Cell(f"multi_exit-{variant}-seed{seed}", "multi_exit", settings))
        for variant in a.teacher_exits:
            settings = {
                **calibrated,
                "use_bypass": variant == "bypass",
                "lr": a.learning_rate,
                "recipe": "teacher_distillation",
                "temperature": a.distillation_temperature,
                "alpha": a.distillation_alpha,
                "teacher": full.key,
            }
            cells.append(Cell(f"multi_exit-{variant}-teacher-seed{seed}", "multi_exit", settings, needs=(full.name,)))
        for ablation in a.ablations:
            settings = {
                **calibrated,
                "use_bypass": True,
                "lr": a.learning_rate,
                "recipe": "joint",
                "training_options": ABLATIONS[ablation],
            }
            cells.append(Cell(f"multi_exit-bypass-{ablation}-seed{seed}", "multi_exit", settings))
        for recipe in a.frozen_recipes:
            settings = {
                **calibrated,
                "epochs": a.frozen_epochs,
                "use_bypass": False,
                "lr": a.head_learning_rate,
                "recipe": recipe,
                "training_options": {"exit_stage": 2},
                "first_stage": full.key,  # the frozen encoder and last exit come from these settings
            }
            cells.append(Cell(f"multi_exit-frozen-{recipe}-seed{seed}", "multi_exit", settings, needs=(full.name,)))
        for spec in a.assembled:
            layers = [int(d) for d in spec.split("-")]
            members = [f"static-{k}L-seed{seed}" if k < depth else full.name for k in layers]
            settings = {**calibrated, "member_layers": layers, "members": members}
            cells.append(Cell(f"assembled-{spec}-seed{seed}", "assembled", settings, needs=tuple(members)))
    return cells


class Benchmark(CellBenchmark):
    """The SST-2 cells and how each kind runs."""

    name = "sst2"
    data_class = Data

    def plan(self) -> list[Cell]:
        return plan(self.args, self.depth)

    def runners(self):
        return {
            "curve": self.run_curve,
            "full": self.run_single,
            "static": self.run_single,
            "distilled": self.run_single,
            "cascade": self.run_cascade,
            "multi_exit": self.run_multi_exit,
            "assembled": self.run_assembled,
        }

    # --- running each kind ------------------------------------------------------------------------------------------

    def run_curve(self, cell: Cell, run_dir: Path) -> dict:
        return self.run_single(cell, run_dir, epochs=cell.settings["epochs"])

    def run_single(self, cell: Cell, run_dir: Path, epochs: float | None = None) -> dict:
        """A model without exits: the full model, a static truncated one or a distilled one."""
        s = cell.settings
        seed, layers = s["seed"], s["layers"]
        data = self.data(seed)
        set_seed(seed)
        model = BertForCascadeClassification.from_backbone(self.backbone, member_layers=[layers], num_labels=2)
        extra = {"epochs": epochs or s["epochs"]}
        recipe = "joint"
        if cell.kind == "distilled":
            extra.update(self.teacher_options(cell, data))
            recipe = "teacher_distillation"
        result = train(model, self.args, data, self.tokenizer, seed, run_dir, s["lr"], recipe, **extra)
        model.save_pretrained(run_dir / "final")
        torch.set_num_threads(self.args.threads)
        if cell.kind == "full":
            # the teacher of the distilled cells: logits over the training set, in its order
            train_batches = make_batches(
                self.tokenizer, data.train_text, self.args.eval_batch_size, self.args.max_length
            )
            logits = collect(model, train_batches, fields=("logits",), early_exit=False)["logits"]
            self.store.results_dir.mkdir(parents=True, exist_ok=True)
            save_file({"logits": logits.contiguous()}, self.store.results_dir / f"{cell.name}.teacher.safetensors")
        reference = BertForCascadeClassification.from_backbone(
            self.backbone, member_layers=[self.depth], num_labels=2
        ).eval()
        log(f"  {cell.name}: measuring")
        return {
            "training": result,
            "data": data.sizes,
            **exit_record(model, data),
            "measured": measure_static(model, reference, data, self.args, self.progress(cell)),
        }

    def run_cascade(self, cell: Cell, run_dir: Path) -> dict:
        s = cell.settings
        data = self.data(s["seed"])
        set_seed(s["seed"])
        model = BertForCascadeClassification.from_backbone(
            self.backbone, member_layers=s["member_layers"], num_labels=2
        )
        extra = {}
        if s["recipe"] == "dar":
            extra = {"dar_warmup_epochs": s["epochs"] / 2}
        recipe = CASCADE_RECIPES[s["recipe"]]
        result = train(model, self.args, data, self.tokenizer, s["seed"], run_dir, s["lr"], recipe, **extra)
        model.save_pretrained(run_dir / "final")
        return self.measure(cell, model, data, ["max_prob"], {"training": result})

    def teacher_options(self, cell: Cell, data: Data) -> dict:
        """The training options of a cell distilled from the full model `cell.needs[0]`: the training set with that
        model's logits (saved when it ran) and the distillation settings."""
        teacher_name = cell.needs[0]
        logits = load_file(self.store.results_dir / f"{teacher_name}.teacher.safetensors")["logits"]
        if len(logits) != len(data.train):
            raise ValueError(f"{teacher_name}'s teacher logits cover {len(logits)} sentences, not {len(data.train)}")
        return {
            "train_set": data.train.add_column("teacher_logits", logits.tolist()),
            "distillation_temperature": cell.settings["temperature"],
            "distillation_alpha": cell.settings["alpha"],
        }

    def run_multi_exit(self, cell: Cell, run_dir: Path) -> dict:
        s = cell.settings
        data = self.data(s["seed"])
        set_seed(s["seed"])
        model = BertWithBypassExits.from_pretrained(self.backbone, num_labels=2, use_bypass=s["use_bypass"])
        if "first_stage" in s:
            self.load_first_stage(model, cell.needs[0])
        options = {"epochs": s["epochs"], **s.get("training_options", {})}
        if s["recipe"] == "teacher_distillation":
            options.update(self.teacher_options(cell, data))
        result = train(model, self.args, data, self.tokenizer, s["seed"], run_dir, s["lr"], s["recipe"], **options)
        model.save_pretrained(run_dir / "final")
        return self.measure(cell, model, data, list(CRITERIA), {"training": result})

    def load_first_stage(self, model: BertWithBypassExits, name: str) -> None:
        """Puts the fine-tuned full model of cell `name` into `model`: its encoder, and its classifier as the last exit
        (both mean-pool the last layer), so that at full depth `model` answers exactly as that model does."""
        path = self.store.run_dir(self.cell(name)) / "final"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the frozen-exit cells need the checkpoint of {name} ({path}): rerun {name} first"
            )
        full = BertForCascadeClassification.from_pretrained(path).members[0]
        if full.head.pooling != model.exit_heads[-1].pooling:
            raise ValueError(
                f"{name} pools with {full.head.pooling!r}, the last exit with {model.exit_heads[-1].pooling!r}"
            )
        keys = model.bert.load_state_dict(full.bert.state_dict(), strict=False)
        if keys.unexpected_keys or any(not key.startswith("pooler.") for key in keys.missing_keys):  # no pooler: fine
            raise ValueError(f"{name}'s encoder does not fit: {keys}")
        model.exit_heads[-1].classifier.load_state_dict(full.head.classifier.state_dict())

    def run_assembled(self, cell: Cell, run_dir: Path) -> dict:
        s = cell.settings
        data = self.data(s["seed"])
        members = []
        for name in s["members"]:
            source = self.cell(name)
            path = self.store.run_dir(source) / "final"
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"{cell.name} needs the checkpoint of {name} ({path}), which is gone (checkpoints stay on the "
                    f"machine that trained them): rerun {name} first (delete its result file to force it)."
                )
            members.append(BertForCascadeClassification.from_pretrained(path).members[0])
        model = BertForCascadeClassification.from_members(members).eval()
        model.save_pretrained(run_dir / "final")  # for the scripts that measure a checkpoint (e.g. the profile)
        return self.measure(cell, model, data, ["max_prob"], {})

    def measure(self, cell: Cell, model, data: Data, criteria: list[str], result: dict) -> dict:
        torch.set_num_threads(self.args.threads)
        log(f"  {cell.name}: measuring")
        return {
            **result,
            "data": data.sizes,
            "exit_layers": model.exit_layers,
            **exit_record(model, data),
            "points": measure_exits(model, data, self.args, criteria, self.progress(cell)),
        }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_benchmark(Benchmark(args), args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
