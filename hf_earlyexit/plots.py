"""Speed/accuracy plots (PNG, matplotlib's Agg backend) for `hf-earlyexit evaluate`, the quick start and the benchmark
report. The same inputs give the same bytes: no timestamps and no software version in the file's metadata."""

from collections.abc import Mapping, Sequence
from pathlib import Path


# a fixed order of styles, so that a method keeps its look from one run to the next
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def plot_curves(
    panels: Sequence[tuple[str, Mapping[str, Sequence[tuple[float, float]]]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str = "accuracy (%)",
    reference: tuple[str, float] | None = None,
    marks: Sequence[float] = (),
) -> Path:
    """Draws one panel per `(x-axis label, {curve name: [(x, y), ...]})` and writes a PNG.

    Args:
        panels: The panels, left to right; each curve is drawn sorted by `x`, with markers.
        path: The PNG to write (its folder is created).
        title: The figure's title.
        ylabel: The y-axis label (shared).
        reference: `(label, y)` drawn as a dashed horizontal line in every panel (e.g. the full model's accuracy).
        marks: x values marked by dotted vertical lines (e.g. the target speed-ups).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for _, curves in panels for name in curves})
    styles = {name: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, name in enumerate(names)}
    # one legend for the figure, under the panels, so that it never hides a curve
    columns = max(1, min(3, len(panels) * 2 - 1))
    legend_rows = -(-(len(names) + (reference is not None)) // columns)
    legend_height = 0.25 * legend_rows + 0.3
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5 + legend_height), squeeze=False)
    for axis, (xlabel, curves) in zip(axes[0], panels):
        for name, points in curves.items():
            points = sorted(points)
            if not points:
                continue
            color, marker = styles[name]
            axis.plot([x for x, _ in points], [y for _, y in points], marker=marker, color=color, label=name)
        if reference is not None:
            axis.axhline(reference[1], color="grey", linestyle="--", linewidth=1, label=reference[0])
        for x in marks:
            axis.axvline(x, color="lightgrey", linestyle=":", linewidth=1)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    handles = {}
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=columns, fontsize=8, frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, legend_height / (4.5 + legend_height), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
    return path
