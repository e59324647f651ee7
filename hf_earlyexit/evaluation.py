"""Measuring early exit: accuracy, layer and FLOPs speed-up, and wall-clock latency measured side by side.

Speed accounting follows METHODS.md section 4 and always names its convention:

- layer speed-up: `L * N / sum(exit_layer)`, with `L` the depth of the full model (for a cascade, cumulative layers);
- FLOPs speed-up: `sum(FLOPs of the full model) / sum(FLOPs actually spent)`, per example from its real length;
- wall-clock speed-up: time of a plain transformers model of the same size and weights on the same batches, divided
  by the time of the early-exit model, measured in the same process with the same thread count, interleaved.
"""

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

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


def make_batches(tokenizer, dataset, batch_size: int, max_length: int | None = None) -> list[dict]:
    """Tokenize a text-classification dataset (`text`, optional `text_pair`) into padded batches, in order."""
    batches = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        pair = rows.get("text_pair")
        encoded = tokenizer(
            rows["text"],
            pair,
            padding=True,
            truncation=True,
            max_length=max_length or tokenizer.model_max_length,
            return_tensors="pt",
        )
        batches.append(dict(encoded))
    return batches


@torch.inference_mode()
def collect(model, batches: Sequence[dict], fields: Sequence[str] = ("logits", "exit_layer", "flops"), **settings):
    """Run `model` over `batches` with forward `settings` and concatenate the requested per-example output fields."""
    gathered = {name: [] for name in fields}
    for batch in batches:
        out = model(**batch, **settings)
        for name in fields:
            gathered[name].append(getattr(out, name))
    return {name: torch.cat(values) for name, values in gathered.items()}


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


def forward_all(model, batches: Sequence[dict], **settings) -> Callable[[], None]:
    """A callable that runs `model` over every batch under `torch.inference_mode` (for `interleaved_latency`)."""

    def run():
        with torch.inference_mode():
            for batch in batches:
                model(**batch, **settings)

    return run


@dataclass
class SweepPoint:
    """One operating point of an early-exit model on one dataset."""

    method: str
    settings: dict
    metric_name: str
    metric: float
    mean_exit_layer: float
    layer_speedup: float
    flops_speedup: float
    wallclock_speedup: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def speed_summary(exit_layer: torch.Tensor, flops: torch.Tensor, full_layers: int, full_flops: torch.Tensor) -> dict:
    """Layer and FLOPs speed-up of a run against the full model (METHODS.md section 4)."""
    return {
        "mean_exit_layer": float(exit_layer.float().mean()),
        "layer_speedup": full_layers * exit_layer.numel() / float(exit_layer.sum()),
        "flops_speedup": float(full_flops.sum()) / float(flops.sum()),
    }
