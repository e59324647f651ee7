"""What the three families do with the arguments of `forward` (issue 17): every argument is used or refused with a
message that names it, outputs follow transformers' conventions (`return_dict`, `output_hidden_states`,
`output_attentions`), and a row's answer does not depend on its batch-mates."""

import logging
from functools import partial

import pytest
import torch
from transformers import BertConfig, BertModel
from transformers.utils import logging as transformers_logging

from hf_earlyexit import BertForCascadeClassification
from hf_earlyexit.models.bert import modeling_exit_heads
from tests.test_modeling_bypass_bert import tiny_model as tiny_bypass
from tests.test_modeling_cascade_bert import tiny_cascade
from tests.test_modeling_token_exit_bert import tiny_model as tiny_token
from tests.utils import TINY_BERT


# three labels each
FAMILIES = {"bypass": partial(tiny_bypass, num_labels=3), "cascade": tiny_cascade, "token": tiny_token}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def build(family, **config):
    return FAMILIES[family](**config).eval()


def ids(batch_size=3, seq_len=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, TINY_BERT["vocab_size"], (batch_size, seq_len), generator=generator)


def run(model, **inputs):
    with torch.no_grad():
        return model(**inputs)


# --- a row's answer does not depend on its batch-mates ----------------------------------------------------------------


def left_padded(row_ids, length, seq_len):
    """`row_ids[:length]` left-padded to `seq_len` (ids and mask)."""
    padded = torch.zeros(seq_len, dtype=torch.long)
    mask = torch.zeros(seq_len, dtype=torch.long)
    padded[seq_len - length :] = row_ids[:length]
    mask[seq_len - length :] = 1
    return padded, mask


@pytest.mark.parametrize("settings", [{}, {"early_exit": False}, {"output_all_exits": True}])
def test_left_padded_row_gives_the_same_answer_whatever_its_batch_mates(family, settings):
    """The same padded row (same ids, same mask) next to a row as long as the batch, or next to rows that leave the
    first columns all-padding: the cascade used to drop those columns before its embeddings, shifting the positions."""
    model = build(family)
    seq_len = 12
    rows = ids(4, seq_len, seed=1)
    row, mask = left_padded(rows[0], 5, seq_len)
    long_row, long_mask = rows[1], torch.ones(seq_len, dtype=torch.long)
    short_row, short_mask = left_padded(rows[2], 3, seq_len)
    mid_row, mid_mask = left_padded(rows[3], 7, seq_len)
    answers = []
    for mates, mate_masks in (([long_row], [long_mask]), ([short_row, mid_row], [short_mask, mid_mask]), ([], [])):
        batch = torch.stack([row, *mates])
        batch_mask = torch.stack([mask, *mate_masks])
        answers.append(run(model, input_ids=batch, attention_mask=batch_mask, **settings).logits[0])
    for answer in answers[1:]:
        torch.testing.assert_close(answer, answers[0], rtol=0, atol=1e-5)


def test_cascade_member_sees_the_positions_stock_bert_gives_a_left_padded_row():
    model = tiny_cascade()
    seq_len = 10
    row, mask = left_padded(ids(1, seq_len, seed=2)[0], 4, seq_len)
    out = run(model, input_ids=row[None], attention_mask=mask[None], exit_threshold=0.0)
    member = model.members[0]
    encoder = BertModel(BertConfig(**member.bert.config.to_dict()), add_pooling_layer=False).eval()
    encoder.load_state_dict(member.bert.state_dict())
    with torch.no_grad():
        states = encoder(input_ids=row[None], attention_mask=mask[None]).last_hidden_state
        expected = member.head(states, mask[None])
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-6)


# --- keyword arguments -----------------------------------------------------------------------------------------------


def test_a_misspelled_argument_is_an_error_naming_it(family):
    model = build(family)
    with pytest.raises(
        TypeError, match="unexpected keyword argument `exit_treshold` \\(did you mean `exit_threshold`"
    ):
        model(input_ids=ids(), exit_treshold=0.9)
    with pytest.raises(TypeError, match="`colour`, `size`"):
        model(input_ids=ids(), colour=1, size=2)


def test_num_items_in_batch_is_accepted_and_changes_nothing(family):
    model = build(family).train()
    labels = torch.zeros(ids().shape if family == "token" else ids().shape[:1], dtype=torch.long)
    torch.manual_seed(0)
    plain = model(input_ids=ids(), labels=labels).loss
    torch.manual_seed(0)
    counted = model(input_ids=ids(), labels=labels, num_items_in_batch=torch.tensor(7)).loss
    assert torch.equal(plain, counted)


@pytest.mark.parametrize("name", ["early_exit", "output_all_exits", "output_attentions", "return_dict"])
@pytest.mark.parametrize("value", ["no", 1, 0.0, torch.tensor(True)])
def test_flags_must_be_booleans(family, name, value):
    with pytest.raises(TypeError, match=f"`{name}` must be True, False or None"):
        build(family)(input_ids=ids(), **{name: value})


def test_early_exit_false_and_true_are_told_apart(family):
    always = {"exit_threshold": 1.0 if family == "token" else 0.0}
    model = build(family)
    full = run(model, input_ids=ids(), early_exit=False, **always)
    early = run(model, input_ids=ids(), early_exit=True, **always)
    assert not torch.equal(full.exit_layer, early.exit_layer)


# --- return_dict, hidden states, attentions --------------------------------------------------------------------------


def test_return_dict_false_gives_the_output_fields_as_a_tuple(family):
    model = build(family)
    out = run(model, input_ids=ids())
    as_tuple = run(model, input_ids=ids(), return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert len(as_tuple) == len(out.to_tuple())
    for got, want in zip(as_tuple, out.to_tuple()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    model.config.return_dict = False
    assert isinstance(run(model, input_ids=ids()), tuple)


def member_layers(model):
    if isinstance(model, BertForCascadeClassification):
        return [
            (m.config.num_hidden_layers, m.config.hidden_size, m.config.num_attention_heads) for m in model.members
        ]
    config = model.config
    return [(config.num_hidden_layers, config.hidden_size, config.num_attention_heads)]


@pytest.mark.parametrize("settings", [{"early_exit": False}, {"output_all_exits": True}])
def test_hidden_states_and_attentions_at_full_depth_are_berts(family, settings):
    """Every example ran every layer: the recorded states and attention maps are those of a stock BertModel with the
    same weights (for the cascade: each member's, one after the other)."""
    model = build(family)
    model.set_attn_implementation("eager")
    inputs = {"input_ids": ids(3, 7), "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [0] * 3 + [1] * 4])}
    out = run(model, **inputs, output_hidden_states=True, output_attentions=True, **settings)
    encoders = [m.bert for m in model.members] if family == "cascade" else [model.bert]
    if family == "cascade" and "early_exit" in settings:  # only the last member ran: the others' tensors are zeros
        encoders = [None] * (len(encoders) - 1) + encoders[-1:]
    hidden, attentions = list(out.hidden_states), list(out.attentions)
    for encoder, (layers, width, heads) in zip(encoders, member_layers(model)):
        states, maps = hidden[: layers + 1], attentions[:layers]
        del hidden[: layers + 1], attentions[:layers]
        assert [tuple(s.shape) for s in states] == [(3, 7, width)] * (layers + 1)
        assert [tuple(a.shape) for a in maps] == [(3, heads, 7, 7)] * layers
        if encoder is None:
            assert all(not s.any() for s in states) and all(not a.any() for a in maps)
            continue
        with torch.no_grad():
            reference = encoder(**inputs, output_hidden_states=True, output_attentions=True)
        for got, want in zip(states, reference.hidden_states):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        for got, want in zip(maps, reference.attentions):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert hidden == [] and attentions == []


def test_hidden_states_of_examples_that_left_early_are_zero(family):
    model = build(family)
    inputs = {"input_ids": ids(4, 8)}
    always = {"exit_threshold": 1.0 if family == "token" else 0.0}
    out = run(model, **inputs, output_hidden_states=True, **always)
    full = run(model, **inputs, output_hidden_states=True, early_exit=False)
    if family == "cascade":  # every example answered by the first member: the later members' states are zeros
        first = model.members[0].config.num_hidden_layers + 1
        for got, want in zip(out.hidden_states[:first], full.hidden_states):
            assert got.shape == want.shape
        assert all(not states.any() for states in out.hidden_states[first:])
        return
    first_exit = model.exit_layers[0]
    for layer, (got, want) in enumerate(zip(out.hidden_states, full.hidden_states)):
        if layer <= first_exit:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        else:  # every example (every sentence, its words all exited) left after the first exit layer
            assert not got.any()


def test_a_selection_of_hidden_states_by_index(family):
    model = build(family)
    everything = run(model, input_ids=ids(), output_hidden_states=True).hidden_states
    selected = run(model, input_ids=ids(), output_hidden_states=[0, -1]).hidden_states
    assert len(selected) == len(everything)
    for i, states in enumerate(selected):
        if i in (0, len(everything) - 1):
            torch.testing.assert_close(states, everything[i], rtol=0, atol=0)
        else:
            assert states is None
    with pytest.raises(TypeError, match="`output_hidden_states` must be True, False, None, or the index"):
        model(input_ids=ids(), output_hidden_states="all")


def test_attentions_need_eager_attention_as_in_transformers(family, caplog):
    model = build(family)
    model.set_attn_implementation("sdpa")
    transformers_logging.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger=modeling_exit_heads.logger.name):
        out = run(model, input_ids=ids(), output_attentions=True)
    assert out.attentions == ()
    assert "`sdpa` attention does not compute attention probabilities" in caplog.text


def test_config_defaults_for_outputs_are_read(family):
    model = build(family)
    model.config.output_hidden_states = True
    assert run(model, input_ids=ids()).hidden_states is not None
    assert run(model, input_ids=ids(), output_hidden_states=False).hidden_states is None


# --- clear messages for bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ({"input_ids": torch.zeros(0, 5, dtype=torch.long)}, ValueError, "empty batch"),
        ({"input_ids": torch.zeros(2, 0, dtype=torch.long)}, ValueError, "empty batch"),
        (
            {"input_ids": ids(), "attention_mask": torch.tensor([[1] * 6, [0] * 6, [1] * 6])},
            ValueError,
            r"Rows \[1\] have no real token",
        ),
        (
            {"input_ids": torch.tensor([[2, 5, 500, 3]])},
            ValueError,
            r"`input_ids` holds ids outside \[0, 99\): \[500\]",
        ),
        ({"input_ids": torch.tensor([[2, -4, 5, 3]])}, ValueError, r"outside \[0, 99\): \[-4\]"),
        (
            {"input_ids": torch.tensor([[2, 5, 6, 3]]), "token_type_ids": torch.tensor([[0, 0, 7, 0]])},
            ValueError,
            r"`token_type_ids` holds ids outside \[0, 2\): \[7\]",
        ),
        (
            {"input_ids": torch.ones(2, 3, 4, dtype=torch.long)},
            ValueError,
            "`input_ids` must be a \\(batch_size, sequence_length\\)",
        ),
        ({"input_ids": torch.ones(2, 3)}, ValueError, "dtype torch.float32"),
        ({"input_ids": [[2, 5, 3]]}, TypeError, "`input_ids` must be a torch.Tensor"),
        ({}, ValueError, "input_ids"),
    ],
)
def test_bad_inputs_are_named(family, inputs, error, message):
    with pytest.raises(error, match=message):
        build(family)(**inputs)


def test_more_tokens_than_positions_is_named(family):
    too_long = ids(1, TINY_BERT["max_position_embeddings"] + 1)
    with pytest.raises(ValueError, match="65 positions but .*64"):
        build(family)(input_ids=too_long)


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0.0, 1.0, 1.0]), r"mean multi-label classification: one 0/1 target per class, shape \(3, 3\)"),
        (torch.tensor([0, 5, 1]), r"class ids in \[0, 3\) \(or -100\), got \[5\]"),
        (torch.tensor([[0], [1], [2]]), r"`labels` has shape \(3, 1\); expected one class id per example"),
        ([0, 1, 2], "`labels` must be a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("sequence_family", ["bypass", "cascade"])
def test_labels_a_classifier_cannot_use_are_named(sequence_family, labels, message):
    model = build(sequence_family)
    with pytest.raises((ValueError, TypeError), match=message):
        model(input_ids=ids(), labels=labels)


def test_float_labels_of_the_right_shape_train_a_multi_label_classifier():
    model = build("bypass")
    out = model(input_ids=ids(), labels=torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


# --- a cascade's embeddings ------------------------------------------------------------------------------------------


def test_cascade_resizes_every_members_embeddings(tmp_path):
    """`get_input_embeddings` used to raise NotImplementedError, so `resize_token_embeddings` failed: the members share
    one tokenizer, so adding tokens to it resizes them all."""
    model = tiny_cascade()
    assert model.get_input_embeddings() is model.members[0].get_input_embeddings()
    before = [member.get_input_embeddings().weight.detach().clone() for member in model.members]
    embeddings = model.resize_token_embeddings(TINY_BERT["vocab_size"] + 5)
    assert embeddings is model.members[0].get_input_embeddings()
    for member, old in zip(model.members, before):
        weight = member.get_input_embeddings().weight
        assert weight.shape == (TINY_BERT["vocab_size"] + 5, member.config.hidden_size)
        torch.testing.assert_close(weight[: TINY_BERT["vocab_size"]], old, rtol=0, atol=0)
    assert model.config.vocab_size == TINY_BERT["vocab_size"] + 5
    assert {member["vocab_size"] for member in model.config.members} == {TINY_BERT["vocab_size"] + 5}
    new_token = torch.tensor([[2, TINY_BERT["vocab_size"] + 4, 3]])
    expected = run(model.eval(), input_ids=new_token).logits
    model.save_pretrained(tmp_path)
    reloaded = BertForCascadeClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(run(reloaded, input_ids=new_token).logits, expected, rtol=0, atol=0)
