"""Multi-process training and evaluation (DDP over gloo on CPU) against single-process runs.

Marked `distributed`: the module launches real processes, once, with the documented launcher,
`accelerate launch --multi_gpu --num_processes 2 ... --use_cpu` (see examples/train.py for why not `--cpu`), and
compares them with single-process runs of the same cases in this process, at the same global batch, data order, seeds,
and with dropout off (the tiny model has none). Deselect with `-m "not distributed"`.

Every (family, recipe) pair of `CASES` is trained both ways; a family or recipe added later joins by adding its line.

Tolerance of the loss curves. Both runs do the same arithmetic except for how the global batch's gradient is summed:
one process averages 16 per-example gradients, two processes average 8 each and DDP averages the two results. That
changes float32 rounding only, by about 1e-7 of the magnitude of the terms summed; Adam could amplify it only for
coordinates whose gradient is near its `eps`. Measured over these 6 steps: at most 1.9e-7 relative for the
cross-entropy recipes, and 1.6e-8 absolute (1.8e-6 relative) for distillation's stage 2, whose loss is a KL of about
0.01, a small difference of larger terms. `LOSS_RTOL = 2e-5` with `LOSS_ATOL = 1e-6` leaves a margin of 60 to 100 times
for other machines and thread counts, and is still far below what a real error changes: the control test shows that a
run seeing half the batch (what a process does if its gradients are not all-reduced) is off by more than 10 times the
tolerance at the very first step (a loss on other data) and by more than 1000 times later. Checkpoints differ by at
most 9e-8 in any logit (`PREDICTION_ATOL = 1e-5`), except after self-sampling (below).

Recipes whose loss is not a mean over examples (CascadeBERT's DAR pairs examples across the batch; the token losses
average over words, and the halves of a batch hold different numbers of them; self-sampling draws its sandwich per
batch) compute it on the global batch (hf_earlyexit/distributed.py), and match one process as closely as the others:
at most 1.9e-7 relative over the 6 steps. Their first gradients are checked directly: one plain SGD step at learning
rate 1 moves every parameter by its gradient, and the two settings' parameters then agree to 4e-8 while the step moves
them by up to 0.15 (`GRADIENT_ATOL = 1e-6`). Self-sampling's checkpoints after 6 Adam steps differ by up to 1.7e-5 in a
logit, though: its loss covers only the words still active at each exit, which leaves many coordinates with gradients
near Adam's `eps`, where the rounding of the sum is amplified (a one-process run started from the two-process stage 1,
3.5e-7 away, ends 2e-6 away; with SGD instead of Adam the two settings' checkpoints agree to 7.5e-8); that case is
held to 1e-4.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from examples.train import check_launch
from hf_earlyexit.calibration import calibrate, record
from hf_earlyexit.evaluation import collect
from tests.synthetic_data import parse_train_args as parse_args
from tests.synthetic_data import synthetic_classification
from tests.synthetic_data import train_main as main
from tests.utils import REPO_ROOT


pytestmark = pytest.mark.distributed

NUM_PROCESSES = 2
GLOBAL_TRAIN_BATCH = 16
GLOBAL_EVAL_BATCH = 8
EVAL_EXAMPLES = 13  # odd: the last evaluation batch is uneven across processes and padded by the sampler
LOSS_RTOL = 2e-5
LOSS_ATOL = 1e-6
PREDICTION_ATOL = 1e-5
GRADIENT_ATOL = 1e-6

COMMON = [
    "--tiny_model", "--synthetic_data", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
    "--save_strategy", "no", "--seed", "0", "--max_steps", "6", "--learning_rate", "3e-3", "--logging_steps", "1",
    "--max_train_samples", "96", "--max_eval_samples", str(EVAL_EXAMPLES),
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One family and recipe. `after` names the case whose output this one continues (a stage 2 from its stage 1).

    `strict_ddp` runs the multi-process side with `--ddp_find_unused_parameters false`: DDP then fails at the second
    step if any parameter it tracks got no gradient, which proves that frozen parameters stay outside DDP and that
    every trained one is used. Recipes that leave trainable parameters without gradient on some steps (alternating)
    run with the default their training arguments resolve instead (True); DDP then leaves the gradients of parameters
    no process used as `None`, as one process does, so Adam skips them: with zeros instead, its momentum would move
    them on the even steps and the curves and checkpoints would part.

    `loss_falls` is False for a run whose objective gains a term part-way (DAR after its warm-up), so that its loss
    need not end below where it started. `objective_period` is the number of steps after which the objective repeats
    (2 for alternating: `CE_L` on even steps, `sum_i CE_i` on odd ones), so that the first and last losses compared
    are of the same objective. `prediction_atol` bounds the checkpoints' logit difference (see the module
    docstring for self-sampling's).

    A family or recipe that lands later joins with one line, e.g. `Case("cascade-dar", "cascade", ("--exit_recipe",
    "difficulty_aware"))`, once examples/train.py (or the command line that replaces it) builds that family.
    """

    name: str
    family: str
    args: tuple[str, ...]
    after: str | None = None
    strict_ddp: bool = True
    loss_falls: bool = True
    prediction_atol: float = PREDICTION_ATOL
    objective_period: int = 1


CASES = [
    Case("bypass-joint", "bypass", ("--exit_recipe", "joint")),
    Case("bypass-two_stage-1", "bypass", ("--exit_recipe", "two_stage", "--exit_stage", "1")),
    Case(
        "bypass-two_stage-2",
        "bypass",
        ("--exit_recipe", "two_stage", "--exit_stage", "2", "--head_learning_rate", "1e-2"),
        after="bypass-two_stage-1",
    ),
    Case("bypass-alternating", "bypass", ("--exit_recipe", "alternating"), strict_ddp=False, objective_period=2),
    Case("bypass-distillation-1", "bypass", ("--exit_recipe", "distillation", "--exit_stage", "1")),
    Case(
        "bypass-distillation-2",
        "bypass",
        ("--exit_recipe", "distillation", "--exit_stage", "2", "--head_learning_rate", "1e-2"),
        after="bypass-distillation-1",
    ),
    Case("cascade-joint", "cascade", ("--exit_recipe", "joint")),
    # DAR pairs examples across the whole global batch: the labelling pass after 3 warm-up steps is split across the
    # processes, then every step gathers the shares' confidences and draws the same partners as one process
    Case(
        "cascade-dar-warmup",
        "cascade",
        ("--exit_recipe", "difficulty_aware", "--dar_warmup_epochs", "0.5"),
        loss_falls=False,
    ),
    Case("cascade-dar-online", "cascade", ("--exit_recipe", "difficulty_aware", "--dar_difficulty", "online")),
    # the token losses are means over the global batch's words (the halves of a batch hold different numbers of them)
    Case("token-joint", "token", ("--exit_recipe", "joint")),
    # stage-1 logits recorded in shares, the sandwich drawn for the global batch, active-word means over it
    Case(
        "token-self_sampling", "token", ("--exit_recipe", "self_sampling"), after="token-joint", prediction_atol=1e-4
    ),
]
CASE_NAMES = [case.name for case in CASES]
# checkpoints (single-process outputs) evaluated, recorded and collected in both settings, with calibrated thresholds
EVALUATED = ["bypass-joint", "cascade-joint"]
# token checkpoints (single-process outputs) recorded and calibrated split across the processes
SPLIT_TOKEN = ["token-self_sampling"]


# the recipes whose loss is computed on the global batch: their first gradient is compared directly
GRADIENT_CASES = ["cascade-dar-online", "token-joint", "token-self_sampling"]
# one plain SGD step (no momentum, no weight decay): the update is minus the learning rate times the gradient
FIRST_STEP = ("--optim", "sgd", "--lr_scheduler_type", "constant", "--max_steps", "1")


def train_argv(
    case: Case, root: Path, processes: int, output: str | None = None, start: Path | None = None
) -> list[str]:
    """The arguments of `case` in `processes` processes, saving to `root / output` (default: the case's name) and
    continuing from `start / case.after` (default: `root / case.after`) for a stage 2."""
    argv = [
        *COMMON,
        "--family", case.family, *case.args,
        "--per_device_train_batch_size", str(GLOBAL_TRAIN_BATCH // processes),
        "--per_device_eval_batch_size", str(GLOBAL_EVAL_BATCH // processes),
        "--output_dir", str(root / (output or case.name)),
    ]  # fmt: skip
    if case.after is not None:
        argv += ["--model_name_or_path", str((start or root) / case.after)]
    if case.strict_ddp and processes > 1:
        argv += ["--ddp_find_unused_parameters", "false"]
    return argv


def gradient_argv(case: Case, root: Path, processes: int, single: Path, learning_rate: float = 1.0) -> list[str]:
    """One SGD step of `case` from the same weights in both settings (a stage 2 from the one-process stage 1)."""
    output = f"gradient-{case.name}" + ("" if learning_rate else "-start")
    argv = train_argv(case, root, processes, output=output, start=single)
    return [*argv, *FIRST_STEP, "--learning_rate", str(learning_rate)]


def eval_argv(checkpoint: Path, output_dir: Path, family: str, processes: int) -> list[str]:
    return [
        *COMMON,
        "--family", family, "--do_eval", "--model_name_or_path", str(checkpoint),
        "--per_device_eval_batch_size", str(GLOBAL_EVAL_BATCH // processes), "--output_dir", str(output_dir),
    ]  # fmt: skip


def subprocess_env() -> dict[str, str]:
    # this worktree's package, offline, and no inherited launcher state
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def accelerate_launch(*args: str, num_processes: int = NUM_PROCESSES) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes N` (the documented command) on a free port."""
    return [
        sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1", "--main_process_port", "0",
        "--mixed_precision", "no", "--dynamo_backend", "no", *args,
    ]  # fmt: skip


def calibrated(checkpoint: Path, output_dir: Path) -> Path:
    """The checkpoint with thresholds that send part of the evaluation set out at every stage, so that evaluation's
    early-exit numbers are not trivial."""
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    dev = synthetic_classification(EVAL_EXAMPLES, seed=1)
    batch = [{name: torch.tensor(dev[name]) for name in dev.column_names}]
    result = calibrate(model, batch, target_speedup=1.3, criterion="max_prob")
    assert result.reached
    model.save_pretrained(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case in one process (here) and in two (one launch), plus evaluation of calibrated checkpoints."""
    root = tmp_path_factory.mktemp("distributed")
    single, multi = root / "single", root / "multi"
    reference = {case.name: main(train_argv(case, single, 1)) for case in CASES}
    gradient_cases = [case for case in CASES if case.name in GRADIENT_CASES]
    for case in gradient_cases:
        main(gradient_argv(case, single, 1, single))
        main(gradient_argv(case, single, 1, single, learning_rate=0.0))  # the starting weights
    checkpoints = {name: calibrated(single / name, root / "calibrated" / name) for name in EVALUATED}
    family = {case.name: case.family for case in CASES}
    single_eval = {
        name: main(eval_argv(checkpoints[name], single / f"eval-{name}", family[name], 1)) for name in EVALUATED
    }

    plan = {
        "output_dir": str(multi),
        "runs": [[case.name, train_argv(case, multi, NUM_PROCESSES)] for case in CASES]
        + [
            [f"eval-{name}", eval_argv(checkpoints[name], multi / f"eval-{name}", family[name], NUM_PROCESSES)]
            for name in EVALUATED
        ]
        + [[f"gradient-{case.name}", gradient_argv(case, multi, NUM_PROCESSES, single)] for case in gradient_cases],
        "split": [[name, str(checkpoints[name])] for name in EVALUATED],
        "split_token": [[name, str(single / name)] for name in SPLIT_TOKEN],
        "split_examples": EVAL_EXAMPLES,
    }
    multi.mkdir()
    (root / "plan.json").write_text(json.dumps(plan))
    command = accelerate_launch(str(REPO_ROOT / "tests" / "distributed_runner.py"), str(root / "plan.json"))
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    ranks = [json.loads((multi / f"rank{i}.json").read_text()) for i in range(NUM_PROCESSES)]
    return {
        "root": root,
        "single": single,
        "multi": multi,
        "reference": reference,
        "single_eval": single_eval,
        "checkpoints": checkpoints,
        "ranks": ranks,
    }


def test_two_processes_form_one_group(runs):
    for index, rank in enumerate(runs["ranks"]):
        assert (rank["process_index"], rank["num_processes"]) == (index, NUM_PROCESSES)
        for name in CASE_NAMES:
            assert (rank["runs"][name]["world_size"], rank["runs"][name]["process_index"]) == (NUM_PROCESSES, index)
    assert all(runs["reference"][name]["world_size"] == 1 for name in CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_loss_curve_matches_one_process(runs, name):
    case = next(case for case in CASES if case.name == name)
    expected = runs["reference"][name]["loss_curve"]
    for rank in runs["ranks"]:  # the logged loss is the mean over processes, the same in each
        curve = rank["runs"][name]["loss_curve"]
        assert [step for step, _ in curve] == [step for step, _ in expected] == list(range(1, 7))
        torch.testing.assert_close(
            torch.tensor([loss for _, loss in curve]),
            torch.tensor([loss for _, loss in expected]),
            rtol=LOSS_RTOL,
            atol=LOSS_ATOL,
        )
    # the run learned something, so matching curves are not two flat lines
    same_objective = [loss for step, loss in expected if (step - expected[0][0]) % case.objective_period == 0]
    assert same_objective[-1] < 0.95 * same_objective[0] or not case.loss_falls


def test_dar_turns_on_after_its_warmup_in_both_settings(runs):
    """The warm-up case trains as `cascade-joint` for its 3 warm-up steps (the curves are equal), then adds DAR."""
    for setting in [runs["reference"], *[rank["runs"] for rank in runs["ranks"]]]:
        joint = [loss for _, loss in setting["cascade-joint"]["loss_curve"]]
        dar = [loss for _, loss in setting["cascade-dar-warmup"]["loss_curve"]]
        assert dar[:3] == joint[:3]
        assert all(with_dar > without + 0.05 for with_dar, without in zip(dar[3:], joint[3:]))


def test_half_batch_control_is_far_outside_the_tolerance(runs, tmp_path):
    """What a process would log if it trained on its own share (8 examples) without DDP: the comparison above would
    catch it from the first step."""
    case = CASES[0]
    alone = main([*train_argv(case, tmp_path, 1), "--per_device_train_batch_size", str(GLOBAL_TRAIN_BATCH // 2)])
    expected = torch.tensor([loss for _, loss in runs["reference"][case.name]["loss_curve"]])
    got = torch.tensor([loss for _, loss in alone["loss_curve"]])
    relative = (got - expected).abs() / expected
    assert relative[0] > 10 * LOSS_RTOL and relative.max() > 1000 * LOSS_RTOL


def test_ddp_find_unused_parameters(runs):
    for case in CASES:
        resolved = runs["ranks"][0]["runs"][case.name]["ddp_find_unused_parameters"]
        # strict cases passed False and trained without DDP errors; alternating resolves to True by itself
        assert resolved is (False if case.strict_ddp else True)
    assert runs["reference"]["bypass-alternating"]["ddp_find_unused_parameters"] is True


@pytest.mark.parametrize("name", CASE_NAMES)
def test_only_the_main_process_saves(runs, name):
    main_rank, other = runs["ranks"]
    assert main_rank["runs"][name]["saved_to"] == [str(runs["multi"] / name)]
    assert other["runs"][name]["saved_to"] == []
    written = json.loads((runs["multi"] / name / "results.json").read_text())
    assert written["process_index"] == 0 and written["loss_curve"] == main_rank["runs"][name]["loss_curve"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_checkpoints_of_one_and_two_processes_predict_alike(runs, name):
    case = next(case for case in CASES if case.name == name)
    dev = synthetic_classification(EVAL_EXAMPLES, seed=1)
    inputs = {key: torch.tensor(dev[key]) for key in ("input_ids", "attention_mask")}
    logits = []
    for setting in ("single", "multi"):
        model = AutoModel.from_pretrained(runs[setting] / name).eval()
        with torch.no_grad():
            logits.append(model(**inputs, output_all_exits=True).all_logits)
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=case.prediction_atol)


@pytest.mark.parametrize("name", GRADIENT_CASES)
def test_first_gradient_is_the_global_batch_gradient(runs, name):
    """After one plain SGD step at learning rate 1 from the same weights, parameter = start - gradient."""
    single, multi = (
        AutoModel.from_pretrained(runs[setting] / f"gradient-{name}").state_dict() for setting in ("single", "multi")
    )
    start = AutoModel.from_pretrained(runs["single"] / f"gradient-{name}-start").state_dict()
    largest_step = max((single[key] - start[key]).abs().max() for key in single)
    assert largest_step > 1e-2  # the step is large against the tolerance
    for key in single:
        torch.testing.assert_close(multi[key], single[key], rtol=0, atol=GRADIENT_ATOL)


@pytest.mark.parametrize("stage_two, stage_one", [("bypass-two_stage-2", "bypass-two_stage-1")])
def test_frozen_parameters_stay_exactly_as_stage_one_left_them(runs, stage_two, stage_one):
    before = AutoModelForSequenceClassification.from_pretrained(runs["multi"] / stage_one).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(runs["multi"] / stage_two).state_dict()
    # stage 1 trains the backbone, the last exit head and its block's bypass; stage 2 must leave them bit-identical
    frozen = [key for key in before if key.startswith(("bert.", "exit_heads.3.", "bypasses.1."))]
    trained = [key for key in before if key.startswith("exit_heads.0.classifier.")]
    assert frozen and all(torch.equal(before[key], after[key]) for key in frozen)
    assert not any(torch.equal(before[key], after[key]) for key in trained)


@pytest.mark.parametrize("name", EVALUATED)
def test_evaluation_metrics_are_identical(runs, name):
    expected = runs["single_eval"][name]["eval_metrics"]
    got = runs["ranks"][0]["runs"][f"eval-{name}"]["eval_metrics"]
    timing = ("_runtime", "_per_second", "_time")
    exits = {key: value for key, value in expected.items() if not key.endswith((*timing, "_loss"))}
    speed = {"eval_early_exit_accuracy", "eval_mean_exit_layer", "eval_layer_speedup", "eval_flops_speedup"}
    assert speed < set(exits) and any(
        key.startswith(("eval_accuracy_exit_", "eval_accuracy_member_")) for key in exits
    )
    assert {key: got[key] for key in exits} == exits
    assert 1.0 < exits["eval_flops_speedup"] and exits["eval_early_exit_accuracy"] > 0.5  # early exit did happen
    # not `eval_loss`: transformers averages per-batch mean losses, and the second process's last batch is example 12
    # plus three examples repeated by the sampler to even out the batches; `gather_for_metrics` drops the repeated
    # copies of that batch's loss but the surviving one still averages over them (our metrics are per example)
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=0.05)
    other = runs["ranks"][1]["runs"][f"eval-{name}"]["eval_metrics"]
    assert {key: other[key] for key in exits} == {key: got[key] for key in exits}


@pytest.mark.parametrize("name", EVALUATED)
def test_record_and_collect_split_across_processes(runs, name):
    for rank in runs["ranks"]:
        report = rank["split"][name]
        # each process ran its own share of the batches: 4 = 2 + 2, 3 = 2 + 1, 1 = 1 + 0
        expected_share = {0: (2, 2, 1), 1: (2, 1, 0)}[rank["process_index"]]
        assert (
            report["record_batches_run"],
            report["collect_3_batches_batches_run"],
            report["collect_1_batch_batches_run"],
        ) == expected_share
        # and got every result back, bit for bit what it computes alone on all batches, in the same order
        assert report["record_equal"] and report["collect_3_batches_equal"] and report["collect_1_batch_equal"]

    split = torch.load(runs["multi"] / f"split_{name}.pt")
    model = AutoModelForSequenceClassification.from_pretrained(runs["checkpoints"][name]).eval()
    dev = synthetic_classification(EVAL_EXAMPLES, seed=1)
    batches = [
        {key: torch.tensor(dev[start : start + 4][key]) for key in dev.column_names} for start in range(0, 13, 4)
    ]
    here = record(model, batches)
    assert torch.equal(split["record"]["labels"], here.labels)
    assert torch.equal(split["record"]["exit_flops"], here.exit_flops)
    torch.testing.assert_close(split["record"]["all_logits"], here.all_logits, rtol=0, atol=1e-6)
    whole = [{key: torch.tensor(dev[key]) for key in ("input_ids", "attention_mask")}]
    here = collect(model, whole)
    assert torch.equal(split["collect_1_batch"]["exit_layer"], here["exit_layer"])
    torch.testing.assert_close(split["collect_1_batch"]["logits"], here["logits"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", SPLIT_TOKEN)
def test_token_calibration_splits_across_processes(runs, name):
    for rank in runs["ranks"]:
        report = rank["split_token"][name]
        # a share of the batches each (2 of 4), for the record and for every live TOKEE check
        assert (report["record_batches_run"], report["record_batches_run_alone"]) == (2, 4)
        assert report["verified"] == "live" and report["calibrate_batches_run_alone"] > 4
        assert 2 * report["calibrate_batches_run"] == report["calibrate_batches_run_alone"]
        # and the same record and the same choice as one process running everything
        assert report["record_equal"] and report["calibrate_equal"]


def launcher_choice(monkeypatch, options: list[str]):
    """Which of accelerate's launchers `accelerate launch <options> examples/train.py` picks, and its arguments."""
    from accelerate.commands import launch

    chosen = []
    monkeypatch.setattr(launch, "simple_launcher", lambda args: chosen.append(("simple", args)))
    monkeypatch.setattr(launch, "multi_gpu_launcher", lambda args: chosen.append(("torchrun", args)))
    fixed = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch.launch_command(launch.launch_command_parser().parse_args([*options, *fixed, "examples/train.py"]))
    (choice,) = chosen
    return choice


def test_accelerate_cpu_launcher_starts_one_process_and_is_refused(monkeypatch, tmp_path):
    """Why the documented command is not `accelerate launch --cpu --num_processes 2`: that picks accelerate's simple
    launcher, which runs the script once (it multiplies processes only under MPI, `--mpirun_hostfile`), and the
    script, seeing the environment that launcher sets, refuses to train alone."""
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    kind, args = launcher_choice(monkeypatch, ["--cpu", "--num_processes", "2"])
    assert kind == "simple"
    command, env = prepare_simple_launcher_cmd_env(args)
    assert command == [sys.executable, "examples/train.py"]  # one process
    for name in ("ACCELERATE_USE_CPU", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, env[name])
    *_, training_args = parse_args([*COMMON, "--output_dir", str(tmp_path)])
    with pytest.raises(RuntimeError, match=r"--cpu --num_processes N` started a single process"):
        check_launch(training_args)


def test_documented_launcher_starts_torchrun_with_two_processes(monkeypatch):
    from accelerate.utils.launch import prepare_multi_gpu_env

    kind, args = launcher_choice(monkeypatch, ["--multi_gpu", "--num_processes", "2", "--main_process_port", "0"])
    assert kind == "torchrun"
    prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "2"


def test_processes_outside_a_group_are_refused(tmp_path, monkeypatch):
    *_, args = parse_args([*COMMON, "--output_dir", str(tmp_path)])
    assert args.world_size == 1  # devices are set up now, before the variable below exists
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"one of 2 processes \(WORLD_SIZE=2\), but it joined no process group"):
        check_launch(args)
