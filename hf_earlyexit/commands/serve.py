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
"""`hf-earlyexit serve`: serve an early-exit model over HTTP on Ray Serve, batching concurrent requests.

Starts a local Ray instance and a Ray Serve application (`hf_earlyexit.serving.build_app`), prints where it listens,
and serves until interrupted (Ctrl-C). Requests that arrive within `--batch_wait_timeout_ms` of each other share one
forward pass (up to `--max_batch_size` requests), each with its own exit settings; the exit settings given here are
the defaults of every request. Needs `pip install "hf-earlyexit[serve]"`.

    hf-earlyexit serve --model runs/cascade --exit_threshold 0.9
    curl -s 127.0.0.1:8000/predict -d '{"inputs": "a gripping film", "parameters": {"exit_threshold": 0.8}}'

On a Ray cluster, deploy the same application with a Serve config file instead (see the README, "Serving").
"""

import argparse
import time

from .common import UsageError, add_tokenizer_argument, check_checkpoint_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Early-exit checkpoint: a local folder or a Hub id.")
    add_tokenizer_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    parser.add_argument("--max_batch_size", type=int, default=32, help="Most requests batched into one forward pass.")
    parser.add_argument(
        "--batch_wait_timeout_ms", type=float, default=10.0, help="How long a batch waits for more requests (ms)."
    )
    parser.add_argument("--replicas", type=int, default=1, help="Replicas of the model (each loads it).")
    parser.add_argument("--max_inputs", type=int, default=64, help="Most inputs one request may carry (more: 413).")
    parser.add_argument(
        "--max_characters", type=int, default=100_000, help="Longest input accepted, in characters (more: 413)."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per replica (default: torch's).")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs Ray may use (default: all).")
    defaults = parser.add_argument_group("exit settings (defaults of every request)")
    defaults.add_argument("--exit_threshold", type=float, nargs="+", default=None, help="One, or one per exit.")
    defaults.add_argument("--exit_criterion", default=None, help="e.g. max_prob, entropy, patience, divergence.")
    defaults.add_argument("--patience", type=int, default=None, help="For patience and divergence.")
    defaults.add_argument("--exit_mode", default=None, help="Token models: token (TOKEE) or sentence (SENTEE).")
    defaults.add_argument("--window_size", type=int, default=None, help="Token models: TOKEE's window.")


def exit_defaults(args: argparse.Namespace) -> dict:
    settings = {
        name: getattr(args, name)
        for name in ("exit_criterion", "patience", "exit_mode", "window_size")
        if getattr(args, name) is not None
    }
    if args.exit_threshold is not None:
        threshold = args.exit_threshold
        settings["exit_threshold"] = threshold[0] if len(threshold) == 1 else threshold
    return settings


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None, block: bool = True) -> dict:
    if args is None:
        parser = argparse.ArgumentParser(prog="hf-earlyexit serve", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    for name in ("max_batch_size", "replicas", "max_inputs", "max_characters"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be a port number (1-65535), got {args.port}.")
    if args.batch_wait_timeout_ms < 0:
        raise UsageError(f"--batch_wait_timeout_ms must be >= 0, got {args.batch_wait_timeout_ms}.")
    from .. import serving

    try:
        serving._require_serve()
    except ImportError as error:
        raise UsageError(str(error)) from None
    check_checkpoint_tokenizer(args.model, args.tokenizer)  # here, rather than in every replica that loads it
    import ray
    from ray import serve

    app = serving.build_app(
        args.model,
        tokenizer=args.tokenizer,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_ms=args.batch_wait_timeout_ms,
        replicas=args.replicas,
        max_inputs=args.max_inputs,
        max_characters=args.max_characters,
        threads=args.threads,
        **exit_defaults(args),
    )
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name="hf_earlyexit", route_prefix="/")
    url = f"http://{args.host}:{args.port}"
    print(f"Serving {args.model} at {url}/predict ({url}/info, {url}/health, {url}/metrics); Ctrl-C stops.")
    if block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
            ray.shutdown()
    return {"url": url, "model": args.model}
