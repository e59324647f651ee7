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
"""Load benchmark of the serving path: an early-exit model and the plain transformers model of its full size, each
served by the same Ray Serve application on this machine, under the same load.

A bounded client (a fixed number of requests per level and a time limit, loopback only) sends SST-2 dev sentences,
one per request, at fixed concurrencies (`--concurrency`, e.g. 1, 8 and 32 clients). Both applications run side by
side in one Ray instance and the levels alternate between them (early exit, plain, early exit, ... for `--rounds`
rounds), so drifts of the machine hit both alike. For each model and concurrency: throughput (requests per second)
and the 50th, 90th and 99th-percentile latency, plus the early-exit model's FLOPs speed-up on the same sentences at
the settings it serves with (its config's calibrated ones, unless `--exit_threshold` is given).

    python examples/benchmark_serving.py --model outputs/quickstart/cascade --output_dir benchmarks/results/serving

Writes `results.json` and `results.md` to `--output_dir`; `main(argv)` returns the JSON's content.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="An early-exit text-classification checkpoint (calibrated).")
    parser.add_argument("--data", default=str(REPO_ROOT / "data/sst2/dev.tsv"), help="Sentences to send (TSV).")
    parser.add_argument("--requests", type=int, default=256, help="Requests per model and concurrency level.")
    parser.add_argument(
        "--inputs_per_request", type=int, default=1, help="Sentences per request (more: less HTTP cost per sentence)."
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="Alternations of the two models per level.")
    parser.add_argument("--time_limit", type=float, default=300.0, help="Seconds per level and model at most.")
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_wait_timeout_ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each replica")
    parser.add_argument("--exit_threshold", type=float, default=None, help="Override the served threshold.")
    parser.add_argument("--output_dir", default="runs/benchmark_serving")
    args = parser.parse_args(argv)
    for name in ("requests", "rounds", "max_batch_size", "threads", "inputs_per_request"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency levels must be >= 1")
    return args


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def load(
    url: str, sentences: list[str], concurrency: int, count: int, time_limit: float, per_request: int = 1
) -> dict:
    """`count` requests of `per_request` sentences at `concurrency` clients (or until `time_limit`): latencies and
    throughput (requests per second)."""
    import aiohttp

    latencies, failures = [], 0
    queue = iter(range(count))
    deadline = time.perf_counter() + time_limit

    async def client(session):
        nonlocal failures
        for i in queue:
            if time.perf_counter() > deadline:
                return
            if per_request == 1:
                body = json.dumps({"inputs": sentences[i % len(sentences)]})
            else:
                body = json.dumps(
                    {"inputs": [sentences[(i * per_request + j) % len(sentences)] for j in range(per_request)]}
                )
            start = time.perf_counter()
            async with session.post(url, data=body) as reply:
                await reply.read()
                if reply.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=time_limit + 60)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def quantile(q):
        return 1000 * latencies[min(len(latencies) - 1, int(round(q * (len(latencies) - 1))))]

    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "throughput": len(latencies) / elapsed,
        "p50_ms": quantile(0.5),
        "p90_ms": quantile(0.9),
        "p99_ms": quantile(0.99),
    }


def sentences_sent(sentences: list[str], requests: int, per_request: int) -> list[str]:
    """The sentences the clients of one level send (as `load` picks them: in order, cycling), warm-up aside."""
    return [sentences[k % len(sentences)] for k in range(requests * per_request)]


def flops_speedup(model_path: str, sentences: list[str], settings: dict) -> float:
    """The early-exit model's FLOPs speed-up on the sentences, one at a time as the server's clients send them."""
    from transformers import AutoModel, AutoTokenizer

    from hf_earlyexit.evaluation import collect, make_batches

    model = AutoModel.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    from datasets import Dataset

    batches = make_batches(tokenizer, Dataset.from_dict({"text": sentences}), 32)
    spent = collect(model, batches, fields=("flops",), **settings)["flops"]
    lengths = torch.cat([batch["attention_mask"].sum(-1) for batch in batches])
    return float(model.reference_flops(lengths).sum()) / float(spent.sum())


def in_process_costs(model_path: str, sentences: list[str], threads: int, rounds: int = 5) -> dict:
    """The server's own work without HTTP: `EarlyExitPredictor.predict` on 32 one-sentence requests against the bare
    early-exit forward pass on the same 32 sentences (ms per sentence, medians), at the replicas' thread count."""
    from hf_earlyexit.serving import EarlyExitPredictor

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = EarlyExitPredictor(model_path)
        texts = sentences[:32]
        requests = [predictor.parse({"inputs": text}) for text in texts]
        batch = predictor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        predictor.predict(requests)
        serve_times, forward_times = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            predictor.predict(requests)
            serve_times.append(time.perf_counter() - start)
            with torch.inference_mode():
                start = time.perf_counter()
                predictor.model(**batch)
                forward_times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {
        "predict_ms_per_sentence": 1000 * statistics.median(serve_times) / len(texts),
        "forward_ms_per_sentence": 1000 * statistics.median(forward_times) / len(texts),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import ray
    from ray import serve
    from transformers import AutoModel, AutoTokenizer

    from hf_earlyexit.data import load_text_classification
    from hf_earlyexit.evaluation import machine_info, plain_baseline
    from hf_earlyexit.serving import build_app

    sentences = load_text_classification(args.data)["text"]
    settings = {} if args.exit_threshold is None else {"exit_threshold": args.exit_threshold}
    model = AutoModel.from_pretrained(args.model)
    plain_dir = Path(tempfile.mkdtemp(prefix="plain-"))
    plain_baseline(model).save_pretrained(plain_dir)
    AutoTokenizer.from_pretrained(args.model).save_pretrained(plain_dir)
    served_settings = {
        "exit_criterion": model.config.exit_criterion,
        "exit_threshold": settings.get("exit_threshold", model.config.exit_threshold),
    }
    # the FLOPs speed-up of the sentences the clients send (the first `requests * inputs_per_request`, cycling), which
    # the throughput ratio is compared with: that of the whole file can differ
    sent = sentences_sent(sentences, args.requests, args.inputs_per_request)
    speedup = flops_speedup(args.model, sent, settings)
    costs = in_process_costs(args.model, sentences, args.threads)
    del model

    port = free_port()
    common = dict(
        max_batch_size=args.max_batch_size, batch_wait_timeout_ms=args.batch_wait_timeout_ms, threads=args.threads
    )
    ray.init(include_dashboard=False, log_to_driver=False)
    results = {"early_exit": {}, "plain": {}}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args.model, **common, **settings), name="early_exit", route_prefix="/early_exit")
        serve.run(build_app(str(plain_dir), **common), name="plain", route_prefix="/plain")
        for concurrency in args.concurrency:
            runs = {"early_exit": [], "plain": []}
            for _ in range(args.rounds):
                for name in ("early_exit", "plain"):
                    url = f"http://127.0.0.1:{port}/{name}/predict"
                    per_request = args.inputs_per_request
                    asyncio.run(load(url, sentences, concurrency, 16, 60, per_request))  # warm-up
                    runs[name].append(
                        asyncio.run(load(url, sentences, concurrency, args.requests, args.time_limit, per_request))
                    )
                    print(f"{name} x{concurrency}: {runs[name][-1]['throughput']:.1f} req/s", file=sys.stderr)
            for name, measured in runs.items():
                results[name][str(concurrency)] = {
                    key: statistics.median(m[key] for m in measured)
                    for key in ("throughput", "p50_ms", "p90_ms", "p99_ms")
                } | {
                    "requests": sum(m["requests"] for m in measured),
                    "failures": sum(m["failures"] for m in measured),
                }
    finally:
        serve.shutdown()
        ray.shutdown()
    summary = {}
    for concurrency in map(str, args.concurrency):
        early, plain = results["early_exit"][concurrency], results["plain"][concurrency]
        ratio = early["throughput"] / plain["throughput"]
        summary[concurrency] = {
            "throughput_speedup": ratio,
            "of_flops_speedup": ratio / speedup,
            "p99_ratio": early["p99_ms"] / plain["p99_ms"],
        }
    output = {
        "command": "python examples/benchmark_serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": Path(args.model).name,
        "served_settings": served_settings,
        "flops_speedup": speedup,
        "in_process": costs,
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "data", "output_dir")},
        "sentences": len(sentences),
        "sentences_sent": len(sent),
        "results": results,
        "summary": summary,
        "machine": machine_info(),
        # Ray Serve's own settings from the environment (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1), which the servers
        # inherit
        "ray_serve_environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith("RAY_SERVE_")},
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(output, indent=1) + "\n")
    (output_dir / "results.md").write_text(render(output) + "\n")
    print(render(output))
    return output


def render(output: dict) -> str:
    lines = [
        f"Serving benchmark: `{output['model']}` ({output['served_settings']}, FLOPs speed-up "
        f"{output['flops_speedup']:.2f}x on the {output.get('sentences_sent', output['sentences'])} sentences sent) "
        "against the plain transformers model "
        f"of its full size, both on the same Ray Serve application and machine, levels alternated; "
        f"{output['settings']['inputs_per_request']} sentence(s) per request.",
        "",
        "| clients | model | requests/s | p50 (ms) | p90 (ms) | p99 (ms) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in output["summary"]:
        for name in ("early_exit", "plain"):
            r = output["results"][name][concurrency]
            lines.append(
                f"| {concurrency} | {name.replace('_', ' ')} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | "
                f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} |"
            )
    lines += [
        "",
        "| clients | throughput x | of the FLOPs speed-up | p99 early exit / plain |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for concurrency, s in output["summary"].items():
        lines.append(
            f"| {concurrency} | {s['throughput_speedup']:.2f}x | {s['of_flops_speedup']:.2f} | {s['p99_ratio']:.2f} |"
        )
    costs = output["in_process"]
    lines += [
        "",
        f"In process, without HTTP, at the replicas' thread count: the server's `predict` on 32 one-sentence requests "
        f"takes {costs['predict_ms_per_sentence']:.2f} ms per sentence, the bare early-exit forward pass on the same "
        f"batch {costs['forward_ms_per_sentence']:.2f} ms.",
    ]
    m = output["machine"]
    lines += [
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} cores, {output['settings']['threads']} torch thread(s) per replica.",
    ]
    environment = output.get("ray_serve_environment")
    if environment:
        lines[-1] += " Ray Serve settings: " + ", ".join(f"`{k}={v}`" for k, v in environment.items()) + "."
    return "\n".join(lines)


if __name__ == "__main__":
    main()
