"""``em-keras synth``: write a synthetic EM-like stack in the ISBI layout."""

import os

import numpy as np

from em_keras.cli.common import add_debug, make_parser
from em_keras.errors import InputError

__all__ = ["main"]

#: Largest stack ``synth`` writes, in voxels (about 1 GiB of uint8 for images and labels together).
MAX_VOXELS = 512 * 1024 * 1024


def build_parser(prog="em-keras synth"):
    """The flags of ``em-keras synth``."""
    p = make_parser(prog, "Write synthetic EM-like train-volume.tif / train-labels.tif (for demos and tests).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--slices", type=int, default=12, help="number of slices (>= 2)")
    p.add_argument("--size", type=int, default=256, help="slice height and width, pixels (>= 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    add_debug(p)
    return p


def main(argv=None, prog="em-keras synth"):
    """Run ``em-keras synth``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.atomic import check_writable, save_tiff
    from em_keras.data.synthetic import synthetic_em

    if args.slices < 2 or args.size < 16:
        raise InputError("--slices must be >= 2 and --size >= 16")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be >= 0")
    if args.slices * args.size * args.size > MAX_VOXELS:
        raise InputError(f"--slices {args.slices} --size {args.size}: {args.slices * args.size ** 2:,} voxels "
                         f"is more than synth writes ({MAX_VOXELS:,}); use fewer or smaller slices")
    check_writable(args.out, "--out", directory=True)
    images, labels = synthetic_em(n=args.slices, size=args.size, seed=args.seed)
    save_tiff(os.path.join(args.out, "train-volume.tif"), np.round(images * 255).astype(np.uint8))
    save_tiff(os.path.join(args.out, "train-labels.tif"), labels * np.uint8(255))
    print(f"wrote {args.out}/train-volume.tif and train-labels.tif ({args.slices} synthetic slices)")
    return 0
