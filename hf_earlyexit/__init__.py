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
"""hf_earlyexit: early-exit inference for the encoders fine-tuned in Hugging Face Transformers (BERT, RoBERTa,
XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2/-v3, ModernBERT).

Importing the package registers every config and model with the Auto classes and the exit-aware pipelines, and does
nothing else: the training, calibration, evaluation and Hub modules are imported on first use.
"""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

from .models.bert import (
    SUPPORTED_MODEL_TYPES,
    BertForCascadeClassification,
    BertForTokenEarlyExit,
    BertWithBypassExits,
    BypassBertConfig,
    BypassExitConfig,
    CascadeBertConfig,
    CascadeConfig,
    CascadeForSequenceClassification,
    CascadeSequenceClassifierOutput,
    EarlyExitSequenceClassifierOutput,
    EarlyExitTokenClassifierOutput,
    EncoderForTokenEarlyExit,
    EncoderWithBypassExits,
    TokenExitBertConfig,
    TokenExitConfig,
    TokenExitRule,
    encode_words,
)
from .models.bert.checkpoint_utils import DamagedCheckpointError
from .models.bert.exit_utils import ExitRule
from .pipelines import (
    EarlyExitPipelineMixin,
    EarlyExitTextClassificationPipeline,
    EarlyExitTokenClassificationPipeline,
)
from .registration import register


register()

# name -> submodule, imported on first access (the Trainer alone pulls in accelerate and datasets)
_LAZY = {
    "AlternatingExitLoss": "losses",
    "CalibrationResult": "calibration",
    "CascadeExitLoss": "losses",
    "DifficultyAwareCascadeLoss": "losses",
    "JointCascadeLoss": "losses",
    "difficulty_aware_ranking_loss": "losses",
    "DistillationExitLoss": "losses",
    "EarlyExitModelCardData": "model_card",
    "EarlyExitTrainer": "trainer",
    "EarlyExitTrainingArguments": "training_args",
    "EvaluationRow": "model_card",
    "ExitLoss": "losses",
    "JointExitLoss": "losses",
    "JointTokenExitLoss": "losses",
    "MissingTokenizerError": "hub",
    "ModelCardCallback": "model_card",
    "SelfSamplingTokenLoss": "losses",
    "TokenCalibrationResult": "calibration",
    "TwoStageExitLoss": "losses",
    "calibrate": "calibration",
    "calibrate_token": "calibration",
    "compile_layers": "acceleration",
    "quantize_layers": "acceleration",
    "register_exit_loss": "losses",
}

if TYPE_CHECKING:
    from .acceleration import compile_layers, quantize_layers
    from .calibration import CalibrationResult, TokenCalibrationResult, calibrate, calibrate_token
    from .hub import MissingTokenizerError
    from .losses import (
        AlternatingExitLoss,
        CascadeExitLoss,
        DifficultyAwareCascadeLoss,
        DistillationExitLoss,
        ExitLoss,
        JointCascadeLoss,
        JointExitLoss,
        JointTokenExitLoss,
        SelfSamplingTokenLoss,
        TwoStageExitLoss,
        difficulty_aware_ranking_loss,
        register_exit_loss,
    )
    from .model_card import EarlyExitModelCardData, EvaluationRow, ModelCardCallback
    from .trainer import EarlyExitTrainer
    from .training_args import EarlyExitTrainingArguments


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlternatingExitLoss",
    "BertForCascadeClassification",
    "BertForTokenEarlyExit",
    "BertWithBypassExits",
    "BypassBertConfig",
    "BypassExitConfig",
    "CalibrationResult",
    "CascadeBertConfig",
    "CascadeConfig",
    "CascadeExitLoss",
    "CascadeForSequenceClassification",
    "CascadeSequenceClassifierOutput",
    "DamagedCheckpointError",
    "DifficultyAwareCascadeLoss",
    "DistillationExitLoss",
    "EarlyExitModelCardData",
    "EarlyExitPipelineMixin",
    "EarlyExitSequenceClassifierOutput",
    "EarlyExitTextClassificationPipeline",
    "EarlyExitTokenClassificationPipeline",
    "EarlyExitTokenClassifierOutput",
    "EarlyExitTrainer",
    "EarlyExitTrainingArguments",
    "EncoderForTokenEarlyExit",
    "EncoderWithBypassExits",
    "EvaluationRow",
    "ExitLoss",
    "ExitRule",
    "JointCascadeLoss",
    "JointExitLoss",
    "JointTokenExitLoss",
    "MissingTokenizerError",
    "ModelCardCallback",
    "SUPPORTED_MODEL_TYPES",
    "SelfSamplingTokenLoss",
    "TokenCalibrationResult",
    "TokenExitBertConfig",
    "TokenExitConfig",
    "TokenExitRule",
    "TwoStageExitLoss",
    "__version__",
    "calibrate",
    "calibrate_token",
    "compile_layers",
    "difficulty_aware_ranking_loss",
    "encode_words",
    "quantize_layers",
    "register",
    "register_exit_loss",
]
