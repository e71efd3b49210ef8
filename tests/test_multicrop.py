"""Views that differ: local views of multi-crop (shape, count, order, made on the device in one
pass), per-view blur and solarize probabilities, unchanged numbers when unset, bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from selfstudy import views
from selfstudy.augment import Augment, augment_options
from selfstudy.config import split_binding
from selfstudy.data import Batch
from selfstudy.errors import UserError
from selfstudy.multicrop import LocalCrops
from selfstudy.trial import Trial

MEAN, STD = torch.zeros(3), torch.ones(3)  # images in [0, 1] are their own raw values
PLAIN = dict(flip=False, crop=0)  # no geometry of the global views


def batch_of(images: torch.Tensor) -> Batch:
    return Batch(images, torch.zeros(len(images), dtype=torch.long), torch.arange(len(images)))


def test_local_views_come_view_major_at_their_resolution() -> None:
    """Image i is flat with value i / 10: local view k of image i is row k B + i, and flat i / 10."""
    b, n = 4, 6
    images = (torch.arange(b) / 10).view(b, 1, 1, 1).expand(b, 3, 32, 32).clone()
    augment = Augment(resized_crop=0.4, local=LocalCrops(n, 16, (0.05, 0.4)), flip=True, crop=2)
    out = augment.batch(batch_of(images), MEAN, STD, torch.Generator().manual_seed(0), double=True)
    assert out.images.shape == out.view2.shape == (b, 3, 32, 32)
    assert out.local_views.shape == (n * b, 3, 16, 16)
    expected = (torch.arange(b) / 10).repeat(n).view(-1, 1, 1, 1).expand(n * b, 3, 16, 16)
    assert torch.allclose(out.local_views, expected)
    one = augment.batch(batch_of(images), MEAN, STD, torch.Generator().manual_seed(0))  # one view: no local ones
    assert one.view2 is None and one.local_views is None


def test_local_crops_are_smaller_areas_of_the_image() -> None:
    """A column ramp: a local crop of area fraction a spans about sqrt(a) of the width."""
    b = 256
    images = torch.linspace(0, 1, 32).expand(b, 3, 32, 32).clone()
    augment = Augment(**PLAIN, local=LocalCrops(1, 8, (0.05, 0.2)))
    local = augment.batch(batch_of(images), MEAN, STD, torch.Generator().manual_seed(0), double=True).local_views
    span = local[:, 0, 0, -1] - local[:, 0, 0, 0]  # the fraction of the width the crop covers, less a pixel
    assert (span <= 0.2 ** 0.5 * 4 / 3 + 0.05).all() and (span >= 0.05 ** 0.5 * 3 / 4 - 0.05).all()
    assert span.std() > 0.02  # fresh crops per view


def test_numbers_are_unchanged_without_local_crops_or_with_equal_per_view_values() -> None:
    images = torch.rand(8, 3, 16, 16)
    options = dict(color_jitter=0.4, grayscale=0.2, resized_crop=0.3, flip=True, crop=2, cutout=4)

    def run(augment: Augment) -> Batch:
        torch.manual_seed(0)  # the colour jitter's order is drawn on the host
        return augment.batch(batch_of(images), MEAN, STD, torch.Generator().manual_seed(3), double=True)

    scalar = run(Augment(**options, blur=0.5, solarize=0.2))
    listed = run(augment_options(**options, blur=[0.5, 0.5], solarize=[0.2, 0.2]))
    assert scalar.local_views is None and torch.equal(scalar.images, listed.images)
    assert torch.equal(scalar.view2, listed.view2)
    multi = run(Augment(**options, blur=0.5, solarize=0.2, local=LocalCrops(2, 8)))  # drawn after the global views
    assert torch.equal(scalar.images, multi.images) and torch.equal(scalar.view2, multi.view2)
    boxes = views.crop_boxes(64, 16, 16, 0.3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(boxes, views.crop_boxes(64, 16, 16, 0.3, torch.Generator().manual_seed(0),
                                               torch.device("cpu"), max_scale=1.0))


def test_per_view_probabilities_of_one_and_zero() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16)
    blur = Augment(**PLAIN, blur=[1.0, 0.0]).batch(batch_of(images), MEAN, STD, None, double=True)
    assert torch.equal(blur.view2, images)  # view 2 never blurred
    changed = (blur.images - images).abs().amax(dim=(1, 2, 3)) > 0.05  # view 1 always (sigma 0.1..2:
    assert changed.float().mean() > 0.8  # below about 0.3 pixels a blur leaves the image as it is)
    assert blur.images.diff(dim=-1).abs().mean() < 0.8 * images.diff(dim=-1).abs().mean()
    solar = Augment(**PLAIN, solarize=[0.0, 1.0]).batch(batch_of(images), MEAN, STD, None, double=True)
    assert torch.allclose(solar.images, images) and torch.allclose(solar.view2, views.solarize(
        images, torch.ones(64, dtype=torch.bool)))
    local = Augment(**PLAIN, solarize=[0.0, 0.0, 1.0], local=LocalCrops(3, 8)).batch(
        batch_of(images), MEAN, STD, None, double=True)
    assert torch.allclose(local.view2, images) and local.local_views.max() <= 0.5  # every local view solarized
    assert images.max() > 0.9


def test_bad_view_settings_get_one_line() -> None:
    with pytest.raises(UserError, match=r"augment.local_res = 0 must be a whole number, at least 1 \(the local"):
        augment_options(local_crops=6)
    with pytest.raises(UserError, match=r"augment.local_scale = \[0.5, 0.2\] must be two area fractions"):
        augment_options(local_crops=6, local_res=16, local_scale=[0.5, 0.2])
    with pytest.raises(UserError, match=r"augment.local_crops = 2.5 must be a whole number"):
        augment_options(local_crops=2.5, local_res=16)
    with pytest.raises(UserError, match=r"augment.blur = \(1.0, 'x'\) must be a number \(0: off\), or a list"):
        augment_options(blur=[1.0, "x"])
    with pytest.raises(UserError, match=r"augment.solarize = \(0.0, 1.5\) must lie in \[0, 1\]"):
        augment_options(solarize=[0.0, 1.5])
    augment_options(local_crops=6, local_res=16).check_views(True, 32)
    augment_options(blur=[1.0, 0.1], solarize=[0.0, 0.2]).check_views(True, 32)


@pytest.mark.parametrize("bindings, says", [
    (["augment.local_crops = 2", "augment.local_res = 40"], "augment.local_res = 40 is above the images' 32 pixels: "
                                                            "local crops must not be larger than the global ones"),
    (["augment.local_crops = 2", "augment.local_res = 16", "augment.local_scale = [0.5, 0.6]"],
     r"augment.local_scale = \[0.5, 0.6\] starts above the global crops' smallest area, 0.3 \(augment.resized_crop\)"),
    (["augment.local_crops = 2", "augment.local_res = 16", "BaseDataset.double_sample = False",
      "session.task = 'RotateTask'"], "augment.local_crops adds local views to two global ones: set BaseDataset"),
    (["augment.blur = [1.0, 0.1, 0.5]"], r"augment.blur = \[1.0, 0.1, 0.5\] has 3 entries, but a batch has 2 kinds "
                                         r"of view: give one number for all, or one per view \(view 1, view 2\)"),
    (["augment.solarize = [0.0, 0.2]", "augment.local_crops = 2", "augment.local_res = 16"],
     r"has 2 entries, but a batch has 3 kinds of view: .* \(view 1, view 2, the local views\)"),
    (["augment.local_crops = 2", "augment.local_res = 16"], "augment.local_crops = 2: SimCLRTask does not use local "
                                                            "views \\(DINOTask does\\): set it to 0"),
])
def test_a_trial_refuses_views_that_do_not_fit(workspace, bindings: list[str], says: str) -> None:
    params = dict(split_binding(b) for b in [*TINY, *bindings])
    with pytest.raises(UserError, match=says):
        Trial({"gin_config": ["digits/r9/simclr"], "gin_params": params})


def test_a_trial_makes_local_views_of_its_training_batches_only(workspace) -> None:
    bindings = [*TINY, "augment.local_crops = 3", "augment.local_res = 16", "augment.blur = [1.0, 0.1, 0.5]"]
    trial = Trial({"gin_config": ["digits/r9/dino"], "gin_params": dict(split_binding(b) for b in bindings)})
    train = trial.prep(next(trial.splits["train"].batches(32, 1, shuffle=(0, 1))), "train")
    assert train.local_views.shape == (3 * 32, train.images.shape[1], 16, 16)
    assert train.view2.shape == train.images.shape == (32, train.images.shape[1], 32, 32)
    assert trial.prep(next(trial.splits["valid"].batches(32, 1)), "valid").local_views is None
    trial.close()
