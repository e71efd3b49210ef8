"""Signed distance functions of the shape classes, in object space (units: the object fits
in a sphere of radius about 0.85). Each maps points ... x 3 to distances ... (negative inside).
Some are bounds rather than exact distances, which sphere tracing tolerates."""

from __future__ import annotations

import math

import torch


def _length2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y)


def _box(p: torch.Tensor, half: tuple[float, float, float]) -> torch.Tensor:
    q = p.abs() - p.new_tensor(half)
    return q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)


def _capsule(p: torch.Tensor, axis: int, half: float, radius: float) -> torch.Tensor:
    shift = torch.zeros_like(p)
    shift[..., axis] = p[..., axis].clamp(-half, half)
    return (p - shift).norm(dim=-1) - radius


def sphere(p: torch.Tensor) -> torch.Tensor:
    return p.norm(dim=-1) - 0.75


def cube(p: torch.Tensor) -> torch.Tensor:
    return _box(p, (0.5, 0.5, 0.5))


def torus(p: torch.Tensor) -> torch.Tensor:
    return _length2(_length2(p[..., 0], p[..., 2]) - 0.58, p[..., 1]) - 0.22


def cylinder(p: torch.Tensor) -> torch.Tensor:
    dx, dy = _length2(p[..., 0], p[..., 2]) - 0.45, p[..., 1].abs() - 0.65
    return torch.maximum(dx, dy).clamp(max=0) + _length2(dx.clamp(min=0), dy.clamp(min=0))


def cone(p: torch.Tensor) -> torch.Tensor:
    """Apex at y = 0.75, base of radius 0.6 at y = -0.6."""
    radial, y = _length2(p[..., 0], p[..., 2]), p[..., 1]
    nx, ny = 1.35 / math.hypot(1.35, 0.6), 0.6 / math.hypot(1.35, 0.6)
    side = radial * nx + (y - 0.75) * ny
    return torch.maximum(side, -0.6 - y)


def capsule(p: torch.Tensor) -> torch.Tensor:
    return _capsule(p, 1, 0.45, 0.32)


def octahedron(p: torch.Tensor) -> torch.Tensor:
    return (p.abs().sum(dim=-1) - 0.85) * 0.57735


def hexagonal_prism(p: torch.Tensor) -> torch.Tensor:
    q = p.abs()
    radius, half_depth = 0.55, 0.4
    hexagon = torch.maximum(q[..., 0] * 0.866025 + q[..., 1] * 0.5, q[..., 1]) - radius
    depth = q[..., 2] - half_depth
    return torch.maximum(hexagon, depth).clamp(max=0) + _length2(hexagon.clamp(min=0), depth.clamp(min=0))


def cross(p: torch.Tensor) -> torch.Tensor:
    arms = [_box(p, (0.75, 0.18, 0.18)), _box(p, (0.18, 0.75, 0.18)), _box(p, (0.18, 0.18, 0.75))]
    return torch.minimum(torch.minimum(arms[0], arms[1]), arms[2])


def dumbbell(p: torch.Tensor) -> torch.Tensor:
    ends = torch.minimum((p - p.new_tensor([0.5, 0, 0])).norm(dim=-1), (p + p.new_tensor([0.5, 0, 0])).norm(dim=-1))
    return torch.minimum(ends - 0.32, _capsule(p, 0, 0.5, 0.12))


SHAPES = {
    "sphere": sphere, "cube": cube, "torus": torus, "cylinder": cylinder, "cone": cone, "capsule": capsule,
    "octahedron": octahedron, "hexagonal_prism": hexagonal_prism, "cross": cross, "dumbbell": dumbbell,
}
SHAPE_NAMES = tuple(SHAPES)
SHAPE_FUNCTIONS = tuple(SHAPES.values())


def shape_distance(points: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Distances of points B x P x 3 (object space) to the shape of each image's class (B)."""
    out = points.new_empty(points.shape[:2])
    for k in classes.unique().tolist():
        members = classes == k
        out[members] = SHAPE_FUNCTIONS[k](points[members])
    return out
