"""Procedural synthetic datasets with controlled factors of variation (see `factors.py`)."""

from __future__ import annotations

from typing import Iterator

import torch

from selfstudy.render.factors import (STANDARD_CODES, Code, mirrored_pose_label, mirrored_rotation, pose_label,
                                      sample_scene)
from selfstudy.render.scene import Rendering, Scene, render
from selfstudy.render.shapes import SHAPE_NAMES

CHUNK = 512  # images per rendering call; fixed, so that a seed gives the same images in any run


def render_batches(code: str, n: int, res: int, seed: int, device: torch.device,
                   objects: int = 1) -> Iterator[tuple[Scene, Rendering]]:
    """Scenes and renderings of n images, CHUNK at a time, deterministic per (seed, device)."""
    parsed = Code.parse(code)
    generator = torch.Generator(device=device).manual_seed(seed)
    for start in range(0, n, CHUNK):
        scene = sample_scene(parsed, min(CHUNK, n - start), generator, device, objects)
        yield scene, render(scene, res)


__all__ = ["Code", "Rendering", "SHAPE_NAMES", "STANDARD_CODES", "Scene", "mirrored_pose_label", "mirrored_rotation",
           "pose_label", "render", "render_batches", "sample_scene"]
