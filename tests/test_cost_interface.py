"""The interface every family offers to evaluation, calibration and the benchmarks (`exit_layers`,
`full_depth_layers`, `reference_flops`, `flops_per_exit`, `plain_baseline`), and the self-containedness of the model
code that ships with remote-code checkpoints."""

from pathlib import Path

import pytest
import torch

import hf_earlyexit
from hf_earlyexit.models.bert import modeling_exit_heads
from hf_earlyexit.models.bert.modeling_exit_heads import EarlyExitModelMixin
from hf_earlyexit.models.bert.token_exit_utils import token_exit_flops
from tests.test_modeling_bypass_bert import padded_inputs
from tests.test_modeling_bypass_bert import tiny_model as tiny_bypass
from tests.test_modeling_cascade_bert import tiny_cascade
from tests.test_modeling_token_exit_bert import tiny_model as tiny_token
from tests.test_modeling_token_exit_bert import token_inputs


FAMILIES = {
    "bypass": (lambda: tiny_bypass(num_labels=3, exit_pooling="pooler", use_bypass=False), padded_inputs),
    "cascade": (lambda: tiny_cascade(num_labels=3, exit_pooling="pooler"), padded_inputs),
    "token": (lambda: tiny_token(num_labels=5), token_inputs),
}


def run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_the_cost_interface(family):
    build, make_inputs = FAMILIES[family]
    model = build()
    inputs = make_inputs()
    lengths = inputs["attention_mask"].sum(dim=-1)
    num_exits = len(model.exit_layers)
    assert model.exit_layers == sorted(model.exit_layers) and model.full_depth_layers >= 1
    per_exit = model.flops_per_exit(lengths)
    assert per_exit.shape == (num_exits, lengths.shape[0])
    assert (per_exit[1:] > per_exit[:-1]).all()  # a later exit costs more
    # the full model is what `early_exit=False` spends
    torch.testing.assert_close(model.reference_flops(lengths), run(model, inputs, early_exit=False).flops)
    # never leaving early spends what leaving at the last exit costs (every head evaluated on the way)
    never = {"token": {"exit_threshold": 0.0}}.get(family, {"exit_criterion": "max_prob", "exit_threshold": 1.0})
    torch.testing.assert_close(run(model, inputs, **never).flops, per_exit[-1])


def test_token_flops_per_exit_prices_a_sentence_leaving_entirely_at_each_exit():
    model = tiny_token(num_labels=5, exit_layers=[1, 3, 4])
    inputs = token_inputs(batch_size=5)
    lengths = inputs["attention_mask"].sum(dim=-1)
    real = inputs["attention_mask"].bool()
    per_exit = model.flops_per_exit(lengths)
    config = model.config
    for k, layer in enumerate(model.exit_layers):
        exit_layer = torch.where(real, layer, 0)
        expected = token_exit_flops(
            exit_layer, lengths, model.exit_layers, config.hidden_size, config.intermediate_size, config.num_labels
        )
        assert torch.equal(per_exit[k], expected)
    # and a live SENTEE run whose sentences all leave at the first exit spends exactly its first row
    out = run(model, inputs, exit_mode="sentence", exit_threshold=1.0)
    assert (out.exit_layer[real] == model.exit_layers[0]).all()
    assert torch.equal(out.flops, per_exit[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_baseline_computes_the_full_model(family):
    build, make_inputs = FAMILIES[family]
    model = build()
    baseline = model.plain_baseline()
    expected_class = "BertForTokenClassification" if family == "token" else "BertForSequenceClassification"
    assert type(baseline).__name__ == expected_class and not baseline.training
    assert baseline.config.num_hidden_layers == model.full_depth_layers
    inputs = make_inputs()
    plain_inputs = {key: value for key, value in inputs.items() if key != "word_ids"}
    expected = run(model, inputs, early_exit=False).logits
    logits = run(baseline, plain_inputs).logits
    if family == "token":
        real = inputs["attention_mask"].bool()
        logits, expected = logits[real], expected[real]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_the_shipped_model_code_never_names_the_package():
    """`models/bert` is what a remote-code checkpoint carries: it imports only torch, transformers and its siblings,
    names the package nowhere (not even in a string, a docstring or the licence header, which names the authors by
    the distribution's name, hf-earlyexit), and publishing goes through the `publisher` hook that the package sets
    when it is imported."""
    folder = Path(modeling_exit_heads.__file__).parent
    for path in folder.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "hf_earlyexit" not in text, path.name
        assert "METHODS.md" not in text, path.name
    assert isinstance(EarlyExitModelMixin.publisher, hf_earlyexit.registration.HubPublisher)


@pytest.mark.parametrize("family", ["bypass", "token"])
def test_tabulated_encoder_flops_equal_the_formula(family):
    model = FAMILIES[family][0]()
    config, backbone = model.base_model.config, model.encoder_backbone
    lengths = torch.tensor([1, 7, 30, config.max_position_embeddings])
    depths = torch.arange(config.num_hidden_layers + 1).unsqueeze(-1)
    formula = modeling_exit_heads.encoder_flops(backbone, config, lengths, depths)
    assert torch.equal(model.encoder_flops(lengths, depths), formula)  # builds the table
    assert torch.equal(model.encoder_flops(lengths, 2), formula[2])
    assert torch.equal(model.encoder_flops(lengths, torch.tensor([1, 2, 3, 1])), formula[[1, 2, 3, 1], range(4)])
    # a length beyond the encoder's positions is priced by the formula, not refused
    longer = torch.tensor([config.max_position_embeddings + 5])
    assert torch.equal(model.encoder_flops(longer, 3), modeling_exit_heads.encoder_flops(backbone, config, longer, 3))
