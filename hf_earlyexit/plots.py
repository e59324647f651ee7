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
"""Speed/accuracy plots (PNG, matplotlib's Agg backend) for `hf-earlyexit evaluate`, the quick start and the benchmark
report. The same inputs give the same bytes: no timestamps and no software version in the file's metadata."""

from collections.abc import Mapping, Sequence
from pathlib import Path


# a fixed order of styles, so that a method keeps its look from one run to the next
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_REFERENCE_STYLES = ("--", ":", "-.")

Curves = Mapping[str, Sequence[tuple[float, float]]]
Panels = Sequence[tuple[str, Curves]]


def plot_curves(
    panels: Panels,
    path: str | Path,
    *,
    title: str,
    ylabel: str = "accuracy (%)",
    reference: tuple[str, float] | None = None,
    marks: Sequence[float] = (),
) -> Path:
    """Draws one row of panels, one per `(x-axis label, {curve name: [(x, y), ...]})`, and writes a PNG.

    Args:
        panels: The panels, left to right; each curve is drawn sorted by `x`, with markers.
        path: The PNG to write (its folder is created).
        title: The figure's title.
        ylabel: The y-axis label (shared).
        reference: `(label, y)` drawn as a dashed horizontal line in every panel (e.g. the full model's accuracy).
        marks: x values marked by dotted vertical lines (e.g. the target speed-ups).
    """
    return plot_rows([(None, panels, [reference] if reference else [])], path, title=title, ylabel=ylabel, marks=marks)


def plot_rows(
    rows: Sequence[tuple[str | None, Panels, Sequence[tuple[str, float]]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str = "accuracy (%)",
    marks: Sequence[float] = (),
) -> Path:
    """Draws a grid of panels, a row per `(row title, panels, references)`, and writes a PNG.

    Each row has its own legend, to the right of its panels, so that a figure with many methods splits them into
    readable groups (e.g. one row per benchmark, each with the full model it was measured against). The panels of a
    column share their x-axis, so the rows compare at a glance.

    Args:
        rows: The rows, top to bottom: a title (shown beside the y-axis label; `None` for none), the panels as for
            [`plot_curves`], and `(label, y)` horizontal reference lines drawn in each of the row's panels.
        path: The PNG to write (its folder is created).
        title: The figure's title.
        ylabel: The y-axis label of every row.
        marks: x values marked by dotted vertical lines in every panel (e.g. the target speed-ups).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(panels) for _, panels, _ in rows)
    figure, axes = plt.subplots(
        len(rows),
        columns + 1,
        figsize=(5 * columns + 3.1, 4 * len(rows) + 0.5),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * columns + [0.62]},
    )
    for row_axes, (row_title, panels, references) in zip(axes, rows):
        names = sorted({name for _, curves in panels for name in curves})
        palette = [f"C{i}" for i in range(10)] if len(names) <= 10 else list(plt.get_cmap("tab20").colors)
        styles = {name: (palette[i % len(palette)], _MARKERS[i % len(_MARKERS)]) for i, name in enumerate(names)}
        for axis, (xlabel, curves) in zip(row_axes, panels):
            for name, points in curves.items():
                points = sorted(points)
                if not points:
                    continue
                color, marker = styles[name]
                axis.plot([x for x, _ in points], [y for _, y in points], marker=marker, color=color, label=name)
            for (label, y), linestyle in zip(references, _REFERENCE_STYLES):
                axis.axhline(y, color="grey", linestyle=linestyle, linewidth=1, label=label)
            for x in marks:
                axis.axvline(x, color="lightgrey", linestyle=":", linewidth=1)
            axis.set_xlabel(xlabel)
            axis.grid(alpha=0.3)
        row_axes[0].set_ylabel(ylabel if row_title is None else f"{row_title}\n{ylabel}")
        for axis in row_axes[len(panels) :]:
            axis.axis("off")
        handles = {}
        for axis in row_axes[: len(panels)]:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        row_axes[-1].legend(handles.values(), handles.keys(), loc="center left", fontsize=8, frameon=False)
    # the panels of a column share their x range (set after drawing: `sharex` would also share the empty legend axes)
    for column in range(columns):
        drawn = [row_axes[column] for row_axes, (_, panels, _) in zip(axes, rows) if column < len(panels)]
        lows, highs = zip(*(axis.get_xlim() for axis in drawn))
        for axis in drawn:
            axis.set_xlim(min(lows), max(highs))
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
    return path
