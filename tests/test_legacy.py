"""2020 values keep their 2020 meaning: one rule per setting (issue 13, first part)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY, Workspace, write_ray_config
from selfstudy.augment import Augment, for_resolution
from selfstudy.errors import UserError
from selfstudy.optim import build_schedule
from selfstudy.rayconfig import load_ray_config
from selfstudy.trial import build_parts
from util import vis


def test_target_lrs_one_longer_than_milestones_starts_at_its_first_entry() -> None:
    """`target_lrs = [0, .01, 1e-6]` with `milestones = [5, 25]`: 0 at epoch 0, 0.01 at 5, 1e-6 at 25."""
    schedule = build_schedule(0.5, 10, milestones=[5, 25], target_lrs=[0.0, 0.01, 1e-6])
    assert schedule.lr(0) == 0.0  # not optimizer.lr (0.5)
    assert schedule.lr(25) == pytest.approx(0.005)  # half-way to epoch 5
    assert schedule.lr(50) == pytest.approx(0.01)
    assert schedule.lr(250) == pytest.approx(1e-6)
    assert schedule.num_epochs == 25
    ours = build_schedule(0.5, 10, milestones=[5, 25], target_lrs=[0.01, 1e-6])
    assert ours.lr(0) == 0.5 and ours.lr(50) == pytest.approx(0.01)
    with pytest.raises(UserError, match="one more learning rate"):
        build_schedule(0.5, 10, milestones=[5, 25], target_lrs=[0.0, 0.01, 1e-6, 0.0])


def test_a_bool_means_the_2020_default_and_a_number_our_setting() -> None:
    on = for_resolution(Augment(color_jitter=True, grayscale=True, crop=True, cutout=True), 32)
    assert (on.crop, on.cutout, on.color_jitter, on.grayscale) == (4, 8, 0.4, 0.2)
    off = for_resolution(Augment(color_jitter=False, grayscale=False, crop=False, cutout=False), 32)
    assert (off.crop, off.cutout, off.color_jitter, off.grayscale) == (0, 0, 0, 0)
    numbers = for_resolution(Augment(color_jitter=0.8, grayscale=0.5, crop=1, cutout=3), 64)
    assert (numbers.crop, numbers.cutout, numbers.color_jitter, numbers.grayscale) == (1, 3, 0.8, 0.5)
    assert for_resolution(Augment(crop=True), 64).crop == 8  # res // 8 of the images the trial sees


def test_2020_augment_booleans_through_gin() -> None:
    params = {"augment.crop": "True", "augment.cutout": "True", "augment.color_jitter": "False"}
    parts = build_parts({"gin_config": ["digits/r9/classify"], "gin_params": params}, torch.device("meta"))
    resolution = parts.dataset.resolution(parts.options)
    assert (parts.augment.crop, parts.augment.cutout) == (resolution // 8, resolution // 4)
    assert parts.augment.color_jitter == 0


EXP_ARGS_GRID = """
from ray import tune
from ray.tune.suggest.basic_variant import BasicVariantGenerator  # Ray 0.8's module path

exp_args = {
    "stop": {"training_iteration": 2},
    "resume": False,
    "verbose": 1,
    "checkpoint_freq": 1,
    "checkpoint_at_end": True,
    "num_samples": 1,
    "resources_per_trial": {"cpu": 1},
    "search_alg": BasicVariantGenerator(),
    "config": {"BaseDataset.semisupervised": tune.grid_search([60, 120])},
}
"""


def test_a_2020_exp_args_config_loads_with_one_note_per_keyword_done_elsewhere(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    config = load_ray_config(str(write_ray_config(tmp_path, EXP_ARGS_GRID)))
    assert config.search_space["BaseDataset.semisupervised"] == {"grid_search": [60, 120]}
    assert (config.checkpoint_frequency, config.checkpoint_at_end, config.num_samples) == (1, True, 1)
    assert config.resources_per_trial == {"cpu": 1}
    assert isinstance(config.search_alg, BasicVariantGenerator)
    notes = capsys.readouterr().err.splitlines()
    assert any("ray.tune.suggest.basic_variant is ray.tune.search.basic_variant" in line for line in notes)
    for key in ("stop", "resume", "verbose"):
        assert sum(f"exp_args['{key}'] is not used" in line for line in notes) == 1, key
    write_ray_config(tmp_path, 'exp_args = {"config": {}, "trial_executor": None}\n')
    with pytest.raises(UserError, match="exp_args\\['trial_executor'\\] is not a setting"):
        load_ray_config(str(tmp_path / "sweep_config.py"))


def test_a_2020_exp_args_sweep_runs_unchanged(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, EXP_ARGS_GRID)
    done = workspace.run("-e", "legacy", "-l", "-q", "-r", str(config), "-p", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = vis.load_experiment("legacy")
    assert sorted(frame["BaseDataset.semisupervised"]) == [60, 120] and (frame["status"] == "finished").all()
    assert "note: ray.tune.suggest.basic_variant is ray.tune.search.basic_variant" in done.stderr


def test_2020_settings_without_a_job_are_accepted_with_one_note_each(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, 'from ray import tune\n'
                                        'search_space = {"BaseDataset.semisupervised": tune.grid_search([60, 120])}\n')
    done = workspace.run("-e", "apex", "-l", "-q", "-r", str(config), "-p", *TINY, "session.use_apex = True",
                         "session.keep_bn_f32 = True", "BaseDataset.remote_loading = True")
    assert done.returncode == 0, done.stdout + done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 3, done.stderr  # once each, though two trials were checked and ran
    assert any(line.startswith("note: session.use_apex is not used") for line in notes)
    assert any(line.startswith("note: BaseDataset.remote_loading is not used") for line in notes)
    assert (vis.load_experiment("apex")["status"] == "finished").all()
