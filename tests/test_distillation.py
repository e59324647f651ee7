"""The `teacher_distillation` recipe: logit distillation of a (one-member) cascade from a fine-tuned teacher."""

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from hf_earlyexit import EarlyExitTrainer
from hf_earlyexit.losses import TeacherDistillationLoss, logit_distillation_loss
from tests.test_cascade_training import tiny_cascade
from tests.test_trainer import make_args, separable_dataset
from tests.utils import tiny_config_kwargs


def test_logit_distillation_by_hand():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    terms = logit_distillation_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.5)
    # at T = 2 the two distributions are sigmoid(+-0.5) mirrored: KL = (s(0.5) - s(-0.5)) * 0.5 = tanh(0.25) / 2
    kl = math.tanh(0.25) / 2
    ce = math.log(1 + math.exp(-1.0))
    assert float(terms["kl"]) == pytest.approx(kl, abs=1e-6)
    assert float(terms["ce"]) == pytest.approx(ce, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(0.5 * 4 * kl + 0.5 * ce, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(0.4015495, abs=1e-6)
    # alpha = 0 is plain cross-entropy; alpha = 1 the soft term alone; a teacher equal to the student adds nothing
    assert float(logit_distillation_loss(student, teacher, torch.tensor([0]), 2.0, 0.0)["loss"]) == pytest.approx(ce)
    assert float(logit_distillation_loss(student, teacher, torch.tensor([0]), 2.0, 1.0)["loss"]) == pytest.approx(
        4 * kl
    )
    assert float(logit_distillation_loss(student, student, torch.tensor([1]), 3.0, 1.0)["loss"]) == 0.0


def test_no_gradient_reaches_the_teacher_logits():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    logit_distillation_loss(student, teacher, torch.tensor([0, 1, 2, 0]))["loss"].backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def teacher_model(tmp_path):
    torch.manual_seed(3)
    teacher = BertForSequenceClassification(BertConfig(**tiny_config_kwargs(num_labels=2))).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    return teacher


def training_sets(tmp_path):
    """A training set, and the same with the saved teacher's logits as a `teacher_logits` column."""
    teacher = teacher_model(tmp_path)
    train = separable_dataset(64, seed=0)
    with torch.no_grad():
        logits = teacher(
            input_ids=torch.tensor(train["input_ids"]), attention_mask=torch.tensor(train["attention_mask"])
        ).logits
    return train, train.add_column("teacher_logits", logits.tolist())


def test_teacher_column_and_teacher_model_train_the_same_student(tmp_path):
    train, with_column = training_sets(tmp_path)

    def trained(dataset, **args):
        model = tiny_cascade(member_layers=(2,))
        arguments = make_args(tmp_path / "out", exit_recipe="teacher_distillation", max_steps=4, **args)
        trainer = EarlyExitTrainer(model, arguments, train_dataset=dataset)
        assert isinstance(trainer.exit_loss, TeacherDistillationLoss)
        trainer.train()
        return model, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    by_column, column_losses = trained(with_column)
    by_model, model_losses = trained(train, distillation_teacher=str(tmp_path / "teacher"))
    assert column_losses == pytest.approx(model_losses, rel=1e-5)
    for (name, a), b in zip(by_column.named_parameters(), by_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # the student moved towards the teacher: its KL to the teacher fell
    assert column_losses[-1] < column_losses[0]


def test_distillation_arguments(tmp_path):
    args = make_args(tmp_path, exit_recipe="teacher_distillation")
    assert (args.distillation_temperature, args.distillation_alpha, args.distillation_teacher) == (2.0, 0.5, None)
    with pytest.raises(
        ValueError, match=r"\['distillation_alpha'\] only apply to `exit_recipe='teacher_distillation'`"
    ):
        make_args(tmp_path, exit_recipe="joint", distillation_alpha=0.3)
    with pytest.raises(ValueError, match="`distillation_temperature` must be a finite number > 0, got 0"):
        make_args(tmp_path, exit_recipe="teacher_distillation", distillation_temperature=0)
    with pytest.raises(ValueError, match=r"`distillation_alpha` must be a number in \[0, 1\], got 1.5"):
        make_args(tmp_path, exit_recipe="teacher_distillation", distillation_alpha=1.5)


def test_distillation_without_a_teacher_is_refused(tmp_path):
    args = make_args(tmp_path, exit_recipe="teacher_distillation")
    with pytest.raises(ValueError, match="needs the teacher's logits: a 'teacher_logits' column"):
        EarlyExitTrainer(tiny_cascade(member_layers=(2,)), args, train_dataset=separable_dataset(8, seed=0))


def test_a_teacher_with_other_labels_is_refused(tmp_path):
    BertForSequenceClassification(BertConfig(**tiny_config_kwargs(num_labels=3))).save_pretrained(tmp_path / "t3")
    args = make_args(tmp_path, exit_recipe="teacher_distillation", distillation_teacher=str(tmp_path / "t3"))
    with pytest.raises(ValueError, match="has 3 labels, the student 2"):
        EarlyExitTrainer(tiny_cascade(member_layers=(2,)), args, train_dataset=separable_dataset(8, seed=0))


# --- multi-exit models ---------------------------------------------------------------------------------------------


def test_multi_exit_distillation_by_hand():
    from types import SimpleNamespace

    from hf_earlyexit.losses import MultiExitTeacherDistillationLoss
    from tests.test_modeling_bypass_bert import tiny_model

    config = tiny_model(num_labels=2).config  # exits after layers 1-4: linear weights 1, 2, 3, 4
    loss = MultiExitTeacherDistillationLoss(config, temperature=2.0, alpha=0.5)
    exits = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # (exits, batch 1, labels)
    teacher = torch.tensor([[0.0, 1.0]])
    out = loss(SimpleNamespace(all_logits=exits), {"labels": torch.tensor([0]), "teacher_logits": teacher}, step=0)
    # exits 1 and 3 disagree with the teacher (the by-hand case above), exits 2 and 4 agree with it (KL 0)
    kl, ce_right, ce_wrong = math.tanh(0.25) / 2, math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0))
    disagree, agree = 0.5 * 4 * kl + 0.5 * ce_right, 0.5 * ce_wrong
    expected = (1 * disagree + 2 * agree + 3 * disagree + 4 * agree) / 10
    assert float(out["loss"]) == pytest.approx(expected, abs=1e-6)
    assert float(out["loss_exit_2"]) == pytest.approx(agree, abs=1e-6) and float(out["kl_exit_1"]) == pytest.approx(kl)
    # evaluation data without teacher logits: the joint recipe's loss on the labels
    joint = loss(SimpleNamespace(all_logits=exits), {"labels": torch.tensor([0])}, step=None)
    assert float(joint["loss"]) == pytest.approx((1 * ce_right + 2 * ce_wrong + 3 * ce_right + 4 * ce_wrong) / 10)


def test_multi_exit_distillation_trains_from_a_column_as_from_the_teacher(tmp_path):
    from hf_earlyexit.losses import MultiExitTeacherDistillationLoss
    from tests.test_modeling_bypass_bert import tiny_model

    train, with_column = training_sets(tmp_path)

    def trained(dataset, **args):
        torch.manual_seed(0)
        model = tiny_model(num_labels=2).train()
        arguments = make_args(tmp_path / "out", exit_recipe="teacher_distillation", max_steps=4, **args)
        trainer = EarlyExitTrainer(model, arguments, train_dataset=dataset)
        assert isinstance(trainer.exit_loss, MultiExitTeacherDistillationLoss)
        trainer.train()
        return model, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    by_column, column_losses = trained(with_column, gradient_equilibrium=True)
    by_model, model_losses = trained(train, distillation_teacher=str(tmp_path / "teacher"), gradient_equilibrium=True)
    assert column_losses == pytest.approx(model_losses, rel=1e-5)
    for (name, a), b in zip(by_column.named_parameters(), by_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="self_distillation_weight"):
        trained(with_column, self_distillation_weight=1.0)


# --- sequence labelling -----------------------------------------------------------------------------------------------


def test_token_distillation_column_and_teacher_model_agree_and_match_the_formula(tmp_path, tokenizer):
    from transformers import BertForTokenClassification

    from hf_earlyexit.data import DataCollatorForTokenEarlyExit, tokenize_token_dataset
    from hf_earlyexit.losses import TokenTeacherDistillationLoss
    from tests.test_token_training import LABELS, TAGS, ner_dataset, ner_model

    torch.manual_seed(5)
    teacher = BertForTokenClassification(BertConfig(**tiny_config_kwargs(num_labels=len(TAGS), **LABELS))).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    rows = tokenize_token_dataset(ner_dataset(24), tokenizer)
    collator = DataCollatorForTokenEarlyExit(tokenizer)
    per_word = []
    for row in rows:
        batch = collator([row])
        with torch.no_grad():
            logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0]
        per_word.append(logits[batch["labels"][0] != -100].tolist())
    with_column = rows.add_column("teacher_logits", per_word)

    # the loss of one batch, by the formula: every exit's per-word KL and CE, then the linear exit weights
    student = ner_model(num_hidden_layers=2, exit_layers=[2])
    batch = collator([with_column[i] for i in range(6)])
    loss = TokenTeacherDistillationLoss(student.config, temperature=2.0, alpha=0.3)
    student.train()
    with torch.no_grad():
        outputs = student(**loss.model_inputs(batch, step=0))
        labelled = batch["labels"] != -100
        expected = logit_distillation_loss(
            outputs.all_logits[0][labelled],
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[labelled],
            batch["labels"][labelled],
            2.0,
            0.3,
        )["loss"]
        assert float(loss(outputs, batch, step=0)["loss"]) == pytest.approx(float(expected), rel=1e-5)

    def trained(dataset, **args):
        torch.manual_seed(0)
        model = ner_model(num_hidden_layers=2, exit_layers=[2])
        arguments = make_args(tmp_path / "out", exit_recipe="teacher_distillation", max_steps=3, **args)
        trainer = EarlyExitTrainer(model, arguments, train_dataset=dataset, data_collator=collator)
        assert isinstance(trainer.exit_loss, TokenTeacherDistillationLoss)
        trainer.train()
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    assert trained(with_column) == pytest.approx(
        trained(rows, distillation_teacher=str(tmp_path / "teacher")), rel=1e-5
    )
