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
"""Model cards of early-exit checkpoints: a card-data dataclass that training and evaluation fill, rendered from
`templates/model_card.md` through huggingface_hub's `ModelCardData` (YAML metadata) and `ModelCard`.

Rendering never touches the network and is deterministic: the same inputs give the same bytes (no timestamps, fixed
number formats, sorted tables), so cards generated from committed results can be committed too.
"""

import dataclasses
import enum
import importlib.metadata
import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedConfig, TrainerCallback

from .citations import CITATIONS
from .families import FamilyCard
from .models.bert.checkpoint_utils import family_config_fields


TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
LIBRARY_TAG = "hf-earlyexit"
DEFAULT_BACKBONE_ID = "sentence-transformers/all-MiniLM-L6-v2"

# --------------------------------------------------------------------------------------------------------------------
# What a card says about each family: `Family.card` in the family registry (hf_earlyexit.families)
# --------------------------------------------------------------------------------------------------------------------

METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1", "macro_f1": "macro F1", "matthews_correlation": "MCC"}


def family_card(architecture: str) -> FamilyCard:
    """The [`FamilyCard`] of a model class name (an installed class or its remote-code copy: they share the name)."""
    from .families import family_of_class

    try:
        card = family_of_class(architecture).card
    except ValueError:
        card = None
    if card is None:
        raise ValueError(
            f"No model card information for {architecture!r}; known early-exit families: {_with_cards()}."
        )
    return card


def _with_cards() -> list[str]:
    from .families import families

    return sorted(f.model_class.__name__ for f in families() if f.card is not None)


# --------------------------------------------------------------------------------------------------------------------
# Card data
# --------------------------------------------------------------------------------------------------------------------


def _check_number(value, name: str, low: float = 0.0, high: float = math.inf, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bounds = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
        raise ValueError(f"`{name}` must be a number {bounds}, got {value!r}.")


@dataclass
class EvaluationRow:
    """One row of a card's speed/accuracy table: the model evaluated under one exit setting.

    Args:
        setting (`float`, `list[float]` or `str`):
            The exit threshold used (one value or one per exit), or a label such as `"full depth"`.
        metric (`float`):
            Accuracy or F1 as a fraction in [0, 1].
        layer_speedup (`float`):
            `L * N / sum of the layers each example ran`.
        flops_speedup (`float`):
            FLOPs of the full-depth model / FLOPs spent (analytic, per example's real length).
        latency_ms (`float`, *optional*):
            Measured wall-clock milliseconds per example.
        measured_speedup (`float`, *optional*):
            Wall-clock time of the plain transformers model of the same size / this model's.
    """

    setting: float | list[float] | str
    metric: float
    layer_speedup: float
    flops_speedup: float
    latency_ms: float | None = None
    measured_speedup: float | None = None

    @classmethod
    def from_sweep_point(cls, point, latency_key: str | None = None) -> "EvaluationRow":
        """A row from a benchmark's [`~hf_earlyexit.evaluation.SweepPoint`] (or its `to_dict()`).

        Args:
            point: The sweep point; its `settings` give the row's label (`exit_threshold` when it is the only one).
            latency_key (`str`, *optional*): Which entry of `latency_ms` / `wallclock_speedup` to show (e.g. one
                batch size); defaults to the only entry when there is exactly one.
        """
        data = point.to_dict() if hasattr(point, "to_dict") else dict(point)
        settings = data.get("settings") or {}
        if settings == {"early_exit": False}:
            setting = "full depth"
        elif set(settings) == {"exit_threshold"}:
            setting = settings["exit_threshold"]
        elif settings:
            setting = ", ".join(f"{k}={format_setting(v)}" for k, v in settings.items())
        else:
            setting = data.get("method", "default")
        latency, wallclock = data.get("latency_ms") or {}, data.get("wallclock_speedup") or {}
        if latency_key is None and len(latency) == 1:
            (latency_key,) = latency
        return cls(
            setting=setting,
            metric=data["metric"],
            layer_speedup=data["layer_speedup"],
            flops_speedup=data["flops_speedup"],
            latency_ms=latency.get(latency_key),
            measured_speedup=wallclock.get(latency_key),
        )

    def __post_init__(self):
        _check_number(self.metric, "metric", 0.0, 1.0)
        _check_number(self.layer_speedup, "layer_speedup", 0.0)
        _check_number(self.flops_speedup, "flops_speedup", 0.0)
        _check_number(self.latency_ms, "latency_ms", 0.0, optional=True)
        _check_number(self.measured_speedup, "measured_speedup", 0.0, optional=True)


_SKIPPED_ARGUMENT_WORDS = ("output_dir", "logging", "save", "hub", "report", "push", "run_name", "tqdm", "overwrite")
_ALWAYS_RECORDED_ARGUMENTS = ("learning_rate", "per_device_train_batch_size", "num_train_epochs", "seed")


def _plain(value):
    """A JSON-friendly copy of a hyperparameter value."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def framework_versions() -> dict[str, str]:
    """Versions of Python and of the packages a checkpoint depends on, for the card (installed ones only)."""
    versions = {"Python": platform.python_version()}
    for name in ("hf-earlyexit", "transformers", "torch", "huggingface_hub", "safetensors", "tokenizers", "datasets"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class EarlyExitModelCardData:
    """Everything a model card says beyond what the model and its config already know.

    The trainer ([`ModelCardCallback`]) fills the training hyperparameters, an evaluation or calibration run fills the
    speed/accuracy rows with [`~EarlyExitModelCardData.set_evaluation`]; the rest is given by the user or left out.
    A model carries its card data as `model.model_card_data` (see [`model_card_data_of`]).

    Args:
        model_id (`str`, *optional*): The Hub repository id, used in the usage snippet.
        model_name (`str`, *optional*): The card's title; defaults to the repository name.
        language, license (`str`, *optional*): Hub metadata.
        base_model (`str`, *optional*): The Hub id of the backbone the model was fine-tuned from.
        datasets (`list[str]`): Hub ids of the training data.
        dataset_name (`str`, *optional*): Human-readable name of the evaluation data.
        eval_split (`str`, *optional*): The evaluation split.
        metric (`str`, *optional*): The metric of the table; defaults to the family's (`accuracy`, `f1`).
        evaluation (`list[EvaluationRow]`): The speed/accuracy rows, in the order given.
        speed_setup (`dict`): How latency was measured (device, threads, batch size...), printed as given.
        evaluation_note (`str`, *optional*): A sentence printed after the description of the evaluation data.
        training_hyperparameters (`dict`): Printed sorted by name.
        framework_versions (`dict`): Filled from the environment by [`model_card_data_of`]; printed as given.
        tags (`list[str]`): Extra Hub tags.
    """

    model_id: str | None = None
    model_name: str | None = None
    language: str | list[str] | None = None
    license: str | None = None
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    dataset_name: str | None = None
    eval_split: str | None = None
    metric: str | None = None
    evaluation: list[EvaluationRow] = field(default_factory=list)
    speed_setup: dict[str, Any] = field(default_factory=dict)
    evaluation_note: str | None = None
    training_hyperparameters: dict[str, Any] = field(default_factory=dict)
    framework_versions: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.evaluation = [row if isinstance(row, EvaluationRow) else EvaluationRow(**row) for row in self.evaluation]
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]

    def set_evaluation(
        self,
        rows: list[EvaluationRow | dict],
        *,
        metric: str | None = None,
        dataset_name: str | None = None,
        eval_split: str | None = None,
        **speed_setup,
    ) -> None:
        """Replaces the speed/accuracy rows (dicts are read as [`EvaluationRow`] fields) and how they were measured.

        Example:

        ```python
        >>> card_data.set_evaluation(
        ...     [{"setting": 0.9, "metric": 0.912, "layer_speedup": 1.8, "flops_speedup": 1.7, "latency_ms": 2.1}],
        ...     metric="accuracy", dataset_name="SST-2", eval_split="validation", device="CPU", batch_size=1,
        ... )
        ```
        """
        self.evaluation = [row if isinstance(row, EvaluationRow) else EvaluationRow(**row) for row in rows]
        if metric is not None:
            self.metric = metric
        if dataset_name is not None:
            self.dataset_name = dataset_name
        if eval_split is not None:
            self.eval_split = eval_split
        self.speed_setup = {**self.speed_setup, **speed_setup}

    def set_calibration(self, result, *, max_rows: int = 8, dataset_name: str | None = None) -> None:
        """Fills the speed/accuracy table from a [`~hf_earlyexit.calibration.CalibrationResult`] or
        [`~hf_earlyexit.calibration.TokenCalibrationResult`] (or its `to_dict()`):
        the full model first, then up to `max_rows` points of its speed/accuracy frontier, evenly spread, fastest
        last. The numbers are those measured on the calibration set, which the card says."""
        data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        token = "exit_mode" in data  # a TokenCalibrationResult (SENTEE / TOKEE)
        frontier = sorted(data.get("frontier") or [], key=lambda point: point["flops_speedup"])
        if len(frontier) > max_rows:
            picks = sorted({round(i * (len(frontier) - 1) / (max_rows - 1)) for i in range(max_rows)})
            frontier = [frontier[i] for i in picks]
        rows = [EvaluationRow("full depth", data["full_metric" if token else "full_accuracy"], 1.0, 1.0)]
        for point in frontier:
            threshold = point.get("threshold")
            if token:
                setting = (
                    threshold if data["exit_mode"] == "sentence" else f"{threshold:g}, window {point['window_size']}"
                )
                metric = point["metric"]
            else:
                setting = threshold if threshold is not None else f"patience={point['patience']}"
                metric = point["accuracy"]
            rows.append(EvaluationRow(setting, metric, point["layer_speedup"], point["flops_speedup"]))
        if token:
            metric = {"f1": "f1", "token_accuracy": "accuracy"}.get(data["metric_name"], data["metric_name"])
            self.set_evaluation(rows, metric=metric, dataset_name=dataset_name, eval_split="calibration")
            checked = (
                "real early-exit runs" if data["verified"] == "live" else "the rule replayed on full-depth logits"
            )
            self.evaluation_note = (
                f"Exit mode `{data['exit_mode']}`, scored by `hf_earlyexit.calibration` on the {data['num_sentences']} "
                f"calibration sentences (the chosen setting and the rows from {checked}; speed-ups over words; no "
                "latency measured)."
            )
            return
        self.set_evaluation(rows, dataset_name=dataset_name, eval_split="calibration")
        self.evaluation_note = (
            f"Exit criterion `{data['criterion']}`, scored by `hf_earlyexit.calibration` on the "
            f"{data['num_examples']} calibration examples (no latency measured)."
        )

    def set_training_arguments(self, args) -> None:
        """Records the hyperparameters of a `TrainingArguments` (or a dict): the ones that differ from their default,
        plus learning rate, batch size, epochs and seed; logging, saving and Hub settings are left out."""
        if isinstance(args, dict):
            values = dict(args)
        else:
            values = {}
            for f in dataclasses.fields(args):
                if not f.init or any(word in f.name for word in _SKIPPED_ARGUMENT_WORDS):
                    continue
                value = getattr(args, f.name)
                default = f.default if f.default is not dataclasses.MISSING else None
                if f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                if f.name in _ALWAYS_RECORDED_ARGUMENTS or _plain(value) != _plain(default):
                    values[f.name] = value
        self.training_hyperparameters = {str(k): _plain(v) for k, v in values.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EarlyExitModelCardData":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown model card data fields {unknown}; expected some of {sorted(known)}.")
        return cls(**data)


def model_card_data_of(model) -> EarlyExitModelCardData:
    """The card data a model carries (`model.model_card_data`), created on first use with the framework versions of
    this environment."""
    card_data = getattr(model, "model_card_data", None)
    if card_data is None:
        card_data = EarlyExitModelCardData(framework_versions=framework_versions())
        model.model_card_data = card_data
    return card_data


class ModelCardCallback(TrainerCallback):
    """Records the training hyperparameters and framework versions into the trained model's card data."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            card_data = model_card_data_of(model)
            card_data.set_training_arguments(args)
            card_data.framework_versions = framework_versions()


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def format_number(value: float, digits: int = 2) -> str:
    """Fixed-point text of a number, identical on every platform (`-0.00` is written `0.00`)."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_setting(setting) -> str:
    if isinstance(setting, str):
        return setting
    if isinstance(setting, (list, tuple)):
        return "[" + ", ".join(format_setting(s) for s in setting) + "]"
    return f"{setting:g}"


def _value_text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)) or value is None or isinstance(value, bool):
        return json.dumps(_plain(value))
    return str(value)


# what the card shows of each cascade member's config (the rest is plain BERT and lives in config.json)
MEMBER_SUMMARY_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


def _setting_text(name: str, value) -> str:
    if name == "members" and isinstance(value, (list, tuple)):
        value = [{key: dict(member).get(key) for key in MEMBER_SUMMARY_KEYS} for member in value]
    return _value_text(value)


def _encoder_text(config: dict) -> str:
    """The card's encoder line: depth and width (and the architecture, when it is not BERT), or for a cascade those of
    each member."""
    members = config.get("members")
    if not members:
        encoder = (config.get("encoder_config") or {}).get("model_type")
        architecture = f"{encoder}, " if encoder else ""
        return f"{architecture}{config.get('num_hidden_layers')} layers, hidden size {config.get('hidden_size')}"
    depths = [member.get("num_hidden_layers", member.get("n_layers")) for member in members]  # DistilBERT: n_layers
    widths = [member.get("hidden_size", member.get("dim")) for member in members]
    plural = "s" if depths[-1] != 1 else ""
    if len(set(widths)) == 1:
        sizes = f"{' and '.join(map(str, depths))} layer{plural}, hidden size {widths[0]}"
    else:
        sizes = " and ".join(
            f"{depth} layer{'s' if depth != 1 else ''} of hidden size {width}" for depth, width in zip(depths, widths)
        )
    types = [member.get("model_type", "bert") for member in members]
    kinds = "BERT models" if set(types) == {"bert"} else f"models ({', '.join(types)})"
    tokenizers = ", each with its own tokenizer" if config.get("separate_tokenizers") else ""
    return f"a cascade of {len(members)} {kinds}, {sizes}{tokenizers}"


def _looks_like_repo_id(name: str | None) -> bool:
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not os.path.exists(name)


def _default_base_model(config: dict) -> str | None:
    name = config.get("_name_or_path") or None
    if not name:
        return None
    try:
        from .utils import default_backbone

        if os.path.realpath(name) == os.path.realpath(default_backbone()):
            return DEFAULT_BACKBONE_ID
    except FileNotFoundError:
        pass
    return name if _looks_like_repo_id(name) else None


def _config_class(architecture: str):
    from .families import family_of_class

    return family_of_class(architecture).config_class


def render_model_card(
    config: PreTrainedConfig | dict,
    card_data: EarlyExitModelCardData | None = None,
    *,
    architecture: str | None = None,
    num_parameters: int | None = None,
    remote_code: bool = False,
    remote_pipeline_task: str | None = None,
) -> ModelCard:
    """Renders the model card of an early-exit checkpoint.

    Args:
        config (`PreTrainedConfig` or `dict`):
            The model's config, or the dict saved in its `config.json`.
        card_data ([`EarlyExitModelCardData`], *optional*):
            What the card says beyond the config.
        architecture (`str`, *optional*):
            The model class name; defaults to `config.architectures[0]`.
        num_parameters (`int`, *optional*):
            Printed in the model details when given.
        remote_code (`bool`, *optional*, defaults to `False`):
            Whether the repository ships its modeling code (adds the `trust_remote_code` snippet and tag).
        remote_pipeline_task (`str`, *optional*):
            The task of the pipeline shipped with the code (its `custom_pipelines`), shown in the remote-code snippet.

    Returns:
        `huggingface_hub.ModelCard`: `str(card)` is the README, `card.data` its YAML metadata.
    """
    card_data = card_data if card_data is not None else EarlyExitModelCardData()
    config_dict = config.to_dict() if isinstance(config, PreTrainedConfig) else dict(config)
    architecture = architecture or (config_dict.get("architectures") or [None])[0]
    if architecture is None:
        raise ValueError("The config names no architecture: pass `architecture=` (the model class name).")
    family = family_card(architecture)
    config_class = type(config) if isinstance(config, PreTrainedConfig) else _config_class(architecture)
    metric = card_data.metric or family.metric
    metric_label = METRIC_LABELS.get(metric, metric)
    model_id = card_data.model_id or "path/to/model"
    model_name = card_data.model_name or (
        card_data.model_id.split("/")[-1] if card_data.model_id else f"{architecture} early-exit model"
    )
    base_model = card_data.base_model or _default_base_model(config_dict)
    id2label = config_dict.get("id2label") or {}
    labels = ", ".join(f"`{id2label[k]}`" for k in sorted(id2label, key=int)) if id2label else "not named"

    rows = [
        {
            "setting": format_setting(row.setting),
            "metric": format_number(100 * row.metric),
            "layer_speedup": format_number(row.layer_speedup),
            "flops_speedup": format_number(row.flops_speedup),
            "latency_ms": "-" if row.latency_ms is None else format_number(row.latency_ms),
            "measured_speedup": "-" if row.measured_speedup is None else format_number(row.measured_speedup),
        }
        for row in card_data.evaluation
    ]
    evaluation_description = " ".join(
        part
        for part in (
            f"the {card_data.eval_split} split of" if card_data.eval_split else None,
            card_data.dataset_name or (", ".join(card_data.datasets) if card_data.datasets else "held-out data"),
        )
        if part
    )
    numeric_settings = [row.setting for row in card_data.evaluation if isinstance(row.setting, (int, float))]
    threshold_call = f", {family.threshold_argument}={numeric_settings[0]:g}" if numeric_settings else ""

    tags = [LIBRARY_TAG, "early-exit", *family.tags, *card_data.tags]
    if remote_code:
        tags.append("custom_code")
    eval_results = None
    if card_data.evaluation and card_data.datasets:
        eval_results = [
            EvalResult(
                task_type=family.pipeline_tag,
                dataset_type=card_data.datasets[0],
                dataset_name=card_data.dataset_name or card_data.datasets[0],
                dataset_split=card_data.eval_split,
                metric_type=metric,
                metric_value=round(row.metric, 4),
                metric_name=f"{metric_label} (exit setting {format_setting(row.setting)})",
            )
            for row in card_data.evaluation
        ]
    metadata = ModelCardData(
        language=card_data.language,
        license=card_data.license,
        library_name="transformers",
        tags=tags,
        base_model=base_model,
        datasets=card_data.datasets or None,
        metrics=[metric],
        pipeline_tag=family.pipeline_tag,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
    )

    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    template = environment.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))
    content = template.render(
        card_data=metadata.to_yaml(),
        model_name=model_name,
        model_id=model_id,
        summary=_summary(family, architecture, base_model, card_data),
        family=family,
        architecture=architecture,
        base_model=f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "not recorded",
        encoder=_encoder_text(config_dict),
        num_parameters=f"{num_parameters:,}" if num_parameters else None,
        labels=labels,
        datasets=", ".join(card_data.datasets),
        language=card_data.language if isinstance(card_data.language, str) else ", ".join(card_data.language or []),
        license=card_data.license,
        exit_settings=[
            (name, _setting_text(name, config_dict.get(name))) for name in family_config_fields(config_class)
        ],
        evaluation_rows=rows,
        evaluation_description=evaluation_description,
        evaluation_note=card_data.evaluation_note,
        metric_label=metric_label,
        speed_setup=", ".join(f"{k}: {_value_text(v)}" for k, v in card_data.speed_setup.items()),
        threshold_call=threshold_call,
        remote_code=remote_code,
        remote_pipeline_task=remote_pipeline_task,
        hyperparameters=[(k, _value_text(v)) for k, v in sorted(card_data.training_hyperparameters.items())],
        framework_versions=list(card_data.framework_versions.items()),
        citations=[CITATIONS[key] for key in family.citations],
    )
    return ModelCard(content)


def _summary(family: FamilyCard, architecture: str, base_model: str | None, card_data: EarlyExitModelCardData) -> str:
    parts = [
        f"An early-exit `{architecture}` model trained with [hf_earlyexit](https://github.com/hf-earlyexit/hf_earlyexit)"
    ]
    if base_model:
        parts.append(f" from [{base_model}](https://huggingface.co/{base_model})")
    if card_data.datasets:
        parts.append(" on " + ", ".join(card_data.datasets))
    parts.append(
        f". Each {family.exit_unit} leaves the model as soon as its exit criterion fires, so easy inputs cost fewer "
        "layers; the table below shows what that buys in speed and costs in quality."
    )
    return "".join(parts)


def model_card_for(
    model,
    card_data: EarlyExitModelCardData | None = None,
    *,
    remote_code: bool = False,
    remote_pipeline_task: str | None = None,
) -> ModelCard:
    """[`render_model_card`] for a model instance (its config, class name and parameter count)."""
    return render_model_card(
        model.config,
        card_data if card_data is not None else model_card_data_of(model),
        architecture=type(model).__name__,
        num_parameters=model.num_parameters(),
        remote_code=remote_code,
        remote_pipeline_task=remote_pipeline_task,
    )


def benchmark_machine_fields(machine: dict, baseline: str, batch_size: int = 1) -> dict[str, Any]:
    """`speed_setup` and `framework_versions` of an [`EarlyExitModelCardData`] from a benchmark's
    [`~hf_earlyexit.evaluation.machine_info`] record, so that a card says where its latencies were measured."""
    return {
        "speed_setup": {
            "device": f"CPU ({machine['processor']})" if machine.get("device", "cpu") == "cpu" else machine["device"],
            "torch threads": machine["torch_threads"],
            "batch size": batch_size,
            "baseline": baseline,
        },
        "framework_versions": {
            "Python": machine["python"],
            "torch": machine["torch"],
            "transformers": machine["transformers"],
        },
    }


def card_results(
    config: PreTrainedConfig | dict,
    card_data: EarlyExitModelCardData,
    *,
    architecture: str | None = None,
    num_parameters: int | None = None,
    remote_code: bool = False,
    remote_pipeline_task: str | None = None,
) -> dict[str, Any]:
    """The input of [`write_model_card`] as a JSON-ready dict: what a benchmark saves beside its results so that the
    card of the model it trained can be written again, byte for byte, without the model."""
    config_dict = config.to_dict() if isinstance(config, PreTrainedConfig) else dict(config)
    results = {
        "architecture": architecture or (config_dict.get("architectures") or [None])[0],
        "config": config_dict,
        "card_data": card_data.to_dict(),
        "num_parameters": num_parameters,
        "remote_code": remote_code,
    }
    if remote_pipeline_task is not None:
        results["remote_pipeline_task"] = remote_pipeline_task
    return json.loads(json.dumps(results, sort_keys=True, default=_plain))


def write_model_card(results_path: str | os.PathLike, output_path: str | os.PathLike) -> str:
    """Writes a model card from a results JSON file, byte-for-byte reproducibly. Returns the card's text.

    The JSON holds `architecture` (model class name), `config` (the saved `config.json` dict), `card_data` (fields of
    [`EarlyExitModelCardData`], `evaluation` as a list of [`EvaluationRow`] dicts), and optionally `num_parameters`
    `remote_code` and `remote_pipeline_task`. Nothing is read from the environment: the framework versions come from the file too.
    """
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    missing = [key for key in ("architecture", "config", "card_data") if key not in results]
    if missing:
        raise ValueError(
            f"{results_path} lacks {missing}; a results file needs `architecture`, `config`, `card_data`."
        )
    card = render_model_card(
        results["config"],
        EarlyExitModelCardData.from_dict(results["card_data"]),
        architecture=results["architecture"],
        num_parameters=results.get("num_parameters"),
        remote_code=bool(results.get("remote_code", False)),
        remote_pipeline_task=results.get("remote_pipeline_task"),
    )
    text = str(card)
    Path(output_path).write_bytes(text.encode("utf-8"))
    return text


def main(argv: list[str] | None = None) -> dict:
    """`python -m hf_earlyexit.model_card RESULTS.json CARD.md`: [`write_model_card`] from the command line."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a model card from a results JSON file, reproducibly.")
    parser.add_argument("results", help="results JSON (architecture, config, card_data, ...)")
    parser.add_argument("output", help="where to write the card (README.md of a model repository)")
    args = parser.parse_args(argv)
    text = write_model_card(args.results, args.output)
    return {"output": args.output, "bytes": len(text.encode("utf-8"))}


if __name__ == "__main__":
    print(json.dumps(main()))


__all__ = [
    "CITATIONS",
    "benchmark_machine_fields",
    "card_results",
    "EarlyExitModelCardData",
    "EvaluationRow",
    "FamilyCard",
    "ModelCardCallback",
    "family_card",
    "framework_versions",
    "model_card_data_of",
    "model_card_for",
    "render_model_card",
    "write_model_card",
]
