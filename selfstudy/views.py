"""Batched image operations for augmented views, with per-image parameters.

Each function takes a batch B x C x H x W and one parameter per image (tensors of length B),
and runs as a few whole-batch tensor operations: no Python loop over images, no per-call
parameter validation. They follow kornia's functional operations (the reference the tests
compare against on the same parameters): colour values in [0, 1], clamped after each colour
step as kornia's ColorJitter does; hue shifts in turns (1 = a full turn).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as kornia's and torchvision's rgb_to_grayscale


def per_image(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return factor.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def gray(x: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> B x 1 x H x W luma."""
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * per_image(factor, x)).clamp(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma."""
    f = per_image(factor, x)
    return (x * f + gray(x).mean(dim=(2, 3), keepdim=True) * (1 - f)).clamp(0, 1)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's luma."""
    f = per_image(factor, x)
    return (x * f + gray(x) * (1 - f)).clamp(0, 1)


def hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `turns` of the colour wheel (HSV, as kornia's adjust_hue)."""
    high, argmax = x.max(dim=1)
    low = x.min(dim=1).values
    delta = high - low
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    r, g, b = x.unbind(1)
    sector = torch.stack([(g - b) / safe, (b - r) / safe + 2, (r - g) / safe + 4])  # 3 x B x H x W
    h = sector.gather(0, argmax.unsqueeze(0)).squeeze(0) / 6  # in turns
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    h = torch.remainder(h + per_image(turns, h), 1.0)
    s = delta / torch.where(high == 0, torch.ones_like(high), high)
    return hsv_to_rgb(h, s, high)


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h in turns, s and v in [0, 1] (each B x H x W) -> B x 3 x H x W."""
    k = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
    k = torch.remainder(k + 6 * h.unsqueeze(1), 6)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def grayscale(x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Images with `chosen` (B bool) become grey (luma in all three channels)."""
    return torch.where(chosen.view(-1, 1, 1, 1), gray(x).expand_as(x), x)


def solarize(x: torch.Tensor, chosen: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Chosen images have every value at or above `threshold` inverted (1 - x)."""
    return torch.where(chosen.view(-1, 1, 1, 1) & (x >= threshold), 1 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image with its own sigma (pixels, > 0): a separable Gaussian of `kernel_size`
    taps (odd, at most twice the image's smaller side less one, for the reflect padding), as
    kornia's gaussian_blur2d with a per-image sigma."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    taps = torch.arange(kernel_size, device=x.device, dtype=torch.float32) - half
    kernel = torch.exp(-(taps ** 2) / (2 * sigma.float().view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)  # B x k
    weights = kernel.repeat_interleave(c, dim=0)  # (B * C) x k, one filter per image channel
    flat = F.pad(x.reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, weights.view(b * c, 1, 1, kernel_size), groups=b * c)
    flat = F.conv2d(flat, weights.view(b * c, 1, kernel_size, 1), groups=b * c)
    return flat.view(b, c, h, w)


def crop_boxes(n: int, h: int, w: int, min_scale: float, generator: torch.Generator | None,
               device: torch.device, ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10,
               max_scale: float = 1.0) -> torch.Tensor:
    """Random resized-crop boxes, one per image, drawn in one call, as torchvision samples them:
    area a fraction in [min_scale, max_scale] of the image and aspect ratio log-uniform in `ratio`,
    the first of `tries` candidates that fits the image, else a centre crop of the whole image
    with its ratio clamped into `ratio`; n x 4 (x0, y0, x1, y1) in pixels, corners inclusive."""
    u = torch.rand(n, tries, 4, generator=generator, device=device)
    area = (min_scale + (max_scale - min_scale) * u[..., 0]) * h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)  # n x tries
    first = fits.float().argmax(dim=1, keepdim=True)  # the first that fits (0 when none does)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    cw, ch, ux, uy = pick(cw), pick(ch), pick(u[..., 2]), pick(u[..., 3])
    fallback = ~fits.any(dim=1)
    whole = w / h
    fall_w = w if ratio[0] <= whole <= ratio[1] or whole < ratio[0] else round(h * ratio[1])
    fall_h = round(w / ratio[0]) if whole < ratio[0] else h
    cw = torch.where(fallback, torch.full_like(cw, fall_w), cw)
    ch = torch.where(fallback, torch.full_like(ch, fall_h), ch)
    x0 = torch.where(fallback, (w - cw) // 2, torch.floor(ux * (w - cw + 1)).clamp(max=w - cw))
    y0 = torch.where(fallback, (h - ch) // 2, torch.floor(uy * (h - ch + 1)).clamp(max=h - ch))
    return torch.stack([x0, y0, x0 + cw - 1, y0 + ch - 1], dim=1)


def crop_grid(boxes: torch.Tensor, h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
    """The sampling grid (B x H' x W' x 2, normalised, align_corners=True) that maps each box's
    corners onto the output's corners."""
    out_h, out_w = size
    device = boxes.device
    sx = torch.linspace(0, 1, out_w, device=device)
    sy = torch.linspace(0, 1, out_h, device=device)
    x = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * sx  # B x W'
    y = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * sy  # B x H'
    gx = (2 * x / max(w - 1, 1) - 1).unsqueeze(1).expand(-1, out_h, -1)
    gy = (2 * y / max(h - 1, 1) - 1).unsqueeze(2).expand(-1, -1, out_w)
    return torch.stack([gx, gy], dim=-1)


def resized_crop(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Each image's box (see `crop_grid`) resized to the grid's size: one sampling call, in
    float32 whatever the images' dtype (so images and their maps land on the same points)."""
    return F.grid_sample(x.float(), grid.float(), mode=mode, padding_mode="border", align_corners=True).to(x.dtype)
