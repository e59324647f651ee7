"""The family registry: a fourth family registered with one `register_family` call trains, calibrates, evaluates,
runs in the pipeline, builds from the command line and gets its model card, with nothing else to change."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, pipeline

from hf_earlyexit import BertWithBypassExits, BypassBertConfig, EarlyExitTrainer
from hf_earlyexit.families import Family, FamilyCard, families, family, family_of, register_family, unregister_family
from tests.test_modeling_bypass_bert import padded_inputs
from tests.test_trainer import make_args, separable_dataset
from tests.utils import sst2_rows, tiny_config_kwargs, tiny_tokenizer


class TwoExitConfig(BypassBertConfig):
    """A toy family: a BERT with exactly two exits, after its second and its last layer."""

    model_type = "two-exit-toy"


class TwoExitModel(BertWithBypassExits):
    config_class = TwoExitConfig


def build_two_exit(options: dict, source: str | None, num_labels: int):
    assert source is None  # the test builds it tiny
    return TwoExitModel(TwoExitConfig(**tiny_config_kwargs(num_labels=num_labels, exit_layers=[2, 4])))


TWO_EXIT = Family(
    name="two-exit",
    config_class=TwoExitConfig,
    model_class=TwoExitModel,
    task="sequence",
    recipes={"joint": "hf_earlyexit.losses:JointExitLoss.from_args"},
    card=FamilyCard(
        title="Two exits",
        description="A BERT with an exit after its second layer and one after its last.",
        citations=("pabee",),
        citation_intro="The joint objective comes from PABEE:",
    ),
    build=build_two_exit,
)


@pytest.fixture
def two_exit_family():
    register_family(TWO_EXIT)
    yield TWO_EXIT
    unregister_family(TWO_EXIT.name)


def test_a_fourth_family_works_through_the_registry_alone(two_exit_family, tmp_path):
    from hf_earlyexit.calibration import calibrate
    from hf_earlyexit.evaluation import measure_points
    from hf_earlyexit.model_card import EarlyExitModelCardData, model_card_for

    assert family_of(TwoExitConfig()) is two_exit_family and family("two-exit") is two_exit_family
    assert isinstance(AutoConfig.for_model("two-exit-toy"), TwoExitConfig)

    # training: the trainer finds the family's recipe
    torch.manual_seed(0)
    model = two_exit_family.build({}, None, 2)
    train = separable_dataset(64, seed=0)
    trainer = EarlyExitTrainer(model, make_args(tmp_path, exit_recipe="joint", max_steps=8), train_dataset=train)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]

    # calibration and evaluation
    model.eval()
    batches = [dict(padded_inputs(batch_size=8, seed=s), labels=torch.tensor([0, 1] * 4)) for s in range(3)]
    result = calibrate(model, batches, target_speedup=1.2, apply=False)
    assert result.reached and result.expected_flops_speedup >= 1.2
    inputs = [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]
    (point,) = measure_points(model, [("max_prob", result.forward_kwargs())], inputs, torch.tensor([0, 1] * 12))
    assert point.flops_speedup == pytest.approx(result.expected_flops_speedup)

    # saving, the Auto classes, the pipeline with per-call exit settings
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer(tmp_path / "model").save_pretrained(tmp_path / "model")
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")) is TwoExitModel
    classifier = pipeline("text-classification", model=str(tmp_path / "model"))
    (answer,) = classifier(sst2_rows("dev", limit=1)[0][0][:40], exit_threshold=0.0)
    assert answer["exit_layer"] == 2

    # its model card
    card = model_card_for(model, EarlyExitModelCardData(model_id="org/two-exit")).content
    assert "Two exits" in card and "A BERT with an exit after its second layer" in card


def test_the_command_line_builds_and_trains_a_registered_family(two_exit_family, tmp_path):
    from tests.synthetic_data import train_main

    result = train_main(
        ["--family", "two-exit", "--tiny_model", "--synthetic_data", "--max_steps", "2", "--output_dir", str(tmp_path)]
        + ["--report_to", "none", "--use_cpu", "--per_device_train_batch_size", "8", "--max_train_samples", "16"]
        + ["--max_eval_samples", "8", "--disable_tqdm", "true"]
    )
    assert result["family"] == "two-exit"
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is TwoExitModel


def test_registering_is_idempotent_and_names_stay_unique(two_exit_family):
    register_family(TWO_EXIT)  # the same family again: nothing happens
    assert [f.name for f in families()].count("two-exit") == 1
    clash = Family(name="two-exit", config_class=BypassBertConfig, model_class=BertWithBypassExits, task="sequence")
    with pytest.raises(ValueError, match="already registered"):
        register_family(clash)
    with pytest.raises(ValueError, match="`task` must be one of"):
        Family(name="x", config_class=TwoExitConfig, model_class=TwoExitModel, task="images")
    with pytest.raises(ValueError, match="'gpt2' is not an early-exit family; registered: bypass"):
        family_of("gpt2")
