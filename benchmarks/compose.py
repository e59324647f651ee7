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
"""Does early exit still pay on top of int8, bf16 and torch.compile? Plain vs early exit under each treatment.

Each treatment is applied alike to the early-exit model (with the exit settings its config was calibrated to, or
`--settings`, e.g. a converged benchmark's calibrated point) and to the plain transformers model of the full size with
the same weights, and the two are timed side by side (interleaved, medians over rounds) at batch size 1 and 32 on the
same real sentences:

- `fp32`: as trained;
- `int8`: `torch.ao` dynamic quantization of every linear layer (`quantize_dynamic(model, {nn.Linear}, qint8)`);
- `int8_layers`: the same for the linear layers inside the encoder layers only (`hf_earlyexit.quantize_layers`), the
  exit heads (and the plain model's classifier) left in fp32;
- `bf16`: bf16 weights (`model.to(torch.bfloat16)`, what `from_pretrained(..., dtype=torch.bfloat16)` loads);
- `compiled`: `hf_earlyexit.compile_layers` for the early-exit model, the encoder layers of the plain model compiled
  the same way.

For each it reports the wall-clock speed-up of early exit over the plain model, the FLOPs speed-up it counted, the
accuracy (token accuracy for the token model) of the early-exit model at full depth and with early exit, and how often the early-exit model takes the same exit with the same prediction
as under fp32.

    python -m benchmarks.compose --family bypass --checkpoint outputs/quickstart/badge \\
        --output benchmarks/results/compose/badge.json
"""

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.profile_batch1 import FAMILIES, default_data, load, report, sentences
from hf_earlyexit.acceleration import compile_layers, quantize_layers
from hf_earlyexit.timing import forward_one, interleaved_batch_latency, machine_info


TREATMENTS = ("fp32", "int8", "int8_layers", "bf16", "compiled")


def treat(model: nn.Module, treatment: str) -> nn.Module:
    """A copy of `model` under `treatment` (the original is left as it is)."""
    if treatment == "int8":
        with warnings.catch_warnings():  # torch 2.13 announces the deprecation of torch.ao's quantized tensors
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    model = copy.deepcopy(model)
    if treatment == "int8_layers":
        return quantize_layers(model)
    if treatment == "bf16":
        return model.to(torch.bfloat16)
    if treatment == "compiled":
        return compile_layers(model)
    return model


def padded_batches(tokenizer, family: str, items, batch_size: int) -> list[dict]:
    """Consecutive groups of `batch_size` items, padded to their longest (as a server's batcher would form them)."""
    from hf_earlyexit.models.bert.token_exit_utils import encode_words

    batches = []
    for start in range(0, len(items), batch_size):
        group = list(items[start : start + batch_size])
        if family == "token":
            batches.append(dict(encode_words(tokenizer, group, return_tensors="pt")))
        else:
            batches.append(dict(tokenizer(group, padding=True, return_tensors="pt")))
    return batches


def word_starts(batch: dict) -> torch.Tensor:
    """`(batch, seq)` True at the first word-piece of each word: one prediction per word, as the gold tags count them."""
    from hf_earlyexit.models.bert.token_exit_utils import word_layout

    return word_layout(batch["attention_mask"], batch["word_ids"])[1]


def decisions(model, batches, family: str, settings: dict) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Exit layers and predictions (flattened over words, at their first word-piece, for tokens) under the exit `settings`, and the FLOPs spent
    / of the full model."""
    exits, predictions, spent, full = [], [], 0.0, 0.0
    with torch.inference_mode():
        for batch in batches:
            out = model(**batch, **settings)
            if family == "token":
                words = word_starts(batch)
                exits.append(out.exit_layer[words])
                predictions.append(out.logits.argmax(-1)[words])
            else:
                exits.append(out.exit_layer)
                predictions.append(out.logits.argmax(-1))
            spent += float(out.flops.sum())
            full += float(model.reference_flops(batch["attention_mask"].sum(-1)).sum())
    return torch.cat(exits), torch.cat(predictions), spent, full


def full_depth_predictions(model, batches, family: str) -> torch.Tensor:
    """Predictions of the model at full depth (`early_exit=False`), flattened over words for tokens."""
    predictions = []
    with torch.inference_mode():
        for batch in batches:
            logits = model(**batch, early_exit=False).logits
            predictions.append(logits.argmax(-1)[word_starts(batch)] if family == "token" else logits.argmax(-1))
    return torch.cat(predictions)


def labels_of(args, family: str, count: int) -> torch.Tensor | None:
    """Gold labels of the sample (SST-2 labels; CoNLL tags as the token model's label ids), `None` when unknown."""
    if family == "token":
        from hf_earlyexit.data import read_conll

        data = read_conll(args.data, limit=count)
        names = data.features["tags"].feature.names if "tags" in data.features else None
        return torch.tensor([tag for tags in data["tags"] for tag in tags]) if names else None
    from hf_earlyexit.data import load_text_classification

    data = load_text_classification(args.data)
    return torch.tensor(data["label"][:count]) if "label" in data.column_names else None


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    model, reference, tokenizer = load(args)
    settings = json.loads(args.settings) if args.settings else {}
    items = sentences(args)
    gold = labels_of(args, args.family, len(items))
    timing = {size: padded_batches(tokenizer, args.family, items, size) for size in args.batch_sizes}
    scoring = timing[max(args.batch_sizes)]
    rows, base_exits, base_predictions = [], None, None
    for treatment in args.treatments:
        early, plain = treat(model, treatment), treat(reference, treatment)
        start = time.perf_counter()
        exits, predictions, spent, full = decisions(early, scoring, args.family, settings)  # compiles, for `compiled`
        full_pred = full_depth_predictions(early, scoring, args.family)
        warmup_s = time.perf_counter() - start
        if gold is not None and gold.numel() != predictions.numel():
            raise ValueError(
                f"{predictions.numel()} predictions for {gold.numel()} gold labels: some sentences were truncated "
                "(the tokenizer's limit); give shorter sentences or fewer (--sentences)"
            )
        if base_exits is None:
            base_exits, base_predictions = exits, predictions
        row = {
            "treatment": treatment,
            "flops_speedup": full / spent,
            "agreement_with_fp32": float(((exits == base_exits) & (predictions == base_predictions)).float().mean()),
            "accuracy": None if gold is None else float((predictions == gold).float().mean()),
            "full_depth_accuracy": None if gold is None else float((full_pred == gold).float().mean()),
            "warmup_s": warmup_s,
            **({"words": predictions.numel()} if args.family == "token" else {}),
            "wallclock_speedup": {},
            "ms_per_example": {},
            "plain_ms_per_example": {},
        }
        for size, batches in timing.items():
            # the plain model gets the same batch without the token model's word alignment
            plain_inputs = {id(batch): {k: v for k, v in batch.items() if k != "word_ids"} for batch in batches}
            run_plain, run_early = forward_one(plain), forward_one(early, **settings)
            times = interleaved_batch_latency(
                {
                    "plain": lambda batch, run=run_plain, inputs=plain_inputs: run(inputs[id(batch)]),
                    "early_exit": run_early,
                },
                batches,
                args.rounds,
            )
            row["wallclock_speedup"][str(size)] = times["plain"]["median_s"] / times["early_exit"]["median_s"]
            row["ms_per_example"][str(size)] = 1000 * times["early_exit"]["median_s"] / len(items)
            row["plain_ms_per_example"][str(size)] = 1000 * times["plain"]["median_s"] / len(items)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    fp32 = next((row for row in rows if row["treatment"] == "fp32"), None)
    for row in rows:  # the early-exit speed-up under a treatment, relative to its fp32 value
        row["speedup_vs_fp32"] = (
            {size: value / fp32["wallclock_speedup"][size] for size, value in row["wallclock_speedup"].items()}
            if fp32
            else None
        )
    return {
        "family": args.family,
        "checkpoint": args.checkpoint and "/".join(Path(args.checkpoint).parts[-2:]),  # e.g. `<run>/final`
        "settings": settings or "the checkpoint's config",
        "sentences": len(items),
        "rounds": args.rounds,
        "threads": args.threads,
        "rows": rows,
        "machine": machine_info(),
        "command": "python -m benchmarks.compose " + " ".join(sys.argv[1:]),
    }


def markdown(result: dict) -> str:
    settings = result.get("settings", "the checkpoint's config")
    sizes = list(result["rows"][0]["wallclock_speedup"])
    header = " | ".join(f"wall-clock b{size} (vs fp32)" for size in sizes)
    lines = [
        f"{result['family']} ({result['checkpoint']}, settings: {settings}): {result['sentences']} sentences, {result['rounds']} rounds, "
        f"{result['threads']} threads, {result['machine']['processor']}",
        "",
        f"| treatment | FLOPs speed-up | {header} | ms/example b{sizes[0]} plain → early exit | accuracy full depth → early exit "
        "| same exit and prediction as fp32 |",
        "| --- | ---: |" + " ---: |" * len(sizes) + " ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        cells = " | ".join(
            f"{row['wallclock_speedup'][size]:.2f}x ({row['speedup_vs_fp32'][size]:.2f})" for size in sizes
        )
        first = sizes[0]
        accuracy = (
            f"{100 * row['full_depth_accuracy']:.2f} → {100 * row['accuracy']:.2f}"
            if row["accuracy"] is not None
            else "n/a"
        )
        lines.append(
            f"| {row['treatment']} | {row['flops_speedup']:.2f}x | {cells} | {row['plain_ms_per_example'][first]:.2f} → "
            f"{row['ms_per_example'][first]:.2f} | {accuracy} | {100 * row['agreement_with_fp32']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--checkpoint", required=True, help="a trained and calibrated early-exit checkpoint")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer path or id (default: the checkpoint's, else the backbone's)"
    )
    parser.add_argument(
        "--data", default=None, help="SST-2 dev TSV or CoNLL validation file (default: the shared data)"
    )
    parser.add_argument(
        "--settings",
        default=None,
        help="exit settings of every forward call, as JSON (e.g. a benchmark's calibrated point; default: the "
        "checkpoint's config)",
    )
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--treatments", nargs="+", choices=TREATMENTS, default=list(TREATMENTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="JSON file (a Markdown table is written beside it)")
    args = parser.parse_args(argv)
    if args.treatments[0] != "fp32":
        parser.error("--treatments: the first treatment must be fp32 (the others are compared with it)")
    if args.data is None:
        args.data = default_data(args.family)
    result = measure(args)
    report(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
