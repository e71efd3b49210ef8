"""Trials of several data-parallel workers (`workers_per_trial`) through the real CLI and real Ray on
the CPU (gloo): two workers give one worker's numbers, survive a killed worker and a stopped driver,
and the Ray config's mistakes get one line.

Every two-worker trial here runs on a two-node loopback cluster (tests/test_cluster.py) whose nodes
have one CPU each, so its two workers, of one CPU each, run on different nodes: every run is also the
multi-node case. The runs train in float64 (`session.precision = 'fp64'`): in float32 a digits ResNet
amplifies rounding so much that even one worker with 1 thread and with 2 threads part by 1e-3 within
two epochs, while in float64 those agree to 1e-7, and so do one worker and two.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

import paths
from conftest import TINY, Workspace, write_ray_config
from selfstudy import folders
from test_cluster import LoopbackCluster, Node
from test_faults import only_trial, wait_for
from util import vis

EXACT = [b for b in TINY if not b.startswith(("ResNet.width", "scheduler"))] + [
    "ResNet.width = 8", "session.precision = 'fp64'", "scheduler.milestones = [2, 4]",
    "scheduler.target_lrs = [0.05, 0.0]"]
SHORT = EXACT[:-2] + ["scheduler.milestones = [1, 2]", "scheduler.target_lrs = [0.05, 0.0]"]
# SimCLR and MoCo, one after the other in one sweep (the second trial in new processes: a trial's
# workers are not reused), on 3 batches an epoch: over more steps at this learning rate a collapsing
# representation amplifies rounding past 1e-4 even in float64, for one worker on 1 and 2 threads
METHODS = """
from ray import tune
search_space = {"gin_config": tune.grid_search(["digits/r9/simclr", "digits/r9/moco"]),
                "session.train_iters": 3, "MoCoTask.queue_size": 64}
max_concurrent_trials = 1
"""
TWO = """
search_space = {}
workers_per_trial = 2
resources_per_worker = {"cpu": 1}
checkpoint_frequency = 1
max_failures = 2
"""
COLUMNS = ["train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "best_accuracy"]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Workspace]:
    """One experiment folder for the module's runs (the cluster's workers see it in their environment)."""
    space = Workspace(tmp_path_factory.mktemp("distributed") / "exp", data_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "EXP_DIR", space.exp_dir)
        patch.setattr(paths, "DATA_DIR", data_dir)
        yield space


@pytest.fixture(scope="module")
def cluster(space: Workspace) -> Iterator[tuple[LoopbackCluster, list[Node]]]:
    cluster = LoopbackCluster(space.env())
    try:
        yield cluster, [cluster.add_node("head", head=True), cluster.add_node("second")]
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ray_config(tmp_path_factory.mktemp("two"), TWO)


@pytest.fixture(scope="module")
def uninterrupted(space: Workspace, cluster: tuple[LoopbackCluster, list[Node]], config: Path) -> pd.DataFrame:
    """A 2-worker classification trial of 4 epochs, run through without a fault."""
    done = space.run("-a", cluster[0].address, "-e", "two", "-r", str(config), "-q", "-p", *EXACT)
    assert done.returncode == 0, done.stdout + done.stderr
    return vis.load_history("two")


def workers_of(exp: Path) -> list[dict]:
    return json.loads((only_trial(exp) / "trial.json").read_text())["workers"]


def assert_same(history: pd.DataFrame, baseline: pd.DataFrame, tolerance: float) -> None:
    assert history["training_iteration"].tolist() == baseline["training_iteration"].tolist()
    for column in [c for c in COLUMNS if c in baseline]:
        assert history[column].tolist() == pytest.approx(baseline[column].tolist(), abs=tolerance), column


def test_two_workers_on_two_nodes_give_one_workers_numbers(space: Workspace, uninterrupted: pd.DataFrame,
                                                           cluster: tuple[LoopbackCluster, list[Node]]) -> None:
    one = space.run("-e", "one", "-l", "-q", "-p", *EXACT)
    assert one.returncode == 0, one.stdout + one.stderr
    assert_same(uninterrupted, vis.load_history("one"), 1e-4)
    workers = workers_of(space.exp_dir / "two")
    assert [w["rank"] for w in workers] == [0, 1] and len({w["pid"] for w in workers}) == 2
    assert {w["node_id"] for w in workers} == {node.node_id for node in cluster[1]}  # one worker on each node
    assert {w["device"] for w in workers} == {"cpu"}


def test_gathered_negatives_and_moco_queue_and_shuffle_give_one_workers_numbers(
        space: Workspace, cluster: tuple[LoopbackCluster, list[Node]], tmp_path: Path) -> None:
    """SimCLR's negatives come from both workers; MoCo shuffles keys across workers for BatchNorm,
    fills both queues with the whole batch's keys, and chains its sub-batches' running statistics."""
    one_config = write_ray_config(tmp_path, METHODS)
    two_config = (tmp_path / "two.py")
    two_config.write_text(METHODS + TWO.replace("search_space = {}", ""))
    one = space.run("-e", "methods1", "-l", "-q", "-r", str(one_config), "-p", *SHORT)
    two = space.run("-a", cluster[0].address, "-e", "methods2", "-r", str(two_config), "-q", "-p", *SHORT)
    assert one.returncode == 0 and two.returncode == 0, one.stdout + one.stderr + two.stdout + two.stderr
    for method in ("simclr", "moco"):
        baseline, history = (vis.load_history(name).query(f"gin_config.str.contains('{method}')", engine="python")
                             for name in ("methods1", "methods2"))
        assert len(history) == 2, method
        assert_same(history, baseline, 1e-4)
        for column in ("train_probe_loss", "valid_probe_loss", "train_mlp_accuracy", "valid_mlp_accuracy"):
            assert history[column].tolist() == pytest.approx(baseline[column].tolist(), abs=1e-4), column


def test_a_killed_worker_costs_a_retry_from_the_last_checkpoint(
        space: Workspace, cluster: tuple[LoopbackCluster, list[Node]], config: Path,
        uninterrupted: pd.DataFrame) -> None:
    process = space.popen("-a", cluster[0].address, "-e", "killed", "-r", str(config), "-q", "-p", *EXACT)
    exp = space.exp_dir / "killed"
    wait_for(lambda: len(folders.checkpoints(only_trial(exp))) >= 2, process, "second checkpoint")
    peer = workers_of(exp)[1]["pid"]
    os.kill(peer, signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    retried = json.loads((only_trial(exp) / "trial.json").read_text())
    assert retried["restored_from"]["epoch"] >= 2, retried  # from a checkpoint, not from scratch
    assert peer not in [w["pid"] for w in retried["workers"]] and len(retried["workers"]) == 2
    assert_same(vis.load_history("killed"), uninterrupted, 1e-6)
    assert vis.load_experiment("killed")["retries"].tolist() == [1]


def test_a_stopped_driver_resumes_with_two_workers(space: Workspace, cluster: tuple[LoopbackCluster, list[Node]],
                                                   config: Path, uninterrupted: pd.DataFrame) -> None:
    address = cluster[0].address
    process = space.popen("-a", address, "-e", "stopped", "-r", str(config), "-q", "-p", *EXACT)
    exp = space.exp_dir / "stopped"
    wait_for(lambda: len(folders.checkpoints(only_trial(exp))) >= 1, process, "first checkpoint")
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    resumed = space.run("-a", address, "-e", "stopped", "--resume", "-q")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(workers_of(exp)) == 2
    assert_same(vis.load_history("stopped"), uninterrupted, 1e-6)


@pytest.mark.parametrize("setting, local, message", [
    ("workers_per_trial = 4", False, "workers_per_trial = 4 with 1 CPU each needs 4 CPU, but the cluster has 2"),
    ("workers_per_trial = 2", True, "which -l does not start: drop -l, or set workers_per_trial = 1"),
    ("workers_per_trial = 2\nplacement_strategy = 'SIDEWAYS'", False, "placement_strategy = 'SIDEWAYS'; choose from"),
    ("workers_per_trial = 2\nresources_per_worker = {'gpu': 0.5}", False, "each worker takes whole GPUs"),
    ("workers_per_trial = 2\nplacement_strategy = 'STRICT_PACK'", False, "'STRICT_PACK' puts all 2 workers on one"),
])
def test_a_ray_config_that_cannot_place_its_workers_is_refused_in_one_line(
        setting: str, local: bool, message: str, space: Workspace, tmp_path: Path,
        cluster: tuple[LoopbackCluster, list[Node]]) -> None:
    config = write_ray_config(tmp_path, f"search_space = {{}}\n{setting}\n")
    where = ["-l"] if local else ["-a", cluster[0].address]
    done = space.run(*where, "-e", "refused", "-r", str(config), "-q", "-p", *TINY)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    refused = space.exp_dir / "refused"
    assert not refused.exists() or not folders.trial_dirs(refused)  # nothing started


@pytest.mark.parametrize("bindings, message", [
    (["dataloader.batch_size = 33"], "dataloader.batch_size = 33 does not split into workers_per_trial = 2"),
    (["session.task = 'VAETask'", "Wrapper.run_selfsup = True"], "VAETask does not split over workers yet"),
    (["init_resnet.choice = 'vit_tiny'", "ViT.depth = 2", "ViT.drop_path = 0.1"], "DropPath draws random numbers"),
    (["BaseDataset.semisupervised = 20"], "the 20 training images are fewer than dataloader.batch_size = 32"),
])
def test_a_trial_that_cannot_split_is_refused_in_one_line(bindings: list[str], message: str, space: Workspace,
                                                          config: Path,
                                                          cluster: tuple[LoopbackCluster, list[Node]]) -> None:
    done = space.run("-a", cluster[0].address, "-e", "unsplit", "-r", str(config), "-q", "-p", *TINY, *bindings)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr

