"""The statistics of util.pretraining_utility: simulated studies with a known true utility (coverage of the 95%
interval, bias of n'), the t quantile, the non-monotone warning and the default metric."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from util import stats, vis

BUDGET = "BaseDataset.semisupervised"
SCRATCH_BUDGETS = 50 * 2 ** np.arange(7)  # 50 to 3200 labelled images
PRETRAINED_BUDGETS = 50 * 2 ** np.arange(5)  # 50 to 800: twice each is a measured scratch budget


def scratch_accuracy(n: np.ndarray) -> np.ndarray:
    """Logistic in log n (unit width, midpoint 400 labels) from chance 0.1 towards 0.95."""
    return 0.1 + 0.85 * n / (n + 400)


def simulated_studies(studies: int, seeds: int, sd: float, rng: np.random.Generator) -> pd.DataFrame:
    """`studies` studies as one frame: study k's pretrained trials are source 'p<k>', each of its seeds has its
    own seed value and scratch curve. A pretrained trial at n labels scores the scratch accuracy at 2n (true
    utility 1.0); every trial adds normal noise of sd `sd`."""
    ids = np.arange(studies * seeds)
    noisy = scratch_accuracy(SCRATCH_BUDGETS)[None] + sd * rng.standard_normal((len(ids), len(SCRATCH_BUDGETS)))
    pretrained = scratch_accuracy(2 * PRETRAINED_BUDGETS)[None] + sd * rng.standard_normal((len(ids),
                                                                                            len(PRETRAINED_BUDGETS)))
    return pd.concat([
        pd.DataFrame({"source": "scratch", BUDGET: np.tile(SCRATCH_BUDGETS, len(ids)),
                      "seed": np.repeat(ids, len(SCRATCH_BUDGETS)), "test_at_best": noisy.ravel()}),
        pd.DataFrame({"source": np.repeat([f"p{i // seeds}" for i in ids], len(PRETRAINED_BUDGETS)),
                      BUDGET: np.tile(PRETRAINED_BUDGETS, len(ids)), "seed": np.repeat(ids, len(PRETRAINED_BUDGETS)),
                      "test_at_best": pretrained.ravel()})], ignore_index=True)


def test_the_95_interval_covers_the_true_utility_and_n_prime_is_unbiased() -> None:
    frame = simulated_studies(2000, seeds=5, sd=0.01, rng=np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rare noisy fall in some study's scratch curve
        table = vis.calc_utility(frame)
    assert len(table) == 2000 * len(PRETRAINED_BUDGETS) and (table["seeds"] == 5).all()
    exact = table[table["bound"] == ""]
    assert len(exact) > 0.99 * len(table)  # 2n is inside the measured range: bounds are rare
    covered = (exact["utility_lo"] <= 1.0) & (1.0 <= exact["utility_hi"])
    by_budget = covered.groupby(exact[BUDGET]).mean()
    assert by_budget.between(0.92, 0.98).all(), by_budget.to_dict()
    assert 0.93 <= covered.mean() <= 0.97
    estimated = exact[BUDGET] * (1 + exact["utility"])  # n' of each study
    bias = estimated.groupby(exact[BUDGET]).mean() / (2 * by_budget.index) - 1
    assert (bias.abs() < 0.05).all(), bias.to_dict()


def test_one_study_gives_the_same_numbers_alone_as_among_the_simulated_ones() -> None:
    frame = simulated_studies(3, seeds=5, sd=0.01, rng=np.random.default_rng(1))
    together = vis.calc_utility(frame).set_index(["source", BUDGET])
    study = ((frame["source"] == "scratch") & (frame["seed"] // 5 == 1)) | (frame["source"] == "p1")
    alone = vis.calc_utility(frame[study])  # study 1 of 3: its seeds are 5 to 9
    pd.testing.assert_frame_equal(alone.set_index(["source", BUDGET]), together.loc[["p1"]])


def test_t_quantiles_match_the_table() -> None:
    table = {1: 12.706205, 2: 4.302653, 4: 2.776445, 9: 2.262157, 30: 2.042272}  # 0.975 quantiles
    for dof, value in table.items():
        assert stats.t_quantile(0.975, dof) == pytest.approx(value, abs=1e-6)
    assert stats.t_quantile(0.95, 3) == pytest.approx(2.353363, abs=1e-6)
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        stats.t_quantile(0.975, 0)


def test_a_falling_scratch_curve_is_named_in_one_warning() -> None:
    frame = pd.DataFrame(
        [("scratch", 10, 0, 0.5), ("scratch", 100, 0, 0.8), ("scratch", 1000, 0, 0.7), ("rotate", 10, 0, 0.6),
         ("scratch", 10, 1, 0.5), ("scratch", 100, 1, 0.7), ("scratch", 1000, 1, 0.9), ("rotate", 10, 1, 0.6)],
        columns=["source", BUDGET, "seed", "test_at_best"])
    with pytest.warns(UserWarning) as caught:
        vis.calc_utility(frame)
    messages = [str(w.message) for w in caught]
    assert messages == ["the scratch accuracy falls with more labels on seed 0 (100 -> 1000 labels: 0.800 -> 0.700): "
                        "n' is read off a monotone fit (each fall pooled with its neighbours)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a monotone curve warns of nothing
        vis.calc_utility(frame[frame["seed"] == 1])


def test_the_default_metric_is_test_at_best_or_one_line_naming_what_to_pass() -> None:
    frame = pd.DataFrame([("scratch", 10, 0, 0.5, 0.55, 200), ("scratch", 100, 0, 0.7, 0.72, 200),
                          ("rotate", 10, 0, 0.6, 0.66, 200)],
                         columns=["source", BUDGET, "seed", "test_at_best", "best_accuracy", "valid_labels"])
    assert vis.summary(frame).loc[("rotate", 10), "accuracy"] == 0.6
    untested = frame.assign(test_at_best=float("nan"))
    for function in (vis.summary, vis.calc_utility, vis.utility_per_seed, vis.accuracy_plot, vis.utility_plot):
        with pytest.raises(ValueError) as raised:
            function(untested)
        assert str(raised.value) == ("the trials have no test_at_best (the test split was not evaluated: "
                                     "session.test_iters = 0); pass metric='best_accuracy' (best validation "
                                     "accuracy: optimistic, it is the selection metric) or evaluate the test split")
    table = vis.summary(untested, metric="best_accuracy")
    assert table.loc[("rotate", 10), "accuracy"] == 0.66
    assert table.loc[("rotate", 10), "utility"] == pytest.approx(10 ** (0.11 / 0.17) - 1)
    assert (table["valid_labels"] == 200).all()
    with pytest.raises(ValueError, match=r"no test_at_best .*pass metric='<score>' with one of their scores \(none\)"):
        vis.summary(untested.drop(columns=["test_at_best", "best_accuracy"]))
