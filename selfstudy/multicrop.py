"""Views that differ: per-view probabilities and the local views of multi-crop (DINO's).

A batch of a two-view method has two global views of each image (`Batch.images`, `Batch.view2`);
with `augment.local_crops = N` also N local ones (`Batch.local_views`): smaller crops at a lower
resolution, made by `selfstudy.augment` in one pass over the batch repeated N times. Blur and
solarize (`PER_VIEW`) take one probability for every view, or a list with one per view: view 1,
view 2 and, with local crops, one for all the local views (BYOL: blur [1.0, 0.1], solarize
[0.0, 0.2]; DINO: blur [1.0, 0.1, 0.5], solarize [0.0, 0.2, 0.0])."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfstudy.errors import UserError

PER_VIEW = ("blur", "solarize")  # settings of augment.* that may differ by view
Chance = float | torch.Tensor  # a probability for every image, or one per image


def active(chance: float | tuple[float, ...]) -> bool:
    """Whether a probability (or any of a list's) is above 0."""
    return any(chance) if isinstance(chance, tuple) else bool(chance)


def chance(given: float | tuple[float, ...], views: int, local: bool) -> float | tuple[float, ...]:
    """A per-view setting's probability: one for all, or one for each of `views` global views, or
    (with `local`) the local views', the last entry."""
    if not isinstance(given, tuple):
        return given
    return given[-1] if local else given[:views]


def per_image(chance: float | tuple[float, ...], n: int, device: torch.device) -> Chance:
    """One probability for all n images, or each view's (of a tuple) for its n / views images,
    the views stacked view-major."""
    if not isinstance(chance, tuple):
        return chance
    return torch.tensor(chance, device=device).repeat_interleave(n // len(chance))


def check_per_view(settings: dict[str, float | tuple[float, ...]], double_sample: bool, local: bool) -> None:
    """Raise if a per-view list (of `settings`, by name) does not have one entry per kind of view."""
    names = ["view 1", "view 2"][:1 + double_sample] + ["the local views"] * local
    for name, given in settings.items():
        if isinstance(given, tuple) and len(given) != len(names):
            raise UserError(f"augment.{name} = {list(given)} has {len(given)} entries, but a batch has {len(names)} "
                            f"kinds of view: give one number for all, or one per view ({', '.join(names)})")


@dataclass(frozen=True)
class LocalCrops:
    """`count` local views per image: random crops of an area fraction in `scale` (low, high),
    resized to `res` x `res` pixels (`augment.local_crops`, `local_res`, `local_scale`)."""

    count: int
    res: int
    scale: tuple[float, float] = (0.05, 0.4)

    def __post_init__(self) -> None:
        for name, value in (("local_crops", self.count), ("local_res", self.res)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"augment.{name} = {value!r} must be a whole number, at least 1"
                                + (" (the local views' side in pixels; DINO: 96 beside 224)" * (name == "local_res")))
        scale = tuple(self.scale) if isinstance(self.scale, (list, tuple)) else self.scale
        numbers = isinstance(scale, tuple) and len(scale) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
        if not numbers or not 0 < scale[0] <= scale[1] <= 1:
            raise UserError(f"augment.local_scale = {self.scale!r} must be two area fractions [low, high] with "
                            "0 < low <= high <= 1 (DINO: [0.05, 0.4])")
        object.__setattr__(self, "scale", scale)

    def check(self, double_sample: bool, res: int, global_low: float) -> None:
        """Raise if these local views cannot go beside global views of `res` pixels whose crops
        cover at least `global_low` of the image (`augment.resized_crop`, 1 when off)."""
        if not double_sample:
            raise UserError("augment.local_crops adds local views to two global ones: set BaseDataset.double_sample "
                            "= True")
        if self.res > res:
            raise UserError(f"augment.local_res = {self.res} is above the images' {res} pixels: local crops must not "
                            f"be larger than the global ones; set it lower (DINO's is 3/7 of theirs: {res * 3 // 7})")
        if self.scale[0] > global_low:
            raise UserError(f"augment.local_scale = {list(self.scale)} starts above the global crops' smallest area, "
                            f"{global_low:g} (augment.resized_crop): local crops must not be larger than global ones; "
                            "lower it (DINO: [0.05, 0.4] beside global crops of [0.4, 1])")
