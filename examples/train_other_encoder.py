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
"""An early-exit family on an encoder other than BERT, end to end: start from a plain checkpoint of the architecture
(RoBERTa by default), train the exits on SST-2, calibrate them to a FLOPs speed-up, measure, save, and reload the saved
model in a pipeline.

    python examples/train_other_encoder.py --model FacebookAI/roberta-base --output_dir runs/roberta-badge
    python examples/train_other_encoder.py --model answerdotai/ModernBERT-base --family cascade --output_dir runs/mb

`--family bypass` builds `EncoderWithBypassExits` (an exit after every layer, BADGE bypasses, joint recipe);
`--family cascade` cuts `CascadeForSequenceClassification` members from the checkpoint (its first layer and all of it,
difficulty-aware recipe). Both are the library's BERT-named classes under their architecture-neutral names: the
encoder is read from the checkpoint's config.

Outputs (in `--output_dir`): the calibrated model with its tokenizer, and `train_other_encoder.json` (what `main`
returns: the encoder, training, calibration, full-depth and calibrated accuracy and FLOPs speed-up on the dev set, and
whether the reloaded pipeline answers as the trained model).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, DataCollatorWithPadding, pipeline, set_seed

from hf_earlyexit import (
    CascadeForSequenceClassification,
    EarlyExitTrainer,
    EarlyExitTrainingArguments,
    EncoderWithBypassExits,
)
from hf_earlyexit.calibration import calibrate
from hf_earlyexit.data import SST2_LABEL_NAMES, load_text_classification
from hf_earlyexit.evaluation import make_batches, measure_points


SST2 = Path(__file__).resolve().parent.parent / "data" / "sst2"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="FacebookAI/roberta-base", help="a plain checkpoint of a supported encoder")
    parser.add_argument("--family", choices=("bypass", "cascade"), default="bypass")
    parser.add_argument("--train_file", default=str(SST2 / "train.tsv"))
    parser.add_argument("--dev_file", default=str(SST2 / "dev.tsv"))
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_size", type=int, default=2000)
    parser.add_argument("--calibration_size", type=int, default=500, help="held-out training sentences")
    parser.add_argument("--dev_size", type=int, default=0, help="0: the whole dev set")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--head_learning_rate", type=float, default=2e-4)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--target_speedup", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build(args, num_labels: int):
    id2label = dict(enumerate(SST2_LABEL_NAMES))
    if args.family == "bypass":
        return EncoderWithBypassExits.from_pretrained(args.model, num_labels=num_labels, id2label=id2label)
    depth = AutoConfig.from_pretrained(args.model).num_hidden_layers
    cascade = CascadeForSequenceClassification.from_backbone(
        args.model, member_layers=[1, depth], num_labels=num_labels
    )
    cascade.config.id2label, cascade.config.label2id = id2label, {name: i for i, name in id2label.items()}
    return cascade


def with_labels(batches: list[dict], labels: list[int]) -> list[dict]:
    out, start = [], 0
    for batch in batches:
        rows = batch["input_ids"].shape[0]
        out.append(dict(batch, labels=torch.tensor(labels[start : start + rows])))
        start += rows
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_text_classification(args.train_file, label_names=list(SST2_LABEL_NAMES))
    data = data.shuffle(seed=args.seed).select(range(min(len(data), args.train_size + args.calibration_size)))
    train = data.select(range(args.train_size))
    held_out = data.select(range(args.train_size, len(data)))  # never trained on: the thresholds are chosen here
    dev = load_text_classification(args.dev_file, label_names=list(SST2_LABEL_NAMES))
    if args.dev_size:
        dev = dev.select(range(min(args.dev_size, len(dev))))

    model = build(args, num_labels=len(SST2_LABEL_NAMES))
    # a cascade: DAR's difficulty labels come from the small member's errors after a warm-up of half the training
    recipe = {"dar_warmup_epochs": args.epochs / 2} if args.family == "cascade" else {}
    training_args = EarlyExitTrainingArguments(
        output_dir=str(output_dir / "trainer"),
        exit_recipe="joint" if args.family == "bypass" else "difficulty_aware",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        warmup_steps=0.1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
        **recipe,
    )
    train_set = train.map(
        lambda rows: tokenizer(rows["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
    ).rename_column("label", "labels")
    trainer = EarlyExitTrainer(
        model,
        training_args,
        train_dataset=train_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trained = trainer.train()
    model.eval()

    calibration_batches = with_labels(
        make_batches(tokenizer, held_out, args.batch_size, args.max_length), held_out["label"]
    )
    calibration = calibrate(model, calibration_batches, target_speedup=args.target_speedup)
    dev_batches = make_batches(tokenizer, dev, args.batch_size, args.max_length)
    points = measure_points(
        model, [("full model", {"early_exit": False}), ("calibrated", {})], dev_batches, torch.tensor(dev["label"])
    )

    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    sentences = dev["text"][:16]
    with torch.no_grad():
        expected = model(**tokenizer(sentences, padding=True, truncation=True, return_tensors="pt"))
    answers = pipeline("text-classification", model=str(output_dir))(sentences, batch_size=8)
    results = {
        "model": args.model,
        "encoder": model.config.encoder_model_type
        if args.family == "bypass"
        else model.config.members[0]["model_type"],
        "family": args.family,
        "model_class": type(model).__name__,
        "train": {"steps": trained.global_step, "loss": round(trained.training_loss, 4)},
        "calibration": {
            "target_speedup": args.target_speedup,
            "reached": calibration.reached,
            "settings": calibration.settings,
        },
        "dev": {point.method: point.to_dict() for point in points},
        "pipeline_matches_model": [answer["label"] for answer in answers]
        == [model.config.id2label[int(i)] for i in expected.logits.argmax(-1)],
    }
    (output_dir / "train_other_encoder.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=str))
