"""Training and evaluating the token family: stage-1 joint loss, stage-2 self-sampling, seqeval entity metrics."""

import random
import sys

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from hf_earlyexit import EarlyExitTrainer, EarlyExitTrainingArguments
from hf_earlyexit.data import DataCollatorForTokenEarlyExit, tokenize_token_dataset
from hf_earlyexit.evaluation import entity_scores, word_tags
from hf_earlyexit.losses import (
    SANDWICH_AGGRESSIVE,
    SANDWICH_NO_EXIT,
    JointTokenExitLoss,
    SelfSamplingTokenLoss,
    masked_token_losses,
)
from hf_earlyexit.models.bert.modeling_exit_heads import embed_and_mask, layer_mask
from hf_earlyexit.models.bert.token_exit_utils import TokenExitRule, word_layout
from tests.test_modeling_token_exit_bert import tiny_model, token_inputs
from tests.utils import TINY_BERT, WORDS


NUM_LAYERS = TINY_BERT["num_hidden_layers"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
LABELS = {"id2label": dict(enumerate(TAGS)), "label2id": {tag: i for i, tag in enumerate(TAGS)}}
# words that carry an entity: their tag is learnable from the word itself
PEOPLE, PLACES = ("love", "hate", "charming"), ("film", "movie", "story")


def ner_model(**overrides):
    return tiny_model(num_labels=len(TAGS), **LABELS, **overrides)


def ner_dataset(num_sentences=48, seed=0) -> Dataset:
    rng = random.Random(seed)
    sentences, tags = [], []
    for _ in range(num_sentences):
        words, labels = [], []
        for _ in range(rng.randint(2, 10)):
            word = rng.choice([*WORDS, "blorf", "zut"])
            words.append(word)
            if word in PEOPLE:
                labels.append(2 if labels and labels[-1] in (1, 2) else 1)
            elif word in PLACES:
                labels.append(4 if labels and labels[-1] in (3, 4) else 3)
            else:
                labels.append(0)
        sentences.append(words)
        tags.append(labels)
    features = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=TAGS))})
    return Dataset.from_dict({"tokens": sentences, "tags": tags}, features=features)


def make_args(tmp_path, **overrides) -> EarlyExitTrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        max_steps=4,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
    )
    return EarlyExitTrainingArguments(**{**settings, **overrides})


def labelled_inputs(model, batch_size=8, seed=0):
    inputs = token_inputs(batch_size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, model.num_labels, inputs["input_ids"].shape, generator=generator)
    _, starts = word_layout(inputs["attention_mask"], inputs["word_ids"])
    return {**inputs, "labels": torch.where(starts, labels, -100)}


# --- data ------------------------------------------------------------------------------------------------------------


def test_tokenized_rows_and_collator(tokenizer):
    dataset = tokenize_token_dataset(ner_dataset(6), tokenizer)
    assert set(dataset.column_names) >= {"input_ids", "attention_mask", "word_ids", "labels"}
    batch = DataCollatorForTokenEarlyExit(tokenizer)([dataset[i] for i in range(6)])
    lengths = batch["attention_mask"].sum(-1)
    for row in range(6):
        n = int(lengths[row])
        assert batch["word_ids"][row, :n].tolist() == dataset[row]["word_ids"]
        assert (batch["word_ids"][row, n:] == -1).all() and (batch["labels"][row, n:] == -100).all()
    with pytest.raises(ValueError, match="`tags`"):
        tokenize_token_dataset(ner_dataset(2).remove_columns("tags"), tokenizer)


# --- the copying forward -------------------------------------------------------------------------------------------


def test_active_depth_copies_states_forward():
    model = ner_model()
    inputs = token_inputs(4)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        full = model(**inputs, output_all_exits=True)
        same = model(**inputs, active_depth=torch.full_like(real, NUM_LAYERS, dtype=torch.long))
        torch.testing.assert_close(same.all_logits, full.all_logits)
        assert (same.exit_layer == torch.where(real, NUM_LAYERS, 0)).all()
        frozen = model(**inputs, active_depth=torch.ones_like(real, dtype=torch.long))
        embeddings, attention_mask = embed_and_mask(
            model.bert, inputs["input_ids"], inputs["attention_mask"], None, None, None
        )
        first = model.bert.encoder.layer[0](embeddings, layer_mask(model.config, embeddings, attention_mask))
        for k, head in enumerate(model.exit_heads):  # every exit reads the state left by layer 1
            torch.testing.assert_close(frozen.all_logits[k][real], head(first)[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(frozen.logits[real], frozen.all_logits[0][real])


def test_bad_active_depth_raises():
    model = ner_model()
    inputs = token_inputs(2)
    shape = inputs["input_ids"].shape
    with pytest.raises(ValueError, match="`active_depth` must be a tensor of shape"):
        model(**inputs, active_depth=torch.ones(shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match=r"`active_depth` must lie in \[1, 4\]"):
        model(**inputs, active_depth=torch.full(shape, NUM_LAYERS + 1))
    with pytest.raises(ValueError, match="`active_depth` must hold integers"):
        model(**inputs, active_depth=torch.ones(shape))


# --- stage 1 ---------------------------------------------------------------------------------------------------------


def test_joint_loss_is_the_models_training_loss():
    model = ner_model().train()
    batch = labelled_inputs(model)
    loss = JointTokenExitLoss(model.config)
    with torch.no_grad():
        outputs = model(**loss.model_inputs(batch, step=0))
        components = loss(outputs, batch, step=0)
        own = model(**batch).loss  # the model's own loss, labels given
    torch.testing.assert_close(components["loss"], own)
    losses, _ = masked_token_losses(outputs.all_logits, batch["labels"])
    assert [float(components[f"loss_exit_{i}"]) for i in range(1, 5)] == pytest.approx(losses.tolist())


# --- stage 2: self-sampling --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [32, 6, 5, 1])
def test_sandwich_forces_most_aggressive_and_no_exit_settings(batch_size):
    # our variant: the aggressive members take both the smallest window and the largest threshold; thresholds on a
    # fine grid
    departures = ("sandwich_both", "fine_threshold_grid")
    loss = SelfSamplingTokenLoss(ner_model().config, max_threshold=0.3, seed=1, departures=departures)
    for _ in range(5):
        windows, thresholds = loss.sample_settings(batch_size)
        aggressive = (windows == 3) & (thresholds == 0.3)
        no_exit = thresholds == 0
        assert int(aggressive.sum()) >= min(SANDWICH_AGGRESSIVE, batch_size)
        assert int(no_exit.sum()) >= min(SANDWICH_NO_EXIT, max(batch_size - SANDWICH_AGGRESSIVE, 0))
        sampled = ~no_exit
        assert set(windows.tolist()) <= set(range(3, 16, 2))
        assert ((thresholds[sampled] >= 0.01 - 1e-9) & (thresholds[sampled] <= 0.3 + 1e-9)).all()
    # over many batches every window and the whole threshold range get sampled
    windows, thresholds = loss.sample_settings(4000)
    assert set(windows.tolist()) == set(range(3, 16, 2))
    assert float(thresholds[thresholds > 0].min()) == pytest.approx(0.01)
    assert len(set(thresholds[thresholds > 0].tolist())) == 30


def test_released_sampling_grid_and_coin_flip_sandwich():
    loss = SelfSamplingTokenLoss(ner_model().config, max_threshold=0.3, seed=2)
    assert loss.thresholds == (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
    smallest_window = largest_threshold = 0
    for _ in range(200):
        windows, thresholds = loss.sample_settings(2)  # a batch of two: both are the aggressive members
        grid = torch.tensor(loss.thresholds)
        assert bool(torch.isclose(thresholds.unsqueeze(-1), grid).any(-1).all())
        # each aggressive member gets the smallest window or the largest threshold, by a coin flip
        assert bool(((windows == 3) | (thresholds == 0.3)).all())
        smallest_window += int((windows == 3).sum())
        largest_threshold += int((thresholds == 0.3).sum())
    # both sides of the coin come up (with the draws that also land there by chance)
    assert 150 < smallest_window < 300 and 150 < largest_threshold < 300
    with pytest.raises(ValueError, match="Unknown `self_sampling_departures` \\['coarse'\\]"):
        SelfSamplingTokenLoss(ner_model().config, departures=("coarse",))


@pytest.mark.parametrize("departures", [(), ("config_replay_schedule",)])
def test_replay_applies_each_sentences_own_rule(departures):
    model = ner_model()
    inputs = token_inputs(8, seed=3)
    with torch.no_grad():
        all_logits = model(**inputs, output_all_exits=True).all_logits
    loss = SelfSamplingTokenLoss(model.config, departures=departures)
    windows, thresholds = loss.sample_settings(8)
    depth = loss.replay(all_logits, inputs["attention_mask"], inputs["word_ids"], windows, thresholds)
    # released: tau in the lower half of the layers, min(2 tau, 0.5) in the upper half; ours: the config's (constant)
    schedule = {"threshold_schedule": "paper", "threshold_cap": 0.5} if not departures else {}
    for row in range(8):
        rule = TokenExitRule.build(
            "token", float(thresholds[row]), [1, 2, 3, 4], 4, window_size=int(windows[row]), **schedule
        )
        index = rule.simulate(
            all_logits[:, row : row + 1], inputs["attention_mask"][row : row + 1], inputs["word_ids"][row : row + 1]
        )
        expected = torch.where(index >= 0, index + 1, 0)[0]
        assert depth[row].tolist() == expected.tolist()
        if thresholds[row] == 0:
            assert set(depth[row][inputs["attention_mask"][row].bool()].tolist()) == {NUM_LAYERS}
    assert len(depth[inputs["attention_mask"].bool()].unique()) >= 2


def random_depth(batch, seed=0):
    real = batch["attention_mask"].bool()
    return torch.where(
        real, torch.randint(1, NUM_LAYERS + 1, real.shape, generator=torch.Generator().manual_seed(seed)), 0
    )


@pytest.mark.parametrize("departures", [(), ("mean_over_active_words",)])
def test_exited_words_get_no_loss_at_later_layers(departures):
    model = ner_model()
    batch = labelled_inputs(model, seed=1)
    loss = SelfSamplingTokenLoss(model.config, departures=departures)
    depth = random_depth(batch)
    with torch.no_grad():
        outputs = model(**{k: v for k, v in batch.items() if k != "labels"}, active_depth=depth)
    all_logits = outputs.all_logits.clone().requires_grad_(True)
    outputs.all_logits = all_logits
    components = loss(outputs, batch, step=0)
    components["loss"].backward()
    grad = all_logits.grad.abs().sum(-1)  # (exits, batch, seq)
    layers = torch.arange(1, NUM_LAYERS + 1).view(-1, 1, 1)
    labelled = batch["labels"] != -100
    exited = layers > depth.unsqueeze(0)
    assert (grad[exited] == 0).all()
    assert (grad[~exited & labelled.unsqueeze(0)] > 0).all()
    # by hand, the linearly weighted mean over exits of each exit's loss on the words active there: released, their
    # summed cross-entropy over all labelled words of the batch; ours, their mean cross-entropy
    terms = []
    for k in range(NUM_LAYERS):
        keep = labelled & (depth >= k + 1)
        ce = torch.nn.functional.cross_entropy(
            outputs.all_logits[k][keep].detach(), batch["labels"][keep], reduction="sum"
        )
        terms.append((k + 1) * ce / (int(keep.sum()) if departures else int(labelled.sum())))
    assert float(components["loss"].detach()) == pytest.approx(float(sum(terms) / 10), rel=1e-5)


@pytest.mark.parametrize("departures", [(), ("flooding_per_exit", "mean_over_active_words")])
def test_flooding_against_the_stage_one_loss(departures):
    model = ner_model()
    batch = labelled_inputs(model, seed=2)
    loss = SelfSamplingTokenLoss(model.config, flooding=0.1, departures=departures)
    depth = random_depth(batch, seed=1)
    with torch.no_grad():
        outputs = model(**{k: v for k, v in batch.items() if k != "labels"}, active_depth=depth)
    stage_one = outputs.all_logits + 0.5 * torch.randn_like(outputs.all_logits)
    # the loss looks a batch's stage-1 logits up by the rows of its sentences in the training set
    real = batch["attention_mask"].bool()
    loss.stage_one_logits = [stage_one[:, row, real[row]] for row in range(len(real))]
    batch = {**batch, "self_sampling_example_index": torch.arange(len(real))}
    value = float(loss(outputs, batch, step=0)["loss"])
    labelled = batch["labels"] != -100
    terms = []
    for k in range(NUM_LAYERS):
        keep = labelled & (depth >= k + 1)
        new = torch.nn.functional.cross_entropy(outputs.all_logits[k][keep], batch["labels"][keep], reduction="none")
        old = torch.nn.functional.cross_entropy(stage_one[k][keep], batch["labels"][keep], reduction="none")
        if departures:  # ours: flooding on each exit's mean over its active words
            terms.append((k + 1) * abs(float(new.mean() - old.mean()) - 0.1))
        else:  # released: flooding on each word, summed over the active words, over all labelled words
            terms.append((k + 1) * float((new - old - 0.1).abs().sum()) / int(labelled.sum()))
    assert value == pytest.approx(sum(terms) / 10, rel=1e-5)


def test_self_sampling_trains_and_evaluates(tmp_path, tokenizer):
    model = ner_model()
    train = tokenize_token_dataset(ner_dataset(40), tokenizer)
    dev = tokenize_token_dataset(ner_dataset(24, seed=1), tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = make_args(
        tmp_path, exit_recipe="self_sampling", self_sampling_max_threshold=0.4, self_sampling_flooding=0.0
    )
    trainer = EarlyExitTrainer(
        model, args, train_dataset=train, eval_dataset=dev, data_collator=DataCollatorForTokenEarlyExit(tokenizer)
    )
    assert isinstance(trainer.exit_loss, SelfSamplingTokenLoss)
    stored = trainer.exit_loss.stage_one_logits
    assert len(stored) == 40 and stored[0].shape == (NUM_LAYERS, len(train[0]["input_ids"]), len(TAGS))
    # the stored logits are the stage-1 model's, in evaluation mode
    with torch.no_grad():
        row = {k: torch.tensor([train[0][k]]) for k in ("input_ids", "attention_mask", "word_ids")}
        torch.testing.assert_close(stored[0], model.eval()(**row, output_all_exits=True).all_logits[:, 0])
    result = trainer.train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    logged = trainer.state.log_history[0]
    assert {"loss_exit_1", "loss_exit_4", "active_words_exit_4", "flooding_gap"} <= set(logged)
    assert logged["active_words_exit_1"] == pytest.approx(1.0)
    assert 0 < logged["active_words_exit_4"] <= 1.0
    check_evaluation(trainer, model, dev, tokenizer)


def check_evaluation(trainer, model, dev, tokenizer):
    """The trainer's metrics equal seqeval and exit statistics measured on a direct early-exit run."""
    metrics = trainer.evaluate()
    model.eval()
    collator = DataCollatorForTokenEarlyExit(tokenizer)
    predictions, references, layers, words, flops, reference = [], [], 0, 0, 0, 0
    for start in range(0, len(dev), 8):
        batch = collator([dev[i] for i in range(start, min(start + 8, len(dev)))])
        labels = batch.pop("labels")
        with torch.no_grad():
            out = model(**batch)
            full = model(**batch, early_exit=False)
        p, r = word_tags(out.logits, labels, model.config.id2label)
        predictions += p
        references += r
        starts = labels != -100
        layers += int(out.exit_layer[starts].sum())
        words += int(starts.sum())
        flops += int(out.flops.sum())
        reference += int(full.flops.sum())
    expected = entity_scores(predictions, references)
    assert metrics["eval_f1"] == pytest.approx(expected["f1"])
    assert metrics["eval_precision"] == pytest.approx(expected["precision"])
    assert metrics["eval_recall"] == pytest.approx(expected["recall"])
    for name, scores in expected["per_type"].items():
        if scores["support"]:
            assert metrics[f"eval_recall_{name}"] == pytest.approx(scores["recall"])
    assert metrics["eval_mean_exit_layer"] == pytest.approx(layers / words)
    assert metrics["eval_flops_speedup"] == pytest.approx(reference / flops)
    assert metrics["eval_layer_speedup"] == pytest.approx(NUM_LAYERS * words / layers)
    assert 0 <= metrics["eval_token_accuracy"] <= 1


def test_joint_recipe_trains_the_token_family(tmp_path, tokenizer):
    model = ner_model(exit_threshold=0.3)
    train = tokenize_token_dataset(ner_dataset(32), tokenizer)
    dev = tokenize_token_dataset(ner_dataset(16, seed=1), tokenizer)
    trainer = EarlyExitTrainer(
        model,
        make_args(tmp_path, max_steps=3),
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorForTokenEarlyExit(tokenizer),
    )
    assert isinstance(trainer.exit_loss, JointTokenExitLoss)
    trainer.train()
    assert "loss_exit_2" in trainer.state.log_history[0]
    check_evaluation(trainer, model, dev, tokenizer)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"self_sampling_flooding": 0.1}, r"\['self_sampling_flooding'\] only apply to `exit_recipe='self_sampling'`"),
        ({"self_sampling_max_threshold": 0.3}, "self_sampling_max_threshold"),
        (
            {"exit_recipe": "self_sampling", "self_sampling_max_threshold": 0.0},
            "`self_sampling_max_threshold` must be",
        ),
        (
            {"exit_recipe": "self_sampling", "self_sampling_max_threshold": 1.5},
            "`self_sampling_max_threshold` must be",
        ),
        ({"exit_recipe": "self_sampling", "self_sampling_flooding": -0.1}, "`self_sampling_flooding` must be"),
        ({"exit_recipe": "self_sampling", "self_sampling_flooding": float("nan")}, "`self_sampling_flooding` must be"),
    ],
)
def test_bad_self_sampling_arguments(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **overrides)


def test_self_sampling_defaults_and_bad_setups(tmp_path, tokenizer):
    args = make_args(tmp_path, exit_recipe="self_sampling")
    assert args.self_sampling_max_threshold == 0.5 and args.self_sampling_flooding is None
    with pytest.raises(ValueError, match="`windows`"):
        SelfSamplingTokenLoss(ner_model().config, windows=(4,))
    loss = SelfSamplingTokenLoss(ner_model().config)
    with pytest.raises(ValueError, match="no stage-1 logits"):
        loss.model_inputs({**labelled_inputs(ner_model()), "self_sampling_example_index": torch.arange(8)}, step=0)
    with pytest.raises(ValueError, match="has no loss for models of type 'bypass-bert'"):
        from tests.test_trainer import tiny_model as bypass_model

        EarlyExitTrainer(bypass_model(), args)


def test_missing_seqeval_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "seqeval", None)
    monkeypatch.setitem(sys.modules, "seqeval.metrics", None)
    monkeypatch.setitem(sys.modules, "seqeval.metrics.sequence_labeling", None)
    with pytest.raises(ImportError, match=r"pip install 'hf_earlyexit\[ner\]'"):
        entity_scores([["B-PER"]], [["B-PER"]])


def test_bad_collator_and_stage_one_inputs(tmp_path, tokenizer):
    rows = tokenize_token_dataset(ner_dataset(2), tokenizer)
    features = [rows[0], {k: v for k, v in rows[1].items() if k != "word_ids"}]
    with pytest.raises(ValueError, match="`word_ids`"):
        DataCollatorForTokenEarlyExit(tokenizer)(features)
    model = ner_model()
    args = make_args(tmp_path, exit_recipe="self_sampling")
    with pytest.raises(ValueError, match="needs a `datasets.Dataset` training set"):
        EarlyExitTrainer(model, args, train_dataset=[rows[0]], data_collator=DataCollatorForTokenEarlyExit(tokenizer))
    trainer = EarlyExitTrainer(model, args, train_dataset=rows, data_collator=DataCollatorForTokenEarlyExit(tokenizer))
    batch = DataCollatorForTokenEarlyExit(tokenizer)([trainer.train_dataset[0], trainer.train_dataset[1]])
    batch["attention_mask"][0, 1] = 0  # one position fewer than when its logits were recorded
    with pytest.raises(ValueError, match="must not change"):
        trainer.exit_loss.batch_stage_one(batch)
    with pytest.raises(ValueError, match="no `self_sampling_example_index` column"):
        trainer.exit_loss.batch_stage_one({k: v for k, v in batch.items() if k != "self_sampling_example_index"})


@pytest.mark.parametrize("schedule", ["constant", "paper"])
@pytest.mark.parametrize("mode", ["token", "sentence"])
def test_per_sentence_thresholds_decide_as_each_sentence_alone(mode, schedule):
    model = ner_model()
    inputs = token_inputs(6, seed=4)
    with torch.no_grad():
        all_logits = model(**inputs, output_all_exits=True).all_logits
    taus = torch.tensor([0.0, 0.2, 0.5, 0.9, 0.35, 1.0])
    rule = TokenExitRule.build(mode, 0.3, [1, 2, 3, 4], 4, window_size=3, threshold_schedule=schedule)
    batched = rule.for_examples(taus, 6, [1, 2, 3, 4], 4, threshold_schedule=schedule).simulate(
        all_logits, inputs["attention_mask"], inputs["word_ids"]
    )
    for row in range(6):
        alone = TokenExitRule.build(
            mode, float(taus[row]), [1, 2, 3, 4], 4, window_size=3, threshold_schedule=schedule
        )
        expected = alone.simulate(
            all_logits[:, row : row + 1], inputs["attention_mask"][row : row + 1], inputs["word_ids"][row : row + 1]
        )
        assert batched[row].tolist() == expected[0].tolist()
    with pytest.raises(ValueError, match="one number per sentence"):
        rule.for_examples(taus.unsqueeze(-1).expand(6, 4), 6, [1, 2, 3, 4], 4, threshold_schedule="paper")
