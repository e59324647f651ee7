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
"""`hf-earlyexit predict`: classify texts with an early-exit checkpoint; one JSON line per text with its label, the
probability of that label (`score`) and the layer it left the model at (`exit_layer`, cumulative for a cascade).

With a token model (token family) each line holds the text's entities instead, each with its label
(`entity_group`), words, character span, score and exit layer.

Texts come from the arguments, from `--file` (one per line) or, when neither is given, from standard input:

    hf-earlyexit predict --model runs/bypass "a gripping film" "a tedious mess"
    cat reviews.txt | hf-earlyexit predict --model runs/bypass --exit_threshold 0.8
"""

import argparse
import json
from pathlib import Path

import torch

from ..families import family_of
from .common import (
    DEFAULT_MAX_SEQ_LENGTH,
    UsageError,
    add_tokenizer_argument,
    decode_text,
    input_length,
    label_names,
    load_checkpoint,
    positive_int,
    read_standard_input,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="Texts to classify (default: --file, else standard input).")
    parser.add_argument("--model", required=True, help="An early-exit checkpoint (any family).")
    add_tokenizer_argument(parser)
    parser.add_argument("--file", default=None, help="A text file with one text per line.")
    parser.add_argument(
        "--exit_threshold",
        default=None,
        help="Override the threshold: one number, or one per exit separated by commas (e.g. 0.9,0.8).",
    )
    parser.add_argument("--exit_criterion", default=None, help="Override the exit criterion.")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="Texts per forward pass.")
    parser.add_argument(
        "--max_seq_length",
        type=positive_int,
        default=DEFAULT_MAX_SEQ_LENGTH,
        help="Word-pieces per text at most (capped at the model's positions).",
    )


def read_texts(args) -> list[str]:
    if args.texts and args.file:
        raise UsageError("give texts as arguments or `--file`, not both.")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"`--file` {path}: no such file.")
        lines = decode_text(path.read_bytes(), f"`--file` {path}").splitlines()
    elif args.texts:
        lines = [decode_text(text, f"text argument {i + 1}") for i, text in enumerate(args.texts)]
    else:
        lines = read_standard_input().splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UsageError("no text to classify: pass texts as arguments, `--file`, or lines on standard input.")
    return texts


@torch.inference_mode()
def predict(model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128, **settings):
    """`[{"text", "label", "score", "exit_layer"}]` for `texts`, in order."""
    names = label_names(model)
    rows = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        inputs = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = model(**inputs, **settings)
        probs = out.logits.float().softmax(-1)
        score, index = probs.max(-1)
        for text, i, p, layer in zip(chunk, index.tolist(), score.tolist(), out.exit_layer.tolist()):
            rows.append({"text": text, "label": names[i], "score": round(p, 6), "exit_layer": int(layer)})
    return rows


def predict_entities(
    model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int | None = None, **settings
):
    """`[{"text", "entities": [{"entity_group", "word", "start", "end", "score", "exit_layer"}]}]` for `texts`, in
    order: the token-classification pipeline with the exit settings, entities grouped (`aggregation_strategy="simple"`),
    each with the deepest exit layer among its word-pieces. Texts are truncated to `max_length` word-pieces (default:
    the tokenizer's `model_max_length`)."""
    import copy

    from transformers import pipeline

    if max_length is not None:  # the pipeline truncates to the tokenizer's maximum: a copy with this one
        tokenizer = copy.copy(tokenizer)
        tokenizer.model_max_length = max_length

    tagger = pipeline(
        "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple", **settings
    )
    rows = []
    for text, entities in zip(texts, tagger(texts, batch_size=batch_size)):
        keys = ("entity_group", "word", "start", "end", "score", "exit_layer")
        found = [{key: entity[key] for key in keys} for entity in entities]
        for entity in found:
            entity["score"] = round(float(entity["score"]), 6)
            entity["exit_layer"] = int(entity["exit_layer"])
        rows.append({"text": text, "entities": found})
    return rows


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> dict:
    if args is None:
        parser = argparse.ArgumentParser(prog="hf-earlyexit predict", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    texts = read_texts(args)
    model, tokenizer = load_checkpoint(args.model, token_models=True, tokenizer=args.tokenizer)
    tagging = family_of(model).is_token
    settings = {}
    if args.exit_criterion is not None and tagging:
        raise UsageError("`--exit_criterion` is for text classifiers; a token model exits on its uncertainty.")
    if args.exit_criterion is not None:
        settings["exit_criterion"] = args.exit_criterion
    if args.exit_threshold is not None:
        try:
            threshold = [float(value) for value in args.exit_threshold.split(",")]
        except ValueError:
            raise UsageError(
                f"`--exit_threshold` takes a number or numbers separated by commas, got {args.exit_threshold!r}."
            ) from None
        settings["exit_threshold"] = threshold[0] if len(threshold) == 1 else threshold
    if settings:
        try:
            model.config.exit_rule(**settings)
        except ValueError as error:
            raise UsageError(str(error)) from None
    max_length = input_length(args.max_seq_length, model, tokenizer)
    if tagging:
        rows = predict_entities(model, tokenizer, texts, args.batch_size, max_length, **settings)
    else:
        rows = predict(model, tokenizer, texts, args.batch_size, max_length, **settings)
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    return {"predictions": rows}
