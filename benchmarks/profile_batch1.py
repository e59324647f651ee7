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
"""Where the time of an early-exit forward goes at batch size 1, beyond the FLOPs the speed-up counts.

Each sentence of the sample runs alone through the plain transformers model of the full size and through the
early-exit model (interleaved, several rounds). During the early-exit runs the pieces of the exit loop are timed by
wrapping them (a few hundred nanoseconds per call, included): embeddings, encoder layers, exit heads (bypass and
pooling included), the exit criterion, host synchronisation (`bool(tensor)`, the exit decision the Python loop
branches on), compaction (dropping padding columns, packing TOKEE's active queries and words) and the rest (Python and
small tensor operations of the loop). The table gives milliseconds per sentence and each piece's share, next to the
FLOPs speed-up the same runs count, so the gap between the clock and the FLOPs can be read off.

    python -m benchmarks.profile_batch1 --family bypass --checkpoint runs/sst2/multi_exit-bypass-seed0-.../final \\
        --settings '{"exit_criterion": "max_prob", "exit_threshold": 0.9}' --output benchmarks/results/profile/x.json

Without `--checkpoint` it profiles the backbone with fresh exit heads, with thresholds that never fire (every exit
evaluated): the overhead of the loop itself.
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from hf_earlyexit.evaluation import machine_info


FAMILIES = ("bypass", "cascade", "token")


class Timers:
    """Wall-clock time spent inside wrapped callables, per component, outermost calls only."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._depth = 0

    def wrap(self, component: str, function):
        timers = self

        def timed(*args, **kwargs):
            if timers._depth:  # inside another timed piece: it is that piece's time
                return function(*args, **kwargs)
            timers._depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers.seconds[component] += time.perf_counter() - start
                timers.calls[component] += 1
                timers._depth -= 1

        return timed


@contextlib.contextmanager
def instrumented(family: str, timers: Timers):
    """Wrap the pieces of the family's exit loop (restored on exit)."""
    from transformers.models.bert import modeling_bert

    from hf_earlyexit.models.bert import (
        active_batch,
        backbone_base,
        exit_utils,
        modeling_bypass_bert,
        modeling_cascade_bert,
        modeling_token_exit_bert,
        token_exit_utils,
    )

    patches = [
        (modeling_bert.BertEmbeddings, "forward", "embeddings"),
        (modeling_bert.BertLayer, "forward", "encoder layers"),
        (exit_utils.ExitRule, "step", "exit criterion"),
        (token_exit_utils.ActiveWords, "decide", "exit criterion"),
        (torch.Tensor, "__bool__", "host synchronisation"),
        (modeling_bypass_bert, "drop_padding_columns_of", "compaction"),
        (active_batch.ActiveBatch, "padding_columns", "compaction"),
        (active_batch.ActiveBatch, "drop_rows", "compaction"),
        (backbone_base.EncoderBackbone, "compact", "compaction"),
        (token_exit_utils.ActiveWords, "build", "compaction"),
        (backbone_base.EncoderBackbone, "active_queries", "compaction"),
        (modeling_token_exit_bert, "active_query_layer", "encoder layers, packed (frozen words skipped)"),
        # TOKEE's path for a batch of one sentence
        (backbone_base.EncoderBackbone, "run_layer_active", "encoder layers, packed (frozen words skipped)"),
        (modeling_token_exit_bert, "normalized_entropy", "exit criterion"),
        (token_exit_utils.SentenceWords, "decide", "exit criterion"),
        (token_exit_utils.SentenceWords, "build", "compaction"),
        (token_exit_utils.SentenceWords, "start_rows", "compaction"),
        (modeling_token_exit_bert, "drop_padding_columns_of", "compaction"),
    ]
    if family == "bypass":
        patches.append((modeling_bypass_bert.BertWithBypassExits, "_exit_logits", "exit heads"))
    elif family == "cascade":
        patches.append((modeling_cascade_bert.CascadeMember, "forward", "cascade members"))
        patches.append((modeling_cascade_bert, "_drop_padding", "compaction"))
    else:
        patches.append((modeling_token_exit_bert.BertForTokenEarlyExit, "_head", "exit heads"))
    saved = []
    for owner, name, component in patches:
        # a class's own attribute (so that classmethods stay classmethods), or an inherited one (Tensor.__bool__)
        own = isinstance(owner, type) and name in owner.__dict__
        original = owner.__dict__[name] if own else getattr(owner, name)
        function = original.__func__ if isinstance(original, (classmethod, staticmethod)) else original
        wrapped = timers.wrap(component, function)
        if isinstance(original, classmethod):
            wrapped = classmethod(wrapped)
        elif isinstance(original, staticmethod):
            wrapped = staticmethod(wrapped)
        saved.append((owner, name, original, own or not isinstance(owner, type)))
        setattr(owner, name, wrapped)
    try:
        yield timers
    finally:
        for owner, name, original, own in reversed(saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


def load(args):
    from benchmarks.common import load_tokenizer
    from hf_earlyexit import BertForCascadeClassification, BertForTokenEarlyExit, BertWithBypassExits
    from hf_earlyexit.evaluation import plain_baseline, plain_token_baseline
    from hf_earlyexit.utils import default_backbone

    backbone = args.model or default_backbone()
    source = args.checkpoint or backbone
    tokenizer = load_tokenizer(args.checkpoint, args.tokenizer, backbone)
    if args.family == "bypass":
        model = (
            BertWithBypassExits.from_pretrained(source, num_labels=2)
            if args.checkpoint is None
            else (BertWithBypassExits.from_pretrained(source))
        )
    elif args.family == "cascade":
        if args.checkpoint is None:
            model = BertForCascadeClassification.from_backbone(backbone, member_layers=[1, 6], num_labels=2)
        else:
            model = BertForCascadeClassification.from_pretrained(source)
    else:
        model = BertForTokenEarlyExit.from_pretrained(source, **({"num_labels": 9} if args.checkpoint is None else {}))
    model.eval()
    reference = plain_token_baseline(model) if args.family == "token" else plain_baseline(model)
    return model, reference.eval(), tokenizer


def default_data(family: str) -> str:
    """SST-2 dev (in the repository) or CoNLL-2003 validation (in the shared data beside it)."""
    root = Path(__file__).resolve().parent.parent
    return str(root.parent / "shared/data/conll2003/valid.txt" if family == "token" else root / "data/sst2/dev.tsv")


def sentences(args) -> list:
    """Real sentences: SST-2 dev (classification) or CoNLL-2003 validation words (tagging)."""
    if args.family == "token":
        from hf_earlyexit.data import read_conll

        return read_conll(args.data, limit=args.sentences)["tokens"]
    from hf_earlyexit.data import load_text_classification

    # the first sentences of the dev file, as the benchmarks time them
    return load_text_classification(args.data)["text"][: args.sentences]


def encode(tokenizer, family: str, items) -> list[dict]:
    if family != "token":
        return [dict(tokenizer(text, return_tensors="pt")) for text in items]
    from hf_earlyexit.models.bert.token_exit_utils import encode_words

    return [dict(encode_words(tokenizer, [words], return_tensors="pt")) for words in items]


def profile(args) -> dict:
    torch.set_num_threads(args.threads)
    model, reference, tokenizer = load(args)
    if args.treatment != "fp32":
        from benchmarks.compose import treat

        model, reference = treat(model, args.treatment), treat(reference, args.treatment)
    batches = encode(tokenizer, args.family, sentences(args))
    settings = (
        json.loads(args.settings) if args.settings else {"exit_threshold": 1.0 if args.family != "token" else 0.0}
    )
    plain_inputs = [{k: v for k, v in batch.items() if k != "word_ids"} for batch in batches]

    def run_model():
        flops = reference_flops = 0
        for batch in batches:
            out = model(**batch, **settings)
            flops += int(out.flops.sum())
            lengths = batch["attention_mask"].sum(-1)
            reference_flops += int(model.reference_flops(lengths).sum()) if hasattr(model, "reference_flops") else 0
        return flops, reference_flops

    def run_reference():
        for batch in plain_inputs:
            reference(**batch)

    with torch.inference_mode():
        run_model(), run_reference()  # warm-up
        plain_times, model_times, breakdowns, calls = [], [], [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            run_reference()
            plain_times.append(time.perf_counter() - start)
            timers = Timers()
            with instrumented(args.family, timers):
                start = time.perf_counter()
                flops, reference_flops = run_model()
                model_times.append(time.perf_counter() - start)
            breakdowns.append(dict(timers.seconds))
            calls.append(dict(timers.calls))
    count = len(batches)
    total = statistics.median(model_times)
    components = {}
    for name in sorted({name for b in breakdowns for name in b}):
        components[name] = 1000 * statistics.median(b.get(name, 0.0) for b in breakdowns) / count
    calls_per_sentence = {name: calls[0].get(name, 0) / count for name in components}  # the same in every round
    components["rest (Python, small ops of the loop)"] = 1000 * total / count - sum(components.values())
    plain = statistics.median(plain_times)
    return {
        "family": args.family,
        "checkpoint": args.checkpoint and "/".join(Path(args.checkpoint).parts[-2:]),  # e.g. `<run>/final`
        "label": args.label,
        "settings": settings,
        "treatment": args.treatment,
        "sentences": count,
        "rounds": args.rounds,
        "ms_per_sentence": {"plain": 1000 * plain / count, "early_exit": 1000 * total / count},
        "components_ms": components,
        "calls_per_sentence": calls_per_sentence,
        "wallclock_speedup": plain / total,
        "flops_speedup": reference_flops / flops if flops else None,
        "machine": machine_info(),
        "command": "python -m benchmarks.profile_batch1 " + " ".join(sys.argv[1:]),
    }


def markdown(result: dict) -> str:
    per_sentence = result["ms_per_sentence"]["early_exit"]
    lines = [
        (f"**{result['label']}**: " if result.get("label") else "")
        + f"{result['family']} ({result['checkpoint'] or 'fresh heads'}), {result['settings']}"
        + (f", {result['treatment']}" if result.get("treatment", "fp32") != "fp32" else "")
        + ": "
        f"{result['sentences']} sentences at batch size 1, FLOPs speed-up {result['flops_speedup']:.2f}x, wall-clock "
        f"{result['wallclock_speedup']:.2f}x (plain {result['ms_per_sentence']['plain']:.2f} ms, early exit "
        f"{per_sentence:.2f} ms per sentence)",
        "",
        "| component | ms per sentence | share | calls per sentence | ms per call |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    calls = result.get("calls_per_sentence", {})
    for name, ms in sorted(result["components_ms"].items(), key=lambda item: -item[1]):
        count = calls.get(name)
        per_call = f"{count:.2f} | {ms / count:.3f}" if count else "- | -"
        lines.append(f"| {name} | {ms:.3f} | {100 * ms / per_sentence:.1f} % | {per_call} |")
    return "\n".join(lines)


def report(result: dict, table: str, output: str | None) -> None:
    """Prints the Markdown table; with `output`, writes the result there as JSON and the table beside it (`.md`)."""
    print(table)
    if output:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1) + "\n")
        output.with_suffix(".md").write_text(table + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_batch1", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--checkpoint", default=None, help="a trained early-exit checkpoint (default: fresh heads)")
    parser.add_argument("--model", default=None, help="backbone when no checkpoint is given (default: embedded)")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer path or id (default: the checkpoint's, else the backbone's)"
    )
    parser.add_argument("--settings", default=None, help="forward exit settings as JSON (default: never exit)")
    parser.add_argument("--data", default=None, help="SST-2 dev TSV or CoNLL validation file")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    from benchmarks.compose import TREATMENTS  # compose builds on this module: imported once both are loaded

    parser.add_argument(
        "--treatment",
        choices=TREATMENTS,
        default="fp32",
        help="run both models under it (as benchmarks/compose.py does): where the time goes with int8 weights, ...",
    )
    parser.add_argument("--output", default=None, help="JSON file to write (a .md beside it)")
    parser.add_argument("--label", default=None, help="what this run measures (e.g. the code version), shown first")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = default_data(args.family)
    result = profile(args)
    report(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
