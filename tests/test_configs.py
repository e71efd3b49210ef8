"""Every shipped config works: each .gin parses and trains a step; each Ray config loads."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import paths
from conftest import TINY, make_fake_cifar
from selfstudy.config import available_gin_configs, split_binding
from selfstudy.data import hdf5
from selfstudy.data.syn import render_split
from selfstudy.knn_trial import KNN_GRID_FILE, KnnTrial
from selfstudy.sweep import Request, check_variants, expand, param_space
from selfstudy.rayconfig import available_ray_configs, config_path, import_config, load_ray_config
from selfstudy.study import is_study, load_study
from selfstudy.render import STANDARD_CODES
from selfstudy.tasks import TASKS
from selfstudy.trials import check_trial, open_trial

QUICK = [*TINY, "session.train_iters = 2", "session.valid_iters = 1", "session.test_iters = 1",
         "init_resnet.choice = 'resnet9'", "MoCoTask.queue_size = 32"]  # below the tiny sets' images
GRID_BUDGETS = {"probe_grid.budgets": [10, 20]}  # a probe grid's, within the tiny synthetic sets


@pytest.fixture(scope="module")
def syn_sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The twelve standard synthetic sets, tiny, rendered once for this module."""
    root = tmp_path_factory.mktemp("syn")
    for code in STANDARD_CODES:
        (root / code).mkdir()
        statistics = render_split(root / code / "train.h5", code, 160, 32, 0, torch.device("cpu"), 1, code)
        render_split(root / code / "test.h5", code, 16, 32, 1, torch.device("cpu"), 1, code, statistics)
    (root / "multi_1111").mkdir()  # for the dense configs
    statistics = render_split(root / "multi_1111" / "train.h5", "1111", 160, 32, 0, torch.device("cpu"), 3, "multi")
    render_split(root / "multi_1111" / "test.h5", "1111", 16, 32, 1, torch.device("cpu"), 3, "multi", statistics)
    (root / "0000_lab").mkdir()  # for the CMC config
    statistics = render_split(root / "0000_lab" / "train.h5", "0000", 160, 32, 0, torch.device("cpu"), 1, "lab",
                              lab=True)
    render_split(root / "0000_lab" / "test.h5", "0000", 16, 32, 1, torch.device("cpu"), 1, "lab", statistics, lab=True)
    return root


def make_folder_set(folder: Path, seed: int = 0) -> None:
    """A tiny set in make_dataset.py's format: 120 training and 30 test images of 3 classes."""
    rng = np.random.default_rng(seed)
    for name, n in (("train", 120), ("test", 30)):
        images = rng.random((n, 3, 16, 16)).astype(np.float32)
        hdf5.write_split(folder / f"{name}.h5", images, rng.integers(0, 3, n), ["a", "b", "c"],
                         np.full(3, 0.5), np.full(3, 0.29))


@pytest.fixture
def with_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syn_sets: Path) -> Path:
    """DATA_DIR with a fake CIFAR release and the tiny synthetic sets."""
    make_fake_cifar(tmp_path, per_batch=220)
    make_folder_set(tmp_path / "images")  # config/folder/r9/classify.gin's default FolderDataset.path
    (tmp_path / "syn").symlink_to(syn_sets)
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    monkeypatch.setattr(paths, "EXP_DIR", tmp_path / "exp")
    return tmp_path


def test_configs_are_shipped() -> None:
    assert {"digits/r9/classify", "cifar/r9/classify", "syn/r9/classify"} <= set(available_gin_configs())
    assert {"single_run", "grid_search", "syn_sweep", "pretrain_sweep"} <= set(available_ray_configs())


def test_every_registered_task_has_a_shipped_config() -> None:
    named = {match for name in available_gin_configs()
             for match in re.findall(r"session\.task = '(\w+)'", (paths.CONFIG_DIR / f"{name}.gin").read_text())}
    assert set(TASKS) <= named  # so the test below trains a step and an eval step of every task


@pytest.mark.parametrize("name", available_gin_configs())
def test_gin_config_builds_and_trains_three_epochs(name: str, with_cifar: Path, tmp_path: Path) -> None:
    vit = "/vit/" in name  # a ViT's config keeps its backbone, one block deep
    own_schedule = [b for b in QUICK if not b.startswith("scheduler.")  # each config's learning rates
                    and not (vit and b.startswith("init_resnet."))] + ["ViT.depth = 1"] * vit
    config = {"gin_config": [name], "seed": 0, "gin_params": dict(split_binding(b) for b in own_schedule)}
    if name.startswith("syn/") and "probe_grid" in name:
        config.update(GRID_BUDGETS)
    check_trial(config)
    trial = open_trial(config, tmp_path / "trial")  # a probe grid's config builds a grid trial
    metrics = trial.run_epoch()
    if isinstance(trial, KnnTrial):  # one epoch that trains nothing: it scores its k and temperatures
        assert trial.done and {"valid_accuracy", "test_accuracy", "test_at_best", "knn_k"} <= set(metrics)
        assert (tmp_path / "trial" / KNN_GRID_FILE).is_file()
        return
    assert trial.step == 2 and metrics["epoch"] == 1
    assert {"train_loss", "valid_loss", "test_loss"} <= set(metrics)
    for _ in range(2):  # three epochs without NaN or overflow (run_epoch refuses a non-finite loss)
        metrics = trial.run_epoch()
    assert all(np.isfinite(value) for name, value in metrics.items() if name.endswith("loss"))
    assert "session.train_iters = 2" in (tmp_path / "trial" / "operative_config.gin").read_text()


@pytest.mark.parametrize("name", available_ray_configs())
def test_ray_config_expands_to_valid_trials(name: str, with_cifar: Path) -> None:
    """Every variant of every shipped Ray config (of every stage of a study) builds."""
    path = config_path(name)
    module = import_config(path)
    configs = [stage.config for stage in load_study(path, module).stages] if is_study(module) \
        else [load_ray_config(name)]
    for ray_config in configs:
        tiny = [binding for binding in ("ResNet.width = 4", "BaseDataset.num_valid = 64", "MoCoTask.queue_size = 32")
                if split_binding(binding)[0] not in ray_config.search_space]
        variants = expand(param_space(Request(gin_params=tiny), ray_config))
        assert variants
        budget = "BaseDataset.semisupervised"  # the tiny sets rendered here hold fewer images than real budgets
        small = [{**c, budget: min(c[budget], 20)} if c.get(budget) else c for c in variants]
        small = [{**c, "BaseDataset.num_valid": 64} if "BaseDataset.num_valid" in c else c for c in small]
        check_variants([{**c, **GRID_BUDGETS} if "probe_grid" in str(c.get("gin_config")) else c for c in small])


def test_grid_search_derives_batch_size_from_budget() -> None:
    variants = expand(param_space(Request(), load_ray_config("grid_search")))
    assert len(variants) == 8
    for config in variants:
        assert config["dataloader.batch_size"] == min(128, max(16, config["BaseDataset.semisupervised"] // 4))
        assert config["session.train_iters"] == 40


def test_trial_resources_follow_the_machine() -> None:
    from selfstudy.errors import UserError
    from selfstudy.cluster import trial_resources
    from selfstudy.rayconfig import RayConfig

    plain = RayConfig(name="plain", search_space={})
    assert trial_resources(plain, cluster={"CPU": 16, "GPU": 2}) == {"cpu": 8, "gpu": 1}
    assert trial_resources(plain, cluster={"CPU": 2}) == {"cpu": 2}
    greedy = RayConfig(name="greedy", search_space={}, resources_per_trial={"cpu": 1, "gpu": 1})
    with pytest.raises(UserError, match="asks 1 GPU per trial but there are 0"):
        trial_resources(greedy, cluster={"CPU": 2, "GPU": 0})
