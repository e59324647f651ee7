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
"""The converged CoNLL-2003 benchmark: SENTEE / TOKEE against the smaller taggers a user would train instead.

Every model trains on the CoNLL-2003 training set except a held-out calibration slice (`--calibration_size` sentences)
and is measured on the validation set (entity F1, seqeval). Cells, one result file each (see `benchmarks/cells.py`):

| kind | what | trained with |
| --- | --- | --- |
| `curve` | the token early-exit model, stage 1 for `--curve_epochs`, full-depth dev F1 after each epoch | `joint` |
| `stage1` | stage 1 at the budget (`--epochs`, chosen from the curve); also the full model and the teacher | `joint` |
| `stage2` | self-sampling fine-tuning of the same seed's `stage1` model (`--stage2_epochs`) | `self_sampling` |
| `static` | the first k layers (`--static_layers`) with one exit, fine-tuned on their own | `joint` (CE) |
| `distilled` | the same depths, distilled from `stage1`'s last exit of the same seed | `teacher_distillation` |

`stage1` and `stage2` are calibrated for SENTEE and TOKEE (window among `--windows`) at each target FLOPs speed-up on
the slice and run for real on the validation set; their oracle bounds (each word, or each sentence, leaves at the first
exit that agrees with the last) come from a full-depth run. Wall-clock: `--timing_sentences` validation sentences at
each batch size, timed against a plain `BertForTokenClassification` of the full size, the two taking turns every
block of 32 sentences.

CoNLL-2003 is for research only: the data is read from `--train` / `--dev` (by default `../shared/data/conll2003/`
beside the repository) and never copied into it.

    python -m benchmarks.conll --only curve
    python -m benchmarks.conll --only stage1 static --seeds 0
    python -m benchmarks.conll --only stage2 distilled --seeds 0
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import set_seed

from benchmarks.cells import Cell
from benchmarks.common import (
    CellBenchmark,
    EpochEvaluation,
    add_timing_arguments,
    benchmark_parser,
    check_common_arguments,
    log,
    run_benchmark,
    train_model,
)
from hf_earlyexit import BertForTokenEarlyExit
from hf_earlyexit.calibration import calibrate_token, record_token
from hf_earlyexit.data import DataCollatorForTokenEarlyExit, read_conll, tokenize_token_dataset
from hf_earlyexit.evaluation import (
    entity_scores,
    measure_token_points,
    plain_token_baseline,
    token_oracle_points,
    token_scores,
    word_tags,
)


REPO_ROOT = Path(__file__).resolve().parent.parent
CONLL = REPO_ROOT.parent / "shared" / "data" / "conll2003"
KINDS = ("curve", "stage1", "stage2", "static", "distilled")
MODES = {"sentence": "SENTEE", "token": "TOKEE"}
DEFAULT_BACKBONE_NAME = "all-MiniLM-L6-v2 (embedded default)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser("conll", __doc__.split("\n\n")[0], KINDS)

    data = parser.add_argument_group("data")
    data.add_argument("--train", default=str(CONLL / "train.txt"))
    data.add_argument("--dev", default=str(CONLL / "valid.txt"))
    data.add_argument("--calibration_size", type=int, default=1000, help="held-out training sentences")
    data.add_argument("--dev_size", type=int, default=0, help="validation sentences (0: all)")
    data.add_argument("--max_length", type=int, default=128)

    models = parser.add_argument_group("models")
    models.add_argument("--model", default=None, help="BERT backbone path or id (default: the embedded MiniLM-L6)")
    models.add_argument("--static_layers", nargs="+", type=int, default=[2, 3])

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=float, default=3.0, help="stage 1's budget, of every tagger")
    training.add_argument("--curve_epochs", type=int, default=5)
    training.add_argument("--stage2_epochs", type=float, default=2.0)
    training.add_argument("--batch_size", type=int, default=32)
    training.add_argument("--learning_rate", type=float, default=1e-4, help="encoders")
    training.add_argument("--head_learning_rate", type=float, default=5e-4, help="exit heads")
    training.add_argument("--warmup_ratio", type=float, default=0.1)
    training.add_argument("--max_threshold", type=float, default=0.5, help="self-sampling's largest threshold")
    training.add_argument("--distillation_temperature", type=float, default=2.0)
    training.add_argument("--distillation_alpha", type=float, default=0.5)
    training.add_argument("--train_threads", type=int, default=None, help="torch threads while training")

    measuring = parser.add_argument_group("measuring")
    measuring.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0, 3.0, 4.0])
    measuring.add_argument("--windows", nargs="+", type=int, default=[3, 5, 9, 15], help="TOKEE windows searched")
    measuring.add_argument("--live_checks", type=int, default=6, help="TOKEE candidates run live per target")
    add_timing_arguments(measuring)
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if not args.list:
        for name in ("train", "dev"):
            if not Path(getattr(args, name)).is_file():
                parser.error(f"--{name}: {getattr(args, name)} does not exist (CoNLL-2003 is not in the repository)")
    if args.epochs <= 0 or args.curve_epochs < 1 or args.stage2_epochs <= 0:
        parser.error("--epochs, --curve_epochs and --stage2_epochs must be positive")
    if any(w < 1 or w % 2 == 0 for w in args.windows):
        parser.error(f"--windows must be odd integers >= 1, got {args.windows}")
    return args


class Data:
    """The splits of one seed: training rows, the calibration slice, validation batches, timing batches."""

    def __init__(self, args, tokenizer, seed: int):
        found = {name for path in (args.train, args.dev) for name in read_conll(path).features["tags"].feature.names}
        self.label_names = (["O"] if "O" in found else []) + sorted(found - {"O"})
        pool = read_conll(args.train, label_names=self.label_names)
        if args.calibration_size >= len(pool):
            raise ValueError(
                f"--calibration_size {args.calibration_size}: the training file has {len(pool)} sentences."
            )
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
        held_out = sorted(order[: args.calibration_size])
        dev = read_conll(args.dev, label_names=self.label_names)
        if args.dev_size:
            dev = dev.select(range(min(args.dev_size, len(dev))))

        def encode(dataset):
            return tokenize_token_dataset(dataset, tokenizer, max_length=args.max_length)

        self.collator = DataCollatorForTokenEarlyExit(tokenizer)
        self.train = encode(pool.select(sorted(order[args.calibration_size :])))
        self.dev_rows = encode(dev)
        self.calibration_batches = self.batches(encode(pool.select(held_out)), args.eval_batch_size)
        self.dev_batches = self.batches(self.dev_rows, args.eval_batch_size)
        timed = self.dev_rows.select(range(min(args.timing_sentences, len(self.dev_rows))))
        self.timing = {size: self.batches(timed, size) for size in args.timing_batch_sizes}
        self.sizes = {"train": len(self.train), "calibration": len(held_out), "dev": len(dev), "timed": len(timed)}

    def batches(self, rows, batch_size: int) -> list[dict]:
        return [
            self.collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            for start in range(0, len(rows), batch_size)
        ]


def common_settings(args, seed: int) -> dict:
    return {
        "backbone": args.model or DEFAULT_BACKBONE_NAME,
        "seed": seed,
        "data": {
            "train": Path(args.train).name,
            "calibration_size": args.calibration_size,
            "dev_size": args.dev_size,
            "max_length": args.max_length,
        },
        "training": {
            "batch_size": args.batch_size,
            "warmup_ratio": args.warmup_ratio,
            "learning_rate": args.learning_rate,
            "head_learning_rate": args.head_learning_rate,
        },
        "measuring": {
            "targets": args.targets,
            "windows": args.windows,
            "live_checks": args.live_checks,
            "timing_batch_sizes": args.timing_batch_sizes,
            "timing_sentences": args.timing_sentences,
            "timing_rounds": args.timing_rounds,
            "threads": args.threads,
        },
    }


def plan(args, depth: int) -> list[Cell]:
    """Every cell the arguments ask for (without their `run`), dependencies first."""
    a = args
    first = a.seeds[0]
    cells = [
        Cell(f"curve-seed{first}", "curve", {**common_settings(a, first), "layers": depth, "epochs": a.curve_epochs})
    ]
    for seed in a.seeds:
        common = {**common_settings(a, seed), "epochs": a.epochs}
        stage1 = Cell(f"stage1-seed{seed}", "stage1", {**common, "layers": depth})
        stage2 = {**common, "stage1": stage1.key, "stage2_epochs": a.stage2_epochs, "max_threshold": a.max_threshold}
        cells += [stage1, Cell(f"stage2-seed{seed}", "stage2", stage2, needs=(stage1.name,))]
        shallow = [k for k in a.static_layers if k < depth]
        cells += [Cell(f"static-{k}L-seed{seed}", "static", {**common, "layers": k}) for k in shallow]
        for k in shallow:
            settings = {
                **common,
                "layers": k,
                "temperature": a.distillation_temperature,
                "alpha": a.distillation_alpha,
                "teacher": stage1.key,
            }
            cells.append(Cell(f"distilled-{k}L-seed{seed}", "distilled", settings, needs=(stage1.name,)))
    return cells


class Benchmark(CellBenchmark):
    """The CoNLL-2003 cells and how each kind runs."""

    name = "conll"
    data_class = Data

    def __init__(self, args):
        super().__init__(args)
        args.max_length = min(args.max_length, self.backbone_config.max_position_embeddings)

    def plan(self) -> list[Cell]:
        return plan(self.args, self.depth)

    def runners(self):
        return {
            "curve": self.run_stage1,
            "stage1": self.run_stage1,
            "stage2": self.run_stage2,
            "static": self.run_static,
            "distilled": self.run_static,
        }

    def new_model(self, data: Data, layers: int) -> BertForTokenEarlyExit:
        labels = {
            "id2label": dict(enumerate(data.label_names)),
            "label2id": {n: i for i, n in enumerate(data.label_names)},
        }
        extra = {} if layers == self.depth else {"num_hidden_layers": layers, "exit_layers": [layers]}
        return BertForTokenEarlyExit.from_pretrained(
            self.backbone, num_labels=len(data.label_names), **labels, **extra
        )

    def train(self, model, data: Data, cell: Cell, run_dir: Path, recipe: str, epochs: float, train_set=None, **extra):
        def full_depth_f1(trained):
            return {"f1": token_scores(trained, data.dev_batches, early_exit=False)["f1"]}

        return train_model(
            model,
            train_set if train_set is not None else data.train,
            run_dir=run_dir,
            recipe=recipe,
            epochs=epochs,
            learning_rate=self.args.learning_rate,
            head_learning_rate=self.args.head_learning_rate,
            batch_size=self.args.batch_size,
            warmup_ratio=self.args.warmup_ratio,
            seed=cell.settings["seed"],
            collator=data.collator,
            callbacks=(EpochEvaluation(full_depth_f1),),
            threads=self.args.train_threads,
            **extra,
        )

    # --- running each kind ------------------------------------------------------------------------------------------

    def run_stage1(self, cell: Cell, run_dir: Path) -> dict:
        seed = cell.settings["seed"]
        data = self.data(seed)
        set_seed(seed)
        model = self.new_model(data, self.depth)
        training = self.train(model, data, cell, run_dir, "joint", cell.settings["epochs"])
        model.save_pretrained(run_dir / "final")
        torch.set_num_threads(self.args.threads)
        if cell.kind == "stage1":
            self.save_teacher(model, data, cell)
        return {"training": training, **self.measure(model, data, cell)}

    def run_stage2(self, cell: Cell, run_dir: Path) -> dict:
        seed = cell.settings["seed"]
        data = self.data(seed)
        stage1 = self.cell(cell.needs[0])
        path = self.store.run_dir(stage1) / "final"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{cell.name} continues {stage1.name}'s model ({path}), which is gone (checkpoints stay on the machine "
                f"that trained them): rerun {stage1.name} first (delete its result file to force it)."
            )
        set_seed(seed)
        model = BertForTokenEarlyExit.from_pretrained(path)
        training = self.train(
            model,
            data,
            cell,
            run_dir,
            "self_sampling",
            cell.settings["stage2_epochs"],
            self_sampling_max_threshold=cell.settings["max_threshold"],
        )
        model.save_pretrained(run_dir / "final")
        torch.set_num_threads(self.args.threads)
        return {"training": training, **self.measure(model, data, cell)}

    def run_static(self, cell: Cell, run_dir: Path) -> dict:
        s = cell.settings
        data = self.data(s["seed"])
        set_seed(s["seed"])
        model = self.new_model(data, s["layers"])
        train_set, extra, recipe = None, {}, "joint"
        if cell.kind == "distilled":
            teacher = self.load_teacher(cell.needs[0], data)
            train_set = data.train.add_column("teacher_logits", teacher)
            extra = {"distillation_temperature": s["temperature"], "distillation_alpha": s["alpha"]}
            recipe = "teacher_distillation"
        training = self.train(model, data, cell, run_dir, recipe, s["epochs"], train_set, **extra)
        model.save_pretrained(run_dir / "final")
        torch.set_num_threads(self.args.threads)
        full = self.new_model(data, self.depth).eval()  # the full size's cost and plain baseline (weights unused)
        log(f"  {cell.name}: measuring")
        (point,) = measure_token_points(
            model,
            [("static", {"early_exit": False})],
            data.dev_batches,
            data.timing,
            plain_token_baseline(full),
            self.args.timing_rounds,
            full_config=full.config,
        )
        return {"training": training, "data": data.sizes, "measured": point}

    # --- teacher logits ---------------------------------------------------------------------------------------------

    def teacher_path(self, name: str) -> Path:
        """Beside the stage-1 checkpoint, not in the results: megabytes, and derived from research-only data."""
        stage1 = self.cell(name)
        return self.store.run_dir(stage1) / "teacher.safetensors"

    @torch.inference_mode()
    def save_teacher(self, model, data: Data, cell: Cell) -> None:
        """The last exit's logits of every labelled training word, full depth (flat, with each sentence's offset)."""
        words, counts = [], []
        for batch in data.batches(data.train, self.args.eval_batch_size):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, early_exit=False).logits
            labelled = batch["labels"] != -100
            words.append(logits[labelled])
            counts += labelled.sum(-1).tolist()
        offsets = torch.tensor([0, *counts]).cumsum(0)
        save_file({"logits": torch.cat(words).contiguous(), "offsets": offsets}, self.teacher_path(cell.name))

    def load_teacher(self, name: str, data: Data) -> list:
        path = self.teacher_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"The teacher logits of {name} ({path}) are gone (they stay on the machine that trained it): rerun "
                f"{name} first (delete its result file to force it)."
            )
        saved = load_file(path)
        logits, offsets = saved["logits"], saved["offsets"].tolist()
        if len(offsets) - 1 != len(data.train):
            raise ValueError(f"{name}'s teacher logits cover {len(offsets) - 1} sentences, not {len(data.train)}.")
        return [logits[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]

    # --- measuring --------------------------------------------------------------------------------------------------

    def measure(self, model, data: Data, cell: Cell) -> dict:
        log(f"  {cell.name}: measuring")
        progress = self.progress(cell)
        args = self.args
        result = {
            "data": data.sizes,
            "exit_layers": model.exit_layers,
            "exit_f1": per_exit_f1(model, data.dev_batches),
        }
        result["oracle"] = token_oracle_points(model, data.dev_batches)
        (full,) = measure_token_points(
            model, [("full depth", {"early_exit": False})], data.dev_batches, data.timing, rounds=args.timing_rounds
        )
        recorded = record_token(model, data.calibration_batches)
        points, measured = [], {}
        for mode in MODES:
            for target in args.targets:
                calibration = calibrate_token(
                    model,
                    recorded,
                    target_speedup=target,
                    exit_mode=mode,
                    window_sizes=args.windows if mode == "token" else None,
                    max_live_checks=args.live_checks,
                    apply=False,
                    max_overshoot=None,  # the rule the finished cells were calibrated with (TOKEE lands near anyway)
                )
                settings = calibration.forward_kwargs()
                if mode == "sentence":
                    settings.pop("window_size")
                key = json.dumps(settings, sort_keys=True)
                if key not in measured:
                    (measured[key],) = measure_token_points(
                        model,
                        [(MODES[mode], settings)],
                        data.dev_batches,
                        data.timing,
                        rounds=args.timing_rounds,
                        progress=progress,
                    )
                points.append(
                    {
                        "criterion": MODES[mode],
                        "target": target,
                        "reached": calibration.reached,
                        "settings": settings,
                        "calibration": {
                            "f1": calibration.expected_metric,
                            "flops_speedup": calibration.expected_flops_speedup,
                        },
                        "measured": measured[key],
                    }
                )
        return {**result, "measured": full, "points": points}


@torch.inference_mode()
def per_exit_f1(model, batches) -> list[float]:
    """Entity F1 of every exit alone at full depth (what a model truncated there answers), from one pass."""
    predictions = [[] for _ in model.exit_layers]
    references = []
    for batch in batches:
        all_logits = model(**{k: v for k, v in batch.items() if k != "labels"}, output_all_exits=True).all_logits
        for exit_predictions, logits in zip(predictions, all_logits):
            exit_predictions += word_tags(logits, batch["labels"], model.config.id2label)[0]
        references += word_tags(all_logits[-1], batch["labels"], model.config.id2label)[1]
    return [entity_scores(p, references)["f1"] for p in predictions]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_benchmark(Benchmark(args), args)


if __name__ == "__main__":
    main()
