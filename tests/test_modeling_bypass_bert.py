import logging

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as bypass_logging

from hf_earlyexit import BertWithBypassExits, BypassBertConfig
from tests.family_tester import EarlyExitFamilyTesterMixin
from tests.utils import sst2_rows, tiny_config_kwargs


def tiny_model(**config_overrides) -> BertWithBypassExits:
    config = BypassBertConfig(**tiny_config_kwargs(**config_overrides))
    model = BertWithBypassExits(config).eval()
    with torch.no_grad():  # a fresh bypass is the identity; make it do something so the tests exercise it
        for bypass in model.bypasses or []:
            bypass.up.weight.normal_(0, 0.2)
    return model


def padded_inputs(batch_size=6, max_len=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (batch_size, max_len), generator=generator)
    lengths = torch.randint(3, max_len + 1, (batch_size,), generator=generator)
    lengths[0] = max_len
    attention_mask = (torch.arange(max_len) < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    input_ids[:, 0] = 2  # [CLS]
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def spread_thresholds(model, inputs, quantile=0.5):
    """Per-exit max_prob thresholds that let about half of the remaining examples leave at every exit."""
    with torch.no_grad():
        all_logits = model(**inputs, output_all_exits=True).all_logits
    confidences = all_logits.softmax(-1).max(-1).values
    return [float(c.quantile(quantile)) for c in confidences]


class TestBypassFamily(EarlyExitFamilyTesterMixin):
    model_class = BertWithBypassExits
    config_class = BypassBertConfig
    task_auto_class = AutoModelForSequenceClassification
    never_exit = {"exit_threshold": 1.0}
    always_exit = {"exit_threshold": 0.0}
    mixed_exit = {"exit_threshold": [0.52, 0.52, 0.52, 0.52]}

    def build_model(self):
        return tiny_model(num_labels=3)

    def make_inputs(self, batch_size=6):
        return padded_inputs(batch_size)

    def first_exit_logits(self, model, inputs):
        with torch.no_grad():
            return model(**inputs, output_all_exits=True).all_logits[0]


# --- equivalence with transformers -------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_layer_loop_equals_bert_model(attn_implementation):
    model = tiny_model(num_labels=2)
    model.set_attn_implementation(attn_implementation)
    inputs = padded_inputs(batch_size=5)
    captured = {}
    model.bert.encoder.layer[-1].register_forward_hook(lambda m, args, out: captured.setdefault("h", out))
    with torch.no_grad():
        model(**inputs, early_exit=False)
        reference = model.bert(**inputs).last_hidden_state
    # our loop drops all-padding columns (none here: row 0 has full length)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(captured["h"][real], reference[real], rtol=0, atol=1e-5)


def test_full_depth_equals_plain_bert_plus_last_head():
    model = tiny_model(num_labels=3, exit_pooling="pooler")
    inputs = padded_inputs(batch_size=7)
    plain = BertModel(BertConfig(**tiny_config_kwargs()), add_pooling_layer=False).eval()
    plain.load_state_dict(model.bert.state_dict())
    with torch.no_grad():
        hidden = plain(**inputs).last_hidden_state
        expected = model.exit_heads[-1](hidden, inputs["attention_mask"], model.bypasses[-1])
        out = model(**inputs, early_exit=False)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)
    assert out.exit_layer.tolist() == [4] * 7


def test_from_plain_bert_checkpoint_keeps_backbone_weights(tmp_path):
    plain = BertModel(BertConfig(**tiny_config_kwargs())).eval()
    plain.save_pretrained(tmp_path)
    model = BertWithBypassExits.from_pretrained(tmp_path, num_labels=4, exit_criterion="entropy", exit_threshold=0.2)
    assert model.config.model_type == "bypass-bert"
    assert model.config.exit_criterion == "entropy" and model.config.num_labels == 4
    for name, tensor in plain.state_dict().items():
        if not name.startswith("pooler"):
            torch.testing.assert_close(model.bert.state_dict()[name], tensor, rtol=0, atol=0)


def _assert_bypasses_are_identity(model):
    z = torch.randn(5, model.config.hidden_size)
    for bypass in model.bypasses:
        assert torch.count_nonzero(bypass.up.weight) == 0 and torch.count_nonzero(bypass.up.bias) == 0
        torch.testing.assert_close(bypass(z), z, rtol=0, atol=0)


@pytest.mark.parametrize("use_bypass", [False, True])
def test_fine_tuned_classifier_head_becomes_the_last_exit(tmp_path, use_bypass):
    torch.manual_seed(0)
    classifier = BertForSequenceClassification(BertConfig(**tiny_config_kwargs(num_labels=3))).eval()
    classifier.save_pretrained(tmp_path)
    model = BertWithBypassExits.from_pretrained(tmp_path, exit_pooling="pooler", use_bypass=use_bypass).eval()
    inputs = padded_inputs(batch_size=4)
    with torch.no_grad():
        expected = classifier(**inputs).logits
        torch.testing.assert_close(model(**inputs, early_exit=False).logits, expected, rtol=0, atol=1e-5)
    # the other exits are new, and an exit pooling the stock head does not read leaves the last one new too (warned)
    assert not torch.equal(model.exit_heads[0].classifier.weight, model.exit_heads[-1].classifier.weight)
    with CaptureLogger(bypass_logging.get_logger("hf_earlyexit.models.bert.modeling_bypass_bert")) as captured:
        mean = BertWithBypassExits.from_pretrained(tmp_path, exit_pooling="mean").eval()
    assert "exit_pooling='pooler'" in captured.out
    assert not torch.equal(mean.exit_heads[-1].classifier.weight, classifier.classifier.weight)


def test_fresh_bypass_is_the_identity_from_a_config():
    model = BertWithBypassExits(BypassBertConfig(**tiny_config_kwargs(use_bypass=True)))
    _assert_bypasses_are_identity(model)
    # the down-projection is initialised as any BERT linear layer, not left at zero
    assert model.bypasses[0].down.weight.std() > 0.01


def test_fresh_bypass_is_the_identity_from_a_plain_bert_checkpoint(tmp_path):
    BertModel(BertConfig(**tiny_config_kwargs())).save_pretrained(tmp_path)
    model = BertWithBypassExits.from_pretrained(tmp_path, num_labels=2, use_bypass=True)
    _assert_bypasses_are_identity(model)


def test_trained_bypass_weights_survive_a_reload(tmp_path):
    model = tiny_model(use_bypass=True)
    model.save_pretrained(tmp_path)
    reloaded = BertWithBypassExits.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.bypasses[0].up.weight, model.bypasses[0].up.weight, rtol=0, atol=0)


# --- real skipping ------------------------------------------------------------------------------------------------


def test_exited_examples_are_not_computed_again():
    model = tiny_model(num_labels=2)
    inputs = padded_inputs(batch_size=16, seed=3)
    thresholds = spread_thresholds(model, inputs)
    rows_seen = []
    hooks = [
        layer.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape[0]))
        for layer in model.bert.encoder.layer
    ]
    with torch.no_grad():
        out = model(**inputs, exit_threshold=thresholds)
    for hook in hooks:
        hook.remove()
    exit_layer = out.exit_layer
    assert len(exit_layer.unique()) >= 3, exit_layer  # the thresholds spread the exits
    expected_rows = [int((exit_layer >= layer).sum()) for layer in range(1, 5)]
    expected_rows = [rows for rows in expected_rows if rows > 0]
    assert rows_seen == expected_rows


def test_batch_where_all_exit_early_runs_one_layer():
    model = tiny_model(num_labels=2)
    calls = []
    for layer in model.bert.encoder.layer:
        layer.register_forward_hook(lambda m, args, out: calls.append(1))
    with torch.no_grad():
        out = model(**padded_inputs(), exit_threshold=0.0)
    assert len(calls) == 1 and out.exit_layer.eq(1).all()


@pytest.mark.parametrize("output_hidden_states", [False, True])
def test_rows_left_answering_together_end_the_loop_with_the_answers_of_single_calls(output_hidden_states):
    model = tiny_model(num_labels=2)
    inputs = padded_inputs(batch_size=8, seed=3)
    # about half leave at the first exit, every remaining example at the second
    thresholds = [spread_thresholds(model, inputs)[0], 0.0, 1.0, 1.0]
    rows_seen = []
    for layer in model.bert.encoder.layer:
        layer.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape[0]))
    with torch.no_grad():
        out = model(**inputs, exit_threshold=thresholds, output_hidden_states=output_hidden_states)
    assert 0 < int(out.exit_layer.eq(1).sum()) < 8 and out.exit_layer.le(2).all()
    assert rows_seen == [8, int(out.exit_layer.eq(2).sum())]
    for i in range(8):
        length = int(inputs["attention_mask"][i].sum())
        with torch.no_grad():
            single = model(input_ids=inputs["input_ids"][i : i + 1, :length], exit_threshold=thresholds)
        assert int(single.exit_layer) == int(out.exit_layer[i])
        torch.testing.assert_close(single.logits[0], out.logits[i], rtol=0, atol=1e-5)
    if output_hidden_states:
        assert len(out.hidden_states) == 5 and out.hidden_states[3].eq(0).all()  # layers no row ran are zeros


@pytest.mark.parametrize("use_bypass, pooling", [(True, "mean"), (False, "pooler"), (True, "cls")])
def test_executed_flops_follow_reported_flops(use_bypass, pooling):
    model = tiny_model(num_labels=3, use_bypass=use_bypass, exit_pooling=pooling)
    model.set_attn_implementation("eager")  # FlopCounterMode prices eager attention's matmuls
    inputs = padded_inputs(batch_size=12, seed=5)
    thresholds = spread_thresholds(model, inputs)
    reported = 0
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        # one example at a time: no padding, so executed work is exactly what the per-example count prices
        for i in range(12):
            length = int(inputs["attention_mask"][i].sum())
            out = model(input_ids=inputs["input_ids"][i : i + 1, :length], exit_threshold=thresholds)
            reported += int(out.flops.sum())
    assert counter.get_total_flops() == reported
    # and the batched path reports the same per-example FLOPs
    with torch.no_grad():
        batched = model(**inputs, exit_threshold=thresholds)
    assert int(batched.flops.sum()) == reported


def test_full_depth_flops_match_a_plain_model():
    model = tiny_model(num_labels=2, use_bypass=False, exit_pooling="pooler")
    model.set_attn_implementation("eager")
    ids = torch.randint(5, 99, (1, 10))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(input_ids=ids, early_exit=False)
    assert counter.get_total_flops() == int(out.flops[0])


# --- criteria wired into the model --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        dict(exit_criterion="max_prob", exit_threshold=0.55),
        dict(exit_criterion="entropy", exit_threshold=0.68),
        dict(exit_criterion="normalized_entropy", exit_threshold=[0.99, 0.98, 0.97, 0.0]),
        dict(exit_criterion="patience", patience=1),
        dict(exit_criterion="patience", patience=2),
        dict(exit_criterion="divergence", exit_threshold=0.001, divergence="jsd"),
        dict(exit_criterion="divergence", exit_threshold=0.01, divergence="kl", patience=2),
        dict(exit_criterion="divergence", exit_threshold=0.01, divergence="symmetric_kl"),
    ],
)
def test_each_criterion_matches_its_simulation(settings):
    model = tiny_model(num_labels=2)
    inputs = padded_inputs(batch_size=16, seed=7)
    with torch.no_grad():
        live = model(**inputs, **settings)
        recorded = model(**inputs, output_all_exits=True, **settings)
    assert torch.equal(live.exit_layer, recorded.exit_layer)
    torch.testing.assert_close(live.logits, recorded.logits, rtol=0, atol=1e-5)


def test_config_criterion_is_used_and_override_wins():
    model = tiny_model(num_labels=2, exit_criterion="max_prob", exit_threshold=0.0)
    inputs = padded_inputs()
    with torch.no_grad():
        assert model(**inputs).exit_layer.eq(1).all()
        assert model(**inputs, exit_threshold=1.0).exit_layer.eq(4).all()
        # switching criterion without a threshold uses that criterion's default, not the saved max_prob value
        out = model(**inputs, exit_criterion="entropy")
    assert out.exit_layer.shape == (6,)


def test_regression_with_patience():
    model = tiny_model(num_labels=1, exit_criterion="patience", patience=1, regression_tolerance=1e6)
    with torch.no_grad():
        out = model(**padded_inputs())
    assert out.exit_layer.eq(2).all() and out.logits.shape == (6, 1) and out.confidence is None
    model.train()
    out = model(**padded_inputs(), labels=torch.randn(6))
    assert out.loss.ndim == 0 and out.all_logits.shape == (4, 6, 1)


# --- training-mode outputs and losses ------------------------------------------------------------------------------


def test_training_computes_every_exit_and_joint_loss():
    model = tiny_model(num_labels=3)
    model.train()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(**padded_inputs(), labels=labels)
    assert out.all_logits.shape == (4, 6, 3)
    losses = torch.stack([torch.nn.functional.cross_entropy(logits, labels) for logits in out.all_logits])
    expected = (losses * torch.tensor([1.0, 2, 3, 4])).sum() / 10
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(head.classifier.weight.grad is not None for head in model.exit_heads)


def test_bypass_grad_scale_scales_intermediate_gradients_only():
    def backbone_grad(scale, exit_index):
        torch.manual_seed(0)
        model = tiny_model(num_labels=2, bypass_grad_scale=scale).train()
        out = model(**padded_inputs())
        out.all_logits[exit_index].sum().backward()
        return model.bert.embeddings.word_embeddings.weight.grad.clone()

    torch.testing.assert_close(backbone_grad(0.5, 0), 0.5 * backbone_grad(1.0, 0))
    torch.testing.assert_close(backbone_grad(0.5, -1), backbone_grad(1.0, -1))
    assert backbone_grad(0.0, 1).abs().sum() == 0


def test_eval_loss_is_loss_of_returned_logits():
    model = tiny_model(num_labels=2)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    with torch.no_grad():
        out = model(**padded_inputs(), labels=labels, exit_threshold=0.5)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(exit_criterion="confidence"), "exit_criterion"),
        (dict(divergence="hellinger"), "divergence"),
        (dict(exit_threshold=1.2), r"in \[0, 1\], got 1.2"),
        (dict(exit_criterion="entropy", exit_threshold=-0.5), "non-negative"),
        (dict(exit_threshold=[0.9, 0.9]), "has 2 values but the model has 4 exits"),
        (dict(exit_layers=[2, 5]), r"within 1..4, got \[2, 5\]"),
        (dict(exit_layers=[0, 4]), "within 1..4"),
        (dict(exit_layers=[3, 2, 4]), "strictly increasing"),
        (dict(exit_layers=[1, 2]), "must end with the last layer \\(4\\)"),
        (dict(exit_criterion="patience", patience=0), "`patience` must be an integer >= 1, got 0"),
        (dict(bypass_dim=0), "`bypass_dim` must be >= 1"),
        (dict(bypass_block_size=0), "`bypass_block_size` must be >= 1"),
        (dict(bypass_grad_scale=-1.0), "`bypass_grad_scale` must be >= 0"),
    ],
)
def test_config_bad_input(overrides, message):
    with pytest.raises(StrictDataclassError, match=message):
        BypassBertConfig(**tiny_config_kwargs(**overrides))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exit_criterion="confidence"), "Unknown exit criterion 'confidence'"),
        (dict(exit_threshold=-0.1), r"in \[0, 1\], got -0.1"),
        (dict(exit_threshold=[0.5] * 3), "has 3 values but the model has 4 exits"),
        (dict(exit_criterion="divergence", divergence="l2"), "Unknown divergence measure 'l2'"),
        (dict(exit_criterion="patience", patience=0), "`patience` must be an integer >= 1"),
    ],
)
def test_forward_override_bad_input(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(**padded_inputs(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exit_threshold=5.0), r"in \[0, 1\], got 5.0"),
        (dict(exit_layers=[9]), "within 1..4"),
        (dict(patience=0), "patience"),
    ],
)
def test_bad_settings_given_to_from_pretrained_are_rejected(tmp_path, kwargs, message):
    BertModel(BertConfig(**tiny_config_kwargs())).save_pretrained(tmp_path)
    with pytest.raises(StrictDataclassError, match=message):
        BertWithBypassExits.from_pretrained(
            tmp_path, num_labels=2, exit_criterion="patience" if "patience" in kwargs else "max_prob", **kwargs
        )


def test_exit_layers_subset():
    model = tiny_model(num_labels=2, exit_layers=[2, 4])
    assert len(model.exit_heads) == 2
    with torch.no_grad():
        out = model(**padded_inputs(), exit_threshold=0.0)
    assert out.exit_layer.eq(2).all()


def test_num_labels_mismatch_on_load(tmp_path):
    tiny_model(num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=5.*3 labels"):
        BertWithBypassExits.from_pretrained(tmp_path, num_labels=5)
    with pytest.raises(ValueError, match="num_labels=5.*3 labels"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    # the saved checkpoint is untouched and still loads
    assert BertWithBypassExits.from_pretrained(tmp_path).config.num_labels == 3
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3).config.num_labels == 3


def test_mismatched_attention_mask():
    model = tiny_model()
    inputs = padded_inputs()
    with pytest.raises(ValueError, match="`attention_mask` has shape"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, :3])


# --- the embedded MiniLM backbone on real SST-2 sentences -----------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_model(minilm):
    torch.manual_seed(0)
    model = BertWithBypassExits.from_pretrained(minilm, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    return model, tokenizer


@pytest.mark.slow
def test_minilm_batch_invariance_on_sst2(minilm_model):
    model, tokenizer = minilm_model
    sentences = [s for s, _ in sst2_rows("dev", limit=32)]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.max() - lengths.min() > 20  # mixed lengths
    thresholds = spread_thresholds(model, batch)
    with torch.no_grad():
        batched = model(**batch, exit_threshold=thresholds)
        singles = [model(**tokenizer(s, return_tensors="pt"), exit_threshold=thresholds) for s in sentences]
    assert len(batched.exit_layer.unique()) >= 3
    assert batched.exit_layer.tolist() == [int(o.exit_layer) for o in singles]
    single_logits = torch.cat([o.logits for o in singles])
    assert torch.equal(batched.logits.argmax(-1), single_logits.argmax(-1))
    torch.testing.assert_close(batched.logits, single_logits, rtol=0, atol=1e-5)


def test_legacy_bert_config_keys_are_not_unknown_fields(tmp_path, caplog):
    """all-MiniLM-L6-v2's config carries keys older transformers versions wrote; a model fine-tuned from it saves them
    again, and loading that checkpoint must not call them fields of a newer hf_earlyexit."""
    model = tiny_model()
    model.config.gradient_checkpointing = False
    model.config.position_embedding_type = "absolute"
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        BertWithBypassExits.from_pretrained(tmp_path)
    assert "does not know" not in caplog.text
