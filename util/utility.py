"""Utility of pretraining (the 2020 definition), as tables and plots; `util.vis` re-exports all of it.

A pretrained model reaches accuracy a with n labelled images; scratch training needs n' labels
to reach a (read off the scratch curve, linear in log n between measured budgets); utility =
n'/n - 1. 0 means pretraining is worth nothing, 1 that it saves as many labels as were used.
Outside the measured scratch budgets n' is not extrapolated: the utility is then a bound
(`bound` '>=' or '<='). The functions take a DataFrame with one row per trial and the column
names `source_col`, `budget_col`, `seed_col` and `metric`; trials whose `status` is not
'finished' or 'stopped' are left out with a warning. A study's trials are passed one stage at a
time (`df[df["stage"] == "transfer"]`): pretraining trials would otherwise count as scratch.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from selfstudy import folders
from selfstudy.study import PRETRAINED

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCRATCH = "scratch"  # the `source` of a trial trained from random weights
COMPLETED = ("finished", "stopped")  # the statuses whose metrics count
BOUND_MARKERS = {"": "o", ">=": "^", "<=": "v", "?": "D"}  # how utility_plot draws each bound


def source_label(pretrained: Any) -> str:
    """'scratch' for a missing, None, NaN or empty `Wrapper.pretrained`, else its last path component
    ('study/pretrain/syn_r9_rotate' -> 'syn_r9_rotate'); a final 'snapshot' (a path to the file) is skipped."""
    if pretrained is None or (isinstance(pretrained, float) and math.isnan(pretrained)):
        return SCRATCH
    parts = [part for part in str(pretrained).strip().replace("\\", "/").split("/") if part]
    if parts and parts[-1] == folders.SNAPSHOT:
        parts.pop()
    return parts[-1] if parts else SCRATCH


class _Cols(NamedTuple):
    source: str
    budget: str
    seed: str
    metric: str


def best_heads(df: pd.DataFrame, *, budget_col: str = "BaseDataset.semisupervised", by: str = "best_accuracy",
               mode: str = "max") -> pd.DataFrame:
    """The rows of `df` with, of each probe grid trial (`selfstudy.probe`), only the best head of each
    label budget by `by` (default: its best validation accuracy) among those that completed (a
    diverged head is not picked) - the learning rate and weight decay a linear evaluation would
    pick on the validation split. Other trials' rows stay as they are.
    The utility functions apply it themselves (with these defaults)."""
    if "head" not in df or df["head"].isna().all():
        return df
    heads = df[df["head"].notna()]
    if by not in heads:
        raise ValueError(f"no column {by!r} to choose the probe grid's best heads by; pass by= one of "
                         f"{', '.join(c for c in heads if str(c).endswith('accuracy'))}")
    keys = [key for key in ("stage", "trial") if key in heads] + [budget_col]
    completed = heads["status"].isin(COMPLETED) if "status" in heads else pd.Series(True, index=heads.index)
    ranked = heads.assign(_completed=completed).sort_values(["_completed", by], ascending=[False, mode == "min"],
                                                            na_position="last", kind="stable")
    picked = ranked.groupby(keys, sort=False, dropna=False).head(1).drop(columns="_completed")
    return pd.concat([df[df["head"].isna()], picked]).sort_index()


def _points(df: pd.DataFrame, cols: _Cols) -> pd.DataFrame:
    """One row per (source, budget, seed) with `accuracy`: the completed trials' metric, averaged over
    repeated trials (of a probe grid, the best head per budget: `best_heads`). Leaves out (with a
    warning) trials not completed, without the metric or a budget."""
    if cols.budget in df:
        df = best_heads(df, budget_col=cols.budget)
    if cols.source not in df and cols.source == "source":  # a frame not made by load_experiment
        df = df.assign(source=df[PRETRAINED].map(source_label) if PRETRAINED in df else SCRATCH)
    missing = [c for c in cols if c not in df]
    if missing:
        raise ValueError(f"no column {', '.join(map(repr, missing))} in the trials (columns: {', '.join(map(str, df))});"
                         " pass the right names as source_col=, budget_col=, seed_col=, metric=")
    if "stage" in df and df["stage"].nunique() > 1:
        stages = ", ".join(map(str, df["stage"].unique()))
        raise ValueError(f"the trials come from several stages ({stages}): pass one of them, e.g. "
                         f"df[df['stage'] == {df['stage'].iloc[-1]!r}]")
    if "status" in df:
        dropped = df.loc[~df["status"].isin(COMPLETED), "status"]
        if len(dropped):
            counts = ", ".join(f"{state}: {n}" for state, n in dropped.value_counts().items())
            warnings.warn(f"left out {len(dropped)} trial(s) that did not finish ({counts})", stacklevel=3)
        df = df[df["status"].isin(COMPLETED)]
    points = pd.DataFrame({cols.source: df[cols.source].astype(str), cols.seed: df[cols.seed],
                           cols.budget: pd.to_numeric(df[cols.budget], errors="coerce"),
                           "accuracy": pd.to_numeric(df[cols.metric], errors="coerce")})
    unusable = points["accuracy"].isna() | ~(points[cols.budget] > 0)
    if unusable.any():
        warnings.warn(f"left out {int(unusable.sum())} trial(s) without {cols.metric} or a positive "
                      f"{cols.budget} (a label budget of None or 0 means all images)", stacklevel=3)
    points = points[~unusable]
    return points.groupby([cols.source, cols.budget, cols.seed], as_index=False, sort=True)["accuracy"].mean()


def labels_needed(accuracy: float, budgets: np.ndarray, accuracies: np.ndarray) -> tuple[float, str]:
    """Labels n' that scratch training needs to reach `accuracy`, and whether n' is a bound.

    budgets: labelled images of the measured scratch trials, any order; accuracies: their accuracy.
    The curve is made monotone (running maximum over increasing budgets), then inverted linearly
    in log n. Returns (n', '') inside the measured range, (largest budget, '>=') when `accuracy` is above
    every scratch accuracy, (smallest budget, '<=') when it is at or below the smallest budget's.
    """
    order = np.argsort(budgets)
    n, acc = np.asarray(budgets, float)[order], np.maximum.accumulate(np.asarray(accuracies, float)[order])
    reached = np.flatnonzero(acc >= accuracy)
    if len(reached) == 0:
        return float(n[-1]), ">="
    i = reached[0]
    if i == 0:
        return float(n[0]), "<="
    t = (accuracy - acc[i - 1]) / (acc[i] - acc[i - 1])  # acc[i - 1] < accuracy <= acc[i]
    return float(np.exp(np.log(n[i - 1]) + t * (np.log(n[i]) - np.log(n[i - 1])))), ""


def _utility_rows(points: pd.DataFrame, cols: _Cols) -> pd.DataFrame:
    scratch = points[points[cols.source] == SCRATCH]
    if scratch.empty:
        raise ValueError(f"no '{SCRATCH}' trials to compare with (trials without Wrapper.pretrained); "
                         f"sources: {', '.join(points[cols.source].unique()) or 'none'}")
    mean_curve = scratch.groupby(cols.budget)["accuracy"].mean()
    curves = {seed: (group[cols.budget].to_numpy(), group["accuracy"].to_numpy())
              for seed, group in scratch.groupby(cols.seed)}
    rows = []
    for point in points[points[cols.source] != SCRATCH].to_dict("records"):
        seed, n, a = point[cols.seed], point[cols.budget], point["accuracy"]
        curve = curves.get(seed, (mean_curve.index.to_numpy(), mean_curve.to_numpy()))
        needed, bound = labels_needed(a, *curve)
        rows.append({cols.source: point[cols.source], cols.budget: n, cols.seed: seed, "accuracy": a,
                     "labels_needed": needed, "utility": needed / n - 1, "bound": bound,
                     "scratch_curve": "seed" if seed in curves else "mean"})
    columns = [cols.source, cols.budget, cols.seed, "accuracy", "labels_needed", "utility", "bound", "scratch_curve"]
    return pd.DataFrame(rows, columns=columns)


def utility_per_seed(df: pd.DataFrame, *, source_col: str = "source", budget_col: str = "BaseDataset.semisupervised",
                     seed_col: str = "seed", metric: str = "test_at_best") -> pd.DataFrame:
    """Utility of each pretrained (source, budget, seed); scratch rows are the reference, not in the result.

    df: one row per trial (`load_experiment`). Trials repeated with the same source, budget and seed
    are averaged. Returns one row per pretrained (source, budget, seed) with `accuracy` (a, the metric),
    `labels_needed` (n', labelled images scratch training needs for a; a bound where `bound` says so),
    `utility` (n'/n - 1, n = the budget), `bound` ('' exact; '>=': a beats every scratch trial, n' is
    beyond the largest scratch budget; '<=': a is at or below scratch at the smallest budget) and
    `scratch_curve` ('seed': the scratch trials of the same seed; 'mean': that seed has none, so the
    mean over seeds of the scratch accuracy at each budget).
    """
    cols = _Cols(source_col, budget_col, seed_col, metric)
    return _utility_rows(_points(df, cols), cols)


def _mean_ci(values: np.ndarray, n_boot: int, ci: float, seed: int) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI of the mean; a fresh RNG per call, so a group's interval does
    not depend on the other groups. The CI is NaN for a single value (no spread to resample)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    lo, hi = np.quantile(np.asarray(values, float)[draws].mean(axis=1), [(1 - ci) / 2, (1 + ci) / 2])
    return mean, float(lo), float(hi)


def _check_boot(n_boot: int, ci: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot = {n_boot}: use at least 1 bootstrap resample (2000 is the default)")
    if not 0 < ci < 1:
        raise ValueError(f"ci = {ci}: give the confidence level as a fraction, e.g. 0.95")


def _combined_bound(bounds: pd.Series) -> str:
    found = set(bounds) - {""}
    return "?" if len(found) > 1 else found.pop() if found else ""


def _stats(frame: pd.DataFrame, cols: _Cols, value: str, n_boot: int, ci: float, seed: int) -> pd.DataFrame:
    """Per (source, budget): the mean of `value` over seeds, its bootstrap interval (`<value>_lo`,
    `<value>_hi`), the combined `bound` where `frame` has bounds, and `seeds`."""
    bounded = "bound" in frame
    rows = []
    for (source, budget), group in frame.groupby([cols.source, cols.budget], sort=True):
        mean, lo, hi = _mean_ci(group[value].to_numpy(), n_boot, ci, seed)
        rows.append({cols.source: source, cols.budget: budget, value: mean, f"{value}_lo": lo, f"{value}_hi": hi,
                     **({"bound": _combined_bound(group["bound"])} if bounded else {}), "seeds": len(group)})
    return pd.DataFrame(rows, columns=[cols.source, cols.budget, value, f"{value}_lo", f"{value}_hi",
                                       *(["bound"] if bounded else []), "seeds"])


def calc_utility(df: pd.DataFrame, *, source_col: str = "source", budget_col: str = "BaseDataset.semisupervised",
                 seed_col: str = "seed", metric: str = "test_at_best", n_boot: int = 2000, ci: float = 0.95,
                 seed: int = 0) -> pd.DataFrame:
    """Utility of each pretrained (source, budget), over seeds (see `utility_per_seed`).

    Returns one row per (source, budget): `utility` (mean over seeds; a bounded seed enters at its bound),
    `utility_lo`, `utility_hi` (percentile-bootstrap `ci` interval of that mean over seeds, `n_boot`
    resamples from an RNG seeded with `seed`: the same numbers every call; NaN with one seed), `bound`
    ('' when every seed is exact, '>=' when some are lower bounds, so the mean is one too, '<=' when some
    are upper bounds, '?' when both occur: then the mean is neither) and `seeds` (how many).

    With few seeds the interval is crude: with 3, a resample of the lowest seed three times has
    probability 1/27 > 2.5%, so the 95% interval spans the seeds' own range. The seeds vary the
    initialisation, the augmentation and the batch order; every seed sees the same labelled
    images (the budget's class-balanced subset is fixed by the dataset, not by the seed).
    """
    _check_boot(n_boot, ci)
    cols = _Cols(source_col, budget_col, seed_col, metric)
    return _stats(_utility_rows(_points(df, cols), cols), cols, "utility", n_boot, ci, seed)


def summary(df: pd.DataFrame, *, source_col: str = "source", budget_col: str = "BaseDataset.semisupervised",
            seed_col: str = "seed", metric: str = "test_at_best", n_boot: int = 2000, ci: float = 0.95,
            seed: int = 0) -> pd.DataFrame:
    """Accuracy and utility per (source, budget), scratch included; indexed by (`source_col`, `budget_col`).

    Columns: `accuracy` (mean of `metric` over seeds), `accuracy_lo`, `accuracy_hi` (bootstrap CI over
    seeds), `seeds` (how many), then `utility`, `utility_lo`, `utility_hi`, `bound` as in `calc_utility`
    (NaN for scratch).
    """
    _check_boot(n_boot, ci)
    cols = _Cols(source_col, budget_col, seed_col, metric)
    points = _points(df, cols)
    accuracy = _stats(points, cols, "accuracy", n_boot, ci, seed).set_index([cols.source, cols.budget])
    utility = _stats(_utility_rows(points, cols), cols, "utility", n_boot, ci, seed)
    utility = utility.set_index([cols.source, cols.budget])
    return accuracy.join(utility.drop(columns="seeds"), how="left")


# --- plots -----------------------------------------------------------------------------------

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


def _finish(figure: Figure, ax: Axes, budget_col: str, budgets: pd.Series, ylabel: str, path: str | Path | None,
            extra: Sequence[Any] = ()) -> Figure:
    """Log x axis, labels, legend (with `extra` handles); save to `path` when given."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    budgets = sorted({float(x) for x in budgets})
    if budgets:  # a tick at every measured budget, written as a plain number
        ax.xaxis.set_major_locator(FixedLocator(budgets))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel(f"labelled training images ({budget_col})")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + list(extra), fontsize="small")
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def accuracy_plot(df: pd.DataFrame, path: str | Path | None = None, *, source_col: str = "source",
                  budget_col: str = "BaseDataset.semisupervised", seed_col: str = "seed",
                  metric: str = "test_at_best", n_boot: int = 2000, ci: float = 0.95, seed: int = 0,
                  ax: Axes | None = None) -> Figure:
    """Accuracy (`metric`, mean over seeds) against labelled images on a log axis: one line per source,
    scratch in black, with the bootstrap `ci` band. Draws on `ax` if given, else on a new Figure.
    Returns the Figure; saves it to `path` when given (format from the suffix, PNG without one)."""
    _check_boot(n_boot, ci)
    cols = _Cols(source_col, budget_col, seed_col, metric)
    stats = _stats(_points(df, cols), cols, "accuracy", n_boot, ci, seed)
    figure, ax = _axes(ax)
    for source in _ordered(stats[source_col]):
        rows = stats[stats[source_col] == source]
        color = "black" if source == SCRATCH else None
        (line,) = ax.plot(rows[budget_col], rows["accuracy"], marker="o", color=color, label=source)
        ax.fill_between(rows[budget_col], rows["accuracy_lo"], rows["accuracy_hi"], color=line.get_color(), alpha=0.2)
    return _finish(figure, ax, budget_col, stats[budget_col], f"{metric} (mean over seeds, {ci:.0%} CI)", path)


def utility_plot(df: pd.DataFrame, path: str | Path | None = None, *, source_col: str = "source",
                 budget_col: str = "BaseDataset.semisupervised", seed_col: str = "seed",
                 metric: str = "test_at_best", n_boot: int = 2000, ci: float = 0.95, seed: int = 0,
                 ax: Axes | None = None) -> Figure:
    """Utility (n'/n - 1, mean over seeds) against labelled images on a log axis: one line per pretrained
    source with the bootstrap `ci` band, a line at 0 (no gain over scratch). Exact points are filled
    circles; bounds are hollow: triangle up '>=' (beyond the largest scratch budget), triangle down '<='
    (at or below the smallest), diamond '?' (both among the seeds). Returns the Figure; saves it to
    `path` when given (format from the suffix, PNG without one)."""
    from matplotlib.lines import Line2D

    _check_boot(n_boot, ci)
    cols = _Cols(source_col, budget_col, seed_col, metric)
    stats = _stats(_utility_rows(_points(df, cols), cols), cols, "utility", n_boot, ci, seed)
    figure, ax = _axes(ax)
    ax.axhline(0, color="black", linewidth=1)
    for source in _ordered(stats[source_col]):
        rows = stats[stats[source_col] == source]
        (line,) = ax.plot(rows[budget_col], rows["utility"], label=source)
        color = line.get_color()
        ax.fill_between(rows[budget_col], rows["utility_lo"], rows["utility_hi"], color=color, alpha=0.2)
        for bound, marker in BOUND_MARKERS.items():
            at = rows[rows["bound"] == bound]
            ax.scatter(at[budget_col], at["utility"], marker=marker, s=40, zorder=3, edgecolors=color,
                       facecolors=color if bound == "" else "white")
    shown = [b for b in (">=", "<=", "?") if (stats["bound"] == b).any()]
    proxies = [Line2D([], [], linestyle="", marker=BOUND_MARKERS[b], color="gray", markerfacecolor="white",
                      label={">=": "lower bound", "<=": "upper bound", "?": "mixed bounds"}[b]) for b in shown]
    return _finish(figure, ax, budget_col, stats[budget_col], f"utility n'/n - 1 (mean over seeds, {ci:.0%} CI)", path,
                   proxies)
