"""Early exit composed with int8 dynamic quantization, bf16 (weights or autocast) and compiled layers, per family."""

import copy
import warnings

import pytest
import torch
from torch import nn

from hf_earlyexit import BertWithBypassExits, compile_layers, quantize_layers
from hf_earlyexit.acceleration import encoder_layers
from tests import test_modeling_bypass_bert as bypass_tests
from tests import test_modeling_cascade_bert as cascade_tests
from tests import test_modeling_token_exit_bert as token_tests


def bypass_case():
    model = bypass_tests.tiny_model()
    inputs = bypass_tests.padded_inputs(batch_size=12, max_len=12)
    settings = {"exit_criterion": "max_prob", "exit_threshold": bypass_tests.spread_thresholds(model, inputs)}
    return model, inputs, settings


def cascade_case():
    model = cascade_tests.tiny_cascade()
    inputs = bypass_tests.padded_inputs(batch_size=12, max_len=12)
    with torch.no_grad():
        confidences = model(**inputs, output_all_exits=True).all_logits[0].softmax(-1).max(-1).values
    return model, inputs, {"exit_threshold": float(confidences.median())}


def token_case():
    model = token_tests.tiny_model()
    return model, token_tests.token_inputs(batch_size=12, max_len=14), {"exit_threshold": 0.5}


CASES = {"bypass": bypass_case, "cascade": cascade_case, "token": token_case}


def run(model, inputs, settings):
    with torch.no_grad():
        return model(**inputs, early_exit=True, **settings)


def agreement(output, reference) -> float:
    """Fraction of examples (tokens for the token model) with the reference's exit layer and prediction."""
    same = (output.exit_layer == reference.exit_layer) & (output.logits.argmax(-1) == reference.logits.argmax(-1))
    return same.float().mean().item()


@pytest.fixture(params=sorted(CASES))
def case(request):
    torch.manual_seed(0)
    model, inputs, settings = CASES[request.param]()
    return model, inputs, settings, run(model, inputs, settings)


def test_int8_dynamic_quantization_keeps_the_exit_decisions(case):
    model, inputs, settings, reference = case
    with warnings.catch_warnings():  # torch 2.13 announces the deprecation of torch.ao's quantized tensors
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        output = run(quantized, inputs, settings)
    assert not any(type(m) is nn.Linear for m in quantized.modules())  # every linear layer was replaced
    assert output.logits.dtype == torch.float32
    assert agreement(output, reference) >= 0.75


def assert_only_the_layers_are_quantized(model, layers):
    """Every linear of the encoder layers is dynamically quantized; the heads, bypasses and poolers stay fp32."""
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is nn.Linear for layer in layers for m in layer.modules())
    assert any(isinstance(m, quantized) for layer in layers for m in layer.modules())
    inside_layers = {id(m) for layer in layers for m in layer.modules()}
    others = [m for m in model.modules() if isinstance(m, (nn.Linear, quantized)) and id(m) not in inside_layers]
    assert others and not any(isinstance(m, quantized) for m in others)
    assert all(m.weight.dtype == torch.float32 for m in others)


def test_quantize_layers_keeps_the_heads_in_fp32_and_the_exit_decisions(case):
    model, inputs, settings, reference = case
    layers = encoder_layers(model)
    assert quantize_layers(model) is model  # in place
    assert_only_the_layers_are_quantized(model, layers)
    output = run(model, inputs, settings)
    assert output.logits.dtype == torch.float32
    assert agreement(output, reference) >= 0.75


@pytest.mark.parametrize("quantize", ["layers", "every linear"])
def test_a_quantized_model_is_not_saved_and_the_checkpoint_stays(quantize, tmp_path):
    model, inputs, settings = bypass_case()
    model.save_pretrained(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = (
            quantize_layers(model)
            if quantize == "layers"
            else torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        )
    with pytest.raises(ValueError, match="has dynamically quantized linear layers .* save the fp32 model"):
        quantized.save_pretrained(tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_quantize_layers_with_fp16_weights(case):
    model, inputs, settings, reference = case
    layers = encoder_layers(model)
    quantize_layers(model, dtype=torch.float16)
    assert_only_the_layers_are_quantized(model, layers)
    output = run(model, inputs, settings)
    assert output.logits.dtype == torch.float32
    assert agreement(output, reference) >= 0.9  # fp16 weights, fp32 products: nearly the fp32 model


def test_quantize_layers_refusals():
    with pytest.raises(ValueError, match="quantize_layers: Linear has no encoder layers"):
        quantize_layers(nn.Linear(2, 2))
    model, _, _ = bypass_case()
    with pytest.raises(
        ValueError, match=r"quantize_layers: dtype must be torch.qint8 or torch.float16 .* got torch.bfloat16"
    ):
        quantize_layers(model, dtype=torch.bfloat16)
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())  # left as it was
    from tests.test_encoders import build

    tagger = build("token", "modernbert")
    with pytest.raises(ValueError, match="TOKEE on ModernBERT slices the fused Wqkv weight"):
        quantize_layers(tagger)
    assert all(type(m) is nn.Linear for m in tagger.modules() if "Linear" in type(m).__name__)  # left as it was


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "deberta-v3", "modernbert"])
@pytest.mark.parametrize("family", ["bypass", "token", "cascade"])
def test_quantize_layers_on_other_encoders(family, arch):
    from tests.test_encoders import build, inputs_for, mixed_settings

    if family == "token" and arch == "modernbert":
        pytest.skip("refused, see test_quantize_layers_refusals")
    model = build(family, arch)
    inputs = inputs_for(arch, model)
    settings = mixed_settings(family, model, inputs)
    reference = run(model, inputs, settings)
    output = run(quantize_layers(model), inputs, settings)
    assert output.exit_layer.shape == reference.exit_layer.shape
    assert agreement(output, reference) >= 0.75  # 1.0 on every pair when written (6 sentences, 54 words)


def test_autocast_bf16_keeps_the_exit_decisions(case):
    # the exit loops wrote the heads' bf16 logits into fp32 outputs: index_put / index_copy_ refused the mix
    model, inputs, settings, reference = case
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = run(model, inputs, settings)
    assert output.exit_layer.shape == reference.exit_layer.shape
    assert agreement(output, reference) >= 0.75


def test_bf16_weights_from_pretrained(case, tmp_path):
    model, inputs, settings, reference = case
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    output = run(loaded, inputs, settings)
    assert output.logits.dtype == torch.bfloat16
    assert agreement(output, reference) >= 0.75
    # the checkpoint on disk is untouched: it still loads in fp32 with the same outputs
    again = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(run(again, inputs, settings).logits, reference.logits)


def test_encoder_layers_of_every_family():
    bypass, cascade, token = bypass_case()[0], cascade_case()[0], token_case()[0]
    assert encoder_layers(bypass) == list(bypass.bert.encoder.layer)
    assert encoder_layers(token) == list(token.bert.encoder.layer)
    assert encoder_layers(cascade) == [layer for member in cascade.members for layer in member.bert.encoder.layer]


def test_compile_layers_without_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="compile_layers: Linear has no encoder layers"):
        compile_layers(nn.Linear(2, 2))


def test_compile_layers_matches_eager_without_recompiling_per_batch(tmp_path):
    torch._dynamo.reset()
    model, inputs, settings = bypass_case()
    eager = copy.deepcopy(model)
    assert compile_layers(model) is model
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def compare(batch):
        torch.testing.assert_close(run(model, batch, settings).logits, run(eager, batch, settings).logits)

    compare(inputs)  # warm-up: batch > 1 (the dynamic graph) and a single example (its own graph)
    compare(bypass_tests.padded_inputs(batch_size=1, max_len=7, seed=1))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for batch_size, max_len in [(3, 9), (5, 12), (1, 11), (7, 10)]:
        compare(bypass_tests.padded_inputs(batch_size=batch_size, max_len=max_len, seed=batch_size))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    # compiling changes neither the weights nor what is saved
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.save_pretrained(tmp_path)
    reloaded = BertWithBypassExits.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(run(reloaded, inputs, settings).logits, run(eager, inputs, settings).logits)


@pytest.mark.parametrize("family", ["cascade", "token"])
def test_compile_layers_on_the_other_families(family):
    # the "eager" backend checks what dynamo captures without inductor's code generation (the bypass test pays that)
    torch._dynamo.reset()
    model, inputs, settings = CASES[family]()
    reference = run(model, inputs, settings)
    captured = torch._dynamo.utils.counters["stats"]["calls_captured"]
    compile_layers(model, backend="eager")
    output = run(model, inputs, settings)
    torch.testing.assert_close(output.logits, reference.logits)
    assert torch.equal(output.exit_layer, reference.exit_layer)
    if family == "cascade":  # its layers went through dynamo; TOKEE's packed steps call the layers' parts, eager
        assert torch._dynamo.utils.counters["stats"]["calls_captured"] > captured


def test_an_int8_model_can_be_recalibrated():
    # fp32 thresholds are only approximate for an int8 model (its confidences move): calibrate the quantized model
    from hf_earlyexit.calibration import calibrate
    from tests.test_calibration import calibration_batches, measure

    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            bypass_tests.tiny_model(num_labels=2), {nn.Linear}, dtype=torch.qint8
        )
        batches = calibration_batches()
        result = calibrate(quantized, batches, target_speedup=2.0)
        measured = measure(quantized, batches)
    assert result.reached and measured["flops_speedup"] >= 2.0
    # what the calibration predicted from its recorded pass is what the quantized model does live, up to the few
    # examples near a threshold: int8 quantizes activations per batch, so a compacted sub-batch computes slightly other
    # logits than the full batch it was recorded in (in fp32 the match is exact, see test_calibration.py)
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=0.03)
    assert abs(measured["accuracy"] - result.expected_accuracy) <= 2 / 64
    # and the examples that leave elsewhere live are exactly those whose confidence sits at the threshold
    from hf_earlyexit.calibration import record
    from hf_earlyexit.evaluation import collect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = record(quantized, batches)
        inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
        live = collect(quantized, inputs, **result.forward_kwargs())["exit_layer"]
    assert result.criterion == "max_prob" and isinstance(result.exit_threshold, float)
    confidence = rec.all_logits.softmax(-1).amax(-1)  # (exits, examples), as recorded in the full batches
    fires = torch.cat([confidence[:-1] >= result.exit_threshold, torch.ones_like(confidence[:1], dtype=torch.bool)])
    replayed = fires.int().argmax(0)  # the first exit that fires
    live_index = torch.searchsorted(torch.tensor(rec.exit_layers), live)
    moved = (live_index != replayed).nonzero().flatten()
    assert 0 < len(moved) <= 3  # this seed has one or more (the point of the test)
    earlier = torch.minimum(live_index, replayed)[moved]
    # within 1e-3 of it (int8's per-batch noise), where the recorded confidences sit a median 5e-3 away
    assert (confidence[earlier, moved] - result.exit_threshold).abs().max() < 1e-3
