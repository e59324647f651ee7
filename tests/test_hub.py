"""Sharing on the Hub: loading by repo id through a real cache, remote code, publishing in one commit, bad input."""

import hashlib
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, pipeline
from transformers.dynamic_module_utils import check_imports, get_imports
from transformers.utils.hub import PushToHubMixin

import hf_earlyexit
import hf_earlyexit.hub as hub
from hf_earlyexit.families import families
from hf_earlyexit.hub import MissingTokenizerError, register_remote_code_pipeline, save_for_hub
from hf_earlyexit.model_card import EarlyExitModelCardData, model_card_for
from hf_earlyexit.models.bert import checkpoint_utils, modeling_exit_heads
from hf_earlyexit.models.bert.checkpoint_utils import DamagedCheckpointError, safetensors_problem
from hf_earlyexit.models.bert.token_exit_utils import encode_words
from tests.hub_testing import (
    HUB_FAMILIES,
    FakeHfApi,
    HubFamily,
    assert_same_outputs,
    outputs_of,
    write_hub_cache,
)
from tests.utils import tiny_tokenizer


REPO_ID = "org/early-exit-tiny"
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
PIPELINE_TEXTS = ["a gem of a film", "the plot was a slow and boring mess", "fun"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache that every load of this test reads (offline is set by conftest)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    # huggingface_hub reads HF_HUB_CACHE once, at import; the loaders read this constant at call time
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    assert hub_constants.is_offline_mode()
    return cache


@pytest.fixture
def fake_api(monkeypatch):
    FakeHfApi.instances.clear()
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    yield FakeHfApi
    FakeHfApi.instances.clear()


def published_folder(family: HubFamily, tmp_path, remote_code=False):
    model = family.build()
    tokenizer = tiny_tokenizer(tmp_path)
    folder = tmp_path / "published"
    save_for_hub(model, folder, tokenizer=tokenizer, remote_code=remote_code)
    return model, tokenizer, folder


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Loading by repo id, through the cache, offline
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_load_by_repo_id_from_hub_cache(family, tmp_path, hub_cache):
    model, tokenizer, folder = published_folder(family, tmp_path)
    write_hub_cache(folder, hub_cache, REPO_ID)
    inputs = family.make_inputs()
    expected = outputs_of(model, family, inputs)

    config = AutoConfig.from_pretrained(REPO_ID)
    assert type(config) is type(model.config)
    assert config.name_or_path == REPO_ID
    for auto_class in (AutoModel, getattr(transformers, family.task_auto_class)):
        loaded = auto_class.from_pretrained(REPO_ID).eval()
        assert type(loaded) is type(model)
        assert_same_outputs(outputs_of(loaded, family, inputs), expected)
    # the family's own class goes through EarlyExitModelMixin.from_pretrained, which reads the config by id too
    loaded = type(model).from_pretrained(REPO_ID, num_labels=model.config.num_labels).eval()
    assert_same_outputs(outputs_of(loaded, family, inputs), expected)
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        type(model).from_pretrained(REPO_ID, num_labels=model.config.num_labels + 1)


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_load_a_branch_by_revision_from_hub_cache(family, tmp_path, hub_cache):
    main_model, tokenizer, folder = published_folder(family, tmp_path)
    write_hub_cache(folder, hub_cache, REPO_ID)
    branch_model = family.build()
    with torch.no_grad():  # other weights than main's, whatever seed the builder uses
        for parameter in branch_model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    save_for_hub(branch_model, tmp_path / "branch", tokenizer=tokenizer)
    write_hub_cache(tmp_path / "branch", hub_cache, REPO_ID, branch="v2")
    inputs = family.make_inputs()
    task_class = getattr(transformers, family.task_auto_class)
    assert_same_outputs(
        outputs_of(task_class.from_pretrained(REPO_ID, revision="v2"), family, inputs),
        outputs_of(branch_model, family, inputs),
    )
    assert_same_outputs(
        outputs_of(task_class.from_pretrained(REPO_ID), family, inputs), outputs_of(main_model, family, inputs)
    )


@pytest.mark.parametrize("family", [f for f in HUB_FAMILIES if f.values[0].pipeline_task])
def test_pipeline_by_repo_id_from_hub_cache(family, tmp_path, hub_cache):
    model, tokenizer, folder = published_folder(family, tmp_path)
    write_hub_cache(folder, hub_cache, REPO_ID)
    texts = ["a gem of a film", "the plot was a slow and boring mess"]
    predictor = pipeline(family.pipeline_task, model=REPO_ID)
    assert type(predictor.model) is type(model)
    if family.pipeline_task == "token-classification":
        batch = encode_words(tokenizer, [text.split() for text in texts])
        with torch.no_grad():
            out = model(**batch)
        for row, results in enumerate(predictor(texts, ignore_labels=[])):
            real = batch["word_ids"][row] >= 0
            expected = [model.config.id2label[int(i)] for i in out.logits[row][real].argmax(-1)]
            assert [result["entity"] for result in results] == expected
            assert [result["exit_layer"] for result in results] == out.exit_layer[row][real].tolist()
        return
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    expected = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert [result["label"] for result in predictor(texts)] == expected


def test_repo_not_in_cache_offline_raises_the_hub_error(hub_cache):
    for load in (
        lambda: AutoConfig.from_pretrained("org/not-cached"),
        lambda: AutoModel.from_pretrained("org/not-cached"),
        # goes through EarlyExitModelMixin.from_pretrained's own config lookup first
        lambda: families()[0].model_class.from_pretrained("org/not-cached", num_labels=2),
        lambda: pipeline("text-classification", model="org/not-cached"),
    ):
        with pytest.raises(OSError) as error:
            load()
        # transformers' offline error, raised from huggingface_hub's own, exactly as for a plain BERT id
        assert isinstance(error.value.__cause__, LocalEntryNotFoundError)
        assert "couldn't find them in the cached files" in str(error.value)
    with pytest.raises(OSError) as plain:
        transformers.BertModel.from_pretrained("org/not-cached")
    assert type(plain.value) is type(error.value) and str(plain.value) == str(error.value)


# --------------------------------------------------------------------------------------------------------------------
# Remote code
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_remote_code_checkpoint_is_self_contained(family, tmp_path):
    model = family.build()
    model.save_pretrained(tmp_path, remote_code=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    model_module = type(model).__module__.split(".")[-1]
    config_ref = f"{type(model.config).__module__.split('.')[-1]}.{type(model.config).__name__}"
    assert saved["auto_map"] == {
        "AutoConfig": config_ref,
        **{name: f"{model_module}.{type(model).__name__}" for name in ("AutoModel", family.task_auto_class)},
    }
    assert set(model.hub_auto_classes) == {"AutoModel", family.task_auto_class}
    py_files = {path.stem for path in tmp_path.glob("*.py")}
    assert py_files == family.remote_code_modules
    assert model_module in py_files
    package = Path(hf_earlyexit.__file__).parent
    sources = {path.name: path for path in [*package.glob("*.py"), *package.glob("models/bert/*.py")]}
    for path in tmp_path.glob("*.py"):
        assert not any(name.split(".")[0] == "hf_earlyexit" for name in get_imports(path)), path
        check_imports(path)  # raises when a module imports a package that is not installed
        assert path.read_bytes() == sources[path.name].read_bytes()  # copies of the package's own modules
    if family.remote_pipeline_task:
        (entry,) = saved["custom_pipelines"].values()
        assert saved["custom_pipelines"] == {family.remote_pipeline_task: entry}
        assert entry["pt"] == [family.task_auto_class] and entry["impl"].split(".")[0] in py_files


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_remote_code_save_leaves_no_global_state(family, tmp_path):
    model = family.build()
    model.save_pretrained(tmp_path / "first")  # transformers itself records `architectures` and `dtype` on save
    config_before = model.config.to_dict()
    model.save_pretrained(tmp_path / "remote", remote_code=True)
    assert type(model)._auto_class is None and type(model.config)._auto_class is None
    assert model.config.to_dict() == config_before
    assert getattr(model.config, "auto_map", None) is None
    model.save_pretrained(tmp_path / "plain")
    assert not list((tmp_path / "plain").glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_remote_code_follows_the_checkpoint_on_save(family, tmp_path):
    model = family.build()
    model.save_pretrained(tmp_path / "remote", remote_code=True)
    # with hf_earlyexit installed the local class serves the checkpoint, and its config keeps the auto_map
    reloaded = AutoModel.from_pretrained(tmp_path / "remote")
    assert type(reloaded) is type(model) and reloaded.config.auto_map
    reloaded.save_pretrained(tmp_path / "again")
    assert {p.name for p in (tmp_path / "again").glob("*.py")} == {p.name for p in (tmp_path / "remote").glob("*.py")}
    assert json.loads((tmp_path / "again" / "config.json").read_text())["auto_map"] == reloaded.config.auto_map
    reloaded.save_pretrained(tmp_path / "plain", remote_code=False)
    assert not list((tmp_path / "plain").glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())


def _python_path_without_package() -> str:
    """site-packages only: neither the repository nor the editable install's finder (`python -S` skips `.pth`)."""
    paths = [*site.getsitepackages(), site.getusersitepackages()]
    return os.pathsep.join(p for p in paths if os.path.isdir(p))


def run_without_package(tmp_path, job: dict, timeout: int = 300, **env) -> dict:
    """Runs tests/remote_code_runner.py on `job` in a fresh `python -S` whose path has site-packages only (not the
    package), offline, from a folder outside the repository, with `env` on top (e.g. `HF_HUB_CACHE`). Returns the
    runner's report (the outputs it computed are in `job["output"]`)."""
    (tmp_path / "job.json").write_text(json.dumps(job))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    shutil.copy(Path(__file__).parent / "remote_code_runner.py", workdir)
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))
    }
    environment.update(
        PYTHONPATH=_python_path_without_package(),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        **env,
    )
    result = subprocess.run(
        [sys.executable, "-S", "remote_code_runner.py", str(tmp_path / "job.json")],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (report_line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(report_line.removeprefix("REPORT "))
    assert report["hf_earlyexit_importable"] is False
    assert report["loaded_hf_earlyexit_modules"] == []
    return report


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_remote_code_loads_without_hf_earlyexit(family, tmp_path):
    model = family.build()
    tokenizer = tiny_tokenizer(tmp_path)
    local = tmp_path / "checkpoint"
    save_for_hub(model, local, tokenizer=tokenizer, remote_code=True)
    cache = tmp_path / "hub-cache"
    write_hub_cache(local, cache, REPO_ID)
    inputs = family.make_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    auto_classes = ["AutoModel", family.task_auto_class]
    job = {
        "inputs": str(tmp_path / "inputs.pt"),
        "sources": [str(local), REPO_ID],
        "auto_classes": auto_classes,
        "call_kwargs": family.call_kwargs,
        "compared_outputs": list(family.compared_outputs),
        "output": str(tmp_path / "outputs.pt"),
        "pipeline": {"texts": PIPELINE_TEXTS, "kwargs": family.pipeline_kwargs}
        if family.remote_pipeline_task
        else None,
    }
    report = run_without_package(tmp_path, job, HF_HUB_CACHE=str(cache))
    for entry in report["models"]:
        assert entry["module"].startswith("transformers_modules."), entry
        assert entry.get("class", type(model).__name__) in (type(model).__name__, type(model.config).__name__)
    if family.remote_pipeline_task:
        # the shipped pipeline gives what the installed exit-aware pipeline gives, exit layers included
        local_pipeline = pipeline(family.pipeline_task, model=str(local), **family.pipeline_kwargs)
        expected_results = local_pipeline(PIPELINE_TEXTS)
        assert {entry.get("pipeline") for entry in report["models"]} - {None} == {type(local_pipeline).__name__}
        for source in job["sources"]:
            remote = report["pipeline_results"][source]
            assert _without_scores(remote) == _without_scores(expected_results)
            assert _scores(remote) == pytest.approx(_scores(expected_results), abs=1e-6)
    outputs = torch.load(tmp_path / "outputs.pt")
    expected = outputs_of(model, family, inputs)
    assert set(outputs) == {f"{source}|{auto}" for source in job["sources"] for auto in auto_classes}
    for produced in outputs.values():
        assert_same_outputs(produced, expected)


def _flat_results(results) -> list[dict]:
    """One dict per result (text classification) or per entity (token classification: a list per text)."""
    return [item for result in results for item in (result if isinstance(result, list) else [result])]


def _without_scores(results) -> list[dict]:
    return [{key: value for key, value in item.items() if key != "score"} for item in _flat_results(results)]


def _scores(results) -> list[float]:
    return [float(item["score"]) for item in _flat_results(results)]


@pytest.fixture
def pipeline_module(tmp_path, monkeypatch):
    """Two importable modules holding a Pipeline subclass: one shippable, one that imports hf_earlyexit."""
    package = tmp_path / "pipes"
    package.mkdir()
    body = textwrap.dedent(
        """
        from transformers import TextClassificationPipeline


        class ThresholdPipeline(TextClassificationPipeline):
            pass
        """
    )
    (package / "shippable_pipeline.py").write_text(body)
    (package / "unshippable_pipeline.py").write_text("import hf_earlyexit\n" + body)
    monkeypatch.syspath_prepend(str(package))
    import shippable_pipeline
    import unshippable_pipeline

    yield shippable_pipeline, unshippable_pipeline
    for task in ("threshold-classification", "other-task"):
        hub.unregister_remote_code_pipeline(task)
    sys.modules.pop("shippable_pipeline", None)
    sys.modules.pop("unshippable_pipeline", None)


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_remote_code_pipeline_extension_point(family, tmp_path, pipeline_module):
    shippable, unshippable = pipeline_module
    model = family.build()
    register_remote_code_pipeline("threshold-classification", shippable.ThresholdPipeline, (family.task_auto_class,))
    register_remote_code_pipeline("other-task", shippable.ThresholdPipeline, ("AutoModelForMaskedLM",))
    model.save_pretrained(tmp_path / "with-pipeline", remote_code=True)
    saved = json.loads((tmp_path / "with-pipeline" / "config.json").read_text())
    assert saved["custom_pipelines"]["threshold-classification"] == {
        "impl": "shippable_pipeline.ThresholdPipeline",
        "pt": [family.task_auto_class],
        "type": "text",
    }
    assert "other-task" not in saved["custom_pipelines"]  # its Auto class does not load this model
    assert (tmp_path / "with-pipeline" / "shippable_pipeline.py").is_file()
    # a plain save ships neither the pipeline nor its declaration
    model.save_pretrained(tmp_path / "plain")
    assert "custom_pipelines" not in json.loads((tmp_path / "plain" / "config.json").read_text())

    register_remote_code_pipeline("threshold-classification", unshippable.ThresholdPipeline, (family.task_auto_class,))
    with pytest.raises(ValueError, match="imports hf_earlyexit"):
        model.save_pretrained(tmp_path / "broken", remote_code=True)


# --------------------------------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("remote_code", [False, True])
@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_push_to_hub_sends_one_commit_with_our_card(family, remote_code, tmp_path, fake_api, monkeypatch):
    def no_transformers_card(*args, **kwargs):
        raise AssertionError("transformers' model card must not be used")

    monkeypatch.setattr(transformers.utils.hub, "create_and_tag_model_card", no_transformers_card)
    model = family.build()
    tokenizer = tiny_tokenizer(tmp_path)
    commit = model.push_to_hub(
        REPO_ID,
        tokenizer=tokenizer,
        remote_code=remote_code,
        private=True,
        revision="v1",
        commit_message="Add the tiny model",
        commit_description="a description",
        token="hf_test_token",
    )
    (api,) = fake_api.instances
    assert api.token == "hf_test_token"
    assert api.names() == ["create_repo", "create_branch", "create_commit"]
    assert api.call("create_repo") == {
        "repo_id": REPO_ID,
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
        "token": "hf_test_token",
    }
    assert api.call("create_branch")["branch"] == "v1"
    sent = api.call("create_commit")
    assert sent["revision"] == "v1" and sent["commit_message"] == "Add the tiny model"
    assert sent["commit_description"] == "a description"
    assert sent["token"] == "hf_test_token" and sent["create_pr"] is False
    assert commit.commit_url.startswith(f"https://huggingface.co/{REPO_ID}")

    code = {f"{name}.py" for name in family.remote_code_modules}
    expected_files = {"README.md", "config.json", "model.safetensors"} | TOKENIZER_FILES
    assert set(api.committed) == expected_files | (code if remote_code else set())

    # the card sent is exactly ours, rendered for this repository
    card_data = EarlyExitModelCardData(**{**model.model_card_data.to_dict(), "model_id": REPO_ID})
    remote_pipeline_task = family.remote_pipeline_task if remote_code else None
    card = model_card_for(model, card_data, remote_code=remote_code, remote_pipeline_task=remote_pipeline_task)
    assert api.committed["README.md"].decode() == str(card)
    assert f'from_pretrained("{REPO_ID}"' in api.committed["README.md"].decode()
    # the weights and config sent are the model's
    weights = tmp_path / "sent.safetensors"
    weights.write_bytes(api.committed["model.safetensors"])
    state = load_file(weights)
    assert state.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    config = json.loads(api.committed["config.json"])
    assert config["model_type"] == model.config.model_type
    assert ("auto_map" in config) is remote_code


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_push_to_hub_pull_request_and_default_message(family, tmp_path, fake_api):
    model = family.build()
    model.push_to_hub(REPO_ID, tokenizer=tiny_tokenizer(tmp_path), create_pr=True)
    (api,) = fake_api.instances
    assert api.names() == ["create_repo", "create_commit"]  # no branch without a revision
    sent = api.call("create_commit")
    assert sent["create_pr"] is True and sent["revision"] is None
    assert sent["commit_message"] == hub.DEFAULT_COMMIT_MESSAGE
    assert api.call("create_repo")["private"] is None


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_push_without_tokenizer_is_a_specific_error(family, fake_api):
    model = family.build()
    with pytest.raises(MissingTokenizerError, match="tokenizer="):
        model.push_to_hub(REPO_ID)
    assert fake_api.instances == []  # nothing was sent, no repository was created


def test_push_rejects_a_foreign_tokenizer_and_bad_repo_ids(tmp_path, fake_api):
    model = HUB_FAMILIES[0].values[0].build()
    tokenizer = tiny_tokenizer(tmp_path)
    tokenizer.add_tokens(["brandnewtoken"])
    with pytest.raises(ValueError, match="100 tokens but the model's embeddings have 99"):
        model.push_to_hub(REPO_ID, tokenizer=tokenizer)
    with pytest.raises(HFValidationError):
        model.push_to_hub("org/name/extra", tokenizer=tiny_tokenizer(tmp_path))
    assert fake_api.instances == []


def test_push_to_hub_without_hf_earlyexit_falls_back_to_transformers(tmp_path, monkeypatch):
    calls = []

    def transformers_push(self, repo_id, **kwargs):
        calls.append(("model", repo_id, kwargs))
        return "commit"

    class Tokenizer:
        def push_to_hub(self, repo_id, **kwargs):
            calls.append(("tokenizer", repo_id, kwargs))

    monkeypatch.setattr(modeling_exit_heads.EarlyExitModelMixin, "publisher", None)  # as a remote-code class has
    monkeypatch.setattr(PushToHubMixin, "push_to_hub", transformers_push)
    model = HUB_FAMILIES[0].values[0].build()
    result = model.push_to_hub(REPO_ID, tokenizer=Tokenizer(), remote_code=True, commit_message="m", private=True)
    assert result == "commit"
    assert calls == [
        ("model", REPO_ID, {"commit_message": "m", "private": True}),
        ("tokenizer", REPO_ID, {"commit_message": "m", "private": True}),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Bad input on load
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_config_from_a_newer_version_loads_with_a_warning(family, tmp_path, caplog):
    model = family.build()
    inputs = family.make_inputs()
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    saved["exit_calibration"] = {"temperature": [1.5, 1.2]}
    saved["future_flag"] = True
    path.write_text(json.dumps(saved))

    with caplog.at_level(logging.WARNING, logger=checkpoint_utils.logger.name):
        loaded = AutoModel.from_pretrained(tmp_path).eval()
    warnings = [r.getMessage() for r in caplog.records if r.name == checkpoint_utils.logger.name]
    assert len(warnings) == 1 and "['exit_calibration', 'future_flag']" in warnings[0]
    assert "newer version" in warnings[0]
    # loaded as transformers loads unknown keys: kept as attributes, saved again, no effect on the outputs
    assert loaded.config.exit_calibration == {"temperature": [1.5, 1.2]}
    assert_same_outputs(outputs_of(loaded, family, inputs), outputs_of(model, family, inputs))
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["future_flag"] is True


def test_transformers_itself_is_silent_about_unknown_config_fields(tmp_path, caplog):
    """What we compare with: transformers 5 keeps unknown keys of a config without a warning."""
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["future_flag"] = True
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.INFO):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.future_flag is True
    assert not [r for r in caplog.records if "future_flag" in r.getMessage() and r.levelno >= logging.WARNING]


def test_plain_bert_start_does_not_warn_about_its_legacy_fields(tmp_path, caplog):
    config_class, model_class = families()[0].config_class, families()[0].model_class
    plain = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    transformers.BertModel(plain).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.update(gradient_checkpointing=False, position_embedding_type="absolute")  # as old BERT checkpoints have
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger=checkpoint_utils.logger.name):
        model = model_class.from_pretrained(tmp_path, num_labels=2)
    assert type(model.config) is config_class
    assert not [r for r in caplog.records if r.name == checkpoint_utils.logger.name]


CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "cut_in_header": lambda data: data[:20],
    "empty": lambda data: b"",
    "not_safetensors": lambda data: b"<html>Bad gateway</html>" * 10,
    "bad_header_bytes": lambda data: data[:8] + b"\xff" * 40 + data[48:],
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_damaged_weights_name_the_file_and_leave_it_alone(family, corruption, tmp_path):
    model = family.build()
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    assert safetensors_problem(weights) is None
    weights.write_bytes(CORRUPTIONS[corruption](weights.read_bytes()))
    before = sha256(weights)
    for load in (AutoModel.from_pretrained, type(model).from_pretrained):
        with pytest.raises(DamagedCheckpointError) as error:
            load(tmp_path)
        assert str(weights) in str(error.value)
        assert isinstance(error.value, OSError)
    assert sha256(weights) == before


@pytest.mark.parametrize("family", HUB_FAMILIES)
def test_damaged_weights_in_the_hub_cache_name_the_cached_file(family, tmp_path, hub_cache):
    model, tokenizer, folder = published_folder(family, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    snapshot = write_hub_cache(folder, hub_cache, REPO_ID)
    before = sha256(snapshot / "model.safetensors")
    with pytest.raises(DamagedCheckpointError, match="truncated") as error:
        getattr(transformers, family.task_auto_class).from_pretrained(REPO_ID)
    assert str(snapshot / "model.safetensors") in str(error.value)
    assert sha256(snapshot / "model.safetensors") == before


def test_every_registered_family_is_covered_by_the_hub_tests():
    tested = {type(param.values[0].build()).__name__ for param in HUB_FAMILIES}
    assert tested == {family.model_class.__name__ for family in families()}
    for family in families():
        assert set(family.model_class.hub_auto_classes) == set(family.auto_classes)
