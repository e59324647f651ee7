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
"""The `hf-earlyexit` command line.

    hf-earlyexit quickstart                       # fine-tune, calibrate and measure two models on SST-2 (~6 min on 2 cores)
    hf-earlyexit train --family cascade --output_dir runs/cascade
    hf-earlyexit calibrate --model runs/cascade --data held_out.tsv --target_speedup 2
    hf-earlyexit evaluate --model runs/cascade --data data/sst2/dev.tsv --output_dir runs/cascade/eval
    hf-earlyexit predict --model runs/cascade "a gripping film"
    hf-earlyexit serve --model runs/cascade --port 8000   # HTTP, dynamic batching (pip install "hf-earlyexit[serve]")

`hf-earlyexit <command> --help` lists each command's options. Each command is also a function,
`hf_earlyexit.commands.<command>.main(argv) -> dict`. Usage errors (a missing file, an unknown family or column, a
target out of range, text that is not UTF-8) print what was expected and exit with status 2; a command that cannot do
what was asked (a calibration target no setting reaches, a checkpoint that cannot be written) prints why and exits
with status 1.
"""

import argparse
import importlib
import sys
from collections.abc import Callable


# name -> (module in hf_earlyexit.commands, one-line help)
COMMANDS = {
    "train": ("train", "Fine-tune an early-exit model (bypass, cascade or token family) and save it with its card."),
    "evaluate": (
        "evaluate",
        "Threshold sweep on a labelled dataset: table, results.json/md and a speed/accuracy plot.",
    ),
    "calibrate": ("calibrate", "Choose exit thresholds for a FLOPs speed-up or an accuracy drop; write them in."),
    "predict": ("predict", "Classify texts (arguments, --file or stdin): JSON lines with label, score, exit layer."),
    "serve": ("serve", "Serve a model over HTTP on Ray Serve, batching concurrent requests (the serve extra)."),
    "quickstart": ("quickstart", "Cascade and BADGE on the shipped SST-2 copy, calibrated to 2x: table and plot."),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the commands' docstrings as written and shows the options' defaults (those that are set)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-earlyexit",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hf-earlyexit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (module, help_text) in COMMANDS.items():
        if name == "train":  # parsed by its own HfArgumentParser (the TrainingArguments options)
            subparsers.add_parser(name, help=help_text, add_help=False)
            continue
        commands = importlib.import_module(f".commands.{module}", __package__)
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=commands.__doc__,
            formatter_class=HelpFormatter,
        )
        commands.add_arguments(sub)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Runs a command and returns its result dict; usage errors raise [`UsageError`]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .commands import train

        try:
            return train.main(argv[1:], prog="hf-earlyexit train")
        except FileNotFoundError as error:
            raise _usage(str(error)) from None
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(f".commands.{COMMANDS[args.command][0]}", __package__)
    return module.main(args=args)


def _usage(message: str):
    from .commands.common import UsageError

    return UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """The console script: runs a command; returns 0, 2 after printing a usage error, or 1 after printing why the
    command failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    return report_errors(f"hf-earlyexit {command or ''}: error:".replace("  ", " "), run, argv)


def report_errors(prefix: str, command: Callable[[list[str]], object], argv: list[str]) -> int:
    """Runs `command(argv)`; returns 0, 2 after printing a usage error, or 1 after printing why the command failed,
    each as one line `<prefix> <why>` on stderr."""
    from .commands.calibrate import TargetNotReached
    from .commands.common import UsageError

    try:
        command(argv)
    except (UsageError, FileNotFoundError) as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        # the library validates arguments with ValueError (unknown family, recipe, column, exit setting...)
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    except (TargetNotReached, OSError) as error:  # OSError: a file that cannot be written (permissions, full disk)
        print(f"{prefix} {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
