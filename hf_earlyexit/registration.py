"""The only place that touches transformers' Auto and pipeline registries, and the registry of pipelines shipped with
remote-code checkpoints. Idempotent: registering twice is a no-op."""

from dataclasses import dataclass

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification
from transformers.pipelines import PIPELINE_REGISTRY

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


# (config class, model class, Auto model classes that must resolve the config to the model)
FAMILIES = [
    (BypassBertConfig, BertWithBypassExits, (AutoModel, AutoModelForSequenceClassification)),
    (CascadeBertConfig, BertForCascadeClassification, (AutoModel, AutoModelForSequenceClassification)),
    (TokenExitBertConfig, BertForTokenEarlyExit, (AutoModel, AutoModelForTokenClassification)),
]

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
    """Register every family's config and model with the Auto classes, and the exit-aware pipelines."""
    for config_class, model_class, auto_classes in FAMILIES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class in auto_classes:
            auto_class.register(config_class, model_class, exist_ok=True)
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
