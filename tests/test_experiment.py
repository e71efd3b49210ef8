"""End to end through the real CLI, real Ray Tune, real gin and torch, on tiny digits runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import paths
from conftest import ROOT, TINY, Workspace, write_ray_config
from selfstudy.data import DigitsDataset, data_options
from selfstudy.data.budget import split_digest
from util import vis

GRID = """
from ray import tune
search_space = {"BaseDataset.semisupervised": tune.grid_search([60, 120])}
checkpoint_at_end = True
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Workspace:
    """A 2-trial grid sweep run once through `main.py` with Ray; shared by the tests below."""
    root = tmp_path_factory.mktemp("grid")
    space = Workspace(root / "exp", data_dir)
    config = write_ray_config(root, GRID)
    done = space.run("-e", "grid", "-r", str(config), "-q", "-p", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    return space


@pytest.fixture
def grid_paths(grid: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setattr(paths, "EXP_DIR", grid.exp_dir)
    monkeypatch.setattr(paths, "DATA_DIR", grid.data_dir)
    return grid


def test_grid_trials_get_their_own_bindings(grid_paths: Workspace) -> None:
    frame = vis.load_experiment("grid")
    assert sorted(frame["BaseDataset.semisupervised"]) == [60, 120]
    assert set(frame["ResNet.width"]) == {4}  # -p bindings become columns too
    assert (frame["epoch"] == 2).all() and (frame["training_iteration"] == 2).all()
    for column in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "mean_accuracy", "best_accuracy"):
        assert frame[column].notna().all(), column
    assert (frame["best_accuracy"] >= frame["valid_accuracy"]).all()
    assert (frame["valid_labels"] == 64).all()  # the labelled images that picked the epoch
    for trial, budget in zip(frame["trial"], frame["BaseDataset.semisupervised"]):
        trial_dir = grid_paths.exp_dir / "grid" / trial
        assert f"BaseDataset.semisupervised = {budget}" in (trial_dir / "operative_config.gin").read_text()
        provenance = json.loads((trial_dir / "trial.json").read_text())
        assert provenance["seed"] == 0
        rows = DigitsDataset().split_rows(data_options(num_valid=64, semisupervised=int(budget), subset_seed=0))
        assert provenance["labels"] == split_digest(rows, 0)  # which images the trial saw, checkably
        assert provenance["labels"]["train"]["images"] == budget
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0:  # a copy without git history records None
            assert provenance["git_commit"].startswith(head.stdout.strip())
        assert len(trial) < 40  # short directory names; the config lives in params.json
        # TensorBoard's run names: runs/<the swept setting> links to the trial's folder
        assert (grid_paths.exp_dir / "grid" / "runs" / f"BaseDataset.semisupervised={budget}").resolve() == trial_dir


def test_history_has_one_row_per_epoch(grid_paths: Workspace) -> None:
    history = vis.load_history("grid")
    assert len(history) == 4
    assert sorted(history.groupby("trial")["training_iteration"].apply(list).tolist()) == [[1, 2], [1, 2]]


def test_local_mode_matches_ray(grid_paths: Workspace) -> None:
    done = grid_paths.run("-e", "local", "-l", "-q", "-p", *TINY, "BaseDataset.semisupervised = 60")
    assert done.returncode == 0, done.stderr
    local = vis.load_history("local")
    ray_history = vis.load_history("grid")
    ray_trial = ray_history[ray_history["BaseDataset.semisupervised"] == 60]
    for column in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
        assert local[column].tolist() == pytest.approx(ray_trial[column].tolist(), rel=1e-5), column


def test_move_snapshots_and_train_from_them(grid_paths: Workspace) -> None:
    exp = grid_paths.exp_dir / "grid"
    fmt = "budget_{cfg[BaseDataset.semisupervised]}"

    same_target = grid_paths.run("-e", "grid", script="misc/move_snapshots.py")
    assert same_target.returncode != 0 and "would both move to" in same_target.stderr

    for bad, message in (("{cfg[Nope.x]}", "no config key 'Nope.x'"), ("../../{cfg[seed]}", "outside")):
        refused = grid_paths.run("-e", "grid", "-p", bad, "-m", script="misc/move_snapshots.py")
        assert refused.returncode != 0 and message in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

    dry = grid_paths.run("-e", "grid", "-p", fmt, script="misc/move_snapshots.py")
    assert dry.returncode == 0
    assert dry.stdout.count("Moving from: ") == 2 and f"to: {exp / 'budget_60'}" in dry.stdout
    assert not (exp / "budget_60").exists()

    (exp / "budget_120").mkdir()
    (exp / "budget_120" / "snapshot").write_bytes(b"someone else's")
    existing = grid_paths.run("-e", "grid", "-p", fmt, "-m", script="misc/move_snapshots.py")
    assert existing.returncode != 0 and "already exists" in existing.stderr
    assert not (exp / "budget_60").exists()  # refused before anything moved
    (exp / "budget_120" / "snapshot").unlink()

    moved = grid_paths.run("-e", "grid", "-p", fmt, "-m", script="misc/move_snapshots.py")
    assert moved.returncode == 0, moved.stderr
    for budget in (60, 120):
        assert (exp / f"budget_{budget}" / "snapshot").is_file()
        record = json.loads((exp / f"budget_{budget}" / "snapshot.json").read_text())
        assert record["config"]["BaseDataset.semisupervised"] == budget
        trial_dir = exp / record["trial"]  # a link (or a copy): the trial's own checkpoint stays whole
        assert (trial_dir / record["checkpoint"] / "snapshot").read_bytes() == (exp / f"budget_{budget}" /
                                                                                "snapshot").read_bytes()
    again = grid_paths.run("-e", "grid", "-p", fmt, "-m", script="misc/move_snapshots.py")
    assert again.returncode == 2 and "already moved" in again.stderr and "-c" not in again.stderr, again.stderr

    # A trial started from the moved weights with a zero learning rate ends with exactly those weights;
    # one started from scratch does not.
    frozen = ["optimizer.lr = 0.0", "scheduler.milestones = [1]", "scheduler.target_lrs = [0.0]",
              "optimizer.weight_decay = 0.0"]
    tiny = [b for b in TINY if not b.startswith("scheduler")]
    source = torch.load(exp / "budget_60" / "snapshot", weights_only=False)["model"]
    for name, pretrained in (("from_snapshot", ['Wrapper.pretrained = "grid/budget_60"']), ("fresh", [])):
        run = grid_paths.run("-e", name, "-l", "-q", "-p", *tiny, *frozen, "BaseDataset.semisupervised = 60",
                             *pretrained)
        assert run.returncode == 0, run.stderr
        (snapshot,) = (grid_paths.exp_dir / name).glob("trial_*/checkpoint_*/snapshot")
        weights = torch.load(snapshot, weights_only=False)["model"]
        same = [torch.equal(weights[k], source[k]) for k in source if k.endswith("weight")]
        assert all(same) if pretrained else not any(same), name


def _terminated_trials(exp_dir: Path) -> int:
    count = 0
    for state in exp_dir.glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (json.JSONDecodeError, KeyError):
            continue
        count = max(count, sum(json.loads(t[0])["status"] == "TERMINATED" for t in trials))
    return count


def test_a_deleted_trial_folder_is_refused_through_ray_and_rerun_with_l(grid_paths: Workspace) -> None:
    """Never dropped: Ray's state lists the trial, so --resume refuses in one line (a copy of the
    grid's experiment, whose own folders the other tests read); -l runs it again from its config."""
    copy = grid_paths.exp_dir / "grid_copy"
    shutil.copytree(grid_paths.exp_dir / "grid", copy)
    gone = sorted(copy.glob("trial_*"))[1]
    shutil.rmtree(gone)
    files = sorted(copy.rglob("*"))
    refused = grid_paths.run("-e", "grid_copy", "--resume", "-q")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith(f"error: trial folder {gone.name} of experiment 'grid_copy' is gone, but Ray "
                                     "Tune's state"), refused.stderr
    assert "as finished: --resume would drop it" in refused.stderr and "grid_copy-again" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and sorted(copy.rglob("*")) == files
    status = grid_paths.run("-e", "grid_copy", "--status")  # says so too, rather than offer --resume
    assert status.returncode == 0 and "but --resume refuses to continue: trial folder" in status.stdout, status.stdout
    for state in copy.glob("experiment_state-*.json"):
        state.unlink()
    stateless = grid_paths.run("-e", "grid_copy", "--resume", "-q")
    assert stateless.returncode == 2 and "has no state of Ray Tune's" in stateless.stderr, stateless.stderr
    assert len(stateless.stderr.strip().splitlines()) == 1

    config = write_ray_config(grid_paths.exp_dir.parent, GRID)
    done = grid_paths.run("-e", "grid_local", "-l", "-q", "-r", str(config), "-p", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    local = grid_paths.exp_dir / "grid_local"
    kept = (local / "trial_local_00000" / "result.json").read_text()
    shutil.rmtree(local / "trial_local_00001")
    again = grid_paths.run("-e", "grid_local", "-l", "--resume", "-q")
    assert again.returncode == 0, again.stdout + again.stderr
    frame = vis.load_experiment("grid_local")
    assert sorted(frame["BaseDataset.semisupervised"]) == [60, 120] and (frame["status"] == "finished").all()
    assert (local / "trial_local_00000" / "result.json").read_text() == kept  # the finished one not run again


def test_killed_experiment_resumes_without_rerunning_finished_trials(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, """
from ray import tune
search_space = {"BaseDataset.semisupervised": tune.grid_search([60, 900])}
max_concurrent_trials = 1
checkpoint_frequency = 1
""")  # the second trial is long enough to be cut short: a warm worker starts it at once
    slow = [b for b in TINY if not b.startswith("scheduler")] + ["scheduler.milestones = [2, 6]",
                                                                  "scheduler.target_lrs = [0.05, 0.0]"]
    process = workspace.popen("-e", "sweep", "-r", str(config), "-q", "-p", *slow)
    exp = workspace.exp_dir / "sweep"
    deadline = time.time() + 240
    while _terminated_trials(exp) < 1:
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "the first trial did not finish in time"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    results = [d / "result.json" for d in exp.glob("trial_*") if (d / "result.json").exists()]  # the second
    finished = [r.parent for r in results if '"done": true' in r.read_text()]  # may not have written one yet
    assert len(finished) == 1
    finished_lines = (finished[0] / "result.json").read_text()

    resumed = workspace.run("-e", "sweep", "--resume", "-q")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (finished[0] / "result.json").read_text() == finished_lines  # not run again
    frame = vis.load_experiment("sweep")
    assert len(frame) == 2 and (frame["epoch"] == 6).all() and (frame["status"] == "finished").all()
    for trial_dir in (exp / trial for trial in frame["trial"]):  # resumed trials keep their resources
        assert json.loads((trial_dir / "trial.json").read_text())["threads"] == os.cpu_count()

    uninterrupted = workspace.run("-e", "straight", "-l", "-r", str(config), "-q", "-p", *slow)
    assert uninterrupted.returncode == 0, uninterrupted.stdout + uninterrupted.stderr
    resumed_history, straight = vis.load_history("sweep"), vis.load_history("straight")
    for budget in (60, 900):
        got = resumed_history[resumed_history["BaseDataset.semisupervised"] == budget]
        want = straight[straight["BaseDataset.semisupervised"] == budget]
        for column in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
            assert got[column].tolist() == pytest.approx(want[column].tolist(), abs=1e-6), (budget, column)


def test_a_bool_setting_stays_a_bool_beside_numbers(tmp_path: Path) -> None:
    """augment.crop = True (2020's default translation) beside augment.crop = 2 in another trial."""
    for index, crop in enumerate([True, 2]):
        trial_dir = tmp_path / f"trial_{index}"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps({"augment.crop": crop, "seed": 0}))
        (trial_dir / "result.json").write_text(json.dumps({"training_iteration": 1, "done": True}) + "\n")
    frame = vis.load_experiment(tmp_path).sort_values("trial")
    assert frame["augment.crop"].tolist() == [True, 2] and frame["augment.crop"].iloc[0] is True


def test_a_sweep_without_q_prints_tune_progress_but_no_snapshot_warnings(workspace: Workspace) -> None:
    """Short epochs checkpointed every epoch make Tune snapshot its state every few seconds; its
    4-line warning about that (printed after every trial's second checkpoint) is switched off."""
    done = workspace.run("-e", "loud", "-p", *TINY, "scheduler.milestones = [1, 3]", "scheduler.target_lrs = [0.05, 0]")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Trial status" in done.stdout + done.stderr  # Tune's own progress report is there without -q
    assert "snapshotting has been triggered" not in done.stdout + done.stderr
    assert vis.load_experiment("loud")["epoch"].max() == 3


def test_tune_output_settings_last_only_for_the_run() -> None:
    """`tune_output` sets Tune's print settings for one run and puts everything back, also when
    the run raises; a user's own setting is kept."""
    import logging
    import os

    from selfstudy.sweep import tune_output

    summary = logging.getLogger("ray.tune.tune")
    names = ("TUNE_PRINT_ALL_TRIAL_ERRORS", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S")
    before = {name: os.environ.get(name) for name in names}
    with pytest.raises(KeyboardInterrupt), tune_output(quiet=True):
        assert all(os.environ[name] == "0" for name in names if before[name] is None)
        assert not summary.filter(logging.makeLogRecord({"msg": "Trials did not complete: [t1]"}))
        assert summary.filter(logging.makeLogRecord({"msg": "Experiment state snapshotting failed"}))
        raise KeyboardInterrupt
    assert {name: os.environ.get(name) for name in names} == before and not summary.filters


def test_a_sweep_that_ends_with_trials_never_started_says_so(grid_paths: Workspace,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A complete run whose Tune made fewer trials than the sweep has (a searcher that stopped
    early) exits as its trials did, with a note; --status lists the missing one as pending."""
    from selfstudy import folders
    from selfstudy.report import finish

    copy = grid_paths.exp_dir / "grid_short"
    shutil.copytree(grid_paths.exp_dir / "grid", copy)
    record = folders.read_experiment(copy)
    record["variants"].append({**record["variants"][0], "BaseDataset.semisupervised": 240})
    folders.write_json(copy / folders.EXPERIMENT_FILE, record)
    assert finish(copy, "grid_short") == 0
    assert "note: 1 of the sweep's 3 trials never started" in capsys.readouterr().err
    status = grid_paths.run("-e", "grid_short", "--status")
    assert "experiment grid_short: 3 trial(s) (1 not started)" in status.stdout, status.stdout
    assert re.search(r"^ +- +240 +pending", status.stdout, re.M), status.stdout
