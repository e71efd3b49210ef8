"""Batch augmentation: geometry, masks that follow their images, two views, kornia operations."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from selfstudy.augment import Augment, Tables, augment_options, batch_cutout, flip_translate_index, gather_pixels
from selfstudy.config import split_binding
from selfstudy.errors import UserError
from selfstudy.trial import Trial

MEAN, STD = torch.zeros(3), torch.ones(3)


def quadrant_scene(b: int = 16, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first channel equals a known class map: four quadrants of classes 1..4
    around a centre that moves per image; other channels hold a ramp, so flips show."""
    mask = torch.zeros(b, size, size, dtype=torch.int64)
    for i in range(b):
        cy, cx = 8 + i % 16, 8 + (3 * i) % 16
        mask[i, :cy, :cx], mask[i, :cy, cx:], mask[i, cy:, :cx], mask[i, cy:, cx:] = 1, 2, 3, 4
    images = torch.stack([mask.float(), torch.linspace(0, 1, size).expand(b, size, size),
                          torch.linspace(0, 1, size)[:, None].expand(b, size, size)], dim=1)
    return images, mask


def test_flip_and_translate_crop_the_reflected_image() -> None:
    images = torch.randn(32, 2, 6, 6)
    index = flip_translate_index(32, 2, True, Tables(6, 6, 2, 0, images.device), torch.Generator().manual_seed(0))
    out = gather_pixels(images, index)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    seen = set()
    for o, p in zip(out, padded):
        matches = [(dy, dx, mirrored) for dy in range(5) for dx in range(5) for mirrored in (False, True)
                   if torch.equal(o, (p.flip(-1) if mirrored else p)[:, dy:dy + 6, dx:dx + 6])]
        assert matches
        seen.add(matches[0])
    assert len(seen) > 8 and {m[2] for m in seen} == {False, True}  # fresh offsets and flips per image


def test_cutout_erases_one_square_per_image() -> None:
    images = torch.ones(32, 3, 16, 16)
    out = batch_cutout(images, 4, Tables(16, 16, 0, 4, images.device), torch.Generator().manual_seed(0))
    erased = (out[:, 0] == 0).sum(dim=(1, 2))
    assert (erased <= 16).all() and (erased > 0).all() and (erased == 16).sum() > 10
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # all channels together


def test_masks_follow_flip_and_crop_exactly() -> None:
    images, mask = quadrant_scene()
    augment = Augment(flip=True, crop=6, transform_targets=True)
    out, moved = augment(images, MEAN, STD, torch.Generator().manual_seed(1), targets=mask)
    assert moved.dtype == torch.int64 and torch.equal(out[:, 0], moved.float())  # aligned, pixel for pixel
    assert not torch.equal(moved, mask)
    depth = images[:, 1] * 10  # a float map moves the same way
    _, moved_depth = augment(images, MEAN, STD, torch.Generator().manual_seed(1), targets=depth)
    assert torch.equal(moved_depth, out[:, 1] * 10)


def test_masks_follow_resized_crop_with_nearest_sampling() -> None:
    images, mask = quadrant_scene()
    torch.manual_seed(0)
    augment = Augment(flip=False, crop=0, resized_crop=0.2, transform_targets=True)
    out, moved = augment(images, MEAN, STD, targets=mask)
    assert moved.dtype == torch.int64 and set(moved.unique().tolist()) <= {1, 2, 3, 4}
    assert not torch.equal(moved, mask)
    # away from class borders bilinear sampling of the image agrees with the nearest-sampled mask
    interior = (out[:, 0] - out[:, 0].round()).abs() < 1e-3
    assert interior.float().mean() > 0.8
    assert (out[:, 0].round()[interior] == moved[interior].float()).float().mean() > 0.99


def test_augment_draws_fresh_randomness_and_checks_its_dataset() -> None:
    augment = augment_options(color_jitter=0.4, grayscale=0.2, cutout=4, resized_crop=0.5, blur=0.5)
    images = torch.randn(8, 3, 16, 16)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    generator = torch.Generator().manual_seed(0)
    (first, _), (second, _) = augment(images, mean, std, generator), augment(images, mean, std, generator)
    assert first.shape == images.shape and torch.isfinite(first).all() and not torch.equal(first, second)
    with pytest.raises(UserError, match="need RGB"):
        augment.check("lab", dense_targets=False)
    with pytest.raises(UserError, match="transform_targets = True needs dense targets"):
        augment_options(transform_targets=True).check("rgb", dense_targets=False)
    assert not augment_options(do_augment=False).applies_to("train")
    with pytest.raises(UserError, match="unknown splits"):
        augment_options(do_augment=["train", "tset"])
    with pytest.raises(UserError, match=r"lie in \[0, 1\]"):
        augment_options(blur=1.5)


def test_blur_smooths_images() -> None:
    torch.manual_seed(0)
    images = torch.randn(16, 3, 32, 32)
    out, _ = Augment(flip=False, crop=0, blur=1.0)(images, MEAN, STD)
    assert out.diff(dim=-1).abs().mean() < 0.8 * images.diff(dim=-1).abs().mean()


def test_two_views_differ_but_share_labels_and_indices(workspace) -> None:
    bindings = [*TINY, "BaseDataset.double_sample = True", "augment.cutout = 8", "augment.resized_crop = 0.3"]
    trial = Trial({"gin_config": ["digits/r9/classify"], "gin_params": dict(split_binding(b) for b in bindings)})
    batch = next(trial.splits["train"].batches(32, 1, shuffle=(0, 1)))
    views = trial.prepare(batch, "train")
    assert views.view2 is not None and views.view2.shape == views.images.shape
    assert not torch.equal(views.images, views.view2)
    assert not torch.equal(views.images, batch.images) and not torch.equal(views.view2, batch.images)
    assert torch.equal(views.targets, batch.targets) and torch.equal(views.index, batch.index)
    evaluated = trial.prepare(next(trial.splits["valid"].batches(32, 1)), "valid")
    assert torch.equal(evaluated.images, evaluated.view2)  # no augmentation outside training: same view
    trial.close()
