"""The statistics behind `util.pretraining_utility`: a monotone scratch curve, n' read off it, t-intervals.

Pure numpy (no scipy: Student's t quantile is computed here, exactly, for whole degrees of
freedom). Budgets are numbers of labelled images; accuracies are fractions.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

TIE = 1e-9  # accuracies closer than this are equal (the same count of test images, summed in another order)


def _t_central(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with `dof` degrees of freedom, t >= 0 (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    sin, cos = math.sin(theta), math.cos(theta)
    if dof % 2:  # odd: (2/pi) (theta + sin (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... up to cos^(dof-2)))
        term, total = cos, 0.0
        for k in range(1, (dof - 1) // 2 + 1):
            total += term
            term *= cos * cos * 2 * k / (2 * k + 1)
        return 2 / math.pi * (theta + sin * total)
    term, total = 1.0, 0.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(dof-2))
    for k in range(1, dof // 2 + 1):
        total += term
        term *= cos * cos * (2 * k - 1) / (2 * k)
    return sin * total


@lru_cache(maxsize=256)
def t_quantile(p: float, dof: int) -> float:
    """The `p` quantile (0.5 <= p < 1) of Student's t with `dof` >= 1 degrees of freedom: exact CDF, bisection
    to 1e-12 (t_quantile(0.975, 4) = 2.776445...)."""
    if not 0.5 <= p < 1 or dof < 1:
        raise ValueError(f"t_quantile({p}, {dof}): need 0.5 <= p < 1 and at least 1 degree of freedom")
    target, hi = 2 * p - 1, 1.0
    while _t_central(hi, dof) < target:
        hi *= 2
    lo = 0.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, dof) < target else (lo, mid)
    return (lo + hi) / 2


def t_interval(mean: np.ndarray, sd: np.ndarray, count: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Student t `ci` interval (lo, hi) of a mean from the sample mean, sample sd (ddof 1) and count, elementwise;
    NaN where count < 2."""
    count = np.asarray(count, int)
    q = np.array([t_quantile((1 + ci) / 2, int(c) - 1) if c >= 2 else math.nan for c in count.ravel()])
    half = q.reshape(count.shape) * np.asarray(sd, float) / np.sqrt(np.maximum(count, 1))
    return np.asarray(mean, float) - half, np.asarray(mean, float) + half


class Curve(NamedTuple):
    """A monotone scratch curve: knots (`log_n` increasing, `accuracy` never falling) and the measured
    points it was fitted to (`budgets` in increasing order, labelled images, and their `measured` accuracy)."""
    log_n: np.ndarray
    accuracy: np.ndarray
    budgets: np.ndarray
    measured: np.ndarray

    @property
    def smallest(self) -> float:
        return float(self.budgets[0])

    @property
    def largest(self) -> float:
        return float(self.budgets[-1])


def monotone_curve(budgets: np.ndarray, accuracies: np.ndarray) -> Curve:
    """The isotonic (pool-adjacent-violators) fit of accuracy against log n: a dip is pooled with its neighbours
    into their mean, placed at their mean log n, so no point is replaced by a noisy maximum. Equal accuracies
    (a plateau, e.g. 1.000 at 300 and 1,000 labels) stay apart: the accuracy is first reached at the smaller
    budget, which is what scratch training needs, not at the plateau's middle.
    budgets: labelled images, any order, each once; accuracies: their accuracy."""
    order = np.argsort(budgets)
    n, acc = np.asarray(budgets, float)[order], np.asarray(accuracies, float)[order]
    blocks: list[list[float]] = []  # [sum of log n, sum of accuracy, count]
    for x, y in zip(np.log(n), acc):
        blocks.append([x, y, 1])
        while len(blocks) > 1 and blocks[-2][1] * blocks[-1][2] > blocks[-1][1] * blocks[-2][2]:  # falling
            x2, y2, c2 = blocks.pop()
            blocks[-1] = [blocks[-1][0] + x2, blocks[-1][1] + y2, blocks[-1][2] + c2]
    knots = np.array([[x / c, y / c] for x, y, c in blocks])
    return Curve(knots[:, 0], knots[:, 1], n, acc)


def falls(budgets: np.ndarray, accuracies: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Where accuracy falls from one budget to the next: (budget, next budget, its accuracy, the next's)."""
    order = np.argsort(budgets)
    n, acc = np.asarray(budgets, float)[order], np.asarray(accuracies, float)[order]
    return [(n[i], n[i + 1], acc[i], acc[i + 1]) for i in range(len(n) - 1) if acc[i + 1] < acc[i]]


def read_off(accuracy: float, curve: Curve) -> tuple[float, str]:
    """Labels n' at which `curve` reaches `accuracy`, linear in log n between knots, and whether n' is a bound:
    (n', '') inside the fit's range, (largest budget, '>=') above every measured point, (smallest budget, '<=')
    at or below the fit's bottom. Where a scratch trial measured `accuracy` (or more) with fewer labels than
    the fit gives, n' is at most that trial's budget (the first such): (that budget, '<='). This is where the
    fit pooled a fall (0.997 at 3,000 labels and 0.992 at 8,000 pool into 0.9945: 0.996 lies above the fit,
    and the fit reaches 0.994 only beyond 3,000 labels) and where `accuracy` ties scratch's best measured accuracy (1.000 where scratch reached
    1.000 at 300 labels). A scratch trial got there with that many labels, maybe with fewer, and the fit
    cannot say how many fewer, so seeds read off there are no exact value (five of them would give an
    interval of width 0). n' never falls as `accuracy` rises. Accuracies within `TIE` of each other are equal."""
    if math.isnan(accuracy):
        raise ValueError("read_off: the accuracy is NaN")
    best = curve.measured.max()
    if accuracy > best + TIE:
        return curve.largest, ">="
    reached = float(curve.budgets[curve.measured >= accuracy - TIE][0])  # the first scratch trial that measured it
    if accuracy >= best - TIE or accuracy > curve.accuracy[-1]:
        return reached, "<="
    if accuracy <= curve.accuracy[0] + TIE:
        return curve.smallest, "<="
    i = int(np.searchsorted(curve.accuracy, accuracy))  # accuracy[i - 1] < accuracy <= accuracy[i]
    t = (accuracy - curve.accuracy[i - 1]) / (curve.accuracy[i] - curve.accuracy[i - 1])
    needed = float(math.exp(curve.log_n[i - 1] + t * (curve.log_n[i] - curve.log_n[i - 1])))
    if reached < needed * (1 - 1e-12):
        return reached, "<="
    return needed, ""


def labels_needed(accuracy: float, budgets: np.ndarray, accuracies: np.ndarray) -> tuple[float, str]:
    """Labels n' that scratch training needs to reach `accuracy`, and whether n' is a bound.

    budgets: labelled images of the measured scratch trials, any order; accuracies: their accuracy.
    The curve is made monotone by pool-adjacent-violators in log n (a fall is pooled with its
    neighbours into their mean accuracy at their mean log n: `monotone_curve`), then
    inverted linearly in log n. Returns (n', '') inside the measured range, (largest budget, '>=')
    when `accuracy` is above the fitted curve and every measured point (`read_off`), (smallest budget, '<=')
    when it is at or below its start, (the first budget that measured it, '<=') when it ties scratch's best
    or lies above the fit's top but not above every measured point.
    """
    return read_off(accuracy, monotone_curve(budgets, accuracies))
