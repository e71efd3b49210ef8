"""Batched sphere tracing of procedurally shaded scenes with torch, on the CPU or a GPU.

A fixed perspective camera at (0, 0, CAMERA_Z) looks down -z at the origin. Each object is
a shape class (see `shapes.py`) with a rotation (object -> world), a centre, a scale, a base
colour and a stripe texture in object space; each image has one directional light. Pixels
are Lambert-shaded: colour * texture * (AMBIENT + (1 - AMBIENT) * intensity * max(0, n . l)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfstudy.render.shapes import shape_distance

CAMERA_Z = 3.2
TAN_HALF_FOV = 0.38
STEPS = 32
NEAR, FAR = 1.9, 6.0  # every object lies beyond NEAR (see factors.sample_scene)
AMBIENT = 0.25
HIT = 2e-3
BACKGROUND = 0.4  # grey level of every pixel without an object


@dataclass
class Scene:
    """Factor values of a batch of B images with S object slots each (tensors on one device)."""

    classes: torch.Tensor  # B x S int64, shape class per object
    present: torch.Tensor  # B x S bool, slots in use
    rotation: torch.Tensor  # B x S x 3 x 3, object -> world
    centre: torch.Tensor  # B x S x 3
    scale: torch.Tensor  # B x S
    colour: torch.Tensor  # B x S x 3, RGB in [0, 1]
    texture: torch.Tensor  # B x S x 4: amplitude, frequency (cycles per unit), direction angle, phase
    light: torch.Tensor  # B x 4: unit direction towards the light, intensity


@dataclass
class Rendering:
    images: torch.Tensor  # B x 3 x H x W, RGB in [0, 1]
    class_map: torch.Tensor  # B x H x W int64: shape class + 1 of the visible object, 0 for background
    depth: torch.Tensor  # B x H x W float32: distance from the camera, 0 for background


def camera_rays(res: int, device: torch.device) -> torch.Tensor:
    """Unit ray directions P x 3 for a res x res image, row-major from the top left."""
    coords = (torch.arange(res, device=device, dtype=torch.float32) + 0.5) / res * 2 - 1
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    rays = torch.stack([u * TAN_HALF_FOV, -v * TAN_HALF_FOV, -torch.ones_like(u)], dim=-1).reshape(-1, 3)
    return rays / rays.norm(dim=-1, keepdim=True)


def object_points(points: torch.Tensor, scene: Scene, slot: int) -> torch.Tensor:
    """World points B x P x 3 in the object space of each image's object in `slot`."""
    local = (points - scene.centre[:, slot, None, :]) @ scene.rotation[:, slot]  # R^T (p - c), rows
    return local / scene.scale[:, slot, None, None]


def scene_distance(points: torch.Tensor, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance B x P to the nearest object and that object's slot."""
    best = points.new_full(points.shape[:2], FAR)
    slot_of = torch.zeros(points.shape[:2], dtype=torch.int64, device=points.device)
    for slot in range(scene.classes.shape[1]):
        if not scene.present[:, slot].any():
            continue
        d = shape_distance(object_points(points, scene, slot), scene.classes[:, slot]) * scene.scale[:, slot, None]
        d = torch.where(scene.present[:, slot, None], d, FAR)
        closer = d < best
        best = torch.where(closer, d, best)
        slot_of = torch.where(closer, slot, slot_of)
    return best, slot_of


def render(scene: Scene, res: int) -> Rendering:
    """Render a batch of scenes at res x res."""
    device = scene.classes.device
    b = scene.classes.shape[0]
    rays = camera_rays(res, device).expand(b, -1, -1)  # B x P x 3
    origin = rays.new_tensor([0.0, 0.0, CAMERA_Z])
    t = rays.new_full(rays.shape[:2], NEAR)
    for _ in range(STEPS):
        d, _ = scene_distance(origin + t[..., None] * rays, scene)
        t = (t + d).clamp(max=FAR)
    hit_points = origin + t[..., None] * rays
    d, slot = scene_distance(hit_points, scene)
    hit = (d < HIT * t) & (t < FAR)

    normal = torch.zeros_like(hit_points)  # tetrahedral differences of the distance
    for corner in ([1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]):
        k = rays.new_tensor(corner)
        normal += k * scene_distance(hit_points + 1e-3 * k, scene)[0][..., None]
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-8)

    pick = slot[..., None]  # B x P x 1: the object each pixel sees
    colour = scene.colour.gather(1, pick.expand(-1, -1, 3))
    texture = scene.texture.gather(1, pick.expand(-1, -1, 4))
    local = torch.zeros_like(hit_points)
    for s in range(scene.classes.shape[1]):
        local = torch.where(slot[..., None] == s, object_points(hit_points, scene, s), local)
    angle = texture[..., 2]
    direction = torch.stack([torch.cos(angle), 0.5 * torch.sin(2 * angle), torch.sin(angle)], dim=-1)
    wave = 0.5 + 0.5 * torch.sin(2 * torch.pi * texture[..., 1] * (local * direction).sum(-1) + texture[..., 3])
    pattern = 1 - texture[..., 0] * wave
    diffuse = (normal * scene.light[:, None, :3]).sum(-1).clamp(min=0) * scene.light[:, None, 3]
    shaded = colour * (pattern * (AMBIENT + (1 - AMBIENT) * diffuse))[..., None]

    # a uniform background: a gradient would tell which way is up, and give rotation prediction away
    pixels = torch.where(hit[..., None], shaded, BACKGROUND).clamp(0, 1)
    images = pixels.transpose(1, 2).reshape(b, 3, res, res)
    classes = scene.classes.gather(1, slot) + 1
    class_map = torch.where(hit, classes, 0).reshape(b, res, res)
    depth = torch.where(hit, t, 0.0).reshape(b, res, res)
    return Rendering(images, class_map, depth)
