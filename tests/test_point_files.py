"""Surface points (paper 003): boundary sampling, the point-file format, 3D Slicer markups."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_shape.core.surface_sampling import (
    boundary_mask,
    boundary_points_mm,
    farthest_point_sampling,
    sample_surface_points,
)
from nnunet_shape.point_files.format import (
    CasePoints,
    ClassPoints,
    PointFileError,
    array_mm_to_world,
    case_points_to_json,
    load_case_points,
    load_points_folder,
    world_to_array_mm,
    write_case_points,
)
from nnunet_shape.point_files.slicer import load_slicer_case, read_slicer_markups, write_slicer_markups

DATASET_JSON = {"labels": {"background": 0, "ball": 1, "pill": 2}, "file_ending": ".nii.gz",
                "channel_names": {"0": "MR"}}


def ellipsoid(shape, spacing, radii, centre=None):
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    centre = [0.5 * (n - 1) * s for n, s in zip(shape, spacing)] if centre is None else centre
    grid = np.meshgrid(*axes, indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


# ---------------------------------------------------------------------------------------
# boundary voxels and farthest-point sampling (core, pure numpy)
# ---------------------------------------------------------------------------------------


def test_boundary_points_of_a_cube_are_its_corners_faces_and_edges():
    mask = np.zeros((4, 5, 5), bool)
    mask[1:3, 1:4, 1:4] = True  # 2 x 3 x 3 voxels
    spacing = (2.0, 1.0, 0.5)
    points, voxels = boundary_points_mm(mask, spacing)
    assert len(points) == 18  # every voxel of a 2-thick box touches the outside
    table = {  # voxel -> point on the voxel surface (mm), by hand
        (1, 1, 1): (1.0, 0.5, 0.25),   # corner: -z, -y, -x faces outside
        (2, 3, 3): (5.0, 3.5, 1.75),   # opposite corner: +z, +y, +x
        (1, 2, 2): (1.0, 2.0, 1.0),    # middle of the -z face: only z moves
        (2, 1, 2): (5.0, 0.5, 1.0),    # edge: +z and -y
    }
    rows = {tuple(v): p for v, p in zip(voxels.tolist(), points.tolist())}
    for voxel, expected in table.items():
        assert rows[voxel] == pytest.approx(expected)
    inner = np.zeros((5, 5, 5), bool)
    inner[1:4, 1:4, 1:4] = True
    assert not boundary_mask(inner)[2, 2, 2] and boundary_mask(inner).sum() == 26
    edge = np.ones((3, 3, 3), bool)  # the image border counts as outside
    assert boundary_mask(edge).sum() == 26


def test_farthest_point_sampling_order_by_hand():
    points = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(5) == 0)
    # from 0: 10 is farthest; then 3 (3 from 0, 7 from 10); then 1 and 2 tie at 1 -> lowest index
    assert farthest_point_sampling(points, 5, seed).tolist() == [0, 4, 3, 1, 2]
    assert farthest_point_sampling(points, 2, seed).tolist() == [0, 4]
    assert farthest_point_sampling(points, 99, seed).tolist() == [0, 4, 3, 1, 2]
    assert farthest_point_sampling(points, 0, seed).tolist() == []
    with pytest.raises(ValueError, match="n must be >= 0"):
        farthest_point_sampling(points, -1, seed)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.6)])
def test_simulated_points_lie_on_the_reference_surface_and_are_seeded(spacing):
    shape = (16, 40, 44)
    extent = np.array(shape) * np.array(spacing)
    mask = ellipsoid(shape, spacing, 0.35 * extent)
    points = sample_surface_points(mask, spacing, 50, seed=3)
    assert points.shape == (50, 3)
    centres = np.argwhere(boundary_mask(mask)) * np.asarray(spacing)
    nearest = np.min(np.linalg.norm(points[:, None] - centres[None], axis=2), axis=1)
    assert np.all(nearest <= 0.5 * np.linalg.norm(spacing) + 1e-9)
    # no interior voxel is closer than its boundary: every point is farther than half a voxel from the
    # interior (voxels whose 6 neighbours are all inside)
    interior = np.argwhere(mask & ~boundary_mask(mask)) * np.asarray(spacing)
    assert np.min(np.linalg.norm(points[:, None] - interior[None], axis=2)) >= 0.5 * min(spacing) - 1e-9
    assert np.array_equal(points, sample_surface_points(mask, spacing, 50, seed=3))
    assert not np.array_equal(points, sample_surface_points(mask, spacing, 50, seed=4))
    # spread over the whole surface: points in every octant around the centre
    octant = (points > 0.5 * (np.array(shape) - 1) * np.array(spacing)) @ np.array([4, 2, 1])
    assert set(octant.tolist()) == set(range(8))
    assert sample_surface_points(np.zeros(shape, bool), spacing, 5, 0).shape == (0, 3)


# ---------------------------------------------------------------------------------------
# world frame
# ---------------------------------------------------------------------------------------


def test_array_frame_to_world_is_the_descriptor_files_rule():
    from nnunet_shape.descriptor_files.measure import Geometry

    direction = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0))
    geometry = Geometry(shape=(4, 5, 6), spacing_mm=(3.0, 1.0, 0.5), axis_order=("z", "y", "x"),
                        origin_mm=(-40.0, 12.5, 100.0), direction=direction, world_frame="ITK-LPS")
    points = np.array([[0.0, 0.0, 0.0], [3.0, 1.0, 0.5], [7.5, -2.0, 4.25]])
    world = array_mm_to_world(points, geometry.origin_mm, geometry.direction)
    for p, w in zip(points, world):
        assert w == pytest.approx(geometry.world_point(p))
    assert world[1] == pytest.approx([-40.0 + 3.0, 12.5 + 0.5, 100.0 - 1.0])  # by hand
    assert world_to_array_mm(world, geometry.origin_mm, geometry.direction) == pytest.approx(points)


# ---------------------------------------------------------------------------------------
# the point-file format
# ---------------------------------------------------------------------------------------


def _case(case_id="case_000"):
    return CasePoints(case_id=case_id, classes={
        "ball": ClassPoints("ball", np.array([[1.0, 2.0, 3.0], [-4.5, 0.125, 1e-3]]), 1),
        "pill": ClassPoints("pill", np.zeros((0, 3)), 2, comment="absent in this case")},
        source={"kind": "manual"}, comment="by hand")


def test_point_file_round_trip(tmp_path):
    path = tmp_path / "case_000.json"
    write_case_points(path, _case())
    raw = json.loads(path.read_text())
    assert raw["schema"] == "nnunet-shape/points/v1" and raw["world_frame"] == "ITK-LPS"
    assert raw["classes"]["ball"]["points_world_mm"][1] == [-4.5, 0.125, 1e-3]
    loaded = load_case_points(path, DATASET_JSON)
    assert loaded.case_id == "case_000" and loaded.num_points == 2
    assert np.array_equal(loaded.classes["ball"].points_world_mm, _case().classes["ball"].points_world_mm)
    assert loaded.classes["pill"].points_world_mm.shape == (0, 3) and loaded.classes["pill"].label == 2
    assert case_points_to_json(loaded) == raw


BAD_FILES = [  # (change to the valid JSON, expected parts of the message)
    (lambda r: r.update(schema="nnunet-shape/points/v0"), ["unknown schema version", "field $.schema"]),
    (lambda r: r["classes"]["ball"]["points_world_mm"][1].pop(), ["class 'ball'", "point 1", "is too short"]),
    (lambda r: r["classes"]["ball"]["points_world_mm"][0].__setitem__(2, float("nan")),
     ["class 'ball'", "point 0", "NaN"]),
    (lambda r: r["classes"]["ball"]["points_world_mm"][1].__setitem__(0, "1.0"), ["class 'ball'", "point 1",
                                                                                  "is not of type 'number'"]),
    (lambda r: r["classes"]["ball"].update(points=[]), ["class 'ball'", "Additional properties"]),
    (lambda r: r["classes"].update(femur={"points_world_mm": []}), ["class 'femur'", "does not match dataset.json"]),
    (lambda r: r["classes"]["pill"].update(label=3), ["class 'pill'", "label 3 does not match dataset.json (2)"]),
    (lambda r: r.update(world_frame="RAS"), ["field $.world_frame", "is not one of"]),
    (lambda r: r.update(case_id="case_001"), ["case 'case_001'", "does not match the file name"]),
]


@pytest.mark.parametrize("change, expected", BAD_FILES)
def test_point_file_errors_name_file_case_class_and_point(tmp_path, change, expected):
    raw = case_points_to_json(_case())
    change(raw)
    path = tmp_path / "case_000.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(PointFileError) as info:
        load_case_points(path, DATASET_JSON)
    message = str(info.value)
    assert message.startswith(f"{path}: case ")
    for part in expected:
        assert part in message, message
    assert ".py" not in message


def test_broken_json_names_the_file(tmp_path):
    path = tmp_path / "case_000.json"
    path.write_text('{"schema": ')
    with pytest.raises(PointFileError, match=r"case_000\.json: case <unknown case>: not valid JSON \(line 1"):
        load_case_points(path)


# ---------------------------------------------------------------------------------------
# 3D Slicer markups
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_round_trip(tmp_path, system):
    lps = np.array([[10.0, -20.0, 30.0], [-1.5, 2.25, -3.0]])
    path = tmp_path / "case_000" / "ball.mrk.json"
    path.parent.mkdir()
    write_slicer_markups(path, lps, "ball", coordinate_system=system)
    raw = json.loads(path.read_text())
    markup = raw["markups"][0]
    assert markup["coordinateSystem"] == system and markup["type"] == "Fiducial"
    sign = np.array([-1.0, -1.0, 1.0]) if system == "RAS" else np.ones(3)
    assert [c["position"] for c in markup["controlPoints"]] == (lps * sign).tolist()
    assert np.array_equal(read_slicer_markups(path), lps)
    case = load_slicer_case(path.parent, "case_000", DATASET_JSON)
    assert np.array_equal(case.classes["ball"].points_world_mm, lps) and case.classes["ball"].label == 1
    assert case.source["kind"] == "slicer"


def test_slicer_file_as_slicer_writes_it(tmp_path):
    """Hand-written like Slicer's docs: no coordinateSystem (LPS by the schema), um units, unplaced points."""
    path = tmp_path / "pill.mrk.json"
    path.write_text(json.dumps({
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                   "Schema/markups-schema-v1.0.0.json#",
        "markups": [
            {"type": "Fiducial", "controlPoints": [
                {"label": "F-1", "position": [1.0, 2.0, 3.0]},
                {"label": "F-2", "position": [0, 0, 0], "positionStatus": "undefined"}]},
            {"type": "ClosedCurve", "coordinateSystem": "RAS", "coordinateUnits": "um",
             "controlPoints": [{"position": [1000.0, -2000.0, 500.0], "positionStatus": "defined"}]},
        ]}))
    assert read_slicer_markups(path).tolist() == [[1.0, 2.0, 3.0], [-1.0, 2.0, 0.5]]


@pytest.mark.parametrize("markup, expected", [
    ({"type": "ROI", "controlPoints": []}, ["class 'pill'", "markups type 'ROI'", "field $.markups[0].type"]),
    ({"type": "Fiducial", "coordinateSystem": "RAI", "controlPoints": []}, ["coordinateSystem 'RAI'"]),
    ({"type": "Fiducial", "controlPoints": [{"position": [1, 2, 3]}, {"position": [1, 2]}]},
     ["class 'pill'", "point 1", "expected 3 numbers", "controlPoints[1].position"]),
])
def test_slicer_errors_name_file_class_and_point(tmp_path, markup, expected):
    path = tmp_path / "pill.mrk.json"
    path.write_text(json.dumps({"@schema": "x", "markups": [markup]}))
    with pytest.raises(PointFileError) as info:
        read_slicer_markups(path, "case_007")
    message = str(info.value)
    assert message.startswith(f"{path}: case 'case_007': ")
    for part in expected:
        assert part in message, message


def test_points_folder_reads_both_layouts(tmp_path):
    write_case_points(tmp_path / "case_000.json", _case("case_000"))
    (tmp_path / "case_001").mkdir()
    write_slicer_markups(tmp_path / "case_001" / "pill.mrk.json", np.array([[1.0, 2.0, 3.0]]), "pill", "RAS")
    cases = load_points_folder(tmp_path, DATASET_JSON)
    assert sorted(cases) == ["case_000", "case_001"]
    assert cases["case_001"].classes["pill"].points_world_mm.tolist() == [[1.0, 2.0, 3.0]]
    write_slicer_markups(tmp_path / "case_001" / "femur.mrk.json", np.zeros((1, 3)), "femur")
    with pytest.raises(PointFileError, match=r"femur\.mrk\.json: case 'case_001': class 'femur': .*does not match"):
        load_points_folder(tmp_path, DATASET_JSON)
    (tmp_path / "case_001" / "femur.mrk.json").unlink()
    write_case_points(tmp_path / "case_001.json", _case("case_001"))
    with pytest.raises(PointFileError, match="given twice"):
        load_points_folder(tmp_path, DATASET_JSON)
