"""Serving (hf_earlyexit.serving): requests batched across clients with their own thresholds answer exactly as single
pipeline calls; bad requests get a 4xx naming the problem; the Ray Serve application end to end on 127.0.0.1."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import pipeline

from hf_earlyexit import BertWithBypassExits, BypassBertConfig
from hf_earlyexit.serving import EarlyExitPredictor, RequestError, app_builder
from tests.utils import sst2_rows, tiny_config_kwargs, tiny_tokenizer, weights_only


TEXTS = [sentence[:50] for sentence, _ in sst2_rows("dev", limit=12)]
THRESHOLDS = [0.5, 0.505, 0.51, 0.52, 0.55, 1.0]


def save_bypass(directory):
    torch.manual_seed(0)
    model = BertWithBypassExits(BypassBertConfig(**tiny_config_kwargs(num_labels=2))).eval()
    with torch.no_grad():  # bypasses that do something, so that every exit differs
        for bypass in model.bypasses:
            bypass.up.weight.normal_(0, 0.2)
    model.save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return str(directory)


def save_cascade(directory):
    from tests.test_modeling_cascade_bert import tiny_cascade

    torch.manual_seed(0)
    tiny_cascade(num_labels=2).save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return str(directory)


def save_tagger(directory):
    from tests.test_token_training import ner_model

    torch.manual_seed(0)
    ner_model().save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def bypass_path(tmp_path_factory):
    return save_bypass(tmp_path_factory.mktemp("bypass"))


def single_call(path, text, **settings):
    """What one pipeline call gives for one input, as `/predict` reports it."""
    pipe = pipeline("token-classification" if "tagger" in path else "text-classification", model=path)
    if isinstance(text, tuple):
        text = {"text": text[0], "text_pair": text[1]}
    result = pipe(text, **settings)
    # one text gives a list of one result (a pair, the result itself); a tagger gives the entities
    return result[0] if "tagger" not in path and isinstance(result, list) else result


def assert_same_answer(served: dict, expected: dict) -> None:
    assert {k: v for k, v in served.items() if k != "score"} == {k: v for k, v in expected.items() if k != "score"}
    assert served["score"] == pytest.approx(expected["score"], abs=1e-5)


@pytest.mark.parametrize("family", ["bypass", "cascade"])
def test_a_batch_of_requests_with_their_own_thresholds_answers_as_single_calls(tmp_path, family):
    path = (save_bypass if family == "bypass" else save_cascade)(tmp_path / family)
    predictor = EarlyExitPredictor(path)
    # six requests of one text with six thresholds, one of two texts with the server's default, one text pair
    requests = [
        predictor.parse({"inputs": t, "parameters": {"exit_threshold": th}}) for t, th in zip(TEXTS, THRESHOLDS)
    ]
    requests.append(predictor.parse({"inputs": TEXTS[6:8]}))
    requests.append(predictor.parse({"inputs": [[TEXTS[8], TEXTS[9]]], "parameters": {"exit_threshold": 0.52}}))
    responses = predictor.predict(requests)
    for text, threshold, response in zip(TEXTS, THRESHOLDS, responses):
        assert_same_answer(response["outputs"], single_call(path, text, exit_threshold=threshold))
    for text, answer in zip(TEXTS[6:8], responses[6]["outputs"]):
        assert_same_answer(answer, single_call(path, text))
    assert_same_answer(responses[7]["outputs"][0], single_call(path, (TEXTS[8], TEXTS[9]), exit_threshold=0.52))
    # the thresholds mattered: the answers did not all leave at the same layer
    layers = {response["outputs"]["exit_layer"] for response in responses[:6]}
    assert len(layers) > 1
    # one forward pass served the whole batch (every request runs with a single threshold), and the metrics saw
    # every input
    metrics = predictor.metrics.text().decode()
    assert "hf_earlyexit_forward_passes_total 1.0" in metrics and "hf_earlyexit_batch_inputs_sum 9.0" in metrics
    assert "hf_earlyexit_exit_layer_count 9.0" in metrics


def test_token_requests_answer_as_single_pipeline_calls(tmp_path):
    path = save_tagger(tmp_path / "tagger")
    predictor = EarlyExitPredictor(path)
    texts = ["the film was great and the story charming", "love hate movie", "a boring plot of a film"]
    settings = [{"exit_threshold": 0.0}, {"exit_threshold": 0.6, "aggregation_strategy": "simple"}, {}]
    responses = predictor.predict([predictor.parse({"inputs": t, "parameters": s}) for t, s in zip(texts, settings)])
    for text, setting, response in zip(texts, settings, responses):
        assert response["outputs"] == single_call(path, text, **setting)


def test_settings_other_than_a_threshold_run_in_passes_of_their_own(bypass_path):
    predictor = EarlyExitPredictor(bypass_path)
    requests = [
        predictor.parse({"inputs": TEXTS[0], "parameters": {"exit_criterion": "entropy", "exit_threshold": 0.69}}),
        predictor.parse({"inputs": TEXTS[0], "parameters": {"exit_threshold": 0.51}}),
        predictor.parse({"inputs": TEXTS[0], "parameters": {"early_exit": False}}),
    ]
    entropy, max_prob, full = (response["outputs"] for response in predictor.predict(requests))
    assert_same_answer(entropy, single_call(bypass_path, TEXTS[0], exit_criterion="entropy", exit_threshold=0.69))
    assert_same_answer(max_prob, single_call(bypass_path, TEXTS[0], exit_threshold=0.51))
    assert full["exit_layer"] == 4


def test_defaults_given_to_the_server_apply_unless_a_request_overrides_them(bypass_path):
    predictor = EarlyExitPredictor(bypass_path, defaults={"exit_threshold": 0.0})
    default, own = predictor.predict(
        [
            predictor.parse({"inputs": TEXTS[1]}),
            predictor.parse({"inputs": TEXTS[1], "parameters": {"exit_threshold": 1.0}}),
        ]
    )
    assert default["outputs"]["exit_layer"] == 1 and own["outputs"]["exit_layer"] == 4
    with pytest.raises(RequestError, match="probability-scale value in \\[0, 1\\]"):
        EarlyExitPredictor(bypass_path, defaults={"exit_threshold": 3.0})


def test_overlong_text_is_truncated_as_the_pipeline_truncates_and_reported(bypass_path):
    predictor = EarlyExitPredictor(bypass_path, max_characters=10_000)
    long_text = " ".join(["a great film"] * 100)
    (response,) = predictor.predict([predictor.parse({"inputs": [TEXTS[0], long_text]})])
    assert response["truncated"] == [1]
    assert_same_answer(response["outputs"][1], single_call(bypass_path, long_text))


@pytest.mark.parametrize(
    "body, status, message, field",
    [
        (b"{not json", 400, "not valid JSON", None),
        (b"\xff\xfe", 400, "not UTF-8", None),
        (b"[1, 2]", 400, "must be a JSON object", None),
        (b"{}", 400, "has no `inputs`", "inputs"),
        (b'{"inputs": [], "parameters": {}}', 400, "`inputs` is empty", "inputs"),
        (b'{"inputs": 12}', 400, "`inputs` must be a string", "inputs"),
        (b'{"inputs": ["ok", 3]}', 400, "`inputs\\[1\\]` must be text", "inputs[1]"),
        (b'{"inputs": [["a", "b", "c"]]}', 400, "\\[text, pair\\] list of two strings", "inputs[0]"),
        (b'{"inputs": "a", "extra": 1}', 400, "Unknown request fields \\['extra'\\]", "extra"),
        (b'{"inputs": "a", "parameters": [1]}', 400, "`parameters` must be a JSON object", "parameters"),
        (
            b'{"inputs": "a", "parameters": {"exit_treshold": 0.9}}',
            400,
            "Unknown parameters",
            "parameters.exit_treshold",
        ),
        (b'{"inputs": "a", "parameters": {"exit_threshold": 1.5}}', 400, "\\[0, 1\\]", "parameters.exit_threshold"),
        (b'{"inputs": "a", "parameters": {"exit_criterion": "vibes"}}', 400, "vibes", "parameters.exit_criterion"),
        (b'{"inputs": "a", "parameters": {"early_exit": "no"}}', 400, "true or false", "parameters.early_exit"),
        (json.dumps({"inputs": ["a"] * 9}).encode(), 413, "at most 8 per request", "inputs"),
        (json.dumps({"inputs": "a" * 501}).encode(), 413, "at most 500", "inputs[0]"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(bypass_path, body, status, message, field):
    predictor = EarlyExitPredictor(bypass_path, max_inputs=8, max_characters=500)
    with pytest.raises(RequestError, match=message) as error:
        predictor.parse(body)
    assert error.value.status == status and error.value.field == field
    assert error.value.to_dict()["error"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_ray_serve_application_end_to_end(bypass_path, monkeypatch):
    """The application on Ray Serve, on 127.0.0.1: concurrent requests with different thresholds each get the answer
    of a single pipeline call; bad requests get their 4xx and the server answers afterwards; /metrics counts them."""
    ray = pytest.importorskip("ray")
    from ray import serve

    requests_module = pytest.importorskip("requests")
    port = free_port()
    # Serve's controller gives the HTTP proxy 3 readiness checks of 5 s, then kills it; on a busy 2-core machine its
    # start (importing the web stack) takes longer. The Ray processes read the setting from the environment they inherit.
    monkeypatch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = app_builder(
            {"model": bypass_path, "max_batch_size": "16", "batch_wait_timeout_ms": "200", "max_inputs": "4"}
        )
        serve.run(app, name="hf_earlyexit_test", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert requests_module.get(f"{url}/health", timeout=60).json() == {"status": "ok"}
        info = requests_module.get(f"{url}/info", timeout=60).json()
        assert info["model_type"] == "bypass-bert" and "exit_threshold" in info["parameters"]

        def post(body):
            reply = requests_module.post(f"{url}/predict", data=body, timeout=120)
            return reply.status_code, reply.json()

        bodies = [json.dumps({"inputs": t, "parameters": {"exit_threshold": th}}) for t, th in zip(TEXTS, THRESHOLDS)]
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(post, bodies))
        for text, threshold, (status, body) in zip(TEXTS, THRESHOLDS, answers):
            assert status == 200
            assert_same_answer(body["outputs"], single_call(bypass_path, text, exit_threshold=threshold))
        assert post(b'{"inputs": "a", "parameters": {"exit_threshold": 7}}')[0] == 400
        assert post(b"{broken")[0] == 400
        assert post(json.dumps({"inputs": ["a"] * 5}).encode())[0] == 413
        status, body = post(json.dumps({"inputs": [TEXTS[0], TEXTS[1]]}))
        assert status == 200 and len(body["outputs"]) == 2
        metrics = requests_module.get(f"{url}/metrics", timeout=60).text
        assert 'hf_earlyexit_requests_total{status="200"} 7.0' in metrics
        assert 'hf_earlyexit_requests_total{status="400"} 2.0' in metrics
        assert 'hf_earlyexit_requests_total{status="413"} 1.0' in metrics
        # requests that arrived together shared forward passes: fewer batches than answered inputs
        batches = float(metrics.split("hf_earlyexit_batch_inputs_count ")[1].split()[0])
        assert batches < 7
    finally:
        serve.shutdown()
        ray.shutdown()


def test_a_model_without_early_exit_is_served_as_the_stock_pipeline_serves_it(tmp_path, bypass_path):
    from transformers import AutoModel

    from hf_earlyexit.evaluation import plain_baseline

    plain = plain_baseline(AutoModel.from_pretrained(bypass_path))
    plain.save_pretrained(tmp_path)
    tiny_tokenizer(tmp_path).save_pretrained(tmp_path)
    predictor = EarlyExitPredictor(str(tmp_path))
    (response,) = predictor.predict([predictor.parse({"inputs": TEXTS[0]})])
    assert_same_answer(response["outputs"], single_call(str(tmp_path), TEXTS[0]))
    assert "exit_layer" not in response["outputs"]
    with pytest.raises(RequestError, match="Unknown parameters \\['exit_threshold'\\]; this model takes \\[\\]"):
        predictor.parse({"inputs": "a", "parameters": {"exit_threshold": 0.5}})


def test_serve_command_documents_every_option(capsys):
    from hf_earlyexit.cli import main

    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model", "--host", "--port", "--max_batch_size", "--batch_wait_timeout_ms", "--replicas", "--max_inputs",
        "--max_characters", "--threads", "--exit_threshold", "--exit_criterion", "--patience", "--exit_mode",
        "--tokenizer",
    ):  # fmt: skip
        assert option in text
    assert "default: 127.0.0.1" in text


def test_serve_without_the_extra_names_it(monkeypatch, capsys, bypass_path):
    from hf_earlyexit import serving
    from hf_earlyexit.cli import main

    def missing():
        raise ImportError(serving.SERVE_EXTRA_MESSAGE)

    monkeypatch.setattr(serving, "_require_serve", missing)
    assert main(["serve", "--model", bypass_path]) == 2
    assert 'pip install "hf-earlyexit[serve]"' in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [(["--max_batch_size", "0"], "--max_batch_size must be >= 1"), (["--port", "70000"], "--port must be a port")],
)
def test_serve_refuses_bad_options(capsys, bypass_path, argv, message):
    from hf_earlyexit.cli import main

    assert main(["serve", "--model", bypass_path, *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_saved_without_its_tokenizer_is_served_with_the_one_given(tmp_path, bypass_path):
    stripped = str(weights_only(bypass_path, tmp_path / "weights-only"))
    predictor = EarlyExitPredictor(stripped, tokenizer=bypass_path)
    (response,) = predictor.predict([predictor.parse({"inputs": TEXTS[0]})])
    assert_same_answer(response["outputs"], single_call(bypass_path, TEXTS[0]))


def test_serve_refuses_a_checkpoint_without_a_tokenizer_before_starting(monkeypatch, capsys, tmp_path, bypass_path):
    from hf_earlyexit import serving
    from hf_earlyexit.cli import main

    monkeypatch.setattr(serving, "_require_serve", lambda: None)  # as if the serve extra were installed
    monkeypatch.setattr(serving, "build_app", lambda *args, **kwargs: pytest.fail("the server was built"))
    stripped = str(weights_only(bypass_path, tmp_path / "weights-only"))
    assert main(["serve", "--model", stripped]) == 2
    message = capsys.readouterr().err.splitlines()[-1]
    assert f"`--model` {stripped}: the folder holds no tokenizer" in message and "`--tokenizer`" in message
    assert main(["serve", "--model", stripped, "--tokenizer", str(tmp_path / "missing")]) == 2
    assert f"`--tokenizer` {tmp_path / 'missing'}: no such folder" in capsys.readouterr().err
