"""The multi-process half of tests/test_distributed.py, started by it under
`accelerate launch --multi_gpu --num_processes 2 ... tests/distributed_runner.py PLAN.json` (CPU, gloo).

One launch runs every case of the plan in turn, so the process start-up (seconds) is paid once:

- `runs`: `[name, argv]` pairs for the train command's `main` (through `tests.synthetic_data.train_main`, which takes
  `--synthetic_data`), in order (a stage 2 reads the stage 1 written before it). Every process records what `main`
  returned and which directories it saved a model to.
- `split`: checkpoints on which `record` and `collect` run with `split_across_processes=True`, and, in the same
  process, on all batches without splitting; every process records how many batches its model ran and whether the
  split results equal its own unsplit ones bit for bit. The main process also saves the split results.

- `split_token`: token checkpoints on which `record_token` and `calibrate_token` (whose TOKEE candidates run live) run
  split across the processes and unsplit; every process records how many batches its model ran in each and whether
  the split record and calibration equal the unsplit ones.

Each process writes `rank<i>.json` into the plan's `output_dir`; the main process writes `split_<name>.pt`.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedModel

import hf_earlyexit  # noqa: F401  (registers the Auto classes)
from hf_earlyexit.calibration import calibrate_token, record, record_token
from hf_earlyexit.evaluation import collect
from tests.synthetic_data import synthetic_classification, synthetic_tagging, train_main


COLLECT_FIELDS = ("logits", "exit_layer", "flops")


def batches_of(dataset, size: int, labels: bool = True) -> list[dict]:
    columns = dataset.column_names if labels else [c for c in dataset.column_names if c != "labels"]
    return [
        {name: torch.tensor(dataset[start : start + size][name]) for name in columns}
        for start in range(0, len(dataset), size)
    ]


def count_forwards(model) -> list[int]:
    """A counter of the batches the model's top-level forward ran (an early-exit forward is one call per batch)."""
    counter = [0]
    model.register_forward_pre_hook(lambda module, args: counter.__setitem__(0, counter[0] + 1))
    return counter


def run_split(checkpoint: str, dataset) -> tuple[dict, dict]:
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    calls = count_forwards(model)
    report, tensors = {}, {}
    # 4 batches (4 + 4 + 4 + 1 examples): two per process
    batches = batches_of(dataset, 4)
    split = record(model, batches, split_across_processes=True)
    report["record_batches_run"], calls[0] = calls[0], 0
    local = record(model, batches)
    calls[0] = 0
    report["record_equal"] = all(
        torch.equal(getattr(split, name), getattr(local, name))
        for name in ("all_logits", "labels", "exit_flops", "reference_flops")
    ) and (split.exit_layers, split.full_layers) == (local.exit_layers, local.full_layers)
    tensors["record"] = {"all_logits": split.all_logits, "labels": split.labels, "exit_flops": split.exit_flops}
    # 3 batches (5 + 5 + 3): an uneven share; and 1 batch: a process with nothing to run
    for name, size in (("collect_3_batches", 5), ("collect_1_batch", len(dataset))):
        batches = batches_of(dataset, size, labels=False)
        split = collect(model, batches, COLLECT_FIELDS, split_across_processes=True)
        report[f"{name}_batches_run"], calls[0] = calls[0], 0
        local = collect(model, batches, COLLECT_FIELDS)
        calls[0] = 0
        report[f"{name}_equal"] = all(torch.equal(split[field], local[field]) for field in COLLECT_FIELDS)
        tensors[name] = split
    return report, tensors


def run_token_split(checkpoint: str, dataset) -> dict:
    model = AutoModelForTokenClassification.from_pretrained(checkpoint).eval()
    calls = count_forwards(model)
    batches = batches_of(dataset, 4)  # 4 + 4 + 4 + 1 sentences: two batches per process
    report = {}
    split = record_token(model, batches, split_across_processes=True)
    report["record_batches_run"], calls[0] = calls[0], 0
    local = record_token(model, batches)
    report["record_batches_run_alone"], calls[0] = calls[0], 0
    fields = ("all_logits", "attention_mask", "word_ids", "labels")
    report["record_equal"] = all(torch.equal(getattr(split, name), getattr(local, name)) for name in fields)
    settings = {"target_speedup": 1.3, "exit_mode": "token", "window_sizes": [1, 3], "apply": False}
    split_result = calibrate_token(model, split, **settings)
    report["calibrate_batches_run"], calls[0] = calls[0], 0
    local_result = calibrate_token(model, local, **settings)
    report["calibrate_batches_run_alone"] = calls[0]
    report["calibrate_equal"] = split_result.to_dict() == local_result.to_dict()
    report["verified"] = split_result.verified
    return report


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    output_dir = Path(plan["output_dir"])

    saved_to = []
    save_pretrained = PreTrainedModel.save_pretrained

    def recording_save_pretrained(self, save_directory, *args, **kwargs):
        # our models write into a temporary folder inside the checkpoint folder, then move the files into place
        folder = Path(save_directory)
        saved_to.append(str(folder.parent if folder.name.startswith(".saving-") else folder))
        return save_pretrained(self, save_directory, *args, **kwargs)

    PreTrainedModel.save_pretrained = recording_save_pretrained
    report = {"runs": {}, "split": {}}
    for name, argv in plan["runs"]:
        saved_to.clear()
        results = train_main(argv)
        report["runs"][name] = {**results, "saved_to": list(saved_to)}
    PreTrainedModel.save_pretrained = save_pretrained

    from accelerate import PartialState

    state = PartialState()
    report["process_index"], report["num_processes"] = state.process_index, state.num_processes
    dataset = synthetic_classification(plan["split_examples"], seed=1)
    for name, checkpoint in plan["split"]:
        report["split"][name], tensors = run_split(checkpoint, dataset)
        if state.is_main_process:
            torch.save(tensors, output_dir / f"split_{name}.pt")
    tagging = synthetic_tagging(plan["split_examples"], seed=1)
    report["split_token"] = {name: run_token_split(checkpoint, tagging) for name, checkpoint in plan["split_token"]}
    (output_dir / f"rank{state.process_index}.json").write_text(json.dumps(report, indent=2))
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
