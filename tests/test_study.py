"""Studies end to end: stages chained through published snapshots, best-epoch test scores,
a killed driver resumed, and the hyperparameter search config, through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray.tune import ExperimentAnalysis

from conftest import ROOT, Workspace, write_ray_config
from selfstudy import folders
from test_faults import wait_for
from util import vis

NET = ["ResNet.width = 4", "BaseDataset.num_valid = 64", "dataloader.batch_size = 32"]

# Pretraining learns (lr > 0); transfer at lr 0 keeps whatever weights it starts from.
STUDY = """
from ray import tune

metric, mode = "mean_accuracy", "max"
stages = [
    {"name": "pretrain",
     "search_space": {"gin_config": tune.grid_search(["digits/r9/rotate", "digits/r9/classify"]),
                      "scheduler.milestones": [1, 2], "scheduler.target_lrs": [0.05, 0.0]}},
    {"name": "transfer", "pretrained_from": "pretrain",
     "search_space": {"BaseDataset.semisupervised": tune.grid_search([60, 120]),
                      "Wrapper.ignore_pretrained_fc": True, "optimizer.lr": 0.0,
                      "scheduler.milestones": [1, 2], "scheduler.target_lrs": [0.0, 0.0],
                      "session.test_iters": -1, "session.test_when": "best"}},
]
"""


def backbone(snapshot: Path) -> dict[str, torch.Tensor]:
    """The backbone's parameters in a snapshot (BatchNorm running statistics move at lr 0 too)."""
    model = torch.load(snapshot, map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in model.items() if k.startswith("backbone.") and "running_" not in k
            and "num_batches" not in k}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_transfer_weights(study_dir: Path) -> pd.DataFrame:
    """Every transfer trial ends with the weights it started from: its source's, or (scratch) none of them."""
    published = {place.name: backbone(place / folders.SNAPSHOT)
                 for place in folders.moved_snapshots(study_dir / "pretrain").values()}
    assert sorted(published) == ["classify", "rotate"]
    assert not same(published["classify"], published["rotate"])
    frame = vis.load_experiment(study_dir)
    transfer = frame[frame["stage"] == "transfer"]
    assert sorted(transfer["source"]) == ["classify", "classify", "rotate", "rotate", "scratch", "scratch"]
    labels = {(row["seed"], row["BaseDataset.semisupervised"], row["source"]): json.loads(
        (study_dir / "transfer" / row["trial"] / "trial.json").read_text())["labels"] for _, row in transfer.iterrows()}
    for (seed, budget, _), seen in labels.items():  # a pretrained and a scratch trial of one seed are a pair
        assert seen == labels[seed, budget, "scratch"] and seen["train"]["images"] == budget
    for _, row in transfer.iterrows():
        final = backbone(folders.latest_snapshot(study_dir / "transfer" / row["trial"]))
        if row["source"] == "scratch":
            assert not any(same(final, weights) for weights in published.values())
        else:
            assert row["Wrapper.pretrained"] == f"{study_dir.name}/pretrain/{row['source']}"
            assert same(final, published[row["source"]]), row["trial"]
    return frame


def test_a_study_runs_its_stages_in_order_in_process(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, STUDY)
    done = workspace.run("-e", "study", "-l", "-q", "-r", str(config), "-p", *NET)
    assert done.returncode == 0, done.stdout + done.stderr
    study_dir = workspace.exp_dir / "study"
    record = json.loads((study_dir / folders.EXPERIMENT_FILE).read_text())
    assert record["stages"] == record["completed"] == ["pretrain", "transfer"]
    frame = check_transfer_weights(study_dir)
    assert (frame["status"] == "finished").all()
    assert list(frame["stage"]) == ["pretrain"] * 2 + ["transfer"] * 6
    transfer = frame[frame["stage"] == "transfer"]
    assert transfer["test_at_best"].notna().all() and transfer["best_epoch"].between(1, 2).all()
    # the study can be analysed as it stands
    table = vis.summary(transfer)
    assert set(table.index.get_level_values(0)) == {"classify", "rotate", "scratch"}
    results = {t: (t / folders.RESULTS_FILE).read_text() for t in folders.trial_dirs(study_dir)}
    again = workspace.run("-e", "study", "-l", "-q", "--resume")  # a completed study has nothing left to run
    assert again.returncode == 0, again.stderr
    assert {t: (t / folders.RESULTS_FILE).read_text() for t in folders.trial_dirs(study_dir)} == results

    # a crash after the pretraining stage ended, with one of its two snapshots published: --resume
    # publishes the other and runs the transfer stage, and no pretraining trial runs again
    shutil.rmtree(study_dir / "transfer")
    record = json.loads((study_dir / folders.EXPERIMENT_FILE).read_text())
    folders.write_json(study_dir / folders.EXPERIMENT_FILE, {**record, "completed": []})
    rotate = study_dir / "pretrain" / "rotate"
    origin = json.loads((rotate / "snapshot.json").read_text())
    os.replace(rotate / folders.SNAPSHOT, study_dir / "pretrain" / origin["trial"] / origin["checkpoint"] / "snapshot")
    shutil.rmtree(rotate)
    pretrain_results = {t: results[t] for t in folders.trial_dirs(study_dir / "pretrain")}
    again = workspace.run("-e", "study", "-l", "-q", "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {t: (t / folders.RESULTS_FILE).read_text() for t in folders.trial_dirs(study_dir / "pretrain")} \
        == pretrain_results
    check_transfer_weights(study_dir)

    # --resume keeps the settings the study started with: new ones, or a changed module, are refused
    refused = workspace.run("-e", "study", "-l", "-q", "--resume", "-p", "ResNet.width = 8")
    assert refused.returncode == 2 and "drop -p" in refused.stderr, refused.stderr
    config.write_text(STUDY + "\n# edited\n")
    refused = workspace.run("-e", "study", "-l", "-q", "--resume")
    assert refused.returncode == 2 and "changed since 'study' started" in refused.stderr, refused.stderr


def test_a_killed_study_resumes_in_its_transfer_stage_without_rerunning_trials(workspace: Workspace,
                                                                                tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, STUDY)
    process = workspace.popen("-e", "study", "-q", "-r", str(config), "-p", *NET)
    transfer = workspace.exp_dir / "study" / "transfer"

    def finished_transfer_trials() -> list[Path]:
        found = folders.trial_dirs(transfer) if transfer.is_dir() else []
        return [t for t in found if folders.trial_status(t).state == "finished"]

    def recorded_finished() -> set[str]:
        """The transfer trials that Ray's saved run state lists as finished (Tune saves it about
        every second under TUNE_GLOBAL_CHECKPOINT_S = 1): --resume must not run them again. A
        trial that finished after the last save runs its last epochs again from its checkpoint."""
        try:
            trials = ExperimentAnalysis(str(transfer)).trials
        except (ValueError, OSError, json.JSONDecodeError):  # no state saved yet, or being replaced
            return set()
        recorded = {Path(trial.path).name for trial in trials if trial.status == "TERMINATED"}
        seen.update(recorded)  # the state file is rewritten in place: a later read can miss it
        return recorded

    seen: set[str] = set()
    wait_for(lambda: len(recorded_finished()) >= 2, process, "two finished transfer trials", limit=400, every=1.0)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and every Ray process it started
    process.communicate(timeout=60)
    assert 2 <= len(finished_transfer_trials()) < 6  # killed in the middle of the stage
    recorded_finished()  # what the last save holds, where it can be read
    assert len(seen) >= 2
    before = {name: (len(folders.read_results(transfer / name)),
                     json.loads((transfer / name / "trial.json").read_text())["pid"]) for name in seen}
    pretrain_results = {t.name: (t / folders.RESULTS_FILE).read_text()
                        for t in folders.trial_dirs(workspace.exp_dir / "study" / "pretrain")}

    resumed = workspace.run("-e", "study", "--resume", "-q", timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for name, (epochs, pid) in before.items():  # trials recorded as finished were not run again
        assert len(folders.read_results(transfer / name)) == epochs
        assert json.loads((transfer / name / "trial.json").read_text())["pid"] == pid
    assert {t.name: (t / folders.RESULTS_FILE).read_text()
            for t in folders.trial_dirs(workspace.exp_dir / "study" / "pretrain")} == pretrain_results
    frame = check_transfer_weights(workspace.exp_dir / "study")
    assert (frame["status"] == "finished").all() and len(frame) == 8
    for trial_dir in folders.trial_dirs(transfer):  # Ray's own TensorBoard files, one point per epoch
        assert [step for step, _ in scalars(trial_dir, "ray/tune/valid_accuracy")] == [1, 2]


def test_test_at_best_is_the_test_score_of_the_best_validation_epoch(workspace: Workspace, tmp_path: Path) -> None:
    """Selected on the lowest validation accuracy (mode 'min'), the best epoch is an early one;
    testing every epoch and testing the kept weights once at the end agree on its test score."""
    config = write_ray_config(tmp_path, 'search_space = {}\nmetric, mode = "valid_accuracy", "min"\n')
    schedule = ["scheduler.milestones = [1, 4]", "scheduler.target_lrs = [0.05, 0.0]", "session.test_iters = -1"]
    for name, when in (("every", "epoch"), ("once", "best")):
        done = workspace.run("-e", name, "-l", "-q", "-r", str(config), "-p", *NET, *schedule,
                             f"session.test_when = '{when}'")
        assert done.returncode == 0, done.stdout + done.stderr
    every, once = vis.load_history("every"), vis.load_history("once")
    best = every["valid_accuracy"].idxmin()
    best_epoch = int(every.loc[best, "training_iteration"])
    assert best_epoch < 4  # not the last epoch
    last = every.iloc[-1]
    assert last["best_epoch"] == best_epoch and last["test_at_best"] == every.loc[best, "test_accuracy"]
    assert last["test_at_best"] != last["test_accuracy"]
    assert "test_accuracy" not in once.iloc[:-1].dropna(axis=1).columns  # tested once, at the end
    assert once.iloc[-1]["best_epoch"] == best_epoch
    assert once.iloc[-1]["test_at_best"] == pytest.approx(last["test_at_best"], abs=1e-6)
    assert vis.load_experiment("once")["test_at_best"].tolist() == once.iloc[-1:]["test_at_best"].tolist()


def test_the_search_config_samples_with_optuna_and_asha_stops_trials_early(workspace: Workspace,
                                                                           tmp_path: Path) -> None:
    shipped = (ROOT / "config" / "hparam_search.py").read_text()
    config = write_ray_config(tmp_path, shipped + "\nnum_samples = 6  # the test's budget\n")
    done = workspace.run("-e", "search", "-q", "-r", str(config), "-p", *NET, "BaseDataset.max_images = 300",
                         "scheduler.milestones = [1, 4]", "scheduler.target_lrs = [0.05, 0.0]", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = vis.load_experiment("search")
    assert len(frame) == 6
    assert frame["scheduler.scale"].nunique() == 6  # the searcher proposed six settings
    assert set(frame["status"]) <= {"finished", "stopped"}
    stopped = frame[frame["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["epoch"] < 4).all()
    assert (frame[frame["status"] == "finished"]["epoch"] == 4).all()


def scalars(trial_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trial_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_tensorboard_shows_every_epoch_of_in_process_trials(workspace: Workspace) -> None:
    done = workspace.run("-e", "board", "-l", "-q", "-p", *NET, "scheduler.milestones = [1, 2]",
                         "scheduler.target_lrs = [0.05, 0.0]")
    assert done.returncode == 0, done.stderr
    history = vis.load_history("board")
    trial_dir = folders.trial_dirs(workspace.exp_dir / "board")[0]
    shown = scalars(trial_dir, "ray/tune/valid_accuracy")
    assert [step for step, _ in shown] == [1, 2]
    assert [value for _, value in shown] == pytest.approx(history["valid_accuracy"].tolist())


def test_each_stage_gets_its_own_scheduler_and_the_shared_search_space(tmp_path: Path) -> None:
    """A scheduler set at the top of a study is every stage's default, but not one shared object:
    Tune binds a scheduler to one experiment's metric."""
    from selfstudy.rayconfig import import_config
    from selfstudy.study import load_study

    path = write_ray_config(tmp_path, """
from ray.tune.schedulers import ASHAScheduler
scheduler = ASHAScheduler()
search_space = {"ResNet.width": 4, "BaseDataset.num_valid": 64}
stages = [{"name": "a", "search_space": {}},
          {"name": "b", "search_space": {"ResNet.width": 8}, "pretrained_from": "a"}]
""")
    first, second = load_study(path, import_config(path)).stages
    assert type(first.config.scheduler) is type(second.config.scheduler)
    assert first.config.scheduler is not second.config.scheduler
    # the top's search_space is every stage's default; a stage's own entries win
    assert first.config.search_space == {"ResNet.width": 4, "BaseDataset.num_valid": 64}
    assert second.config.search_space == {"ResNet.width": 8, "BaseDataset.num_valid": 64}
