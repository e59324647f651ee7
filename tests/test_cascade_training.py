"""Training cascades with EarlyExitTrainer: CascadeBERT's joint loss, difficulty-aware regularisation (DAR) with its
three sources of difficulty labels, learning rates, evaluation, and assembling separately trained members."""

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import BertConfig, BertModel, HfArgumentParser, TrainerCallback

from hf_earlyexit import (
    BertForCascadeClassification,
    DifficultyAwareCascadeLoss,
    EarlyExitTrainer,
    EarlyExitTrainingArguments,
    JointCascadeLoss,
    difficulty_aware_ranking_loss,
)
from hf_earlyexit.losses import EXAMPLE_INDEX_COLUMN, check_difficulty_values
from tests.test_trainer import as_batch, assert_routing_metrics, make_args, separable_dataset, snapshot
from tests.utils import tiny_config_kwargs


def tiny_backbone() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(**tiny_config_kwargs()))


def tiny_cascade(member_layers=(1, 4), **kwargs) -> BertForCascadeClassification:
    return BertForCascadeClassification.from_backbone(tiny_backbone(), member_layers=list(member_layers), **kwargs)


def noisy_dataset(num_examples: int, seed: int, flip_every: int = 4) -> Dataset:
    """`separable_dataset` with every `flip_every`-th label flipped: those examples stay wrong for a while (hard)."""
    dataset = separable_dataset(num_examples, seed)
    labels = [1 - label if i % flip_every == 0 else label for i, label in enumerate(dataset["labels"])]
    return dataset.remove_columns("labels").add_column("labels", labels)


def cascade_args(tmp_path, **overrides) -> EarlyExitTrainingArguments:
    return make_args(tmp_path, **{"exit_recipe": "difficulty_aware", **overrides})


def outputs_and_batch(model, dataset):
    batch = as_batch(dataset)
    model.train()
    inputs = {k: v for k, v in batch.items() if k != "difficulty"}
    return model(**inputs, output_all_exits=True), batch


# --- the DAR term ----------------------------------------------------------------------------------------------------

CONFIDENCE = torch.tensor([0.9, 0.6, 0.8, 0.55, 0.7])
HARD = torch.tensor([False, True, False, True, False])  # easy: 0, 2, 4; hard: 1, 3


def test_dar_by_hand():
    # partners[i] is the position among the hard examples of easy example i's partner: pairs (0, 3), (2, 1), (4, 3)
    loss = difficulty_aware_ranking_loss(CONFIDENCE, HARD, margin=0.5, partners=torch.tensor([1, 0, 1]))
    expected = (max(0, 0.55 - 0.9 + 0.5) + max(0, 0.6 - 0.8 + 0.5) + max(0, 0.55 - 0.7 + 0.5)) / 3
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.8 / 3)
    # a margin small enough leaves only the pairs where the hard example is more confident
    assert float(difficulty_aware_ranking_loss(CONFIDENCE, HARD, 0.0, partners=torch.tensor([1, 0, 1]))) == 0.0


def test_dar_partners_are_drawn_as_specified_and_reproducibly():
    drawn = difficulty_aware_ranking_loss(CONFIDENCE, HARD, 0.5, generator=torch.Generator().manual_seed(7))
    partners = torch.randint(2, (3,), generator=torch.Generator().manual_seed(7))
    given = difficulty_aware_ranking_loss(CONFIDENCE, HARD, 0.5, partners=partners)
    assert float(drawn) == float(given)
    # uniform with replacement: 4 hard examples, 4000 easy ones, every hard example picked about 1000 times
    confidence = torch.zeros(4004)
    hard = torch.zeros(4004, dtype=torch.bool)
    hard[[5, 900, 2000, 4003]] = True
    confidence[hard] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    generator = torch.Generator().manual_seed(0)
    loss = difficulty_aware_ranking_loss(confidence, hard, margin=0.0, generator=generator)
    counts = torch.bincount(torch.randint(4, (4000,), generator=torch.Generator().manual_seed(0)), minlength=4)
    assert counts.min() > 900 and counts.max() < 1100
    # every easy example has confidence 0, so the loss is the mean confidence of the drawn partners
    assert float(loss) == pytest.approx(float((counts * torch.tensor([0.1, 0.2, 0.3, 0.4])).sum() / 4000), rel=1e-5)


@pytest.mark.parametrize("hard", [torch.ones(5, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)])
def test_dar_is_zero_without_easy_or_without_hard_examples(hard):
    confidence = CONFIDENCE.clone().requires_grad_()
    loss = difficulty_aware_ranking_loss(confidence, hard, margin=0.5, generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(confidence.grad, torch.zeros(5))


def test_difficulty_aware_loss_on_a_fixed_batch():
    model = tiny_cascade(member_layers=(1, 2, 4), num_labels=2)
    dataset = noisy_dataset(8, seed=1)
    difficulty = [[1, 0], [0, 0], [0, 1], [1, 1], [0, 0], [0, 0], [1, 0], [0, 1]]
    dataset = dataset.add_column("difficulty", difficulty)
    outputs, batch = outputs_and_batch(model, dataset)
    loss = DifficultyAwareCascadeLoss(model.config, dar_lambda=0.3, margin=0.4, difficulty="column", seed=11)
    components = loss(outputs, batch, step=0)

    # by hand: one partner draw per non-final member, in member order, from a generator seeded with the loss's seed
    generator = torch.Generator().manual_seed(11)
    ce = [F.cross_entropy(logits, batch["labels"]) for logits in outputs.all_logits.detach()]
    dar = []
    for k in range(2):
        hard = torch.tensor([row[k] for row in difficulty]).bool()
        easy_index, hard_index = (~hard).nonzero()[:, 0], hard.nonzero()[:, 0]
        partners = hard_index[torch.randint(len(hard_index), (len(easy_index),), generator=generator)]
        confidence = outputs.all_logits[k].detach().softmax(-1).max(-1).values
        dar.append((confidence[partners] - confidence[easy_index] + 0.4).clamp_min(0).mean())
    assert all(float(term) > 0 for term in dar)
    torch.testing.assert_close(components["loss"].detach(), sum(ce) + 0.3 * sum(dar))
    for k in range(3):
        torch.testing.assert_close(components[f"loss_member_{k}"], ce[k])
    for k in range(2):
        torch.testing.assert_close(components[f"dar_member_{k}"], dar[k])
        assert float(components[f"hard_fraction_member_{k}"]) == 3 / 8
    # without DAR (joint recipe, or evaluation) the loss is the model's own: the sum of the members' losses
    joint = JointCascadeLoss(model.config)(outputs, batch)
    torch.testing.assert_close(joint["loss"], outputs.loss)
    torch.testing.assert_close(loss(outputs, batch, step=None)["loss"], outputs.loss)
    assert "dar_member_0" not in loss(outputs, batch, step=None)


def test_dar_gradient_reaches_the_smaller_members_only():
    model = tiny_cascade(member_layers=(1, 2, 4), num_labels=2)
    dataset = noisy_dataset(8, seed=1).add_column("difficulty", [i % 2 for i in range(8)])

    def gradients(exit_loss):
        model.zero_grad(set_to_none=True)
        outputs, batch = outputs_and_batch(model, dataset)
        exit_loss(outputs, batch, step=0)["loss"].backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    joint = gradients(JointCascadeLoss(model.config))
    with_dar = gradients(DifficultyAwareCascadeLoss(model.config, dar_lambda=1.0, difficulty="column"))
    assert set(joint) == set(with_dar)
    for name in joint:
        member = int(name.split(".")[1])
        if member == 2:  # through DAR no gradient reaches the last member: its gradient is the joint one, exactly
            assert torch.equal(joint[name], with_dar[name]), name
    for member in (0, 1):
        weight = f"members.{member}.head.classifier.weight"
        assert not torch.allclose(joint[weight], with_dar[weight])


# --- difficulty sources ----------------------------------------------------------------------------------------------


class PredictionsAt(TrainerCallback):
    """Records the small member's mistakes on the training set after a given optimizer step."""

    def __init__(self, step, dataset):
        self.step, self.dataset, self.mistakes, self.parameters = step, dataset, None, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.parameters = snapshot(model)
            batch = as_batch(self.dataset)
            model.eval()
            with torch.no_grad():
                logits = model.members[0](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            model.train()
            self.mistakes = (logits.argmax(-1) != batch["labels"]).to(torch.int8)


def test_warmup_labels_are_the_small_member_errors_at_the_end_of_the_warm_up(tmp_path):
    train = noisy_dataset(64, seed=0)
    # 64 examples in batches of 16: 4 steps per epoch; warm-up 1.5 epochs = 6 steps, then 4 steps with DAR
    settings = dict(max_steps=10, dar_warmup_epochs=1.5, learning_rate=3e-3, head_learning_rate=1e-2)
    probe = PredictionsAt(6, train)
    trainer = EarlyExitTrainer(
        tiny_cascade(), cascade_args(tmp_path, **settings), train_dataset=train, callbacks=[probe]
    )
    assert trainer.train_dataset[EXAMPLE_INDEX_COLUMN] == list(range(64))
    trainer.train()

    table = trainer.exit_loss.difficulty_table
    assert trainer.exit_loss.dar_start_step == 6
    assert table.shape == (64, 1)
    assert torch.equal(table[:, 0], probe.mistakes)
    assert 0 < int(table.sum()) < 64  # the flipped labels make a real mix of easy and hard examples
    logs = trainer.state.log_history
    labelled = [entry for entry in logs if "difficulty_hard_fraction_member_0" in entry]
    assert len(labelled) == 1 and labelled[0]["step"] == 6
    assert labelled[0]["difficulty_hard_fraction_member_0"] == pytest.approx(float(table.float().mean()))
    steps = [entry for entry in logs if "loss" in entry]
    assert [("dar_member_0" in entry) for entry in steps] == [False] * 6 + [True] * 4
    for entry in steps[6:]:  # the logged loss is the sum of the logged terms
        expected = entry["loss_member_0"] + entry["loss_member_1"] + 0.5 * entry["dar_member_0"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-4)
    assert any(entry["dar_member_0"] > 0 for entry in steps[6:])

    # the warm-up is plain joint training: the same run with the joint recipe is bit-identical up to step 6
    joint_probe = PredictionsAt(6, train)
    joint_args = make_args(tmp_path, exit_recipe="joint", **{k: v for k, v in settings.items() if "dar" not in k})
    EarlyExitTrainer(tiny_cascade(), joint_args, train_dataset=train, callbacks=[joint_probe]).train()
    assert all(torch.equal(probe.parameters[name], joint_probe.parameters[name]) for name in probe.parameters)


def test_runs_are_reproducible_under_the_seed(tmp_path):
    def run(seed):
        args = cascade_args(tmp_path, max_steps=6, dar_warmup_epochs=0.5, seed=seed)
        trainer = EarlyExitTrainer(tiny_cascade(), args, train_dataset=noisy_dataset(64, seed=0))
        trainer.train()
        return snapshot(trainer.model), [e["dar_member_0"] for e in trainer.state.log_history if "dar_member_0" in e]

    (first, dar_first), (second, dar_second) = run(3), run(3)
    assert dar_first == dar_second and len(dar_first) == 4
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("shared", [True, False])
def test_difficulty_column_is_read_and_survives_remove_unused_columns(tmp_path, shared):
    model = tiny_cascade(member_layers=(1, 2, 4))
    train = noisy_dataset(32, seed=0)
    difficulty = [int(i % 3 == 0) for i in range(32)] if shared else [[int(i % 3 == 0), i % 2] for i in range(32)]
    train = train.add_column("difficulty", difficulty).add_column("comment", [f"row {i}" for i in range(32)])

    seen = []

    class Recording(DifficultyAwareCascadeLoss):
        def hard_labels(self, outputs, inputs):
            assert "comment" not in inputs  # removed as unused; `difficulty` was kept
            labels = super().hard_labels(outputs, inputs)
            seen.append(labels)
            return labels

    loss = Recording(model.config, difficulty="column")
    args = cascade_args(tmp_path, max_steps=2, dar_difficulty="column", remove_unused_columns=True)
    trainer = EarlyExitTrainer(model, args, train_dataset=train, loss=loss)
    trainer.train()
    seen = torch.cat(seen)
    expected = torch.tensor([[row, row] if shared else row for row in difficulty], dtype=torch.int8)
    assert seen.shape == (32, 2)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, expected.tolist()))
    assert trainer.exit_loss.dar_start_step == 0  # labels given: DAR from the first step


def test_online_labels_are_the_current_mistakes(tmp_path):
    model = tiny_cascade(member_layers=(1, 2, 4))
    outputs, batch = outputs_and_batch(model, noisy_dataset(16, seed=2))
    loss = DifficultyAwareCascadeLoss(model.config, difficulty="online")
    hard = loss.hard_labels(outputs, batch)
    for k in range(2):
        assert torch.equal(hard[:, k].bool(), outputs.all_logits[k].argmax(-1) != batch["labels"])
    assert loss.input_columns == ("labels",)
    # a warm-up delays DAR with the other sources too
    args = cascade_args(tmp_path, max_steps=4, dar_difficulty="online", dar_warmup_epochs=0.5)
    trainer = EarlyExitTrainer(model, args, train_dataset=noisy_dataset(64, seed=0))
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [("dar_member_0" in entry) for entry in steps] == [False, False, True, True]


@pytest.mark.parametrize(
    "recipe, source", [("joint", None), ("difficulty_aware", "warmup"), ("difficulty_aware", "online")]
)
def test_a_tiny_cascade_trains(tmp_path, recipe, source):
    model = tiny_cascade(member_layers=(1, 2, 4))
    train = separable_dataset(64, seed=0)
    dar = {"dar_difficulty": source, "dar_warmup_epochs": 0.5 if source == "warmup" else None}
    args = make_args(
        tmp_path,
        exit_recipe=recipe,
        max_steps=8,
        head_learning_rate=1e-2,
        **({} if recipe == "joint" else dar),
    )
    trainer = EarlyExitTrainer(model, args, train_dataset=train)
    assert isinstance(trainer.exit_loss, JointCascadeLoss if recipe == "joint" else DifficultyAwareCascadeLoss)
    batch = as_batch(train.select(range(32)))

    def joint_loss():
        outputs, _ = outputs_and_batch(model, train.select(range(32)))
        return JointCascadeLoss(model.config)(outputs, batch)["loss"].item()

    before = joint_loss()
    trainer.train()
    assert joint_loss() < 0.7 * before
    dar = [
        entry["dar_member_0"] + entry["dar_member_1"] for entry in trainer.state.log_history if "dar_member_0" in entry
    ]
    assert (len(dar) > 0 and max(dar) > 0) == (recipe != "joint")  # DAR really was part of the objective


# --- learning rates and evaluation -----------------------------------------------------------------------------------


def test_head_learning_rate_covers_heads_and_the_smaller_members(tmp_path):
    model = tiny_cascade(member_layers=(1, 2, 4))
    args = make_args(tmp_path, learning_rate=5e-5, head_learning_rate=2e-4, exit_recipe="joint")
    optimizer = EarlyExitTrainer(model, args).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert set(rates) == set(names.values())
    for name, rate in rates.items():
        slow = name.startswith("members.2.bert.")
        assert rate == (5e-5 if slow else 2e-4), name
    assert rates["members.2.head.classifier.weight"] == 2e-4
    assert rates["members.0.bert.embeddings.word_embeddings.weight"] == 2e-4


def test_evaluation_reports_every_member_and_the_routing(tmp_path):
    model = tiny_cascade(member_layers=(1, 2, 4))
    train, dev = separable_dataset(32, seed=0), noisy_dataset(13, seed=5)
    trainer = EarlyExitTrainer(model, make_args(tmp_path, max_steps=3), train_dataset=train, eval_dataset=dev)
    trainer.train()
    batch = as_batch(dev)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        every = model(**batch, output_all_exits=True)
    # thresholds that let part of the examples leave at each non-final member
    confidences = every.all_logits.softmax(-1).amax(-1)
    model.config.exit_threshold = [float(confidences[0].quantile(0.6)), float(confidences[1].quantile(0.5))]

    metrics = trainer.evaluate()

    with torch.no_grad():
        every = model(**batch, output_all_exits=True)
        live = model(**inputs)
        full = model(**inputs, early_exit=False)
    labels = batch["labels"]
    assert len(set(live.exit_stage.tolist())) > 1
    for k in range(3):
        accuracy = (every.all_logits[k].argmax(-1) == labels).float().mean().item()
        assert metrics[f"eval_accuracy_member_{k}"] == pytest.approx(accuracy, abs=1e-6)
        assert metrics[f"eval_exit_fraction_member_{k}"] == pytest.approx((live.exit_stage == k).float().mean().item())
    assert_routing_metrics(metrics, live, full, labels, full_depth=4)
    assert metrics["eval_loss"] == pytest.approx(float(every.loss), rel=1e-5)


# --- training members on their own, assembling afterwards ------------------------------------------------------------


def test_separately_trained_members_assemble_into_a_cascade(tmp_path):
    train = separable_dataset(64, seed=0)
    members = []
    for layers, rate in ((1, 1e-2), (4, 3e-3)):
        alone = tiny_cascade(member_layers=(layers,))
        assert alone.config.num_members == 1
        args = make_args(tmp_path, exit_recipe="joint", max_steps=6, learning_rate=rate)
        EarlyExitTrainer(alone, args, train_dataset=train).train()
        members.append(alone.eval())

    cascade = BertForCascadeClassification.from_members([alone.members[0] for alone in members], exit_threshold=0.8)
    assert cascade.config.resolved_exit_pooling == ["mean", "mean"]
    batch = as_batch(separable_dataset(16, seed=4))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        alone_logits = [alone(**inputs).logits for alone in members]
        every = cascade(**inputs, output_all_exits=True)
        routed = cascade(**inputs)
    for k in range(2):  # each member is exactly the model trained alone
        torch.testing.assert_close(every.all_logits[k], alone_logits[k], rtol=0, atol=0)
    expected = torch.stack(alone_logits)[routed.exit_stage, torch.arange(16)]
    torch.testing.assert_close(routed.logits, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="Member 0 comes with a classifier trained on 'mean' pooling"):
        BertForCascadeClassification.from_members([alone.members[0] for alone in members], exit_pooling="cls")


# --- arguments and bad input -----------------------------------------------------------------------------------------


def test_dar_argument_defaults_and_command_line(tmp_path):
    args = EarlyExitTrainingArguments(output_dir=str(tmp_path), exit_recipe="difficulty_aware")
    assert (args.dar_lambda, args.dar_margin, args.dar_difficulty, args.dar_warmup_epochs) == (
        0.5,
        0.5,
        "warmup",
        None,
    )
    plain = EarlyExitTrainingArguments(output_dir=str(tmp_path))
    assert (plain.dar_lambda, plain.dar_margin, plain.dar_difficulty) == (None, None, None)
    argv = ["--output_dir", str(tmp_path), "--exit_recipe", "difficulty_aware", "--dar_lambda", "0.3"]
    argv += ["--dar_margin", "0.2", "--dar_difficulty", "online", "--dar_warmup_epochs", "0.25"]
    (parsed,) = HfArgumentParser(EarlyExitTrainingArguments).parse_args_into_dataclasses(argv)
    assert (parsed.dar_lambda, parsed.dar_margin, parsed.dar_difficulty, parsed.dar_warmup_epochs) == (
        0.3,
        0.2,
        "online",
        0.25,
    )
    assert parsed.exit_loss_weights == "linear"  # the default also reaches the command line
    loss = DifficultyAwareCascadeLoss.from_args(tiny_cascade(), parsed)
    assert loss.get_config_dict() == {"dar_lambda": 0.3, "margin": 0.2, "difficulty": "online", "warmup_epochs": 0.25}
    assert loss.seed == parsed.seed
    assert "{C}ascade{BERT}" in loss.citation


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"dar_lambda": -0.1}, "`dar_lambda` must be a finite number >= 0, got -0.1"),
        ({"dar_lambda": math.nan}, "`dar_lambda` must be a finite number >= 0"),
        ({"dar_margin": -0.5}, "`dar_margin` must be a finite number >= 0, got -0.5"),
        ({"dar_difficulty": "oracle"}, "`dar_difficulty` must be one of \\('warmup', 'column', 'online'\\)"),
        ({"dar_warmup_epochs": -1.0}, "`dar_warmup_epochs` must be a finite number >= 0"),
        ({"dar_warmup_epochs": 0.0}, "`dar_warmup_epochs` must be > 0 \\(got 0\\)"),
        (
            {"exit_recipe": "joint", "dar_margin": 0.3},
            "\\['dar_margin'\\] only apply to `exit_recipe='difficulty_aware'`",
        ),
    ],
)
def test_bad_dar_arguments_raise(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        EarlyExitTrainingArguments(output_dir=str(tmp_path), **{"exit_recipe": "difficulty_aware", **overrides})


@pytest.mark.parametrize(
    "difficulty, match",
    [
        ([[0, 1]] * 8, "row 0: 2 labels, but the cascade has 1 non-final member"),
        ([0, 1, 2, 0, 0, 0, 0, 0], "row 2: labels must be 0 \\(easy\\) or 1 \\(hard\\), got 2"),
        ([0.0] * 8, "row 0: labels must be 0 \\(easy\\) or 1 \\(hard\\), got 0.0"),
    ],
)
def test_bad_difficulty_columns_raise(tmp_path, difficulty, match):
    train = separable_dataset(8, seed=0).add_column("difficulty", difficulty)
    args = cascade_args(tmp_path, dar_difficulty="column")
    with pytest.raises(ValueError, match=match):
        EarlyExitTrainer(tiny_cascade(), args, train_dataset=train)


def test_mixed_difficulty_forms_raise():
    # Arrow cannot store such a column; a plain list (or a torch dataset) can
    with pytest.raises(ValueError, match="row 2: 0 mixes forms"):
        check_difficulty_values([[0], [1], 0], num_terms=1)
    check_difficulty_values([True, False, 1], num_terms=2)  # bools are labels too
    check_difficulty_values([(1, 0), [0, 1]], num_terms=2)


def test_bad_cascade_training_setups_raise(tmp_path):
    model = tiny_cascade()
    with pytest.raises(ValueError, match="needs a `difficulty` column in the training set; it has"):
        EarlyExitTrainer(model, cascade_args(tmp_path, dar_difficulty="column"), train_dataset=separable_dataset(8, 0))
    torch_dataset = [{k: torch.tensor(v) for k, v in row.items()} for row in separable_dataset(8, 0)]
    with pytest.raises(ValueError, match="needs a `datasets.Dataset` training set \\(got list\\)"):
        EarlyExitTrainer(model, cascade_args(tmp_path), train_dataset=torch_dataset)
    with pytest.raises(ValueError, match="sum the members' losses unweighted"):
        EarlyExitTrainer(model, make_args(tmp_path, exit_loss_weights=[1, 2]))
    with pytest.raises(ValueError, match="needs a cascade of at least two members"):
        EarlyExitTrainer(tiny_cascade(member_layers=(4,)), cascade_args(tmp_path))
    with pytest.raises(ValueError, match="needs single-label classification"):
        DifficultyAwareCascadeLoss(tiny_cascade(problem_type="multi_label_classification").config)
    # the warm-up must leave steps for DAR: 8 examples, batch 16, one step per epoch
    trainer = EarlyExitTrainer(model, cascade_args(tmp_path, max_steps=1), train_dataset=separable_dataset(8, 0))
    with pytest.raises(ValueError, match="`dar_warmup_epochs=1.0` is 1 optimizer steps, but the training has 1"):
        trainer.train()
    # a batch whose difficulty has the wrong shape (e.g. from a torch dataset, which is not checked up front)
    outputs, batch = outputs_and_batch(model, separable_dataset(4, 0))
    loss = DifficultyAwareCascadeLoss(model.config, difficulty="column")
    with pytest.raises(ValueError, match="`difficulty` has shape \\(4, 3\\) in a batch of 4"):
        loss(outputs, {**batch, "difficulty": torch.zeros(4, 3)}, step=0)
    with pytest.raises(ValueError, match="labels must be 0 \\(easy\\) or 1 \\(hard\\), got \\[0, 3\\]"):
        loss(outputs, {**batch, "difficulty": torch.tensor([0, 3, 0, 0])}, step=0)
    with pytest.raises(ValueError, match="this batch has none"):
        loss(outputs, batch, step=0)
