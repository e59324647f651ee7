"""Helpers for the Hub tests: the families under test, a Hugging Face cache written by hand, a fake `HfApi`.

Adding a family to every Hub test is one entry in `HUB_FAMILIES`.
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.test_modeling_bypass_bert import padded_inputs, tiny_model


@dataclass
class HubFamily:
    """A family as the Hub tests see it.

    Args:
        build: A fresh model in eval mode whose every module does something (no identity bypass).
        make_inputs: Model inputs (right padding, mixed lengths).
        task_auto_class: The transformers Auto class name of the family's task.
        pipeline_task: The standard pipeline task that serves the family, or `None`.
        remote_pipeline_task: The task of the pipeline shipped with remote-code checkpoints, or `None`.
        pipeline_kwargs: Exit settings passed to the pipelines in the tests.
        remote_code_modules: The Python files (stems) of a remote-code checkpoint.
        call_kwargs: Per-call settings whose outputs must survive a save and reload unchanged.
        compared_outputs: The output fields compared after a reload.
    """

    build: Callable
    make_inputs: Callable[[], dict]
    task_auto_class: str
    pipeline_task: str | None = "text-classification"
    remote_pipeline_task: str | None = "early-exit-text-classification"
    pipeline_kwargs: dict = field(default_factory=dict)
    remote_code_modules: frozenset[str] = frozenset()
    call_kwargs: list[dict] = field(default_factory=lambda: [{}])
    compared_outputs: tuple[str, ...] = ("logits", "exit_layer", "flops")


# the backbone layer and the encoder configs: shipped with every family, whichever encoder the model has
BACKBONE_MODULES = frozenset(
    {
        "backbone_base",
        "backbone_bert_like",
        "backbone_deberta",
        "backbone_modernbert",
        "backbones",
        "configuration_encoder",
    }
)

HUB_FAMILIES = [
    pytest.param(
        HubFamily(
            build=lambda: tiny_model(num_labels=3),
            make_inputs=lambda: padded_inputs(batch_size=6),
            task_auto_class="AutoModelForSequenceClassification",
            call_kwargs=[{}, {"exit_threshold": [0.4, 0.4, 0.4, 0.4]}, {"early_exit": False}],
            pipeline_kwargs={"exit_threshold": 0.4},
            remote_code_modules=BACKBONE_MODULES
            | frozenset(
                {
                    "active_batch",
                    "checkpoint_utils",
                    "configuration_early_exit_bert",
                    "exit_forward",
                    "exit_utils",
                    "forward_checks",
                    "modeling_bypass_bert",
                    "modeling_exit_heads",
                    "pipelines",
                    "token_exit_utils",  # imported by the configuration module, which holds every family's config
                }
            ),
        ),
        id="bypass",
    ),
    pytest.param(
        HubFamily(
            build=lambda: _tiny_cascade(num_labels=3),
            make_inputs=lambda: padded_inputs(batch_size=6),
            task_auto_class="AutoModelForSequenceClassification",
            call_kwargs=[{}, {"exit_threshold": [0.4, 0.4]}, {"early_exit": False}],
            compared_outputs=("logits", "exit_stage", "exit_layer", "flops"),
            pipeline_kwargs={"exit_threshold": 0.4},
            remote_code_modules=BACKBONE_MODULES
            | frozenset(
                {
                    "active_batch",
                    "cascade_inputs",
                    "cascade_members",
                    "checkpoint_utils",
                    "configuration_early_exit_bert",
                    "exit_forward",
                    "exit_utils",
                    "forward_checks",
                    "modeling_cascade_bert",
                    "modeling_exit_heads",
                    "pipelines",
                    "token_exit_utils",  # imported by the configuration module, which holds every family's config
                }
            ),
        ),
        id="cascade",
    ),
    pytest.param(
        HubFamily(
            build=lambda: _tiny_token_model(),
            make_inputs=lambda: _token_inputs(batch_size=6),
            task_auto_class="AutoModelForTokenClassification",
            pipeline_task="token-classification",
            remote_pipeline_task="early-exit-token-classification",
            call_kwargs=[{}, {"exit_threshold": 0.45, "window_size": 3}, {"early_exit": False}],
            pipeline_kwargs={"exit_threshold": 0.45, "window_size": 3, "ignore_labels": []},
            remote_code_modules=BACKBONE_MODULES
            | frozenset(
                {
                    "active_batch",
                    "checkpoint_utils",
                    "configuration_early_exit_bert",
                    "exit_forward",
                    "exit_utils",
                    "forward_checks",
                    "modeling_exit_heads",
                    "modeling_token_exit_bert",
                    "pipelines",
                    "token_exit_utils",
                }
            ),
        ),
        id="token",
    ),
]


def _tiny_token_model(**kwargs):
    from tests.test_modeling_token_exit_bert import tiny_model

    return tiny_model(**kwargs)


def _token_inputs(**kwargs):
    from tests.test_modeling_token_exit_bert import token_inputs

    return token_inputs(**kwargs)


def _tiny_cascade(**kwargs):
    from tests.test_modeling_cascade_bert import tiny_cascade

    return tiny_cascade(**kwargs)


def outputs_of(model, family: HubFamily, inputs: dict) -> list[dict[str, torch.Tensor]]:
    """The compared outputs of `model` for each of the family's per-call settings."""
    results = []
    with torch.no_grad():
        for kwargs in family.call_kwargs:
            out = model(**inputs, **kwargs)
            results.append({name: getattr(out, name) for name in family.compared_outputs})
    return results


def assert_same_outputs(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------------------------------------------------
# A Hugging Face cache written as the Hub client writes it
# --------------------------------------------------------------------------------------------------------------------


def _blob_name(path: Path, data: bytes) -> str:
    if path.suffix == ".safetensors":  # LFS files are stored under their sha256
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # the git blob id


def write_hub_cache(folder, cache_dir, repo_id: str, branch: str = "main") -> Path:
    """Puts the files of `folder` into `cache_dir` as huggingface_hub lays out a downloaded model repository:
    `models--org--name/blobs/<hash>`, `snapshots/<commit>/<file>` (relative symlinks to the blobs) and
    `refs/<branch>` (the commit). Returns the snapshot folder."""
    folder, repo_dir = Path(folder), Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    blobs = {}
    for path in files:
        data = path.read_bytes()
        blob = repo_dir / "blobs" / _blob_name(path, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        blobs[path.relative_to(folder).as_posix()] = blob
    commit = hashlib.sha1("".join(f"{name} {blob.name}\n" for name, blob in blobs.items()).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    for name, blob in blobs.items():
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / branch).write_text(commit)
    return snapshot


# --------------------------------------------------------------------------------------------------------------------
# HfApi at its boundary
# --------------------------------------------------------------------------------------------------------------------


class FakeHfApi:
    """Stands in for `huggingface_hub.HfApi`: records every call, reads every committed file at commit time."""

    instances: list["FakeHfApi"] = []

    def __init__(self, token=None, **kwargs):
        self.token = token
        self.calls: list[tuple[str, dict]] = []
        self.committed: dict[str, bytes] = {}
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
        for operation in operations:
            source = operation.path_or_fileobj
            data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
            assert operation.path_in_repo not in self.committed, f"{operation.path_in_repo} sent twice"
            self.committed[operation.path_in_repo] = data
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0", pr_url=None)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def call(self, name: str) -> dict:
        (kwargs,) = [kwargs for call_name, kwargs in self.calls if call_name == name]
        return kwargs
