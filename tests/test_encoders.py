"""Every family on every supported encoder, on tiny random models of each architecture: full depth equals the
architecture's own task model with the same weights, a batch of mixed lengths equals one example at a time, the FLOPs
a forward reports are the FLOPs it executes, checkpoints round-trip through the Auto classes and through remote code
without the package, and plain checkpoints of each architecture load into every family."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from hf_earlyexit import (
    SUPPORTED_MODEL_TYPES,
    BertForCascadeClassification,
    BertForTokenEarlyExit,
    BertWithBypassExits,
    BypassBertConfig,
    CascadeForSequenceClassification,
    EncoderForTokenEarlyExit,
    EncoderWithBypassExits,
    TokenExitBertConfig,
)
from hf_earlyexit.models.bert.backbones import backbone_for
from hf_earlyexit.models.bert.exit_utils import normalized_entropy
from hf_earlyexit.models.bert.modeling_exit_heads import stock_head_modules
from tests.test_backbones import ARCHITECTURES, WITH_TOKEN_TYPES
from tests.test_backbones import batch as encoder_batch


# every architecture of the backbone tests, and ModernBERT whose sequence head reads the mean over tokens
ENCODERS = {
    **ARCHITECTURES,
    "modernbert-mean": ("modernbert", {**ARCHITECTURES["modernbert"][1], "classifier_pooling": "mean"}),
}
FAMILIES = ("bypass", "token", "cascade")
NUM_LABELS = {"bypass": 3, "token": 5, "cascade": 3}
TASK_AUTO_CLASS = {
    "bypass": AutoModelForSequenceClassification,
    "token": AutoModelForTokenClassification,
    "cascade": AutoModelForSequenceClassification,
}


def encoder_config(arch: str, **overrides):
    model_type, kwargs = ENCODERS[arch]
    return AutoConfig.for_model(model_type, **{**kwargs, **overrides})


def build(family: str, arch: str, **overrides):
    """A family model on a tiny random encoder of `arch`, in eval mode, whose every module does something."""
    torch.manual_seed(0)
    num_labels = NUM_LABELS[family]
    if family == "bypass":
        config = BypassBertConfig(encoder_config=encoder_config(arch), num_labels=num_labels, **overrides)
        model = BertWithBypassExits(config)
        with torch.no_grad():  # a fresh bypass is the identity
            for bypass in model.bypasses or []:
                bypass.up.weight.normal_(0, 0.2)
    elif family == "token":
        model = BertForTokenEarlyExit(TokenExitBertConfig(encoder_config=encoder_config(arch), num_labels=num_labels))
    else:
        encoder = AutoModel.from_config(encoder_config(arch))
        model = BertForCascadeClassification.from_backbone(encoder, member_layers=[1, 3], num_labels=num_labels)
        with torch.no_grad():
            for member in model.members:
                member.head.classifier.weight.normal_(0, 0.5)
    return model.eval()


def encoder_of(model):
    return model.members[0].base_model if isinstance(model, BertForCascadeClassification) else model.base_model


def inputs_for(arch: str, model, lengths=(7, 4, 9, 2, 6, 3)) -> dict:
    torch.manual_seed(1)
    return encoder_batch(arch, encoder_of(model), lengths=lengths)


def run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


def mixed_settings(family: str, model, inputs) -> dict:
    """Per-call settings under which the examples (words) of `inputs` leave at different exits."""
    all_logits = run(model, inputs, output_all_exits=True).all_logits
    if family == "token":
        real = inputs["attention_mask"].bool()
        first = normalized_entropy(all_logits[0])[real]
        return {"exit_threshold": float(first.quantile(0.5)), "window_size": 1}
    confidence = all_logits.softmax(-1).amax(-1)[:-1]  # one row per non-final exit
    thresholds = [float(row.quantile(0.5)) for row in confidence]
    return {"exit_threshold": thresholds if family == "cascade" else [*thresholds, thresholds[-1]]}


def real_rows(inputs: dict, row: int) -> dict:
    length = int(inputs["attention_mask"][row].sum())
    return {name: tensor[row : row + 1, :length] for name, tensor in inputs.items()}


ARCHS = list(ENCODERS)


# --------------------------------------------------------------------------------------------------------------------
# Full depth is the architecture's own task model
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_full_depth_equals_the_architectures_own_classifier(family, arch, tmp_path):
    """The architecture's `...ForSequenceClassification` / `...ForTokenClassification` with random weights, saved as a
    plain checkpoint: the family loads its encoder from it (a cascade member also its head); with the head's weights
    copied into the last exit (same shape: `exit_pooling="pooler"` builds the architecture's own head), it gives the
    classifier's logits at full depth, and so does `plain_baseline()`."""
    task = "token" if family == "token" else "sequence"
    config = encoder_config(arch, num_labels=NUM_LABELS[family])
    torch.manual_seed(2)
    stock = backbone_for(config).task_model_class(task)(config).eval()
    stock.save_pretrained(tmp_path)
    if family == "bypass":
        ours = BertWithBypassExits.from_pretrained(tmp_path, exit_pooling="pooler", use_bypass=False)
    elif family == "token":
        ours = BertForTokenEarlyExit.from_pretrained(tmp_path)
    else:  # a member given as the checkpoint of a sequence classifier keeps its head
        ours = BertForCascadeClassification.from_members([tmp_path])
    ours.eval()
    if family != "cascade":
        assert type(ours.base_model) is type(stock.base_model)
        for mine, theirs in stock_head_modules(ours.encoder_backbone, task, ours.exit_heads[-1], stock):
            mine.load_state_dict(theirs.state_dict())
    inputs = inputs_for(arch, ours)
    expected = run(stock, inputs).logits
    actual = run(ours, inputs, early_exit=False).logits
    baseline = run(ours.plain_baseline(), inputs).logits  # what the wall-clock baselines run
    real = inputs["attention_mask"].bool() if family == "token" else slice(None)
    torch.testing.assert_close(actual[real], expected[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(baseline[real], expected[real], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# A batch of mixed lengths decides as one example at a time
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_equals_one_at_a_time(family, arch):
    model = build(family, arch)
    inputs = inputs_for(arch, model)
    settings = mixed_settings(family, model, inputs)
    batched = run(model, inputs, **settings)
    exit_key = "exit_stage" if family == "cascade" else "exit_layer"
    exits = []
    for row in range(inputs["input_ids"].shape[0]):
        single = run(model, real_rows(inputs, row), **settings)
        length = single.logits.shape[1] if family == "token" else None
        batch_exit, batch_logits = getattr(batched, exit_key)[row], batched.logits[row]
        if family == "token":
            batch_exit, batch_logits = batch_exit[:length], batch_logits[:length]
        assert torch.equal(getattr(single, exit_key)[0], batch_exit), (row, getattr(single, exit_key), batch_exit)
        assert torch.equal(single.logits[0].argmax(-1), batch_logits.argmax(-1))
        torch.testing.assert_close(single.logits[0], batch_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(single.flops, batched.flops[row : row + 1], rtol=0, atol=0)
        exits.append(batch_exit.float().mean().item())
    assert len(set(exits)) > 1, exits  # the settings did mix the exits


# --------------------------------------------------------------------------------------------------------------------
# The FLOPs reported are the FLOPs executed
# --------------------------------------------------------------------------------------------------------------------


def executed_flops(model, inputs, **kwargs) -> int:
    # with gradients on: under no_grad, DeBERTa's slices of its relative embeddings trip FlopCounterMode's tracker
    with FlopCounterMode(display=False) as counter:
        model(**inputs, **kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_executed_flops_are_the_reported_flops(family, arch):
    """torch's FLOP counter on real early-exit runs (eager attention, which it prices), one example at a time so that
    no padding is computed: within 15 % of the `flops` output, early exits and full depth alike."""
    model = build(family, arch)
    model.set_attn_implementation("eager")
    inputs = inputs_for(arch, model, lengths=(9, 7, 5, 8))
    settings = mixed_settings(family, model, inputs)
    for kwargs in (settings, {"early_exit": False}):
        for row in range(inputs["input_ids"].shape[0]):
            single = real_rows(inputs, row)
            reported = int(run(model, single, **kwargs).flops.sum())
            executed = executed_flops(model, single, **kwargs)
            assert abs(executed - reported) <= 0.15 * reported, (kwargs, row, executed, reported)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_through_the_auto_classes(family, arch, tmp_path):
    model = build(family, arch)
    inputs = inputs_for(arch, model)
    settings = mixed_settings(family, model, inputs)
    expected = run(model, inputs, **settings)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    if family == "cascade":
        assert [member["model_type"] for member in saved["members"]] == [ENCODERS[arch][0]] * 2
    elif arch == "bert":  # today's BERT format: the encoder is the config's own fields
        assert "encoder_config" not in saved and saved["hidden_size"] == 32
    else:
        assert saved["encoder_config"]["model_type"] == ENCODERS[arch][0]
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    for auto_class in (AutoModel, TASK_AUTO_CLASS[family], type(model)):
        reloaded = auto_class.from_pretrained(tmp_path).eval()
        assert type(reloaded) is type(model) and type(encoder_of(reloaded)) is type(encoder_of(model))
        out = run(reloaded, inputs, **settings)
        assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
        # same weights, but the loaded ones sit unaligned in their file's memory map, and MKL's AVX-512 kernels can
        # round a product of unaligned operands differently (seen on an AMD EPYC: 4.7e-9 on one logit of RoBERTa)
        torch.testing.assert_close(out.logits, expected.logits, rtol=1e-6, atol=1e-7)
        for name in ("exit_layer", "flops"):
            torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_plain_checkpoint_of_the_architecture_loads_into_every_family(arch, tmp_path):
    torch.manual_seed(3)
    plain = AutoModel.from_config(encoder_config(arch)).eval()
    plain.save_pretrained(tmp_path)
    weights = {name: tensor for name, tensor in plain.state_dict().items() if not name.startswith("pooler.")}
    models = [
        EncoderWithBypassExits.from_pretrained(tmp_path, num_labels=2, exit_layers=[2, 3]),
        EncoderForTokenEarlyExit.from_pretrained(tmp_path, num_labels=4),
        CascadeForSequenceClassification.from_backbone(tmp_path, member_layers=[3]),
    ]
    for model in models:
        encoder = encoder_of(model)
        assert type(encoder) is type(plain)
        loaded = encoder.state_dict()
        assert set(loaded) == set(weights)
        for name, tensor in weights.items():
            assert torch.equal(loaded[name], tensor), name
    bypass, token, _ = models
    assert bypass.config.encoder_model_type == token.config.encoder_model_type == ENCODERS[arch][0]
    assert bypass.config.num_hidden_layers == 3 and bypass.exit_layers == [2, 3]
    assert bypass.base_model_prefix == backbone_for(plain.config).base_model_prefix


@pytest.mark.parametrize("family", ["bypass", "token", "cascade"])
def test_an_architecture_without_a_backbone_is_named_with_the_supported_ones(family, tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99)).save_pretrained(tmp_path)
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    with pytest.raises(ValueError, match=f"'gpt2'.*{supported}"):
        if family == "cascade":
            BertForCascadeClassification.from_backbone(tmp_path, member_layers=[1, 2])
        else:
            {"bypass": BertWithBypassExits, "token": BertForTokenEarlyExit}[family].from_pretrained(tmp_path)
    if family == "bypass":
        with pytest.raises(ValueError, match=f"No early-exit backbone for model_type 'gpt2'.*{supported}"):
            BypassBertConfig(encoder_config=GPT2Config())
    if family == "cascade":
        with pytest.raises(TypeError, match=f"`members\\[0\\]` must be .*{supported}.* got GPT2Model"):
            BertForCascadeClassification.from_members([GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4))])


def test_an_encoder_config_of_bert_keeps_the_bert_format():
    from transformers import BertConfig

    config = BypassBertConfig(encoder_config=BertConfig(hidden_size=48, num_attention_heads=4, num_hidden_layers=2))
    assert config.encoder_config is None and (config.hidden_size, config.num_hidden_layers) == (48, 2)
    assert "encoder_config" not in json.loads(config.to_json_string())


# --------------------------------------------------------------------------------------------------------------------
# Remote code, without the package
# --------------------------------------------------------------------------------------------------------------------


def test_remote_code_checkpoints_of_every_encoder_load_without_the_package(tmp_path):
    from tests.test_hub import run_without_package

    sources, expected = [], {}
    inputs = {"input_ids": None, "attention_mask": None}
    for family in FAMILIES:
        for arch in ("roberta", "electra", "distilbert", "deberta-v3", "deberta-v2-conv", "modernbert"):
            model = build(family, arch)
            folder = tmp_path / f"{family}-{arch}"
            model.save_pretrained(folder, remote_code=True)
            sources.append(str(folder))
            if inputs["input_ids"] is None:  # ids every architecture takes (no token types)
                inputs = {k: v for k, v in inputs_for("distilbert", model).items() if k != "token_type_ids"}
            expected[str(folder)] = [
                {name: getattr(run(model, inputs, **kwargs), name) for name in ("logits", "exit_layer", "flops")}
                for kwargs in ({}, {"early_exit": False})
            ]
    torch.save(inputs, tmp_path / "inputs.pt")
    job = {
        "inputs": str(tmp_path / "inputs.pt"),
        "sources": sources,
        "auto_classes": ["AutoModel"],
        "call_kwargs": [{}, {"early_exit": False}],
        "compared_outputs": ["logits", "exit_layer", "flops"],
        "output": str(tmp_path / "outputs.pt"),
        "pipeline": None,
    }
    report = run_without_package(tmp_path, job, timeout=600)
    assert all(entry["module"].startswith("transformers_modules.") for entry in report["models"])
    outputs = torch.load(tmp_path / "outputs.pt")
    for source in sources:
        for got, want in zip(outputs[f"{source}|AutoModel"], expected[source], strict=True):
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=f"{source} {name}")


# --------------------------------------------------------------------------------------------------------------------
# The token family's heads and exits on an encoder whose token head transforms each state (ModernBERT)
# --------------------------------------------------------------------------------------------------------------------


def test_token_exit_heads_follow_the_architectures_token_head():
    model = build("token", "modernbert")
    head = model.exit_heads[0]
    assert {name for name, _ in head.named_children()} == {"dense", "act", "norm", "classifier"}
    assert model.head_flops() == 2 * 32 * 32 + 2 * 32 * 5
    assert isinstance(build("token", "deberta-v3").exit_heads[0], torch.nn.Linear)


@pytest.mark.parametrize("arch", ["distilbert", "modernbert"])
def test_token_types_are_refused_by_an_encoder_without_them(arch):
    model = build("bypass", arch)
    inputs = inputs_for(arch, model)
    with pytest.raises(ValueError, match="no token type embeddings"):
        run(model, {**inputs, "token_type_ids": torch.zeros_like(inputs["input_ids"])})


def test_roberta_takes_as_many_tokens_as_its_positions_after_the_padding():
    config = BypassBertConfig(encoder_config=encoder_config("roberta", max_position_embeddings=12))
    assert config.max_position_embeddings == 10  # RoBERTa numbers positions from pad_token_id + 1 = 2
    model = BertWithBypassExits(config).eval()
    assert run(model, {"input_ids": torch.full((1, 10), 5)}).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="11 positions but BertWithBypassExits has 10"):
        run(model, {"input_ids": torch.full((1, 11), 5)})


def test_every_family_on_the_encoders_listed_in_with_token_types_takes_them():
    for arch in WITH_TOKEN_TYPES:
        model = build("bypass", arch)
        inputs = inputs_for(arch, model)
        assert "token_type_ids" in inputs
        assert run(model, inputs).logits.shape == (6, 3)


# --------------------------------------------------------------------------------------------------------------------
# Model cards and the token pipeline on another encoder
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bypass", "token"])
def test_the_model_card_names_the_encoder(family):
    from hf_earlyexit.model_card import EarlyExitModelCardData, model_card_for

    card = str(model_card_for(build(family, "deberta-v3"), EarlyExitModelCardData()))
    assert "deberta-v2, 3 layers, hidden size 32" in card
    assert "deberta-v2, " not in str(model_card_for(build(family, "bert"), EarlyExitModelCardData()))


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def tagger(arch: str):
    model = build("token", arch)
    model.config.id2label, model.config.label2id = dict(enumerate(TAGS)), {tag: i for i, tag in enumerate(TAGS)}
    return model


@pytest.mark.parametrize("arch", ["roberta", "deberta-v3", "modernbert"])
def test_token_calibration_on_another_encoder_expects_what_it_measures(arch):
    from hf_earlyexit.calibration import calibrate
    from tests.test_token_calibration import calibration_batches, measure

    model = tagger(arch)
    batches = calibration_batches(model)
    result = calibrate(model, batches, target_speedup=1.3)
    assert result.verified == "live" and result.reached and result.expected_flops_speedup >= 1.3
    measured = measure(model, batches)  # the chosen settings are in the config now
    assert measured["f1"] == result.expected_metric
    assert measured["flops_speedup"] == pytest.approx(result.expected_flops_speedup, rel=1e-12)


def test_the_token_pipeline_on_distilbert_answers_as_the_model(tmp_path):
    from transformers import pipeline

    from hf_earlyexit import EarlyExitTokenClassificationPipeline, encode_words
    from tests.test_token_pipeline import sentences
    from tests.utils import tiny_tokenizer

    model = tagger("distilbert")
    model.save_pretrained(tmp_path)
    tokenizer = tiny_tokenizer(tmp_path)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # as DistilBERT's tokenizers: no token types
    texts = sentences()
    encoded = encode_words(tokenizer, [text.split() for text in texts])
    settings = mixed_settings("token", model, encoded)  # about half the words leave at the first exit
    ner = pipeline("token-classification", model=str(tmp_path), tokenizer=tokenizer, **settings)
    assert isinstance(ner, EarlyExitTokenClassificationPipeline)
    seen = set()
    for text in texts:
        batch = encode_words(tokenizer, [text.split()])
        out = run(model, batch, **settings)
        results = ner(text, ignore_labels=[])
        assert [r["entity"] for r in results] == [TAGS[i] for i in out.logits[0, 1:-1].argmax(-1).tolist()]
        assert [r["exit_layer"] for r in results] == out.exit_layer[0, 1:-1].tolist()
        seen |= {r["exit_layer"] for r in results}
    assert len(seen) >= 2, seen
