"""util.vis: utility of pretraining against hand-computed values, its bootstrap over seeds, the plots,
and the `source`/`stage` columns through `load_experiment` on hand-written trial folders. Pure pandas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import paths
from selfstudy import folders
from selfstudy.errors import UserError
from util import vis

BUDGET = "BaseDataset.semisupervised"
SCRATCH_CURVE = {10: 0.5, 100: 0.7, 1000: 0.9}  # labelled images -> test accuracy
PNG = b"\x89PNG\r\n\x1a\n"


def trials(points: list[tuple[str, int, int, float]], **columns: list) -> pd.DataFrame:
    """One row per trial from (source, budget, seed, test_at_best)."""
    frame = pd.DataFrame(points, columns=["source", BUDGET, "seed", "test_at_best"])
    return frame.assign(**columns)


def scratch(seeds: tuple[int, ...] = (0,), curve: dict[int, float] = SCRATCH_CURVE) -> list:
    return [("scratch", n, seed, acc) for seed in seeds for n, acc in curve.items()]


def test_utility_inverts_the_scratch_curve_in_log_labels() -> None:
    per_seed = vis.utility_per_seed(trials(scratch() + [("rotate", 10, 0, 0.6)]))
    row = per_seed.iloc[0]
    assert len(per_seed) == 1 and row["source"] == "rotate" and row[BUDGET] == 10
    assert row["labels_needed"] == pytest.approx(10 ** 1.5)  # halfway from 0.5 to 0.7: halfway from log 10 to log 100
    assert row["utility"] == pytest.approx(10 ** 1.5 / 10 - 1) and row["utility"] == pytest.approx(2.1623, abs=1e-4)
    assert row["bound"] == "" and row["scratch_curve"] == "seed"


def test_utility_outside_the_scratch_budgets_is_a_bound() -> None:
    per_seed = vis.utility_per_seed(trials(scratch() + [("above", 100, 0, 0.95), ("below", 100, 0, 0.4),
                                                        ("at_min", 10, 0, 0.5)])).set_index("source")
    assert per_seed.loc["above", ["labels_needed", "utility", "bound"]].tolist() == [1000, pytest.approx(9.0), ">="]
    assert per_seed.loc["below", ["labels_needed", "utility", "bound"]].tolist() == [10, pytest.approx(-0.9), "<="]
    assert per_seed.loc["at_min", ["utility", "bound"]].tolist() == [pytest.approx(0.0), "<="]


def test_a_dip_in_the_scratch_curve_is_flattened_before_inverting() -> None:
    needed, bound = vis.labels_needed(0.75, np.array([1000, 10, 100]), np.array([0.7, 0.5, 0.8]))
    assert bound == "" and needed == pytest.approx(10 ** (1 + 0.25 / 0.3))  # running max: 0.5, 0.8, 0.8
    assert vis.labels_needed(0.85, np.array([10, 100, 1000]), np.array([0.5, 0.8, 0.7])) == (1000, ">=")


def test_a_seed_without_scratch_trials_uses_the_mean_scratch_curve() -> None:
    other = {10: 0.3, 100: 0.5, 1000: 0.7}
    frame = trials(scratch((0,)) + scratch((2,), other) + [("rotate", 10, 0, 0.6), ("rotate", 10, 1, 0.6)])
    per_seed = vis.utility_per_seed(frame).set_index("seed")
    assert per_seed.loc[0, "scratch_curve"] == "seed" and per_seed.loc[1, "scratch_curve"] == "mean"
    assert per_seed.loc[1, "labels_needed"] == pytest.approx(100)  # mean curve 0.4/0.6/0.8 reaches 0.6 at 100


def test_utility_over_seeds_has_a_reproducible_bootstrap_interval() -> None:
    accuracies = [0.6, 0.62, 0.58, 0.65, 0.61]  # every seed above scratch at 10 labels: utility > 0
    frame = trials(scratch(tuple(range(5))) + [("rotate", 10, s, a) for s, a in enumerate(accuracies)])
    per_seed = vis.utility_per_seed(frame)
    table = vis.calc_utility(frame, n_boot=500)
    row = table.iloc[0]
    assert len(table) == 1 and row["seeds"] == 5 and row["bound"] == ""
    assert row["utility"] == pytest.approx(per_seed["utility"].mean())
    assert 0 < row["utility_lo"] < row["utility"] < row["utility_hi"]  # excludes 0, contains the mean
    pd.testing.assert_frame_equal(table, vis.calc_utility(frame, n_boot=500))
    assert not vis.calc_utility(frame, n_boot=500, seed=1).equals(table)


def test_bounded_seeds_enter_the_mean_at_their_bound() -> None:
    frame = trials(scratch((0, 1, 2)) + [("a", 10, 0, 0.6), ("a", 10, 1, 0.95), ("a", 10, 2, 0.6),
                                         ("b", 100, 0, 0.95), ("b", 100, 1, 0.4)])
    table = vis.calc_utility(frame).set_index("source")
    assert table.loc["a", "bound"] == ">=" and table.loc["b", "bound"] == "?"
    assert table.loc["a", "utility"] == pytest.approx((2 * (10 ** 0.5 - 1) + 99) / 3)
    assert table.loc["b", "utility"] == pytest.approx((9 - 0.9) / 2)


def test_unfinished_trials_are_left_out_with_a_warning() -> None:
    frame = trials(scratch() + [("rotate", 10, 0, 0.6), ("rotate", 10, 0, 0.99), ("rotate", 10, 0, 0.1)],
                   status=["finished"] * 3 + ["stopped", "errored", "running"])
    with pytest.warns(UserWarning, match=r"left out 2 trial\(s\)"):
        per_seed = vis.utility_per_seed(frame)
    assert per_seed["utility"].tolist() == [pytest.approx(10 ** 0.5 - 1)]


def test_a_missing_column_or_scratch_reference_is_named() -> None:
    with pytest.raises(ValueError, match="test_at_best"):
        vis.calc_utility(trials(scratch()).drop(columns="test_at_best"))
    with pytest.raises(ValueError, match="no 'scratch' trials"):
        vis.calc_utility(trials([("rotate", 10, 0, 0.6)]))


def test_summary_is_indexed_by_source_and_budget() -> None:
    frame = trials(scratch((0, 1)) + [("rotate", 10, 0, 0.6), ("rotate", 10, 1, 0.62)])
    table = vis.summary(frame, n_boot=200)
    assert table.index.names == ["source", BUDGET]
    assert list(table.index) == [("rotate", 10), ("scratch", 10), ("scratch", 100), ("scratch", 1000)]
    assert list(table.columns) == ["accuracy", "accuracy_lo", "accuracy_hi", "seeds", "utility", "utility_lo",
                                   "utility_hi", "bound"]
    assert table.loc[("rotate", 10), "accuracy"] == pytest.approx(0.61)
    assert table.loc[("scratch", 100), "seeds"] == 2 and math.isnan(table.loc[("scratch", 100), "utility"])
    assert table.loc[("rotate", 10), "utility"] > 0


def test_plots_write_png_files(tmp_path: Path) -> None:
    frame = trials(scratch((0, 1)) + [("rotate", 10, 0, 0.6), ("rotate", 10, 1, 0.65), ("rotate", 100, 0, 0.95),
                                      ("rotate", 100, 1, 0.93), ("simclr", 10, 0, 0.45), ("simclr", 100, 0, 0.8)])
    for plot, name in ((vis.accuracy_plot, "accuracy.png"), (vis.utility_plot, "utility.png")):
        figure = plot(frame, tmp_path / name, n_boot=100)
        assert (tmp_path / name).read_bytes()[:8] == PNG
        assert figure.axes[0].get_xscale() == "log"


def write_trial(trial_dir: Path, config: dict, accuracies: list[float]) -> None:
    trial_dir.mkdir(parents=True)
    (trial_dir / folders.PARAMS_FILE).write_text(json.dumps(config))
    lines = [{"training_iteration": i + 1, "test_at_best": acc, "done": i + 1 == len(accuracies)}
             for i, acc in enumerate(accuracies)]
    (trial_dir / folders.RESULTS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))


def config(budget: int, seed: int = 0, **bindings: str) -> dict:
    return {"gin_config": ["digits/r9/classify"], "gin_params": bindings, "seed": seed, BUDGET: budget}


@pytest.fixture
def exp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(paths, "EXP_DIR", tmp_path / "exp")
    return tmp_path / "exp"


def test_load_experiment_labels_sources(exp_dir: Path) -> None:
    study = exp_dir / "study"
    for name, budget, acc in (("trial_a", 10, 0.5), ("trial_b", 100, 0.7), ("trial_c", 1000, 0.9)):
        write_trial(study / name, config(budget), [acc - 0.1, acc])
    write_trial(study / "trial_d", config(10, **{"Wrapper.pretrained": '"study/pretrain/syn_r9_rotate"'}), [0.6])
    write_trial(study / "trial_e", {**config(100), "Wrapper.pretrained": None}, [0.7])
    write_trial(study / "trial_f", {**config(100), "Wrapper.pretrained": "other/pretrain/simclr/"}, [0.8])
    pd.testing.assert_frame_equal(vis.load_experiment(study), vis.load_experiment("study"))  # by folder or name
    frame = vis.load_experiment("study").set_index("trial")
    assert frame["source"].to_dict() == {"trial_a": "scratch", "trial_b": "scratch", "trial_c": "scratch",
                                         "trial_d": "syn_r9_rotate", "trial_e": "scratch", "trial_f": "simclr"}
    assert (frame["stage"] == "").all() and (frame["status"] == "finished").all()
    utility = vis.calc_utility(frame).set_index("source")
    assert utility.loc["syn_r9_rotate", "utility"] == pytest.approx(10 ** 0.5 - 1)
    with pytest.raises(UserError, match="no experiment 'nothing'"):
        vis.load_experiment("nothing")
    assert vis.source_label(float("nan")) == vis.source_label("") == "scratch"
    assert vis.source_label("study/trial_x/checkpoint_000002/snapshot") == "checkpoint_000002"


def test_stage_names_the_folder_of_a_multi_stage_study(exp_dir: Path) -> None:
    study = exp_dir / "study"
    write_trial(study / "pretrain" / "trial_p", config(100), [0.3])
    write_trial(study / "finetune" / "trial_f", config(100, **{"Wrapper.pretrained": '"study/pretrain/rot"'}), [0.8])
    # a study's record lists its stages in the order they run (not the folders' alphabetical order)
    folders.write_json(study / folders.EXPERIMENT_FILE, {"stages": ["pretrain", "finetune"], "completed": []})
    frame = vis.load_experiment("study")
    assert frame[["stage", "trial", "source"]].values.tolist() == [["pretrain", "trial_p", "scratch"],
                                                                   ["finetune", "trial_f", "rot"]]
    assert vis.load_history("study")["stage"].tolist() == ["pretrain", "finetune"]  # in the order they ran


def test_a_whole_study_is_refused_until_one_stage_is_chosen() -> None:
    frame = pd.DataFrame({"stage": ["pretrain", "transfer"], "source": ["scratch", "scratch"], "seed": [0, 0],
                          "BaseDataset.semisupervised": [None, 10], "test_at_best": [None, 0.5]})
    with pytest.raises(ValueError, match="several stages .*df\\[df\\['stage'\\] == 'transfer'\\]"):
        vis.calc_utility(frame)
