"""hf_earlyexit: early-exit inference for BERT-style models in Hugging Face Transformers.

Importing the package registers every config and model with the Auto classes and the exit-aware pipelines.
"""

__version__ = "0.1.0.dev0"

from .hub import MissingTokenizerError
from .losses import (
    AlternatingExitLoss,
    CascadeJointLoss,
    DistillationExitLoss,
    ExitLoss,
    JointExitLoss,
    TwoStageExitLoss,
    register_exit_loss,
)
from .model_card import EarlyExitModelCardData, EvaluationRow, ModelCardCallback
from .models.bert import (
    BertForCascadeClassification,
    BertWithBypassExits,
    BypassBertConfig,
    CascadeBertConfig,
    CascadeSequenceClassifierOutput,
    EarlyExitSequenceClassifierOutput,
)
from .models.bert.checkpoint_utils import DamagedCheckpointError
from .models.bert.exit_utils import ExitRule
from .pipelines import EarlyExitPipelineMixin, EarlyExitTextClassificationPipeline
from .registration import register
from .trainer import EarlyExitTrainer
from .training_args import EarlyExitTrainingArguments


register()

__all__ = [
    "AlternatingExitLoss",
    "BertForCascadeClassification",
    "BertWithBypassExits",
    "BypassBertConfig",
    "CascadeBertConfig",
    "CascadeJointLoss",
    "CascadeSequenceClassifierOutput",
    "DamagedCheckpointError",
    "DistillationExitLoss",
    "EarlyExitModelCardData",
    "EarlyExitPipelineMixin",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTextClassificationPipeline",
    "EarlyExitTrainer",
    "EarlyExitTrainingArguments",
    "EvaluationRow",
    "ExitLoss",
    "ExitRule",
    "JointExitLoss",
    "MissingTokenizerError",
    "ModelCardCallback",
    "TwoStageExitLoss",
    "__version__",
    "register_exit_loss",
]
