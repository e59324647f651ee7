# Copyright 2026 The hf-earlyexit Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The built-in families and the only place that touches transformers' Auto and pipeline registries (through
[`~hf_earlyexit.families.register_family`]), and the registry of pipelines shipped with remote-code checkpoints.
Idempotent: registering twice is a no-op.

One `Family(...)` per family below states its classes, command-line name, task, recipes, card and how the command line
builds it; nothing else in the package names a family.
"""

from dataclasses import dataclass

from transformers import AutoConfig, BertConfig, PreTrainedModel
from transformers.pipelines import PIPELINE_REGISTRY

from .families import Family, FamilyCard, register_family
from .models.bert import (
    BertForCascadeClassification,
    BertForTokenEarlyExit,
    BertWithBypassExits,
    BypassBertConfig,
    CascadeBertConfig,
    TokenExitBertConfig,
)
from .models.bert.modeling_exit_heads import EarlyExitModelMixin
from .pipelines import EarlyExitTextClassificationPipeline, EarlyExitTokenClassificationPipeline
from .utils import TINY_BERT


# --------------------------------------------------------------------------------------------------------------------
# How the command line builds each family from a checkpoint (`hf-earlyexit train --family ...`)
# --------------------------------------------------------------------------------------------------------------------


def _is_checkpoint_of(source: str, config_class: type) -> bool:
    return AutoConfig.from_pretrained(source).model_type == config_class.model_type


def build_bypass(options: dict, source: str | None, num_labels: int) -> PreTrainedModel:
    overrides = {} if options.get("exit_layers") is None else {"exit_layers": options.get("exit_layers")}
    if not options.get("use_bypass", True):
        overrides["use_bypass"] = False
    if options.get("exit_pooling") is not None:
        overrides["exit_pooling"] = options.get("exit_pooling")
    if source is None:
        return BertWithBypassExits(BypassBertConfig(**TINY_BERT, num_labels=num_labels, **overrides))
    if overrides and _is_checkpoint_of(source, BypassBertConfig):
        raise ValueError(
            "`--exit_layers` builds new exits (as do `--use_bypass false` and `--exit_pooling`): give them with a "
            "plain BERT checkpoint, not a trained model."
        )
    return BertWithBypassExits.from_pretrained(source, num_labels=num_labels, **overrides)


def build_cascade(options: dict, source: str | None, num_labels: int) -> PreTrainedModel:
    if source is None:
        layers = options.get("member_layers") or [1, TINY_BERT["num_hidden_layers"]]
        members = [BertConfig(**{**TINY_BERT, "num_hidden_layers": k}) for k in layers]
        return BertForCascadeClassification(CascadeBertConfig(members=members, num_labels=num_labels))
    if _is_checkpoint_of(source, CascadeBertConfig):
        if options.get("member_layers") is not None:
            raise ValueError("`--member_layers` cuts a plain BERT checkpoint, not a trained cascade.")
        return BertForCascadeClassification.from_pretrained(source, num_labels=num_labels)
    layers = options.get("member_layers") or [1, AutoConfig.from_pretrained(source).num_hidden_layers]
    return BertForCascadeClassification.from_backbone(source, member_layers=layers, num_labels=num_labels)


def build_token(options: dict, source: str | None, num_labels: int) -> PreTrainedModel:
    overrides = {} if options.get("exit_layers") is None else {"exit_layers": options.get("exit_layers")}
    if source is None:
        return BertForTokenEarlyExit(TokenExitBertConfig(**TINY_BERT, num_labels=num_labels, **overrides))
    if overrides and _is_checkpoint_of(source, TokenExitBertConfig):
        raise ValueError(
            "`--exit_layers` builds new exits: give it with a plain BERT checkpoint, not a trained model."
        )
    return BertForTokenEarlyExit.from_pretrained(source, num_labels=num_labels, **overrides)


# --------------------------------------------------------------------------------------------------------------------
# The built-in families
# --------------------------------------------------------------------------------------------------------------------

BYPASS = Family(
    name="bypass",
    config_class=BypassBertConfig,
    model_class=BertWithBypassExits,
    task="sequence",
    recipes={
        "joint": "hf_earlyexit.losses:JointExitLoss.from_args",
        "two_stage": "hf_earlyexit.losses:TwoStageExitLoss.from_args",
        "alternating": "hf_earlyexit.losses:AlternatingExitLoss.from_args",
        "distillation": "hf_earlyexit.losses:DistillationExitLoss.from_args",
        "teacher_distillation": "hf_earlyexit.losses:MultiExitTeacherDistillationLoss.from_args",
    },
    staged_recipes=("two_stage", "distillation"),
    card=FamilyCard(
        title="Multi-exit BERT with block-wise bypasses (BADGE) and PABEE / DeeBERT / DGE exit criteria",
        description=(
            "A BERT encoder with an exit head after each chosen layer. At inference every example leaves at the first "
            "exit whose criterion fires (largest class probability, entropy, PABEE's patience or BADGE's "
            "divergence-based exit); the following layers then run only on the examples still in the batch, so the "
            "saving is real, per example, inside batches. The last layer answers every example that did not leave. "
            "BADGE's block-wise bypasses (small bottleneck modules that feed the exit heads of a block of layers) are "
            "implemented as hf_earlyexit's interpretation, since the paper's code is not public."
        ),
        citations=("badge", "pabee", "deebert"),
        citation_intro=(
            "The bypasses and the divergence-based exit come from BADGE; the patience criterion from PABEE; the "
            "entropy criterion from DeeBERT:"
        ),
        tags=("badge", "pabee", "deebert", "multi-exit"),
    ),
    build=build_bypass,
)

CASCADE = Family(
    name="cascade",
    config_class=CascadeBertConfig,
    model_class=BertForCascadeClassification,
    task="sequence",
    recipes={
        "joint": "hf_earlyexit.losses:JointCascadeLoss.from_args",
        "difficulty_aware": "hf_earlyexit.losses:DifficultyAwareCascadeLoss.from_args",
        "teacher_distillation": "hf_earlyexit.losses:TeacherDistillationLoss.from_args",
    },
    card=FamilyCard(
        title="CascadeBERT: a cascade of complete BERT models with difficulty-aware calibration",
        description=(
            "A cascade of complete BERT models of increasing size. An example is answered by the first model whose "
            "largest class probability passes its threshold; the next, larger model runs only on the examples left, "
            "inside the same batch. Training adds the difficulty-aware regularisation (DAR) that keeps small models' "
            "confidence calibrated to how hard each example is."
        ),
        citations=("cascadebert",),
        citation_intro="CascadeBERT (Li et al., Findings of EMNLP 2021):",
        tags=("cascadebert", "model-cascade"),
    ),
    build=build_cascade,
)

TOKEN = Family(
    name="token",
    config_class=TokenExitBertConfig,
    model_class=BertForTokenEarlyExit,
    task="token",
    recipes={
        "joint": "hf_earlyexit.losses:JointTokenExitLoss.from_args",
        "self_sampling": "hf_earlyexit.losses:SelfSamplingTokenLoss.from_args",
        "teacher_distillation": "hf_earlyexit.losses:TokenTeacherDistillationLoss.from_args",
    },
    card=FamilyCard(
        title="SENTEE / TOKEE: sentence- and token-level early exit for sequence labelling",
        description=(
            "A BERT encoder with a token-classification head after each layer. SENTEE lets a whole sentence leave "
            "once every word is certain enough; TOKEE lets each word leave on its own, once the uncertainty of the "
            "words in a window around it is below the threshold. A word that left is frozen: later layers compute "
            "queries and feed-forward blocks only for the words still active."
        ),
        citations=("sentee_tokee",),
        citation_intro="SENTEE and TOKEE (Li et al., ACL 2021):",
        pipeline_tag="token-classification",
        pipeline_task="token-classification",
        task_auto_class="AutoModelForTokenClassification",
        metric="f1",
        tags=("sentee", "tokee", "sequence-labeling"),
        exit_unit="token",
        example_input="George Washington went to Washington",
    ),
    build=build_token,
)

BUILTIN_FAMILIES = (BYPASS, CASCADE, TOKEN)

# task -> the exit-aware pipeline class that `pipeline(task, ...)` builds instead of the stock one. Each behaves like
# the stock class for models without early exit.
PIPELINES = {
    "text-classification": EarlyExitTextClassificationPipeline,
    "token-classification": EarlyExitTokenClassificationPipeline,
}


# task -> (pipeline class, Auto classes that load its models): shipped with remote-code checkpoints and declared in their
# `custom_pipelines`, so that `pipeline(task, model=..., trust_remote_code=True)` works without hf_earlyexit. The task
# names differ from the stock ones on purpose: transformers refuses a stock task name listed in `custom_pipelines`
# unless `trust_remote_code=True` is passed, which would break `pipeline("text-classification", ...)` for everyone.
REMOTE_CODE_PIPELINES = {
    "early-exit-text-classification": (EarlyExitTextClassificationPipeline, ("AutoModelForSequenceClassification",)),
    "early-exit-token-classification": (EarlyExitTokenClassificationPipeline, ("AutoModelForTokenClassification",)),
}


@dataclass(frozen=True)
class RemoteCodePipeline:
    """A pipeline class shipped with remote-code checkpoints and declared in their `config.custom_pipelines`.

    Args:
        task: The task name users pass to `pipeline(task, model=..., trust_remote_code=True)`.
        pipeline_class: The pipeline class; its module must import only torch, transformers and single-dot siblings
            (it is copied next to the modeling files).
        auto_classes: Names of the transformers Auto classes that load the model for this pipeline (`"pt"`); the
            pipeline is shipped with every model whose `hub_auto_classes` contains one of them.
        default: Optional `default` entry of the task (transformers' format).
        type: The pipeline's input type (`"text"`).
    """

    task: str
    pipeline_class: type
    auto_classes: tuple[str, ...]
    default: dict | None = None
    type: str = "text"


_REMOTE_CODE_PIPELINES: dict[str, RemoteCodePipeline] = {}


def register_remote_code_pipeline(
    task: str, pipeline_class: type, auto_classes: tuple[str, ...], default: dict | None = None, type: str = "text"
) -> None:
    """Ships `pipeline_class` with every remote-code checkpoint of a model loaded by one of `auto_classes`.

    Idempotent: registering a task again replaces its entry. `hf_earlyexit.pipelines` calls this for its exit-aware
    pipelines; their modules must then be shippable (see [`RemoteCodePipeline`]), which is checked at save time.
    """
    _REMOTE_CODE_PIPELINES[task] = RemoteCodePipeline(task, pipeline_class, tuple(auto_classes), default, type)


def unregister_remote_code_pipeline(task: str) -> None:
    _REMOTE_CODE_PIPELINES.pop(task, None)


def register() -> None:
    """Register the built-in families (Auto classes, recipes, cards, command line) and the exit-aware pipelines."""
    for builtin in BUILTIN_FAMILIES:
        register_family(builtin)
    for task, pipeline_class in PIPELINES.items():
        register_pipeline(task, pipeline_class)
    for task, (pipeline_class, auto_classes) in REMOTE_CODE_PIPELINES.items():
        register_remote_code_pipeline(task, pipeline_class, auto_classes)
    install_hub_publisher()


def register_pipeline(task: str, pipeline_class: type) -> None:
    """Make `pipeline(task, ...)` build `pipeline_class`, keeping the stock entry's model classes, default and type.

    `PIPELINE_REGISTRY.register_pipeline` is not used because it is meant for new tasks: on an existing one it warns
    that it overwrites it, and it marks the class as a custom pipeline, so that `pipe.save_pretrained` would write
    `custom_pipelines` into the config of every model saved through it (stock models included) and copy this
    package's code next to it. Replacing only the entry's `impl` (with a new dict, so the stock one is left intact)
    avoids both.
    """
    entry = PIPELINE_REGISTRY.supported_tasks[task]
    if entry["impl"] is not pipeline_class:
        PIPELINE_REGISTRY.supported_tasks[task] = {**entry, "impl": pipeline_class}


class HubPublisher:
    """The `publisher` of every early-exit model (see `EarlyExitModelMixin.publisher`): publishing through
    `hf_earlyexit.hub`, which is imported on first use (the model code itself never imports the package)."""

    def remote_code_pipelines(self, model):
        from .hub import remote_code_pipelines

        return remote_code_pipelines(model)

    def push_to_hub(self, model, repo_id, *args, **kwargs):
        from .hub import push_to_hub

        return push_to_hub(model, repo_id, *args, **kwargs)


def install_hub_publisher() -> None:
    """Makes `model.push_to_hub(...)` and `model.save_pretrained(..., remote_code=True)` of every family publish through
    `hf_earlyexit.hub` (our model card, the tokenizer and the exit-aware pipelines). Idempotent."""
    EarlyExitModelMixin.publisher = HubPublisher()
