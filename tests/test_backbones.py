"""The backbone layer on tiny random models of every supported architecture: embedding plus the layer loop equals the
base model, compaction and active-query layers change nothing they should not, and the cost model matches the FLOPs
executed."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel
from transformers.dynamic_module_utils import check_imports, get_imports

from hf_earlyexit.models import backbones
from hf_earlyexit.models.backbones import SUPPORTED_MODEL_TYPES, backbone_for
from hf_earlyexit.models.bert.configuration_early_exit_bert import BypassBertConfig
from tests.utils import tiny_config_kwargs


SIZES = tiny_config_kwargs(num_hidden_layers=3)

# test id -> (model_type, config arguments); DeBERTa in its v3 form (shared keys, buckets, normalised relative
# embeddings, no absolute positions) and its v2-xlarge form (own position projections, convolution after layer 0)
ARCHITECTURES = {
    "bert": ("bert", SIZES),
    "roberta": ("roberta", SIZES),
    "xlm-roberta": ("xlm-roberta", SIZES),
    "electra": ("electra", {**SIZES, "embedding_size": 16}),
    "distilbert": (
        "distilbert",
        dict(vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=37, max_position_embeddings=64),
    ),
    "deberta-v3": (
        "deberta-v2",
        {
            **SIZES,
            "relative_attention": True,
            "pos_att_type": "p2c|c2p",
            "position_buckets": 4,
            "max_relative_positions": 16,
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
            "position_biased_input": False,
        },
    ),
    "deberta-v2-conv": (
        "deberta-v2",
        {
            **SIZES,
            "relative_attention": True,
            "pos_att_type": "p2c|c2p",
            "max_relative_positions": 6,
            "type_vocab_size": 2,
            "conv_kernel_size": 3,
        },
    ),
    "deberta-v2-absolute": ("deberta-v2", SIZES),  # the config's defaults: no relative attention
    # layers: global, local, global; local layers see 2 positions on each side
    "modernbert": (
        "modernbert",
        {
            **SIZES,
            "global_attn_every_n_layers": 2,
            "local_attention": 4,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "cls_token_id": 2,
            "sep_token_id": 3,
        },
    ),
}
WITH_TOKEN_TYPES = ("bert", "electra", "deberta-v2-conv")
DEBERTA = ("deberta-v3", "deberta-v2-conv", "deberta-v2-absolute")  # DeBERTa's own attention only
CASES = [
    (arch, impl) for arch in ARCHITECTURES for impl in ("eager", "sdpa") if not (arch in DEBERTA and impl == "sdpa")
]
LENGTHS = (7, 4, 9, 2)


def build(arch: str, attn_implementation: str = "eager"):
    model_type, kwargs = ARCHITECTURES[arch]
    config = AutoConfig.for_model(model_type, **kwargs)
    model = AutoModel.from_config(config, attn_implementation=attn_implementation).eval()
    return model, backbone_for(config)


def batch(arch: str, model, padding_side: str = "right", lengths=LENGTHS, hole: int | None = None):
    """Random ids of mixed lengths, padded with the model's pad token; `hole`: a column that is padding in every row."""
    seq_len = max(lengths)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if padding_side == "right":
            mask[row, :length] = 1
        else:
            mask[row, seq_len - length :] = 1
    if hole is not None:
        mask = torch.cat([mask[:, :hole], torch.zeros_like(mask[:, :1]), mask[:, hole:]], dim=1)
    pad = model.config.pad_token_id
    input_ids = torch.randint(5, model.config.vocab_size, mask.shape).masked_fill(mask == 0, pad)
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if arch in WITH_TOKEN_TYPES:
        inputs["token_type_ids"] = torch.randint(0, 2, mask.shape) * mask
    return inputs


def layer_states(model, backbone, inputs, context=None):
    """The states entering each layer and the last layer's output, from the backbone's loop."""
    hidden_states, _, embedded = backbone.embed(model, **inputs)
    context = context or embedded
    states = [hidden_states]
    for index in range(backbone.num_layers(model)):
        states.append(backbone.run_layer(model, index, states[-1], context))
    return states, context


def assert_close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("arch,impl", CASES)
@torch.no_grad()
def test_layer_loop_equals_base_model(arch, impl, padding_side):
    model, backbone = build(arch, impl)
    inputs = batch(arch, model, padding_side)
    states, _ = layer_states(model, backbone, inputs)
    expected = model(**inputs).last_hidden_state
    assert_close(backbone.finalize(model, states[-1]), expected)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@torch.no_grad()
def test_inputs_embeds_equal_base_model(arch):
    model, backbone = build(arch)
    inputs = batch(arch, model)
    inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
    states, _ = layer_states(model, backbone, inputs)
    assert_close(backbone.finalize(model, states[-1]), model(**inputs).last_hidden_state)


def run_compacted(model, backbone, inputs, drops: dict[int, int], start_columns=None):
    """The layer loop that, after layer `i` in `drops`, removes row `drops[i]` (of the current batch) and the columns
    left all padding; returns the final states and the original rows and columns they hold."""
    hidden_states, _, context = backbone.embed(model, **inputs)
    rows = torch.arange(hidden_states.shape[0])
    columns = torch.arange(hidden_states.shape[1])
    if start_columns is not None:
        keep = context.attention_mask.bool().any(dim=0)
        hidden_states, context, columns = hidden_states[:, keep], backbone.compact(context, None, keep), columns[keep]
    for index in range(backbone.num_layers(model)):
        hidden_states = backbone.run_layer(model, index, hidden_states, context)
        if index in drops:
            stay = torch.ones(len(rows), dtype=torch.bool)
            stay[drops[index]] = False
            keep = context.attention_mask[stay].bool().any(dim=0)
            hidden_states = hidden_states[stay][:, keep]
            context = backbone.compact(context, stay, keep)
            rows, columns = rows[stay], columns[keep]
    return hidden_states, rows, columns, context


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("arch,impl", CASES)
@torch.no_grad()
def test_compaction_keeps_states(arch, impl, padding_side):
    model, backbone = build(arch, impl)
    inputs = batch(arch, model, padding_side)
    expected = layer_states(model, backbone, inputs)[0][-1]
    # after layer 1 the longest sentence leaves (two columns go), after layer 2 the next longest (three more)
    actual, rows, columns, context = run_compacted(model, backbone, inputs, drops={0: 2, 1: 0})
    assert actual.shape[:2] == (2, 4)
    real = context.attention_mask.bool()
    assert_close(actual[real], expected[rows][:, columns][real])


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("arch,impl", CASES)
@torch.no_grad()
def test_compaction_across_a_gap_keeps_positions(arch, impl, padding_side):
    """A column that is padding in every row, between real tokens, dropped before layer 1: the tokens after it keep
    their positions (relative positions, rotary embeddings, ModernBERT's window, DeBERTa's convolution)."""
    model, backbone = build(arch, impl)
    inputs = batch(arch, model, padding_side, hole=3)
    expected = model(**inputs).last_hidden_state
    actual, rows, columns, context = run_compacted(model, backbone, inputs, drops={1: 2}, start_columns=True)
    assert not bool(
        torch.equal(columns, torch.arange(columns[0], columns[0] + len(columns)))
    )  # the gap is still there
    real = context.attention_mask.bool()
    assert_close(backbone.finalize(model, actual)[real], expected[rows][:, columns][real])


def random_active(attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    active = (torch.rand(attention_mask.shape, generator=generator) < 0.5) & attention_mask.bool()
    active[0] = False  # a row with no query at all
    return active


@pytest.mark.parametrize("arch,impl", CASES)
@torch.no_grad()
def test_active_layer_equals_full_layer_at_active_positions(arch, impl):
    model, backbone = build(arch, impl)
    inputs = batch(arch, model)
    states, context = layer_states(model, backbone, inputs)
    generator = torch.Generator().manual_seed(0)
    for index in range(backbone.num_layers(model)):
        active = random_active(context.attention_mask, generator)
        queries = backbone.active_queries(context, active)
        actual = backbone.run_layer_active(model, index, states[index], context, queries)
        assert_close(actual[active], states[index + 1][active])
        assert torch.equal(actual[~active], states[index][~active])
    # every real position active: the full layer at the real positions
    real = context.attention_mask.bool()
    actual = backbone.run_layer_active(model, 1, states[1], context, real)
    assert_close(actual[real], states[2][real])


@pytest.mark.parametrize("arch,impl", CASES)
@torch.no_grad()
def test_active_layer_on_a_compacted_batch(arch, impl):
    """Queries at their original columns after a gap was dropped: same as the full layer on the compacted batch."""
    model, backbone = build(arch, impl)
    inputs = batch(arch, model, "left", hole=4)
    hidden_states, _, context = backbone.embed(model, **inputs)
    keep = context.attention_mask.bool().any(dim=0)
    hidden_states, context = hidden_states[:, keep], backbone.compact(context, None, keep)
    generator = torch.Generator().manual_seed(1)
    for index in range(backbone.num_layers(model)):
        full = backbone.run_layer(model, index, hidden_states, context)
        active = random_active(context.attention_mask, generator)
        actual = backbone.run_layer_active(model, index, hidden_states, context, active)
        assert_close(actual[active], full[active])
        assert torch.equal(actual[~active], hidden_states[~active])
        hidden_states = full


def executed_flops(function, *args) -> int:
    # with gradients on: under no_grad, DeBERTa's slices of its relative embeddings are views that require grad but
    # have no grad_fn, on which FlopCounterMode's module tracker fails
    with FlopCounterMode(display=False) as counter:
        function(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_cost_model_matches_executed_flops(arch):
    # eager: FlopCounterMode prices its matmuls (not the CPU sdpa kernel)
    model, backbone = build(arch, "eager")
    config = model.config
    batch_size, seq_len, num_queries = 2, 9, 4
    inputs = batch(arch, model, lengths=(seq_len,) * batch_size)
    hidden_states, _, context = backbone.embed(model, **inputs)
    generator = torch.Generator().manual_seed(0)
    active = torch.stack([torch.randperm(seq_len, generator=generator) < num_queries for _ in range(batch_size)])
    for index in range(backbone.num_layers(model)):
        shared = backbone.batch_layer_flops(config, index)
        full = executed_flops(backbone.run_layer, model, index, hidden_states, context)
        predicted = batch_size * backbone.layer_flops(config, seq_len, layer_index=index) + shared
        # exact for these implementations (the family-level acceptance is 15 %): a missing term of a few % shows
        assert full == predicted, (index, full, predicted)
        packed = executed_flops(backbone.run_layer_active, model, index, hidden_states, context, active)
        predicted = batch_size * backbone.layer_flops(config, seq_len, num_queries, layer_index=index) + shared
        assert packed == predicted, (index, packed, predicted)
        assert packed < full


def test_backbone_for_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(ValueError, match="model_type 'gpt2'.*bert, roberta, xlm-roberta, electra, distilbert"):
        backbone_for(AutoConfig.for_model("gpt2"))
    with pytest.raises(ValueError, match="Supported model types"):
        backbone_for("t5")


def test_backbone_for_configs_models_and_family_configs():
    assert SUPPORTED_MODEL_TYPES == (
        "bert",
        "roberta",
        "xlm-roberta",
        "electra",
        "distilbert",
        "deberta-v2",
        "modernbert",
    )
    model, backbone = build("roberta")
    assert backbone_for(model) is backbone is backbone_for("roberta")
    assert backbone.model_types == ("roberta",)
    # a family config derived from BertConfig has its own model_type
    assert backbone_for(BypassBertConfig(**SIZES)).model_types == ("bert",)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_build_base_model_has_the_layers_and_no_pooler(arch):
    model_type, kwargs = ARCHITECTURES[arch]
    config = AutoConfig.for_model(model_type, **kwargs)
    backbone = backbone_for(config)
    base_model = backbone.build_base_model(config)
    assert type(base_model) is type(AutoModel.from_config(config))
    assert backbone.num_layers(base_model) == 3
    assert getattr(base_model, "pooler", None) is None
    assert (
        backbone.base_model_prefix
        == {
            "bert": "bert",
            "roberta": "roberta",
            "xlm-roberta": "roberta",
            "electra": "electra",
            "distilbert": "distilbert",
            "deberta-v2": "deberta",
            "modernbert": "model",
        }[model_type]
    )


def test_token_types_refused_where_the_architecture_has_none():
    for arch in ("distilbert", "modernbert"):
        model, backbone = build(arch)
        inputs = batch(arch, model)
        with pytest.raises(ValueError, match="no token type embeddings"):
            backbone.embed(model, **inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]))


def test_imports_only_torch_and_transformers():
    """It ships as remote code with checkpoints: no hf_earlyexit, no optional dependency (in every module of the
    package; `get_imports` leaves out the relative imports of siblings)."""
    imported = set()
    folder = Path(backbones.__file__).parent.parent / "bert"
    files = [folder / "backbones.py", *folder.glob("backbone_*.py")]
    assert len(files) == 5
    for file in files:
        imported |= set(get_imports(file))
        check_imports(file)
    assert imported - set(sys.stdlib_module_names) == {"torch", "transformers"}
