"""Batch augmentation: geometry, per-pixel fields (class maps, depth) that follow their images,
pose labels mirrored with a flip, two views, kornia operations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY
from selfstudy.augment import Augment, Tables, augment_options, batch_cutout, flip_translate_index, gather_pixels
from selfstudy.config import split_binding
from selfstudy.data import Batch
from selfstudy.errors import UserError
from selfstudy.render import mirrored_pose_label
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
    index, mirrored = flip_translate_index(32, 2, True, Tables(6, 6, 2, 0, images.device),
                                           torch.Generator().manual_seed(0))
    out = gather_pixels(images, index)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    seen = set()
    for o, p, flipped in zip(out, padded, mirrored):
        matches = [(dy, dx, mirrored) for dy in range(5) for dx in range(5) for mirrored in (False, True)
                   if torch.equal(o, (p.flip(-1) if mirrored else p)[:, dy:dy + 6, dx:dx + 6])]
        assert matches and all(m[2] == bool(flipped) for m in matches)  # it says which images it mirrored
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
    out, (moved,), _ = augment(images, MEAN, STD, torch.Generator().manual_seed(1), maps=(mask,))
    assert moved.dtype == torch.int64 and torch.equal(out[:, 0], moved.float())  # aligned, pixel for pixel
    assert not torch.equal(moved, mask)
    depth = images[:, 1] * 10  # a float map moves the same way
    _, (moved_depth,), _ = augment(images, MEAN, STD, torch.Generator().manual_seed(1), maps=(depth,))
    assert torch.equal(moved_depth, out[:, 1] * 10)


def test_masks_follow_resized_crop_with_nearest_sampling() -> None:
    images, mask = quadrant_scene()
    torch.manual_seed(0)
    augment = Augment(flip=False, crop=0, resized_crop=0.2, transform_targets=True)
    out, (moved,), _ = augment(images, MEAN, STD, maps=(mask,))
    assert moved.dtype == torch.int64 and set(moved.unique().tolist()) <= {1, 2, 3, 4}
    assert not torch.equal(moved, mask)
    # away from class borders bilinear sampling of the image agrees with the nearest-sampled mask
    interior = (out[:, 0] - out[:, 0].round()).abs() < 1e-3
    assert interior.float().mean() > 0.8
    assert (out[:, 0].round()[interior] == moved[interior].float()).float().mean() > 0.99


def depth_of(images: torch.Tensor) -> torch.Tensor:
    """A depth map written in the image: the row ramp plus one, 0 (background) on class 1."""
    return torch.where(images[:, 0] == 1, 0.0, images[:, 2] * 4 + 1)


@pytest.mark.parametrize("options", [dict(flip=True, crop=6), dict(flip=True, crop=0, resized_crop=0.3)])
def test_every_per_pixel_field_moves_with_its_image(options: dict) -> None:
    """Class maps and depth maps, both read off the image, still match the augmented image."""
    images, mask = quadrant_scene()
    batch = Batch(images, mask, torch.arange(len(images)), depth=depth_of(images))
    assert list(batch.pixel_maps()) == ["targets", "depth"]
    torch.manual_seed(0)
    out = Augment(**options).batch(batch, MEAN, STD, torch.Generator().manual_seed(2))
    assert out.targets.dtype == torch.int64 and out.depth.dtype == batch.depth.dtype
    assert not torch.equal(out.depth, batch.depth) and set(out.targets.unique().tolist()) <= {1, 2, 3, 4}
    if options.get("resized_crop"):  # bilinear images against nearest maps: compare away from borders
        interior = (out.images[:, 0] - out.images[:, 0].round()).abs() < 1e-3
        assert interior.float().mean() > 0.8
        expected = depth_of(torch.cat([out.images[:, :1].round(), out.images[:, 1:]], dim=1))
        near = (out.depth - expected)[interior].abs() < 4 / 31 + 1e-5  # within one row of the ramp
        assert near.float().mean() > 0.99
        assert (out.targets[interior].float() == out.images[:, 0].round()[interior]).float().mean() > 0.99
    else:
        assert torch.equal(out.targets.float(), out.images[:, 0]) and torch.equal(out.depth, depth_of(out.images))


def test_geometry_that_cannot_move_a_field_is_refused() -> None:
    with pytest.raises(UserError, match="transform_targets = False would flip or shift the images but not their "
                                        "targets and depth maps: leave it out"):
        augment_options(transform_targets=False).check(("targets", "depth"))
    augment_options(transform_targets=False, flip=False, crop=0, color_jitter=0.4).check(("targets",))
    with pytest.raises(UserError, match="resized_crop zooms the images but cannot rescale their depth maps"):
        augment_options(resized_crop=0.5).check(("targets", "depth"))
    images, mask = quadrant_scene(4)
    with pytest.raises(UserError, match="transform_targets = False"):  # also for a batch built by hand
        Augment(transform_targets=False).batch(Batch(images, mask, torch.arange(4)), MEAN, STD, None)


def test_a_flip_mirrors_the_pose_label_of_the_flipped_images() -> None:
    b = 64
    images = torch.linspace(0, 1, 8).expand(b, 3, 8, 8).clone()  # a column ramp shows a flip
    pose = torch.arange(b) % 5
    out = Augment(flip=True, crop=0).batch(Batch(images, pose, torch.arange(b), pose=pose), MEAN, STD,
                                           torch.Generator().manual_seed(0))
    flipped = out.images[:, 0, 0, 0] > out.images[:, 0, 0, -1]
    assert 10 < flipped.sum() < b - 10
    assert torch.equal(out.pose, torch.where(flipped, mirrored_pose_label(pose), pose))
    assert torch.equal(out.targets, pose)  # a class per image is not a map: it stays
    assert torch.equal(Augment(flip=False, crop=2).batch(Batch(images, pose, torch.arange(b), pose=pose), MEAN, STD,
                                                         None).pose, pose)


def test_augment_draws_fresh_randomness_and_checks_its_dataset() -> None:
    augment = augment_options(color_jitter=0.4, grayscale=0.2, cutout=4, resized_crop=0.5, blur=0.5)
    images = torch.randn(8, 3, 16, 16)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    generator = torch.Generator().manual_seed(0)
    first, second = augment(images, mean, std, generator).images, augment(images, mean, std, generator).images
    assert first.shape == images.shape and torch.isfinite(first).all() and not torch.equal(first, second)
    with pytest.raises(UserError, match="need RGB or CIELAB"):
        dataclasses.replace(augment, color_space="hsv").check()
    with pytest.raises(UserError, match="transform_targets = True needs dense targets"):
        augment_options(transform_targets=True).check()
    assert not augment_options(do_augment=False).applies_to("train")
    with pytest.raises(UserError, match="unknown splits"):
        augment_options(do_augment=["train", "tset"])
    with pytest.raises(UserError, match=r"lie in \[0, 1\]"):
        augment_options(blur=1.5)


def test_blur_smooths_images() -> None:
    torch.manual_seed(0)
    images = torch.randn(16, 3, 32, 32)
    out = Augment(flip=False, crop=0, blur=1.0)(images, MEAN, STD).images
    assert out.diff(dim=-1).abs().mean() < 0.8 * images.diff(dim=-1).abs().mean()


def test_two_views_differ_but_share_labels_and_indices(workspace) -> None:
    bindings = [*TINY, "BaseDataset.double_sample = True", "augment.cutout = 8", "augment.resized_crop = 0.3"]
    trial = Trial({"gin_config": ["digits/r9/classify"], "gin_params": dict(split_binding(b) for b in bindings)})
    batch = next(trial.splits["train"].batches(32, 1, shuffle=(0, 1)))
    views = trial.prep(batch, "train")
    assert views.view2 is not None and views.view2.shape == views.images.shape
    assert not torch.equal(views.images, views.view2)
    assert not torch.equal(views.images, batch.images) and not torch.equal(views.view2, batch.images)
    assert torch.equal(views.targets, batch.targets) and torch.equal(views.index, batch.index)
    evaluated = trial.prep(next(trial.splits["valid"].batches(32, 1)), "valid")
    assert torch.equal(evaluated.images, evaluated.view2)  # no augmentation outside training: same view
    trial.close()
