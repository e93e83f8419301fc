"""Pictures of measured numbers: accuracy against inference speed (pipeline), and the ablation's seeds and spreads.

matplotlib is an optional extra (`pip install "tmkd_hf[plots]"`): this module imports without it, and each function
raises [`MatplotlibMissing`] (an `ImportError` that says what to install) when it is absent, so a caller can skip the
picture with a warning. Figures are drawn on matplotlib's Agg canvas without pyplot: no display is needed and the
caller's pyplot backend is left alone.

Every function draws only the numbers it is given (nothing is measured here) and returns the `Figure`, whose artists
carry a `gid` naming what they show, so a test can count the points of each series.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

ACCURACY_VS_SPEED_FILE = "accuracy_vs_speed.png"  # beside results.md and in the student's folder (the card embeds it)
ABLATION_FILE = "ablation.png"
POOL_CURVE_FILE = "pool_curve.png"
DPI = 120

# The pipeline's speed keys from before per-model throughputs were recorded in `speed["examples_per_s"]`.
_LEGACY_SPEED_KEYS = {
    "teacher_0": "teacher_examples_per_s",
    "teacher_ensemble": "ensemble_examples_per_s",
    "tmkd_student": "student_examples_per_s",
}


class MatplotlibMissing(ImportError):
    """matplotlib is not installed: the picture cannot be drawn (the numbers are still in the tables)."""


def _figure(width: float, height: float):
    """A `Figure` on the Agg canvas (no pyplot: nothing global changes, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MatplotlibMissing(
            'Pictures need matplotlib: pip install "tmkd_hf[plots]" (or pip install matplotlib).'
        ) from error
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, save_to: Iterable[str | os.PathLike]) -> None:
    for path in save_to:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        figure.savefig(path, dpi=DPI)


def _mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value: no spread to show), as the ablation table reports."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ----- the pipeline: accuracy against inference speed -----


def accuracy_vs_speed_points(results: Mapping[str, Any], split: str = "test") -> list[dict[str, Any]]:
    """The models of the pipeline's `results` that have both an accuracy on `split` and a measured throughput.

    Throughputs are the pipeline's own: `speed["examples_per_s"]` per model (every teacher, the ensemble, the student,
    and any exported format recorded there), else the older `teacher_/ensemble_/student_examples_per_s` keys. A model
    that was not timed is placed only when `speed["same_architecture_as"]` records that it has a timed model's
    architecture (the labels-only student has the TMKD student's); its point says so. The rest are left out.
    """
    accuracies = results.get("accuracy", {}).get(split, {})
    speed = results.get("speed", {})
    measured = dict(speed.get("examples_per_s") or {})
    for name, key in _LEGACY_SPEED_KEYS.items():
        if name not in measured and speed.get(key):
            measured[name] = speed[key]
    points = []
    for name, examples_per_s in measured.items():
        if name in accuracies and examples_per_s:
            points.append(
                {"model": name, "examples_per_s": examples_per_s, "accuracy": accuracies[name], "timed_as": None}
            )
    for name, timed_model in (speed.get("same_architecture_as") or {}).items():
        if name in accuracies and name not in measured and measured.get(timed_model):
            points.append(
                {
                    "model": name,
                    "examples_per_s": measured[timed_model],
                    "accuracy": accuracies[name],
                    "timed_as": timed_model,
                }
            )
    return points


def _model_colour(name: str) -> str:
    if name.startswith("teacher_") and name != "teacher_ensemble":
        return "tab:blue"
    return {"teacher_ensemble": "tab:purple", "labels_only_student": "tab:red"}.get(name, "tab:green")


def plot_accuracy_vs_speed(results: Mapping[str, Any], save_to: Iterable[str | os.PathLike] = (), split: str = "test"):
    """Test accuracy against examples/s (log scale) of every timed model of a pipeline run, labelled, with the
    majority class as a horizontal line: what the student's speed costs in accuracy, in one picture.

    One scatter per model (`gid` = its name; hollow when placed at a same-architecture model's throughput), the
    majority-class line has `gid="majority_class"`. Saved to each path of `save_to`; returns the `Figure`.
    """
    points = accuracy_vs_speed_points(results, split)
    figure = _figure(7.0, 4.5)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax = figure.add_subplot()
    speeds = [p["examples_per_s"] for p in points]
    middle = (min(speeds) * max(speeds)) ** 0.5 if points else 0.0
    labelled: list[tuple[float, float]] = []  # (log10 x, y) of the points labelled so far
    for point in points:
        name, colour, timed_as = point["model"], _model_colour(point["model"]), point["timed_as"]
        x, y = point["examples_per_s"], 100 * point["accuracy"]
        ax.scatter([x], [y], s=60, facecolors="none" if timed_as else colour, edgecolors=colour, zorder=3, gid=name)
        label = f"{name}\n(not timed: {timed_as}'s architecture and speed)" if timed_as else name
        right = x <= middle  # labels of the faster half go to the left of their point, inside the axes
        # points that nearly coincide (teachers of one architecture) get their labels stacked, not overprinted
        near = sum(abs(math.log10(x) - lx) < 0.1 and abs(y - ly) < 2.0 for lx, ly in labelled)
        labelled.append((math.log10(x), y))
        ax.annotate(
            label,
            (x, y),
            xytext=(7 if right else -7, 3 + 10 * near),
            textcoords="offset points",
            fontsize=8,
            ha="left" if right else "right",
            va="bottom",
        )
    if labelled:  # head-room for the stacked labels above the highest points
        stacked = max(sum(abs(lx - ox) < 0.1 and abs(ly - oy) < 2.0 for ox, oy in labelled) for lx, ly in labelled)
        ax.margins(y=0.06 * stacked)
    majority = results.get("accuracy", {}).get(split, {}).get("majority_class")
    if majority is not None:
        label = f"majority class ({results['majority_label']})" if results.get("majority_label") else "majority class"
        ax.axhline(100 * majority, color="grey", linestyle="--", linewidth=1, label=label, gid="majority_class")
        ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    speed = results.get("speed", {})
    measured_on = ", ".join(
        part
        for part in (
            speed.get("machine"),
            f"batch {speed['batch_size']}" if speed.get("batch_size") else None,
            f"timed on {speed['examples']} rows" if speed.get("examples") else None,
        )
        if part
    )
    ax.set_xlabel("inference throughput, examples/s (log scale)" + (f"\n{measured_on}" if measured_on else ""))
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"TMKD pipeline: {split} accuracy against inference speed")
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.set_xlim(min(speeds) / 1.6, max(speeds) * 1.6)
    _save(figure, save_to)
    return figure


# ----- the ablation: seeds, means and spreads -----


def plot_ablation(
    rows: Mapping[str, Mapping[Any, float]],
    references: Mapping[str, float] | None = None,
    ylabel: str = "test accuracy (%)",
    title: str = "TMKD ablation",
    save_to: Iterable[str | os.PathLike] = (),
):
    """Every student row: each seed as a dot and the mean with a bar of ± one sample standard deviation, so the
    differences between rows can be read against the spread between seeds. Single-run models (teachers, ensemble,
    majority class) are horizontal reference lines.

    `rows` maps a row name to `{seed: accuracy}` (accuracies in [0, 1]), in display order; `references` maps a name
    to one accuracy. Artists: `gid="seeds"` (one dot per run), `gid="means"` (one point per row), and
    `gid="reference:<name>"` per line. Saved to each path of `save_to`; returns the `Figure`.
    """
    names = [name for name, by_seed in rows.items() if by_seed]
    figure = _figure(max(6.0, 1.0 + 0.9 * len(names)), 4.5)
    ax = figure.add_subplot()
    _seeds_and_means(ax, list(range(len(names))), [list(rows[n].values()) for n in names], offset=0.12, fmt="o")
    styles = {"majority": ("grey", "--"), "ensemble": ("tab:purple", "-.")}
    for name, accuracy in (references or {}).items():
        colour, linestyle = styles.get(name, ("tab:blue", ":"))
        ax.axhline(100 * accuracy, color=colour, linestyle=linestyle, linewidth=1, label=name, gid=f"reference:{name}")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    _save(figure, save_to)
    return figure


def _seeds_and_means(ax, positions: list[float], groups: list[list[float]], offset: float, fmt: str) -> None:
    """One grey dot per run (`gid="seeds"`, beside its position, not under the bar) and the mean ± std of each group
    (`gid="means"`): the spread between seeds shown next to what it is the spread of. Accuracies in [0, 1]."""
    seed_x, seed_y, means, spreads = [], [], [], []
    for position, group in zip(positions, groups):
        values = [100 * v for v in group]
        seed_x += [position + offset] * len(values)
        seed_y += values
        mean, std = _mean_and_std(values)
        means.append(mean)
        spreads.append(std)
    ax.scatter(seed_x, seed_y, s=14, color="tab:grey", alpha=0.8, zorder=3, gid="seeds", label="one seed")
    bars = ax.errorbar(
        positions, means, yerr=spreads, fmt=fmt, color="tab:green", capsize=4, zorder=4, label="mean ± std over seeds"
    )
    bars[0].set_gid("means")


def plot_pool_curve(
    points: Mapping[float, Iterable[float]],
    ylabel: str = "test accuracy (%)",
    title: str = "TMKD: accuracy against the unlabelled pool used in stage 1",
    save_to: Iterable[str | os.PathLike] = (),
):
    """Accuracy against the percent of the unlabelled pool in stage 1: does more stage-1 data help, beyond the spread
    between seeds? `points` maps a percent to the accuracies of its runs (in [0, 1]); percents without runs are left
    out. Artists: `gid="seeds"` (one dot per run), `gid="means"` (mean ± std, one point per percent). Saved to each
    path of `save_to`; returns the `Figure`.
    """
    percents = sorted(p for p, values in points.items() if list(values))
    figure = _figure(6.0, 4.0)
    ax = figure.add_subplot()
    _seeds_and_means(ax, percents, [list(points[p]) for p in percents], offset=1.5, fmt="o-")
    ax.set_xticks(percents)
    ax.set_xlim(-5, 105)
    ax.set_xlabel("unlabelled pool used in stage 1 (%; 0 = no stage 1)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(figure, save_to)
    return figure
