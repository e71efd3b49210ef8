"""Make a dataset in the project's HDF5 format from an image folder or a list file.

    python misc/make_dataset.py ~/images/pets -o pets --res 64
    python misc/make_dataset.py train.txt --test val.txt -o pets_lab --res 64 --to-lab

SOURCE is a folder in the ImageFolder layout (SOURCE/<class>/<image>) or a text file with one
'<image path> <label>' per line (paths relative to the file). Writes DATA_DIR/<name>/train.h5
and test.h5; use it in a config with

    session.dataset = @FolderDataset()
    FolderDataset.path = '<name>'

An interrupted run continues where it stopped when given the same command again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paths  # noqa: E402
from selfstudy.config import first_line  # noqa: E402
from selfstudy.data.folder import make_dataset  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="image folder (<class>/<image>) or list file ('<path> <label>')")
    parser.add_argument("-o", "--out", required=True, help="dataset name: a folder under DATA_DIR, or a path")
    parser.add_argument("--res", type=int, required=True, help="side of the square images in pixels")
    parser.add_argument("--test", type=Path, help="a second folder or list file for the test split")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="without --test: fraction of each class held out as the test split (default 0.1)")
    parser.add_argument("--to-lab", action="store_true", help="store CIELAB instead of RGB")
    parser.add_argument("--force", action="store_true", help="overwrite an existing dataset of that name")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="an unreadable, corrupt or missing image stops the run (default) or is skipped; "
                             "either way it is reported by path")
    parser.add_argument("--chunk", type=int, default=256, help="images per write; progress is saved after each")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    out = out if out.is_absolute() else paths.DATA_DIR / out
    try:
        make_dataset(args.source.expanduser().resolve(), out, args.res, args.test and args.test.expanduser().resolve(),
                     args.test_fraction, args.to_lab, args.force, args.on_error, args.chunk, args.workers)
    except UserError as err:
        print(f"\nerror: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: progress is kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
