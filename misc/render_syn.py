"""Render a synthetic dataset with controlled factors of variation into DATA_DIR/syn/<name>/.

    python misc/render_syn.py --code 1011 --n 20000 --res 32 -o 1011
    python misc/render_syn.py --code 1111 --n 5000 --res 64 --multi -o multi_1111
    for c in 0000 1000 0100 0010 0001 1100 0110 0101 0111 1110 1011 1111; do
        python misc/render_syn.py --code $c --n 20000 --res 32 -o $c; done

--code: four digits for Texture, Colour, Viewpoint, Lighting (1 = varies per image). Writes
train.h5 (--n images, seed S) and test.h5 (--test images, default n / 10, seed S + 1) in the
project's HDF5 format: data, targets (shape class; with --multi the per-pixel class map, 0 for
background), rot_mat and the factor values (colour, light, texture; depth with --multi).
Use it with `session.dataset = 'SynDataset'` and `SynDataset.dataset_choice = '<name>'`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paths  # noqa: E402
from selfstudy.config import first_line  # noqa: E402
from selfstudy.data.syn import render_split  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from selfstudy.render import Code  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", required=True, help="TCVL digits, e.g. 1011")
    parser.add_argument("--n", type=int, required=True, help="training images")
    parser.add_argument("--res", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--test", type=int, help="test images (default n / 10)")
    parser.add_argument("--multi", action="store_true",
                        help="2..--objects objects per image, with class and depth maps")
    parser.add_argument("--objects", type=int, default=4, help="most objects per image with --multi (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--to-lab", action="store_true", help="store CIELAB instead of RGB (for CMCTask)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--force", action="store_true", help="overwrite an existing set of that name")
    parser.add_argument("-o", "--out", required=True, help="name: the folder DATA_DIR/syn/<name>")
    args = parser.parse_args(argv)
    out = paths.DATA_DIR / "syn" / args.out
    try:
        Code.parse(args.code)
        if args.n < 1 or args.res < 8 or (args.multi and args.objects < 2):
            raise UserError("need --n >= 1, --res >= 8 and, with --multi, --objects >= 2")
        if (out / "train.h5").exists() and not args.force:
            raise UserError(f"{out} exists: pass --force to overwrite it, or choose another -o")
        out.mkdir(parents=True, exist_ok=True)
        device, objects = torch.device(args.device), args.objects if args.multi else 1
        test = args.test if args.test is not None else max(1, args.n // 10)
        started = time.time()
        statistics = render_split(out / "train.h5", args.code, args.n, args.res, args.seed, device, objects, "train",
                                  lab=args.to_lab)
        render_split(out / "test.h5", args.code, test, args.res, args.seed + 1, device, objects, "test", statistics,
                     lab=args.to_lab)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    seconds = time.time() - started
    print(f"wrote {out}: {args.n} + {test} images of code {args.code} ({Code.parse(args.code).display()}) at "
          f"{args.res}x{args.res} in {seconds:.1f} s ({(args.n + test) / seconds:.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
