"""The corpus of 2020-style configs (tests/configs_2020, written from the 2020 code's documented
names and meanings) builds and trains on tiny data; 2020-layout dataset files load by index."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import paths
from conftest import Workspace, make_fake_cifar
from selfstudy.config import split_binding
from selfstudy.data.folder import to_lab
from selfstudy.data.syn import SynDataset
from selfstudy import notes
from selfstudy.errors import UserError
from selfstudy.build import build_parts
from selfstudy.trial import Trial
from selfstudy.trials import check_trial
from util import vis

CORPUS = Path(__file__).parent / "configs_2020"
TINY_2020 = ["BaseDataset.input_res = 32", "dataloader.batch_size = 16", "session.train_iters = 1",
             "session.valid_iters = 1", "session.test_iters = 1", "BaseDataset.num_valid = 16",
             "BaseDataset.max_images = None"]
N = 240  # images per 2020 file: train 200, then a gap of 20 rows (n / 12) before test


def rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    return (q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]).astype(np.float32)


def write_2020(path: Path, lab: bool = False, dense: bool = False, res: int = 32, seed: int = 0) -> None:
    """A file in the 2020 layout: data (N x 3 x res x res), targets (row index mod 10, so a row
    can be recognised from its label) or class maps, rot_mat; no attributes."""
    rng = np.random.default_rng(seed)
    images = rng.random((N, 3, res, res)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["data"] = (to_lab(images) if lab else images).astype(np.float16)
        if dense:
            maps = rng.integers(0, 11, (N, res, res))
            f["targets"] = maps
            f["depth"] = np.where(maps > 0, rng.uniform(2, 4, (N, res, res)), 0).astype(np.float32)
        else:
            f["targets"] = np.arange(N) % 10
        f["rot_mat"] = rotations(rng, N)


@pytest.fixture(scope="module")
def data_2020(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data_2020")
    write_2020(root / "syn" / "TCVL" / "data_32_lab.h5", lab=True)
    write_2020(root / "syn" / "TCVL" / "data_32.h5")
    write_2020(root / "syn" / "TCVL-multi" / "data_32_lab.h5", lab=True, dense=True)
    make_fake_cifar(root, per_batch=60)
    return root


@pytest.fixture
def in_2020_data(data_2020: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(paths, "DATA_DIR", data_2020)
    monkeypatch.setattr(paths, "EXP_DIR", tmp_path / "exp")
    return data_2020


def config_of(name: str, *bindings: str) -> dict:
    return {"gin_config": [str(CORPUS / name)], "seed": 0,
            "gin_params": dict(split_binding(b) for b in (*TINY_2020, *bindings))}


def test_the_corpus_covers_every_task_and_family() -> None:
    names = {p.stem for p in CORPUS.glob("*.gin")}
    texts = {name: (CORPUS / f"{name}.gin").read_text() for name in names}
    tasks = {"ClassifyTask", "RotateTask", "VAETask", "AMDIMTask", "CMCTask", "DepthTask"}
    assert all(any(f"session.task = '{task}'" in text for text in texts.values()) for task in tasks)
    assert any("is_pose = True" in text for text in texts.values())  # pose
    assert any("ClassifyTask" in text and "dense_pred = True" in text for text in texts.values())  # segment
    assert {name.split("_")[1] for name in names} >= {"r9", "r50"} and any(n.startswith("dense_") for n in names)
    assert {p.name for p in CORPUS.glob("*.py")} == {"grid_search.py", "hyperopt_search.py"}


REFUSED = {"syn_r50_amdim_ref.gin": "Wrapper.model_choice = 'amdim_ref' chose the 2020 reference AMDIM encoder, "
                                   "which selfstudy does not build: use session.task = 'AMDIMTask' with a ResNet"}


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.gin") if p.name not in REFUSED))
def test_a_2020_config_builds_and_trains_a_step(name: str, in_2020_data: Path, tmp_path: Path) -> None:
    config = config_of(name)
    check_trial(config)
    trial = Trial(config, tmp_path / "trial")
    try:
        metrics = trial.run_epoch()
    finally:
        trial.close()
    assert trial.step == 1 and metrics["epoch"] == 1
    assert all(np.isfinite(metrics[key]) for key in ("train_loss", "valid_loss", "test_loss"))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_2020_config_of_what_selfstudy_lacks_is_refused_in_one_line(name: str, in_2020_data: Path) -> None:
    with pytest.raises(UserError, match="^" + REFUSED[name]) as refusal:
        check_trial(config_of(name))
    assert "\n" not in str(refusal.value)


def test_2020_model_classes_and_defaults_keep_their_meaning(in_2020_data: Path) -> None:
    """CMCModel's memory bank and VAEModel's decoder settings land on the tasks; run_selfsup unset
    is True for a method; the data loader's settings are accepted with a note each."""
    cmc = build_parts(config_of("syn_r9_cmc.gin"), torch.device("cpu"))
    assert (cmc.task.negatives, cmc.task.temperature, cmc.task.bank_momentum) == (64, 0.1, 0.6)
    assert len(cmc.task.bank_l) == len(cmc.rows["train"]) == N * 5 // 6  # one row per training image, not 1281167
    assert "CMCModel.dataset_size = 1281167 is not needed: the memory bank has one row per training image, counted " \
           "from the dataset" in notes.seen()

    vae = build_parts(config_of("syn_r9_vae.gin"), torch.device("cpu"))
    assert (vae.task.output_res, vae.task.erase, vae.task.reparameterize) == (16, 32 // 4, False)
    images = torch.randn(4, 3, 32, 32)
    assert vae.task.decoder(torch.randn(4, vae.task.latent)).shape == (4, 3, 16, 16)  # at output_res
    vae.model.train(), vae.task.train()
    vae.task.erase = 0  # without the random square, a code without sampling is the same twice
    batch = type("Batch", (), {"images": images})()
    twice = [vae.task.objective(vae.model, batch)[1]["reconstruction_error"] for _ in range(2)]
    assert twice[0] == twice[1]
    vae.task.reparameterize = True
    torch.manual_seed(0)
    sampled = [vae.task.objective(vae.model, batch)[1]["reconstruction_error"] for _ in range(2)]
    assert sampled[0] != sampled[1]

    for name in ("dense_r50_rotate.gin", "dense_r50_amdim.gin"):  # Wrapper.run_selfsup not set
        parts = build_parts(config_of(name), torch.device("cpu"))
        assert parts.model.run_selfsup and not parts.task.probes  # a class per pixel: no probes
        assert parts.augment.crop == 32 // 8  # augment.crop = True: res // 8 at the trial's 32 pixels
    loader = build_parts(config_of("syn_r9_dataloader.gin", "dataloader.batch_size = 8"), torch.device("cpu"))
    assert loader.batch_size == 8
    said = "\n".join(notes.seen())
    assert "dataloader.shuffle is not used: training batches are always shuffled" in said
    assert "dataloader.num_workers is not used: images live on the device" in said


def test_the_one_file_layout_splits_by_index(in_2020_data: Path) -> None:
    """train = the first 5/6 of the rows, valid the next num_valid, test as many from n/12 after
    the end of train; targets are row % 10, so each split's first and last rows show."""
    parts = build_parts(config_of("syn_r9_classify_stage.gin"), torch.device("cpu"))
    assert parts.dataset.train.path == in_2020_data / "syn" / "TCVL" / "data_32.h5"  # use_lab = False
    rows = parts.dataset.split_rows(parts.options)
    n_train, gap = N * 5 // 6, N // 12
    assert rows["train"].tolist() == list(range(n_train))
    assert rows["valid"].tolist() == list(range(n_train, n_train + 16))
    assert rows["test"].tolist() == list(range(n_train + gap, n_train + gap + 16))
    loaded = parts.dataset.load(parts.options, torch.device("cpu"), ("train", "valid", "test"))
    for split, first in (("train", 0), ("valid", n_train), ("test", n_train + gap)):
        assert loaded[split].targets[0].item() == first % 10
    assert len(loaded["test"].targets) == 16
    with pytest.raises(UserError, match="num_valid = 21: the 2020 layout .* 0 to 20 fit without overlap"):
        parts.dataset.split_rows(dataclasses.replace(parts.options, num_valid=21))


def test_a_one_file_set_serves_divisions_and_label_budgets(in_2020_data: Path) -> None:
    """max_images below the split's size: the one file's train rows are read in divisions; a
    label budget picks balanced rows among them."""
    parts = build_parts(config_of("syn_r9_classify_stage.gin", "BaseDataset.max_images = 64",
                                  "BaseDataset.semisupervised = 100"), torch.device("cpu"))
    rows = parts.dataset.split_rows(parts.options)
    assert len(rows["train"]) == 100 and rows["train"].max() < N * 5 // 6
    assert np.bincount(np.asarray(rows["train"]) % 10).tolist() == [10] * 10  # targets are row % 10
    loaded = parts.dataset.load(parts.options, torch.device("cpu"), ("train",))
    try:
        seen = torch.cat([batch.targets for batch in loaded["train"].batches(20, -1, shuffle=(0, 1))])
    finally:
        loaded["train"].close()
    assert sorted(seen.tolist()) == sorted((np.asarray(rows["train"]) % 10).tolist())
    with pytest.raises(UserError, match="semisupervised = 300 exceeds the 200 training images .*: lower the budget$"):
        parts.dataset.split_rows(dataclasses.replace(parts.options, semisupervised=300))


def test_use_lab_names_the_file(in_2020_data: Path) -> None:
    import gin

    gin.bind_parameter("BaseDataset.input_res", 32)
    assert SynDataset("TCVL").train.path.name == "data_32_lab.h5"  # the 2020 default: CIELAB
    assert SynDataset("TCVL").train.color_space == "lab"
    assert SynDataset("TCVL", use_lab=False).train.path.name == "data_32.h5"
    with pytest.raises(UserError, match="holds the 2020 file data_32_lab.h5, not its RGB twin: set SynDataset.use_lab "
                                        "= True"):
        SynDataset("TCVL-multi", use_lab=False)
    with pytest.raises(UserError, match="SynDataset.use_lab = False reads the 2020 file .*Empty/data_32.h5"):
        SynDataset("Empty", use_lab=False)
    (in_2020_data / "syn" / "RGB").mkdir(exist_ok=True)
    (in_2020_data / "syn" / "RGB" / "data_32.h5").write_bytes((in_2020_data / "syn" / "TCVL" / "data_32.h5").read_bytes())
    with pytest.raises(UserError, match="holds the 2020 file data_32.h5, not its CIELAB twin: set SynDataset.use_lab = "
                                        "False"):
        SynDataset("RGB")


def test_the_2020_grid_config_runs_unchanged(workspace: Workspace) -> None:
    done = workspace.run("-e", "grid2020", "-l", "-q", "-r", str(CORPUS / "grid_search.py"), "-p",
                         "ResNet.width = 4", "BaseDataset.num_valid = 64", "dataloader.batch_size = 32",
                         "scheduler.milestones = [1, 2]", "scheduler.target_lrs = [0, 0.05, 0]")
    assert done.returncode == 0, done.stdout + done.stderr
    frame = vis.load_experiment("grid2020")
    assert sorted(frame["BaseDataset.semisupervised"]) == [60, 120] and (frame["status"] == "finished").all()
    progress = re.findall(r"^trial_local_0000(\d) finished: mean_accuracy [\d.]+ \((\d) of 2 trials ended, (\d) left\)$",
                          done.stdout, re.M)  # -q: a line per trial that ended
    assert progress == [("0", "1", "1"), ("1", "2", "0")], done.stdout
    assert frame["optimizer.weight_decay"].tolist() == pytest.approx([1e-5, 1e-5]), frame["optimizer.weight_decay"]  # sample_from


def test_the_2020_hyperopt_config_searches_through_ray(workspace: Workspace) -> None:
    """Ray 0.8 module paths and HyperOptSearch keywords (reward_attr, max_concurrent); the
    scheduler's own metric decides best_epoch; the scalar target_lrs and final_lr shape the schedule."""
    done = workspace.run("-e", "hyperopt2020", "-q", "-r", str(CORPUS / "hyperopt_search.py"), "-p",
                         "ResNet.width = 4", "BaseDataset.num_valid = 64", "dataloader.batch_size = 32",
                         "scheduler.milestones = [1, 2]", "BaseDataset.semisupervised = 100", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = vis.load_experiment("hyperopt2020")
    assert len(frame) == 2 and (frame["status"] == "finished").all()
    assert frame["scheduler.target_lrs"].between(1e-3, 1e-1).all()  # sampled by hyperopt, one number each
    assert frame["scheduler.exp_factor"].between(-0.5, 2).all()
    assert "note: ray.tune.suggest.hyperopt is ray.tune.search.hyperopt" in done.stderr
    ended = re.findall(r"^trial_\S+ finished(?:: \S+ [\d.]+)? \((\d) of 2 trials ended, (\d) left\)$", done.stdout, re.M)
    assert ended == [("1", "1"), ("2", "0")], done.stdout  # -q through Ray: a line per trial that ended
