import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)

from hf_earlyexit import BertForCascadeClassification, BertWithBypassExits, BypassBertConfig, CascadeBertConfig
from tests.family_tester import EarlyExitFamilyTesterMixin
from tests.test_modeling_bypass_bert import padded_inputs
from tests.utils import sst2_rows, tiny_config_kwargs


# three members of different depth and width: 1 layer of width 16, 2 of width 24, 4 of width 32
MEMBER_SHAPES = [
    dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=20),
    dict(num_hidden_layers=2, hidden_size=24, num_attention_heads=4, intermediate_size=30),
    dict(num_hidden_layers=4),
]


def bert_config(**overrides) -> BertConfig:
    return BertConfig(**tiny_config_kwargs(**overrides))


def tiny_cascade(num_labels=3, shapes=MEMBER_SHAPES, **config_kwargs) -> BertForCascadeClassification:
    torch.manual_seed(0)
    config = CascadeBertConfig(
        members=[bert_config(**shape) for shape in shapes], num_labels=num_labels, **config_kwargs
    )
    model = BertForCascadeClassification(config).eval()
    with torch.no_grad():  # fresh heads are nearly uniform; spread their confidences so routing has work to do
        for member in model.members:
            member.head.classifier.weight.normal_(0, 0.3)
            if member.head.pooler is not None:
                member.head.pooler.weight.normal_(0, 0.3)
    return model


def fine_tuned(seed, num_labels=2, **shape) -> BertForSequenceClassification:
    """A stand-in for a separately fine-tuned classifier: random weights, its own pooler and classifier."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(bert_config(num_labels=num_labels, **shape)).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.3)
        model.bert.pooler.dense.weight.normal_(0, 0.3)
    return model


def spread_thresholds(model, inputs, criterion="max_prob", margin=1e-5):
    """One threshold per non-final member that lets about half of the examples reaching it leave, placed halfway
    between two scores at least `margin` apart, so rounding differences cannot flip a decision."""
    rule = model.config.exit_rule(exit_criterion=criterion)
    with torch.no_grad():
        scores = torch.stack([rule.score(logits) for logits in model(**inputs, output_all_exits=True).all_logits])
    confident_above = criterion == "max_prob"  # the entropies fire below their threshold
    reaching = torch.ones(scores.shape[1], dtype=torch.bool)
    thresholds = []
    for stage_scores in scores[:-1]:
        values = stage_scores[reaching].sort().values
        gaps = [i for i in range(len(values) - 1) if values[i + 1] - values[i] > margin]
        i = min(gaps, key=lambda i: abs(i - len(values) // 2))
        threshold = float(values[i] + values[i + 1]) / 2
        thresholds.append(threshold)
        reaching &= (stage_scores < threshold) if confident_above else (stage_scores > threshold)
    return thresholds


def run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


class TestCascadeFamily(EarlyExitFamilyTesterMixin):
    model_class = BertForCascadeClassification
    config_class = CascadeBertConfig
    task_auto_class = AutoModelForSequenceClassification
    exit_key = "exit_stage"
    never_exit = {"exit_threshold": 1.0}
    always_exit = {"exit_threshold": 0.0}

    def build_model(self):
        return tiny_cascade()

    def make_inputs(self, batch_size=6):
        return padded_inputs(batch_size)

    def first_exit_logits(self, model, inputs):
        with torch.no_grad():
            return model.members[0](**inputs)

    @property
    def mixed_exit(self):
        return {"exit_threshold": spread_thresholds(self.build_model(), self.make_inputs(batch_size=8))}


# --- assembly --------------------------------------------------------------------------------------------------------


def test_fine_tuned_members_keep_their_weights_exactly(tmp_path):
    small, large = fine_tuned(1, num_hidden_layers=1), fine_tuned(2, num_hidden_layers=4)
    inputs = padded_inputs(batch_size=7)
    with torch.no_grad():
        expected = [small(**inputs).logits, large(**inputs).logits]
    small.save_pretrained(tmp_path / "small")
    large.save_pretrained(tmp_path / "large")
    for members in ([small, large], [tmp_path / "small", str(tmp_path / "large")]):
        cascade = BertForCascadeClassification.from_members(members)
        assert cascade.config.resolved_exit_pooling == ["pooler", "pooler"]
        for member, logits in zip(cascade.members, expected):
            torch.testing.assert_close(run(member, inputs), logits, rtol=0, atol=0)
        # the routing extremes give each model's own answer
        torch.testing.assert_close(run(cascade, inputs, exit_threshold=0.0).logits, expected[0], rtol=0, atol=0)
        torch.testing.assert_close(run(cascade, inputs, exit_threshold=1.0).logits, expected[1], rtol=0, atol=0)


@pytest.mark.parametrize("as_path", [False, True])
def test_plain_bert_member_gets_a_fresh_head_and_keeps_its_encoder_and_pooler(as_path, tmp_path):
    torch.manual_seed(3)
    plain = BertModel(bert_config(num_hidden_layers=2)).eval()
    plain.save_pretrained(tmp_path)
    cascade = BertForCascadeClassification.from_members(
        [tmp_path if as_path else plain, fine_tuned(4, num_labels=3)],
        exit_pooling="pooler",
        id2label={0: "neg", 1: "neu", 2: "pos"},
    )
    member = cascade.members[0]
    for name, tensor in plain.state_dict().items():
        if name.startswith("pooler."):
            target = member.head.pooler.state_dict()[name.removeprefix("pooler.dense.")]
        else:
            target = member.bert.state_dict()[name]
        torch.testing.assert_close(target, tensor, rtol=0, atol=0)
    assert member.head.classifier.out_features == 3 and cascade.config.id2label[2] == "pos"
    assert member.config.id2label == cascade.config.id2label


def test_from_members_takes_label_names_of_trained_members():
    named = fine_tuned(1)
    named.config.id2label, named.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    cascade = BertForCascadeClassification.from_members([fine_tuned(2, num_hidden_layers=1), named])
    assert cascade.config.id2label == {0: "negative", 1: "positive"}


def test_members_with_different_hidden_sizes():
    small = fine_tuned(1, num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=20)
    large = fine_tuned(2, num_hidden_layers=4, hidden_size=64, num_attention_heads=8, intermediate_size=80)
    cascade = BertForCascadeClassification.from_members([small, large])
    inputs = padded_inputs(batch_size=16, seed=2)
    thresholds = spread_thresholds(cascade, inputs)
    out = run(cascade, inputs, exit_threshold=thresholds)
    assert out.exit_stage.unique().tolist() == [0, 1]
    with torch.no_grad():
        per_member = [small(**inputs).logits, large(**inputs).logits]
    expected = torch.stack(per_member)[out.exit_stage, torch.arange(16)]
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)


def test_from_backbone_cuts_one_bert_into_members():
    torch.manual_seed(5)
    backbone = BertModel(bert_config()).eval()
    cascade = BertForCascadeClassification.from_backbone(backbone, member_layers=[1, 2, 4], num_labels=3)
    assert cascade.exit_layers == [1, 3, 7]
    assert cascade.config.resolved_exit_pooling == ["mean"] * 3
    state = backbone.state_dict()
    for member, depth in zip(cascade.members, [1, 2, 4]):
        assert member.config.num_hidden_layers == depth and member.head.classifier.out_features == 3
        member_state = member.bert.state_dict()
        assert set(member_state) == {
            name for name in state if not name.startswith("pooler.") and not name.startswith("encoder.layer.")
        } | {name for name in state for i in range(depth) if name.startswith(f"encoder.layer.{i}.")}
        for name, tensor in member_state.items():
            torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)
    # the members are copies: training one does not move the others
    with torch.no_grad():
        cascade.members[0].bert.embeddings.word_embeddings.weight.add_(1.0)
    assert not torch.equal(
        cascade.members[0].bert.embeddings.word_embeddings.weight,
        cascade.members[1].bert.embeddings.word_embeddings.weight,
    )


def test_single_member_cascade_is_a_plain_classifier():
    model = tiny_cascade(shapes=MEMBER_SHAPES[-1:])
    inputs = padded_inputs()
    out = run(model, inputs, exit_threshold=[])
    assert out.exit_stage.eq(0).all() and out.exit_layer.eq(4).all()
    torch.testing.assert_close(out.logits, run(model.members[0], inputs), rtol=0, atol=1e-6)


# --- real routing ----------------------------------------------------------------------------------------------------


def test_each_member_runs_only_on_what_the_previous_one_passed_on():
    model = tiny_cascade()
    inputs = padded_inputs(batch_size=16, seed=3)
    thresholds = spread_thresholds(model, inputs)
    member_inputs, layer_rows = [[] for _ in model.members], [[] for _ in model.members]
    for k, member in enumerate(model.members):
        member.register_forward_hook(
            lambda m, args, kwargs, out, k=k: member_inputs[k].append(kwargs["input_ids"]), with_kwargs=True
        )
        for layer in member.bert.encoder.layer:
            layer.register_forward_hook(lambda m, args, out, k=k: layer_rows[k].append(args[0].shape[0]))
    out = run(model, inputs, exit_threshold=thresholds)
    assert out.exit_stage.bincount(minlength=3).min() >= 2, out.exit_stage  # every member answers some
    for k, member in enumerate(model.members):
        reaching = (out.exit_stage >= k).nonzero().squeeze(-1)
        (seen,) = member_inputs[k]
        # exactly the examples not answered before, in input order, without columns that are padding for all of them
        width = int(inputs["attention_mask"][reaching].sum(-1).max())
        assert torch.equal(seen, inputs["input_ids"][reaching, :width])
        assert layer_rows[k] == [len(reaching)] * member.config.num_hidden_layers


def test_confident_batch_never_runs_later_members():
    model = tiny_cascade()
    calls = []
    for member in model.members[1:]:
        member.register_forward_hook(lambda m, args, out: calls.append(1))
    out = run(model, padded_inputs(), exit_threshold=0.0)
    assert calls == [] and out.exit_stage.eq(0).all() and out.exit_layer.eq(1).all()


def test_threshold_extremes_give_first_and_last_member_exactly():
    model = tiny_cascade()
    inputs = padded_inputs(batch_size=9, seed=4)  # row 0 has full length: no column is padding for every row
    with torch.no_grad():
        first, last = model.members[0](**inputs), model.members[-1](**inputs)
    never = run(model, inputs, exit_threshold=1.0)
    torch.testing.assert_close(never.logits, last, rtol=0, atol=0)
    assert never.exit_stage.eq(2).all() and never.exit_layer.eq(7).all()
    always = run(model, inputs, exit_threshold=0.0)
    torch.testing.assert_close(always.logits, first, rtol=0, atol=0)
    assert always.exit_stage.eq(0).all()


@pytest.mark.parametrize("criterion", ["max_prob", "entropy", "normalized_entropy"])
def test_routing_matches_simulation_with_token_types_and_positions(criterion):
    model = tiny_cascade()
    inputs = padded_inputs(batch_size=16, seed=6)
    generator = torch.Generator().manual_seed(0)
    inputs["token_type_ids"] = torch.randint(0, 2, inputs["input_ids"].shape, generator=generator)
    inputs["position_ids"] = torch.arange(12).flip(0).expand(16, -1).contiguous()
    settings = {"exit_criterion": criterion, "exit_threshold": spread_thresholds(model, inputs, criterion)}
    live = run(model, inputs, **settings)
    recorded = run(model, inputs, output_all_exits=True, **settings)
    rule = model.config.exit_rule(settings["exit_criterion"], settings["exit_threshold"])
    assert torch.equal(recorded.exit_stage, rule.simulate(recorded.all_logits))
    assert torch.equal(live.exit_stage, recorded.exit_stage)
    assert len(live.exit_stage.unique()) == 3
    torch.testing.assert_close(live.logits, recorded.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        live.confidence,
        recorded.all_logits.softmax(-1).amax(-1).gather(0, live.exit_stage[None]).squeeze(0),
        rtol=0,
        atol=1e-6,
    )


def test_early_exit_false_runs_only_the_last_member():
    model = tiny_cascade()
    calls = []
    for member in model.members[:-1]:
        member.register_forward_hook(lambda m, args, out: calls.append(1))
    inputs = padded_inputs()
    out = run(model, inputs, early_exit=False)
    assert calls == [] and out.exit_stage.eq(2).all() and out.exit_layer.eq(4).all()
    torch.testing.assert_close(out.flops, model.members[-1].flops(inputs["attention_mask"].sum(-1)), rtol=0, atol=0)


# --- cost accounting -------------------------------------------------------------------------------------------------


def test_reported_flops_equal_executed_flops():
    model = tiny_cascade(exit_pooling=["pooler", "cls", "mean"])  # every head kind, each priced where it runs
    model.set_attn_implementation("eager")  # FlopCounterMode prices eager attention's matmuls, not the CPU sdpa kernel
    assert all(member.config._attn_implementation == "eager" for member in model.members)
    inputs = padded_inputs(batch_size=12, seed=5)
    thresholds = spread_thresholds(model, inputs)
    reported, stages = 0, []
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        # one example at a time: no padding, so what runs is exactly what the per-example count prices
        for i in range(12):
            length = int(inputs["attention_mask"][i].sum())
            out = model(input_ids=inputs["input_ids"][i : i + 1, :length], exit_threshold=thresholds)
            reported += int(out.flops.sum())
            stages.append(int(out.exit_stage))
    assert len(set(stages)) == 3
    assert counter.get_total_flops() == reported
    batched = run(model, inputs, exit_threshold=thresholds)
    assert int(batched.flops.sum()) == reported
    lengths = inputs["attention_mask"].sum(-1)
    assert torch.equal(batched.flops, model.flops_per_exit(lengths)[batched.exit_stage, torch.arange(12)])
    assert torch.equal(batched.exit_layer, torch.tensor(model.exit_layers)[batched.exit_stage])


def test_all_exits_flops_count_every_member():
    model = tiny_cascade()
    model.set_attn_implementation("eager")
    ids = torch.randint(5, 99, (1, 10))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(input_ids=ids, output_all_exits=True)
    assert counter.get_total_flops() == int(out.flops[0]) == int(model.flops_per_exit(torch.tensor([10]))[-1, 0])
    # exit_layer is what the routing costs, the same as a live run
    assert torch.equal(out.exit_layer, run(model, {"input_ids": ids}).exit_layer)


def test_flops_per_exit_has_the_bypass_signature():
    lengths = torch.tensor([3, 12])
    model = tiny_cascade()
    bypass = BertWithBypassExits(BypassBertConfig(**tiny_config_kwargs()))
    assert model.flops_per_exit(lengths).shape == (3, 2)
    assert bypass.flops_per_exit(lengths).shape == (4, 2)
    per_member = torch.stack([member.flops(lengths) for member in model.members])
    assert torch.equal(model.flops_per_exit(lengths), per_member.cumsum(0))
    assert (per_member[1:] > per_member[:-1]).all()


# --- training --------------------------------------------------------------------------------------------------------


def test_training_runs_every_member_and_sums_their_losses():
    model = tiny_cascade().train()
    inputs = padded_inputs()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(**inputs, labels=labels)
    assert out.all_logits.shape == (3, 6, 3)
    expected = sum(F.cross_entropy(logits, labels) for logits in out.all_logits)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    for member in model.members:
        assert member.head.classifier.weight.grad.abs().sum() > 0
        assert member.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_eval_loss_is_loss_of_returned_logits():
    model = tiny_cascade()
    inputs = padded_inputs()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = run(model, inputs, labels=labels, exit_threshold=spread_thresholds(model, inputs))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert out.all_logits is None


# --- saving and loading ----------------------------------------------------------------------------------------------


def test_config_round_trips_exactly(tmp_path):
    config = tiny_cascade(exit_pooling=["cls", "pooler", "mean"], exit_threshold=[0.6, 0.7]).config
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded) is CascadeBertConfig
    assert reloaded.to_diff_dict() == config.to_diff_dict()
    assert reloaded.members == config.members
    assert reloaded.member_config(1).to_diff_dict() == config.member_config(1).to_diff_dict()
    # every BERT field is written out, not left to the installed transformers' defaults
    assert set(reloaded.members[0]) >= {"hidden_size", "intermediate_size", "vocab_size", "pad_token_id"}


def test_from_pretrained_restores_the_cascade(tmp_path):
    model = tiny_cascade(exit_pooling=["pooler", "cls", "mean"], exit_threshold=[0.5, 0.6])
    model.save_pretrained(tmp_path)
    reloaded = BertForCascadeClassification.from_pretrained(tmp_path)
    assert not reloaded.training
    expected, actual = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0)
    inputs = padded_inputs(batch_size=8)
    assert torch.equal(run(reloaded, inputs).exit_stage, run(model, inputs).exit_stage)


def test_num_labels_mismatch_on_load(tmp_path):
    tiny_cascade(num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=5.*3 labels"):
        BertForCascadeClassification.from_pretrained(tmp_path, num_labels=5)
    with pytest.raises(ValueError, match="num_labels=5.*3 labels"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    assert BertForCascadeClassification.from_pretrained(tmp_path).config.num_labels == 3


def test_overrides_leave_module_and_config_alone():
    model = tiny_cascade(exit_threshold=[0.5, 0.6])
    before = model.config.to_dict()
    run(model, padded_inputs(), exit_criterion="entropy", exit_threshold=[0.1, 0.2])
    run(model, padded_inputs(), output_all_exits=True)
    assert model.config.to_dict() == before and not model.training


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(members=[]), "`members` must list at least one"),
        (dict(members=[bert_config(vocab_size=99), bert_config(vocab_size=120)]), r"`vocab_size` differ: \[99, 120\]"),
        (dict(members=[bert_config(), bert_config(pad_token_id=1)]), r"`pad_token_id` differ: \[0, 1\]"),
        (dict(members=[bert_config(), {**tiny_config_kwargs(), "sep_token_id": 3}]), "`sep_token_id` differ"),
        (dict(members=[bert_config(), bert_config(num_hidden_layers=2)]), "member 1 .* is smaller than member 0"),
        (dict(members=[bert_config(), bert_config(hidden_size=16, num_attention_heads=2)]), "smaller than member 0"),
        (dict(exit_threshold=[0.5, 0.5, 0.5]), "has 3 values but the cascade has 2 non-final members"),
        (dict(exit_threshold=1.5), r"in \[0, 1\], got 1.5"),
        (dict(exit_criterion="entropy", exit_threshold=[-0.1, 0.2]), r"`exit_threshold\[0\]`.*non-negative"),
        (dict(exit_criterion="confidence"), "exit_criterion"),
        (dict(exit_criterion="patience"), "first member of a cascade could never answer"),
        (dict(exit_criterion="divergence"), "first member of a cascade could never answer"),
        (dict(exit_pooling=["mean", "cls"]), "`exit_pooling` has 2 values but the cascade has 3 members"),
        (dict(exit_pooling="max"), "exit_pooling"),
        (dict(num_labels=1), "needs num_labels >= 2"),
    ],
)
def test_config_bad_input(kwargs, message):
    settings = {"members": [bert_config(**shape) for shape in MEMBER_SHAPES], **kwargs}
    with pytest.raises(StrictDataclassError, match=message):
        CascadeBertConfig(**settings)


@pytest.mark.parametrize(
    "member, message",
    [
        (BypassBertConfig(**tiny_config_kwargs()), "model_type 'bypass-bert'.*plain BERT"),
        ({"model_type": "roberta"}, "model_type 'roberta'"),
        (bert_config(num_labels=5), "configured for 5 labels but the cascade for 3"),
        ({**tiny_config_kwargs(), "hidden_size": "wide"}, r"`members\[1\]` is not a valid BERT configuration"),
    ],
)
def test_config_bad_member(member, message):
    with pytest.raises(ValueError, match=message):
        CascadeBertConfig(members=[bert_config(num_hidden_layers=1), member], num_labels=3)


def test_from_members_bad_input():
    small, large = fine_tuned(1, num_hidden_layers=1), fine_tuned(2)
    with pytest.raises(ValueError, match="non-empty list"):
        BertForCascadeClassification.from_members([])
    with pytest.raises(ValueError, match="non-empty list"):
        BertForCascadeClassification.from_members(small)
    with pytest.raises(TypeError, match=r"`members\[1\]` must be .* got BertWithBypassExits"):
        BertForCascadeClassification.from_members(
            [small, BertWithBypassExits(BypassBertConfig(**tiny_config_kwargs()))]
        )
    with pytest.raises(ValueError, match="must agree on `num_labels`.*member 0: 2, member 1: 3"):
        BertForCascadeClassification.from_members([small, fine_tuned(3, num_labels=3)])
    with pytest.raises(ValueError, match="num_labels=3 does not match .* \\(2 labels\\)"):
        BertForCascadeClassification.from_members([small, large], num_labels=3)
    with pytest.raises(ValueError, match="`id2label` has 3 entries but num_labels=2"):
        BertForCascadeClassification.from_members([small, large], id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="Member 0 comes with a classifier trained on BERT's pooler output"):
        BertForCascadeClassification.from_members([small, large], exit_pooling=["mean", "mean"])
    with pytest.raises(StrictDataclassError, match="member 1 .* is smaller than member 0"):
        BertForCascadeClassification.from_members([large, small])
    with pytest.raises(StrictDataclassError, match="`vocab_size` differ"):
        BertForCascadeClassification.from_members([small, fine_tuned(3, vocab_size=120)])
    renamed = fine_tuned(4)
    renamed.config.id2label = {0: "bad", 1: "good"}
    other = fine_tuned(5)
    other.config.id2label = {0: "good", 1: "bad"}
    with pytest.raises(ValueError, match="label the classes differently"):
        BertForCascadeClassification.from_members([renamed, other])


@pytest.mark.parametrize(
    "member_layers, message",
    [
        ([], "non-empty list"),
        ([0, 2], r"within 1..4"),
        ([2, 5], r"within 1..4"),
        ([True, 2], r"within 1..4"),
        ([2, 1], "strictly increasing"),
        ([2, 2], "strictly increasing"),
    ],
)
def test_from_backbone_bad_member_layers(member_layers, message):
    backbone = BertModel(bert_config())
    with pytest.raises(ValueError, match=message):
        BertForCascadeClassification.from_backbone(backbone, member_layers=member_layers)


def test_from_backbone_refuses_other_models(tmp_path):
    with pytest.raises(TypeError, match="`backbone` must be a BERT checkpoint path or id or a BertModel"):
        BertForCascadeClassification.from_backbone(fine_tuned(1), member_layers=[1, 4])
    tiny_cascade().config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'cascade-bert'"):
        BertForCascadeClassification.from_backbone(tmp_path, member_layers=[1, 4])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exit_criterion="patience"), "first member of a cascade could never answer"),
        (dict(exit_criterion="confidence"), "Unknown exit criterion 'confidence'"),
        (dict(exit_threshold=[0.5]), "has 1 values but the cascade has 2 non-final members"),
        (dict(exit_threshold=[0.5, 1.2]), r"`exit_threshold\[1\]` .* got 1.2"),
    ],
)
def test_forward_override_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_cascade()(**padded_inputs(), **kwargs)


def test_forward_bad_inputs():
    model = tiny_cascade()
    inputs = padded_inputs()
    with pytest.raises(ValueError, match="does not take `inputs_embeds`"):
        model(inputs_embeds=torch.randn(6, 12, 32), attention_mask=inputs["attention_mask"])
    with pytest.raises(ValueError, match="`attention_mask` has shape \\(6, 3\\)"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, :3])
    with pytest.raises(ValueError, match="`token_type_ids` has shape"):
        model(**inputs, token_type_ids=torch.zeros(6, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="65 positions but the cascade's smallest `max_position_embeddings` is 64"):
        model(input_ids=torch.ones(1, 65, dtype=torch.long))


# --- the embedded MiniLM backbone on real SST-2 sentences ------------------------------------------------------------


@pytest.mark.slow
def test_minilm_cascade_batch_invariance_on_sst2(minilm):
    torch.manual_seed(0)
    model = BertForCascadeClassification.from_backbone(minilm, member_layers=[1, 2, 6], num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    sentences = [s for s, _ in sst2_rows("dev", limit=32)]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.max() - lengths.min() > 20  # mixed lengths
    thresholds = spread_thresholds(model, batch)
    batched = run(model, batch, exit_threshold=thresholds)
    singles = [run(model, tokenizer(s, return_tensors="pt"), exit_threshold=thresholds) for s in sentences]
    assert batched.exit_stage.bincount(minlength=3).min() >= 4, batched.exit_stage  # exits spread over the members
    assert batched.exit_stage.tolist() == [int(o.exit_stage) for o in singles]
    single_logits = torch.cat([o.logits for o in singles])
    assert torch.equal(batched.logits.argmax(-1), single_logits.argmax(-1))
    torch.testing.assert_close(batched.logits, single_logits, rtol=0, atol=1e-5)
    assert batched.flops.tolist() == [int(o.flops) for o in singles]


def test_a_member_answers_only_above_its_threshold_not_at_it():
    # CascadeBERT answers with member k when max p_k > threshold; a multi-exit model's max_prob leaves at >=
    from hf_earlyexit.models.bert.exit_utils import ExitRule

    score = torch.tensor([0.89, 0.9, 0.91])
    cascade_rule = tiny_cascade(num_labels=2).config.exit_rule(exit_threshold=0.9)
    assert cascade_rule.strict_confidence and cascade_rule.passes(score, 0).tolist() == [False, False, True]
    multi_exit_rule = ExitRule.build("max_prob", 0.9, num_exits=2, num_labels=2)
    assert multi_exit_rule.passes(score, 0).tolist() == [False, True, True]

    model = tiny_cascade(num_labels=2)
    inputs = padded_inputs(batch_size=6)
    with torch.no_grad():
        confidence = model(**inputs, output_all_exits=True).all_logits[0].softmax(-1).max(-1).values
        tie = float(confidence[2])
        out = model(**inputs, exit_threshold=tie)
    # the example whose confidence equals the threshold goes on to the next member, as do the less confident ones
    assert out.exit_stage.tolist() == (confidence <= tie).long().tolist()
