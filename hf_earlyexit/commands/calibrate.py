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
"""`hf-earlyexit calibrate`: choose exit thresholds on held-out labelled data and write them into the checkpoint.

One recorded pass over `--data` scores every candidate setting (`hf_earlyexit.calibration.calibrate`); the most
accurate setting that reaches `--target_speedup` (a FLOPs speed-up >= 1; among the settings within `--max_overshoot`
above it, 5 % by default), or the fastest within `--max_accuracy_drop`
(a fraction: 0.01 is one point), goes into the checkpoint's `config.json` (only the exit settings change; the file is
written to a temporary file and then moved over the old one) and its model card (`README.md`) is rendered again with
the calibration's frontier (and the training hyperparameters `train` kept in `model_card_data.json`). `calibration.json` beside them keeps the whole result.

A token model (SENTEE / TOKEE) calibrates on a CoNLL column file: `--criterion` is its exit mode (`token` or
`sentence`), `--window_sizes` the TOKEE windows to search, and the metric entity F1 (word accuracy for tags that are
not IOB-style); its `exit_mode`, `exit_threshold` and `window_size` are written (`hf_earlyexit.calibration.
calibrate_token`: TOKEE candidates are checked by real runs on the calibration set).

A target that no setting reaches on this data is a failure: the result (with the nearest setting found) is printed,
the checkpoint is left as it was, and the command exits with status 1. `--accept_nearest` writes that nearest setting
instead (and exits 0). The checkpoint folder must be writable (checked before anything is computed; `--dry_run` needs
no write access).

    hf-earlyexit calibrate --model runs/bypass --data held_out.tsv --target_speedup 2
    hf-earlyexit calibrate --model runs/tokee --data held_out.conll --target_speedup 2 --window_sizes 5 15
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..calibration.result import DEFAULT_MAX_OVERSHOOT
from .common import (
    UsageError,
    add_data_arguments,
    add_tokenizer_argument,
    dump_json,
    load_card_data,
    load_for_sweep,
    save_card,
    write_atomically,
)


# what a calibration may change in config.json, of the fields the family declares
EXIT_SETTINGS = ("exit_criterion", "exit_threshold", "patience", "exit_mode", "window_size")


def overshoot(text: str) -> float | None:
    """`--max_overshoot`: a fraction >= 0, or `none`."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"expected a fraction >= 0 (0.05: up to 5 % above the target) or 'none', got {text!r}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="An early-exit checkpoint folder; it is updated in place.")
    add_tokenizer_argument(parser)
    add_data_arguments(parser)
    target = parser.add_argument_group("target (give one)")
    target.add_argument("--target_speedup", type=float, default=None, help="FLOPs speed-up to reach (>= 1).")
    target.add_argument(
        "--max_accuracy_drop", type=float, default=None, help="Largest accuracy drop, a fraction in [0, 1]."
    )
    parser.add_argument(
        "--criterion",
        default=None,
        help="Exit criterion to calibrate (default: the checkpoint's); for a token model its exit mode, token or "
        "sentence.",
    )
    parser.add_argument(
        "--max_overshoot",
        type=overshoot,
        default=DEFAULT_MAX_OVERSHOOT,
        help="With --target_speedup: how far above it a setting may land and still compete on accuracy, a fraction "
        f"of it (default {DEFAULT_MAX_OVERSHOOT}: up to 5 %% faster; 'none': the most accurate at any speed-up).",
    )
    parser.add_argument("--per_exit", action="store_true", help="One threshold per exit instead of a shared one.")
    parser.add_argument(
        "--window_sizes",
        type=int,
        nargs="+",
        default=None,
        help="Token models, TOKEE: the windows to search (odd; default: the checkpoint's).",
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the result; leave the checkpoint unchanged.")
    parser.add_argument(
        "--accept_nearest",
        action="store_true",
        help="When the target cannot be reached, write the nearest setting found and exit 0 (default: write nothing "
        "and exit 1).",
    )


class TargetNotReached(RuntimeError):
    """No setting reaches the calibration target on the data: the command line exits with status 1."""


def check_writable(checkpoint: Path) -> None:
    """A usage error unless files can be created in `checkpoint` (calibrate replaces its files through temporary files
    next to them)."""
    try:
        handle, probe = tempfile.mkstemp(dir=checkpoint, prefix=".calibrate-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UsageError(
            f"`--model` {checkpoint}: cannot write into the checkpoint folder ({error.strerror or error}); calibrate "
            "updates it in place. Copy it somewhere writable, or pass `--dry_run` to only print the result."
        ) from None


def check_target(target_speedup, max_accuracy_drop) -> None:
    if (target_speedup is None) == (max_accuracy_drop is None):
        raise UsageError("give exactly one of `--target_speedup` (a FLOPs speed-up >= 1) or `--max_accuracy_drop`.")
    if target_speedup is not None and not 1 <= target_speedup < float("inf"):
        raise UsageError(
            f"`--target_speedup` is a FLOPs speed-up against the full model and must be >= 1, got {target_speedup}."
        )
    if max_accuracy_drop is not None and not 0 <= max_accuracy_drop <= 1:
        raise UsageError(f"`--max_accuracy_drop` is a fraction in [0, 1] (0.01 = one point), got {max_accuracy_drop}.")


def write_calibration(checkpoint: str | Path, model, result, dataset_name: str | None = None) -> None:
    """Writes the calibrated exit settings into `checkpoint/config.json` (nothing else in it changes), the model card
    and `calibration.json`, each through a temporary file."""
    from ..models.bert.checkpoint_utils import family_config_fields

    checkpoint = Path(checkpoint)
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # the settings `apply_calibration` wrote (those the family declares)
    declared = family_config_fields(type(model.config))
    config.update({name: getattr(model.config, name) for name in EXIT_SETTINGS if name in declared})
    card_data = load_card_data(checkpoint)  # keeps what training recorded
    card_data.set_calibration(result, dataset_name=dataset_name)
    save_card(checkpoint, model, card_data)
    write_atomically(checkpoint / "calibration.json", dump_json(result.to_dict()))
    # the config last: a failure before it leaves the model exiting as before
    write_atomically(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> dict:
    if args is None:
        parser = argparse.ArgumentParser(prog="hf-earlyexit calibrate", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    from ..calibration import apply_calibration, calibrate, calibrate_token, record, record_token

    check_target(args.target_speedup, args.max_accuracy_drop)
    if not Path(args.model, "config.json").is_file():
        raise UsageError(f"`--model` {args.model}: not a checkpoint folder (no config.json); calibrate updates one.")
    if args.accept_nearest and args.dry_run:
        raise UsageError("`--accept_nearest` chooses what is written; `--dry_run` writes nothing.")
    if not args.dry_run:
        check_writable(Path(args.model))
    inputs = load_for_sweep(args)
    model, criterion, batches = inputs.model, inputs.criterion, inputs.batches
    if inputs.is_token and args.per_exit:
        raise UsageError("`--per_exit` is for text classifiers; SENTEE / TOKEE calibrate one threshold (and window).")
    progress = tqdm(batches, desc="recording", unit="batch", file=sys.stderr)
    if inputs.is_token:
        result = calibrate_token(
            model,
            record_token(model, progress),
            target_speedup=args.target_speedup,
            max_accuracy_drop=args.max_accuracy_drop,
            exit_mode=criterion,
            window_sizes=args.window_sizes,
            apply=False,
            max_overshoot=args.max_overshoot,
        )
    else:
        result = calibrate(
            model,
            record(model, progress),
            target_speedup=args.target_speedup,
            max_accuracy_drop=args.max_accuracy_drop,
            criterion=criterion,
            per_exit=args.per_exit or None,
            apply=False,
            max_overshoot=args.max_overshoot,
        )
    write = not args.dry_run and (result.reached or args.accept_nearest)
    if write:
        apply_calibration(model, result)
        write_calibration(args.model, model, result, dataset_name=args.data)
    summary = {k: v for k, v in result.to_dict().items() if k != "frontier"}
    summary["written"] = write
    print(json.dumps(summary, indent=2))
    print(result.message, file=sys.stderr)
    if not result.reached and not args.accept_nearest:
        raise TargetNotReached(
            "the target was not reached; the checkpoint was left as it was"
            + (" (`--dry_run`)." if args.dry_run else ". Pass `--accept_nearest` to write the nearest setting found.")
        )
    return result.to_dict()
