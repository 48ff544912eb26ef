"""What the dataset-level commands share (nnunet_shape.nnunet.raw_dataset, points_and_images):
one 3-D read with nnU-Net's reader, one 2-D refusal, one definition of each common option."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from nnunet_shape.errors import UserError
from nnunet_shape.nnunet.raw_dataset import (
    RawDataset,
    add_dataset_argument,
    add_output_folder_argument,
    add_seed_argument,
    image_reader_class,
    read_3d_case,
    refuse_2d_image,
)
from nnunet_shape.nnunet.weak_annotations import add_points_argument, points_and_images

sitk = pytest.importorskip("SimpleITK")

DATASET_JSON = {"file_ending": ".nii.gz", "channel_names": {"0": "MR"},
                "labels": {"background": 0, "bone": 1}, "numTraining": 1}


def _write(path, array, spacing_xyz, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin[: array.ndim])
    sitk.WriteImage(image, str(path))
    return path


# ---------------------------------------------------------------------------------------
# read_3d_case, refuse_2d_image
# ---------------------------------------------------------------------------------------


def test_refuse_2d_image_names_the_file_what_and_why(tmp_path):
    refuse_2d_image(False, tmp_path / "a.nii.gz")  # 3-D: nothing
    with pytest.raises(UserError) as error:
        refuse_2d_image(True, tmp_path / "a.nii.gz")
    assert str(error.value) == (f"{tmp_path / 'a.nii.gz'}: a 2-D image; surface points and sphere templates "
                                f"(paper 003) are 3-D only")
    with pytest.raises(UserError) as error:
        refuse_2d_image(True, tmp_path / "b.nii.gz", "label map", "it needs three planes")
    assert str(error.value) == f"{tmp_path / 'b.nii.gz'}: a 2-D label map; it needs three planes"


@pytest.mark.parametrize("label_map", [False, True])
def test_read_3d_case_returns_the_readers_array_properties_and_geometry(tmp_path, label_map):
    volume = np.zeros((4, 5, 6), dtype=np.uint8)  # (Z, Y, X)
    volume[1, 2, 3] = 1
    path = _write(tmp_path / "case_0000.nii.gz", volume, (0.5, 1.0, 2.0), origin=(10.0, -3.0, 7.0))
    reader = image_reader_class(DATASET_JSON, path)
    array, properties, geometry = read_3d_case(reader, path, label_map=label_map)
    assert array.shape == (1, 4, 5, 6)
    assert array[0, 1, 2, 3] == 1 and array.sum() == 1
    assert tuple(properties["spacing"]) == (2.0, 1.0, 0.5)  # nnU-Net's array order (z, y, x)
    assert geometry.shape == (4, 5, 6)
    assert geometry.spacing_mm == (2.0, 1.0, 0.5)
    assert geometry.origin_mm == (10.0, -3.0, 7.0)
    assert geometry.world_frame == "ITK-LPS"


@pytest.mark.parametrize("label_map, what", [(False, "image"), (True, "label map")])
def test_read_3d_case_refuses_a_2d_file_naming_it_and_the_reason(tmp_path, label_map, what):
    path = _write(tmp_path / "flat_0000.nii.gz", np.zeros((5, 6), dtype=np.uint8), (1.0, 1.0))
    reader = image_reader_class(DATASET_JSON, path)
    with pytest.raises(UserError) as error:
        read_3d_case(reader, path, label_map=label_map, reason="this command is 3-D only")
    assert str(error.value) == f"{path}: a 2-D {what}; this command is 3-D only"


# ---------------------------------------------------------------------------------------
# points_and_images
# ---------------------------------------------------------------------------------------


def _dataset(tmp_path, cases=("a",)):
    folder = tmp_path / "Dataset901_Knee"
    (folder / "imagesTr").mkdir(parents=True)
    for case in cases:
        (folder / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"")
    return RawDataset(folder, dict(DATASET_JSON), ".nii.gz", False)


def _points_file(folder, case):
    from nnunet_shape.point_files.format import CasePoints, ClassPoints, write_case_points

    folder.mkdir(parents=True, exist_ok=True)
    points = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    write_case_points(folder / f"{case}.json", CasePoints(case, {"bone": ClassPoints("bone", points, 1)}))


def test_points_and_images_pairs_cases_with_their_images(tmp_path):
    data = _dataset(tmp_path, ("a", "b"))
    _points_file(data.folder / "pointsTr", "a")
    folder, cases, images = points_and_images(data, None, 901)
    assert folder == data.folder / "pointsTr"
    assert sorted(cases) == ["a"] and cases["a"].num_points == 2
    assert images == {c: data.folder / "imagesTr" / f"{c}_0000.nii.gz" for c in ("a", "b")}


def test_points_and_images_errors_name_the_folder_and_what_to_do(tmp_path):
    data = _dataset(tmp_path, ("a",))
    with pytest.raises(UserError) as error:
        points_and_images(data, None, "Dataset901_Knee")
    assert str(error.value) == (f"{data.folder / 'pointsTr'} does not exist; write point files there "
                                f"(docs/weak-points.md) or run nnunet-shape simulate-points -d Dataset901_Knee -n N")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as error:
        points_and_images(data, empty, 901)
    assert str(error.value) == f"{empty}: no point files (<case>.json or <case>/<class>.mrk.json)"
    _points_file(empty, "z")
    with pytest.raises(UserError) as error:
        points_and_images(data, empty, 901)
    assert str(error.value) == f"{empty}: points for cases without an image in {data.folder / 'imagesTr'}: ['z']"


# ---------------------------------------------------------------------------------------
# the common options: one definition each
# ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    add_dataset_argument(parser)
    add_seed_argument(parser)
    add_output_folder_argument(parser, "somewhereTr")
    add_points_argument(parser)
    return parser


def test_common_options_defaults_and_values():
    defaults = _parser().parse_args(["-d", "7"])
    assert vars(defaults) == {"dataset": "7", "seed": 0, "output": None, "points": None}
    given = _parser().parse_args(["--dataset", "Dataset007_X", "--seed", "3", "--output", "o", "--points", "p"])
    assert vars(given) == {"dataset": "Dataset007_X", "seed": 3, "output": "o", "points": "p"}
    with pytest.raises(SystemExit):
        _parser().parse_args([])  # -d is required


def test_common_options_help_text():
    actions = {a.dest: a for a in _parser()._actions}
    assert actions["dataset"].help == "dataset id or DatasetXXX_Name in nnUNet_raw"
    assert actions["seed"].help == "random seed (default 0)"
    assert actions["output"].help == "output folder (default <raw dataset>/somewhereTr)"
    assert actions["points"].help == "point folder (default <raw dataset>/pointsTr)"
