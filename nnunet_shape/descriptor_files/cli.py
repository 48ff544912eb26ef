"""``nnUNetv2_export_descriptors``: per-case shape-descriptor JSON (and CSV) of label maps.

    nnUNetv2_export_descriptors -d 701 [-o OUT]               # labelsTr of nnUNet_raw/Dataset701_*
    nnUNetv2_export_descriptors -i SEG_FOLDER -o OUT [-d 701] # any folder of label maps
    nnUNetv2_export_descriptors ... --format json|csv --np 4 --overwrite --ignore-unknown-labels
    nnUNetv2_export_descriptors -d 701 --intensity            # also the raw image inside every class
    nnUNetv2_export_descriptors -i SEG_FOLDER -o OUT -d 701 --intensity --images IMAGES_FOLDER

Bad input (a missing or broken dataset.json, a truncated label map, label values dataset.json does
not name, an output that is a file, ...) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nnunet_shape.errors import run_console


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_export_descriptors",
        description="Export shape descriptors (volume, centroid, spread, covariance, surface, principal axes) "
                    "of label maps: one <case>.json per case (schema nnunet-shape/descriptors/v1), summary.json "
                    "and, with --format csv, descriptors.csv. Unchanged cases are skipped.",
    )
    parser.add_argument("-d", "--dataset", help="dataset id or name in nnUNet_raw (labels and file ending from "
                                                 "its dataset.json; without -i: export its labelsTr)")
    parser.add_argument("-i", "--input", help="folder of label maps, e.g. predictions (dataset.json from -d or "
                                               "from this folder)")
    parser.add_argument("-o", "--output", help="output folder (default with -d only: <dataset>/descriptorsTr)")
    parser.add_argument("--format", choices=("json", "csv"), default="json",
                        help="json: per-case JSON + summary.json; csv: additionally descriptors.csv, one row per "
                             "case and class (default: json)")
    parser.add_argument("--np", type=int, default=None, dest="num_processes",
                        help="worker processes (default: nnU-Net's default_num_processes, nnUNet_def_n_proc)")
    parser.add_argument("--overwrite", action="store_true", help="recompute every case even if up to date")
    parser.add_argument("--ignore-unknown-labels", action="store_true",
                        help="export even when a label map holds values that dataset.json does not name (their "
                             "voxels belong to no class); default: such a map is an error")
    parser.add_argument("--intensity", action="store_true",
                        help="also write per class the mean and std of the raw image inside it, per channel, and "
                             "the image's own mean and std (to convert to nnU-Net's z-score units); reads "
                             "imagesTr/<case>_0000... (with -i: --images) with the dataset's reader")
    parser.add_argument("--images", default=None,
                        help="with --intensity and -i: the folder of the raw images <case>_0000<file_ending>, ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.dataset is None and args.input is None:
        parser.error("give -d DATASET (labelsTr) or -i FOLDER")
    if args.input is not None and args.output is None:
        parser.error("-o OUT is required with -i")
    if args.num_processes is not None and args.num_processes < 1:
        parser.error("--np must be >= 1")
    if args.images is not None and not args.intensity:
        parser.error("--images is only read with --intensity")

    def export() -> int:
        from nnunet_shape.descriptor_files.export import export_dataset

        report = export_dataset(dataset=args.dataset, input_folder=args.input, output_folder=args.output,
                                num_processes=args.num_processes, overwrite=args.overwrite,
                                write_csv=args.format == "csv", ignore_unknown_labels=args.ignore_unknown_labels,
                                intensity=args.intensity, images_folder=args.images)
        print(f"{report.output_folder}: {len(report.computed)} computed, {len(report.skipped)} up to date"
              + (f", wrote {', '.join(report.written)}" if report.written else ""))
        return 0

    # bad input (UserError, OSError): one line on stderr and exit code 2, as every nnunet-shape
    # command; anything else is a bug and keeps its traceback
    return run_console("nnUNetv2_export_descriptors", export)


if __name__ == "__main__":
    sys.exit(main())
