"""Batch augmentation on the training device (`augment.*` in gin).

Every operation draws fresh randomness per image. Flip, translate and cutout are plain
tensor operations, flip and translate fused into one gather; random resized crop, colour
jitter, grayscale, blur and solarize are the batched operations of `selfstudy.views`, one
random draw per batch for all images' parameters (kornia is their reference in the tests,
and converts CIELAB images to RGB and back for the colour operations).

Geometric operations (flip, translate, resized crop) move every per-pixel field of a batch
(`Batch.pixel_maps`: dense class maps, depth maps) with its image, with the same sampled
parameters and nearest sampling, so class maps stay integer and depth 0 stays background.
A flip also mirrors the per-image labels it changes (`MIRRORED_LABELS`: the pose).

Views may differ (`selfstudy.multicrop`): blur and solarize take a probability per view, and
multi-crop adds local views (`Batch.local_views`), made in one pass over the batch repeated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import gin
import torch

from selfstudy import views
from selfstudy.data.splits import MIRRORED_LABELS, Batch
from selfstudy.errors import UserError
from selfstudy.multicrop import PER_VIEW, Chance, LocalCrops, active, chance, check_per_view, per_image


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size - 1), 2 (size - 1)] into [0, size) by reflection at the borders."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


class Tables:
    """Per-size lookup tables that turn a batch's random draws into gather indices with a
    handful of kernels (the augmentation is bound by kernel launches, not arithmetic)."""

    def __init__(self, h: int, w: int, pad: int, cutout: int, device: torch.device):
        shifts = torch.arange(-pad, pad + 1, device=device)[:, None]  # (2 pad + 1) x 1
        self.rows = reflect(torch.arange(h, device=device) + shifts, h) * w  # shift -> source row offsets
        cols = reflect(torch.arange(w, device=device) + shifts, w)
        self.cols = torch.cat([cols, w - 1 - cols])  # shift, then shift + (2 pad + 1) when mirrored
        self.cut_rows = self.inside(h, cutout, device)  # centre -> rows the square covers
        self.cut_cols = self.inside(w, cutout, device)

    @staticmethod
    def inside(size: int, cutout: int, device: torch.device) -> torch.Tensor:
        offset = torch.arange(size, device=device)[None, :] - torch.arange(size, device=device)[:, None]
        return (offset + cutout // 2 >= 0) & (offset + cutout // 2 < cutout)  # centre x pixel


def flip_translate_index(b: int, pad: int, flip: bool, tables: Tables,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat source pixel (B x H x W, into H * W) of a random left-right flip (probability 1/2)
    and a random shift by -pad..pad pixels with reflection at the borders; and which images
    are mirrored (B bool)."""
    device = tables.rows.device
    shift = torch.randint(0, 2 * pad + 1, (2, b), device=device, generator=generator)
    mirror = torch.zeros(b, dtype=torch.bool, device=device)
    if flip:
        mirror = torch.rand(b, device=device, generator=generator) < 0.5
        shift[1] += mirror * (2 * pad + 1)
    return tables.rows[shift[0]][:, :, None] + tables.cols[shift[1]][:, None, :], mirror


def gather_pixels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, ..., index[b, i, j]] with x of B x C x H x W or B x H x W and flat indices B x H x W."""
    b, h, w = index.shape
    if x.ndim == 3:
        return x.reshape(b, h * w).gather(1, index.reshape(b, h * w)).view(b, h, w)
    c = x.shape[1]
    return x.reshape(b, c, h * w).gather(2, index.reshape(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def batch_cutout(images: torch.Tensor, size: int, tables: Tables, generator: torch.Generator | None) -> torch.Tensor:
    """Zero (the mean colour, as images are normalised) one size x size square per image,
    centred on a random pixel; squares may overlap the border."""
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b,), device=images.device, generator=generator)
    cx = torch.randint(0, w, (b,), device=images.device, generator=generator)
    inside = tables.cut_rows[cy][:, :, None] & tables.cut_cols[cx][:, None, :]  # B x H x W
    return images.masked_fill(inside[:, None], 0.0)


def stack_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Per-pixel maps, each B x H x W (integer class maps or float maps), as one float32
    B x M x H x W, so that one set of sampled parameters moves them all (class indices below
    2^24 are exact in float32)."""
    return torch.stack([m.float() for m in maps], dim=1) if maps else None


def unstack_maps(stack: torch.Tensor | None, like: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Inverse of `stack_maps`: each map back in its own dtype."""
    if stack is None:
        return ()
    moved = stack.unbind(1)
    return tuple(m.to(o.dtype) if o.is_floating_point() else m.round().to(o.dtype) for m, o in zip(moved, like))


class Augmented(NamedTuple):
    images: torch.Tensor  # B x C x H x W, normalised
    maps: tuple[torch.Tensor, ...]  # the per-pixel maps given (N x H x W each, of the first N images), moved
    mirrored: torch.Tensor  # B bool: the images flipped left-right


@dataclass(frozen=True)
class Augment:
    """A batch augmentation: the options of `augment.*` and the splits it applies to."""

    color_jitter: float = 0.0  # strength s: brightness, contrast, saturation s, hue s / 4 (probability 0.8)
    grayscale: float = 0.0  # probability
    flip: bool = True
    crop: int = 4  # pixels of reflection padding for random translation; 0 = off
    cutout: int = 0  # side of the erased square in pixels; 0 = off
    resized_crop: float = 0.0  # smallest area fraction of a random resized crop; 0 = off
    blur: float | tuple[float, ...] = 0.0  # probability of a Gaussian blur (sigma 0.1..2 pixels); or per view
    solarize: float | tuple[float, ...] = 0.0  # probability of inverting values at or above 0.5; or per view
    local: LocalCrops | None = None  # local views beside the two global ones (multi-crop); None = off
    transform_targets: bool | None = None  # None/True: per-pixel fields move; False: refused with geometry
    splits: tuple[str, ...] = ("train",)
    color_space: str = "rgb"  # of the images: colour operations on 'lab' run in RGB, converted both ways
    _tables: dict = field(default_factory=dict, repr=False, compare=False)  # Tables per size and device

    def __post_init__(self) -> None:
        for name in PER_VIEW:  # gin gives lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("color_jitter", "grayscale", "crop", "cutout", "resized_crop", "blur", "solarize"):
            given = getattr(self, name)
            for value in given if name in PER_VIEW and isinstance(given, tuple) and given else (given,):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UserError(f"augment.{name} = {given!r} must be a number (0: off)"
                                    + (", or a list of them, one per view" if name in PER_VIEW else ""))
                upper = 1 if name in ("grayscale", "blur", "resized_crop", "solarize") else float("inf")
                if not 0 <= value <= upper:
                    raise UserError(f"augment.{name} = {given!r} must lie in [0, {upper:g}]")

    @property
    def geometric(self) -> bool:
        """Whether any operation moves pixels (and so must move per-pixel fields)."""
        return bool(self.flip or self.crop or self.resized_crop)

    def check(self, pixel_fields: Sequence[str] = ()) -> None:
        """Raise if these options cannot apply to images of `color_space` whose batches carry
        these per-pixel fields (names of `Batch.pixel_maps`, e.g. ('targets', 'depth'))."""
        if (self.color_jitter or self.grayscale or active(self.solarize)) and self.color_space not in ("rgb", "lab"):
            raise UserError(f"augment.color_jitter/grayscale/solarize need RGB or CIELAB images, but the dataset "
                            f"stores {self.color_space}: set them to 0")
        self.check_maps(pixel_fields)
        if "depth" in pixel_fields and self.resized_crop:  # moved exactly, but no longer true to the image
            raise UserError("augment.resized_crop zooms the images but cannot rescale their depth maps (a zoomed "
                            "object looks nearer): set it to 0 for depth; flips and shifts move depth maps exactly")

    def check_maps(self, pixel_fields: Sequence[str]) -> None:
        """Raise if these options cannot move batches' per-pixel fields of these names correctly."""
        if self.transform_targets and not pixel_fields:
            raise UserError("augment.transform_targets = True needs dense targets (masks or depth maps), but the "
                            "dataset has one class per image: set it to False")
        if self.transform_targets is False and pixel_fields and self.geometric:
            raise UserError(f"augment.transform_targets = False would flip or shift the images but not their "
                            f"{' and '.join(pixel_fields)} maps: leave it out (per-pixel maps move with their images) "
                            "or turn off augment.flip, augment.crop and augment.resized_crop")

    def check_views(self, double_sample: bool, res: int) -> None:
        """Raise if the views' settings do not fit a batch's views: one or two global ones
        (`double_sample`) of `res` pixels, and the local ones."""
        if self.local is not None:
            self.local.check(double_sample, res, self.resized_crop or 1.0)
        check_per_view({name: getattr(self, name) for name in PER_VIEW}, double_sample, self.local is not None)

    def applies_to(self, split: str) -> bool:
        return split in self.splits

    @property
    def changes_images(self) -> bool:
        """Whether any operation is on (else a batch comes out as it went in)."""
        return bool(self.geometric or self.color_jitter or self.grayscale or self.cutout or active(self.blur)
                    or active(self.solarize))

    def colour(self, raw: torch.Tensor, generator: torch.Generator | None, solarize: Chance | None = None
               ) -> torch.Tensor:
        """Colour jitter (probability 0.8; brightness, contrast and saturation factors uniform in
        [max(0, 1 - s), 1 + s], hue in [-s / 4, s / 4] turns (at most half a turn), in a random
        order per batch, as torchvision's ColorJitter), grayscale and solarize (threshold 0.5)
        on RGB values in [0, 1], with fresh parameters per image (`solarize`: the probability, per
        image or for all; `augment.solarize` by default). The order comes from the
        host's generator (seeded per trial): no device round trip."""
        b, device = len(raw), raw.device
        u = torch.rand(b, 7, generator=generator, device=device)
        x = raw.clamp(0, 1)
        if self.color_jitter:
            s = self.color_jitter
            on = u[:, 0] < 0.8
            low = max(0.0, 1 - s)
            factors = low + (1 + s - low) * u[:, 1:4]
            turns = min(s / 4, 0.5) * (2 * u[:, 4] - 1)
            steps = (lambda y: views.brightness(y, torch.where(on, factors[:, 0], 1.0)),
                     lambda y: views.contrast(y, torch.where(on, factors[:, 1], 1.0)),
                     lambda y: views.saturation(y, torch.where(on, factors[:, 2], 1.0)),
                     lambda y: views.hue(y, torch.where(on, turns, 0.0)))
            for step in torch.randperm(4).tolist():
                x = steps[step](x)
        if self.grayscale:
            x = views.grayscale(x, u[:, 5] < self.grayscale)
        solarize = per_image(self.solarize, b, device) if solarize is None else solarize
        if not isinstance(solarize, float | int) or solarize:
            x = views.solarize(x, u[:, 6] < solarize)
        return x

    def blurred(self, images: torch.Tensor, generator: torch.Generator | None, blur: Chance | None = None
                ) -> torch.Tensor:
        """With probability `blur` (per image or for all; `augment.blur` by default), a Gaussian
        blur of sigma uniform in [0.1, 2] pixels (kernel about a tenth of the image, at least 3 taps)."""
        b, _, h, w = images.shape
        u = torch.rand(b, 2, generator=generator, device=images.device)
        kernel = min(max(3, (min(h, w) // 10) | 1), 2 * min(h, w) - 1)
        blurred = views.gaussian_blur(images, 0.1 + 1.9 * u[:, 0], kernel)
        chosen = u[:, 1] < (per_image(self.blur, b, images.device) if blur is None else blur)
        return torch.where(chosen.view(-1, 1, 1, 1), blurred, images)

    def tables(self, h: int, w: int, device: torch.device) -> Tables:
        if (h, w, device) not in self._tables:
            self._tables[(h, w, device)] = Tables(h, w, self.crop, self.cutout, device)
        return self._tables[(h, w, device)]

    def __call__(self, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 generator: torch.Generator | None = None, maps: Sequence[torch.Tensor] = (), n_views: int = 1,
                 local: bool = False) -> Augmented:
        """Augment a normalised batch B x C x H x W (mean/std: C, to undo the normalisation for
        colour operations) and move its per-pixel maps (each N x H x W, N <= B: the maps of the
        first N images) with the same parameters. The batch holds `n_views` views stacked view-major
        (for per-view probabilities); with `local`, local views: crops of the `scale` resized to the
        `res` pixels of `self.local`, whatever `resized_crop` says (and no maps)."""
        b, _, h, w = images.shape
        stack = stack_maps(maps)
        n = 0 if stack is None else len(stack)
        size, low, high = ((self.local.res,) * 2, *self.local.scale) if local else ((h, w), self.resized_crop, 1.0)
        if local or self.resized_crop:
            boxes = views.crop_boxes(b, h, w, low, generator, images.device, max_scale=high)
            grid = views.crop_grid(boxes, h, w, size)
            images = views.resized_crop(images, grid)
            if stack is not None:
                stack = views.resized_crop(stack, grid[:n], mode="nearest")
            h, w = size
        blur, solarize = (chance(getattr(self, name), n_views, local) for name in PER_VIEW)
        if self.color_jitter or self.grayscale or active(solarize):
            scale, shift = std[:, None, None], mean[:, None, None]
            raw = images * scale + shift
            if self.color_space == "lab":  # L in [0, 100], a/b about [-128, 127]
                import kornia

                rgb = kornia.color.lab_to_rgb(raw.float(), clip=True)
                raw = kornia.color.rgb_to_lab(self.colour(rgb, generator, per_image(solarize, b, images.device)))
            else:
                raw = self.colour(raw, generator, per_image(solarize, b, images.device))
            images = ((raw - shift) / scale).to(images.dtype)
        if active(blur):
            images = self.blurred(images, generator, per_image(blur, b, images.device))
        tables = self.tables(h, w, images.device)
        mirrored = torch.zeros(b, dtype=torch.bool, device=images.device)
        if self.flip or self.crop:
            index, mirrored = flip_translate_index(b, self.crop, self.flip, tables, generator)
            images = gather_pixels(images, index)
            if stack is not None:
                stack = gather_pixels(stack, index[:n])
        if self.cutout:
            images = batch_cutout(images, self.cutout, tables, generator)
        return Augmented(images, unstack_maps(stack, maps), mirrored)

    def batch(self, batch: Batch, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None,
              double: bool = False) -> Batch:
        """Augment a batch: its per-pixel fields move with the images, and labels a flip changes
        are mirrored for the flipped images. With `double`, add a second, independently augmented
        view (`view2`; the fields describe the first). Both views are augmented in one pass over
        the batch stacked twice (half the kernel launches of two passes): every image draws its own
        parameters, and only the colour jitter's order is shared, as it is within a batch. With
        `double` and `local`, add the local views (`local_views`, after both global ones)."""
        maps = batch.pixel_maps()
        self.check_maps(tuple(maps))
        b = len(batch.images)
        out = self(torch.cat([batch.images, batch.images]) if double else batch.images, mean, std, generator,
                   tuple(maps.values()), n_views=1 + double)
        local = None
        if self.local is not None and double:  # N local views of each image, view-major, in one pass
            local = self(batch.images.repeat(self.local.count, 1, 1, 1), mean, std, generator, local=True).images
        mirrored = out.mirrored[:b]
        moved = dict(zip(maps, out.maps))
        for name, mirror in MIRRORED_LABELS.items():
            label = getattr(batch, name)
            if label is not None:
                moved[name] = torch.where(mirrored, mirror(label), label)
        return batch._replace(images=out.images[:b], view2=out.images[b:] if double else None, local_views=local,
                              **moved)


@gin.configurable("augment", denylist=["color_space"])
def augment_options(color_jitter: float = 0.0, grayscale: float = 0.0, flip: bool = True, crop: int = 4,
                    cutout: int = 0, resized_crop: float = 0.0, blur: float | list[float] = 0.0,
                    solarize: float | list[float] = 0.0, transform_targets: bool | None = None,
                    do_augment: bool | list[str] = True, local_crops: int = 0, local_res: int = 0,
                    local_scale: list[float] = (0.05, 0.4), color_space: str = "rgb") -> Augment:
    """`augment.*`. `do_augment`: True = the train split, False = none, or a list of split names.
    `transform_targets`: per-pixel fields (class maps, depth maps) always move with their images;
    True also asserts the dataset has them, False refuses geometric operations on a set that does.
    `blur`, `solarize`: a probability for every view, or a list of one per view (view 1, view 2,
    and with `local_crops` the local views). `local_crops` local views per image (with
    `BaseDataset.double_sample`), `local_res` pixels wide, of `local_scale` area fractions.
    `color_space`: the images' (the dataset's, not a setting)."""
    if isinstance(do_augment, bool):
        splits = ("train",) if do_augment else ()
    else:
        splits = tuple(do_augment)
        unknown = set(splits) - {"train", "valid", "test"}
        if unknown:
            raise UserError(f"augment.do_augment names unknown splits {sorted(unknown)}; use train, valid, test")
    return Augment(color_jitter=color_jitter, grayscale=grayscale, flip=flip, crop=crop, cutout=cutout,
                   resized_crop=resized_crop, blur=blur, solarize=solarize, transform_targets=transform_targets,
                   splits=splits, local=LocalCrops(local_crops, local_res, local_scale) if local_crops else None,
                   color_space=color_space)

