"""Plots of accuracy and utility of pretraining against labelled images (log axis); `util.vis` re-exports them.

Both take the trials and column names as `util.pretraining_utility.summary` does, return a pyplot-free
matplotlib Figure (or draw on `ax`), and save it when given a path. Each title says how many
validation labels selection used (`util.provenance.selection_labels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from util.pretraining_utility import (SCRATCH, VALID_LABELS, _accuracy_stats, _check_ci, _cols, _points,
                                      _utility_rows, _utility_stats, proportion)
from util.provenance import selection_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BOUND_MARKERS = {"": "o", ">=": "^", "<=": "v", "?": "D"}  # how utility_plot draws each bound


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
    """(figure, axes): a new pyplot-free Figure (no backend needed, never shown twice in a notebook)
    unless `ax` is given."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    return figure, figure.add_subplot()


def _ordered(sources: pd.Series) -> list[str]:
    return sorted(set(sources), key=lambda s: (s != SCRATCH, s))


def _finish(figure: Figure, ax: Axes, budget_col: str, budgets: pd.Series, ylabel: str, title: str,
            path: str | Path | None, extra: Sequence[Any] = ()) -> Figure:
    """Log x axis, labels, `title`, legend (with `extra` handles); save to `path` when given."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    budgets = sorted({float(x) for x in budgets})
    if budgets:  # a tick at every measured budget, written as a plain number
        ax.xaxis.set_major_locator(FixedLocator(budgets))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel(f"labelled training images ({budget_col})")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + list(extra), fontsize="small")
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def accuracy_plot(df: pd.DataFrame, path: str | Path | None = None, *, source_col: str = "source",
                  budget_col: str = "BaseDataset.semisupervised", seed_col: str = "seed",
                  metric: str | None = None, ci: float = 0.95, ax: Axes | None = None) -> Figure:
    """Accuracy (`metric`, mean over seeds) against labelled images on a log axis: one line per source,
    scratch in black, with its t-interval band over seeds; the title says how many validation labels
    selection used. Draws on `ax` if given, else on a new Figure. Returns the Figure; saves it to
    `path` when given (format from the suffix, PNG without one)."""
    _check_ci(ci)
    cols = _cols(df, source_col, budget_col, seed_col, metric)
    stats = _accuracy_stats(_points(df, cols), cols, ci, proportion(df, cols.metric))
    figure, ax = _axes(ax)
    for source in _ordered(stats[source_col]):
        rows = stats[stats[source_col] == source]
        color = "black" if source == SCRATCH else None
        (line,) = ax.plot(rows[budget_col], rows["accuracy"], marker="o", color=color, label=source)
        ax.fill_between(rows[budget_col], rows["accuracy_lo"], rows["accuracy_hi"], color=line.get_color(), alpha=0.2)
    return _finish(figure, ax, budget_col, stats[budget_col], f"{cols.metric} (mean over seeds, {ci:.0%} t-interval)",
                   selection_labels(stats[VALID_LABELS]), path)


def utility_plot(df: pd.DataFrame, path: str | Path | None = None, *, source_col: str = "source",
                 budget_col: str = "BaseDataset.semisupervised", seed_col: str = "seed",
                 metric: str | None = None, ci: float = 0.95, ax: Axes | None = None) -> Figure:
    """Utility (n'/n - 1 of the geometric mean n' over seeds, as in `calc_utility`) against labelled images
    on a log axis: one line per pretrained source, a line at 0 (no gain over scratch). Exact points are
    filled circles with their t-interval as an error bar; bounds are hollow, without an interval: triangle
    up '>=' (beyond the largest scratch budget), triangle down '<=' (at or below the smallest, or tied with
    scratch's best), and a
    '?' point (both among the seeds) a hollow diamond on the line at 0. The title says how many validation
    labels selection used. Returns the Figure; saves it to `path` when given (PNG without a suffix)."""
    from matplotlib.lines import Line2D

    _check_ci(ci)
    cols = _cols(df, source_col, budget_col, seed_col, metric)
    points = _points(df, cols)
    stats = _utility_stats(_utility_rows(points, cols), cols, ci)
    figure, ax = _axes(ax)
    ax.axhline(0, color="black", linewidth=1)
    for source in _ordered(stats[source_col]):
        rows = stats[stats[source_col] == source]
        (line,) = ax.plot(rows[budget_col], rows["utility"], label=source)
        color = line.get_color()
        exact = rows[rows["bound"] == ""]
        ax.errorbar(exact[budget_col], exact["utility"], color=color, linestyle="", capsize=3,
                    yerr=[exact["utility"] - exact["utility_lo"], exact["utility_hi"] - exact["utility"]])
        for bound, marker in BOUND_MARKERS.items():
            at = rows[rows["bound"] == bound]
            ax.scatter(at[budget_col], at["utility"].fillna(0), marker=marker, s=40, zorder=3, edgecolors=color,
                       facecolors=color if bound == "" else "white")
    shown = [b for b in (">=", "<=", "?") if (stats["bound"] == b).any()]
    proxies = [Line2D([], [], linestyle="", marker=BOUND_MARKERS[b], color="gray", markerfacecolor="white",
                      label={">=": "lower bound", "<=": "upper bound", "?": "mixed bounds"}[b]) for b in shown]
    return _finish(figure, ax, budget_col, stats[budget_col], f"utility n'/n - 1 (over seeds, {ci:.0%} t-interval)",
                   selection_labels(points[VALID_LABELS]), path, proxies)
