"""The house: import-linter's contracts of pyproject.toml hold, and fail when a circle is put back;
one trial's worker parses gin once and computes its split plan once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, Workspace
from selfstudy import build, config
from selfstudy.config import split_binding
from selfstudy.data.base import DatasetFiles
from selfstudy.trials import open_trial

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def copy_house(tmp_path: Path) -> Path:
    for name in ("selfstudy", "util"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize("module, back_up", [
    ("selfstudy/trial.py", "from selfstudy.probe_trial import GridTrial"),  # a trial building its own subclass
    ("selfstudy/results.py", "from util.vis import load_experiment"),  # the package reading its notebook helpers
    ("util/pretraining_utility.py", "from selfstudy.study import Study"),  # the statistics reaching the driver
])
def test_a_circle_put_back_breaks_a_contract(tmp_path: Path, module: str, back_up: str) -> None:
    house = copy_house(tmp_path)
    path = house / module
    path.write_text(path.read_text() + f"\n\ndef _back_up():\n    {back_up}\n")  # a function-local import counts too
    done = lint(house)
    assert done.returncode == 1, done.stdout
    assert "BROKEN" in done.stdout and " 0 broken" not in done.stdout


@pytest.mark.parametrize("name", ["classify", "moco", "cmc"])
def test_a_trial_parses_gin_once_and_plans_its_splits_once(name: str, workspace: Workspace,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a trial (what a Ray worker and -l do) binds its gin config once and asks the
    dataset for its train and valid rows once: MoCo's queue and CMC's memory bank read the plan."""
    counts = {"bind": 0, "split_rows": 0}
    real_bind, real_rows = config.bind_trial, DatasetFiles.split_rows

    def counted_bind(trial_config: dict, *more: object) -> dict:
        counts["bind"] += 1
        return real_bind(trial_config, *more)

    def counted_rows(self: DatasetFiles, options) -> dict:
        counts["split_rows"] += 1
        return real_rows(self, options)

    monkeypatch.setattr(build, "bind_trial", counted_bind)
    monkeypatch.setattr(DatasetFiles, "split_rows", counted_rows)
    params = dict(split_binding(b) for b in (*TINY, "session.train_iters = 1"))
    trial = open_trial({"gin_config": [f"digits/r9/{name}"], "gin_params": params})
    try:
        assert counts == {"bind": 1, "split_rows": 1}
        trial.run_epoch()
        assert counts == {"bind": 1, "split_rows": 1}
    finally:
        trial.close()
