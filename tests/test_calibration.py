import logging

import pytest
import torch

from hf_earlyexit.calibration import calibrate, record
from hf_earlyexit.evaluation import collect
from tests.test_modeling_bypass_bert import padded_inputs, tiny_model


def calibration_batches(num_batches=4, batch_size=16):
    batches = []
    for seed in range(num_batches):
        batch = padded_inputs(batch_size=batch_size, seed=100 + seed)
        batch["labels"] = torch.randint(0, 2, (batch_size,), generator=torch.Generator().manual_seed(seed))
        batches.append(batch)
    return batches


def measure(model, batches, **settings):
    """Run the live early-exit path and measure accuracy and FLOPs speed-up on the same batches."""
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    labels = torch.cat([b["labels"] for b in batches])
    out = collect(model, inputs, **settings)
    full = collect(model, inputs, early_exit=False)
    return {
        "accuracy": float((out["logits"].argmax(-1) == labels).float().mean()),
        "flops_speedup": float(full["flops"].sum()) / float(out["flops"].sum()),
        "mean_exit_layer": float(out["exit_layer"].float().mean()),
    }


@pytest.fixture
def model():
    # a model on which one threshold per exit beats a shared one at every target (seed 0 is not, since the bypasses
    # start as the identity and draw no random numbers)
    torch.manual_seed(1)
    return tiny_model(num_labels=2)


@pytest.mark.parametrize("per_exit", [False, True])
@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_target_speedup_is_reached_and_prediction_is_exact(model, per_exit, target):
    batches = calibration_batches()
    result = calibrate(model, batches, target_speedup=target, per_exit=per_exit)
    assert result.reached
    assert result.expected_flops_speedup >= target
    # apply=True wrote the settings into the config: the live run uses them without any argument
    measured = measure(model, batches)
    assert measured["flops_speedup"] >= target
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)
    assert measured["accuracy"] == result.expected_accuracy
    if per_exit:
        assert isinstance(model.config.exit_threshold, list) and len(model.config.exit_threshold) == 4


@pytest.mark.parametrize("criterion", ["entropy", "normalized_entropy", "patience", "divergence"])
def test_every_criterion_calibrates_exactly(model, criterion):
    batches = calibration_batches()
    result = calibrate(model, batches, target_speedup=1.3, criterion=criterion)
    measured = measure(model, batches)
    assert model.config.exit_criterion == criterion
    assert measured["accuracy"] == result.expected_accuracy
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)


def test_accuracy_drop_target(model):
    batches = calibration_batches()
    result = calibrate(model, batches, max_accuracy_drop=0.02)
    measured = measure(model, batches)
    assert result.reached
    assert measured["accuracy"] >= result.full_accuracy - 0.02
    assert measured["accuracy"] == result.expected_accuracy
    # the fastest setting within the allowed drop: no frontier point is both within the drop and faster
    faster = [p for p in result.frontier if p["flops_speedup"] > result.expected_flops_speedup]
    assert all(p["accuracy"] < result.full_accuracy - 0.02 for p in faster)


def test_model_runs_once_per_batch_not_per_candidate(model):
    batches = calibration_batches()
    calls = []
    model.bert.embeddings.register_forward_hook(lambda *args: calls.append(1))
    calibrate(model, batches, target_speedup=2.0, per_exit=True)
    assert len(calls) == len(batches)


def test_record_is_reusable_for_several_targets(model):
    rec = record(model, calibration_batches())
    fast = calibrate(model, rec, target_speedup=3.0, apply=False)
    slow = calibrate(model, rec, target_speedup=1.2, apply=False)
    assert fast.expected_flops_speedup >= 3.0 and slow.expected_flops_speedup >= 1.2
    assert (
        slow.expected_accuracy >= fast.expected_accuracy or slow.expected_flops_speedup < fast.expected_flops_speedup
    )


def test_unreachable_target_returns_nearest_point_and_says_so(model, caplog):
    batches = calibration_batches()
    with caplog.at_level(logging.WARNING, logger="hf_earlyexit.calibration"):
        result = calibrate(model, batches, target_speedup=50.0)
    assert not result.reached
    assert "cannot be reached" in result.message and "cannot be reached" in caplog.text
    # the nearest reachable point is the fastest one: everything at the first exit
    assert result.expected_flops_speedup == max(p["flops_speedup"] for p in result.frontier)
    assert measure(model, batches)["mean_exit_layer"] == 1.0


def test_apply_false_leaves_config_alone(model):
    before = model.config.to_dict()
    calibrate(model, calibration_batches(), target_speedup=2.0, apply=False)
    assert model.config.to_dict() == before


def test_calibrated_thresholds_survive_save_and_reload(model, tmp_path):
    from hf_earlyexit import BertWithBypassExits

    batches = calibration_batches()
    result = calibrate(model, batches, target_speedup=2.0, per_exit=True)
    model.save_pretrained(tmp_path)
    reloaded = BertWithBypassExits.from_pretrained(tmp_path).eval()
    assert reloaded.config.exit_threshold == result.exit_threshold
    assert measure(reloaded, batches)["accuracy"] == result.expected_accuracy


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_speedup=0.5), "must be >= 1, got 0.5"),
        (dict(target_speedup=2.0, max_accuracy_drop=0.01), "exactly one calibration target"),
        (dict(), "exactly one calibration target"),
        (dict(max_accuracy_drop=1.5), r"fraction in \[0, 1\]"),
        (dict(target_speedup=2.0, criterion="confidence"), "Unknown exit criterion 'confidence'"),
    ],
)
def test_bad_input(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        calibrate(model, calibration_batches(1), **kwargs)


def test_batches_without_labels(model):
    with pytest.raises(ValueError, match="needs `labels`"):
        calibrate(model, [padded_inputs()], target_speedup=2.0)


def test_split_record_checks_every_batch_before_running_any(model):
    """Split across processes, a batch without labels must fail in every process before any of them waits for the
    others (otherwise the processes that own good batches would wait forever)."""
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(ValueError, match="needs `labels`"):
        record(model, [*calibration_batches(2), padded_inputs()], split_across_processes=True)
    assert calls == []


def test_split_record_in_one_process_is_the_plain_record(model):
    """The multi-process behaviour is tested in test_distributed.py; in one process splitting changes nothing."""
    batches = calibration_batches(3)
    split, plain = record(model, iter(batches), split_across_processes=True), record(model, iter(batches))
    for name in ("all_logits", "labels", "exit_flops", "reference_flops"):
        assert torch.equal(getattr(split, name), getattr(plain, name))
    assert split.all_logits.shape == (4, 48, 2)


# --- the cascade family ---------------------------------------------------------------------------------------------


@pytest.fixture
def cascade():
    from tests.test_modeling_cascade_bert import tiny_cascade

    torch.manual_seed(0)
    return tiny_cascade(num_labels=2)


@pytest.mark.parametrize("per_exit", [None, False])
def test_cascade_calibration_is_exact(cascade, per_exit):
    batches = calibration_batches()
    result = calibrate(cascade, batches, target_speedup=1.5, per_exit=per_exit)
    assert result.reached and result.expected_flops_speedup >= 1.5
    if isinstance(result.exit_threshold, list):  # one per non-final member
        assert len(result.exit_threshold) == 2 == len(cascade.config.exit_threshold)
    measured = measure(cascade, batches)
    assert measured["accuracy"] == result.expected_accuracy
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)


def test_per_stage_search_never_loses_to_a_shared_threshold(cascade):
    rec = record(cascade, calibration_batches())
    for target in (1.5, 2.0, 3.0):
        shared = calibrate(cascade, rec, target_speedup=target, per_exit=False, apply=False)
        per_stage = calibrate(cascade, rec, target_speedup=target, apply=False)
        assert per_stage.expected_accuracy >= shared.expected_accuracy


def test_cascade_refuses_criteria_it_cannot_route_on(cascade):
    with pytest.raises(ValueError, match="a cascade routes on each member's own confidence"):
        calibrate(cascade, calibration_batches(1), target_speedup=2.0, criterion="patience")


def test_cascade_calibration_writes_only_the_settings_a_cascade_declares(cascade, tmp_path):
    calibrate(cascade, calibration_batches(1), target_speedup=1.5)
    assert "patience" not in cascade.config.to_dict()
    cascade.save_pretrained(tmp_path)
    assert "patience" not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            torch.tensor([0, 1, 2, 1]),
            r"class ids in \[0, 2\) \(the model's labels \['LABEL_0', 'LABEL_1'\]\), got \[2\]",
        ),
        (torch.tensor([0, -1, 1, 1]), r"got \[-1\]"),
        (torch.tensor([0.0, 1.0, 1.0, 0.0]), "must be class ids \\(integers\\), got dtype torch.float32"),
    ],
)
@pytest.mark.parametrize("split_across_processes", [False, True])
def test_labels_the_model_cannot_predict_are_refused(model, labels, message, split_across_processes):
    batch = {**padded_inputs(batch_size=4, seed=7), "labels": labels}
    with pytest.raises(ValueError, match=message):
        record(model, [batch], split_across_processes=split_across_processes)
    with pytest.raises(ValueError, match=message):
        calibrate(model, [batch], target_speedup=1.5)


def test_a_cascade_runs_with_the_forward_arguments_of_its_calibration():
    """`forward_kwargs()` used to hold `patience` for every criterion, which a cascade's forward silently dropped."""
    from tests.test_modeling_cascade_bert import tiny_cascade

    cascade = tiny_cascade(num_labels=2)
    batches = calibration_batches(num_batches=2)
    result = calibrate(cascade, batches, target_speedup=1.2, apply=False)
    assert "patience" not in result.forward_kwargs()
    with torch.no_grad():
        out = cascade(**{k: v for k, v in batches[0].items() if k != "labels"}, **result.forward_kwargs())
    assert out.logits.shape == (16, 2)


def test_forward_arguments_of_a_patience_calibration_keep_the_patience(model):
    result = calibrate(model, calibration_batches(), target_speedup=1.3, criterion="patience", apply=False)
    assert result.forward_kwargs() == {"exit_criterion": "patience", "patience": result.patience}


# --- scoring settings on a record -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, criterion",
    [("bypass", c) for c in ("max_prob", "entropy", "patience", "divergence")] + [("cascade", "max_prob")],
)
def test_settings_chosen_on_one_fold_score_on_the_other_as_a_live_run_measures(model, cascade, family, criterion):
    from hf_earlyexit.calibration import score_settings

    chosen = {"bypass": model, "cascade": cascade}[family]
    batches = calibration_batches()
    rec = record(chosen, batches)
    assert len(rec) == 64 and len(rec.select(range(32))) == 32
    result = calibrate(chosen, rec.select(range(32)), target_speedup=1.5, criterion=criterion, apply=False)
    # on its own fold the settings give what the calibration expected
    own = score_settings(chosen, rec.select(range(32)), result.forward_kwargs())
    assert own["accuracy"] == result.expected_accuracy
    assert own["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)
    # on the other fold, what the live early-exit path measures on those examples
    other = score_settings(chosen, rec.select(range(32, 64)), result.forward_kwargs())
    measured = measure(chosen, batches[2:], **result.forward_kwargs())
    assert other["accuracy"] == measured["accuracy"]
    assert other["flops_speedup"] == pytest.approx(measured["flops_speedup"], rel=1e-12)
    assert chosen.config.exit_threshold is None  # nothing written into the model


def test_scoring_settings_refuses_what_is_not_an_exit_setting(model):
    from hf_earlyexit.calibration import score_settings

    rec = record(model, calibration_batches(1))
    with pytest.raises(ValueError, match=r"`settings` has \['exit_mode'\]; expected exit settings of a classifier"):
        score_settings(model, rec, {"exit_mode": "token"})
    with pytest.raises(ValueError, match="max_prob"):  # the family's own check of the values
        score_settings(model, rec, {"exit_criterion": "max_prob", "exit_threshold": 1.5})
    from tests.test_modeling_token_exit_bert import tiny_model as tiny_token_model

    with pytest.raises(ValueError, match="scores a classifier's exit settings"):
        score_settings(tiny_token_model(), rec, {})


# --- which setting a speed-up target picks --------------------------------------------------------------------------


def test_a_speedup_target_picks_the_most_accurate_setting_that_lands_near_it():
    from hf_earlyexit.calibration.result import select

    points = [
        {"flops_speedup": speed, "accuracy": accuracy}
        for speed, accuracy in ((1.9, 0.90), (2.02, 0.85), (2.08, 0.86), (2.5, 0.88), (3.0, 0.80))
    ]
    assert select(points, 0.9, 2.0, None, max_overshoot=0.05) == ({"flops_speedup": 2.08, "accuracy": 0.86}, True)
    # at any speed-up: the luckier 2.5x setting, which overshoots the target on new examples
    assert select(points, 0.9, 2.0, None, max_overshoot=None) == ({"flops_speedup": 2.5, "accuracy": 0.88}, True)
    # nothing lands within 1 % above 2.2x: the slowest setting that reaches it
    assert select(points, 0.9, 2.2, None, max_overshoot=0.01) == ({"flops_speedup": 2.5, "accuracy": 0.88}, True)
    assert select(points, 0.9, 4.0, None, max_overshoot=0.05) == ({"flops_speedup": 3.0, "accuracy": 0.80}, False)
    # an accuracy-drop target is unchanged: the fastest setting within the drop
    assert select(points, 0.9, None, 0.03, max_overshoot=0.05)[0]["flops_speedup"] == 2.5


def test_calibrate_passes_the_overshoot_on_and_checks_it(model):
    rec = record(model, calibration_batches())
    anywhere = calibrate(model, rec, target_speedup=1.2, max_overshoot=None, apply=False)
    feasible = [p["accuracy"] for p in anywhere.frontier if p["flops_speedup"] >= 1.2]
    assert anywhere.expected_accuracy == max(feasible)
    near = calibrate(model, rec, target_speedup=1.2, apply=False)  # the default: within 5 % above the target
    assert near.expected_flops_speedup >= 1.2 and near.expected_accuracy <= anywhere.expected_accuracy
    exact = calibrate(model, rec, target_speedup=1.2, max_overshoot=0.0, apply=False)
    assert exact.expected_flops_speedup <= near.expected_flops_speedup
    for bad in (-0.1, True, "5 %"):
        with pytest.raises(ValueError, match=r"`max_overshoot` is a fraction of the target speed-up .* got"):
            calibrate(model, rec, target_speedup=1.2, max_overshoot=bad)
