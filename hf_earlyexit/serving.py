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
"""Serving early-exit models over HTTP with [Ray Serve](https://docs.ray.io/en/latest/serve/): dynamic batching
across requests with per-request exit settings, on one machine or a Ray cluster.

Requests that arrive together are batched by `serve.batch` and share one forward pass even when they ask for different
thresholds: the models take one threshold per example (`exit_threshold` as a `(batch,)` tensor), and every example
leaves the batch on its own, so the answer an input gets never depends on what it was batched with. Requests that ask
for different criteria (or other settings than the threshold) share the batch but run in one forward pass per
setting.

The HTTP API follows the Hugging Face inference conventions:

- `POST /predict` with `{"inputs": "text" | ["text", ...] | [["text", "pair"], ...], "parameters": {...}}`: per input,
  `label`, `score`, `exit_layer` (and `exit_stage` for a cascade), or for a token model the entities with their exit
  layers (the token-classification pipeline's output). A single string gives a single result, a list a list.
  `parameters` are the exit settings of the model's family (`exit_threshold`, `exit_criterion`, ... ; see `GET /info`)
  and, for token models, `aggregation_strategy`. Overlong inputs are truncated as the pipeline truncates them and the
  response says which (`"truncated": [indices]`).
- `GET /health`, `GET /info` (family, exit settings and calibration from the config, labels, limits), `GET /metrics`
  (Prometheus text format: requests, errors, latency, batch sizes, exit layers, FLOPs spent and saved; per replica).

Bad requests get a 4xx and a JSON body `{"error": ..., "field": ...}` naming the problem; the server keeps serving.

Install with `pip install "hf-earlyexit[serve]"`. Start with `hf-earlyexit serve --model PATH_OR_ID`, or build the
application with [`build_app`] (or the builder [`app_builder`] for `serve run` / `serve deploy` config files).
"""

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


SERVE_EXTRA_MESSAGE = (
    'Serving needs Ray Serve, which hf_earlyexit installs as an extra: pip install "hf-earlyexit[serve]"'
)
# what a request may set besides the exit settings (those are the model's own: its pipeline's `model_exit_arguments`)
TOKEN_POSTPROCESS = ("aggregation_strategy",)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class RequestError(ValueError):
    """A request the server refuses: `status` is the HTTP status, `field` the part of the request at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.status = status
        self.field = field

    def to_dict(self) -> dict:
        return {"error": str(self), **({"field": self.field} if self.field else {})}


@dataclass
class Request:
    """One validated `/predict` request: its inputs, its exit settings and postprocessing settings."""

    inputs: list
    settings: dict = field(default_factory=dict)
    postprocess: dict = field(default_factory=dict)
    single: bool = False


class EarlyExitPredictor:
    """Runs batches of requests through an early-exit model with each request's own settings (no Ray needed).

    Args:
        model: A model path or Hub id, or a loaded early-exit model.
        tokenizer: Its tokenizer, or a path or Hub id to load it from (default: loaded from `model` when that is a path).
        defaults: Exit settings every request gets unless it gives its own.
        max_inputs: The most inputs one request may carry.
        max_characters: The longest input accepted, in characters (longer ones are refused with 413 rather than
            tokenized; inputs within it but beyond the model's positions are truncated).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        defaults: dict | None = None,
        max_inputs: int = 64,
        max_characters: int = 100_000,
    ):
        from transformers import AutoTokenizer, pipeline

        from . import registration  # noqa: F401  (the exit-aware pipelines)

        if isinstance(model, str) and tokenizer is None:
            tokenizer = model
        if isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if isinstance(model, str):
            model = _load_task_model(model)
        model.eval()
        self.model = model
        self.is_token = "word_ids" in _forward_parameters(model)
        task = "token-classification" if self.is_token else "text-classification"
        self.pipeline = pipeline(task, model=model, tokenizer=tokenizer)
        self.tokenizer = self.pipeline.tokenizer
        self.setting_names = self.pipeline.model_exit_arguments()
        self.postprocess_names = TOKEN_POSTPROCESS if self.is_token else ()
        self.max_inputs = max_inputs
        self.max_characters = max_characters
        self.defaults = {}
        self.defaults = self.check_settings(defaults or {}, source="defaults")
        self.metrics = ServingMetrics()
        if self.is_token:  # the token pipeline truncates at the tokenizer's limit
            limit = self.tokenizer.model_max_length
            self.max_tokens = limit if isinstance(limit, int) and 0 < limit < 10**9 else None
        else:
            self.max_tokens = self.pipeline._max_input_length()
        self._lock = threading.Lock()  # one forward at a time per replica (torch threads do the parallel work)

    # --- requests ---------------------------------------------------------------------------------------------------

    def parse(self, body: Any) -> Request:
        """Validate a `/predict` body (bytes, str or parsed JSON); raises [`RequestError`] naming what is wrong."""
        if isinstance(body, (bytes, bytearray)):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError as error:
                raise RequestError(f"The request body is not UTF-8 text: {error}.") from None
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except json.JSONDecodeError as error:
                raise RequestError(f"The request body is not valid JSON: {error}.") from None
        if not isinstance(body, dict):
            raise RequestError(f"The request body must be a JSON object with `inputs`, got {type(body).__name__}.")
        unknown = sorted(set(body) - {"inputs", "parameters"})
        if unknown:
            raise RequestError(f"Unknown request fields {unknown}; expected `inputs` and `parameters`.", unknown[0])
        if "inputs" not in body:
            raise RequestError("The request has no `inputs`.", "inputs")
        inputs, single = body["inputs"], False
        if isinstance(inputs, str):
            inputs, single = [inputs], True
        if not isinstance(inputs, list):
            raise RequestError(
                f"`inputs` must be a string, a list of strings or a list of [text, pair] lists, got "
                f"{type(inputs).__name__}.",
                "inputs",
            )
        if not inputs:
            raise RequestError("`inputs` is empty: give at least one text.", "inputs")
        if len(inputs) > self.max_inputs:
            raise RequestError(
                f"`inputs` has {len(inputs)} texts; this server takes at most {self.max_inputs} per request.",
                "inputs",
                status=413,
            )
        for i, item in enumerate(inputs):
            texts = item if isinstance(item, list) else [item]
            if isinstance(item, list) and (len(item) != 2 or self.is_token):
                raise RequestError(
                    f"`inputs[{i}]` must be a string{'' if self.is_token else ' or a [text, pair] list of two strings'}.",
                    f"inputs[{i}]",
                )
            for text in texts:
                if not isinstance(text, str):
                    raise RequestError(f"`inputs[{i}]` must be text, got {type(text).__name__}.", f"inputs[{i}]")
                if len(text) > self.max_characters:
                    raise RequestError(
                        f"`inputs[{i}]` has {len(text)} characters; this server takes at most {self.max_characters}.",
                        f"inputs[{i}]",
                        status=413,
                    )
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise RequestError(f"`parameters` must be a JSON object, got {type(parameters).__name__}.", "parameters")
        unknown = sorted(set(parameters) - set(self.setting_names) - set(self.postprocess_names))
        if unknown:
            raise RequestError(
                f"Unknown parameters {unknown}; this model takes {sorted([*self.setting_names, *self.postprocess_names])}.",
                f"parameters.{unknown[0]}",
            )
        settings = self.check_settings({k: v for k, v in parameters.items() if k in self.setting_names})
        postprocess = {k: v for k, v in parameters.items() if k in self.postprocess_names}
        if "aggregation_strategy" in postprocess:
            from transformers.pipelines.token_classification import AggregationStrategy

            choices = [strategy.value for strategy in AggregationStrategy]
            if postprocess["aggregation_strategy"] not in choices:
                raise RequestError(
                    f"`aggregation_strategy` must be one of {choices}, got {postprocess['aggregation_strategy']!r}.",
                    "parameters.aggregation_strategy",
                )
        return Request(
            inputs=[tuple(i) if isinstance(i, list) else i for i in inputs],
            settings=settings,
            postprocess=postprocess,
            single=single,
        )

    def check_settings(self, settings: dict, source: str = "parameters") -> dict:
        """Validate exit settings against the model's config (the rule it would build), with the defaults merged in;
        returns the merged settings."""
        merged = {**self.defaults, **settings}
        if not self.setting_names:  # a model without early exit (e.g. the plain baseline): nothing to set
            if merged:
                raise RequestError(f"This model has no exit settings; got {sorted(merged)}.", source)
            return merged
        if "early_exit" in merged and not isinstance(merged["early_exit"], bool):
            raise RequestError(
                f"`early_exit` must be true or false, got {merged['early_exit']!r}.", f"{source}.early_exit"
            )
        rule_settings = {k: v for k, v in merged.items() if k != "early_exit"}
        try:
            rule = self.model.config.exit_rule(**rule_settings)
        except (ValueError, TypeError) as error:
            name = next(iter(settings), None) if len(settings) == 1 else None
            raise RequestError(str(error), f"{source}.{name}" if name else source) from None
        if "exit_threshold" not in merged:
            merged["exit_threshold"] = self._effective_threshold(merged, rule)
        if merged["exit_threshold"] is None:
            del merged["exit_threshold"]
        return merged

    def _effective_threshold(self, settings: dict, rule):
        """The threshold a request without one runs with (its config's, or its criterion's default), made explicit so
        that requests relying on it batch with those that give one."""
        config = self.model.config
        if self.is_token:  # the config's threshold, spread over the exits by the schedule
            return config.exit_threshold
        criterion = settings.get("exit_criterion", config.exit_criterion)
        if criterion == config.exit_criterion and config.exit_threshold is not None:
            return config.exit_threshold
        thresholds = rule.thresholds  # the criterion's default, one value per exit (none for patience)
        if not thresholds:
            return None
        return thresholds[0] if len(set(thresholds)) == 1 else list(thresholds)[: config.num_exit_thresholds]

    # --- prediction -------------------------------------------------------------------------------------------------

    def predict(self, requests: list[Request]) -> list[dict]:
        """Answer a batch of requests: one forward pass per distinct setting other than a single threshold, every
        input of every request in it. Returns one response body per request."""
        started = time.perf_counter()
        items = [(r, i, text) for r, request in enumerate(requests) for i, text in enumerate(request.inputs)]
        groups: dict[str, list] = {}
        for item in items:
            groups.setdefault(_group_key(requests[item[0]].settings), []).append(item)
        results: dict[tuple[int, int], Any] = {}
        truncated: dict[int, list[int]] = {}
        with self._lock:
            for group in groups.values():
                self._run_group(requests, group, results, truncated)
        self.metrics.observe_batch(len(items), time.perf_counter() - started)
        responses = []
        for r, request in enumerate(requests):
            answers = [results[(r, i)] for i in range(len(request.inputs))]
            body = {"outputs": answers[0] if request.single else answers}
            if truncated.get(r):
                body["truncated"] = truncated[r]
            responses.append(body)
        return responses

    def _run_group(self, requests, group, results, truncated) -> None:
        import torch
        from transformers.pipelines.base import pad_collate_fn

        pipe = self.pipeline
        settings = dict(requests[group[0][0]].settings)
        thresholds = [requests[r].settings.get("exit_threshold") for r, _, _ in group]
        if thresholds and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds):
            # one scalar threshold per example: a single forward pass for the whole group
            settings["exit_threshold"] = torch.tensor(thresholds, dtype=torch.float64)
        model_inputs, chunk_owner, postprocess = [], [], []
        for index, (r, i, text) in enumerate(group):
            # the parameters a pipeline call would use: its defaults, and the request's postprocessing
            pre, _, post = pipe._sanitize_parameters(**requests[r].postprocess)
            pre, post = {**pipe._preprocess_params, **pre}, {**pipe._postprocess_params, **post}
            postprocess.append(post)
            if self.is_token:
                chunks = list(pipe.preprocess(text, **pre))
            else:
                pair = {"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else text
                chunks = [pipe.preprocess(pair, **pre)]
            if self._was_truncated(text, chunks):
                truncated.setdefault(r, []).append(i)
            model_inputs += chunks
            chunk_owner += [index] * len(chunks)
        batch = pad_collate_fn(self.tokenizer, None)(model_inputs)
        if isinstance(settings.get("exit_threshold"), torch.Tensor) and len(chunk_owner) != len(group):
            settings["exit_threshold"] = settings["exit_threshold"][torch.tensor(chunk_owner)]
        with torch.inference_mode():
            outputs = pipe._forward(batch, **settings)
        per_chunk = [_unbatch(outputs, k) for k in range(len(model_inputs))]
        self.metrics.observe_exits(self.model, batch, outputs)
        for index, (r, i, _) in enumerate(group):
            chunks = [chunk for chunk, owner in zip(per_chunk, chunk_owner) if owner == index]
            if self.is_token:  # the entities with their exit layers
                results[(r, i)] = pipe.postprocess(chunks, **postprocess[index])
            else:  # what `pipeline(text)` gives for one text: label, score and the exit fields
                results[(r, i)] = pipe.postprocess(chunks[0], **postprocess[index])

    def _was_truncated(self, text, chunks: list[dict]) -> bool:
        """Whether the pipeline's preprocessing cut `text` (the classification pipeline at the model's positions, the
        token one at the tokenizer's `model_max_length`). Only an input that fills the limit is tokenized again."""
        if self.max_tokens is None or chunks[-1]["input_ids"].shape[-1] < self.max_tokens:
            return False
        texts = list(text) if isinstance(text, tuple) else [text]
        encoded = self.tokenizer(*texts, truncation=False, add_special_tokens=True)
        return len(encoded["input_ids"]) > self.max_tokens

    # --- descriptions -----------------------------------------------------------------------------------------------

    def info(self) -> dict:
        config = self.model.config
        exit_fields = [
            "exit_criterion", "exit_threshold", "patience", "divergence", "exit_mode", "window_size",
            "threshold_schedule", "sentence_pooling", "exit_layers", "calibration",
        ]  # fmt: skip
        return {
            "model_type": config.model_type,
            "architecture": type(self.model).__name__,
            "task": "token-classification" if self.is_token else "text-classification",
            "labels": {int(k): v for k, v in config.id2label.items()},
            "exit_settings": {
                name: getattr(config, name) for name in exit_fields if getattr(config, name, None) is not None
            },
            "defaults": self.defaults,
            "parameters": [*self.setting_names, *self.postprocess_names],
            "max_inputs": self.max_inputs,
            "max_tokens": self.max_tokens,
        }


def _load_task_model(name_or_path: str):
    """A sequence or token classifier, early-exit or not, by what its config says it is."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from .families import family_of

    config = AutoConfig.from_pretrained(name_or_path)
    try:
        token = family_of(config).is_token
    except ValueError:  # not an early-exit family: a stock classifier
        token = any(name.endswith("ForTokenClassification") for name in config.architectures or [])
    auto_class = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    return auto_class.from_pretrained(name_or_path)


def _forward_parameters(model) -> dict:
    import inspect

    return dict(inspect.signature(model.forward).parameters)


def _group_key(settings: dict) -> str:
    """Requests whose settings differ only in a scalar threshold share a forward pass."""
    threshold = settings.get("exit_threshold")
    shared = {k: v for k, v in settings.items() if k != "exit_threshold"}
    if threshold is not None and not isinstance(threshold, (int, float)):
        shared["exit_threshold"] = threshold  # a list of thresholds: a pass of its own
    return json.dumps(shared, sort_keys=True, default=str)


def _unbatch(outputs: dict, index: int) -> dict:
    """Example `index` of a batched pipeline `_forward` output, as a batch of one (as transformers' pipelines do)."""
    import torch

    item = {}
    for key, value in outputs.items():
        if value is None:
            item[key] = None
        elif isinstance(value, torch.Tensor):
            item[key] = value[index].unsqueeze(0)
        else:
            item[key] = value[index]
    return item


class ServingMetrics:
    """Prometheus metrics of one replica (`prometheus_client`, a registry of its own)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("hf_earlyexit_requests", "Requests answered", ["status"], registry=self.registry)
        self.latency = Histogram(
            "hf_earlyexit_request_latency_seconds", "Request latency", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_size = Histogram(
            "hf_earlyexit_batch_inputs",
            "Inputs per served batch (the requests batched together; one forward pass per distinct setting)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.forward_passes = Counter("hf_earlyexit_forward_passes", "Forward passes run", registry=self.registry)
        self.batch_seconds = Histogram(
            "hf_earlyexit_batch_seconds", "Time of a batch", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.exit_layer = Histogram(
            "hf_earlyexit_exit_layer",
            "Encoder layers an input (a word, for token models) was computed with",
            buckets=tuple(range(1, 49)),
            registry=self.registry,
        )
        self.flops = Counter("hf_earlyexit_flops", "FLOPs spent", registry=self.registry)
        self.flops_saved = Counter(
            "hf_earlyexit_flops_saved",
            "FLOPs the full model would have spent beyond those spent",
            registry=self.registry,
        )

    def observe_request(self, status: int, seconds: float) -> None:
        self.requests.labels(status=str(status)).inc()
        self.latency.observe(seconds)

    def observe_batch(self, inputs: int, seconds: float) -> None:
        self.batch_size.observe(inputs)
        self.batch_seconds.observe(seconds)

    def observe_exits(self, model, batch: dict, outputs: dict) -> None:
        """One forward pass: its inputs' exit layers (words', for a tagger) and the FLOPs spent and saved."""
        self.forward_passes.inc()
        exit_layer = outputs.get("exit_layer")
        if exit_layer is not None:
            values = exit_layer[exit_layer > 0] if exit_layer.dim() > 1 else exit_layer
            for value in values.tolist():
                self.exit_layer.observe(value)
        spent = outputs.get("flops")
        if spent is not None and hasattr(model, "reference_flops"):
            reference = float(model.reference_flops(batch["attention_mask"].sum(-1)).sum())
            self.flops.inc(float(spent.sum()))
            self.flops_saved.inc(max(reference - float(spent.sum()), 0.0))

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --------------------------------------------------------------------------------------------------------------------
# The Ray Serve application
# --------------------------------------------------------------------------------------------------------------------


def _require_serve():
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ImportError(SERVE_EXTRA_MESSAGE) from None


def build_app(
    model: str,
    *,
    tokenizer: str | None = None,
    max_batch_size: int = 32,
    batch_wait_timeout_ms: float = 10.0,
    replicas: int = 1,
    max_inputs: int = 64,
    max_characters: int = 100_000,
    threads: int | None = None,
    **defaults,
):
    """The Ray Serve application serving `model` (a path or Hub id, loaded in every replica).

    Args:
        model: The early-exit checkpoint.
        tokenizer: Its tokenizer (a path or Hub id), for a checkpoint saved without one (default: the checkpoint's).
        max_batch_size: The most inputs... requests batched into one forward pass (`serve.batch`).
        batch_wait_timeout_ms: How long the first request of a batch waits for others.
        replicas: Replicas of the deployment (each loads the model; Ray spreads them over the cluster).
        max_inputs: The most inputs one request may carry (more: 413).
        max_characters: The longest input accepted, in characters (longer: 413).
        threads: torch threads per replica (default: torch's).
        defaults: Exit settings of every request that does not give its own (e.g. `exit_threshold=0.9`).

    Returns:
        A `ray.serve.Application`: `serve.run(app)` here, or `serve run` / `serve deploy` with [`app_builder`].
    """
    _require_serve()
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse, Response
    from ray import serve

    if not 1 <= max_batch_size or not batch_wait_timeout_ms >= 0 or not 1 <= replicas:
        raise ValueError(
            f"`max_batch_size` and `replicas` must be >= 1 and `batch_wait_timeout_ms` >= 0, got {max_batch_size}, "
            f"{replicas}, {batch_wait_timeout_ms}."
        )
    api = FastAPI(title="hf_earlyexit", description=__doc__.split("\n\n")[0])

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max(4 * max_batch_size, 16))
    @serve.ingress(api)
    class EarlyExitServer:
        def __init__(self):
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.predictor = EarlyExitPredictor(
                model, tokenizer=tokenizer, defaults=defaults, max_inputs=max_inputs, max_characters=max_characters
            )

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_ms / 1000)
        async def _predict(self, requests: list[Request]) -> list[dict]:
            return self.predictor.predict(requests)

        @api.post("/predict")
        async def predict(self, request: HTTPRequest):
            started = time.perf_counter()
            try:
                parsed = self.predictor.parse(await request.body())
            except RequestError as error:
                self.predictor.metrics.observe_request(error.status, time.perf_counter() - started)
                return JSONResponse(error.to_dict(), status_code=error.status)
            try:
                body = await self._predict(parsed)
            except Exception as error:  # a failure of this batch answers 500; the server keeps serving
                self.predictor.metrics.observe_request(500, time.perf_counter() - started)
                return JSONResponse({"error": f"{type(error).__name__}: {error}"}, status_code=500)
            self.predictor.metrics.observe_request(200, time.perf_counter() - started)
            return JSONResponse(body)

        @api.get("/health")
        async def health(self):
            return {"status": "ok"}

        @api.get("/info")
        async def info(self):
            return self.predictor.info()

        @api.get("/metrics")
        async def metrics(self):
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(self.predictor.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return EarlyExitServer.bind()


def app_builder(args: dict):
    """[`build_app`] from a dict of strings, for `serve run hf_earlyexit.serving:app_builder model=PATH ...` and the
    `import_path` of a `serve deploy` config file (`args:` holds the same keys)."""
    args = dict(args)
    if "model" not in args:
        raise ValueError("app_builder needs `model` (a checkpoint path or Hub id) in its arguments.")
    typed = {}
    for name, value in args.items():
        if name in (
            "max_batch_size",
            "replicas",
            "max_inputs",
            "max_characters",
            "threads",
            "patience",
            "window_size",
        ):
            typed[name] = int(value)
        elif name in ("batch_wait_timeout_ms",):
            typed[name] = float(value)
        elif name == "exit_threshold" and isinstance(value, str):
            typed[name] = json.loads(value)
        else:
            typed[name] = value
    return build_app(typed.pop("model"), **typed)


__all__ = ["EarlyExitPredictor", "Request", "RequestError", "ServingMetrics", "app_builder", "build_app"]
