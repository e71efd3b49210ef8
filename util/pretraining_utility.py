"""Utility of pretraining (the 2020 definition), as tables (plots: `util.plots`); `util.vis` re-exports all of it.

A pretrained model reaches accuracy a with n labelled images; scratch training needs n' labels
to reach a (read off the scratch curve, linear in log n between measured budgets); utility =
n'/n - 1. 0 means pretraining is worth nothing, 1 that it saves as many labels as were used.
The scratch curve is made monotone by an isotonic fit in log n (`util.stats.monotone_curve`;
a warning names the seeds and budgets where it falls). Outside the measured scratch budgets n'
is not extrapolated: the utility is then a bound (`bound` '>=' or '<='), as it is ('<=') where a
pretrained trial ties scratch's best measured accuracy (a ceiling) or lies above the fit where a
scratch trial measured it (the top pooled a fall), and a (source, budget)
where any seed is a bound is reported as a bound, never as a mean with an interval.
Intervals are Student t-intervals over seeds (`calc_utility` says what they cover).

The functions take a DataFrame with one row per trial and the column names `source_col`,
`budget_col`, `seed_col` and `metric` (None: `test_at_best`, the test score at the best
validation epoch, which the trials must have); trials whose `status` is not 'finished' or
'stopped' are left out with a warning. A study's trials are passed one stage at a time
(`df[df["stage"] == "transfer"]`): pretraining trials would otherwise count as scratch.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from selfstudy.results import COMPLETED, PRETRAINED, SCRATCH, source_label
from selfstudy.selection import test_metric
from util.stats import falls, monotone_curve, read_off, t_interval

TEST_METRIC = "test_at_best"  # the default metric
VALID_LABELS = "valid_labels"  # labelled validation images a trial picked its epoch with (a reported metric)


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


SCORES = ("mean_accuracy", "best_accuracy", TEST_METRIC)  # reported scores besides the train_/valid_/test_ metrics


def score_columns(df: pd.DataFrame) -> list[str]:
    """The trials' reported scores that a utility can be read from (numeric, measured somewhere),
    not their settings or Ray's bookkeeping (seed, pid, timestamp, training_iteration, ...)."""
    return sorted(str(c) for c in df.select_dtypes("number")
                  if (str(c).startswith(("train_", "valid_", "test_")) or c in SCORES) and c != VALID_LABELS
                  and df[c].notna().any())


def metric_problem(df: pd.DataFrame, metric: str | None, how: str = "metric='{}'") -> str | None:
    """Why `metric` (None: test_at_best) cannot be read off these trials, in one line naming what
    to pass (`how`: the API's "metric='{}'" or a command's "--metric {}"); None when it can."""
    scores = score_columns(df)
    if metric is None:
        if TEST_METRIC in scores:
            return None
        what = (f"{how.format('best_accuracy')} (best validation accuracy: optimistic, it is the selection metric)"
                if "best_accuracy" in scores else f"{how.format('<score>')} with one of their scores "
                f"({', '.join(scores) or 'none'})")
        return (f"the trials have no {TEST_METRIC} (the test split was not evaluated: session.test_iters = 0); "
                f"pass {what} or evaluate the test split")
    if metric not in scores:
        return f"{how.format(metric)}: the trials report no such score; choose one of: {', '.join(scores) or 'none'}"
    return None


def _cols(df: pd.DataFrame, source_col: str, budget_col: str, seed_col: str, metric: str | None) -> _Cols:
    """The column names, with `metric` None resolved: `test_at_best` where the trials have it, else one line
    that names what to pass."""
    if metric is None:
        problem = metric_problem(df, None)
        if problem:
            raise ValueError(problem)
        metric = TEST_METRIC
    return _Cols(source_col, budget_col, seed_col, metric)


def _points(df: pd.DataFrame, cols: _Cols) -> pd.DataFrame:
    """One row per (source, budget, seed) with `accuracy`: the completed trials' metric, averaged over
    repeated trials (of a probe grid, the best head per budget: `best_heads`), and `valid_labels` (their
    largest; NaN where the trials do not report it). Leaves out (with a warning) trials not completed,
    without the metric or a budget."""
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
                           "accuracy": pd.to_numeric(df[cols.metric], errors="coerce"),
                           VALID_LABELS: pd.to_numeric(df[VALID_LABELS], errors="coerce") if VALID_LABELS in df
                           else math.nan})
    unusable = points["accuracy"].isna() | ~(points[cols.budget] > 0)
    if unusable.any():
        warnings.warn(f"left out {int(unusable.sum())} trial(s) without {cols.metric} or a positive "
                      f"{cols.budget} (a label budget of None or 0 means all images)", stacklevel=3)
    return points[~unusable].groupby([cols.source, cols.budget, cols.seed], as_index=False, sort=True).agg(
        accuracy=("accuracy", "mean"), valid_labels=(VALID_LABELS, "max"))


def _warn_falls(curves: dict[Any, tuple[np.ndarray, np.ndarray]]) -> None:
    """One warning naming the scratch curves (by seed) whose accuracy falls, and between which budgets."""
    found = [f"{name} ({lo:g} -> {hi:g} labels: {a:.3f} -> {b:.3f})" for name, curve in curves.items()
             for lo, hi, a, b in falls(*curve)]
    if found:
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        warnings.warn(f"the scratch accuracy falls with more labels on {'; '.join(found[:5])}{more}: n' is read off "
                      "a monotone fit (each fall pooled with its neighbours)", stacklevel=4)


def _utility_rows(points: pd.DataFrame, cols: _Cols) -> pd.DataFrame:
    scratch = points[points[cols.source] == SCRATCH]
    if scratch.empty:
        raise ValueError(f"no '{SCRATCH}' trials to compare with (trials without Wrapper.pretrained); "
                         f"sources: {', '.join(points[cols.source].unique()) or 'none'}")
    pretrained = points[points[cols.source] != SCRATCH]
    raw = {seed: (group[cols.budget].to_numpy(), group["accuracy"].to_numpy())
           for seed, group in scratch.groupby(cols.seed)}
    used = {f"seed {seed}": raw[seed] for seed in pretrained[cols.seed].unique() if seed in raw}
    mean = scratch.groupby(cols.budget)["accuracy"].mean()  # for seeds without scratch trials
    if not set(pretrained[cols.seed]) <= set(raw):
        used["the mean over seeds"] = (mean.index.to_numpy(), mean.to_numpy())
    _warn_falls(used)
    curves = {seed: monotone_curve(*curve) for seed, curve in raw.items()}
    mean_curve = monotone_curve(mean.index.to_numpy(), mean.to_numpy())
    rows = []
    for point in pretrained.to_dict("records"):
        seed, n, a = point[cols.seed], point[cols.budget], point["accuracy"]
        needed, bound = read_off(a, curves.get(seed, mean_curve))
        rows.append({cols.source: point[cols.source], cols.budget: n, cols.seed: seed, "accuracy": a,
                     "labels_needed": needed, "utility": needed / n - 1, "bound": bound,
                     "scratch_curve": "seed" if seed in curves else "mean"})
    columns = [cols.source, cols.budget, cols.seed, "accuracy", "labels_needed", "utility", "bound", "scratch_curve"]
    return pd.DataFrame(rows, columns=columns)


def utility_per_seed(df: pd.DataFrame, *, source_col: str = "source", budget_col: str = "BaseDataset.semisupervised",
                     seed_col: str = "seed", metric: str | None = None) -> pd.DataFrame:
    """Utility of each pretrained (source, budget, seed); scratch rows are the reference, not in the result.

    df: one row per trial (`load_experiment`). Trials repeated with the same source, budget and seed
    are averaged. Returns one row per pretrained (source, budget, seed) with `accuracy` (a, the metric),
    `labels_needed` (n', labelled images scratch training needs for a; a bound where `bound` says so),
    `utility` (n'/n - 1, n = the budget), `bound` ('' exact; '>=': a beats the scratch curve, n' is
    beyond the largest scratch budget; '<=': a is at or below scratch at the smallest budget, or at the top scratch
    measured (tied with its best, or above the fit where a scratch trial reached it), so scratch may need fewer
    labels than n') and
    `scratch_curve` ('seed': the scratch trials of the same seed, which trained on the same labelled
    images; 'mean': that seed has none, so the mean over seeds of the scratch accuracy at each budget).
    """
    cols = _cols(df, source_col, budget_col, seed_col, metric)
    return _utility_rows(_points(df, cols), cols)


def accuracy_per_seed(df: pd.DataFrame, *, source_col: str = "source", budget_col: str = "BaseDataset.semisupervised",
                      seed_col: str = "seed", metric: str | None = None) -> pd.DataFrame:
    """One row per (source, budget, seed) with `accuracy` (the metric; trials repeated with the same
    source, budget and seed averaged; of a probe grid, the best head per budget by validation
    accuracy) and `valid_labels`: the points every summary here starts from."""
    return _points(df, _cols(df, source_col, budget_col, seed_col, metric))


def _check_ci(ci: float) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci = {ci}: give the confidence level as a fraction, e.g. 0.95")


def proportion(df: pd.DataFrame, metric: str) -> bool:
    """Whether `metric` is an accuracy, a proportion whose interval is cut to [0, 1]. `test_at_best` is the
    test counterpart of each trial's selection metric (its `metric` param, 'mean_accuracy' where the trials
    do not record it): an accuracy unless some trial selected on e.g. `valid_loss`."""
    if metric != TEST_METRIC:
        return "accuracy" in metric
    selected = df["metric"].dropna().unique() if "metric" in df else ["mean_accuracy"]
    return all("accuracy" in test_metric(str(name)) for name in selected)


def _accuracy_stats(points: pd.DataFrame, cols: _Cols, ci: float, clip: bool) -> pd.DataFrame:
    """Per (source, budget): mean `accuracy` over seeds, its t-interval (cut to [0, 1], where the mean is, when
    `clip`: an accuracy, see `proportion`), `seeds`, `valid_labels` (the largest)."""
    groups = points.groupby([cols.source, cols.budget], sort=True)
    stats = groups["accuracy"].agg(["mean", "std", "count"])
    lo, hi = t_interval(stats["mean"], stats["std"], stats["count"], ci)
    if clip:
        lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    return pd.DataFrame({"accuracy": stats["mean"], "accuracy_lo": lo, "accuracy_hi": hi,
                         "seeds": stats["count"].astype(int), VALID_LABELS: groups[VALID_LABELS].max()}).reset_index()


def _utility_stats(rows: pd.DataFrame, cols: _Cols, ci: float) -> pd.DataFrame:
    """Per (source, budget): the geometric mean over seeds of n'/n, minus 1, with its t-interval (`calc_utility`)."""
    rows = rows.assign(log_ratio=np.log(rows["labels_needed"].astype(float) / rows[cols.budget].astype(float)),
                       above=rows["bound"] == ">=", below=rows["bound"] == "<=")
    groups = rows.groupby([cols.source, cols.budget], sort=True)
    stats = groups["log_ratio"].agg(["mean", "std", "count"])
    above, below = groups["above"].sum().to_numpy(), groups["below"].sum().to_numpy()
    bound = np.where((above > 0) & (below > 0), "?", np.where(above > 0, ">=", np.where(below > 0, "<=", "")))
    lo, hi = t_interval(stats["mean"], stats["std"], stats["count"], ci)
    exact = bound == ""
    return pd.DataFrame({"utility": np.where(bound == "?", math.nan, np.exp(stats["mean"]) - 1),
                         "utility_lo": np.where(exact, np.exp(lo) - 1, math.nan),
                         "utility_hi": np.where(exact, np.exp(hi) - 1, math.nan), "bound": bound,
                         "bound_seeds": (above + below).astype(int), "seeds": stats["count"].astype(int)},
                        index=stats.index).reset_index()


def calc_utility(df: pd.DataFrame, *, source_col: str = "source", budget_col: str = "BaseDataset.semisupervised",
                 seed_col: str = "seed", metric: str | None = None, ci: float = 0.95) -> pd.DataFrame:
    """Utility of each pretrained (source, budget), over seeds (see `utility_per_seed`).

    Returns one row per (source, budget): `utility` = exp(mean over seeds of ln(n'_s/n)) - 1, the
    utility of the geometric mean of the seeds' n' (n' is read in log n; this mean is less biased
    by noise than the plain mean), `utility_lo`, `utility_hi` (its Student t `ci` interval, seeds - 1
    degrees of freedom, on ln(n'/n); NaN with one seed), `bound`, `bound_seeds` (how many seeds
    are bounds) and `seeds` (how many). Where any seed is a bound, `bound` is '>=' (some n' are
    beyond the largest scratch budget), '<=' (some at or below the smallest, or at the top scratch measured: see `read_off`) or '?'
    (both), `utility`
    is the bound on the geometric mean (the bounded seeds at their bound; NaN for '?') and there
    is no interval.

    What the interval covers: exp(E[ln(n'_s/n)]) - 1, the expectation taken over seeds, n'_s being a
    seed's pretrained accuracy read off its own monotone scratch curve. A seed varies the initialisation,
    the augmentation, the batch order and, where the dataset draws each seed's labelled subset
    (unless `BaseDataset.subset_seed` fixes it), which images are labelled; a pretrained and a scratch
    trial of one seed train on the same images, so they are compared as a pair. Seeds are taken as
    independent draws and ln(n'_s/n) as near normal. Simulated with a known true utility of 1
    (`tests/test_utility_stats.py`: logistic scratch curve in log n, accuracy noise sd 0.01 or 0.02
    per trial), the 95% interval covers it in 0.93 to 0.96 of studies with 3, 5 or 10 seeds, and n'
    is within 2% (sd 0.01) or 3.5% (sd 0.02) of the truth. Where the scratch curve is nearly flat
    against the noise (a plateau), n' comes out too large (by 9% where the curve rises 0.03 over a
    doubling, sd 0.01) and the interval covers less, the more so the more seeds (0.86 with 10).
    """
    _check_ci(ci)
    cols = _cols(df, source_col, budget_col, seed_col, metric)
    return _utility_stats(_utility_rows(_points(df, cols), cols), cols, ci)


def summary(df: pd.DataFrame, *, source_col: str = "source", budget_col: str = "BaseDataset.semisupervised",
            seed_col: str = "seed", metric: str | None = None, ci: float = 0.95) -> pd.DataFrame:
    """Accuracy and utility per (source, budget), scratch included; indexed by (`source_col`, `budget_col`).

    Columns: `accuracy` (mean of `metric` over seeds), `accuracy_lo`, `accuracy_hi` (Student t `ci`
    interval over seeds, cut to [0, 1] for an accuracy; NaN with one), `seeds` (how many), `valid_labels` (the most labelled validation
    images a trial of the group picked its epoch with; NaN where the trials do not report it), then
    `utility`, `utility_lo`, `utility_hi`, `bound`, `bound_seeds` as in `calc_utility` (NaN for scratch).
    """
    _check_ci(ci)
    cols = _cols(df, source_col, budget_col, seed_col, metric)
    points = _points(df, cols)
    accuracy = _accuracy_stats(points, cols, ci, proportion(df, cols.metric))
    accuracy = accuracy.set_index([cols.source, cols.budget])
    utility = _utility_stats(_utility_rows(points, cols), cols, ci).set_index([cols.source, cols.budget])
    return accuracy.join(utility.drop(columns="seeds"), how="left")
