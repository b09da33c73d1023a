"""``em-keras export``: a trained model as a TensorFlow SavedModel or a BioImage.IO model package."""

import os

from em_keras.cli.common import add_debug, make_parser
from em_keras.errors import InputError

__all__ = ["main", "build_parser", "FORMATS"]

#: ``--format`` choices.
FORMATS = ("savedmodel", "bioimageio")


def build_parser(prog="em-keras export"):
    """The flags of ``em-keras export``."""
    p = make_parser(prog, "Export a trained model: a TensorFlow SavedModel that serves images of any size, "
                          "or a BioImage.IO model package (ilastik, deepImageJ, napari, QuPath).")
    p.add_argument("--model", required=True, help="trained .keras file, e.g. RUN/last.keras (bioimageio also "
                   "takes an exported SavedModel directory)")
    p.add_argument("--out", required=True, help="output directory (replaced whole once complete)")
    p.add_argument("--format", choices=FORMATS, default="savedmodel", help="what to write")
    p.add_argument("--offset", metavar="DY,DX|JSON", help="label offset to record with the export (default: "
                   "the one recorded with the model, e.g. in the run's metrics.json)")
    p.add_argument("--name", help="model name (bioimageio; default: from the file name)")
    p.add_argument("--author", action="append", help="author name, repeatable (bioimageio; default: em_keras)")
    p.add_argument("--license", default="MIT", help="SPDX licence identifier (bioimageio)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out directory")
    add_debug(p)
    return p


def _check_paths(args):
    from em_keras.atomic import check_writable

    model = os.path.realpath(args.model)
    out = os.path.realpath(args.out)
    if not os.path.exists(args.model):
        raise InputError(f"--model {args.model}: no such file or directory")
    if args.format == "savedmodel" and not args.model.endswith(".keras"):
        raise InputError(f"--model {args.model}: --format savedmodel needs a .keras file")
    if model == out or model.startswith(out + os.sep):
        raise InputError(f"--out {args.out}: holds --model {args.model}; refusing to replace it")
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise InputError(f"--out {args.out}: directory exists and is not empty (pass --overwrite to replace it)")
    check_writable(args.out, "--out", directory=True)


def main(argv=None, prog="em-keras export"):
    """Run ``em-keras export``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.inference.offset import parse_offset, recorded_offset

    _check_paths(args)
    offset = parse_offset(args.offset) if args.offset is not None else recorded_offset(args.model)
    if args.format == "bioimageio":
        from em_keras.inference.bioimageio import export_bioimageio

        rdf = export_bioimageio(args.model, args.out, offset=offset, name=args.name,
                                authors=tuple(args.author or ("em_keras",)), license_id=args.license)
        print(f"wrote {args.out}: BioImage.IO model package ({os.path.basename(rdf)}, validated by bioimageio.spec)")
        return 0
    from em_keras.inference.export import export_savedmodel
    from em_keras.inference.load import load_model

    export_savedmodel(load_model(args.model), args.out, offset=offset)
    shown = "no label offset" if offset is None else f"label offset dy {offset[0]:+g}, dx {offset[1]:+g} px"
    print(f"wrote {args.out}: SavedModel ({shown} recorded)")
    return 0
