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
"""The early-exit families, one place per fact (peft-style registry).

A [`Family`] states everything the package knows about one family: its config and model classes, its command-line
name, its task (which Auto classes, pipeline and calibration it uses), its training recipes, what its model card says
and how the command line builds it from a checkpoint. [`register_family`] makes it known everywhere: the Auto classes,
the trainer's `exit_recipe`, calibration, evaluation, the pipelines, the cards and `hf-earlyexit train --family`. The
rest of the package asks the registry ([`family_of`]) or the model itself (its cost methods), never a model-type
string.

The three built-in families are registered when `hf_earlyexit` is imported.

Example (a fourth family; see `tests/test_families.py` for a complete one):

```python
>>> from hf_earlyexit.families import Family, FamilyCard, register_family

>>> register_family(
...     Family(
...         name="two-exit",
...         config_class=TwoExitConfig,
...         model_class=TwoExitModel,
...         task="sequence",
...         recipes={"joint": "hf_earlyexit.losses:JointExitLoss.from_args"},
...         card=FamilyCard(title="Two exits", description="...", citations=(), citation_intro=""),
...     )
... )
```
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


TASKS: dict[str, dict[str, Any]] = {
    # task -> the Auto classes that resolve the family's config to its model, and its pipeline task
    "sequence": {
        "auto_classes": ("AutoModel", "AutoModelForSequenceClassification"),
        "pipeline_task": "text-classification",
    },
    "token": {
        "auto_classes": ("AutoModel", "AutoModelForTokenClassification"),
        "pipeline_task": "token-classification",
    },
}


@dataclass(frozen=True)
class FamilyCard:
    """What a model card says about one early-exit family.

    Args:
        title: The method's name as written in the card.
        description: One paragraph: what the model computes at inference.
        citations: Keys of [`CITATIONS`], the method's papers first.
        citation_intro: The sentence above the BibTeX blocks.
        pipeline_tag: The Hub's pipeline tag.
        pipeline_task: The task to pass to `pipeline(...)` in the usage snippet.
        task_auto_class: The task Auto class of the usage snippet.
        metric: The metric of the speed/accuracy table (`accuracy` or `f1`).
        tags: Hub tags (besides `hf-earlyexit` and `early-exit`).
        threshold_argument: The per-call argument that sets the exit threshold.
        exit_output: The output field that says where each example (or token) left.
        exit_unit: What leaves: `example` or `token`.
        example_input: The input of the usage snippet.
    """

    title: str
    description: str
    citations: tuple[str, ...]
    citation_intro: str
    pipeline_tag: str = "text-classification"
    pipeline_task: str = "text-classification"
    task_auto_class: str = "AutoModelForSequenceClassification"
    metric: str = "accuracy"
    tags: tuple[str, ...] = ()
    threshold_argument: str = "exit_threshold"
    exit_output: str = "exit_layer"
    exit_unit: str = "example"
    example_input: str = "a gem of a film, funny and moving"


@dataclass(frozen=True)
class Family:
    """Everything the package knows about one early-exit family.

    Args:
        name: Its name on the command line (`hf-earlyexit train --family <name>`).
        config_class: Its config class (its `model_type` identifies the family's checkpoints).
        model_class: Its model class (also the `architectures` entry of its checkpoints, and the class name its
            remote-code copies share).
        task: `"sequence"` (text classification: calibrated on accuracy, `pipeline("text-classification")`) or
            `"token"` (sequence labelling: SENTEE/TOKEE calibration on entity F1, `pipeline("token-classification")`).
        recipes: `exit_recipe` name -> the loss factory `factory(model, training_args) -> ExitLoss`, given as the
            factory itself or as `"module:attribute"` (imported on first use, so that registering stays light).
        staged_recipes: The recipes that train in two stages (need `exit_stage`).
        card: What its model card says.
        build: `build(options, source, num_labels)`: the model the command line trains, from a checkpoint `source`
            (a plain BERT to start from, or a checkpoint of the family to continue; `None` for a tiny random model)
            and the command line's model `options` (`exit_layers`, `member_layers`, `use_bypass`, `exit_pooling`).
    """

    name: str
    config_class: type
    model_class: type
    task: str
    recipes: dict[str, Callable | str] = field(default_factory=dict)
    staged_recipes: tuple[str, ...] = ()
    card: FamilyCard | None = None
    build: Callable[[dict, str | None, int], Any] | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"Family {self.name!r}: `task` must be one of {sorted(TASKS)}, got {self.task!r}.")
        unknown = sorted(set(self.staged_recipes) - set(self.recipes))
        if unknown:
            raise ValueError(f"Family {self.name!r}: staged recipes {unknown} are not among its recipes.")

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def is_token(self) -> bool:
        return self.task == "token"

    @property
    def auto_classes(self) -> tuple[str, ...]:
        return TASKS[self.task]["auto_classes"]

    @property
    def pipeline_task(self) -> str:
        return TASKS[self.task]["pipeline_task"]

    def recipe(self, name: str) -> Callable:
        """The loss factory of recipe `name` (imported now when it was given as a path)."""
        factory = self.recipes[name]
        if isinstance(factory, str):
            module, _, attribute = factory.partition(":")
            factory = importlib.import_module(module)
            for part in attribute.split("."):
                factory = getattr(factory, part)
        return factory


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Make `family` known to the whole package and to transformers: its config and model with the Auto classes of
    its task, its recipes with the trainer, its card, its command-line name. Registering the same family again is a
    no-op; another family under a used name or model type is an error (unregister it first)."""
    import transformers
    from transformers import AutoConfig

    for other in _FAMILIES.values():
        if other != family and (other.name == family.name or other.model_type == family.model_type):
            raise ValueError(
                f"A family named {other.name!r} with model_type {other.model_type!r} is already registered; call "
                "`unregister_family` first to replace it."
            )
    AutoConfig.register(family.model_type, family.config_class, exist_ok=True)
    for auto_class in family.auto_classes:
        getattr(transformers, auto_class).register(family.config_class, family.model_class, exist_ok=True)
    _FAMILIES[family.name] = family


def unregister_family(name: str) -> None:
    """Forget a family (its Auto registrations stay: transformers has no way to remove them)."""
    _FAMILIES.pop(name, None)


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def family(name: str) -> Family:
    """The family of a command-line name."""
    if name not in _FAMILIES:
        raise ValueError(f"Unknown early-exit family {name!r}; registered: {sorted(_FAMILIES)}.")
    return _FAMILIES[name]


def family_of(obj) -> Family:
    """The family of a model, config, config dict or `model_type` string; a remote-code model (whose class is a copy
    of a registered one, with the same name) too."""
    if isinstance(obj, dict):
        model_type = obj.get("model_type")
    elif isinstance(obj, str):
        model_type = obj
    else:
        config = getattr(obj, "config", obj)
        model_type = getattr(config, "model_type", None)
    for candidate in _FAMILIES.values():
        if candidate.model_type == model_type:
            return candidate
    raise ValueError(
        f"{model_type!r} is not an early-exit family; registered: "
        + ", ".join(f"{f.name} ({f.model_type!r})" for f in _FAMILIES.values())
        + "."
    )


def family_of_class(class_name: str) -> Family:
    """The family whose model class has this name (the `architectures` entry of a checkpoint)."""
    for candidate in _FAMILIES.values():
        if candidate.model_class.__name__ == class_name:
            return candidate
    raise ValueError(
        f"{class_name!r} is not a registered early-exit model; known: "
        f"{[f.model_class.__name__ for f in _FAMILIES.values()]}."
    )


__all__ = [
    "Family",
    "FamilyCard",
    "TASKS",
    "families",
    "family",
    "family_of",
    "family_of_class",
    "register_family",
    "unregister_family",
]
