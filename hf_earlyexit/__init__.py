"""hf_earlyexit: early-exit inference for BERT-style models in Hugging Face Transformers.

Importing the package registers every config and model with the Auto classes and the exit-aware pipelines.
"""

__version__ = "0.1.0.dev0"

from .hub import MissingTokenizerError
from .model_card import EarlyExitModelCardData, EvaluationRow, ModelCardCallback
from .models.bert import BertWithBypassExits, BypassBertConfig, EarlyExitSequenceClassifierOutput
from .models.bert.checkpoint_utils import DamagedCheckpointError
from .models.bert.exit_utils import ExitRule
from .pipelines import EarlyExitPipelineMixin, EarlyExitTextClassificationPipeline
from .registration import register


register()

__all__ = [
    "BertWithBypassExits",
    "BypassBertConfig",
    "DamagedCheckpointError",
    "EarlyExitModelCardData",
    "EarlyExitPipelineMixin",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTextClassificationPipeline",
    "EvaluationRow",
    "ExitRule",
    "MissingTokenizerError",
    "ModelCardCallback",
    "__version__",
]
