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
"""Benchmarks in cells: one trained model, its calibration and its measurement per cell, each with its own result file.

A converged benchmark takes hours on a CPU, more than one sitting. So each cell writes `<results_dir>/<name>.json`
(the result, and the settings that produced it, the command and the machine) as soon as it finishes, and keeps its
checkpoints under `<runs_dir>/<name>-<settings hash>/` (an ignored folder). A rerun skips every cell whose result file
holds the same settings, redoes a cell whose settings changed, and a cell cut off mid-training resumes from its last
checkpoint (its folder is named by its settings, so a changed cell never resumes a stale run). A selection
(`only`) spreads the work over several runs; the report builds from whatever result files exist.
"""

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    """One unit of benchmark work.

    Args:
        name: File-name-safe and unique, e.g. `static-2L-seed0`.
        kind: Its group, what `only` selects, e.g. `static`.
        settings: Everything that determines its result (JSON-serialisable); a change means the cell is redone.
        run: `run(cell, run_dir) -> dict`, the result; `run_dir` is the cell's own checkpoint folder (unset in a plan
            that only names the cells).
        needs: Names of cells whose results (or checkpoints) it reads; they must be done first.
    """

    name: str
    kind: str
    settings: dict
    run: Callable[["Cell", Path], dict] | None = None
    needs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        """A short hash of the settings: names the checkpoint folder."""
        text = json.dumps(self.settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


class CellStore:
    """Result files of finished cells (`results_dir`, committed) and checkpoints of running ones (`runs_dir`,
    ignored)."""

    def __init__(self, results_dir: str | os.PathLike, runs_dir: str | os.PathLike, command: str | None = None):
        self.results_dir = Path(results_dir)
        self.runs_dir = Path(runs_dir)
        self.command = command if command is not None else " ".join(["python -m", *sys.argv])

    def result_path(self, name: str) -> Path:
        return self.results_dir / f"{name}.json"

    def run_dir(self, cell: Cell) -> Path:
        return self.runs_dir / f"{cell.name}-{cell.key}"

    def load(self, name: str) -> dict | None:
        path = self.result_path(name)
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def is_done(self, cell: Cell) -> bool:
        stored = self.load(cell.name)
        return stored is not None and stored.get("settings") == _jsonable(cell.settings)

    def missing(self, cells: Iterable[Cell]) -> list[str]:
        """Names of the cells without an up-to-date result file."""
        return [cell.name for cell in cells if not self.is_done(cell)]

    def run(
        self,
        cells: Sequence[Cell],
        only: Iterable[str] | None = None,
        log: Callable[[str], None] = print,
        machine: Callable[[], dict] | None = None,
        remeasure: bool = False,
    ) -> dict[str, str]:
        """Run the selected cells that are not done, in order; returns `{name: "done" | "skipped" | "ran" | "blocked"}`.

        Args:
            cells: Every cell of the benchmark, dependencies before the cells that need them.
            only: Kinds or names to run (default: all).
            log: Progress lines.
            machine: Describes the machine (stored with each result).
            remeasure: Run the selected cells that are done again, from their saved checkpoints: a cell's run resumes
                its finished training (no step), so only the measurement is new (after a speed change of the code).
                The training record of the earlier result is kept, and the model must answer the dev set exactly
                as it did then (else `RuntimeError`, and the earlier file stays).
        """
        selected = set(only) if only else None
        by_name = {cell.name: cell for cell in cells}
        status = {}
        for cell in cells:
            if selected is not None and cell.kind not in selected and cell.name not in selected:
                status[cell.name] = "skipped"
                continue
            earlier = None
            if self.is_done(cell):
                if not remeasure:
                    status[cell.name] = "done"
                    continue
                earlier = self.load(cell.name)
            blocking = [name for name in cell.needs if name in by_name and not self.is_done(by_name[name])]
            if blocking:
                log(f"{cell.name}: waiting for {', '.join(blocking)}")
                status[cell.name] = "blocked"
                continue
            log(f"{cell.name}: running (settings {cell.key})")
            run_dir = self.run_dir(cell)
            run_dir.mkdir(parents=True, exist_ok=True)
            with _TimeSpent(run_dir) as spent:
                result = cell.run(cell, run_dir)
            if earlier is not None:
                result = _remeasured(cell.name, earlier, result)
            self.write(cell, result, spent.seconds, machine() if machine else None, cpu_seconds=spent.cpu_seconds)
            status[cell.name] = "ran" if earlier is None else "remeasured"
        return status

    def write(
        self, cell: Cell, result: dict, seconds: float, machine: dict | None, cpu_seconds: float | None = None
    ) -> Path:
        """Write a cell's result file atomically: a cut-off write never leaves a half file that looks finished.

        `seconds` and `cpu_seconds` are the wall-clock and CPU time the cell took, runs cut off and resumed included.
        """
        payload = {
            "cell": cell.name,
            "kind": cell.kind,
            "settings": _jsonable(cell.settings),
            "command": self.command,
            "machine": machine,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "result": result,
        }
        path = self.result_path(cell.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, path)
        return path


class _TimeSpent:
    """Wall-clock and CPU (this process, every thread) seconds spent on a cell, summed over its runs: each run adds
    its time to `<run_dir>/time_spent.json`, also when it is cut off by an exception, so a resumed cell reports
    the whole cost. (A run killed outright loses its own share.)"""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "time_spent.json"

    def __enter__(self) -> "_TimeSpent":
        earlier = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.seconds = earlier.get("seconds", 0.0)
        self.cpu_seconds = earlier.get("cpu_seconds", 0.0)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info) -> None:
        self.seconds += time.perf_counter() - self._wall
        self.cpu_seconds += time.process_time() - self._cpu
        self.path.write_text(json.dumps({"seconds": self.seconds, "cpu_seconds": self.cpu_seconds}))


# what a cell records about its model's answers on the dev set: a remeasured model must give them again
_ANSWERS = ("dev_predictions", "exit_accuracy", "exit_f1")


def _remeasured(name: str, earlier: dict, result: dict) -> dict:
    """`result` of a cell run again for its measurement only, with the earlier run's training record."""
    before = earlier["result"]
    for key in _ANSWERS:
        if key in before and before[key] != result.get(key):
            raise RuntimeError(
                f"{name}: the remeasured model's `{key}` differs from the earlier result's, so it is not the model "
                "measured before (was its checkpoint retrained or replaced?); the earlier result file is kept."
            )
    if "training" in before:
        result["training"] = before["training"]
    result["remeasured"] = {"earlier_command": earlier.get("command"), "earlier_machine": earlier.get("machine")}
    return result


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so stored and current settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


__all__ = ["Cell", "CellStore"]
