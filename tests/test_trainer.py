import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, HfArgumentParser, Trainer, TrainingArguments

from hf_earlyexit import (
    AlternatingExitLoss,
    BertWithBypassExits,
    BypassBertConfig,
    DistillationExitLoss,
    EarlyExitTrainer,
    EarlyExitTrainingArguments,
    ExitLoss,
    JointExitLoss,
    TwoStageExitLoss,
    register_exit_loss,
)
from hf_earlyexit.losses import base as losses_module
from tests.utils import tiny_config_kwargs


MAX_LEN = 10
LABEL_TOKENS = (11, 10)  # the token that marks label 0 / label 1


def tiny_model(**overrides) -> BertWithBypassExits:
    return BertWithBypassExits(BypassBertConfig(**tiny_config_kwargs(**{"num_labels": 2, **overrides})))


def separable_dataset(num_examples: int, seed: int, with_labels: bool = True) -> Dataset:
    """Random sentences of mixed length whose label is written in tokens 1-3: every exit can learn it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (num_examples,), generator=generator)
    input_ids = torch.randint(20, 99, (num_examples, MAX_LEN), generator=generator)
    input_ids[:, 0] = 2
    input_ids[:, 1:4] = torch.tensor(LABEL_TOKENS)[labels].unsqueeze(-1)
    lengths = torch.randint(5, MAX_LEN + 1, (num_examples,), generator=generator)
    lengths[0] = MAX_LEN
    attention_mask = (torch.arange(MAX_LEN) < lengths.unsqueeze(-1)).long()
    columns = {"input_ids": (input_ids * attention_mask).tolist(), "attention_mask": attention_mask.tolist()}
    if with_labels:
        columns["labels"] = labels.tolist()
    return Dataset.from_dict(columns)


def as_batch(dataset: Dataset) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(dataset[name]) for name in dataset.column_names}


def make_args(tmp_path, **overrides) -> EarlyExitTrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        max_steps=8,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
    )
    return EarlyExitTrainingArguments(**{**settings, **overrides})


def recipe_loss(exit_loss: ExitLoss, model, batch) -> float:
    """The recipe's loss on a fixed batch, with the model in training mode (no dropout in the tiny config)."""
    model.train()
    with torch.no_grad():
        return float(exit_loss(model(**exit_loss.model_inputs(batch)), batch)["loss"])


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def final_exit_names(model) -> set[str]:
    """The backbone, the last exit head and the bypass of the last block (block size 2, 4 layers: bypass 1)."""
    return {n for n, _ in model.named_parameters() if n.startswith(("bert.", "exit_heads.3.", "bypasses.1."))}


# --- arguments ---------------------------------------------------------------------------------------------------


def test_argument_defaults(tmp_path):
    args = EarlyExitTrainingArguments(output_dir=str(tmp_path))
    assert (args.exit_recipe, args.exit_loss_weights, args.exit_stage, args.head_learning_rate) == (
        "joint",
        "linear",
        None,
        None,
    )
    assert args.ddp_find_unused_parameters is None


def test_alternating_tells_ddp_to_expect_unused_parameters(tmp_path):
    args = EarlyExitTrainingArguments(output_dir=str(tmp_path), exit_recipe="alternating")
    assert args.ddp_find_unused_parameters is True


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "linear"),
        (["--exit_loss_weights", "uniform"], "uniform"),
        (["--exit_loss_weights", "1", "2", "0", "4"], [1, 2, 0, 4]),
    ],
)
def test_weights_from_the_command_line(tmp_path, argv, expected):
    (args,) = HfArgumentParser(EarlyExitTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), *argv]
    )
    assert args.exit_loss_weights == expected


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"exit_recipe": "deebert"}, "Unknown `exit_recipe` 'deebert'"),
        ({"exit_loss_weights": "quadratic"}, "`exit_loss_weights` must be one of"),
        ({"exit_loss_weights": [1.0, -1.0]}, r"`exit_loss_weights\[1\]` must be a finite number >= 0"),
        ({"exit_loss_weights": [1.0, float("nan")]}, r"`exit_loss_weights\[1\]` must be a finite number >= 0"),
        ({"exit_loss_weights": ["one", "two"]}, r"`exit_loss_weights\[0\]` must be a number"),
        ({"exit_loss_weights": [0, 0]}, "must not all be zero"),
        ({"exit_loss_weights": []}, "non-empty list"),
        ({"exit_recipe": "two_stage"}, "set `exit_stage` to 1 or 2, got None"),
        ({"exit_recipe": "distillation", "exit_stage": 3}, "set `exit_stage` to 1 or 2, got 3"),
        ({"exit_recipe": "joint", "exit_stage": 1}, "`exit_stage` is only used by the staged recipes"),
        ({"head_learning_rate": -1e-4}, "`head_learning_rate` must be a finite number > 0"),
        ({"head_learning_rate": 0.0}, "`head_learning_rate` must be a finite number > 0"),
        ({"exit_recipe": "alternating", "ddp_find_unused_parameters": False}, "must not be False"),
    ],
)
def test_bad_arguments_raise(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        EarlyExitTrainingArguments(output_dir=str(tmp_path), **overrides)


def test_bad_trainer_setups_raise(tmp_path):
    model = tiny_model()
    with pytest.raises(TypeError, match="must be `EarlyExitTrainingArguments`"):
        EarlyExitTrainer(model, TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    with pytest.raises(ValueError, match="has 3 values but the model has 4 exits"):
        EarlyExitTrainer(model, make_args(tmp_path, exit_loss_weights=[1, 2, 3]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="leave `head_learning_rate` unset"):
        EarlyExitTrainer(model, make_args(tmp_path, head_learning_rate=1e-3), optimizers=(optimizer, None))
    plain_bert = BertForSequenceClassification(BertConfig(**tiny_config_kwargs()))
    with pytest.raises(ValueError, match="has no loss for models of type 'bert'"):
        EarlyExitTrainer(plain_bert, make_args(tmp_path))
    with pytest.raises(ValueError, match="needs a `model`"):
        EarlyExitTrainer(None, make_args(tmp_path))

    class FreezesEverything(JointExitLoss):
        def trainable_parameters(self, model):
            return set()

    with pytest.raises(ValueError, match="FreezesEverything leaves no parameter of the model to train"):
        EarlyExitTrainer(model, make_args(tmp_path), loss=FreezesEverything(model.config))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="needs single-label classification"):
        EarlyExitTrainer(
            tiny_model(num_labels=1, exit_criterion="patience"),
            make_args(tmp_path, exit_recipe="distillation", exit_stage=2),
        )


# --- losses on a fixed batch -------------------------------------------------------------------------------------


def test_joint_loss_weights():
    model = tiny_model().train()
    batch = as_batch(separable_dataset(8, seed=1))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        outputs = model(**inputs, labels=batch["labels"])
    per_exit = torch.stack(
        [torch.nn.functional.cross_entropy(logits, batch["labels"]) for logits in outputs.all_logits]
    )

    linear = JointExitLoss(model.config)(outputs, batch)
    torch.testing.assert_close(linear["loss"], outputs.loss)  # the model's own default loss
    torch.testing.assert_close(linear["loss"], (per_exit * torch.arange(1.0, 5.0)).sum() / 10)
    torch.testing.assert_close(torch.stack([linear[f"loss_exit_{i}"] for i in range(1, 5)]), per_exit)
    torch.testing.assert_close(JointExitLoss(model.config, "uniform")(outputs, batch)["loss"], per_exit.mean())
    explicit = JointExitLoss(model.config, [0.0, 0.0, 1.0, 3.0])(outputs, batch)["loss"]
    torch.testing.assert_close(explicit, (per_exit[2] + 3 * per_exit[3]) / 4)


def test_distillation_terms_equal_kl_by_hand_and_need_no_labels():
    model = tiny_model().train()
    batch = as_batch(separable_dataset(8, seed=2, with_labels=False))
    loss = DistillationExitLoss(model.config, stage=2)
    outputs = model(**loss.model_inputs(batch))
    components = loss(outputs, batch, step=0)

    teacher = outputs.all_logits[-1].detach()
    expected = {}
    for layer, student in zip([1, 2, 3], outputs.all_logits[:-1]):
        p = teacher.softmax(-1)
        expected[f"kl_exit_{layer}"] = (p * (p.log() - student.detach().log_softmax(-1))).sum(-1).mean()
    for name, value in expected.items():
        torch.testing.assert_close(components[name], value)
    torch.testing.assert_close(components["loss"].detach(), sum(expected.values()))
    components["loss"].backward()
    teacher_gradient = model.exit_heads[-1].classifier.weight.grad
    assert teacher_gradient is None or not teacher_gradient.any()  # the teacher learns nothing from its students
    assert model.exit_heads[0].classifier.weight.grad.abs().sum() > 0


def test_losses_describe_themselves():
    config = tiny_model().config
    cases = [
        (JointExitLoss(config, "uniform"), {"weights": "uniform"}, "{BERT} Loses Patience"),
        (AlternatingExitLoss(config), {}, "{BER}xi{T}"),
        (TwoStageExitLoss(config, stage=2), {"stage": 2}, "{D}ee{BERT}"),
        (DistillationExitLoss(config, stage=1), {"stage": 1}, "{F}ast{BERT}"),
    ]
    for loss, config_dict, title in cases:
        assert loss.get_config_dict() == config_dict
        assert loss.citation.startswith("@inproceedings{") and title in loss.citation
    with pytest.raises(ValueError, match="`stage` must be 1 or 2"):
        TwoStageExitLoss(config, stage=0)
    with pytest.raises(ValueError, match="needs at least two exits"):
        TwoStageExitLoss(tiny_model(exit_layers=[4]).config, stage=1)


# --- training ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, stage, labelled",
    [
        ("joint", None, True),
        ("alternating", None, True),
        ("two_stage", 1, True),
        ("two_stage", 2, True),
        ("distillation", 1, True),
        ("distillation", 2, False),
    ],
)
def test_each_recipe_trains(tmp_path, recipe, stage, labelled):
    model = tiny_model()
    if stage == 2:  # as in real use, stage 2 continues from stage 1 (which froze the exits stage 2 trains)
        stage_one = make_args(tmp_path, exit_recipe=recipe, exit_stage=1, learning_rate=1e-2)
        EarlyExitTrainer(model, stage_one, train_dataset=separable_dataset(64, seed=0)).train()
    train = separable_dataset(64, seed=0, with_labels=labelled)
    args = make_args(tmp_path, exit_recipe=recipe, exit_stage=stage, head_learning_rate=1e-2 if stage == 2 else None)
    trainer = EarlyExitTrainer(model, args, train_dataset=train)
    fixed_batch = as_batch(train.select(range(32)))
    before_loss, before = recipe_loss(trainer.exit_loss, model, fixed_batch), snapshot(model)

    trainer.train()

    assert recipe_loss(trainer.exit_loss, model, fixed_batch) < 0.9 * before_loss
    after = snapshot(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    if stage is None:
        assert trainable == set(before)
    else:
        stage_one = final_exit_names(model)
        assert trainable == (stage_one if stage == 1 else set(before) - stage_one)
        # frozen parameters are bit-identical; the trainable ones moved
        assert changed <= trainable
        assert {name for name in trainable if name.endswith("classifier.weight")} <= changed


def test_alternating_objective_by_hand(tmp_path):
    model = tiny_model()
    train = separable_dataset(16, seed=0)
    loss = EarlyExitTrainer(model, make_args(tmp_path, exit_recipe="alternating"), train_dataset=train).exit_loss
    batch = as_batch(train)
    model.train()
    with torch.no_grad():
        all_logits = model(**{k: v for k, v in batch.items() if k != "labels"}, output_all_exits=True).all_logits
        per_exit = [F.cross_entropy(logits, batch["labels"]).item() for logits in all_logits]
        odd = loss(model(**loss.model_inputs(batch, step=1)), batch, step=1)["loss"].item()
        even = loss(model(**loss.model_inputs(batch, step=2)), batch, step=2)["loss"].item()
        evaluation = loss(model(**loss.model_inputs(batch)), batch)["loss"].item()
    # BERxiT: odd steps sum every exit's loss (not a weighted mean), even steps the final exit's alone
    assert odd == pytest.approx(sum(per_exit), rel=1e-6) and evaluation == pytest.approx(sum(per_exit), rel=1e-6)
    assert even == pytest.approx(per_exit[-1], rel=1e-6)
    with pytest.raises(ValueError, match="sums the exits' losses unweighted"):
        EarlyExitTrainer(model, make_args(tmp_path, exit_recipe="alternating", exit_loss_weights=[1, 1, 1, 1]))


def test_alternating_even_steps_leave_intermediate_exits_without_gradient(tmp_path):
    model = tiny_model()
    with (
        torch.no_grad()
    ):  # a fresh bypass's up-projection is zero, which would stop the gradient of its down-projection
        for bypass in model.bypasses:
            bypass.up.weight.normal_(0, 0.2)
    train = separable_dataset(16, seed=0)
    trainer = EarlyExitTrainer(model, make_args(tmp_path, exit_recipe="alternating", max_steps=1), train_dataset=train)
    batch = as_batch(train)
    intermediate = [p for n, p in model.named_parameters() if n.startswith(("exit_heads.0.", "exit_heads.1."))]
    model.train()
    for step, expect_gradient in [(0, False), (1, True), (2, False)]:
        trainer.state.global_step = step
        model.zero_grad(set_to_none=True)
        trainer.compute_loss(model, batch).backward()
        assert all((p.grad is not None) == expect_gradient for p in intermediate)
        assert model.exit_heads[-1].classifier.weight.grad is not None

    trainer.state.global_step = 0
    before = snapshot(model)
    trainer.train()  # one optimizer step: step 0, even
    after = snapshot(model)
    for name in before:
        unchanged = torch.equal(before[name], after[name])
        assert unchanged == name.startswith(("exit_heads.0.", "exit_heads.1.", "exit_heads.2.", "bypasses.0."))


@pytest.mark.parametrize("weights", ["uniform", "linear"])
def test_per_exit_losses_are_logged(tmp_path, weights):
    args = make_args(
        tmp_path, max_steps=3, per_device_train_batch_size=8, gradient_accumulation_steps=2, exit_loss_weights=weights
    )
    trainer = EarlyExitTrainer(tiny_model(), args, train_dataset=separable_dataset(48, seed=0))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    w = [1.0] * 4 if weights == "uniform" else [1.0, 2.0, 3.0, 4.0]
    for entry in logs:
        per_exit = [entry[f"loss_exit_{layer}"] for layer in (1, 2, 3, 4)]
        # the logged loss and the per-exit terms average the same micro-batches
        assert entry["loss"] == pytest.approx(sum(a * b for a, b in zip(w, per_exit)) / sum(w), rel=1e-5)


def test_evaluation_scores_every_exit_and_the_early_exit(tmp_path):
    model = tiny_model().eval()
    train, dev = separable_dataset(32, seed=0), separable_dataset(13, seed=5)
    trainer = EarlyExitTrainer(model, make_args(tmp_path, max_steps=3), train_dataset=train, eval_dataset=dev)
    trainer.train()
    batch = as_batch(dev)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        confidences = model(**inputs, output_all_exits=True).all_logits.softmax(-1).amax(-1)
    # thresholds that let part of the examples leave at every exit, so the early-exit numbers are not trivial
    model.config.exit_threshold = [float(c.quantile(0.6)) for c in confidences]

    metrics = trainer.evaluate()  # batches of 4: 4 + 4 + 4 + 1

    with torch.no_grad():
        every_exit = model(**inputs, output_all_exits=True)
        live = model(**inputs)
        full = model(**inputs, early_exit=False)
    labels = batch["labels"]
    assert len(set(live.exit_layer.tolist())) > 1
    for layer, logits in zip(model.exit_layers, every_exit.all_logits):
        expected = (logits.argmax(-1) == labels).float().mean().item()
        assert metrics[f"eval_accuracy_exit_{layer}"] == pytest.approx(expected, abs=1e-6)
    assert_routing_metrics(metrics, live, full, labels, full_depth=4)
    assert math.isfinite(metrics["eval_loss"])


def assert_routing_metrics(metrics, live, full, labels, full_depth):
    """The evaluation's early-exit numbers equal those of the live early-exit run `live` (against `full`)."""
    assert metrics["eval_early_exit_accuracy"] == pytest.approx(
        (live.logits.argmax(-1) == labels).float().mean().item()
    )
    assert metrics["eval_mean_exit_layer"] == pytest.approx(live.exit_layer.float().mean().item())
    assert metrics["eval_layer_speedup"] == pytest.approx(full_depth * len(labels) / live.exit_layer.sum().item())
    assert metrics["eval_flops_speedup"] == pytest.approx(full.flops.sum().item() / live.flops.sum().item(), rel=1e-6)


def test_head_learning_rate_param_groups(tmp_path):
    model = tiny_model()
    args = make_args(tmp_path, learning_rate=5e-5, head_learning_rate=2e-4, weight_decay=0.01)
    optimizer = EarlyExitTrainer(model, args).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {(g["lr"], g["weight_decay"]): {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    assert len(groups) == len(optimizer.param_groups) == 4
    heads = {n for n in names.values() if not n.startswith("bert.")}
    assert groups[(2e-4, 0.01)] | groups[(2e-4, 0.0)] == heads
    assert groups[(5e-5, 0.01)] | groups[(5e-5, 0.0)] == set(names.values()) - heads
    assert "exit_heads.0.classifier.weight" in groups[(2e-4, 0.01)]
    assert "exit_heads.0.classifier.bias" in groups[(2e-4, 0.0)]
    assert "bert.encoder.layer.0.attention.self.query.weight" in groups[(5e-5, 0.01)]
    assert "bert.embeddings.LayerNorm.weight" in groups[(5e-5, 0.0)]


def test_plain_trainer_trains_with_the_model_default_loss(tmp_path):
    model = tiny_model()
    train = separable_dataset(64, seed=0)
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, max_steps=8,
        per_device_train_batch_size=16, learning_rate=3e-3,
    )  # fmt: skip
    batch = as_batch(train.select(range(32)))

    def default_loss():
        model.train()
        with torch.no_grad():
            return float(model(**batch).loss)

    before = default_loss()
    Trainer(model=model, args=args, train_dataset=train).train()
    assert default_loss() < 0.9 * before


@pytest.mark.parametrize("trainer_class", [Trainer, EarlyExitTrainer])
def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tmp_path, trainer_class):
    """`loss_is_scaled_for_ga` (ours) and `accepts_loss_kwargs = False` (the model, for a plain Trainer) at work."""
    train = separable_dataset(16, seed=3)

    def one_step(batch_size, accumulation):
        torch.manual_seed(0)
        model = tiny_model()
        args_class = EarlyExitTrainingArguments if trainer_class is EarlyExitTrainer else TrainingArguments
        args = args_class(
            output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
            max_steps=1, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
            optim="sgd", learning_rate=0.1, max_grad_norm=0.0,
        )  # fmt: skip
        start = model.exit_heads[0].classifier.weight.detach().clone()
        trainer_class(model=model, args=args, train_dataset=train).train()
        return model.exit_heads[0].classifier.weight.detach() - start

    whole, accumulated = one_step(16, 1), one_step(8, 2)
    assert whole.abs().max() > 0
    torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-7)


# --- families plug in their own objectives -------------------------------------------------------------------------


class DifficultyWeightedLoss(ExitLoss):
    """A stand-in for a family objective that reads a column the model does not take."""

    input_columns = ("labels", "difficulty")

    def __init__(self):
        super().__init__()
        self.seen_difficulty = []

    def forward(self, outputs, inputs, step=None):
        self.seen_difficulty.append(inputs["difficulty"].clone())
        weights = 1.0 + inputs["difficulty"].float()
        per_example = torch.nn.functional.cross_entropy(outputs.logits, inputs["labels"], reduction="none")
        return {"loss": (weights * per_example).mean(), "hard_fraction": inputs["difficulty"].float().mean()}


def test_a_registered_family_loss_is_used_and_gets_its_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(losses_module, "_EXIT_LOSSES", dict(losses_module._EXIT_LOSSES))
    monkeypatch.setattr(losses_module, "_STAGED_RECIPES", set(losses_module._STAGED_RECIPES))
    register_exit_loss("bypass-bert", "difficulty_weighted", lambda model, args: DifficultyWeightedLoss())
    register_exit_loss("bypass-bert", "warm_up_then_dar", lambda model, args: DifficultyWeightedLoss(), staged=True)
    with pytest.raises(ValueError, match="`exit_recipe='warm_up_then_dar'` trains in two stages"):
        make_args(tmp_path, exit_recipe="warm_up_then_dar")
    with pytest.raises(ValueError, match="`exit_stage` is only used by the staged recipes"):
        make_args(tmp_path, exit_recipe="difficulty_weighted", exit_stage=1)
    train = separable_dataset(32, seed=0)
    difficulty = [i % 2 for i in range(32)]
    train = train.add_column("difficulty", difficulty)
    args = make_args(tmp_path, exit_recipe="difficulty_weighted", max_steps=2, logging_steps=2)
    trainer = EarlyExitTrainer(tiny_model(), args, train_dataset=train)
    assert isinstance(trainer.exit_loss, DifficultyWeightedLoss)
    trainer.train()
    seen = torch.cat(trainer.exit_loss.seen_difficulty)
    assert sorted(seen.tolist()) == sorted(difficulty)
    assert trainer.state.log_history[0]["hard_fraction"] == pytest.approx(0.5)


# --- stronger exits: gradient equilibrium and self-distillation in joint training ------------------------------------


@pytest.mark.parametrize("exit_index", [0, 3])
def test_gradient_equilibrium_scales_the_backbone_gradients(exit_index):
    # with E = 4 exits, the gradient exit 0 sends into the backbone is scaled by 1/4 at its branch; the last exit's
    # goes back through the three branch points, (3/4)(2/3)(1/2) = 1/4; the forward values do not change
    model = tiny_model(use_bypass=False).train()
    batch = as_batch(separable_dataset(8, seed=0))
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def run(equilibrium):
        model.zero_grad(set_to_none=True)
        all_logits = model(**inputs, output_all_exits=True, gradient_equilibrium=equilibrium).all_logits
        F.cross_entropy(all_logits[exit_index], batch["labels"]).backward()
        return all_logits.detach(), model.bert.embeddings.word_embeddings.weight.grad.clone()

    plain_logits, plain_grad = run(False)
    ge_logits, ge_grad = run(True)
    torch.testing.assert_close(ge_logits, plain_logits, rtol=0, atol=0)
    torch.testing.assert_close(ge_grad, plain_grad / 4, rtol=1e-5, atol=1e-9)


def test_self_distillation_by_hand(tmp_path):
    model = tiny_model()
    train = separable_dataset(16, seed=0)
    args = make_args(tmp_path, self_distillation_weight=0.5, self_distillation_temperature=3.0)
    loss = EarlyExitTrainer(model, args, train_dataset=train).exit_loss
    assert loss.get_config_dict()["self_distillation_weight"] == 0.5
    batch = as_batch(train)
    model.train()
    with torch.no_grad():
        outputs = model(**loss.model_inputs(batch, step=0))
        value = float(loss(outputs, batch, step=0)["loss"])
        all_logits = outputs.all_logits
        ce = [F.cross_entropy(logits, batch["labels"]) for logits in all_logits]
        teacher = F.softmax(all_logits[-1] / 3.0, dim=-1)
        kl = [
            (teacher * (teacher.log() - F.log_softmax(logits / 3.0, dim=-1))).sum(-1).mean()
            for logits in all_logits[:-1]
        ]
    # linear weights 1..4; the last exit has no self-distillation term
    expected = sum((i + 1) * float(c) for i, c in enumerate(ce)) / 10
    expected += 0.5 * 9.0 * sum((i + 1) * float(k) for i, k in enumerate(kl)) / 10
    assert value == pytest.approx(expected, rel=1e-5)


def test_self_distillation_sends_no_gradient_into_the_final_exit():
    loss = JointExitLoss(tiny_model().config, self_distillation_weight=1.0)
    model = tiny_model().train()
    batch = as_batch(separable_dataset(8, seed=1))
    outputs = model(**loss.model_inputs(batch, step=0))
    kl = loss.self_distillation_terms(outputs)
    kl.sum().backward()
    assert model.exit_heads[-1].classifier.weight.grad is None or not model.exit_heads[-1].classifier.weight.grad.any()
    assert model.exit_heads[0].classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"self_distillation_temperature": 2.0}, "set `self_distillation_weight` too"),
        ({"self_distillation_weight": -1.0}, "`self_distillation_weight` must be a finite number >= 0"),
        ({"self_distillation_weight": 1.0, "self_distillation_temperature": 0}, "must be a finite number > 0"),
    ],
)
def test_bad_self_distillation_arguments(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **overrides)


def test_training_options_a_recipe_does_not_honour_are_refused(tmp_path):
    from tests.test_cascade_training import tiny_cascade

    args = make_args(tmp_path, exit_recipe="alternating", self_distillation_weight=0.5)
    with pytest.raises(
        ValueError, match=r"\['self_distillation_weight', 'self_distillation_temperature'\] do not apply"
    ):
        EarlyExitTrainer(tiny_model(), args)
    args = make_args(tmp_path, exit_recipe="joint", gradient_equilibrium=True)
    with pytest.raises(ValueError, match=r"\['gradient_equilibrium'\] do not apply to `exit_recipe='joint'`"):
        EarlyExitTrainer(tiny_cascade(), args)
    # honoured where they apply
    EarlyExitTrainer(tiny_model(), make_args(tmp_path, exit_recipe="alternating", gradient_equilibrium=True))
