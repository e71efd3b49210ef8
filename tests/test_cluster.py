"""A real two-node Ray cluster on this machine: `main.py -a` joins it, trials spread over both nodes, and a
node lost in the middle of a sweep costs its trial one retry from its last checkpoint. Plus `-a` to an
address where no cluster runs.

The nodes are `ray start` processes on loopback, each with its own temp dir and one CPU, so two trials of
one CPU each must run on different nodes. The experiment folder is the cluster's shared storage: both nodes
are on this machine and see it. Every process of the cluster is found by the files it holds open in its
temp dirs and killed at the end, pass or fail (`ray stop` would also stop other Ray instances here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import TINY, Workspace, write_ray_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes in /proc")

EPOCHS = 60
# Long enough that the second node dies with most of its trial ahead: an epoch takes ~0.2 s on two shared
# cores, and a trial's worker goes on for ~2 s after its raylet is killed, until the GCS declares the node dead.
LONG = [b for b in TINY if not b.startswith("scheduler")] + [f"scheduler.milestones = [2, {EPOCHS}]",
                                                             "scheduler.target_lrs = [0.05, 0.0]"]
SWEEP = """
from ray import tune
search_space = {"BaseDataset.semisupervised": tune.grid_search([200, 300])}
checkpoint_frequency = 1
max_failures = 3
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _holds(pid: str, root: str) -> bool:
    """Whether process `pid` names `root` on its command line or holds a file under it open."""
    if any(root in arg for arg in _argv(pid)):
        return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(root):
                return True
        except OSError:
            pass
    return False


@dataclass(frozen=True)
class Node:
    node_id: str
    raylet_pid: int


class LoopbackCluster:
    """A Ray head and worker nodes started with `ray start`, each in a temp dir under one root."""

    def __init__(self, env: dict[str, str]) -> None:
        # Short: Ray's unix socket paths live under it and are limited to 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.env = dict(env, RAY_USAGE_STATS_ENABLED="0")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def add_node(self, name: str, head: bool = False) -> Node:
        temp_dir = self.root / name
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if head else \
            ["--address", self.address]
        started = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *where, "--num-cpus", "1",
             "--temp-dir", str(temp_dir), "--min-worker-port", "0", "--max-worker-port", "0",
             "--disable-usage-stats"], env=self.env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        for pid in filter(str.isdigit, os.listdir("/proc")):
            argv = _argv(pid)
            if argv[0].endswith("/raylet") and f"--temp_dir={temp_dir}" in argv:
                node_id = next(a.split("=", 1)[1] for a in argv if a.startswith("--node_id="))
                return Node(node_id, int(pid))
        raise AssertionError(f"no raylet of {temp_dir} runs after `ray start`: {started.stdout}{started.stderr}")

    def processes(self) -> list[int]:
        return [int(pid) for pid in filter(str.isdigit, os.listdir("/proc"))
                if int(pid) != os.getpid() and _holds(pid, str(self.root))]

    def shutdown(self) -> None:
        for _ in range(10):  # a dying raylet may still start a worker: look again until none is left
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster(workspace: Workspace) -> Iterator[LoopbackCluster]:
    cluster = LoopbackCluster(workspace.env())
    try:
        yield cluster
    finally:
        cluster.shutdown()
        assert not cluster.processes()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # not written yet, or being written
        return None


def _results(trial_dir: Path) -> list[dict]:
    try:
        lines = (trial_dir / "result.json").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            break
    return rows


def test_sweep_uses_both_nodes_and_survives_losing_one(workspace: Workspace, cluster: LoopbackCluster,
                                                       tmp_path: Path) -> None:
    head = cluster.add_node("head", head=True)
    second = cluster.add_node("second")
    config = write_ray_config(tmp_path, SWEEP)
    exp = workspace.exp_dir / "sweep"
    driver = workspace.popen("-a", cluster.address, "-e", "sweep", "-r", str(config), "-q", "-p", *LONG)
    seen: dict[str, set[str]] = {}  # trial -> node ids its trial.json named while the sweep ran
    victim, before_kill = None, []
    deadline = time.time() + 240
    try:
        while driver.poll() is None:
            assert time.time() < deadline, "the sweep did not finish in time"
            for trial_dir in exp.glob("trial_*"):
                provenance = _read_json(trial_dir / "trial.json")
                if provenance:
                    seen.setdefault(trial_dir.name, set()).add(provenance["node_id"])
                    # A checkpoint exists once the second epoch is reported: kill the trial's node then.
                    if victim is None and provenance["node_id"] == second.node_id:
                        rows = _results(trial_dir)
                        if len(rows) >= 2:
                            os.kill(second.raylet_pid, signal.SIGKILL)
                            victim, before_kill = trial_dir, rows
            time.sleep(0.1)
        output = driver.stdout.read()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, output
    assert victim is not None, f"no trial ran on the second node: {seen}"
    assert set().union(*seen.values()) == {head.node_id, second.node_id}

    trials = sorted(exp.glob("trial_*"))
    assert len(trials) == 2
    for trial_dir in trials:
        rows = _results(trial_dir)
        assert rows[-1]["done"] and rows[-1]["epoch"] == EPOCHS, trial_dir.name
        assert sorted({r["epoch"] for r in rows}) == list(range(1, EPOCHS + 1)), trial_dir.name

    # The killed node's trial went on elsewhere (a new process, on the head) from its last checkpoint:
    # it did not start again from epoch 1, nor skip an epoch.
    rows = _results(victim)
    retried = [r for r in rows if r["pid"] != rows[0]["pid"]]
    assert retried, f"{victim.name} never restarted: it finished before its node died"
    last_before = max(r["epoch"] for r in rows[:len(rows) - len(retried)])
    assert 1 < retried[0]["epoch"] <= last_before + 1, [r["epoch"] for r in rows]
    assert before_kill[-1]["epoch"] < EPOCHS
    assert [r["epoch"] for r in rows].count(1) == 1
    assert _read_json(victim / "trial.json")["node_id"] == head.node_id


def test_address_without_a_cluster_fails_fast(workspace: Workspace) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.time()
    done = workspace.run("-a", address, "-e", "nowhere", "-q", "-p", *TINY, timeout=60)
    assert time.time() - start < 30
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and address in line and "ray start --head" in line
    assert not workspace.exp_dir.exists() or not any(workspace.exp_dir.iterdir())
