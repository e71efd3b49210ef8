"""Crashes are normal: killed workers, Ctrl-C, NaNs and kills during a checkpoint write, through
the real CLI and real Ray. A trial's numbers after a retry or --resume equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch

import paths
from conftest import ROOT, TINY, Workspace, write_ray_config
from selfstudy import folders
from test_user_errors import crafted_pickle
from util import vis

# 5 epochs of 40 batches: about a second each, so a kill lands inside an epoch.
LONG = [b for b in TINY if not b.startswith("scheduler")] + [
    "BaseDataset.semisupervised = 200", "session.train_iters = 40", "scheduler.milestones = [2, 5]",
    "scheduler.target_lrs = [0.05, 0.0]", "augment.cutout = 6"]
CHECKPOINTED = """
search_space = {}
checkpoint_frequency = 1
max_failures = 2
"""
TINY_FIXED_MILESTONES = [b for b in TINY if not b.startswith("scheduler.target_lrs")]  # the sweeps set those
METRICS = ["train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "best_accuracy"]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, limit: float = 240,
             every: float = 0.2) -> None:
    """Poll `condition` each `every` seconds until it holds; fail if the run ends first or `limit` passes."""
    deadline = time.time() + limit
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {process.stdout.read()}"
        assert time.time() < deadline, f"no {what} within {limit} s"
        time.sleep(every)


def epochs_reported(trial_dir: Path) -> int:
    return len(folders.read_results(trial_dir))


def only_trial(exp_dir: Path) -> Path:
    found = folders.trial_dirs(exp_dir) if exp_dir.is_dir() else []
    return found[0] if found else exp_dir / "none-yet"


def assert_same_epochs(history: pd.DataFrame, baseline: pd.DataFrame) -> None:
    assert history["training_iteration"].tolist() == baseline["training_iteration"].tolist()
    for column in METRICS:
        assert history[column].tolist() == pytest.approx(baseline[column].tolist(), abs=1e-6), column


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> pd.DataFrame:
    """The uninterrupted run (-l: the same numbers as through Ray), epoch by epoch."""
    space = Workspace(tmp_path_factory.mktemp("baseline") / "exp", data_dir)
    done = space.run("-e", "baseline", "-l", "-q", "-p", *LONG)
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "EXP_DIR", space.exp_dir)
        return vis.load_history("baseline")


def test_a_worker_killed_mid_epoch_retries_from_its_checkpoint(workspace: Workspace, tmp_path: Path,
                                                               baseline: pd.DataFrame) -> None:
    config = write_ray_config(tmp_path, CHECKPOINTED)
    process = workspace.popen("-e", "killed", "-r", str(config), "-q", "-p", *LONG)
    exp = workspace.exp_dir / "killed"
    wait_for(lambda: epochs_reported(only_trial(exp)) >= 2 and len(folders.checkpoints(only_trial(exp))) >= 2,
             process, "second checkpoint")
    time.sleep(0.4)  # into the third epoch
    trial_dir = only_trial(exp)
    worker = json.loads((trial_dir / "trial.json").read_text())["pid"]
    os.kill(worker, signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output

    retried = json.loads((trial_dir / "trial.json").read_text())
    assert retried["pid"] != worker
    assert retried["restored_from"]["epoch"] >= 2, retried  # from a checkpoint, not from scratch
    assert_same_epochs(vis.load_history("killed"), baseline)
    frame = vis.load_experiment("killed")
    assert frame["status"].tolist() == ["finished"] and frame["retries"].tolist() == [1]
    assert re.search(r"^ *trial +status +retries +epoch", output, re.M), output  # the table says so too


def test_ctrl_c_and_sigterm_exit_130_with_the_resume_hint_and_resume_finishes(workspace: Workspace, tmp_path: Path,
                                                                              baseline: pd.DataFrame) -> None:
    """Ctrl-C, and SIGTERM as timeout, slurm and docker stop send it, through Ray and with -l."""
    config = write_ray_config(tmp_path, CHECKPOINTED)
    for name, local, sent in (("ray", [], signal.SIGINT), ("local", ["-l"], signal.SIGINT), ("term", [], signal.SIGTERM)):
        process = workspace.popen("-e", name, "-r", str(config), "-q", *local, "-p", *LONG)
        exp = workspace.exp_dir / name
        wait_for(lambda: len(folders.checkpoints(only_trial(exp))) >= 1, process, "first checkpoint")
        os.kill(process.pid, sent)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 130, output
        assert f"interrupted; continue with `python main.py -e {name} --resume{' -l' if local else ''}`" in output
        assert "Traceback" not in output and "Tuner.restore" not in output  # our hint, not Tune's
        assert vis.load_experiment(name)["status"].tolist() == ["running"]

        resumed = workspace.run("-e", name, "--resume", "-q", *local)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert_same_epochs(vis.load_history(name), baseline)
        # the resumed trial kept its resources: every CPU of this machine, as in the first run
        assert json.loads((only_trial(exp) / "trial.json").read_text())["threads"] == os.cpu_count()


def test_a_diverging_trial_is_listed_as_errored_and_the_others_finish(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, """
from ray import tune
search_space = {"scheduler.target_lrs": tune.grid_search([[1e9, 1e9], [0.05, 0.0]])}
max_failures = 0
""")
    done = workspace.run("-e", "nan", "-r", str(config), "-q", "-p", *TINY_FIXED_MILESTONES)
    assert done.returncode == 1, done.stdout + done.stderr
    frame = vis.load_experiment("nan")
    assert len(frame) == 2
    by_lrs = {tuple(lrs): row for lrs, (_, row) in zip(frame["scheduler.target_lrs"], frame.iterrows())}
    diverged, fine = by_lrs[(1e9, 1e9)], by_lrs[(0.05, 0.0)]
    assert diverged["status"] == "errored" and "training diverged" in diverged["error"]
    assert fine["status"] == "finished" and fine["error"] is None
    line = next(l for l in done.stderr.splitlines() if l.startswith("error: trial"))
    assert diverged["trial"] in line and "scheduler.target_lrs=[1000000000.0, 1000000000.0]" in line
    assert "training diverged at epoch" in line
    assert f"{diverged['trial']}" in done.stdout and "errored" in done.stdout  # in the final table too
    # -q: the failure is that one line; Tune's traceback and summary stay in error.txt and out of the output
    assert "Traceback" not in done.stdout + done.stderr and "Trials did not complete" not in done.stderr
    assert done.stderr.strip().splitlines() == [line], done.stderr
    assert "in run_epoch" in (workspace.exp_dir / "nan" / diverged["trial"] / "error.txt").read_text()  # the stack


def test_trials_that_fail_while_starting_are_reported(workspace: Workspace, tmp_path: Path) -> None:
    """A trial that fails in setup never starts for Tune, which then writes no params.json; the
    trials are still listed and reported (with -q their lines are all that is printed)."""
    made = workspace.run("-e", "source", "-l", "-q", "-p", *TINY)
    assert made.returncode == 0, made.stdout + made.stderr
    snapshot = sorted((workspace.exp_dir / "source").glob("*/checkpoint_*/snapshot"))[-1]
    config = write_ray_config(tmp_path, """
from ray import tune
search_space = {"seed": tune.grid_search([0, 1])}
max_failures = 0
""")  # the snapshot exists, as the check before Ray asks, but is of a narrower model: setup fails
    done = workspace.run("-e", "misfit", "-q", "-r", str(config), "-p", *TINY, "ResNet.width = 8",
                         f"session.restore_session = '{snapshot}'")
    assert done.returncode == 1, done.stdout + done.stderr
    frame = vis.load_experiment("misfit")
    assert sorted(frame["seed"]) == [0, 1] and (frame["status"] == "errored").all()
    shapes = "layer 'backbone.prep.0.weight' is (4, 3, 3, 3) in the snapshot but (8, 3, 3, 3) here"
    assert all(f"snapshot does not fit this trial's model: {shapes}" in error for error in frame["error"])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: trial") and "snapshot does not fit" in line
                                   for line in lines), done.stderr


def test_local_sweep_goes_past_a_failed_trial_and_refuses_a_planted_checkpoint(workspace: Workspace,
                                                                               tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, """
from ray import tune
search_space = {"scheduler.target_lrs": tune.grid_search([[0.05, 1e9], [0.05, 0.0]])}
checkpoint_frequency = 1
max_failures = 0
""")
    done = workspace.run("-e", "sweep", "-l", "-r", str(config), "-q", "-p", *TINY_FIXED_MILESTONES)
    assert done.returncode == 1, done.stdout + done.stderr
    frame = vis.load_experiment("sweep")
    assert frame["status"].tolist() == ["errored", "finished"]
    assert "training diverged at epoch 2" in frame["error"][0]

    failed = folders.trial_dirs(workspace.exp_dir / "sweep")[0]
    (snapshot,) = [c / folders.SNAPSHOT for c in folders.checkpoints(failed)]
    crafted_pickle(snapshot, tmp_path / "code_ran")
    refused = workspace.run("-e", "sweep", "-l", "--resume", "-q")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: ") and len(refused.stderr.strip().splitlines()) == 1
    assert "refusing" in refused.stderr and str(snapshot) in refused.stderr
    assert not (tmp_path / "code_ran").exists(), "the planted checkpoint's code ran"

    wrong_way = workspace.run("-e", "sweep", "--resume", "-q")
    assert wrong_way.returncode == 2 and "ran in this process (-l)" in wrong_way.stderr


def test_local_checkpoints_are_numbered_in_sequence_and_the_newest_kept(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, "search_space = {}\ncheckpoint_frequency = 1\nkeep_checkpoints = 2\n")
    six = [b for b in TINY if not b.startswith("scheduler")] + ["BaseDataset.semisupervised = 60",
                                                                "scheduler.milestones = [2, 6]",
                                                                "scheduler.target_lrs = [0.05, 0.0]"]
    done = workspace.run("-e", "six", "-l", "-q", "-r", str(config), "-p", *six)
    assert done.returncode == 0, done.stdout + done.stderr
    trial_dir = only_trial(workspace.exp_dir / "six")
    kept = folders.checkpoints(trial_dir)
    assert [c.name for c in kept] == ["checkpoint_000004", "checkpoint_000005"]
    snapshot = torch.load(kept[-1] / folders.SNAPSHOT, weights_only=True)
    assert snapshot["epoch"] == 6


SLOW_WRITER = """
import sys
from pathlib import Path
import torch
from selfstudy.checkpoint import save_snapshot
trial_dir = Path(sys.argv[1])
save_snapshot(trial_dir / "checkpoint_000000", {"model": {"w": torch.ones(3)}, "epoch": 1})
print("first", flush=True)
save_snapshot(trial_dir / "checkpoint_000001", {"model": {"w": torch.zeros(300_000_000)}, "epoch": 2})
print("second", flush=True)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    trial_dir = tmp_path / "trial"
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(trial_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert process.stdout.readline().strip() == "first"
    deadline = time.time() + 60
    while not list((trial_dir / "checkpoint_000001").glob(".snapshot.*.tmp")):  # the second write has begun
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert not (trial_dir / "checkpoint_000001" / folders.SNAPSHOT).exists()
    latest = folders.latest_snapshot(trial_dir)
    assert latest == trial_dir / "checkpoint_000000" / folders.SNAPSHOT
    from selfstudy.checkpoint import load_snapshot

    state = load_snapshot(latest, "test")
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert folders.next_checkpoint_dir(trial_dir).name == "checkpoint_000002"  # the torn folder is not reused


DISK_SWEEP = """
from ray import tune
search_space = {"optimizer.lr": tune.grid_search([0.05, 0.1])}
checkpoint_frequency = 1
keep_checkpoints = 1
max_failures = 2
"""
# A snapshot of ResNet-9 at width 16 is 3.35 MB: on a 9 MB disk the second trial's second
# checkpoint finds no room (the first trial keeps its last one; a new one is written whole
# before the older goes).
WIDE = TINY_FIXED_MILESTONES + ["ResNet.width = 16", "scheduler.milestones = [1, 3]"]
FULL_DISK = """
set -u
mount -t tmpfs -o size=9m tmpfs "$SELFSTUDY_EXP_DIR"
python main.py -e full -r "$CONFIG" -q -p "$@" > "$OUT/first.out" 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
python -c '
import sys
from pathlib import Path
from selfstudy import folders
from selfstudy.checkpoint import load_snapshot
for trial_dir in folders.trial_dirs(Path(sys.argv[1])):
    for checkpoint in folders.checkpoints(trial_dir):
        print(trial_dir.name, checkpoint.name, load_snapshot(checkpoint / folders.SNAPSHOT, "test")["epoch"])
' "$SELFSTUDY_EXP_DIR/full" > "$OUT/loads.txt"
mount -o remount,size=64m "$SELFSTUDY_EXP_DIR"
python main.py -e full --resume -q > "$OUT/resume.out" 2>&1; echo $? > "$OUT/resume.rc"
cp -a "$SELFSTUDY_EXP_DIR/full" "$OUT/full"
"""


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes(workspace: Workspace, tmp_path: Path) -> None:
    """A small tmpfs as EXP_DIR, in a mount namespace of the test's own (unshare)."""
    config = write_ray_config(tmp_path, DISK_SWEEP)
    out = tmp_path / "out"
    out.mkdir()
    workspace.exp_dir.mkdir()
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    env = dict(workspace.env(), CONFIG=str(config), OUT=str(out))
    ran = subprocess.run([*unshare, "bash", "-c", FULL_DISK, "full_disk", *WIDE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0 and (out / "first.rc").is_file(), ran.stdout + ran.stderr
    first = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "1", first
    errors = [line for line in first.splitlines() if not line.startswith("note: ")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write in "), first
    assert "the disk is full" in errors[0] and "free at least" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in first + (out / "first.out").read_text()
    assert "may stop when the disk is full" in first  # the check before the run warned
    loads = (out / "loads.txt").read_text().split("\n")[:-1]
    assert len({line.split()[0] for line in loads}) == 2, loads  # every trial kept a checkpoint, and each loads

    assert (out / "resume.rc").read_text().strip() == "0", (out / "resume.out").read_text()
    assert not list((out / "full").rglob("*.tmp"))
    uninterrupted = workspace.run("-e", "roomy", "-l", "-q", "-r", str(config), "-p", *WIDE)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    resumed, baseline = (vis.load_history(exp).sort_values(["optimizer.lr", "training_iteration"], ignore_index=True)
                         for exp in (out / "full", "roomy"))
    assert resumed["optimizer.lr"].tolist() == baseline["optimizer.lr"].tolist()
    assert_same_epochs(resumed, baseline)


def tune_checkpoint(exp: Path, trial_dir: Path) -> Path:
    """The checkpoint Tune's state restores `trial_dir` from: a newer folder on disk is one that Tune
    had not recorded when the run was interrupted."""
    from ray.tune import ExperimentAnalysis

    paths = [Path(t.checkpoint.path) for t in ExperimentAnalysis(str(exp)).trials if t.checkpoint is not None]
    return next(path for path in paths if path.parent == trial_dir)


def test_resume_repairs_or_refuses_a_damaged_state_and_passes_over_a_damaged_checkpoint(
        workspace: Workspace, tmp_path: Path, baseline: pd.DataFrame) -> None:
    """Interrupted while its first trial runs (the second one not started), then: Tune's state
    damaged with no whole copy is refused; with Tune's copy it is put back; a checkpoint of another
    model fails the trial (exit 1, not an interruption); a truncated one is passed over for the one before."""
    config = write_ray_config(tmp_path, CHECKPOINTED + 'from ray import tune\nsearch_space = {"seed": '
                                                      'tune.grid_search([0, 1])}\n')
    process = workspace.popen("-e", "damaged", "-r", str(config), "-q", "-p", *LONG)
    exp = workspace.exp_dir / "damaged"
    wait_for(lambda: epochs_reported(only_trial(exp)) >= 3 and len(folders.checkpoints(only_trial(exp))) >= 2,
             process, "third epoch")
    os.kill(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output

    newest = tune_checkpoint(exp, only_trial(exp))
    state = max(exp.glob("experiment_state-*.json"))
    whole = state.read_bytes()
    from ray._common.utils import get_default_ray_temp_dir

    ray_copy = max(Path(get_default_ray_temp_dir()).glob(f"session_*/artifacts/*/damaged/driver_artifacts/{state.name}"),
                   key=lambda path: path.stat().st_mtime)
    assert ray_copy.read_bytes() == whole
    for damaged in (state, ray_copy):
        damaged.write_bytes(whole[: len(whole) // 2])  # as a full disk or a crash of the disk leaves it
    files = sorted((p.relative_to(exp), p.stat().st_size, p.stat().st_mtime_ns) for p in exp.rglob("*"))
    refused = workspace.run("-e", "damaged", "--resume", "-q")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: Ray Tune's state of experiment 'damaged' "), refused.stderr
    assert "is damaged (JSONDecodeError), and Tune keeps no whole copy" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "python main.py -e damaged-again -r " in refused.stderr
    assert sorted((p.relative_to(exp), p.stat().st_size, p.stat().st_mtime_ns) for p in exp.rglob("*")) == files

    ray_copy.write_bytes(whole)  # Tune's own copy is whole: --resume puts it back
    trial_dir = only_trial(exp)
    snapshot = newest / folders.SNAPSHOT
    good = snapshot.read_bytes()
    misfit = torch.load(snapshot, weights_only=True)  # whole, but of another model: every restore fails
    misfit["model"]["backbone.prep.0.weight"] = torch.zeros(1)
    torch.save(misfit, snapshot)
    failed = workspace.run("-e", "damaged", "--resume", "-q")
    assert f"note: Ray Tune's state {state.name} of 'damaged' was damaged; put back the whole copy" in failed.stderr
    assert failed.returncode == 1, failed.stdout + failed.stderr  # a failure, not an interruption
    assert re.search(r"^error: trial \S+ \(seed=0\) failed: .*snapshot does not fit", failed.stderr, re.M), failed.stderr
    assert "interrupted" not in failed.stderr

    snapshot.write_bytes(good[:1000])
    resumed = workspace.run("-e", "damaged", "--resume", "-q")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    restored = json.loads((trial_dir / "trial.json").read_text())["restored_from"]
    assert restored["passed_over"] == [newest.name] and restored["checkpoint"] != newest.name, restored
    history = vis.load_history("damaged")
    assert sorted(vis.load_experiment("damaged")["seed"]) == [0, 1]
    assert_same_epochs(history[history["seed"] == 0].reset_index(drop=True), baseline)


def test_snapshots_move_only_from_finished_trials_and_a_live_run_shows_its_status(
        workspace: Workspace, tmp_path: Path, baseline: pd.DataFrame) -> None:
    """move_snapshots -m (and --unfinished -m) during a run change neither the run nor its
    checkpoints; --status shows the running trial and the one not started yet."""
    config = write_ray_config(tmp_path, CHECKPOINTED + 'from ray import tune\nsearch_space = {"seed": '
                                                      'tune.grid_search([0, 1])}\n')
    process = workspace.popen("-e", "live", "-l", "-r", str(config), "-q", "-p", *LONG)
    exp = workspace.exp_dir / "live"
    wait_for(lambda: len(folders.checkpoints(only_trial(exp))) >= 2, process, "second checkpoint")
    status = workspace.run("-e", "live", "--status")
    assert status.returncode == 0, status.stderr
    assert "experiment live: 2 trial(s) (1 not started)" in status.stdout
    assert re.search(r"^trial_local_00000 +0 +running ", status.stdout, re.M), status.stdout
    assert re.search(r"^ +- +1 +pending ", status.stdout, re.M), status.stdout
    assert f"running: driver pid {process.pid} on {socket.gethostname()}, 2 trial(s) not finished" in status.stdout

    trial_dir = only_trial(exp)
    before = {c.name: (c / folders.SNAPSHOT).read_bytes() for c in folders.checkpoints(trial_dir)}
    skipped = workspace.run("-e", "live", "-m", script="misc/move_snapshots.py")
    assert skipped.returncode == 2 and "has finished" in skipped.stderr, skipped.stdout + skipped.stderr
    assert "Skipping trial_local_00000: it has not finished (running)" in skipped.stdout
    linked = workspace.run("-e", "live", "-m", "--unfinished", "-p", "seed{cfg[seed]}", script="misc/move_snapshots.py")
    assert linked.returncode == 0, linked.stdout + linked.stderr
    for name, data in before.items():  # the trial's own checkpoints are whole
        if (trial_dir / name).is_dir():
            assert (trial_dir / name / folders.SNAPSHOT).read_bytes() == data
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    history = vis.load_history("live")
    assert_same_epochs(history[history["seed"] == 0].reset_index(drop=True), baseline)
    assert (exp / "seed0" / folders.SNAPSHOT).is_file() and folders.checkpoints(trial_dir)
    ended = workspace.run("-e", "live", "--status")
    assert "not running: every trial ended" in ended.stdout and "pending" not in ended.stdout
    final = workspace.run("-e", "live", "-m", "-p", "seed{cfg[seed]}", script="misc/move_snapshots.py")
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Replacing" in final.stdout and (exp / "seed1" / folders.SNAPSHOT).is_file()  # the early link gives way
    record = json.loads((exp / "seed0" / f"{folders.SNAPSHOT}.json").read_text())
    assert record["checkpoint"] == folders.checkpoints(trial_dir)[-1].name
