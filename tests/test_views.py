"""The batched view operations equal kornia's functional operations on the same per-image
parameters, and the augmentation built from them draws its parameters from the trial's generator."""

from __future__ import annotations

import math

import kornia
import pytest
import torch

from selfstudy import views
from selfstudy.augment import Augment

torch.manual_seed(0)
IMAGES = torch.rand(8, 3, 24, 20)
FACTORS = torch.linspace(0.2, 1.8, 8)


@pytest.mark.parametrize("ours, theirs", [
    (views.brightness, kornia.enhance.adjust_brightness_accumulative),
    (views.contrast, kornia.enhance.adjust_contrast_with_mean_subtraction),
    (views.saturation, kornia.enhance.adjust_saturation_with_gray_subtraction),
])
def test_colour_factors_match_kornia(ours, theirs) -> None:
    assert torch.allclose(ours(IMAGES, FACTORS), theirs(IMAGES, FACTORS), atol=1e-6)


def test_hue_matches_kornia_in_turns() -> None:
    turns = torch.linspace(-0.5, 0.5, 8)
    assert torch.allclose(views.hue(IMAGES, turns), kornia.enhance.adjust_hue(IMAGES, turns * 2 * math.pi), atol=1e-5)
    grey = IMAGES.mean(dim=1, keepdim=True).expand_as(IMAGES)  # no hue to turn
    assert torch.allclose(views.hue(grey, turns), grey, atol=1e-6)


def test_grayscale_and_solarize_pick_their_images() -> None:
    chosen = torch.tensor([True, False] * 4)
    gray = views.grayscale(IMAGES, chosen)
    assert torch.allclose(gray[0], kornia.color.rgb_to_grayscale(IMAGES[:1])[0].expand(3, -1, -1), atol=1e-6)
    assert torch.equal(gray[1], IMAGES[1])
    solar = views.solarize(IMAGES, chosen)
    assert torch.equal(solar[0], kornia.enhance.solarize(IMAGES[:1], 0.5)[0]) and torch.equal(solar[1], IMAGES[1])


def test_blur_matches_kornia_with_a_sigma_per_image() -> None:
    sigma = torch.linspace(0.1, 2.0, 8)
    reference = kornia.filters.gaussian_blur2d(IMAGES, (5, 5), torch.stack([sigma, sigma], 1), border_type="reflect")
    assert torch.allclose(views.gaussian_blur(IMAGES, sigma, 5), reference, atol=1e-6)


def test_resized_crop_matches_kornia_and_draws_valid_boxes() -> None:
    boxes = views.crop_boxes(8, 24, 20, 0.3, torch.Generator().manual_seed(0), torch.device("cpu"))
    width, height = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 19).all() and (boxes[:, 3] <= 23).all()
    assert ((width * height) >= 0.3 * 24 * 20 * 0.8).all()  # rounding and clipping aside, at least min_scale
    corners = torch.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]], 1)
    reference = kornia.geometry.transform.crop_and_resize(IMAGES, corners, (24, 20), align_corners=True)
    ours = views.resized_crop(IMAGES, views.crop_grid(boxes, 24, 20, (24, 20)))
    assert torch.allclose(ours, reference, atol=1e-5)


def test_the_augmentation_is_reproducible_from_the_trials_seeds() -> None:
    augment = Augment(color_jitter=0.4, grayscale=0.2, resized_crop=0.3, blur=0.5, solarize=0.2, flip=True, crop=0)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    normalised = (IMAGES - 0.5) / 0.25

    def run(seed: int) -> torch.Tensor:  # a trial seeds its generator and torch's (the colour steps' order)
        torch.manual_seed(seed)
        return augment(normalised, mean, std, torch.Generator().manual_seed(seed)).images

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    raw = run(0) * 0.25 + 0.5
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # colour steps clamp to [0, 1]


def test_crop_boxes_follow_torchvisions_sampling() -> None:
    """Rejection sampling as torchvision's RandomResizedCrop: the same distribution of areas and
    of full-width crops (clipping instead would inflate both)."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    image = torch.zeros(1, 224, 224)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)],
                          dtype=torch.float32)  # top, left, height, width
    boxes = views.crop_boxes(4000, 224, 224, 0.08, torch.Generator().manual_seed(0), torch.device("cpu"))
    ours_w, ours_h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    assert abs((ours_w * ours_h).mean() / 224 ** 2 - (theirs[:, 2] * theirs[:, 3]).mean() / 224 ** 2) < 0.02
    assert abs((ours_w == 224).float().mean() - (theirs[:, 3] == 224).float().mean()) < 0.02
    tall = views.crop_boxes(64, 40, 10, 0.99, torch.Generator().manual_seed(0), torch.device("cpu"), tries=1)
    assert ((tall[:, 2] - tall[:, 0] + 1) <= 10).all() and ((tall[:, 3] - tall[:, 1] + 1) <= 40).all()


def test_colour_jitter_draws_torchvisions_ranges() -> None:
    """Strength s: 80% of images jittered, factors uniform in [max(0, 1 - s), 1 + s]; at s = 2 no
    factor piles up at 0 (a black image)."""
    flat = torch.full((2000, 3, 4, 4), 0.5)
    flat[:, 0] = 0.4  # a colour, so brightness changes it
    out = Augment(color_jitter=0.4, flip=False, crop=0)(flat, torch.zeros(3), torch.ones(3),
                                                        torch.Generator().manual_seed(0)).images
    changed = (out - flat).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 0.77 < changed.float().mean() < 0.83
    strong = Augment(color_jitter=2.0, flip=False, crop=0)(flat, torch.zeros(3), torch.ones(3),
                                                           torch.Generator().manual_seed(0)).images
    assert (strong.amax(dim=(1, 2, 3)) == 0).float().mean() < 0.01
