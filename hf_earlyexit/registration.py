"""The only place that touches transformers' Auto and pipeline registries. Idempotent: registering twice is a no-op."""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from .models.bert import BertForTokenEarlyExit, BertWithBypassExits, BypassBertConfig, TokenExitBertConfig


# (config class, model class, Auto model classes that must resolve the config to the model)
FAMILIES = [
    (BypassBertConfig, BertWithBypassExits, (AutoModel, AutoModelForSequenceClassification)),
    (TokenExitBertConfig, BertForTokenEarlyExit, (AutoModel, AutoModelForTokenClassification)),
]


def register() -> None:
    """Register every family's config and model with the Auto classes, and the exit-aware pipelines."""
    for config_class, model_class, auto_classes in FAMILIES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class in auto_classes:
            auto_class.register(config_class, model_class, exist_ok=True)
