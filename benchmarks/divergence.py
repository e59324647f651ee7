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
"""Why the divergence criterion (BADGE's DGE) trails max-prob and entropy: which examples each one lets leave.

For a trained multi-exit model, every exit's logits on the dev sentences are computed once. At each exit `i > 1` and
for several fractions `f`, each criterion ranks the examples by its own score (max-prob of `p_i`, entropy of `p_i`,
the divergence `D(p_i, p_{i-1})` between consecutive exits) and lets the `f` most exit-worthy leave there. The table
compares what those examples get: the accuracy of exit `i` on them, how often exit `i` already agrees with the last
exit, and how confident exit `i` is on them (its mean max-prob, and the share below 0.6). A criterion that measures
stability rather than confidence lets examples leave whose consecutive exits agree on an unsure answer.

    python -m benchmarks.divergence --checkpoint outputs/quickstart/badge --output benchmarks/results/divergence/x.json
"""

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.common import load_tokenizer
from benchmarks.profile_batch1 import default_data, report
from hf_earlyexit.models.bert.exit_utils import divergence, entropy, max_prob
from hf_earlyexit.timing import machine_info


def all_exit_logits(model, tokenizer, texts, batch_size: int = 64) -> torch.Tensor:
    """`(num_exits, num_examples, num_labels)`: every exit's logits."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True, return_tensors="pt")
            chunks.append(model(**batch, output_all_exits=True).all_logits)
    return torch.cat(chunks, dim=1)


def scores(all_logits: torch.Tensor, exit_index: int, measure: str) -> dict[str, torch.Tensor]:
    """Each criterion's score at `exit_index`, oriented so that higher means "leave now"."""
    logits = all_logits[exit_index]
    return {
        "max_prob": max_prob(logits),
        "entropy": -entropy(logits),
        f"divergence ({measure})": -divergence(logits, all_logits[exit_index - 1], measure),
    }


def compare(all_logits: torch.Tensor, labels: torch.Tensor, fractions, measure: str) -> list[dict]:
    final = all_logits[-1].argmax(-1)
    rows = []
    for exit_index in range(1, all_logits.shape[0] - 1):
        predictions = all_logits[exit_index].argmax(-1)
        confidence = max_prob(all_logits[exit_index])
        for fraction in fractions:
            count = max(1, round(fraction * len(labels)))
            for criterion, score in scores(all_logits, exit_index, measure).items():
                chosen = score.topk(count).indices
                rows.append(
                    {
                        "exit": exit_index + 1,
                        "fraction": fraction,
                        "criterion": criterion,
                        "accuracy": float((predictions[chosen] == labels[chosen]).float().mean()),
                        "agrees_with_last_exit": float((predictions[chosen] == final[chosen]).float().mean()),
                        "mean_max_prob": float(confidence[chosen].mean()),
                        "share_below_0.6": float((confidence[chosen] < 0.6).float().mean()),
                    }
                )
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"Which examples each criterion lets leave ({result['checkpoint']}, {result['sentences']} SST-2 dev sentences; "
        f"at each exit the given fraction with the best score under each criterion):",
        "",
        "| exit | fraction | criterion | accuracy at this exit | agrees with last exit | mean max-prob | max-prob < 0.6 |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['exit']} | {row['fraction']:.2f} | {row['criterion']} | {100 * row['accuracy']:.2f} | "
            f"{100 * row['agrees_with_last_exit']:.2f} | {row['mean_max_prob']:.3f} | "
            f"{100 * row['share_below_0.6']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.divergence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained multi-exit (BertWithBypassExits) checkpoint")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer path or id (default: the checkpoint's, else the embedded backbone's)",
    )
    parser.add_argument("--data", default=None, help="SST-2 dev TSV (default: data/sst2/dev.tsv)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--measure", default=None, help="divergence measure (default: the checkpoint's)")
    parser.add_argument("--output", default=None, help="JSON file (a Markdown table is written beside it)")
    args = parser.parse_args(argv)
    if not all(0.0 < fraction <= 1.0 for fraction in args.fractions):
        parser.error(f"--fractions: each must be in (0, 1], got {args.fractions}")

    from hf_earlyexit import BertWithBypassExits
    from hf_earlyexit.data import load_text_classification

    model = BertWithBypassExits.from_pretrained(args.checkpoint).eval()
    tokenizer = load_tokenizer(args.checkpoint, args.tokenizer)
    data = load_text_classification(args.data or default_data("bypass"))
    measure = args.measure or model.config.divergence
    all_logits = all_exit_logits(model, tokenizer, data["text"])
    result = {
        "checkpoint": Path(args.checkpoint).name,
        "sentences": len(data),
        "measure": measure,
        "rows": compare(all_logits, torch.tensor(data["label"]), args.fractions, measure),
        "machine": machine_info(),
        "command": "python -m benchmarks.divergence " + " ".join(sys.argv[1:]),
    }
    report(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
