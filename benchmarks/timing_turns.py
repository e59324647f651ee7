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
"""How often the timed models take turns changes the wall-clock speed-up at batch size 1.

`hf_earlyexit.timing.interleaved_batch_latency` times the early-exit model against the plain one on the same batches,
the two taking turns every block of examples. This script measures the early-exit speed-up of one checkpoint at batch
size 1 with turns every `--blocks` sentences (1: every sentence; the sample size: one block each), so the choice of
the benchmarks' block (32) can be checked:

    python -m benchmarks.timing_turns --checkpoint runs/sst2/multi_exit-bypass-seed0-.../final \\
        --settings '{"exit_criterion": "max_prob", "exit_threshold": 0.76}' --output benchmarks/results/timing/x.json
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from benchmarks.profile_batch1 import report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timing_turns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained multi-exit or cascade checkpoint")
    parser.add_argument("--tokenizer", default=None, help="default: the checkpoint's, else the embedded backbone's")
    parser.add_argument("--settings", default="{}", help="forward exit settings as JSON")
    parser.add_argument("--data", default="data/sst2/dev.tsv", help="SST-2 dev TSV")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 8, 32, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="JSON file (a Markdown table is written beside it)")
    args = parser.parse_args(argv)
    if min(args.blocks) < 1 or args.sentences < 1 or args.rounds < 1:
        parser.error("--blocks, --sentences and --rounds must be positive")

    from transformers import AutoModel

    from benchmarks.common import load_tokenizer
    from hf_earlyexit.data import load_text_classification
    from hf_earlyexit.evaluation import forward_one, interleaved_batch_latency, plain_baseline, timed_flops_speedup
    from hf_earlyexit.timing import machine_info

    torch.set_num_threads(args.threads)
    model = AutoModel.from_pretrained(args.checkpoint).eval()
    reference = plain_baseline(model).eval()
    tokenizer = load_tokenizer(args.checkpoint, args.tokenizer)
    texts = load_text_classification(args.data)["text"][: args.sentences]
    batches = [dict(tokenizer(text, return_tensors="pt")) for text in texts]
    settings = json.loads(args.settings)
    runs = {"reference": forward_one(reference), "model": forward_one(model, **settings)}
    speedups = {}
    for block in args.blocks:
        times = interleaved_batch_latency(runs, batches, args.rounds, block_examples=block)
        speedups[str(block)] = [r / m for r, m in zip(times["reference"]["rounds"], times["model"]["rounds"])]
    result = {
        "checkpoint": Path(args.checkpoint).name,
        "settings": settings,
        "sentences": len(batches),
        "flops_speedup": timed_flops_speedup(model, {1: batches}, **settings)["1"],
        "wallclock_speedup_per_round": speedups,
        "machine": machine_info(),
        "command": "python -m benchmarks.timing_turns " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    report(result, markdown(result), args.output)
    return result


def markdown(result: dict) -> str:
    flops = result["flops_speedup"]
    lines = [
        f"`{result['checkpoint']}`, {result['settings']}: {result['sentences']} sentences at batch size 1, FLOPs "
        f"speed-up {flops:.2f}x; the models take turns every block of N sentences:",
        "",
        "| N | wall-clock speed-up (median of rounds) | rounds | over the FLOPs speed-up |",
        "| ---: | ---: | --- | ---: |",
    ]
    for block, values in result["wallclock_speedup_per_round"].items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.2f}x" for v in values)
        lines.append(f"| {block} | {median:.2f}x | {rounds} | {median / flops:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
