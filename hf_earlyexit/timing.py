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
"""Wall-clock measurement: where a run was timed, and several workloads timed side by side.

A wall-clock speed-up is the time of a reference (a plain transformers model of the same size and weights) over the
time of the early-exit model on the same batches, measured in the same process with the same thread count,
interleaved so that drifts of the machine fall on both alike (`docs/methods.md` section 4). [`wallclock`] gives the
fields of a [`~hf_earlyexit.evaluation.SweepPoint`].
"""

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def machine_info() -> dict:
    """Where a measurement ran: processor, cores, torch threads and library versions."""
    import transformers

    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            processor = names[0]
    except OSError:
        pass
    return {
        "processor": processor,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def interleaved_latency(
    runs: dict[str, Callable[[], None]], rounds: int = 5, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time several workloads side by side: each round runs every workload once, in turn.

    Interleaving spreads drifts of the machine (frequency, other processes) over all workloads alike, so ratios of the
    medians are fair even when absolute times wander.

    Args:
        runs: Name to a callable that runs the whole workload once.
        rounds: Timed rounds; the median is reported.
        warmup: Untimed rounds first.

    Returns:
        Name to `{"median_s": ..., "min_s": ..., "rounds": [...]}`.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(values), "min_s": min(values), "rounds": values}
        for name, values in times.items()
    }


# examples per block of the batches a model runs before the other model's turn (see `interleaved_batch_latency`)
TIMING_BLOCK_EXAMPLES = 32


def interleaved_batch_latency(
    models: dict[str, Callable[[dict], Any]],
    batches: Sequence[dict],
    rounds: int = 3,
    warmup: int = 1,
    block_examples: int = TIMING_BLOCK_EXAMPLES,
) -> dict[str, dict]:
    """Time several models on the same batches, each batch timed on its own, the models taking turns block by block.

    The batches are cut into blocks of consecutive batches holding at least `block_examples` examples (one batch of
    32, or 32 batches of one): each model runs the whole block, batch after batch, then the next model does, the order
    alternating from block to block. Within a block a model runs request after request as it would when serving, with
    its own weights warm in the caches; taking turns every block (a fraction of a second) still lets every model meet
    the same state of the machine. Turns at every batch (`block_examples=1`) would push another model's weights
    through the caches before every batch: at batch size 1 that makes a model that reads fewer weights (an early exit,
    a smaller model) look up to 15 % slower than it runs on its own.

    Args:
        models: Name to a callable that runs one batch.
        batches: The batches, each timed on its own.
        rounds: Timed passes over the batches; per batch, the median over rounds counts.
        warmup: Untimed passes first.
        block_examples: Examples per block (at least); 1 alternates at every batch.

    Returns:
        Name to `{"median_s": median over rounds of the total time, "rounds": totals per round, "batch_s": per batch
        the median over rounds, "p90_ms_per_example": 90th percentile over batches of the batch's median time per
        example, in ms}`.
    """
    names = list(models)
    blocks, current, examples = [], [], 0
    for index, batch in enumerate(batches):
        current.append(index)
        examples += batch["input_ids"].shape[0]
        if examples >= block_examples:
            blocks.append(current)
            current, examples = [], 0
    if current:
        blocks.append(current)
    for _ in range(warmup):
        for block in blocks:
            for name in names:
                for index in block:
                    models[name](batches[index])
    # times[name][round][batch]
    times = {name: [[0.0] * len(batches) for _ in range(rounds)] for name in names}
    for r in range(rounds):
        for k, block in enumerate(blocks):
            order = names if (r + k) % 2 == 0 else names[::-1]
            for name in order:
                for index in block:
                    start = time.perf_counter()
                    models[name](batches[index])
                    times[name][r][index] = time.perf_counter() - start
    results = {}
    for name in names:
        totals = [sum(per_batch) for per_batch in times[name]]
        batch_s = [statistics.median(times[name][r][b] for r in range(rounds)) for b in range(len(batches))]
        per_example = sorted(1000 * t / batch["input_ids"].shape[0] for t, batch in zip(batch_s, batches))
        results[name] = {
            "median_s": statistics.median(totals),
            "rounds": totals,
            "batch_s": batch_s,
            "p90_ms_per_example": _quantile(per_example, 0.9),
        }
    return results


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """The `q` quantile of sorted values, linearly interpolated (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def forward_one(model, **settings) -> Callable[[dict], None]:
    """A callable that runs `model` on one batch under `torch.inference_mode` (for `interleaved_batch_latency`)."""

    def run(batch):
        with torch.inference_mode():
            model(**batch, **settings)

    return run


def forward_all(model, batches: Sequence[dict], **settings) -> Callable[[], None]:
    """A callable that runs `model` over every batch under `torch.inference_mode` (for `interleaved_latency`)."""

    def run():
        with torch.inference_mode():
            for batch in batches:
                model(**batch, **settings)

    return run


def wallclock(
    run_model: Callable[[dict], Any],
    run_reference: Callable[[dict], Any],
    timing_batches: dict[int, Sequence[dict]] | None,
    rounds: int = 3,
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Wall-clock speed-up, latency and 90th-percentile latency of a model against its reference, per timed batch size,
    in the fields of [`SweepPoint`]: both run the same batches, taking turns every block of 32 examples
    ([`interleaved_batch_latency`]), medians over `rounds`.

    Args:
        run_model, run_reference: Each runs one batch (e.g. [`forward_one`]).
        timing_batches: Batch size to the batches timed at that size; `None` times nothing.
        rounds: Timed passes over the batches.

    Returns:
        `(wallclock_speedup, latency_ms, latency_p90_ms)`, keyed by the batch size as a string (`"8"`), the two
        latencies (per example, in milliseconds) also for the reference (`"8_reference"`).
    """
    speedups, latency, p90 = {}, {}, {}
    for batch_size, batches in (timing_batches or {}).items():
        times = interleaved_batch_latency({"reference": run_reference, "model": run_model}, batches, rounds)
        num_examples = sum(batch["input_ids"].shape[0] for batch in batches)
        speedups[str(batch_size)] = times["reference"]["median_s"] / times["model"]["median_s"]
        latency[str(batch_size)] = 1000 * times["model"]["median_s"] / num_examples
        latency[f"{batch_size}_reference"] = 1000 * times["reference"]["median_s"] / num_examples
        p90[str(batch_size)] = times["model"]["p90_ms_per_example"]
        p90[f"{batch_size}_reference"] = times["reference"]["p90_ms_per_example"]
    return speedups, latency, p90


__all__ = [
    "TIMING_BLOCK_EXAMPLES",
    "forward_all",
    "forward_one",
    "interleaved_batch_latency",
    "interleaved_latency",
    "machine_info",
    "wallclock",
]
