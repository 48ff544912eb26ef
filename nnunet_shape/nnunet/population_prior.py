"""``nnunet-shape population-prior``: learn a population prior file from a labelled dataset.

Reads every training label map of a raw dataset with nnU-Net's reader for it (so the array
order, spacing and direction are what nnU-Net holds; the label files carry the images'
geometry, which nnU-Net's integrity check requires to match), measures each class with
:func:`nnunet_shape.descriptor_files.measure.class_descriptors`, and writes the quantile
intervals of :func:`nnunet_shape.descriptor_files.population_prior.derive_population_prior`
(docs/population-priors.md). Default output: ``<raw dataset>/population_prior.json``.

``--intensity`` also reads every training image (``imagesTr/<case>_XXXX``, every channel of
``dataset.json["channel_names"]``, with the same reader) and adds "class a is brighter than
class b" relations (``intensity_order``) for the pairs and channels whose order of class means
holds in every case.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunet_shape.descriptor_files.population_prior import (
    POPULATION_PRIOR_FILE_NAME,
    CaseMeasurement,
    derive_population_prior,
    write_population_prior,
)

__all__ = ["measure_dataset", "population_prior_from_dataset", "build_parser", "main"]


def measure_dataset(raw_folder: str | os.PathLike, intensity: bool = False
                    ) -> tuple[dict[str, Any], list[CaseMeasurement]]:
    """``(dataset_json, measurements)`` of every training label map of a raw dataset folder; with
    ``intensity`` also of its images (every channel), which must then exist on the label map's grid."""
    from nnunet_shape.descriptor_files.export import training_image_channel_files, training_label_files
    from nnunet_shape.descriptor_files.measure import (
        class_descriptors,
        geometry_mismatch,
        image_intensity,
        read_image_channels,
        read_label_map,
    )
    from nnunet_shape.descriptor_files.model import class_specs_from_dataset_json
    from nnunet_shape.errors import UserError
    from nnunet_shape.nnunet.raw_dataset import image_reader_class

    raw_folder = Path(raw_folder)
    dataset_json_path = raw_folder / "dataset.json"
    if not dataset_json_path.is_file():
        raise FileNotFoundError(f"population-prior: {dataset_json_path} not found")
    with open(dataset_json_path, encoding="utf-8") as handle:
        dataset_json = json.load(handle)
    files = training_label_files(raw_folder, dataset_json)
    if not files:
        raise FileNotFoundError(f"population-prior: no label files ending in {dataset_json.get('file_ending')!r} "
                                f"in {raw_folder / 'labelsTr'}")
    specs = class_specs_from_dataset_json(dataset_json)
    reader_class = image_reader_class(dataset_json, next(iter(files.values())))
    images = training_image_channel_files(raw_folder, dataset_json, sorted(files)) if intensity else {}
    cases = []
    for case_id, path in files.items():
        labels, geometry = read_label_map(path, reader_class)
        if labels.ndim != 3:
            raise ValueError(f"population-prior: case {case_id!r} ({path}) is {labels.ndim}-D; population priors "
                             "are stated in the 3-D anatomical frame")
        image, block = None, None
        if intensity:
            image, grid = read_image_channels(images[case_id], reader_class, case_id)
            difference = geometry_mismatch(geometry, grid)
            if difference is not None:
                raise UserError(f"population-prior --intensity: case {case_id!r}: its label map {path} does not match "
                                f"its image {images[case_id][0]}: {difference} (label map vs image)")
            block = image_intensity(image)
        cases.append(CaseMeasurement(case_id, geometry.direction, geometry.shape, geometry.spacing_mm,
                                     {spec.name: class_descriptors(labels, spec, geometry, image=image)
                                      for spec in specs}, block))
    return dataset_json, cases


def population_prior_from_dataset(raw_folder: str | os.PathLike, quantiles: Sequence[float] = (5.0, 95.0),
                                  margin: float = 0.1, intensity: bool = False) -> dict[str, Any]:
    """The population prior (JSON object) of a raw dataset folder's training labels (and, with
    ``intensity``, images: adds the ``intensity_order`` relations)."""
    from nnunet_shape.descriptor_files.model import class_specs_from_dataset_json

    dataset_json, cases = measure_dataset(raw_folder, intensity)
    specs = class_specs_from_dataset_json(dataset_json)
    if any(spec.region_labels is not None for spec in specs):
        raise ValueError("population-prior: region-based datasets are not supported yet")
    labels: Mapping[str, int] = {spec.name: spec.label for spec in specs}
    source = {"dataset": Path(raw_folder).name, "tool": "nnunet-shape population-prior"}
    if intensity:
        source["intensity"] = "class means from imagesTr, in nnU-Net's z-score units"
    return derive_population_prior(cases, labels, (float(quantiles[0]), float(quantiles[1])), float(margin),
                                   source=source)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape population-prior",
        description="Learn a population prior (per-class ranges and relations between classes, in the patient's "
                    "anatomical frame) from the training labels of an nnU-Net raw dataset.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name under $nnUNet_raw")
    parser.add_argument("-o", "--output", default=None,
                        help=f"output file (default: <raw dataset>/{POPULATION_PRIOR_FILE_NAME})")
    parser.add_argument("--quantiles", nargs=2, type=float, default=(5.0, 95.0), metavar=("LOW", "HIGH"),
                        help="percentiles of each descriptor and relation over the cases (default 5 95)")
    parser.add_argument("--margin", type=float, default=0.1,
                        help="widen every interval by MARGIN x max(width, |midpoint|) on each side (default 0.1)")
    parser.add_argument("--intensity", action="store_true",
                        help="also read the training images (imagesTr/<case>_0000..., every channel) and add "
                             "'class a is brighter than class b' relations for the orders that hold in every case")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from nnunet_shape.descriptor_files.export import find_raw_dataset

    args = build_parser().parse_args(argv)
    raw_folder = find_raw_dataset(args.dataset)
    prior = population_prior_from_dataset(raw_folder, args.quantiles, args.margin, args.intensity)
    output = Path(args.output) if args.output else raw_folder / POPULATION_PRIOR_FILE_NAME
    write_population_prior(output, prior)
    print(f"population-prior: {len(prior['classes'])} classes, {len(prior['relations'])} relations from "
          f"{prior['source']['cases']} cases -> {output}")
    return 0
