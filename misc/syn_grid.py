"""Draw a grid of synthetic images: one row per dataset code, a few images each.

    python misc/syn_grid.py [-o docs/syn_grid.png] [--per-code 8] [--res 64]

Renders in memory (nothing under DATA_DIR); the README shows the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfstudy.render import STANDARD_CODES, Code, render_batches  # noqa: E402

LABEL_WIDTH = 80


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "syn_grid.png")
    parser.add_argument("--per-code", type=int, default=8)
    parser.add_argument("--res", type=int, default=64)
    args = parser.parse_args()
    res, k = args.res, args.per_code
    grid = Image.new("RGB", (LABEL_WIDTH + k * (res + 2), len(STANDARD_CODES) * (res + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for row, code in enumerate(STANDARD_CODES):
        _, rendering = next(render_batches(code, k, res, seed=row, device=torch.device("cpu")))
        pixels = (rendering.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        y = row * (res + 2)
        draw.text((6, y + res // 2 - 6), f"{code} {Code.parse(code).display()}", fill="black")
        for i, image in enumerate(pixels):
            grid.paste(Image.fromarray(image), (LABEL_WIDTH + i * (res + 2), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
