"""Factors of variation and how a dataset code switches them.

A code is four digits for Texture, Colour, Viewpoint, Lighting, in that order: '1011' means
texture, viewpoint and lighting vary per image while colour is tied to the class; it is shown
as 'T-VL'. A factor that is off is held fixed per class: the class's palette colour, one
canonical viewpoint, one light, no texture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfstudy.errors import UserError
from selfstudy.render.scene import Scene
from selfstudy.render.shapes import SHAPE_NAMES

FACTORS = "TCVL"
STANDARD_CODES = ("0000", "1000", "0100", "0010", "0001", "1100", "0110", "0101", "0111", "1110", "1011", "1111")
NUM_CLASSES = len(SHAPE_NAMES)


@dataclass(frozen=True)
class Code:
    texture: bool
    colour: bool
    viewpoint: bool
    lighting: bool

    @classmethod
    def parse(cls, code: str) -> "Code":
        if len(code) != 4 or set(code) - {"0", "1"}:
            raise UserError(f"dataset code {code!r} must be four digits 0/1 for Texture, Colour, Viewpoint, "
                            f"Lighting, e.g. '1011'; standard codes: {' '.join(STANDARD_CODES)}")
        return cls(*(digit == "1" for digit in code))

    def display(self) -> str:
        """'T-VL' for '1011'."""
        return "".join(f if on else "-" for f, on in zip(FACTORS, (self.texture, self.colour, self.viewpoint,
                                                                    self.lighting)))


def palette(device: torch.device) -> torch.Tensor:
    """One saturated colour per class (K x 3), hues evenly spaced."""
    hue = torch.arange(NUM_CLASSES, device=device, dtype=torch.float32) / NUM_CLASSES
    k = (torch.tensor([5.0, 3.0, 1.0], device=device)[None, :] + hue[:, None] * 6) % 6
    return 0.9 - 0.7 * (torch.minimum(k, 4 - k).clamp(0, 1))


def axis_rotations(axis: int, angles: torch.Tensor) -> torch.Tensor:
    """Rotations about one coordinate axis by each of `angles` (radians): ... x 3 x 3."""
    c, s = angles.cos(), angles.sin()
    out = torch.eye(3, device=angles.device).expand(*angles.shape, 3, 3).clone()
    i, j = [a for a in range(3) if a != axis]
    out[..., i, i], out[..., i, j], out[..., j, i], out[..., j, j] = c, -s, s, c
    return out


def rotation_matrix(axis_angles: list[tuple[int, float]], device: torch.device) -> torch.Tensor:
    """Product of rotations about coordinate axes (0 = x, 1 = y, 2 = z), angles in radians."""
    out = torch.eye(3, device=device)
    for axis, angle in axis_angles:
        out = out @ axis_rotations(axis, torch.tensor(angle, device=device))
    return out


# Random viewpoints orbit an upright object, as photographs mostly do: any azimuth, an
# elevation from below to nearly overhead, and a slight camera roll. The image's "up" thus
# stays meaningful, as in natural images; rotation prediction relies on that.
ELEVATION = (math.radians(-30), math.radians(75))
ROLL = math.radians(15)


def random_viewpoints(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n object -> world rotations: turned by a uniform azimuth about the object's up axis,
    tilted towards the camera by an elevation uniform in ELEVATION, rolled by up to ROLL."""
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, device=device)

    azimuth, elevation, roll = uniform(0, 2 * math.pi), uniform(*ELEVATION), uniform(-ROLL, ROLL)
    return axis_rotations(2, roll) @ axis_rotations(0, elevation) @ axis_rotations(1, azimuth)


def canonical_rotation(device: torch.device) -> torch.Tensor:
    """The one viewpoint of datasets without viewpoint variation: tilted towards the camera."""
    return rotation_matrix([(0, 0.45), (1, 0.6)], device)


CANONICAL_LIGHT = (0.45, 0.65, 0.61, 1.0)  # direction (unit), intensity


def sample_scene(code: Code, n: int, generator: torch.Generator, device: torch.device,
                 objects: int = 1) -> Scene:
    """Factor values for n images of `objects` object slots (multi-object scenes use 2..objects)."""
    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    classes = torch.randint(0, NUM_CLASSES, (n, objects), generator=generator, device=device)
    if objects == 1:
        present = torch.ones(n, 1, dtype=torch.bool, device=device)
        centre, scale = torch.zeros(n, 1, 3, device=device), torch.ones(n, 1, device=device)
    else:
        count = torch.randint(2, objects + 1, (n, 1), generator=generator, device=device)
        present = torch.arange(objects, device=device)[None, :] < count
        centre = torch.stack([uniform(-0.8, 0.8, n, objects), uniform(-0.8, 0.8, n, objects),
                              uniform(-0.6, 0.6, n, objects)], dim=-1)
        scale = uniform(0.35, 0.55, n, objects)
    if code.viewpoint:
        rotation = random_viewpoints(n * objects, generator, device).view(n, objects, 3, 3)
    else:
        rotation = canonical_rotation(device).expand(n, objects, 3, 3).clone()
    colour = uniform(0.1, 0.95, n, objects, 3) if code.colour else palette(device)[classes]
    if code.texture:
        texture = torch.stack([uniform(0.3, 0.7, n, objects), uniform(1.5, 4.0, n, objects),
                               uniform(0, 2 * math.pi, n, objects), uniform(0, 2 * math.pi, n, objects)], dim=-1)
    else:
        texture = torch.zeros(n, objects, 4, device=device)
    if code.lighting:
        direction = torch.randn(n, 3, generator=generator, device=device)
        direction[:, 2] = direction[:, 2].abs() + 0.3  # lit from the camera's side
        direction = direction / direction.norm(dim=1, keepdim=True)
        light = torch.cat([direction, uniform(0.5, 1.5, n, 1)], dim=1)
    else:
        light = torch.tensor(CANONICAL_LIGHT, device=device).expand(n, 4).clone()
    return Scene(classes, present, rotation, centre, scale, colour, texture, light)


def pose_label(rotation: torch.Tensor) -> torch.Tensor:
    """5-way pose class of rotations ... x 3 x 3 (object -> world): 0 when the object's up axis
    points at the camera within 45 degrees (top view), else 1..4 by the azimuth quadrant of the
    camera seen from the object."""
    up_towards_camera = rotation[..., 2, 1]  # world z of the object's y axis
    camera = rotation[..., 2, :]  # R^T (0, 0, 1): the camera direction in object space
    azimuth = torch.atan2(camera[..., 0], camera[..., 2])  # -pi..pi around the object's y axis
    quadrant = ((azimuth + math.pi) / (math.pi / 2)).long().clamp(0, 3) + 1
    return torch.where(up_towards_camera > math.cos(math.pi / 4), 0, quadrant)


MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))  # x -> -x: a left-right flip, in world or object space


def mirrored_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """The rotation ... x 3 x 3 (object -> world) that the left-right mirror image of a scene
    shows: M R M with M = diag(-1, 1, 1). Mirroring the world flips the image (the camera looks
    down -z, so image columns follow world x); mirroring the object frame as well keeps the
    rotation proper and the object's up axis y where it was. Every shape's geometry is symmetric
    under the object-space mirror, so the mirrored scene renders as the flipped image (lit by
    the mirrored light; a stripe texture is mirrored, not redrawn)."""
    m = MIRROR.to(rotation)
    return m @ rotation @ m


def mirrored_pose_label(label: torch.Tensor) -> torch.Tensor:
    """The pose label of the left-right mirror image, from the label (any shape, int64): the
    mirror keeps the top view (0) and negates the camera's azimuth, so quadrant q (1..4, azimuth
    in [-pi + (q - 1) pi / 2, -pi + q pi / 2)) becomes 5 - q. Equals pose_label(mirrored_rotation(R))
    except for azimuths exactly on a quadrant boundary (a set of measure zero)."""
    return torch.where(label == 0, label, 5 - label)
