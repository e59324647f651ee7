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
"""What the converged benchmarks share: their command line's common options, running the selected cells, and
resumable training of one cell's model with progress lines."""

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from benchmarks.cells import Cell, CellStore
from hf_earlyexit import EarlyExitTrainer, EarlyExitTrainingArguments
from hf_earlyexit.evaluation import machine_info


def benchmark_parser(name: str, description: str, kinds: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options every converged benchmark has: the cell selection and where results and checkpoints go."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", default=None, help=f"cell kinds {kinds} or cell names to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the cells (the curve: the first)")
    parser.add_argument("--list", action="store_true", help="list every cell and whether it is done, run nothing")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="measure the selected finished cells again from their checkpoints (needs --only; training kept)",
    )
    parser.add_argument("--results_dir", default=f"benchmarks/results/{name}")
    parser.add_argument("--runs_dir", default=f"runs/{name}", help="checkpoints (an ignored folder)")
    parser.set_defaults(kinds=kinds)
    return parser


def add_timing_arguments(group) -> None:
    """How the measured settings are timed (the same in every converged benchmark)."""
    group.add_argument("--eval_batch_size", type=int, default=64)
    group.add_argument("--timing_batch_sizes", nargs="+", type=int, default=[1, 32])
    group.add_argument("--timing_sentences", type=int, default=256)
    group.add_argument("--timing_rounds", type=int, default=3)
    group.add_argument("--threads", type=int, default=1, help="torch threads while measuring")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    unknown = [name for name in args.only or [] if name not in args.kinds and "-" not in name]
    if unknown:
        parser.error(f"--only takes cell kinds {args.kinds} or cell names; got {unknown}")
    if args.remeasure and not args.only:
        parser.error("--remeasure needs --only: name the finished cells (or kinds) to measure again")
    if args.timing_sentences < 1 or args.timing_rounds < 1:
        parser.error("--timing_sentences and --timing_rounds must be positive")


class CellBenchmark:
    """A converged benchmark: its backbone and tokenizer, its cell store, the data of each seed (loaded on first use),
    and its cells with their runners. Subclasses set `name`, `data_class` (built as `data_class(args, tokenizer,
    seed)`), `plan(args, depth)` and `runners()` (cell kind to `run(cell, run_dir) -> dict`)."""

    name: str
    data_class: type

    def __init__(self, args: argparse.Namespace):
        from transformers import AutoConfig, AutoTokenizer

        from hf_earlyexit.utils import default_backbone

        self.args = args
        self.backbone = args.model or default_backbone()
        self.tokenizer = AutoTokenizer.from_pretrained(self.backbone)
        self.backbone_config = AutoConfig.from_pretrained(self.backbone)
        self.depth = self.backbone_config.num_hidden_layers
        command = f"python -m benchmarks.{self.name} " + " ".join(sys.argv[1:])
        self.store = CellStore(args.results_dir, args.runs_dir, command=command)
        self._data = {}

    def data(self, seed: int):
        if seed not in self._data:
            self._data[seed] = self.data_class(self.args, self.tokenizer, seed)
        return self._data[seed]

    def plan(self) -> list[Cell]:
        raise NotImplementedError

    def runners(self) -> dict[str, Callable[[Cell, Path], dict]]:
        raise NotImplementedError

    def cells(self) -> list[Cell]:
        runners = self.runners()
        cells = self.plan()
        for cell in cells:
            cell.run = runners[cell.kind]
        return cells

    def cell(self, name: str) -> Cell:
        return next(cell for cell in self.cells() if cell.name == name)

    @staticmethod
    def progress(cell: Cell) -> Callable[[str], None]:
        return lambda text: log(f"  {cell.name}: {text}")


def run_benchmark(benchmark, args: argparse.Namespace) -> dict:
    """`--list` the cells, or run the selected ones; returns their status."""
    cells = benchmark.cells()
    if args.list:
        width = max(len(cell.name) for cell in cells) + 2
        for cell in cells:
            print(f"{cell.name:{width}s} {cell.kind:11s} {'done' if benchmark.store.is_done(cell) else 'missing'}")
        return {cell.name: benchmark.store.is_done(cell) for cell in cells}
    torch.set_num_threads(args.threads)
    status = benchmark.store.run(cells, only=args.only, log=log, machine=machine_info, remeasure=args.remeasure)
    log(json.dumps(status))
    return status


def load_tokenizer(checkpoint: str | None, tokenizer: str | None = None, backbone: str | None = None):
    """The tokenizer of a measuring script: `tokenizer` when given, else the checkpoint's, else (the benchmark cells
    save their models without one) the backbone's, by default the embedded one."""
    from transformers import AutoTokenizer

    from hf_earlyexit.utils import default_backbone

    source = tokenizer or checkpoint
    if source is None or (tokenizer is None and not (Path(checkpoint) / "tokenizer_config.json").is_file()):
        source = backbone or default_backbone()
    return AutoTokenizer.from_pretrained(source)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Progress(TrainerCallback):
    """One line to stderr per logging step: where the training is and when it should end."""

    def __init__(self, name: str):
        self.name = name
        self.started, self.first_step = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        done = state.global_step - self.first_step
        if not done:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * (state.max_steps - state.global_step)
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (logs or {}).items() if k in ("loss", "eval_loss"))
        log(
            f"  {self.name}: step {state.global_step}/{state.max_steps} ({elapsed / done:.2f} s/step, "
            f"{left / 60:.0f} min left) {metrics}"
        )


class EpochEvaluation(TrainerCallback):
    """After every epoch, `{"epoch": ..., "dev": evaluate(model)}` goes into the trainer's log history (and so into
    the epoch's checkpoint: a resumed run keeps the epochs evaluated before it was cut off)."""

    def __init__(self, evaluate: Callable[[torch.nn.Module], dict]):
        self.evaluate = evaluate

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        model.eval()
        state.log_history.append({"epoch": round(state.epoch), "dev": self.evaluate(model)})
        model.train(was_training)


def train_model(
    model,
    train_set,
    *,
    run_dir: Path,
    recipe: str,
    epochs: float,
    learning_rate: float,
    head_learning_rate: float,
    batch_size: int,
    warmup_ratio: float,
    seed: int,
    collator,
    tokenizer=None,
    eval_set=None,
    eval_batch_size: int = 64,
    callbacks: tuple[TrainerCallback, ...] = (),
    threads: int | None = None,
    **extra,
) -> dict:
    """Fine-tune `model` in place with [`EarlyExitTrainer`], saving a checkpoint every quarter of an epoch under
    `run_dir/trainer` and resuming from the last one when there is one (a cell cut off mid-training loses at most a
    quarter of an epoch). With `eval_set`, the trainer evaluates after every epoch. Returns the training record: time, steps, the
    loss logs and the per-epoch evaluations (the trainer's `eval_*` metrics, and those of `EpochEvaluation` callbacks
    under `dev`)."""
    training_args = EarlyExitTrainingArguments(
        output_dir=str(run_dir / "trainer"),
        exit_recipe=recipe,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=learning_rate,
        head_learning_rate=head_learning_rate,
        warmup_steps=warmup_ratio,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        eval_strategy="epoch" if eval_set is not None else "no",
        save_strategy="steps",
        save_steps=max(1, math.ceil(len(train_set) / batch_size) // 4),
        save_total_limit=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=max(1, math.ceil(len(train_set) / batch_size) // 10),
        **extra,
    )
    trainer = EarlyExitTrainer(
        model,
        training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=collator,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Progress(run_dir.name))
    for callback in callbacks:
        trainer.add_callback(callback)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=get_last_checkpoint(training_args.output_dir))
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    history = trainer.state.log_history
    return {
        "train_seconds": time.perf_counter() - start,
        "train_loss": output.training_loss,
        "steps": trainer.state.global_step,
        # the loss the trainer built from the recipe and the training options, with its settings
        "loss": {"class": type(trainer.exit_loss).__name__, **trainer.exit_loss.get_config_dict()},
        # the trainer's evaluations (`eval_*`) and the `EpochEvaluation` callbacks' (`dev`)
        "dev_per_epoch": [
            entry if "dev" in entry else {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}
            for entry in history
            if "dev" in entry or "eval_runtime" in entry
        ],
        "losses": [entry for entry in history if "loss" in entry],
    }


__all__ = [
    "CellBenchmark",
    "EpochEvaluation",
    "Progress",
    "add_timing_arguments",
    "benchmark_parser",
    "check_common_arguments",
    "load_tokenizer",
    "log",
    "run_benchmark",
    "train_model",
]
