"""util.vis: utility of pretraining against hand-computed values, its t-interval over seeds, bounds, the
plots, misc/utility_figure.py's table and provenance, and the `source`/`stage` columns through
`load_experiment` on hand-written trial folders. Pure pandas and matplotlib; the statistics' coverage
is simulated in test_utility_stats.py."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import paths
from selfstudy import folders
from selfstudy.errors import UserError
from util import vis
from util.ranks import rank_agreement, ranks, spearman

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


def test_a_dip_in_the_scratch_curve_is_pooled_with_its_neighbour_before_inverting() -> None:
    # 100 and 1000 labels pooled into 0.75 at 10 ** 2.5 (their mean log n), not the running maximum 0.8, 0.8
    needed, bound = vis.labels_needed(0.6, np.array([1000, 10, 100]), np.array([0.7, 0.5, 0.8]))
    assert bound == "" and needed == pytest.approx(10 ** (1 + 0.4 * 1.5))  # 0.6 is 2/5 of the way from 0.5 to 0.75
    budgets, dipping = np.array([10, 100, 1000]), np.array([0.5, 0.8, 0.7])
    # the fit reaches 0.7 at 10 ** 2.2 and 0.75 at 10 ** 2.5, but scratch measured 0.8 with 100 labels: at most 100
    assert vis.labels_needed(0.7, budgets, dipping) == (100, "<=")
    assert vis.labels_needed(0.75, budgets, dipping) == (100, "<=")
    assert vis.labels_needed(0.76, budgets, dipping) == (100, "<=")  # above the fit, but 100 labels measured 0.8
    assert vis.labels_needed(0.81, budgets, dipping) == (1000, ">=")  # above every measured point
    found = [vis.labels_needed(a, budgets, dipping)[0] for a in np.linspace(0.5, 0.8, 31)]
    assert found == sorted(found)  # n' never falls as the accuracy rises
    with pytest.raises(ValueError, match="NaN"):
        vis.labels_needed(math.nan, budgets, dipping)


def test_above_a_pooled_top_that_a_scratch_trial_reached_is_a_bound_at_that_budget() -> None:
    # 0.997 at 1000 and 0.992 at 3000 pool into 0.9945: 0.996 lies above the fit, but scratch measured it at 1000,
    # so scratch needs at most 1000 labels, as for a tie with scratch's best (0.997, or the same count of images)
    budgets, falling = np.array([100, 1000, 3000]), np.array([0.9, 0.997, 0.992])
    assert vis.labels_needed(0.996, budgets, falling) == (1000, "<=")
    assert vis.labels_needed(0.997 + 1e-12, budgets, falling) == (1000, "<=")
    assert vis.labels_needed(0.994, budgets, falling) == (1000, "<=")  # just under the pooled top, as above it
    assert vis.labels_needed(0.998, budgets, falling) == (3000, ">=")  # above every measured point


def test_a_tie_with_the_scratch_ceiling_is_a_bound_at_the_plateau_s_first_budget() -> None:
    # scratch at the ceiling from 300 labels on: a pretrained 1.0 needs at most 300 scratch labels (not the
    # plateau's middle), and five seeds tied there are a '<=' bound, not an interval of width 0
    budgets, ceiling = np.array([100, 300, 1000]), np.array([0.95, 1.0, 1.0])
    assert vis.labels_needed(1.0, budgets, ceiling) == (pytest.approx(300), "<=")
    rising = np.array([0.9, 0.95, 0.99])  # a tie with the best, reached only at the largest budget
    assert vis.labels_needed(0.99, budgets, rising) == (pytest.approx(1000), "<=")
    frame = trials([("scratch", n, s, a) for s in range(5) for n, a in zip(budgets, ceiling)]
                   + [("rotate", 1000, s, 1.0) for s in range(5)])
    row = vis.calc_utility(frame).iloc[0]
    assert (row["bound"], row["bound_seeds"], row["utility"]) == ("<=", 5, pytest.approx(-0.7))
    assert math.isnan(row["utility_lo"]) and math.isnan(row["utility_hi"])
    assert vis.labels_needed(0.975, budgets, ceiling) == (pytest.approx(math.sqrt(100 * 300)), "")


def test_a_seed_without_scratch_trials_uses_the_mean_scratch_curve() -> None:
    other = {10: 0.3, 100: 0.5, 1000: 0.7}
    frame = trials(scratch((0,)) + scratch((2,), other) + [("rotate", 10, 0, 0.6), ("rotate", 10, 1, 0.6)])
    per_seed = vis.utility_per_seed(frame).set_index("seed")
    assert per_seed.loc[0, "scratch_curve"] == "seed" and per_seed.loc[1, "scratch_curve"] == "mean"
    assert per_seed.loc[1, "labels_needed"] == pytest.approx(100)  # mean curve 0.4/0.6/0.8 reaches 0.6 at 100


def test_utility_over_seeds_is_a_geometric_mean_with_a_t_interval() -> None:
    accuracies = [0.6, 0.62, 0.58, 0.65, 0.61]  # every seed above scratch at 10 labels: utility > 0
    frame = trials(scratch(tuple(range(5))) + [("rotate", 10, s, a) for s, a in enumerate(accuracies)])
    per_seed = vis.utility_per_seed(frame)
    log_ratio = np.log(per_seed["labels_needed"] / 10)  # = ln 10 * (a - 0.5) / 0.2 on the 10 to 100 segment
    assert log_ratio.to_numpy() == pytest.approx(np.log(10) * (np.array(accuracies) - 0.5) / 0.2)
    half = 2.776445 * log_ratio.std() / np.sqrt(5)  # t quantile 0.975 with 4 degrees of freedom
    table = vis.calc_utility(frame)
    row = table.iloc[0]
    assert len(table) == 1 and row["seeds"] == 5 and row["bound"] == "" and row["bound_seeds"] == 0
    assert row["utility"] == pytest.approx(np.exp(log_ratio.mean()) - 1)
    assert row["utility_lo"] == pytest.approx(np.exp(log_ratio.mean() - half) - 1, rel=1e-6)
    assert row["utility_hi"] == pytest.approx(np.exp(log_ratio.mean() + half) - 1, rel=1e-6)
    assert 0 < row["utility_lo"] < row["utility"] < row["utility_hi"]  # excludes 0, contains the estimate
    narrow = vis.calc_utility(frame, ci=0.5).iloc[0]
    assert row["utility_lo"] < narrow["utility_lo"] < narrow["utility_hi"] < row["utility_hi"]


def test_a_point_with_a_bounded_seed_is_a_bound_with_its_count_and_no_interval() -> None:
    frame = trials(scratch((0, 1, 2)) + [("a", 10, 0, 0.6), ("a", 10, 1, 0.95), ("a", 10, 2, 0.6),
                                         ("b", 100, 0, 0.95), ("b", 100, 1, 0.4)])
    table = vis.calc_utility(frame).set_index("source")
    assert table.loc["a", ["bound", "bound_seeds", "seeds"]].tolist() == [">=", 1, 3]
    # n'/n of 10 ** 0.5, 100 (at its bound: 1000 labels) and 10 ** 0.5: geometric mean 10, a lower bound
    assert table.loc["a", "utility"] == pytest.approx(9.0)
    assert table.loc["b", ["bound", "bound_seeds", "seeds"]].tolist() == ["?", 2, 2]
    assert math.isnan(table.loc["b", "utility"])  # one seed above, one below scratch: no bound on the mean
    assert table[["utility_lo", "utility_hi"]].isna().all().all()  # never a mean with an interval


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
    table = vis.summary(frame)
    assert table.index.names == ["source", BUDGET]
    assert list(table.index) == [("rotate", 10), ("scratch", 10), ("scratch", 100), ("scratch", 1000)]
    assert list(table.columns) == ["accuracy", "accuracy_lo", "accuracy_hi", "seeds", "valid_labels", "utility",
                                   "utility_lo", "utility_hi", "bound", "bound_seeds"]
    assert table.loc[("rotate", 10), "accuracy"] == pytest.approx(0.61)
    half = 12.706205 * np.std([0.6, 0.62], ddof=1) / np.sqrt(2)  # t quantile 0.975 with 1 degree of freedom
    assert table.loc[("rotate", 10), ["accuracy_lo", "accuracy_hi"]].tolist() == [pytest.approx(0.61 - half),
                                                                                  pytest.approx(0.61 + half)]
    assert table["valid_labels"].isna().all()  # these trials do not report it
    assert table.loc[("scratch", 100), "seeds"] == 2 and math.isnan(table.loc[("scratch", 100), "utility"])
    assert table.loc[("rotate", 10), "utility"] > 0


def test_only_an_accuracy_interval_is_cut_to_0_1() -> None:
    points = scratch((0, 1)) + [("rotate", 10, 0, 0.98), ("rotate", 10, 1, 0.999)]
    accuracy = vis.summary(trials(points))
    assert accuracy.loc[("rotate", 10), "accuracy_hi"] == 1.0  # the t-interval reaches above 1: cut
    loss = vis.summary(trials(points, metric=["valid_loss"] * len(points)))  # test_at_best is then test_loss
    assert loss.loc[("rotate", 10), "accuracy_hi"] > 1.0


def test_plots_write_png_files(tmp_path: Path) -> None:
    frame = trials(scratch((0, 1)) + [("rotate", 10, 0, 0.6), ("rotate", 10, 1, 0.65), ("rotate", 100, 0, 0.95),
                                      ("rotate", 100, 1, 0.93), ("simclr", 10, 0, 0.45), ("simclr", 100, 0, 0.8)],
                   valid_labels=[20, 200, 1000] * 2 + [20, 20, 200, 200, 20, 200])
    for plot, name in ((vis.accuracy_plot, "accuracy.png"), (vis.utility_plot, "utility.png")):
        figure = plot(frame, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == PNG
        assert figure.axes[0].get_xscale() == "log"
        assert figure.axes[0].get_title() == "selection: 20 to 1000 validation labels"


def test_the_utility_plot_draws_an_interval_for_exact_points_only() -> None:
    frame = trials(scratch((0, 1)) + [("rotate", 10, 0, 0.6), ("rotate", 10, 1, 0.65), ("rotate", 100, 0, 0.95),
                                      ("rotate", 100, 1, 0.8)])  # at 100 labels seed 0 beats every scratch trial
    ax = vis.utility_plot(frame).axes[0]
    bars = [segment for collection in ax.collections if hasattr(collection, "get_segments")
            for segment in collection.get_segments()]
    assert [segment[0][0] for segment in bars] == [10]  # one error bar, at the exact point
    table = vis.calc_utility(frame).set_index(BUDGET)
    assert bars[0][:, 1] == pytest.approx(table.loc[10, ["utility_lo", "utility_hi"]].tolist())
    assert "selection: validation labels not recorded" == ax.get_title()


def write_trial(trial_dir: Path, config: dict, accuracies: list[float], **metrics: float) -> None:
    trial_dir.mkdir(parents=True)
    (trial_dir / folders.PARAMS_FILE).write_text(json.dumps(config))
    lines = [{"training_iteration": i + 1, "test_at_best": acc, **metrics, "done": i + 1 == len(accuracies)}
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


def utility_figure():
    """misc/utility_figure.py as a module (misc/ is not a package)."""
    spec = importlib.util.spec_from_file_location("utility_figure", paths.ROOT / "misc" / "utility_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_utility_figure_prints_bounds_selection_labels_and_provenance(
        exp_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    study, module = exp_dir / "study", tmp_path / "study.py"
    module.write_text("stages = []  # stands for the study's module\n")
    sha = hashlib.sha256(module.read_bytes()).hexdigest()
    folders.write_json(study / folders.EXPERIMENT_FILE, {"ray_config": str(module), "module_sha256": sha,
                                                         "stages": ["transfer"], "completed": ["transfer"]})
    rotate = {"Wrapper.pretrained": '"study/pretrain/rotate"'}
    runs = [(f"s{seed}_{n}", config(n, seed), acc) for seed in range(3) for n, acc in SCRATCH_CURVE.items()]
    runs += [(f"r{seed}_{n}", config(n, seed, **rotate), acc)  # at 10 labels seed 2 beats every scratch trial
             for n, accs in ((10, (0.6, 0.62, 0.95)), (100, (0.75, 0.8, 0.78))) for seed, acc in enumerate(accs)]
    for name, settings, acc in runs:
        write_trial(study / "transfer" / name, settings, [acc], valid_labels=2 * settings[BUDGET])
        folders.write_json(study / "transfer" / name / "trial.json", {"git_commit": "0123456789abcdef" * 2 + "-dirty"})
    output = tmp_path / "figures" / "study"
    assert utility_figure().main(["-e", "study", "-o", str(output)]) == 0
    printed = capsys.readouterr().out.splitlines()
    commit = subprocess.run(["git", "-C", str(paths.ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    assert printed[0] == (f"Drawn by `python misc/utility_figure.py -e study -o {output}` at commit {commit} on "
                          f"{date.today().isoformat()} from stage 'transfer' (trials at 0123456-dirty); study "
                          f"{module} sha256 {sha}; selection: 20 to 2000 validation labels; test_at_best, 95% "
                          "t-intervals over seeds.")
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line for line in printed[2:]}
    # seeds' n'/n: 10 ** 0.5, 10 ** 0.6 and, at its bound of 1000 labels, 100; geometric mean 10 ** (3.1 / 3)
    assert rows[("rotate", "10", "3")].endswith(  # accuracy 0.723 +- 4.303 * 0.1966 / 3 ** 0.5, cut at 1
        f"| 20 | 0.723 [0.235, 1.000] | >={10 ** (3.1 / 3) - 1:.2f} (1 of 3 seeds beyond the largest scratch budget) |")
    exact = vis.calc_utility(vis.load_experiment("study")).set_index(BUDGET).loc[100]
    assert rows[("rotate", "100", "3")] == ("| rotate | 100 | 3 | 200 | 0.777 [0.714, 0.839] | "
                                            f"{exact.utility:.2f} [{exact.utility_lo:.2f}, {exact.utility_hi:.2f}] |")
    assert rows[("scratch", "1000", "3")] == "| scratch | 1000 | 3 | 2000 | 0.900 [0.900, 0.900] |  |"
    for name in ("utility", "accuracy"):
        text = Image.open(f"{output}_{name}.png").text
        assert text["Commit"] == commit and text["Study"] == f"study {module} sha256 {sha}"
        assert text["Selection"] == "selection: 20 to 2000 validation labels" and text["Description"] == printed[0]
    original = module.read_bytes()
    module.write_text("stages = []  # edited after the study ran\n")
    assert utility_figure().main(["-e", "study"]) == 0
    assert f"sha256 {sha} (the file differs now);" in capsys.readouterr().out
    checkout = tmp_path / "config"  # the study ran from another checkout, since removed; this one has the file
    checkout.mkdir()
    (checkout / module.name).write_bytes(original)
    module.unlink()
    monkeypatch.setattr(paths, "CONFIG_DIR", checkout)
    assert utility_figure().main(["-e", "study"]) == 0
    assert f"sha256 {sha} (the same file ran from {module});" in capsys.readouterr().out


def test_the_utility_figure_compares_each_matching_stage_with_its_own_scratch_trials(
        exp_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = exp_dir / "data"
    folders.write_json(study / folders.EXPERIMENT_FILE, {"stages": ["transfer_a", "transfer_b"], "completed": []})
    rotate = {"Wrapper.pretrained": '"data/pretrain/rotate"'}
    for stage, gain in (("transfer_a", 0.0), ("transfer_b", 0.1)):  # b's backbone is worth more labels
        for seed in range(2):
            for n, acc in SCRATCH_CURVE.items():
                write_trial(study / stage / f"s{seed}_{n}", config(n, seed), [acc + (0.1 if stage == "transfer_a" else 0)])
            write_trial(study / stage / f"r{seed}", config(100, seed, **rotate), [0.8 + gain])
    output = tmp_path / "data"
    assert utility_figure().main(["-e", "data", "--stage", "transfer_*", "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "stages 'transfer_a', 'transfer_b'" in printed.splitlines()[0]
    a, b = printed.split("stage transfer_a:")[1].split("stage transfer_b:")
    assert "| rotate | 100 | 2 | not recorded | 0.800 [0.800, 0.800] | 0.00 [0.00, 0.00] |" in a  # its own scratch
    assert ("| rotate | 100 | 2 | not recorded | 0.900 [0.900, 0.900] | <=9.00 (2 of 2 seeds at or below scratch "
            "at the smallest budget, or at the top scratch measured) |") in b  # 0.9: scratch's best, at 1000 labels
    single = utility_figure().main(["-e", "data", "--stage", "transfer_a", "-o", str(tmp_path / "one")])
    assert single == 0
    assert Image.open(f"{output}_utility.png").width == 2 * Image.open(f"{tmp_path / 'one'}_utility.png").width
    capsys.readouterr()
    assert utility_figure().main(["-e", "data", "--stage", "transfer_a", "--metric", "nosuch"]) == 2
    assert capsys.readouterr().err.startswith("error: stage 'transfer_a' of 'data': --metric nosuch: the trials "
                                              "report no such score; choose one of: ")
    (tmp_path / "taken_accuracy.png").mkdir()  # where the second figure would go: found only when it is drawn
    assert utility_figure().main(["-e", "data", "--stage", "transfer_a", "-o", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err == (f"error: cannot write {tmp_path / 'taken_accuracy.png'}: Is a directory; "
                                       "choose another -o\n")
    assert sorted(p.name for p in tmp_path.glob("taken*")) == ["taken_accuracy.png"]  # the first was not left


def test_rank_correlation_of_two_protocols() -> None:
    assert ranks(np.array([0.3, 0.1, 0.3, 0.5])).tolist() == [2.5, 4.0, 2.5, 1.0]  # ties share their mean rank
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)
    sources = ["scratch", "rotate", "simclr", "moco"]
    linear = pd.DataFrame([(s, seed, 0.5 + 0.1 * k + 0.01 * seed) for k, s in enumerate(sources) for seed in range(3)],
                          columns=["source", "seed", "accuracy"])
    same = rank_agreement(linear, linear.assign(accuracy=linear["accuracy"] + 0.2))
    assert (same["rho"], same["rho_lo"], same["rho_hi"], same["sources"], same["seeds"]) == (1.0, 1.0, 1.0, 4, 3)
    assert rank_agreement(linear, linear.assign(accuracy=-linear["accuracy"]))["rho"] == -1.0
    noisy = linear.assign(accuracy=linear["accuracy"] + np.where(linear["seed"] == 0, 0.3, 0) * (linear["source"] == "rotate"))
    found = rank_agreement(linear, noisy)  # one seed lifts rotate to the top: the interval shows it
    assert found["rho_lo"] < found["rho"] <= found["rho_hi"] == 1.0
    with pytest.raises(ValueError, match="at least 3 sources"):
        rank_agreement(linear[linear["source"].isin(sources[:2])], linear)


def test_the_rank_correlation_interval_covers_the_true_rho_in_simulated_studies() -> None:
    # 5 sources 0.01 apart, ranked differently by the two protocols (true rho 0.3), 3 seeds, accuracy noise sd 0.01
    # per trial: the hardest case of util.ranks' docstring, where the interval covers least (0.91 of 400 studies)
    rng = np.random.default_rng(0)
    first, second = np.array([0.70, 0.71, 0.72, 0.73, 0.74]), np.array([0.72, 0.70, 0.74, 0.71, 0.73])
    truth, studies, hits = float(spearman(first, second)), 200, 0
    cells = pd.MultiIndex.from_product([range(3), [str(k) for k in range(5)]], names=["seed", "source"])
    for k in range(studies):
        drawn = [pd.DataFrame({"accuracy": (true + rng.normal(0, 0.01, (3, 5))).ravel()}, index=cells).reset_index()
                 for true in (first, second)]
        found = rank_agreement(*drawn, n_boot=500, seed=k)
        hits += found["rho_lo"] <= truth <= found["rho_hi"]
    assert truth == pytest.approx(0.3) and 0.85 <= hits / studies <= 0.97


def test_the_rank_figure_ranks_sources_under_both_protocols(exp_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    study = exp_dir / "lvf"
    folders.write_json(study / folders.EXPERIMENT_FILE, {"stages": ["linear", "finetune"], "completed": []})
    linear = {"scratch": 0.3, "rotate": 0.7, "simclr": 0.6}
    finetune = {"scratch": 0.8, "rotate": 0.85, "simclr": 0.9}  # simclr and rotate swap places
    for stage, accuracies in (("linear", linear), ("finetune", finetune)):
        for source, acc in accuracies.items():
            start = {} if source == "scratch" else {"Wrapper.pretrained": f'"lvf/pretrain/{source}"'}
            for seed in range(2):
                write_trial(study / stage / f"{source}{seed}", config(100, seed, **start), [acc], valid_labels=20)
    output = tmp_path / "ranks"
    assert rank_figure().main(["-e", "lvf", "-o", str(output)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Drawn by `python misc/rank_figure.py -e lvf -o") and "selection: 20 validation" \
        in printed[0]
    assert "| rotate | 0.700 (1) | 0.850 (2) |" in printed and "| scratch | 0.300 (3) | 0.800 (3) |" in printed
    assert "Spearman's rho at 100 labels: 0.50 [0.50, 0.50] (3 sources, 2 seeds)" in printed
    assert Image.open(f"{output}.png").text["Description"] == printed[0]
    (tmp_path / "taken.png").mkdir()  # where the figure would go: one line, no traceback
    assert rank_figure().main(["-e", "lvf", "-o", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err == f"error: cannot write {tmp_path / 'taken.png'}: Is a directory; choose another -o\n"
    assert rank_figure().main(["-e", "lvf", "--linear", "probe"]) == 2
    assert "has no stage 'probe' (stages: finetune, linear)" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for script in (rank_figure(), utility_figure()):  # -o under a file: one line, nothing drawn
        assert script.main(["-e", "lvf", "-o", str(blocker / "ranks")]) == 2
        assert capsys.readouterr().err.startswith(f"error: -o {blocker / 'ranks'}: cannot make the folder {blocker}")
        assert script.main(["-e", "no_such_study", "-o", str(tmp_path / "new" / "ranks")]) == 2
        assert "no_such_study" in capsys.readouterr().err and not (tmp_path / "new").exists()  # no folder made


def rank_figure():
    spec = importlib.util.spec_from_file_location("rank_figure", paths.ROOT / "misc" / "rank_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
