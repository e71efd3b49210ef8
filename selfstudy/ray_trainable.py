"""The Ray glue: the Ray Tune Trainable, a thin adapter around a `Trial`.

One `step()` is one epoch. Checkpoints are directories holding one `snapshot` file. A worker
process may run several trials of a sweep one after another (`reset_config`).

A trial of several data-parallel workers (`workers_per_trial`, `selfstudy.distributed`) runs
rank 0 in the Trainable itself, which writes the checkpoints and reports as before, and ranks
1 .. N-1 in `Peer` actors in the other bundles of the trial's placement group. All join one
process group; every epoch runs in all of them at once. A restored trial hands its state to
the peers. A peer that dies fails the trial's step: Tune retries the trial from its last
checkpoint (`max_failures`), with new peers.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

import ray
import torch
from ray import tune
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from selfstudy import distributed, folders, notes
from selfstudy.build import default_device
from selfstudy.durable import is_disk_message
from selfstudy.progress import progress_line, say
from selfstudy.trials import open_trial


def worker_record(rank: int, trial: Any) -> dict[str, Any]:
    """Where a worker of a data-parallel trial runs, for trial.json."""
    return {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "device": str(trial.device), "pid": os.getpid()}


@contextlib.contextmanager
def dying_on_failure() -> Iterator[None]:
    """A peer whose epoch fails exits at once, after printing why: its closed connections then
    fail rank 0's next collective, and so the trial's step, instead of leaving it waiting."""
    try:
        yield
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


@ray.remote
class Peer:
    """Rank 1 .. N-1 of a data-parallel trial: the same trial, without its folder."""

    def open(self, config: dict[str, Any], rank: int, workers: int, address: tuple[str, int], threads: int | None
             ) -> dict[str, Any]:
        with dying_on_failure():
            distributed.join(*address, rank, workers, default_device())
            self.trial = open_trial(config, None, num_threads=threads, node_id=ray.get_runtime_context().get_node_id())
            return worker_record(rank, self.trial)

    def run_epoch(self) -> None:
        with dying_on_failure():
            self.trial.run_epoch()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trial.load_state_dict(state)


class RayTrial(tune.Trainable):
    workers = 1  # data-parallel workers per trial (sweep._trainable makes the class of another number)

    def setup(self, config: dict[str, Any]) -> None:
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
        # Tune runs a trial in a scratch working directory; its results live in trial_fs_path.
        trial_dir = Path(self._storage.trial_fs_path) if self._storage else Path(self.logdir)
        cpus = None
        if self.trial_resources:  # a trial of several workers: its own bundle, the first
            bundle = self.trial_resources.bundles[0] if self.workers > 1 else self.trial_resources.required_resources
            cpus = bundle.get("CPU")
        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        if not folders.params_whole(trial_dir):  # Tune writes it once the trial has started (in place):
            folders.write_json(trial_dir / folders.PARAMS_FILE, config)  # a trial failing in setup is listed too
        self.peers: list[Any] = []
        threads = int(cpus) if cpus else None
        opened = self.start_peers(config, threads) if self.workers > 1 else []
        self.trial = open_trial(config, trial_dir, num_threads=threads, node_id=node_id)
        if opened:
            self.trial.provenance["workers"] = [worker_record(0, self.trial), *ray.get(opened)]
            folders.write_json(trial_dir / "trial.json", self.trial.provenance)

    def start_peers(self, config: dict[str, Any], threads: int | None) -> list[Any]:
        """Start ranks 1 .. N-1 in the placement group's other bundles, and join their process group."""
        group = get_current_placement_group()
        bundles = self.trial_resources.bundles
        address = distributed.free_address()
        self.peers = [Peer.options(num_cpus=bundles[rank].get("CPU", 0), num_gpus=bundles[rank].get("GPU", 0),
                                   scheduling_strategy=PlacementGroupSchedulingStrategy(group, rank)).remote()
                      for rank in range(1, self.workers)]
        opened = [peer.open.remote(config, rank, self.workers, address, threads)
                  for rank, peer in enumerate(self.peers, start=1)]
        distributed.join(*address, 0, self.workers, default_device())
        return opened

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """A reused worker takes the sweep's next trial (RayConfig.reuse_actors): the last trial's
        parts go, gin is parsed afresh from the new config alone (bind_trial clears it first) and
        the parts are built anew; the process, its imports and its cached splits stay."""
        if self.workers > 1:
            return False  # its peers and process group are the trial's: Tune starts the next one afresh
        self.trial.close()
        self.trial = None
        gc.collect()  # the last trial's tensors, before the next one's are made
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        notes.forget_printed()  # the next trial's output says its own notes
        self.setup(new_config)
        return True

    def step(self) -> dict[str, Any]:
        running = [peer.run_epoch.remote() for peer in self.peers]
        metrics = self.trial.run_epoch()
        ray.get(running)  # a peer's failure fails the step
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """The snapshot goes straight to the trial's next checkpoint folder, written whole
        (`selfstudy.durable`): Ray would copy it from the scratch `checkpoint_dir` in place, and
        a full disk would leave half a snapshot there. Ray then copies the empty scratch folder."""
        storage = self._storage
        if storage is None or storage.storage_filesystem.type_name != "local":
            self.trial.save(Path(checkpoint_dir))
            return
        storage._check_validation_file()  # as Ray checks before its copy: the storage is the experiment's
        name = storage._make_checkpoint_dir_name(storage.current_checkpoint_index + 1)  # Ray's next, as it names it
        self.trial.save(Path(storage.trial_fs_path) / name)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Continue from the checkpoint, or from an older one when it is damaged (`Trial.restore`):
        Ray then counts epochs from the one the trial continues from."""
        self.trial.restore(Path(checkpoint_dir))
        self._iteration = self.trial.epoch
        if self.peers:
            state = ray.put(self.trial.state_dict())
            ray.get([peer.load_state_dict.remote(state) for peer in self.peers])

    def cleanup(self) -> None:
        if self.trial is not None:  # None after a reset whose setup failed
            self.trial.close()
        for peer in self.peers:
            ray.kill(peer)
        distributed.leave()


class Progress(tune.Callback):
    """Under -q, a line for each trial that completes or fails, with how many are left
    (`selfstudy.progress`). `quiet` is set by each run: a resumed sweep restores its callback.

    A trial that failed for want of space (`selfstudy.durable`) stops the whole run as Ctrl-C
    does, its trials saved for --resume: retrying on a full disk only fails again.
    `disk_full` then holds the failure's message for the driver to report."""

    quiet = False
    disk_full: str | None = None

    def __init__(self, metric: str, total: int):
        self.metric, self.total = metric, total  # total: the sweep's trials, also those not yet made

    def ended(self, trials: list, trial: Any, status: str) -> None:
        if Progress.quiet:
            done = 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)  # Tune marks it after
            value = (trial.last_result or {}).get(self.metric)
            say(progress_line(str(trial), status, self.metric, value, done, max(self.total, len(trials))))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.stop_if_disk_full(trial)
        self.ended(trials, trial, "errored")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.stop_if_disk_full(trial)

    def stop_if_disk_full(self, trial: Any) -> None:
        try:
            text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
        except OSError:
            return
        line = folders.error_line(text)
        if Progress.disk_full is None and is_disk_message(line):
            Progress.disk_full = re.sub(r"^(?:[\w.]+: )?(?:\[Errno \d+\] )?", "", line)
            os.kill(os.getpid(), signal.SIGINT)  # Tune stops every trial and saves its state
