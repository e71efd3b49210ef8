"""Batch augmentation on the training device (`augment.*` in gin).

Every operation draws fresh randomness per image. Flip, translate and cutout are plain
tensor operations, flip and translate fused into one gather; random resized crop, colour
jitter, grayscale and blur use kornia. With `transform_targets`, dense targets (masks,
depth maps: B x H x W) follow the image through every geometric operation, sampled with
nearest neighbours so that class maps stay integer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gin
import torch

from selfstudy.data.splits import Batch
from selfstudy.errors import UserError


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size - 1), 2 (size - 1)] into [0, size) by reflection at the borders."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def flip_translate_grid(b: int, h: int, w: int, pad: int, flip: bool, generator: torch.Generator | None,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows (B x H) and columns (B x W) of a random left-right flip (probability 1/2)
    and a random shift by -pad..pad pixels with reflection at the borders."""
    rows = torch.arange(h, device=device).expand(b, h)
    cols = torch.arange(w, device=device).expand(b, w)
    if pad:
        dy, dx = torch.randint(-pad, pad + 1, (2, b), device=device, generator=generator)
        rows, cols = reflect(rows + dy[:, None], h), reflect(cols + dx[:, None], w)
    if flip:
        mirror = torch.rand(b, device=device, generator=generator) < 0.5
        cols = torch.where(mirror[:, None], w - 1 - cols, cols)
    return rows, cols


def gather_grid(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x[b, ..., rows[b, i], cols[b, j]] for x of B x C x H x W or B x H x W."""
    batch = torch.arange(x.shape[0], device=x.device)
    if x.ndim == 3:
        return x[batch[:, None, None], rows[:, :, None], cols[:, None, :]]
    channel = torch.arange(x.shape[1], device=x.device)
    return x[batch[:, None, None, None], channel[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def batch_cutout(images: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero (the mean colour, as images are normalised) one size x size square per image;
    squares may overlap the border."""
    b, _, h, w = images.shape
    cy, cx = torch.randint(0, h, (2, b), device=images.device, generator=generator)
    ys = torch.arange(h, device=images.device)[None, :] - cy[:, None] + size // 2  # B x H
    xs = torch.arange(w, device=images.device)[None, :] - cx[:, None] + size // 2  # B x W
    inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]  # B x H x W
    return images.masked_fill(inside[:, None], 0.0)


@dataclass(frozen=True)
class Augment:
    """A batch augmentation: the options of `augment.*` and the splits it applies to."""

    color_jitter: float = 0.0  # strength s: brightness, contrast, saturation s, hue s / 4 (probability 0.8)
    grayscale: float = 0.0  # probability
    flip: bool = True
    crop: int = 4  # pixels of reflection padding for random translation; 0 = off
    cutout: int = 0  # side of the erased square in pixels; 0 = off
    resized_crop: float = 0.0  # smallest area fraction of a random resized crop; 0 = off
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.1..2 pixels)
    transform_targets: bool = False
    splits: tuple[str, ...] = ("train",)
    _kornia: dict = field(default_factory=dict, repr=False, compare=False)  # modules per image size

    def __post_init__(self) -> None:
        if not (0 <= self.grayscale <= 1 and 0 <= self.blur <= 1 and 0 <= self.resized_crop <= 1):
            raise UserError(f"augment probabilities and resized_crop must lie in [0, 1]: {self}")
        if self.color_jitter < 0 or self.crop < 0 or self.cutout < 0:
            raise UserError(f"augment sizes must be >= 0: {self}")

    def check(self, color_space: str, dense_targets: bool) -> None:
        """Raise if these options cannot apply to a dataset with this colour space and targets."""
        if (self.color_jitter or self.grayscale) and color_space != "rgb":
            raise UserError(f"augment.color_jitter/grayscale need RGB images, but the dataset stores {color_space}: "
                            "set them to 0 or use an RGB dataset")
        if self.transform_targets and not dense_targets:
            raise UserError("augment.transform_targets = True needs dense targets (masks or depth maps), but the "
                            "dataset has one class per image: set it to False")

    def applies_to(self, split: str) -> bool:
        return split in self.splits

    def modules(self, h: int, w: int) -> dict[str, torch.nn.Module]:
        """The kornia operations for h x w images, built once."""
        if (h, w) not in self._kornia:
            import kornia.augmentation as K

            ops: dict[str, torch.nn.Module] = {}
            if self.resized_crop:
                ops["crop"] = K.RandomResizedCrop((h, w), scale=(self.resized_crop, 1.0))
                ops["crop_targets"] = K.RandomResizedCrop((h, w), scale=(self.resized_crop, 1.0), resample="nearest")
            color = []
            if self.color_jitter:
                s = self.color_jitter
                color.append(K.ColorJitter(s, s, s, min(s / 4, 0.5), p=0.8))
            if self.grayscale:
                color.append(K.RandomGrayscale(p=self.grayscale))
            if color:
                ops["color"] = torch.nn.Sequential(*color)
            if self.blur:
                ops["blur"] = K.RandomGaussianBlur(max(3, (min(h, w) // 10) | 1), (0.1, 2.0), p=self.blur)
            self._kornia[(h, w)] = ops
        return self._kornia[(h, w)]

    def __call__(self, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 generator: torch.Generator | None = None,
                 targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a normalised batch B x C x H x W (mean/std: C, to undo the normalisation for
        colour operations) and, when given, its dense targets B x H x W the same way."""
        b, _, h, w = images.shape
        ops = self.modules(h, w)
        if "crop" in ops:
            images = ops["crop"](images)
            if targets is not None:
                moved = ops["crop_targets"](targets[:, None].float(), params=ops["crop"]._params)[:, 0]
                targets = moved.round().to(targets.dtype) if not targets.is_floating_point() else moved
        if "color" in ops:
            scale, shift = std[:, None, None], mean[:, None, None]
            images = (ops["color"]((images * scale + shift).clamp(0, 1)) - shift) / scale
        if "blur" in ops:
            images = ops["blur"](images)
        if self.flip or self.crop:
            rows, cols = flip_translate_grid(b, h, w, self.crop, self.flip, generator, images.device)
            images = gather_grid(images, rows, cols)
            if targets is not None:
                targets = gather_grid(targets, rows, cols)
        if self.cutout:
            images = batch_cutout(images, self.cutout, generator)
        return images, targets

    def batch(self, batch: Batch, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None,
              double: bool = False) -> Batch:
        """Augment a batch; with `double`, add a second, independently augmented view."""
        images, targets = self(batch.images, mean, std, generator, batch.targets if self.transform_targets else None)
        view2 = self(batch.images, mean, std, generator)[0] if double else None
        return Batch(images, batch.targets if targets is None else targets, batch.index, view2)


@gin.configurable("augment")
def augment_options(color_jitter: float = 0.0, grayscale: float = 0.0, flip: bool = True, crop: int = 4,
                    cutout: int = 0, resized_crop: float = 0.0, blur: float = 0.0, transform_targets: bool = False,
                    do_augment: bool | list[str] = True) -> Augment:
    """`augment.*`. `do_augment`: True = the train split, False = none, or a list of split names."""
    if isinstance(do_augment, bool):
        splits = ("train",) if do_augment else ()
    else:
        splits = tuple(do_augment)
        unknown = set(splits) - {"train", "valid", "test"}
        if unknown:
            raise UserError(f"augment.do_augment names unknown splits {sorted(unknown)}; use train, valid, test")
    return Augment(color_jitter, grayscale, flip, crop, cutout, resized_crop, blur, transform_targets, splits)
