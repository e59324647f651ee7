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
"""Is the converged SST-2 benchmark's calibration slice new to the models, as the dev set is?

SST-2's training file is mostly the labelled phrases of its sentences. The benchmark holds out sentences of the
training file for calibration (`benchmarks/sst2.py`), but their phrases stay in the training set. This script measures
(1) how much of each calibration sentence a training example covers (the longest run of consecutive words of the
sentence that is a training text of its own), against the same for the dev sentences, with and without
`--calibration_exclusive_words` (which drops those phrases from training), and (2) from the benchmark's result
files, what it does to the calibration: the full model's accuracy on the slice against dev, and the FLOPs speed-up
each calibrated setting reaches on dev against the one it was calibrated to reach on the slice.

    python -m benchmarks.calibration_overlap --output benchmarks/results/calibration/overlap.json
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks import sst2
from benchmarks.profile_batch1 import report
from hf_earlyexit.data import load_text_classification


def covered(sentence: str, texts: set[str]) -> float:
    """Share of the sentence's words in its longest run of consecutive words that is one of the `texts`."""
    words = sentence.lower().split()
    longest = 0
    for start in range(len(words)):
        for end in range(len(words), start + longest, -1):
            if " ".join(words[start:end]) in texts:
                longest = end - start
                break
    return longest / max(len(words), 1)


def coverage_row(name: str, sentences: list[str], texts: set[str], dropped: int | None = None) -> dict:
    shares = [covered(sentence, texts) for sentence in sentences]
    return {
        "set": name,
        "sentences": len(shares),
        "median_covered": statistics.median(shares),
        "half_covered": sum(share >= 0.5 for share in shares) / len(shares),
        "training_examples_dropped": dropped,
    }


def overlap(args) -> list[dict]:
    """(1): per seed, the slice as the benchmark draws it, the slice with its phrases dropped from training, dev."""
    texts = load_text_classification(args.train)["text"]
    dev = load_text_classification(args.dev)["text"]
    rows = []
    for seed in args.seeds:
        for words in (0, args.exclusive_words):
            split_args = argparse.Namespace(**{**vars(args), "calibration_exclusive_words": words})
            picked, train = sst2.split(texts, split_args, seed)
            training = {" ".join(texts[i].lower().split()) for i in train}  # the file's texts end in a space
            dropped = len(texts) - len(picked) - len(train)
            name = f"calibration slice, seed {seed}" + (f", phrases of {words}+ words dropped" if words else "")
            rows.append(coverage_row(name, [texts[i] for i in picked], training, dropped))
            if seed == args.seeds[0] and not words:
                rows.append(coverage_row(f"dev (training set of seed {seed})", dev, training))
    return rows


def calibration_shift(results_dir: Path) -> list[dict]:
    """(2): per cell with calibrated points, the full depth's accuracy on the slice and on dev, and the dev FLOPs
    speed-up over the calibrated one (max-prob and entropy points, each distinct setting once)."""
    rows = []
    for path in sorted(results_dir.glob("*.json")):
        cell = json.loads(path.read_text())
        result = cell["result"]
        points = [p for p in result.get("points", []) if p["criterion"] in ("max_prob", "entropy")]
        if not points or "exit_accuracy" not in result:
            continue
        distinct = {json.dumps(p["settings"], sort_keys=True): p for p in points}.values()
        ratios = [p["measured"]["flops_speedup"] / p["calibration"]["flops_speedup"] for p in distinct]
        rows.append(
            {
                "cell": cell["cell"],
                "full_accuracy_calibration": points[0]["calibration"]["full_accuracy"],
                "full_accuracy_dev": result["exit_accuracy"][-1],
                "settings": len(ratios),
                "dev_over_calibrated_speedup": statistics.median(ratios),
                "min_dev_over_calibrated_speedup": min(ratios),
            }
        )
    return rows


def markdown(result: dict) -> str:
    lines = [
        "**How new the calibration sentences are to the models**: per sentence, the share of its words in its longest "
        "run of consecutive words that is a training example of its own (SST-2's training set is mostly its "
        "sentences' phrases):",
        "",
        "| sentences | count | median share covered | covered half or more | training examples dropped |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["overlap"]:
        dropped = "-" if row["training_examples_dropped"] is None else str(row["training_examples_dropped"])
        lines.append(
            f"| {row['set']} | {row['sentences']} | {100 * row['median_covered']:.0f} % | "
            f"{100 * row['half_covered']:.1f} % | {dropped} |"
        )
    shift = result["calibration_shift"]
    if shift:
        ratios = [row["dev_over_calibrated_speedup"] for row in shift]
        lines += [
            "",
            "**What it does to the calibration** (committed cells of the SST-2 benchmark, max-prob and entropy "
            f"settings): the dev FLOPs speed-up is a median {statistics.median(ratios):.2f} of the one calibrated on "
            "the slice:",
            "",
            "| cell | full depth on the slice (%) | full depth on dev (%) | settings | dev / calibrated speed-up "
            "(median) | (lowest) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in shift:
            lines.append(
                f"| {row['cell']} | {100 * row['full_accuracy_calibration']:.2f} | {100 * row['full_accuracy_dev']:.2f}"
                f" | {row['settings']} | {row['dev_over_calibrated_speedup']:.2f} | "
                f"{row['min_dev_over_calibrated_speedup']:.2f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.calibration_overlap", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--train", default="data/sst2/train.tsv")
    parser.add_argument("--dev", default="data/sst2/dev.tsv")
    parser.add_argument("--calibration_size", type=int, default=2000)
    parser.add_argument("--calibration_min_words", type=int, default=12)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--exclusive_words", type=int, default=3, help="`--calibration_exclusive_words` to compare")
    parser.add_argument("--results_dir", default="benchmarks/results/sst2", help="the SST-2 benchmark's cells")
    parser.add_argument("--output", default=None, help="JSON file (a Markdown table is written beside it)")
    args = parser.parse_args(argv)
    args.train_size = 0
    result = {
        "overlap": overlap(args),
        "calibration_shift": calibration_shift(Path(args.results_dir)),
        "command": "python -m benchmarks.calibration_overlap " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    report(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
