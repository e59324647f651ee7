from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
    BertModel,
)

from hf_earlyexit import BertForTokenEarlyExit, TokenExitBertConfig, TokenExitRule, encode_words
from hf_earlyexit.models.bert.modeling_exit_heads import layer_mask
from hf_earlyexit.models.bert.modeling_token_exit_bert import active_query_layer
from hf_earlyexit.models.bert.token_exit_utils import uncertainty_of, window_max, word_layout
from tests.family_tester import EarlyExitFamilyTesterMixin
from tests.utils import REPO_ROOT, tiny_config_kwargs


CONLL_VALID = REPO_ROOT.parent / "shared" / "data" / "conll2003" / "valid.txt"
if not CONLL_VALID.is_file():  # a worktree one level further down (wt/<name>) sees the data two levels up
    CONLL_VALID = REPO_ROOT.parent.parent / "shared" / "data" / "conll2003" / "valid.txt"


def tiny_model(**config_overrides) -> BertForTokenEarlyExit:
    config = TokenExitBertConfig(**tiny_config_kwargs(**{"num_labels": 3, **config_overrides}))
    model = BertForTokenEarlyExit(config).eval()
    with torch.no_grad():  # fresh heads predict almost uniformly; spread their uncertainties so exits happen
        for head in model.exit_heads:
            head.weight.normal_(0, 0.5)
    return model


def token_inputs(batch_size=6, max_len=14, seed=0, multi_piece=True):
    """Right-padded `[CLS] words [SEP]` rows of mixed lengths; with `multi_piece`, words of 1 to 3 word-pieces."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (batch_size, max_len), generator=generator)
    lengths = torch.randint(4, max_len + 1, (batch_size,), generator=generator)
    lengths[0] = max_len
    attention_mask = (torch.arange(max_len) < lengths[:, None]).long()
    word_ids = torch.full((batch_size, max_len), -1)
    for row, length in enumerate(lengths.tolist()):
        word, position = 0, 1
        while position < length - 1:
            pieces = int(torch.randint(1, 4, (1,), generator=generator)) if multi_piece else 1
            word_ids[row, position : min(position + pieces, length - 1)] = word
            word, position = word + 1, position + pieces
        input_ids[row, 0], input_ids[row, length - 1] = 2, 3
    input_ids = input_ids * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask, "word_ids": word_ids}


def split_threshold(values: torch.Tensor, fraction: float) -> float:
    """A threshold halfway between two neighbouring values, about `fraction` of them below it."""
    ordered = values.flatten().sort().values
    i = min(max(int(fraction * len(ordered)), 1), len(ordered) - 1)
    return float(ordered[i - 1] + ordered[i]) / 2


def word_uncertainties(model, inputs):
    """`(num_exits, words)` full-depth uncertainties at the first word-piece of every word."""
    with torch.no_grad():
        all_logits = model(**inputs, output_all_exits=True).all_logits
    attention_mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    _, word_start = word_layout(attention_mask, inputs.get("word_ids"))
    return uncertainty_of(all_logits)[:, word_start]


def run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


def real_positions(inputs):
    return inputs["attention_mask"].bool()


# --- the family checks, in both modes ------------------------------------------------------------------------------


class TestTokenExitFamily(EarlyExitFamilyTesterMixin):
    model_class = BertForTokenEarlyExit
    config_class = TokenExitBertConfig
    task_auto_class = AutoModelForTokenClassification
    never_exit = {"exit_threshold": 0.0}
    always_exit = {"exit_threshold": 1.0}
    mode = "token"
    mixed_exit = {"exit_threshold": 0.45, "window_size": 3}

    def build_model(self):
        return tiny_model(exit_mode=self.mode)

    def make_inputs(self, batch_size=6):
        return token_inputs(batch_size)

    def first_exit_logits(self, model, inputs):
        return run(model, inputs, output_all_exits=True).all_logits[0]

    def test_mixed_setting_mixes_exits(self):
        out = run(self.build_model(), self.make_inputs(batch_size=8), **self.mixed_exit)
        layers = out.exit_layer[real_positions(self.make_inputs(batch_size=8))]
        assert len(layers.unique()) >= 3, layers.unique()


class TestSentenceExitFamily(TestTokenExitFamily):
    mode = "sentence"
    mixed_exit = {"exit_threshold": 0.6}


# --- the layer step that skips exited positions ---------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_active_query_layer_with_every_position_active_equals_bert_layer(attn_implementation):
    model = tiny_model()
    model.set_attn_implementation(attn_implementation)
    inputs = token_inputs(batch_size=5)
    hidden = torch.randn(5, 14, 32)
    real = real_positions(inputs)
    for layer in model.bert.encoder.layer:
        with torch.no_grad():
            expected = layer(hidden, layer_mask(model.config, hidden, inputs["attention_mask"]))
            got = active_query_layer(layer, hidden, inputs["attention_mask"], real, model.config)
        torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_active_query_layer_updates_active_positions_and_copies_the_rest(attn_implementation):
    model = tiny_model()
    model.set_attn_implementation(attn_implementation)
    inputs = token_inputs(batch_size=5, seed=1)
    real = real_positions(inputs)
    active = real & (torch.rand(real.shape, generator=torch.Generator().manual_seed(2)) < 0.5)
    active[:, 0] = True  # every row keeps a query ([CLS] never exits)
    hidden = torch.randn(5, 14, 32)
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        # queries are independent given the keys: an active position's new state is the full layer's state there
        full = layer(hidden, layer_mask(model.config, hidden, inputs["attention_mask"]))
        got = active_query_layer(layer, hidden, inputs["attention_mask"], active, model.config)
    torch.testing.assert_close(got[active], full[active], rtol=0, atol=1e-5)
    assert torch.equal(got[~active], hidden[~active])  # copied bit for bit (padding included)


def test_frozen_positions_still_feed_keys_and_values():
    model = tiny_model()
    inputs = token_inputs(batch_size=1, max_len=10, multi_piece=False)
    active = real_positions(inputs).clone()
    active[0, 3] = False  # a frozen word
    hidden = torch.randn(1, 10, 32)
    changed = hidden.clone()
    changed[0, 3] += 1.0
    layer = model.bert.encoder.layer[0]
    with torch.no_grad():
        before = active_query_layer(layer, hidden, inputs["attention_mask"], active, model.config)
        after = active_query_layer(layer, changed, inputs["attention_mask"], active, model.config)
    assert torch.equal(after[0, 3], changed[0, 3])  # the frozen state is carried, not recomputed
    difference = (after - before).abs().amax(dim=-1)[0]
    assert (difference[active[0]] > 1e-4).all(), difference  # every active query attends to it


# --- equivalence with transformers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_full_depth_equals_bert_for_token_classification(attn_implementation):
    model = tiny_model(num_labels=5)
    model.set_attn_implementation(attn_implementation)
    plain = BertForTokenClassification(BertConfig(**tiny_config_kwargs(num_labels=5))).eval()
    plain.set_attn_implementation(attn_implementation)
    plain.bert.load_state_dict(model.bert.state_dict())
    plain.classifier.load_state_dict(model.exit_heads[-1].state_dict())
    inputs = token_inputs(batch_size=7)
    out = run(model, inputs, early_exit=False)
    expected = run(plain, {k: v for k, v in inputs.items() if k != "word_ids"}).logits
    real = real_positions(inputs)
    torch.testing.assert_close(out.logits[real], expected[real], rtol=0, atol=1e-5)
    assert (out.exit_layer[real] == 4).all() and (out.exit_layer[~real] == 0).all()
    assert (out.logits[~real] == 0).all()


def test_from_plain_bert_checkpoint(tmp_path, minilm):
    plain = BertModel(BertConfig(**tiny_config_kwargs())).eval()
    plain.save_pretrained(tmp_path)
    model = BertForTokenEarlyExit.from_pretrained(
        tmp_path, num_labels=9, exit_mode="sentence", window_size=7, exit_threshold=0.2
    )
    assert model.config.model_type == "token-exit-bert"
    assert (model.config.num_labels, model.config.exit_mode, model.config.window_size) == (9, "sentence", 7)
    assert len(model.exit_heads) == 4 and model.exit_heads[0].out_features == 9
    for name, tensor in plain.state_dict().items():
        if not name.startswith("pooler"):
            torch.testing.assert_close(model.bert.state_dict()[name], tensor, rtol=0, atol=0)
    # the embedded backbone too
    backbone = BertForTokenEarlyExit.from_pretrained(minilm, num_labels=9, exit_mode="token", window_size=5)
    assert len(backbone.exit_heads) == 6 and backbone.config.hidden_size == 384


def test_bad_settings_given_to_from_pretrained_are_rejected(tmp_path):
    BertModel(BertConfig(**tiny_config_kwargs())).save_pretrained(tmp_path)
    with pytest.raises(StrictDataclassError, match="`window_size` must be an odd integer >= 1.*got 4"):
        BertForTokenEarlyExit.from_pretrained(tmp_path, num_labels=3, window_size=4)
    with pytest.raises(StrictDataclassError, match=r"in \[0, 1\], got 1.5"):
        BertForTokenEarlyExit.from_pretrained(tmp_path, num_labels=3, exit_threshold=1.5)


def test_num_labels_mismatch_on_load(tmp_path):
    tiny_model(num_labels=9).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=5.*9 labels"):
        BertForTokenEarlyExit.from_pretrained(tmp_path, num_labels=5)
    assert BertForTokenEarlyExit.from_pretrained(tmp_path).config.num_labels == 9


# --- copy semantics and real skipping -------------------------------------------------------------------------------


def record_layer_states(model, monkeypatch):
    """Hidden states after every layer, whichever path (plain layer or packed step) computed them."""
    states = []
    for layer in model.bert.encoder.layer:
        layer.register_forward_hook(lambda module, args, output: states.append(output.clone()))

    backbone = model.encoder_backbone
    packed_step = backbone.run_layer_active

    def recording_step(*args, **kwargs):
        output = packed_step(*args, **kwargs)
        states.append(output.clone())
        return output

    monkeypatch.setattr(backbone, "run_layer_active", recording_step)
    return states


def test_frozen_states_are_copied_bit_for_bit(monkeypatch):
    model = tiny_model()
    inputs = token_inputs(batch_size=8, seed=4)
    threshold = split_threshold(word_uncertainties(model, inputs)[0], 0.4)
    states = record_layer_states(model, monkeypatch)
    for row in range(8):
        length = int(inputs["attention_mask"][row].sum())
        single = {k: v[row : row + 1, :length] for k, v in inputs.items()}  # one sentence: no compaction
        states.clear()
        exit_layer = run(model, single, exit_threshold=threshold, window_size=3).exit_layer[0]
        depth = len(states)
        assert depth == int(exit_layer.max())
        for position in range(length):
            exited = int(exit_layer[position])
            for later in range(exited, depth):  # states[i] is the output of layer i + 1
                assert torch.equal(states[later][0, position], states[exited - 1][0, position])
        # and the states of positions still active do change
        for layer in range(1, depth):
            moving = exit_layer > layer
            assert not torch.equal(states[layer][0, moving], states[layer - 1][0, moving])


def test_query_output_and_ffn_run_only_on_active_positions():
    model = tiny_model()
    inputs = token_inputs(batch_size=8, seed=5)
    threshold = split_threshold(word_uncertainties(model, inputs)[0], 0.5)
    rows_seen = {}

    def count(name, layer_number):
        def hook(module, args, output):
            rows_seen.setdefault((name, layer_number), 0)
            rows_seen[(name, layer_number)] += args[0].numel() // args[0].shape[-1]

        return hook

    for number, layer in enumerate(model.bert.encoder.layer, start=1):
        modules = {
            "query": layer.attention.self.query,
            "key": layer.attention.self.key,
            "value": layer.attention.self.value,
            "attention_output": layer.attention.output.dense,
            "intermediate": layer.intermediate.dense,
            "output": layer.output.dense,
        }
        for name, module in modules.items():
            module.register_forward_hook(count(name, number))
    out = run(model, inputs, exit_threshold=threshold, window_size=3)
    exit_layer, lengths = out.exit_layer, inputs["attention_mask"].sum(-1)
    assert len(exit_layer[real_positions(inputs)].unique()) >= 3
    for layer in range(1, 5):
        active = int((exit_layer >= layer).sum())  # padding has exit layer 0
        remaining = exit_layer.amax(dim=-1) >= layer
        if not remaining.any():
            assert ("query", layer) not in rows_seen
            continue
        # keys and values: every position of the sentences still in the batch, padded to the longest of them
        all_positions = int(remaining.sum()) * int(lengths[remaining].max())
        for name in ("query", "attention_output", "intermediate", "output"):
            assert rows_seen[(name, layer)] == active, (name, layer)
        for name in ("key", "value"):
            assert rows_seen[(name, layer)] == all_positions, (name, layer)
    assert rows_seen[("query", 4)] < rows_seen[("query", 1)]


@pytest.mark.parametrize("mode", ["token", "sentence"])
def test_executed_flops_equal_reported_flops(mode):
    model = tiny_model(exit_mode=mode)
    model.set_attn_implementation("eager")  # FlopCounterMode prices eager attention's matmuls
    inputs = token_inputs(batch_size=10, seed=6)
    threshold = split_threshold(word_uncertainties(model, inputs)[1], 0.5)
    settings = {"exit_threshold": threshold, "window_size": 3}
    reported, layers = 0, []
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        # one sentence at a time: no padding, so executed work is exactly what the per-sentence count prices
        for row in range(10):
            length = int(inputs["attention_mask"][row].sum())
            out = model(**{k: v[row : row + 1, :length] for k, v in inputs.items()}, **settings)
            reported += int(out.flops.sum())
            layers.append(out.exit_layer[0])
    assert len(torch.cat(layers).unique()) >= 2
    assert counter.get_total_flops() == reported
    # and the batched path reports the same per-sentence FLOPs
    batched = run(model, inputs, **settings)
    assert int(batched.flops.sum()) == reported


def test_flops_formula_by_hand():
    # d = 32, f = 37, C = 3, L = 4; one sentence of n = 6 positions: [CLS] w0 w1 w2 w3 [SEP]
    model = tiny_model()
    ids = torch.tensor([[2, 10, 11, 12, 13, 3]])
    # full depth, one head: per layer 4nd^2 + 4qd^2 + 4qnd + 4qdf with q = n = 6
    per_layer = 4 * 6 * 32 * 32 + 4 * 6 * 32 * 32 + 4 * 6 * 6 * 32 + 4 * 6 * 32 * 37
    assert per_layer == 24576 + 24576 + 4608 + 28416 == 82176
    assert int(run(model, {"input_ids": ids}, early_exit=False).flops) == 4 * 82176 + 6 * (2 * 32 * 3)

    # TOKEE with W = 1 and a first-layer threshold between the 2nd and 3rd smallest word uncertainty: two words
    # freeze after layer 1, q = 4 in layers 2 to 4; heads run on 6 positions at layer 1, then on 4 at each layer
    u = word_uncertainties(model, {"input_ids": ids})[0]
    threshold = float(u.sort().values[1:3].mean())
    out = run(model, {"input_ids": ids}, exit_threshold=[threshold, 0.0, 0.0, 0.0], window_size=1)
    exited = (u < threshold).tolist()
    assert out.exit_layer[0].tolist() == [4] + [1 if e else 4 for e in exited] + [4]
    layer_q4 = 4 * 6 * 32 * 32 + 4 * 4 * 32 * 32 + 4 * 4 * 6 * 32 + 4 * 4 * 32 * 37
    assert layer_q4 == 24576 + 16384 + 3072 + 18944 == 62976
    assert int(out.flops) == 82176 + 3 * 62976 + (6 + 3 * 4) * 192 == 274560


def test_sentences_whose_words_all_exited_leave_the_batch():
    model = tiny_model()
    inputs = token_inputs(batch_size=8, seed=7)
    threshold = split_threshold(word_uncertainties(model, inputs)[0], 0.5)
    rows_seen = []
    for layer in model.bert.encoder.layer:
        layer.attention.self.key.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape[0]))
    out = run(model, inputs, exit_threshold=threshold, window_size=1)
    depth = out.exit_layer.amax(dim=-1)
    assert len(depth.unique()) >= 2
    assert rows_seen == [int((depth >= layer).sum()) for layer in range(1, int(depth.max()) + 1)]
    # special tokens report the depth of their sentence
    lengths = inputs["attention_mask"].sum(-1)
    assert torch.equal(out.exit_layer[:, 0], depth)
    assert torch.equal(out.exit_layer[torch.arange(8), lengths - 1], depth)


# --- decisions ------------------------------------------------------------------------------------------------------


def test_word_pieces_follow_their_word():
    model = tiny_model()
    inputs = token_inputs(batch_size=8, seed=8)
    threshold = split_threshold(word_uncertainties(model, inputs)[0], 0.5)
    out = run(model, inputs, exit_threshold=threshold, window_size=3)
    word_ids = inputs["word_ids"]
    for row in range(8):
        for word in word_ids[row].unique().tolist():
            if word >= 0:
                assert len(out.exit_layer[row][word_ids[row] == word].unique()) == 1


def test_the_window_counts_words_not_word_pieces():
    model = tiny_model()
    # one sentence: [CLS] w0 w1(3 pieces) w2 [SEP]; with W = 3, w0 sees w1's first piece only, and w2 too
    ids = torch.tensor([[2, 10, 11, 60, 61, 12, 3]])
    word_ids = torch.tensor([[-1, 0, 1, 1, 1, 2, -1]])
    inputs = {"input_ids": ids, "word_ids": word_ids}
    with torch.no_grad():
        all_logits = model(**inputs, output_all_exits=True).all_logits
    u = uncertainty_of(all_logits[0, 0])  # first exit, every position
    word_u = u[[1, 2, 5]]
    threshold = split_threshold(word_u, 0.5)
    rule = TokenExitRule.build("token", [threshold, 0, 0, 0], [1, 2, 3, 4], 4, window_size=3)
    exit_index = rule.simulate(all_logits, torch.ones_like(ids), word_ids)[0]
    windowed = [max(word_u[0], word_u[1]), max(word_u), max(word_u[1], word_u[2])]
    expected_word_exit = [0 if value < threshold else 3 for value in windowed]
    assert exit_index[[1, 2, 3, 4, 5]].tolist() == [expected_word_exit[i] for i in (0, 1, 1, 1, 2)]
    live = run(model, inputs, exit_threshold=[threshold, 0, 0, 0], window_size=3)
    assert (live.exit_layer[0] - 1)[[1, 2, 3, 4, 5]].tolist() == exit_index[[1, 2, 3, 4, 5]].tolist()


def test_sentee_live_equals_its_simulation():
    model = tiny_model(exit_mode="sentence")
    inputs = token_inputs(batch_size=12, seed=9)
    for pooling in ("max", "mean"):
        threshold = split_threshold(word_uncertainties(model, inputs).amax(0), 0.5)
        live = run(model, inputs, exit_threshold=threshold, sentence_pooling=pooling)
        replay = run(model, inputs, exit_threshold=threshold, sentence_pooling=pooling, output_all_exits=True)
        assert torch.equal(live.exit_layer, replay.exit_layer)
        torch.testing.assert_close(live.logits, replay.logits, rtol=0, atol=1e-5)
        # every position of a sentence leaves together
        real = real_positions(inputs)
        for row in range(12):
            assert len(live.exit_layer[row][real[row]].unique()) == 1


def test_tokee_first_exit_decisions_match_the_replay():
    # up to the first exit the live states are the full-depth states, so the first decisions agree exactly
    model = tiny_model()
    inputs = token_inputs(batch_size=8, seed=10)
    threshold = split_threshold(word_uncertainties(model, inputs)[0], 0.5)
    settings = {"exit_threshold": [threshold, 0.0, 0.0, 0.0], "window_size": 3}
    live = run(model, inputs, **settings)
    replay = run(model, inputs, output_all_exits=True, **settings)
    assert torch.equal(live.exit_layer == 1, replay.exit_layer == 1)
    assert (live.exit_layer == 1).any() and (live.exit_layer[real_positions(inputs)] == 4).any()


def test_sentee_max_and_mean_pooling_by_hand():
    rule_max = TokenExitRule.build("sentence", 0.5, [1, 2], 2, sentence_pooling="max")
    rule_mean = TokenExitRule.build("sentence", 0.5, [1, 2], 2, sentence_pooling="mean")
    u = torch.tensor([[0.1, 0.6, 0.2, 0.0], [0.1, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])
    active = torch.tensor([[True, True, True, False], [True, True, True, False], [False] * 4])
    assert rule_max.word_fires(0, u, active).any(-1).tolist() == [False, True, False]
    assert rule_mean.word_fires(0, u, active).any(-1).tolist() == [True, True, False]  # mean of row 0 is 0.3
    assert torch.equal(rule_mean.word_fires(0, u, active)[0], active[0])  # the whole sentence leaves


def test_exited_words_do_not_hold_their_neighbours_back():
    rule = TokenExitRule.build("token", 0.5, [1, 2], 2, window_size=3)
    u = torch.tensor([[0.2, 0.9, 0.3, 0.4]])  # word 1 is uncertain ...
    assert rule.word_fires(0, u, torch.ones(1, 4, dtype=torch.bool)).tolist() == [[False, False, False, True]]
    # ... but once it has exited (stale value ignored), its neighbours may go
    active = torch.tensor([[True, False, True, True]])
    assert rule.word_fires(0, u, active).tolist() == [[True, False, True, True]]


@pytest.mark.parametrize(
    "window, expected",
    [
        (1, [0.2, 0.9, 0.3, 0.4, 0.1]),
        (3, [0.9, 0.9, 0.9, 0.4, 0.4]),  # edges clipped: word 0 sees words 0-1, word 4 sees 3-4
        (5, [0.9, 0.9, 0.9, 0.9, 0.4]),
        (11, [0.9, 0.9, 0.9, 0.9, 0.9]),  # wider than the sentence
    ],
)
def test_window_max_pool(window, expected):
    u = torch.tensor([[0.2, 0.9, 0.3, 0.4, 0.1]])
    torch.testing.assert_close(window_max(u, window), torch.tensor([expected]))


def test_window_max_pool_edges_and_padding_rows():
    u = torch.tensor([[0.7, 0.1, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.0, 0.0, 0.0, 0.0]])  # row 1 has 2 words
    torch.testing.assert_close(
        window_max(u, 5), torch.tensor([[0.7, 0.7, 0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.0, 0.0]])
    )
    assert window_max(torch.zeros(3, 0), 5).shape == (3, 0)


def test_word_layout():
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, -1, 1, 2, -1], [-1, 4, 4, -1, 0, 0, 0, 0]])  # -1 separates two runs of 1
    word_index, word_start = word_layout(attention_mask, word_ids)
    assert word_index.tolist() == [[-1, 0, 0, 1, -1, 2, 3, -1], [-1, 0, 0, -1, -1, -1, -1, -1]]
    assert word_start.tolist() == [
        [False, True, False, True, False, True, True, False],
        [False, True, False, False, False, False, False, False],
    ]
    # without word ids: every real position but the first and last of its row
    word_index, word_start = word_layout(attention_mask)
    assert word_index.tolist() == [[-1, 0, 1, 2, 3, 4, -1, -1], [-1, 0, 1, -1, -1, -1, -1, -1]]
    assert torch.equal(word_start, word_index >= 0)


def test_paper_threshold_schedule():
    config = TokenExitBertConfig(num_hidden_layers=12, exit_threshold=0.3, threshold_schedule="paper")
    assert config.exit_rule().thresholds == (0.3,) * 6 + (0.6,) * 6
    config = TokenExitBertConfig(
        num_hidden_layers=5, exit_threshold=0.3, threshold_schedule="paper", threshold_cap=0.5
    )
    assert config.exit_rule().thresholds == (0.3, 0.3, 0.5, 0.5, 0.5)
    config = TokenExitBertConfig(num_hidden_layers=6, exit_layers=[2, 4, 6], exit_threshold=0.1)
    assert config.exit_rule(threshold_schedule="paper").thresholds == (0.1, 0.2, 0.2)
    # wired into the forward: the schedule changes exits, per call, without touching the config
    model = tiny_model()
    inputs = token_inputs(batch_size=8, seed=11)
    u = word_uncertainties(model, inputs)
    threshold = split_threshold(u[:2], 0.3) / 2
    constant = run(model, inputs, exit_threshold=threshold, window_size=1)
    paper = run(model, inputs, exit_threshold=threshold, window_size=1, threshold_schedule="paper")
    assert model.config.threshold_schedule == "constant"
    assert paper.exit_layer.sum() < constant.exit_layer.sum()


def test_exit_layers_subset():
    model = tiny_model(exit_layers=[2, 4])
    assert len(model.exit_heads) == 2
    inputs = token_inputs(batch_size=6, seed=12)
    out = run(model, inputs, exit_threshold=1.0)
    assert (out.exit_layer[real_positions(inputs)] == 2).all()
    threshold = split_threshold(word_uncertainties(model, inputs)[0], 0.5)
    out = run(model, inputs, exit_threshold=threshold, window_size=1)
    assert set(out.exit_layer[real_positions(inputs)].unique().tolist()) == {2, 4}


# --- losses and training-mode outputs -------------------------------------------------------------------------------


def first_piece_labels(inputs, num_labels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    _, word_start = word_layout(inputs["attention_mask"], inputs["word_ids"])
    labels = torch.randint(0, num_labels, word_start.shape, generator=generator)
    return torch.where(word_start, labels, -100)


def test_training_computes_every_exit_and_the_joint_token_loss():
    model = tiny_model().train()
    inputs = token_inputs(batch_size=6, seed=13)
    labels = first_piece_labels(inputs)
    out = model(**inputs, labels=labels)
    assert out.all_logits.shape == (4, 6, 14, 3)
    assert (out.exit_layer[real_positions(inputs)] == 4).all()
    ce = [torch.nn.functional.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1)) for logits in out.all_logits]
    expected = sum((i + 1) * loss for i, loss in enumerate(ce)) / 10
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(head.weight.grad is not None and head.weight.grad.abs().sum() > 0 for head in model.exit_heads)


def test_eval_loss_is_cross_entropy_of_returned_logits():
    model = tiny_model()
    inputs = token_inputs(batch_size=6, seed=14)
    labels = first_piece_labels(inputs)
    out = run(model, inputs, labels=labels, exit_threshold=0.5)
    keep = labels != -100
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[keep], labels[keep]))
    # labels do not change predictions
    torch.testing.assert_close(run(model, inputs, exit_threshold=0.5).logits, out.logits, rtol=0, atol=0)


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(window_size=4), "`window_size` must be an odd integer >= 1.*got 4"),
        (dict(window_size=0), "`window_size` must be an odd integer >= 1.*got 0"),
        (dict(exit_threshold=1.2), r"in \[0, 1\], got 1.2"),
        (dict(exit_threshold=-0.1), r"in \[0, 1\], got -0.1"),
        (dict(exit_threshold=[0.1, 0.2]), "has 2 values but the model has 4 exits"),
        (dict(exit_threshold=[0.1] * 4, threshold_schedule="paper"), "single number with threshold_schedule='paper'"),
        (dict(threshold_schedule="paper", threshold_cap=2.0), r"`threshold_cap`.*in \[0, 1\], got 2.0"),
        (dict(exit_layers=[2, 5]), r"within 1..4, got \[2, 5\]"),
        (dict(exit_layers=[1, 2]), r"must end with the last layer \(4\)"),
        (dict(exit_mode="word"), "exit_mode"),
        (dict(sentence_pooling="min"), "sentence_pooling"),
        (dict(threshold_schedule="linear"), "threshold_schedule"),
    ],
)
def test_config_bad_input(overrides, message):
    with pytest.raises(StrictDataclassError, match=message):
        TokenExitBertConfig(**tiny_config_kwargs(**overrides))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window_size=2), "`window_size` must be an odd integer >= 1.*got 2"),
        (dict(exit_threshold=1.5), r"in \[0, 1\], got 1.5"),
        (dict(exit_threshold=[0.5] * 3), "has 3 values but the model has 4 exits"),
        (dict(exit_mode="word"), r"`exit_mode` must be one of \('token', 'sentence'\), got 'word'"),
        (dict(sentence_pooling="min"), r"`sentence_pooling` must be one of \('max', 'mean'\)"),
    ],
)
def test_forward_override_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(**token_inputs(), **kwargs)


def test_memoised_rules_still_reject_bad_values():
    # a valid setting is cached first; values equal to it as keys (True == 1) must still be rejected
    config = TokenExitBertConfig(**tiny_config_kwargs())
    assert config.exit_rule(window_size=1, exit_threshold=[1, 0.5, 0.5, 0.5]).window_size == 1
    with pytest.raises(ValueError, match="`window_size` must be an odd integer >= 1.*got True"):
        config.exit_rule(window_size=True)
    with pytest.raises(ValueError, match=r"`exit_threshold\[0\]` must be a number, got True"):
        config.exit_rule(exit_threshold=[True, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="`exit_threshold` must be a number, got"):
        config.exit_rule(exit_threshold={"a": 1})


def test_labels_of_the_wrong_shape_or_range():
    model = tiny_model()
    inputs = token_inputs(batch_size=3)
    with pytest.raises(ValueError, match=r"`labels` has shape \(3, 13\) but the inputs have shape \(3, 14\)"):
        model(**inputs, labels=torch.zeros(3, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`labels` has shape \(3,\)"):
        model(**inputs, labels=torch.zeros(3, dtype=torch.long))
    labels = torch.full((3, 14), -100)
    labels[1, 2] = 7
    with pytest.raises(ValueError, match=r"tag ids in \[0, 3\) or -100, got \[7\]"):
        model(**inputs, labels=labels)


def test_word_ids_of_the_wrong_shape():
    inputs = token_inputs(batch_size=3)
    with pytest.raises(ValueError, match=r"`word_ids` has shape \(3, 10\) but the inputs have shape \(3, 14\)"):
        tiny_model()(**{**inputs, "word_ids": inputs["word_ids"][:, :10]})


def test_inputs_longer_than_the_position_embeddings():
    with pytest.raises(ValueError, match="65 positions but the model has 64 position embeddings.*encode_words"):
        tiny_model()(input_ids=torch.randint(5, 99, (1, 65)))


def test_attention_implementations_without_packed_queries_are_refused():
    model = tiny_model()
    model.set_attn_implementation("flex_attention")
    with pytest.raises(ValueError, match=r"supports the \('eager', 'sdpa'\) attention.*'flex_attention'"):
        model(**token_inputs())


# --- edge inputs ----------------------------------------------------------------------------------------------------


def test_empty_sentence_leaves_at_the_first_exit():
    model = tiny_model()
    empty = {"input_ids": torch.tensor([[2, 3]]), "word_ids": torch.tensor([[-1, -1]])}
    out = run(model, empty, exit_threshold=0.0)  # even with a threshold under which no word ever exits
    assert out.exit_layer.tolist() == [[1, 1]]
    per_layer = 4 * 2 * 32 * 32 * 2 + 4 * 2 * 2 * 32 + 4 * 2 * 32 * 37
    assert int(out.flops) == per_layer + 2 * 192
    torch.testing.assert_close(out.logits, run(model, empty, output_all_exits=True).all_logits[0], rtol=0, atol=1e-6)
    # inside a batch it changes nothing for the others
    others = token_inputs(batch_size=3, seed=15)
    empty_row = {"input_ids": [2, 3] + [0] * 12, "attention_mask": [1, 1] + [0] * 12, "word_ids": [-1] * 14}
    batch = {k: torch.cat([v, torch.tensor([empty_row[k]])]) for k, v in others.items()}
    threshold = split_threshold(word_uncertainties(model, others)[0], 0.5)
    together = run(model, batch, exit_threshold=threshold, window_size=3)
    alone = run(model, others, exit_threshold=threshold, window_size=3)
    assert torch.equal(together.exit_layer[:3], alone.exit_layer)
    assert together.exit_layer[3, :2].tolist() == [1, 1] and (together.exit_layer[3, 2:] == 0).all()
    torch.testing.assert_close(together.logits[:3], alone.logits, rtol=0, atol=1e-5)
    # also where no word can exit at all
    never = run(model, batch, exit_threshold=0.0)
    assert never.exit_layer[3, :2].tolist() == [1, 1] and (never.exit_layer[:3][real_positions(others)] == 4).all()


def test_encode_words_aligns_words_and_first_piece_labels(tokenizer):
    batch = encode_words(tokenizer, [["the", "xyz", "film"], ["good"]], labels=[[1, 2, 0], [2]])
    assert batch["input_ids"].shape == batch["word_ids"].shape == batch["labels"].shape == (2, 7)
    assert batch["word_ids"].tolist() == [[-1, 0, 1, 1, 1, 2, -1], [-1, 0, -1, -1, -1, -1, -1]]
    assert batch["labels"].tolist() == [
        [-100, 1, 2, -100, -100, 0, -100],
        [-100, 2, -100, -100, -100, -100, -100],
    ]
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][0]) == [
        "[CLS]", "the", "x", "##y", "##z", "film", "[SEP]",
    ]  # fmt: skip
    model = tiny_model()
    out = run(model, batch, exit_threshold=0.5)
    assert out.logits.shape == (2, 7, 3)
    assert len(out.exit_layer[0, 2:5].unique()) == 1  # the three pieces of "xyz" exit together


def test_encode_words_gives_words_that_tokenise_to_nothing_the_unknown_token(tokenizer):
    batch = encode_words(tokenizer, [["the", "", "film", "\u200b"]], labels=[[1, 2, 0, 1]])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens == ["[CLS]", "the", "[UNK]", "film", "[UNK]", "[SEP]"]
    assert batch["word_ids"][0].tolist() == [-1, 0, 1, 2, 3, -1]
    assert batch["labels"][0].tolist() == [-100, 1, 2, 0, 1, -100]
    out = run(tiny_model(), batch, exit_threshold=0.5)
    assert (out.exit_layer[0, 1:5] > 0).all()  # every word has a prediction and an exit layer


def test_encode_words_truncates_long_sentences(tokenizer):
    words = ["good"] * 100
    batch = encode_words(tokenizer, [words], labels=[[1] * 100])
    assert batch["input_ids"].shape == (1, 64)  # the tokenizer's model_max_length
    assert batch["word_ids"][0].tolist() == [-1] + list(range(62)) + [-1]
    assert encode_words(tokenizer, [words], max_length=10)["input_ids"].shape == (1, 10)
    out = run(tiny_model(), batch, exit_threshold=0.5)
    assert out.exit_layer.shape == (1, 64)
    untruncated = tokenizer([words], is_split_into_words=True, return_tensors="pt")
    with pytest.raises(ValueError, match="102 positions but the model has 64"):
        tiny_model()(**untruncated)


def test_encode_words_bad_labels(tokenizer):
    with pytest.raises(ValueError, match="labels\\[1\\] has 1 labels but sentence 1 has 2 words"):
        encode_words(tokenizer, [["the"], ["a", "film"]], labels=[[0], [1]])
    with pytest.raises(ValueError, match="`labels` has 1 sentences but `sentences` has 2"):
        encode_words(tokenizer, [["the"], ["a", "film"]], labels=[[0]])


# --- the embedded MiniLM backbone on real CoNLL-2003 sentences ------------------------------------------------------


def conll_sentences(path: Path, limit: int) -> list[list[str]]:
    sentences, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(words)
                words = []
            if len(sentences) == limit:
                break
            continue
        words.append(line.split(" ")[0])
    return sentences


@pytest.mark.slow
@pytest.mark.skipif(not CONLL_VALID.is_file(), reason=f"CoNLL-2003 is not at {CONLL_VALID} (shared data folder)")
def test_minilm_tokee_batch_invariance_on_conll(minilm):
    torch.manual_seed(0)
    model = BertForTokenEarlyExit.from_pretrained(minilm, num_labels=9, exit_mode="token", window_size=3).eval()
    with torch.no_grad():
        for head in model.exit_heads:
            head.weight.normal_(0, 0.05)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    sentences = [s for s in conll_sentences(CONLL_VALID, 40) if len(s) > 1][:12]
    batch = encode_words(tokenizer, sentences)
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.max() - lengths.min() > 10  # mixed lengths
    threshold = split_threshold(word_uncertainties(model, batch)[:3], 0.4)
    batched = run(model, batch, exit_threshold=threshold)
    real = real_positions(batch)
    assert len(batched.exit_layer[real].unique()) >= 3
    for row, words in enumerate(sentences):
        single = run(model, encode_words(tokenizer, [words]), exit_threshold=threshold)
        length = int(lengths[row])
        assert torch.equal(single.exit_layer[0], batched.exit_layer[row, :length])
        assert torch.equal(single.logits[0].argmax(-1), batched.logits[row, :length].argmax(-1))
        torch.testing.assert_close(single.logits[0], batched.logits[row, :length], rtol=0, atol=1e-5)
        assert int(single.flops) == int(batched.flops[row])


def test_token_flops_read_from_the_table_equal_the_formula():
    from hf_earlyexit.models.bert.token_exit_utils import token_exit_flops

    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 7, 12, 30])
    exit_layer = torch.randint(1, model.config.num_hidden_layers + 1, (4, 30), generator=generator)
    exit_layer = torch.where(torch.arange(30) < lengths.unsqueeze(-1), exit_layer, 0)
    config = model.config
    formula = token_exit_flops(
        exit_layer, lengths, model.exit_layers, config.hidden_size, config.intermediate_size, model.num_labels,
        head_flops=model.head_flops(),
    )  # fmt: skip
    assert torch.equal(model.token_flops(exit_layer, lengths), formula)
    # a length beyond the table (more than the position embeddings) falls back to the formula
    long = torch.tensor([config.max_position_embeddings + 5])
    beyond = torch.full((1, int(long)), 2)
    expected = token_exit_flops(
        beyond, long, model.exit_layers, config.hidden_size, config.intermediate_size, model.num_labels,
        head_flops=model.head_flops(),
    )  # fmt: skip
    assert torch.equal(model.token_flops(beyond, long), expected)


def one_sentence_and_batched_loop(model, inputs, monkeypatch, **kwargs):
    """The outputs of a batch of one sentence through `_forward_one_sentence` and through the batched loop."""
    calls = []
    original = BertForTokenEarlyExit._forward_one_sentence

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(BertForTokenEarlyExit, "_forward_one_sentence", counted)
    fast = run(model, inputs, **kwargs)
    assert calls, "a batch of one sentence under TOKEE should take the one-sentence path"
    monkeypatch.setattr(BertForTokenEarlyExit, "_one_sentence_path", False)
    slow = run(model, inputs, **kwargs)
    monkeypatch.setattr(BertForTokenEarlyExit, "_one_sentence_path", True)
    assert len(calls) == 1
    return fast, slow


@pytest.mark.parametrize("window_size", [1, 3, 5])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_one_sentence_path_answers_as_the_batched_loop(monkeypatch, window_size, padded):
    model = tiny_model()
    inputs = token_inputs(batch_size=6, seed=21)
    mixed = 0
    for row in range(6):
        end = inputs["input_ids"].shape[1] if padded else int(inputs["attention_mask"][row].sum())
        single = {name: values[row : row + 1, :end] for name, values in inputs.items()}
        first_exit = word_uncertainties(model, single)[0]
        # thresholds that free some words, none, all; and one a hair above a word's float32 uncertainty, which the
        # batched rule compares at float32 (equal: the word stays)
        thresholds = [split_threshold(first_exit, 0.3), split_threshold(first_exit, 0.7), 0.0, 1.0]
        thresholds.append(float(first_exit[0]) + 1e-12)
        for threshold in thresholds:
            fast, slow = one_sentence_and_batched_loop(
                model, single, monkeypatch, exit_threshold=threshold, window_size=window_size
            )
            assert torch.equal(fast.exit_layer, slow.exit_layer)
            assert torch.equal(fast.logits, slow.logits)
            assert torch.equal(fast.flops, slow.flops)
            exits = fast.exit_layer[real_positions(single)]
            mixed += int(exits.min() != exits.max())
    assert mixed, "no sentence had words leaving at different exits: the packed layers went untested"


def test_one_sentence_path_with_its_own_threshold_and_the_paper_schedule(monkeypatch):
    model = tiny_model()
    single = {name: values[:1] for name, values in token_inputs(batch_size=1, seed=22).items()}
    threshold = split_threshold(word_uncertainties(model, single)[0], 0.5)
    for kwargs in (
        {"exit_threshold": torch.tensor([threshold])},
        {"exit_threshold": torch.tensor([[threshold, 0.9 * threshold, 0.0, 0.0]])},
        {"exit_threshold": threshold / 2, "threshold_schedule": "paper"},
        {"exit_threshold": [0.0, threshold, threshold, threshold]},
    ):
        fast, slow = one_sentence_and_batched_loop(model, single, monkeypatch, **kwargs)
        assert torch.equal(fast.exit_layer, slow.exit_layer), kwargs
        assert torch.equal(fast.logits, slow.logits), kwargs
        assert torch.equal(fast.flops, slow.flops), kwargs


def test_sentence_words_decide_as_the_rule():
    from hf_earlyexit.models.bert.token_exit_utils import SentenceWords

    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        num_words = int(torch.randint(1, 12, (1,), generator=generator))
        window_size = [1, 3, 5, 7][trial % 4]
        word_index = [-1] + [w for w in range(num_words) for _ in range(1 + trial % 2)] + [-1]
        sentence = SentenceWords.build(word_index)
        active = torch.rand(num_words, generator=generator) < 0.7
        sentence.words = active.nonzero().squeeze(-1).tolist()  # some words exited at earlier exits
        sentence.positions = [p for p, w in enumerate(word_index) if w < 0 or bool(active[w])]
        uncertainty = torch.rand(num_words, generator=generator)
        uncertainty[torch.rand(num_words, generator=generator) < 0.1] = float("nan")
        threshold = float(torch.rand((), generator=generator))
        rule = TokenExitRule(mode="token", thresholds=(threshold,), window_size=window_size)
        fires = rule.word_fires(0, uncertainty.unsqueeze(0), active.unsqueeze(0))[0]
        left = sentence.decide(uncertainty[active].tolist(), threshold, window_size)
        expected = (active & ~fires).nonzero().squeeze(-1).tolist()
        assert sentence.words == expected and left == bool(fires.any())
        pieces = [p for p, w in enumerate(word_index) if w in expected or w < 0]
        assert sentence.positions == pieces
        assert sentence.start_rows() == [pieces.index(word_index.index(w)) for w in expected]
