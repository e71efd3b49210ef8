"""misc/make_dataset.py: image folders and list files to HDF5, resumable, with clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, Workspace

RES = 16
CLASSES = ("cat", "dog", "emu")


def make_tree(root: Path, per_class: int = 5, seed: int = 0) -> dict[Path, tuple[np.ndarray, str]]:
    """PNGs of RES x RES random pixels in root/<class>/; returns each path's pixels and class."""
    rng = np.random.default_rng(seed)
    made = {}
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
            path = root / name / f"img{i}.png"
            Image.fromarray(pixels).save(path)
            made[path] = (pixels, name)
    return made


def read(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with h5py.File(path) as f:
        return f["data"][...], f["targets"][...], {k: (v.tolist() if hasattr(v, "tolist") else v)
                                                   for k, v in f.attrs.items()}


def make(workspace: Workspace, *args: str):
    return workspace.run(*map(str, args), "--res", str(RES), script="misc/make_dataset.py")


def test_folder_round_trip(workspace: Workspace, tmp_path: Path) -> None:
    made = make_tree(tmp_path / "tree")
    done = make(workspace, tmp_path / "tree", "-o", "pets", "--test-fraction", "0.2", "--chunk", "4")
    assert done.returncode == 0, done.stderr
    assert "train: 12/12 images" in done.stderr and "wrote" in done.stdout
    out = workspace.data_dir / "pets"
    data, targets, attrs = read(out / "train.h5")
    test_data, test_targets, test_attrs = read(out / "test.h5")
    assert attrs["classes"] == list(CLASSES) and attrs["color_space"] == "rgb" and not attrs["normalised"]
    assert len(targets) == 12 and len(test_targets) == 3 and np.bincount(test_targets).tolist() == [1, 1, 1]
    expected = {(pixels.tobytes(), CLASSES.index(name)) for pixels, name in made.values()}
    restored = {((np.concatenate([data, test_data])[i].astype(np.float32) * 255).round().astype(np.uint8)
                 .transpose(1, 2, 0).tobytes(), t) for i, t in enumerate(np.concatenate([targets, test_targets]))}
    assert restored == expected  # every pixel and label back, none twice
    train_pixels = data.astype(np.float64)
    assert attrs["mean"] == pytest.approx(train_pixels.mean(axis=(0, 2, 3)).tolist(), abs=1e-9)
    assert attrs["std"] == pytest.approx(train_pixels.std(axis=(0, 2, 3)).tolist(), abs=1e-9)
    assert test_attrs["mean"] == attrs["mean"]  # the test split is normalised with the training statistics
    assert not list(out.glob(".*partial"))


def test_list_file_gives_the_same_dataset_as_the_folder(workspace: Workspace, tmp_path: Path) -> None:
    made = make_tree(tmp_path / "tree")
    paths = sorted(made)
    train_list, test_list = tmp_path / "train.txt", tmp_path / "test.txt"
    train_list.write_text("# path label\n" + "".join(f"tree/{p.parent.name}/{p.name} {made[p][1]}\n"
                                                     for p in paths if p.stem != "img4"))
    test_list.write_text("".join(f"{p} {made[p][1]}\n" for p in paths if p.stem == "img4") + "\n")
    assert make(workspace, train_list, "--test", test_list, "-o", "from_list").returncode == 0
    folder_test = tmp_path / "held_out"
    for p in paths:
        if p.stem == "img4":
            (folder_test / p.parent.name).mkdir(parents=True, exist_ok=True)
            p.rename(folder_test / p.parent.name / p.name)
    assert make(workspace, tmp_path / "tree", "--test", folder_test, "-o", "from_folder").returncode == 0
    for split in ("train", "test"):
        a = read(workspace.data_dir / "from_list" / f"{split}.h5")
        b = read(workspace.data_dir / "from_folder" / f"{split}.h5")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_interrupted_maker_resumes_and_makes_the_same_file(workspace: Workspace, tmp_path: Path) -> None:
    made = make_tree(tmp_path / "tree")
    make_tree(tmp_path / "held_out", per_class=1, seed=1)
    command = [tmp_path / "tree", "--test", tmp_path / "held_out", "--chunk", "3"]
    clean = make(workspace, *command, "-o", "clean")
    assert clean.returncode == 0, clean.stderr
    victim = sorted(made)[8]  # the ninth training image, after two saved chunks
    victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    failed = make(workspace, *command, "-o", "resumed")
    assert failed.returncode == 2 and f"cannot read image {victim}" in failed.stderr
    assert not (workspace.data_dir / "resumed" / "train.h5").exists()
    with h5py.File(workspace.data_dir / "resumed" / ".train.h5.partial") as f:
        assert f.attrs["done"] == 8  # everything before the bad image is kept
    Image.fromarray(made[victim][0]).save(victim)  # the user repairs the file
    resumed = make(workspace, *command, "-o", "resumed")
    assert resumed.returncode == 0 and "resuming train at 8/15 images" in resumed.stdout
    for split in ("train", "test"):
        a, b = read(workspace.data_dir / "clean" / f"{split}.h5"), read(workspace.data_dir / "resumed" / f"{split}.h5")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_corrupt_images_are_skipped_or_fail_as_asked(workspace: Workspace, tmp_path: Path) -> None:
    made = make_tree(tmp_path / "tree")
    bad = tmp_path / "tree" / "emu" / "broken.jpg"
    bad.write_bytes(b"GIF89a not really")
    failed = make(workspace, tmp_path / "tree", "-o", "strict")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: cannot read image {bad}")
    assert not (workspace.data_dir / "strict" / "train.h5").exists()
    skipped = make(workspace, tmp_path / "tree", "-o", "lenient", "--on-error", "skip")
    assert skipped.returncode == 0 and f"skipped unreadable image {bad}" in skipped.stderr
    _, targets, _ = read(workspace.data_dir / "lenient" / "train.h5")
    _, test_targets, _ = read(workspace.data_dir / "lenient" / "test.h5")
    assert len(targets) + len(test_targets) == len(made)


@pytest.mark.parametrize("line, says", [
    ("tree/cat/img0.png", "line 2: expected '<image path> <label>', got 'tree/cat/img0.png'"),
    ("tree/cat/nope.png cat", "no such image: {list} line 2 (tree/cat/nope.png)"),
])
def test_list_file_errors_name_the_line(workspace: Workspace, tmp_path: Path, line: str, says: str) -> None:
    make_tree(tmp_path / "tree")
    listing = tmp_path / "list.txt"
    listing.write_text(f"tree/dog/img0.png dog\n{line}\ntree/emu/img0.png emu\n")
    done = make(workspace, listing, "-o", "listed")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == \
        "error: " + f"{listing} " * ("expected" in says) + says.format(list=listing) + \
        ("; fix the list or pass --on-error skip" if "no such" in says else "")
    assert not (workspace.data_dir / "listed").exists()


def test_constant_images_a_single_class_and_existing_output_are_refused(workspace: Workspace, tmp_path: Path) -> None:
    for name in CLASSES:
        (tmp_path / "flat" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((RES, RES, 3), np.uint8)).save(tmp_path / "flat" / name / f"{i}.png")
    done = make(workspace, tmp_path / "flat", "-o", "flat", "--test-fraction", "0.34")
    assert done.returncode == 2 and "have std [0.0, 0.0, 0.0] per channel" in done.stderr
    assert not (workspace.data_dir / "flat" / "train.h5").exists()
    (tmp_path / "one" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((RES, RES, 3), 40 * i, np.uint8)).save(tmp_path / "one" / "cat" / f"{i}.png")
    single = make(workspace, tmp_path / "one", "-o", "one")
    assert single.returncode == 2 and "holds one class ('cat'): a classification set needs at least 2" in single.stderr
    assert not (workspace.data_dir / "one").exists()  # nothing written for a mistake
    make_tree(tmp_path / "tree")
    assert make(workspace, tmp_path / "tree", "-o", "once").returncode == 0
    again = make(workspace, tmp_path / "tree", "-o", "once")
    assert again.returncode == 2 and "train.h5 exists: pass --force to overwrite it" in again.stderr
    assert make(workspace, tmp_path / "tree", "-o", "once", "--force", "--to-lab").returncode == 0
    assert read(workspace.data_dir / "once" / "train.h5")[2]["color_space"] == "lab"


def test_made_dataset_trains_through_main(workspace: Workspace, tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", per_class=12)
    assert make(workspace, tmp_path / "tree", "-o", "pets_main", "--test-fraction", "0.25").returncode == 0
    done = workspace.run("-l", "-q", "-e", "pets", "-p", *TINY, "session.dataset = @FolderDataset()",
                         "FolderDataset.path = 'pets_main'", "BaseDataset.num_valid = 3", "dataloader.batch_size = 8",
                         "session.test_iters = -1")
    assert done.returncode == 0, done.stderr
    result = json.loads(next(workspace.exp_dir.glob("pets/*/result.json")).read_text().splitlines()[-1])
    assert 0 <= result["test_accuracy"] <= 1 and result["epoch"] == 2


def test_the_readme_folder_example_runs_on_a_90_image_folder(workspace: Workspace, tmp_path: Path) -> None:
    """README: make_dataset, then `main.py -g folder/r9/classify -p "FolderDataset.path = 'pets'"`."""
    make_tree(tmp_path / "pets", per_class=30)
    assert make(workspace, tmp_path / "pets", "-o", "pets90").returncode == 0
    done = workspace.run("-l", "-q", "-e", "readme", "-g", "folder/r9/classify", "-p", "FolderDataset.path = 'pets90'",
                         "ResNet.width = 4", "scheduler.milestones = [1, 2]")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(next(workspace.exp_dir.glob("readme/*/result.json")).read_text().splitlines()[-1])
    assert result["epoch"] == 2 and 0 <= result["valid_accuracy"] <= 1 and 0 <= result["test_accuracy"] <= 1
