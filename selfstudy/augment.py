"""Batch augmentation on the training device (`augment.*` in gin).

Every operation draws fresh randomness per image from the trial's device generator.
Flip, translate and cutout are plain tensor operations; colour jitter and grayscale
use kornia on the de-normalised image and normalise again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gin
import torch
import torch.nn.functional as F

from selfstudy.errors import UserError


def batch_flip_lr(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2. images: B x C x H x W."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def batch_translate(images: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after `pad` pixels of reflection padding: shifts each image by -pad..pad."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), device=images.device, generator=generator)
    rows = torch.arange(h, device=images.device)[None, :] + dy[:, None]  # B x H
    cols = torch.arange(w, device=images.device)[None, :] + dx[:, None]  # B x W
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def batch_cutout(images: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero (the mean colour, as images are normalised) one size x size square per image;
    squares may overlap the border."""
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b,), device=images.device, generator=generator)
    cx = torch.randint(0, w, (b,), device=images.device, generator=generator)
    ys = torch.arange(h, device=images.device)[None, :] - cy[:, None] + size // 2  # B x H
    xs = torch.arange(w, device=images.device)[None, :] - cx[:, None] + size // 2  # B x W
    inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]  # B x H x W
    return images.masked_fill(inside[:, None], 0.0)


@dataclass(frozen=True)
class Augment:
    """A batch augmentation: the options of `augment.*` and the splits it applies to."""

    color_jitter: float = 0.0  # strength s: brightness, contrast, saturation s, hue s / 4
    grayscale: float = 0.0  # probability
    flip: bool = True
    crop: int = 4  # pixels of padding for random translation; 0 = off
    cutout: int = 0  # side of the erased square in pixels; 0 = off
    splits: tuple[str, ...] = ("train",)
    _color: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.grayscale <= 1 or self.color_jitter < 0 or self.crop < 0 or self.cutout < 0:
            raise UserError(f"augment settings out of range: {self}; probabilities lie in [0, 1], sizes are >= 0")
        if self.color_jitter or self.grayscale:
            import kornia.augmentation as K

            ops = []
            if self.color_jitter:
                s = self.color_jitter
                ops.append(K.ColorJitter(s, s, s, min(s / 4, 0.5), p=0.8))
            if self.grayscale:
                ops.append(K.RandomGrayscale(p=self.grayscale))
            object.__setattr__(self, "_color", torch.nn.Sequential(*ops))

    def check(self, color_space: str) -> None:
        if self._color is not None and color_space != "rgb":
            raise UserError(f"augment.color_jitter/grayscale need RGB images, but the dataset stores {color_space}: "
                            "set them to 0 or use an RGB dataset")

    def applies_to(self, split: str) -> bool:
        return split in self.splits

    def __call__(self, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a normalised batch B x C x H x W; mean/std: C, to undo the normalisation for colour ops."""
        if self._color is not None:
            scale, shift = std[:, None, None], mean[:, None, None]
            rgb = (images * scale + shift).clamp(0, 1)
            images = (self._color(rgb) - shift) / scale
        if self.flip:
            images = batch_flip_lr(images, generator)
        if self.crop:
            images = batch_translate(images, self.crop, generator)
        if self.cutout:
            images = batch_cutout(images, self.cutout, generator)
        return images


@gin.configurable("augment")
def augment_options(color_jitter: float = 0.0, grayscale: float = 0.0, flip: bool = True, crop: int = 4,
                    cutout: int = 0, do_augment: bool | list[str] = True) -> Augment:
    """`augment.*`. `do_augment`: True = the train split, False = none, or a list of split names."""
    if isinstance(do_augment, bool):
        splits = ("train",) if do_augment else ()
    else:
        splits = tuple(do_augment)
        unknown = set(splits) - {"train", "valid", "test"}
        if unknown:
            raise UserError(f"augment.do_augment names unknown splits {sorted(unknown)}; use train, valid, test")
    return Augment(color_jitter, grayscale, flip, crop, cutout, splits)
