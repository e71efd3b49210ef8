"""Shared fixtures: private data and experiment folders, and the real CLI in a subprocess."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gin
import pytest

import paths

ROOT = Path(__file__).resolve().parents[1]

# Tiny but real: ResNet-9 of width 4 on 100 labelled digits, 2 epochs.
TINY = [
    "ResNet.width = 4",
    "BaseDataset.num_valid = 64",
    "dataloader.batch_size = 32",
    "scheduler.milestones = [1, 2]",
    "scheduler.target_lrs = [0.05, 0.0]",
]


@dataclass
class Workspace:
    exp_dir: Path
    data_dir: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ, SELFSTUDY_EXP_DIR=str(self.exp_dir), SELFSTUDY_DATA_DIR=str(self.data_dir),
                   PYTHONUNBUFFERED="1", SELFSTUDY_OFFLINE="1", TUNE_GLOBAL_CHECKPOINT_S="1", RAY_AUTH_MODE="disabled")
        env.pop("RAY_ADDRESS", None)
        # Python may keep the project's compiled modules (__pycache__, git-ignored): each CLI process and
        # Ray worker then skips compiling them, about 1 s of CPU apiece
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def run(self, *args: str, script: str = "main.py", timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a CLI of the project in a process of its own (forked warm: tests/cli_zygote.py);
        returns the finished process (stdout/stderr as text)."""
        global _zygote
        if _zygote is None or _zygote.process.poll() is not None:  # none yet, or it stopped
            _zygote = Zygote(self.env())
        try:
            return _zygote.run(str(ROOT / script), list(args), env or self.env(), timeout)
        except KeyboardInterrupt:  # the run was killed mid-protocol: the next run gets a new zygote
            _zygote.process.kill()
            raise

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                preexec_fn=_interruptible)


class Zygote:
    """tests/cli_zygote.py: forks a process for each CLI run from a Python that has imported the
    libraries; started at the first run, stopped when the tests end."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_zygote.py")], cwd=ROOT, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # bytes: read with os.read
        self.pending = b""
        atexit.register(self.process.stdin.close)  # its loop ends, and it exits

    def reply(self, timeout: float | None) -> dict | None:
        """The zygote's next line, or None if none comes within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the CLI zygote (tests/cli_zygote.py) stopped")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, script: str, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"script": script, "args": args, "env": env, "cwd": str(ROOT), "stdout": str(out),
                       "stderr": str(err)}
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = self.reply(None)["pid"]
            try:
                done = self.reply(timeout)
            except BaseException:  # Ctrl-C of the tests: the run and what it started stop too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                raise
            command = [sys.executable, script, *args]
            if done is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self.reply(None)
                raise subprocess.TimeoutExpired(command, timeout, out.read_text(errors="replace"),
                                                err.read_text(errors="replace"))
            return subprocess.CompletedProcess(command, done["status"], out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))


_zygote: Zygote | None = None


def _interruptible() -> None:
    """Ctrl-C (SIGINT) interrupts the child as at a terminal, also when the tests run in the background
    (a shell starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def fresh_gin() -> None:
    """Bindings parsed by an in-process trial must not leak into the next test."""
    gin.clear_config()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the whole run: the digits files are made once, here, so that no test
    that checks what a run writes in DATA_DIR sees them appear."""
    from selfstudy.data.digits import make_digits

    directory = tmp_path_factory.mktemp("data")
    make_digits(directory / "digits")
    return directory


@pytest.fixture
def workspace(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Fresh EXP_DIR for this test, shared DATA_DIR; in-process code sees the same folders."""
    exp_dir = tmp_path / "exp"
    monkeypatch.setattr(paths, "EXP_DIR", exp_dir)
    monkeypatch.setattr(paths, "DATA_DIR", data_dir)
    return Workspace(exp_dir, data_dir)


def write_ray_config(directory: Path, text: str) -> Path:
    path = directory / "sweep_config.py"
    path.write_text(text)
    return path


def make_fake_cifar(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> None:
    """A tiny CIFAR-10 python release in the real pickle format under `root/cifar`."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
