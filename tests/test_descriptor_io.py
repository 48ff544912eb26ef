"""nnunet_shape.descriptor_files: validation errors (read), hand-written priors, targets for the trainer
(targets), atomic writes (atomic), and the round trip measure/export -> load -> targets."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_shape.core import descriptors as core
from nnunet_shape.descriptor_files import export as exporter
from nnunet_shape.descriptor_files import measure
from nnunet_shape.descriptor_files.atomic import write_json_atomic
from nnunet_shape.descriptor_files.model import (
    NNUNET_2D_SPACING_FACTOR,
    SCHEMA_ID,
    CaseDescriptors,
    ClassSpec,
    DescriptorFileError,
    class_specs_from_dataset_json,
    is_nnunet_2d_layout,
)
from nnunet_shape.descriptor_files.read import load_case_descriptors, load_descriptor_folder, load_schema
from nnunet_shape.descriptor_files.targets import case_targets_array_frame

DATASET_JSON = {"labels": {"background": 0, "femur": 1, "tibia": 2, "patella": 3}, "file_ending": ".nii.gz",
                "channel_names": {"0": "MR"}, "numTraining": 1}
SPACING_ZYX = (2.0, 0.5, 1.25)


def label_map() -> np.ndarray:
    labels = np.zeros((6, 9, 7), np.int32)
    labels[1:4, 2:7, 1:5] = 1
    labels[4:6, 0:3, 3:7] = 2
    labels[5, 8, 0] = 2
    return labels  # patella absent


def measured_case(case_id: str = "knee_007") -> dict:
    """A valid measured v1 object made by the exporter in memory."""
    geometry = measure.Geometry(shape=(6, 9, 7), spacing_mm=SPACING_ZYX, axis_order=("z", "y", "x"),
                                 origin_mm=(1.0, 2.0, 3.0),
                                 direction=((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
                                 world_frame="ITK-LPS")
    specs = class_specs_from_dataset_json(DATASET_JSON)
    source = {"file": "/data/labelsTr/knee_007.nii.gz", "size_bytes": 1, "mtime_ns": 1, "reader": "SimpleITKIO"}
    export = {"tool": "test", "settings_hash": "0"}
    return measure.case_descriptors(label_map(), geometry, specs, case_id, source, export)


def write(tmp_path: Path, obj: dict, name: str = "knee_007.json", allow_nan: bool = False) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj, allow_nan=allow_nan))
    return path


def test_schema_is_valid_draft_2020_12_and_accepts_the_export():
    jsonschema.Draft202012Validator.check_schema(load_schema())
    jsonschema.validate(measured_case(), load_schema(), cls=jsonschema.Draft202012Validator)


# (mutation of a valid measured file, field in the message, words in the message)
def _set(path, value):
    def mutate(obj):
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(path):
    def mutate(obj):
        target = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


def _rename_class(old, new):
    def mutate(obj):
        obj["classes"][new] = obj["classes"].pop(old)
    return mutate


MALFORMED = {
    "unknown schema version": (_set(("schema",), "nnunet-shape/descriptors/v2"), "$.schema", "unknown schema version"),
    "missing class": (_delete(("classes", "tibia")), "$.classes.tibia", "missing class"),
    "unknown class name": (_rename_class("tibia", "tibula"), "$.classes.tibula", "does not match dataset.json"),
    "negative volume": (_set(("classes", "femur", "volume_mm3"), -3.0), "$.classes.femur.volume_mm3",
                        "less than the minimum"),
    "wrong dimensionality": (_set(("classes", "femur", "centroid_mm"), [1.0, 2.0]), "$.classes.femur.centroid_mm",
                             "wrong dimensionality"),
    "wrong dimensionality of covariance": (_set(("classes", "femur", "covariance_mm2"), [[1.0, 0.0], [0.0, 1.0]]),
                                           "$.classes.femur.covariance_mm2", "wrong dimensionality"),
    "NaN": (_set(("classes", "tibia", "spread_mm"), [1.0, float("nan"), 2.0]), "$.classes.tibia.spread_mm[1]", "NaN"),
    "infinity": (_set(("spacing_mm",), [2.0, float("inf"), 1.0]), "$.spacing_mm[1]", "infinite"),
    "bounds in a measured file": (_set(("classes", "femur", "volume_mm3"), {"min": 1.0}), "$.classes.femur.volume_mm3",
                                  "not of type"),
    "wrong label": (_set(("classes", "femur", "label"), 2), "$.classes.femur.label", "does not match dataset.json"),
    "geometry of an absent class": (_set(("classes", "patella", "centroid_mm"), [1.0, 1.0, 1.0]),
                                    "$.classes.patella.centroid_mm", "null geometry"),
    "missing field": (_delete(("classes", "femur", "spread_mm")), "$.classes.femur", "'spread_mm' is a required"),
    "misspelled field": (_set(("classes", "femur", "volume"), 3.0), "$.classes.femur", "volume"),
    "shape vs spacing": (_set(("spacing_mm",), [1.0, 1.0]), "$.spacing_mm", "wrong dimensionality"),
}


@pytest.mark.parametrize("mutate, field, words", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file_error_names_file_case_and_field(tmp_path, mutate, field, words):
    obj = measured_case()
    mutate(obj)
    path = write(tmp_path, obj, allow_nan=True)
    with pytest.raises(DescriptorFileError) as error_info:
        load_case_descriptors(path, DATASET_JSON)
    message = str(error_info.value)
    assert str(path) in message and "knee_007" in message
    assert f"field {field}" in message, message
    assert words in message, message
    assert (error_info.value.path, error_info.value.case_id, error_info.value.field) == (str(path), "knee_007", field)


def test_invalid_json_and_a_missing_case_id_are_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"schema": ')
    with pytest.raises(DescriptorFileError, match=re.escape(f"{path}: case <unknown case>: field $: not valid JSON")):
        load_case_descriptors(path)
    obj = measured_case()
    del obj["case_id"]
    with pytest.raises(DescriptorFileError, match=r"field \$: 'case_id' is a required property"):
        load_case_descriptors(write(tmp_path, obj))


def test_valid_measured_file_loads_values_and_exact_bounds(tmp_path):
    obj = measured_case()
    case = load_case_descriptors(write(tmp_path, obj), DATASET_JSON)
    assert isinstance(case, CaseDescriptors)
    assert (case.case_id, case.kind, case.shape, case.spacing_mm, case.axis_order) == (
        "knee_007", "measured", (6, 9, 7), SPACING_ZYX, ("z", "y", "x"))
    femur = case.classes["femur"]
    assert (femur.label, femur.voxels, femur.absent) == (1, 60, False)
    assert femur.values["volume_mm3"] == obj["classes"]["femur"]["volume_mm3"] == 60 * 2.0 * 0.5 * 1.25
    lower, upper = femur.bounds["covariance_mm2"]
    assert lower.shape == (3, 3) and np.array_equal(lower, upper)
    np.testing.assert_array_equal(lower, obj["classes"]["femur"]["covariance_mm2"])
    assert case.classes["patella"].absent and case.classes["patella"].values["centroid_mm"] is None


def test_targets_array_frame_from_a_measured_file(tmp_path):
    case = load_case_descriptors(write(tmp_path, measured_case()), DATASET_JSON)
    targets = case_targets_array_frame(case, [0, 1, 2, 3], dim=3)
    assert {name: t[0].shape for name, t in targets.items()} == {
        "volume": (4,), "centroid": (4, 3), "spread": (4, 3), "covariance": (4, 3, 3), "surface": (4,)}
    for lower, upper in targets.values():
        assert np.all(np.isnan(lower[0])) and np.all(np.isnan(upper[0]))  # background
    # femur box [1:4, 2:7, 1:5] by hand
    np.testing.assert_allclose(targets["centroid"][0][1], [2.0 * 2.0, 4.0 * 0.5, 2.5 * 1.25])
    np.testing.assert_allclose(targets["spread"][1][1], np.sqrt([(3 ** 2 - 1) / 12 * 4.0, (5 ** 2 - 1) / 12 * 0.25,
                                                                 (4 ** 2 - 1) / 12 * 1.5625]))
    assert targets["volume"][0][1] == targets["volume"][1][1] == 60 * 1.25
    # absent patella: volume exactly [0, 0], everything else unconstrained
    assert (targets["volume"][0][3], targets["volume"][1][3]) == (0.0, 0.0)
    for name in ("centroid", "spread", "covariance", "surface"):
        assert np.all(np.isnan(targets[name][0][3])) and np.all(np.isnan(targets[name][1][3]))
    # channels may be addressed by class name, in any order
    by_name = case_targets_array_frame(case, ["background", "tibia", "femur"], dim=3)
    np.testing.assert_array_equal(by_name["centroid"][0][2], targets["centroid"][0][1])
    # a 3-D file cannot feed a 2-D network unless it is a single slice
    with pytest.raises(DescriptorFileError, match="wrong dimensionality"):
        case_targets_array_frame(case, [0, 1], dim=2)


def test_round_trip_export_load_targets_equals_core(tmp_path):
    labels = label_map()
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.SetSpacing(SPACING_ZYX[::-1])
    image.SetDirection(sitk.VersorTransform((1.0, 0.0, 1.0), 0.4).GetMatrix())
    sitk.WriteImage(image, str(tmp_path / "knee_007.nii.gz"))
    out = tmp_path / "descriptors"
    exporter.export_files({"knee_007": tmp_path / "knee_007.nii.gz"}, out, DATASET_JSON, num_processes=1)
    case = load_descriptor_folder(out, DATASET_JSON)["knee_007"]  # summary.json is skipped
    targets = case_targets_array_frame(case, [0, 1, 2, 3], dim=3)

    one_hot = core.one_hot_labels(torch.from_numpy(labels.astype(np.int64))[None], 4, dtype=torch.float64)
    ref = core.compute_descriptors(one_hot, torch.tensor(SPACING_ZYX, dtype=torch.float64), names=core.DESCRIPTOR_NAMES)
    for name in ("volume", "centroid", "spread", "covariance", "surface"):
        lower, upper = targets[name]
        np.testing.assert_array_equal(lower, upper, err_msg=name)
        np.testing.assert_allclose(lower[1:3], ref[name][0, 1:3].numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


HAND_WRITTEN = {"schema": SCHEMA_ID, "kind": "prior", "case_id": "knee_007",
                "classes": {"femur": {"volume_mm3": {"min": 1800, "max": 2600}}}}


def test_hand_written_volume_range_yields_exactly_those_bounds(tmp_path):
    case = load_case_descriptors(write(tmp_path, HAND_WRITTEN), DATASET_JSON)
    assert case.kind == "prior" and case.shape is None and case.classes["femur"].voxels is None
    targets = case_targets_array_frame(case, [0, 1, 2, 3], dim=3)
    assert (targets["volume"][0][1], targets["volume"][1][1]) == (1800.0, 2600.0)
    for name, (lower, upper) in targets.items():
        mask = np.ones(lower.shape, bool)
        if name == "volume":
            mask[1] = False
        assert np.all(np.isnan(lower[mask])) and np.all(np.isnan(upper[mask])), name


def test_prior_mixes_values_bounds_and_missing_sides_per_field(tmp_path):
    prior = copy.deepcopy(HAND_WRITTEN)
    prior.update({"spacing_mm": [2.0, 0.5, 0.5], "origin_mm": [10.0, 20.0, 30.0],
                  "direction": [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    prior["classes"]["femur"].update({"centroid_mm": [40.0, None, 12.5], "spread_mm": {"max": 20},
                                      "covariance_mm2": {"max": [[100, None, None], [None, 50, None],
                                                                  [None, None, 25]]}})
    prior["classes"]["tibia"] = {"volume_mm3": 1500.0, "centroid_voxel": {"min": [10, None, 4]},
                                 "surface_mm2": {"min": 300}}
    prior["classes"]["patella"] = {"voxels": 0}
    case = load_case_descriptors(write(tmp_path, prior), DATASET_JSON)
    t = case_targets_array_frame(case, [0, 1, 2, 3], dim=3)
    np.testing.assert_array_equal(t["centroid"][0][1], [40.0, np.nan, 12.5])
    np.testing.assert_array_equal(t["centroid"][1][1], [40.0, np.nan, 12.5])
    np.testing.assert_array_equal(t["spread"][0][1], [np.nan] * 3)
    np.testing.assert_array_equal(t["spread"][1][1], [20.0] * 3)  # a scalar bound applies to every axis
    np.testing.assert_array_equal(np.diag(t["covariance"][1][1]), [100, 50, 25])
    assert np.isnan(t["covariance"][1][1][0, 1]) and np.all(np.isnan(t["covariance"][0][1]))
    assert t["volume"][0][2] == t["volume"][1][2] == 1500.0
    np.testing.assert_array_equal(t["centroid"][0][2], [20.0, np.nan, 2.0])  # voxel index * spacing
    assert np.all(np.isnan(t["centroid"][1][2]))
    assert (t["surface"][0][2], np.isnan(t["surface"][1][2])) == (300.0, True)
    assert (t["volume"][0][3], t["volume"][1][3]) == (0.0, 0.0)  # declared absent


def test_prior_world_centroid_maps_to_the_array_frame(tmp_path):
    # direction flips world x: array x (last axis) = -(world x - origin x)
    prior = {"schema": SCHEMA_ID, "kind": "prior", "case_id": "c", "origin_mm": [10.0, 20.0, 30.0],
             "direction": [[-1, 0, 0], [0, 1, 0], [0, 0, 1]],
             "classes": {"femur": {"centroid_world_mm": {"min": [0.0, 25.0, None], "max": [4.0, 26.0, 40.0]}},
                         "tibia": {"centroid_world_mm": [7.0, 21.0, 33.0]}}}
    case = load_case_descriptors(write(tmp_path, prior), DATASET_JSON)
    t = case_targets_array_frame(case, [0, 1, 2], dim=3)
    # array order (z, y, x): z from world z, y from world y, x = 10 - world x
    np.testing.assert_array_equal(t["centroid"][0][1], [np.nan, 5.0, 6.0])
    np.testing.assert_array_equal(t["centroid"][1][1], [10.0, 6.0, 10.0])
    np.testing.assert_array_equal(t["centroid"][0][2], [3.0, 1.0, 3.0])
    # an oblique direction: exact values map, bounds cannot
    oblique = copy.deepcopy(prior)
    c, s = np.cos(0.3), np.sin(0.3)
    oblique["direction"] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    case = load_case_descriptors(write(tmp_path, oblique, "oblique.json"), DATASET_JSON)
    with pytest.raises(DescriptorFileError, match=r"field \$\.classes\.femur\.centroid_world_mm: .*axis-aligned"):
        case_targets_array_frame(case, [0, 1, 2], dim=3)
    t = case_targets_array_frame(case, [0, 2], dim=3)
    world = np.asarray(oblique["origin_mm"]) + np.asarray(oblique["direction"]) @ t["centroid"][0][1][::-1]
    np.testing.assert_allclose(world, [7.0, 21.0, 33.0], atol=1e-12)


PRIOR_ERRORS = {
    "min above max": ({"femur": {"volume_mm3": {"min": 3, "max": 2}}}, "$.classes.femur.volume_mm3", "min > max"),
    "negative bound": ({"femur": {"volume_mm3": {"max": -1}}}, "$.classes.femur.volume_mm3.max", "minimum"),
    "unknown bound key": ({"femur": {"volume_mm3": {"low": 1}}}, "$.classes.femur.volume_mm3", "low"),
    "unknown class": ({"fibula": {"volume_mm3": 1.0}}, "$.classes.fibula", "does not match dataset.json"),
    "inconsistent vectors": ({"femur": {"centroid_mm": [1, 2, 3]}, "tibia": {"spread_mm": {"max": [1, 2]}}},
                             "$.classes.tibia.spread_mm", "wrong dimensionality"),
    "world centroid without geometry": ({"femur": {"centroid_world_mm": [1, 2, 3]}},
                                        "$.classes.femur.centroid_world_mm",
                                        "needs origin_mm and direction"),
}


@pytest.mark.parametrize("classes, field, words", PRIOR_ERRORS.values(), ids=PRIOR_ERRORS.keys())
def test_prior_errors_name_file_case_and_field(tmp_path, classes, field, words):
    path = write(tmp_path, {"schema": SCHEMA_ID, "kind": "prior", "case_id": "p1", "classes": classes})
    with pytest.raises(DescriptorFileError) as error_info:
        case = load_case_descriptors(path, DATASET_JSON)
        case_targets_array_frame(case, [0, 1, 2], dim=3)
    message = str(error_info.value)
    assert str(path) in message and "'p1'" in message and f"field {field}" in message and words in message, message


def test_single_slice_file_feeds_a_2d_network(tmp_path):
    obj = measured_case()
    obj["shape"] = [1, 9, 7]
    case = load_case_descriptors(write(tmp_path, obj), DATASET_JSON)
    t = case_targets_array_frame(case, [0, 1], dim=2)
    np.testing.assert_array_equal(t["centroid"][0][1], obj["classes"]["femur"]["centroid_mm"][1:])
    np.testing.assert_array_equal(t["covariance"][0][1], np.asarray(obj["classes"]["femur"]["covariance_mm2"])[1:, 1:])


def test_folder_loader_skips_summary_and_rejects_a_case_id_that_is_not_the_file_name(tmp_path):
    write(tmp_path, measured_case(), "knee_007.json")
    write(tmp_path, {"schema": SCHEMA_ID, "kind": "summary"}, "summary.json")
    (tmp_path / ".knee_007.json.x1y2.tmp").write_text("{")  # a temporary file left by a hard kill
    assert list(load_descriptor_folder(tmp_path, DATASET_JSON)) == ["knee_007"]
    # a copy under another case's name (which would also be a second knee_007) is refused
    write(tmp_path, measured_case(), "knee_008.json")
    with pytest.raises(DescriptorFileError, match=r"knee_008\.json: case 'knee_007': field \$\.case_id: case_id "
                                                  r"'knee_007' does not match the file name"):
        load_descriptor_folder(tmp_path, DATASET_JSON)


def test_write_json_atomic_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "case.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")})  # refused mid-way, NaN is not JSON
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": [1, 2, object()]})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["case.json"]


SPEC_TABLE = {
    "labels": ({"background": 0, "a": 1, "b": 2, "ignore": 3}, None,
               [ClassSpec("a", 1), ClassSpec("b", 2)]),
    "regions": ({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}, [1, 2, 3],
                [ClassSpec("whole", 1, (1, 2, 3)), ClassSpec("core", 2, (2, 3)), ClassSpec("enhancing", 3, (3,))]),
}


@pytest.mark.parametrize("labels, order, expected", SPEC_TABLE.values(), ids=SPEC_TABLE.keys())
def test_class_specs_follow_nnunet_label_handling(labels, order, expected):
    dataset_json = {"labels": labels, **({"regions_class_order": order} if order else {})}
    assert class_specs_from_dataset_json(dataset_json) == expected


def test_docs_examples_are_valid_v1_files(tmp_path):
    docs = Path(__file__).resolve().parents[1] / "docs" / "descriptor-json.md"
    blocks = re.findall(r"```json\n(.*?)```", docs.read_text(), flags=re.S)
    assert len(blocks) >= 2
    dataset_json = {"labels": {"background": 0, "femur": 1, "tibia": 2, "patella": 3}}
    for index, block in enumerate(blocks):
        obj = json.loads(block)
        if obj.get("kind") not in ("measured", "prior"):
            continue
        path = write(tmp_path, obj, f"example{index}.json")
        case = load_case_descriptors(path, dataset_json if obj["kind"] == "prior" else None)
        case_targets_array_frame(case, [0, 1, 2, 3], dim=3)


# nnU-Net's readers: SimpleITKIO gives a 2-D image (sy, sx) the spacing (999 * max(sy, sx), sy, sx),
# NaturalImage2DIO (999, 1, 1); half the factor is the threshold
LAYOUT_2D_TABLE = {
    "simpleitk-2d": ((1, 8, 6), (999 * 2.0, 2.0, 0.5), True),
    "natural-image-2d": ((1, 8, 6), (999.0, 1.0, 1.0), True),
    "at-the-threshold": ((1, 8, 6), (499.5 * 2.0, 2.0, 0.5), True),
    "below-the-threshold": ((1, 8, 6), (499.0 * 2.0, 2.0, 0.5), False),
    "single-slice-real-spacing": ((1, 8, 6), (2.0, 0.5, 1.25), False),
    "single-slice-shape-only": ((1, 8, 6), None, True),
    "two-slices": ((2, 8, 6), (999.0, 1.0, 1.0), False),
    "size-1-not-first": ((8, 1, 6), (1.0, 999.0, 1.0), False),
    "already-2d": ((8, 6), (2.0, 0.5), False),
    "2d-shape-only": ((8, 6), None, False),
}


@pytest.mark.parametrize("shape, spacing, expected", LAYOUT_2D_TABLE.values(), ids=LAYOUT_2D_TABLE.keys())
def test_nnunet_2d_layout_rule(shape, spacing, expected):
    assert is_nnunet_2d_layout(shape, spacing) is expected


def test_the_nnunet_layer_uses_the_same_2d_rule():
    from nnunet_shape.nnunet import frames

    assert frames.is_nnunet_2d_layout is is_nnunet_2d_layout
    assert frames.NNUNET_2D_SPACING_FACTOR == NNUNET_2D_SPACING_FACTOR == 999


def _package_imports(module_file: Path) -> set[str]:
    import ast

    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("nnunet_shape.descriptor_files.")}


# module -> the descriptor_files modules it may import (lower ones only; the reading side, read and
# targets, never the writing side, measure and export)
DESCRIPTOR_FILES_IMPORTS = {
    "model": set(),
    "json_schema": set(),
    "atomic": {"model"},
    "read": {"model", "json_schema"},
    "targets": {"model"},
    "measure": {"model"},
    "export": {"model", "atomic", "measure"},
    "cli": {"export"},
    "population_prior": {"model", "json_schema", "atomic"},
}


@pytest.mark.parametrize("module", DESCRIPTOR_FILES_IMPORTS)
def test_descriptor_file_modules_import_only_lower_ones(module):
    folder = Path(__file__).resolve().parents[1] / "nnunet_shape" / "descriptor_files"
    prefix = "nnunet_shape.descriptor_files."
    imported = {name[len(prefix):].split(".")[0] for name in _package_imports(folder / f"{module}.py")}
    assert imported <= DESCRIPTOR_FILES_IMPORTS[module], f"{module} imports {sorted(imported)}"
