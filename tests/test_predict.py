"""``nnunet-shape predict``: label map (and postprocessing) on the device, exported like nnU-Net.

Unit tests run in-process on hand-made plans and a tiny network; the end-to-end tests train the
``_debug`` full-supervision trainer once on the session's tiny dataset and compare with
``nnUNetv2_predict`` (+ ``nnUNetv2_apply_postprocessing``) voxel for voxel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import save_pickle
from e2e_helpers import run_cli, train_env
from nnunetv2.inference.export_prediction import (
    convert_predicted_logits_to_segmentation_with_correct_shape,
    export_prediction_from_logits,
)
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.postprocessing.remove_connected_components import (
    apply_postprocessing as nnunet_apply_postprocessing,
)
from nnunetv2.postprocessing.remove_connected_components import (
    remove_all_but_largest_component_from_segmentation as nnunet_lcc,
)
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_shape.nnunet.predict import (
    ShapePredictor,
    export_label_map,
    find_postprocessing_file,
    label_dtype,
    label_map_to_original_geometry,
    labels_from_logits,
)

DATASET = "Dataset701_Tiny"
TRAINER = "nnUNetTrainerShapeFullSupervision_debug"
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob_a": 1, "blob_b": 2},
                "numTraining": 1, "file_ending": ".nii.gz"}
FULL_PP = ([nnunet_lcc] * 3, [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 1}, {"labels_or_regions": 2}])


# ----------------------------------------------------------------------------------------------
# labels_from_logits
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_label, dtype", [(0, torch.uint8), (255, torch.uint8), (256, torch.int16),
                                              (32767, torch.int16), (32768, torch.int32)])
def test_label_dtype_is_the_smallest_that_holds_the_labels(max_label, dtype):
    assert label_dtype(max_label) == dtype


def test_label_dtype_rejects_negative_labels():
    with pytest.raises(ValueError, match="labels must be >= 0"):
        label_dtype(-1)


@pytest.mark.parametrize("logits, expected", [
    # (K=3, 2, 2): argmax per pixel, by hand
    ([[[0.0, 5.0], [1.0, -1.0]], [[1.0, 0.0], [0.0, -2.0]], [[2.0, 4.0], [0.5, -3.0]]], [[2, 0], [0, 0]]),
    # ties: the first maximum wins (numpy's argmax in nnU-Net)
    ([[[1.0, 2.0]], [[1.0, 3.0]], [[0.0, 3.0]]], [[0, 1]]),
])
def test_argmax_labels_by_hand(logits, expected):
    for dtype in (torch.float32, torch.float16):
        result = labels_from_logits(torch.tensor(logits, dtype=dtype))
        assert result.dtype == torch.uint8
        assert result.tolist() == expected


def test_argmax_labels_equal_nnunets_label_manager_3d():
    logits = torch.randn(4, 5, 6, 7, generator=torch.Generator().manual_seed(0)).half()
    manager = LabelManager({"background": 0, "a": 1, "b": 2, "c": 3}, None)
    expected = manager.convert_logits_to_segmentation(logits.numpy())
    np.testing.assert_array_equal(labels_from_logits(logits).numpy(), expected)


def test_regions_painted_in_class_order_by_hand():
    # channel 0 = region "whole" (labels 1, 2) -> 1; channel 1 = region "core" (label 2) -> 2, painted last
    logits = torch.tensor([[[3.0, 3.0, -3.0, 0.0]], [[-3.0, 3.0, 3.0, 0.0]]])
    result = labels_from_logits(logits, regions_class_order=[1, 2])
    assert result.tolist() == [[1, 2, 2, 0]]  # sigmoid(0) = 0.5 is not > 0.5


def test_regions_equal_nnunets_label_manager():
    manager = LabelManager({"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    logits = torch.randn(2, 6, 5, 4, generator=torch.Generator().manual_seed(1)).half()
    expected = manager.convert_logits_to_segmentation(logits)
    result = labels_from_logits(logits, manager.regions_class_order, manager.inference_nonlin)
    np.testing.assert_array_equal(result.numpy(), expected.numpy())


def test_labels_from_logits_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"logits must be \(K, X, Y\) or \(K, X, Y, Z\)"):
        labels_from_logits(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="regions_class_order"):
        labels_from_logits(torch.zeros(2, 3, 3), regions_class_order=[1, 2, 3])


# ----------------------------------------------------------------------------------------------
# export in the original geometry, against nnU-Net's export of the logits
# ----------------------------------------------------------------------------------------------

def make_plans(configuration_spacing, transpose_forward=(0, 1, 2), patch_size=(8, 8, 8)) -> dict:
    transpose_backward = [int(i) for i in np.argsort(transpose_forward)]
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward), "transpose_backward": transpose_backward,
        "label_manager": "LabelManager",
        "original_median_spacing_after_transp": list(configuration_spacing),
        "original_median_shape_after_transp": list(patch_size),
        "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {
            "data_identifier": "test", "preprocessor_name": "DefaultPreprocessor", "batch_size": 1,
            "patch_size": list(patch_size), "median_image_size_in_voxels": list(patch_size),
            "spacing": list(configuration_spacing), "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {"network_class_name": "torch.nn.Identity", "arch_kwargs": {},
                             "_kw_requires_import": []},
            "batch_dice": False}},
    }


def make_case(spacing, transpose_forward, shape_before_cropping, bbox, configuration_spacing):
    """Properties as nnU-Net's preprocessor writes them; shapes/bbox in transposed axes, spacing not.
    Returns (properties, preprocessed shape)."""
    spacing_transposed = [spacing[i] for i in transpose_forward]
    cropped = [high - low for low, high in bbox]
    preprocessed = [int(round(n * s / t)) for n, s, t in zip(cropped, spacing_transposed, configuration_spacing)]
    properties = {
        "spacing": list(spacing),
        "sitk_stuff": {"spacing": tuple(float(s) for s in spacing[::-1]), "origin": (4.0, -2.0, 7.5),
                       "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)},
        "shape_before_cropping": tuple(shape_before_cropping),
        "bbox_used_for_cropping": [list(b) for b in bbox],
        "shape_after_cropping_and_before_resampling": tuple(cropped),
    }
    return properties, tuple(preprocessed)


def smooth_logits(shape, n_classes: int, seed: int) -> torch.Tensor:
    """(K, *shape) float16 logits: class k wins near its random centre (blobs with smooth boundaries)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    logits = []
    for _ in range(n_classes):
        centre = [rng.uniform(0, n) for n in shape]
        logits.append(-sum(((g - c) / n) ** 2 for g, c, n in zip(grids, centre, shape)) * 8)
    return torch.from_numpy(np.stack(logits)).half()


def boundary_voxels(segmentation: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour of another label."""
    boundary = np.zeros(segmentation.shape, dtype=bool)
    for axis in range(segmentation.ndim):
        differs = np.diff(segmentation, axis=axis) != 0
        boundary[tuple(slice(0, -1) if a == axis else slice(None) for a in range(segmentation.ndim))] |= differs
        boundary[tuple(slice(1, None) if a == axis else slice(None) for a in range(segmentation.ndim))] |= differs
    return boundary


CASES = {
    # id: (original spacing, transpose_forward, shape_before_cropping (transposed), bbox, configuration spacing)
    "no-resampling": ((0.8, 1.2, 2.5), (2, 0, 1), (14, 30, 26), ((1, 13), (2, 27), (3, 24)), (2.5, 0.8, 1.2)),
    "resampling": ((0.8, 1.2, 2.5), (2, 0, 1), (14, 30, 26), ((1, 13), (2, 27), (3, 24)), (2.5, 1.0, 1.0)),
    "resampling-separate-z": ((0.9, 0.9, 4.0), (2, 0, 1), (10, 28, 30), ((0, 10), (3, 25), (1, 29)),
                              (4.0, 1.2, 1.2)),
}


def export_both(case: str, seed: int):
    spacing, transpose_forward, shape_before, bbox, configuration_spacing = CASES[case]
    plans_manager = PlansManager(make_plans(configuration_spacing, transpose_forward))
    configuration_manager = plans_manager.get_configuration("3d_fullres")
    label_manager = plans_manager.get_label_manager(DATASET_JSON)
    properties, preprocessed_shape = make_case(spacing, transpose_forward, shape_before, bbox, configuration_spacing)
    logits = smooth_logits(preprocessed_shape, 3, seed)
    expected = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, configuration_manager, label_manager, properties, num_threads_torch=1)
    ours = label_map_to_original_geometry(labels_from_logits(logits).numpy(), plans_manager, configuration_manager,
                                          properties, len(label_manager.foreground_labels))
    return ours, expected, properties, plans_manager, configuration_manager, preprocessed_shape


@pytest.mark.parametrize("seed", [0, 1])
def test_label_map_export_equals_nnunet_without_resampling(seed):
    ours, expected, properties, *_ , preprocessed_shape = export_both("no-resampling", seed)
    assert preprocessed_shape == properties["shape_after_cropping_and_before_resampling"]
    assert ours.dtype == expected.dtype == np.uint8
    assert ours.shape == expected.shape == (30, 26, 14)  # shape_before_cropping transposed back
    np.testing.assert_array_equal(ours, expected)
    assert len(np.unique(expected)) == 3


@pytest.mark.parametrize("case", ["resampling", "resampling-separate-z"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_map_export_with_resampling_differs_from_nnunet_only_on_boundaries(case, seed):
    ours, expected, properties, plans_manager, _, preprocessed_shape = export_both(case, seed)
    assert preprocessed_shape != properties["shape_after_cropping_and_before_resampling"]  # it does resample
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    # the region outside the crop is background in both
    inside = np.zeros(properties["shape_before_cropping"], dtype=bool)
    inside[tuple(slice(low, high) for low, high in properties["bbox_used_for_cropping"])] = True
    inside = inside.transpose(plans_manager.transpose_backward)
    assert not ours[~inside].any() and not expected[~inside].any()
    # argmax-then-resample vs resample-then-argmax: equal away from boundaries, >= 97 % equal overall
    differs = ours != expected
    assert differs[inside].mean() <= 0.03, differs[inside].mean()
    assert not (differs & ~boundary_voxels(expected)).any()
    assert len(np.unique(expected)) == 3


def test_export_label_map_writes_what_nnunet_writes(tmp_path):
    ours, expected, properties, plans_manager, configuration_manager, _ = export_both("no-resampling", 3)
    spacing, transpose_forward, shape_before, bbox, configuration_spacing = CASES["no-resampling"]
    logits = smooth_logits(make_case(spacing, transpose_forward, shape_before, bbox, configuration_spacing)[1], 3, 3)
    export_prediction_from_logits(logits, properties, configuration_manager, plans_manager, DATASET_JSON,
                                  str(tmp_path / "nnunet"), num_threads_torch=1)
    returned = export_label_map(labels_from_logits(logits).numpy(), properties, configuration_manager,
                                plans_manager, DATASET_JSON, str(tmp_path / "ours"))
    assert returned is None
    nnunet_image, our_image = (sitk.ReadImage(str(tmp_path / f"{n}.nii.gz")) for n in ("nnunet", "ours"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(our_image), sitk.GetArrayFromImage(nnunet_image))
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(our_image, attribute)() == getattr(nnunet_image, attribute)()
    # without an output file the array is returned (nnU-Net's convert_... counterpart)
    array = export_label_map(labels_from_logits(logits).numpy(), properties, configuration_manager,
                             plans_manager, DATASET_JSON, None)
    np.testing.assert_array_equal(array, expected)


# ----------------------------------------------------------------------------------------------
# the predictor in-process: a tiny network, two "folds", against nnUNetPredictor
# ----------------------------------------------------------------------------------------------

def initialised(predictor: nnUNetPredictor, n_folds: int = 2) -> nnUNetPredictor:
    plans_manager = PlansManager(make_plans((1.0, 1.0, 1.0), patch_size=(8, 8, 8)))
    network = torch.nn.Conv3d(1, 3, 3, padding=1)
    parameters = []
    for fold in range(n_folds):
        generator = torch.Generator().manual_seed(fold)
        parameters.append({name: torch.randn(value.shape, generator=generator)
                           for name, value in network.state_dict().items()})
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("3d_fullres"),
                                    parameters, DATASET_JSON, "test", (0, 1, 2))
    return predictor


def predictors(**kwargs) -> tuple[nnUNetPredictor, ShapePredictor]:
    options = dict(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    return initialised(nnUNetPredictor(**options)), initialised(ShapePredictor(**options, **kwargs))


def test_fold_logits_equal_nnunets():
    image = torch.randn(1, 11, 13, 9, generator=torch.Generator().manual_seed(5))
    nnunet, ours = predictors()
    expected = nnunet.predict_logits_from_preprocessed_data(image)
    result = ours.predict_logits_from_preprocessed_data(image)
    assert result.dtype == expected.dtype == torch.float16
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


@pytest.mark.parametrize("postprocessing", [None, FULL_PP], ids=["plain", "largest-component"])
def test_label_map_from_preprocessed_data_equals_nnunet(postprocessing):
    image = torch.randn(1, 11, 13, 9, generator=torch.Generator().manual_seed(6))
    nnunet, ours = predictors(postprocessing=postprocessing)
    expected = nnunet.label_manager.convert_logits_to_segmentation(
        nnunet.predict_logits_from_preprocessed_data(image).numpy())
    if postprocessing is not None:
        before = expected
        expected = nnunet_apply_postprocessing(expected, *postprocessing)
        assert (before != expected).any()  # the random network leaves many components: pp has work to do
    result = ours.predict_label_map_from_preprocessed_data(image)
    assert result.dtype == torch.uint8 and tuple(result.shape) == (11, 13, 9)
    np.testing.assert_array_equal(result.numpy(), expected)


def test_predict_from_data_iterator_returns_nnunets_segmentations():
    nnunet, ours = predictors(postprocessing=FULL_PP)
    items, expected = [], []
    for seed, shape in ((7, (11, 13, 9)), (8, (9, 8, 12))):
        image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))
        properties = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": tuple(n + 2 for n in shape),
                      "bbox_used_for_cropping": [[1, n + 1] for n in shape],
                      "shape_after_cropping_and_before_resampling": shape}
        items.append({"data": image, "data_properties": properties, "ofile": None})
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            nnunet.predict_logits_from_preprocessed_data(image), nnunet.plans_manager, nnunet.configuration_manager,
            nnunet.label_manager, properties, num_threads_torch=1)
        expected.append(nnunet_apply_postprocessing(segmentation, *FULL_PP))
    results = ours.predict_from_data_iterator(iter(items), num_processes_segmentation_export=0)
    assert len(results) == 2
    for result, reference in zip(results, expected):
        np.testing.assert_array_equal(result, reference)


def test_save_probabilities_is_refused():
    _, ours = predictors()
    with pytest.raises(ValueError, match="save_probabilities"):
        ours.predict_from_data_iterator(iter([]), save_probabilities=True, num_processes_segmentation_export=0)


@pytest.mark.parametrize("pp_backend", ["torch", "cc3d"])
def test_postprocessing_backends_agree(pp_backend):
    image = torch.randn(1, 10, 9, 12, generator=torch.Generator().manual_seed(9))
    _, auto = predictors(postprocessing=FULL_PP)
    _, chosen = predictors(postprocessing=FULL_PP, pp_backend=pp_backend)
    torch.testing.assert_close(chosen.predict_label_map_from_preprocessed_data(image),
                               auto.predict_label_map_from_preprocessed_data(image), rtol=0, atol=0)


def test_unknown_backend_and_mismatched_pkl_are_refused():
    with pytest.raises(ValueError, match="pp_backend"):
        ShapePredictor(device=torch.device("cpu"), pp_backend="skimage")
    with pytest.raises(ValueError, match="keyword dicts"):
        ShapePredictor(device=torch.device("cpu"), postprocessing=([nnunet_lcc], []))


# ----------------------------------------------------------------------------------------------
# finding postprocessing.pkl
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("present, expected", [
    (["crossval_results_folds_0_1_2_3_4/postprocessing.pkl"], "crossval_results_folds_0_1_2_3_4/postprocessing.pkl"),
    (["postprocessing.pkl"], "postprocessing.pkl"),
    ([], FileNotFoundError),
    (["postprocessing.pkl", "crossval_results_folds_0/postprocessing.pkl"], ValueError),
    (["crossval_results_folds_0/postprocessing.pkl", "crossval_results_folds_0_1/postprocessing.pkl"], ValueError),
])
def test_find_postprocessing_file(tmp_path, present, expected):
    for relative in present:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        save_pickle(FULL_PP, str(tmp_path / relative))
    (tmp_path / "crossval_results_folds_2").mkdir(exist_ok=True)  # a folder without a pkl is not a candidate
    if isinstance(expected, type):
        with pytest.raises(expected, match="--postprocessing PATH") as error:
            find_postprocessing_file(str(tmp_path))
        for relative in present:  # the ambiguity error lists every candidate
            assert str(tmp_path / relative) in str(error.value)
    else:
        assert find_postprocessing_file(str(tmp_path)) == str(tmp_path / expected)


# ----------------------------------------------------------------------------------------------
# end to end, with nnU-Net's console scripts
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(planned) -> tuple[Path, dict, Path]:
    """The _debug full-supervision model (fold 0, 3d_fullres), trained once or reused, and nnU-Net's
    own prediction of the test case (``nnUNetv2_predict --disable_tta``)."""
    root, env = planned
    model = root / "nnUNet_results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        run_cli(["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], train_env(env),
                log=root / f"train_{TRAINER}_3d_fullres_predict.log")
    nnunet_prediction = root / "predict_test_nnunet"
    if not nnunet_prediction.is_dir():
        run_cli(["nnUNetv2_predict", *common_predict_args(root), "-o", str(nnunet_prediction),
                 "-npp", "0", "-nps", "0"], env)
    return root, env, nnunet_prediction


def common_predict_args(root: Path) -> list[str]:
    return ["-i", str(root / "nnUNet_raw" / DATASET / "imagesTs"), "-d", "701", "-c", "3d_fullres", "-f", "0",
            "-tr", TRAINER, "-device", "cpu", "--disable_tta"]


def assert_same_images(folder: Path, reference: Path) -> None:
    references = sorted(reference.glob("*.nii.gz"))
    assert references and sorted(p.name for p in folder.glob("*.nii.gz")) == [p.name for p in references]
    for path in references:
        expected, ours = sitk.ReadImage(str(path)), sitk.ReadImage(str(folder / path.name))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(expected))
        for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(ours, attribute)() == getattr(expected, attribute)(), attribute


def assert_no_resampling(root: Path) -> None:
    """The premise of exact equality: every test case already has the configuration's spacing."""
    plans = json.loads((root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    configuration_spacing = plans["configurations"]["3d_fullres"]["spacing"]
    for image in (root / "nnUNet_raw" / DATASET / "imagesTs").glob("*.nii.gz"):
        spacing = sitk.ReadImage(str(image)).GetSpacing()[::-1]  # array order, like nnU-Net's properties
        assert np.allclose([spacing[i] for i in plans["transpose_forward"]], configuration_spacing)


def test_predict_without_postprocessing_equals_nnunet_predict(trained):
    root, env, nnunet_prediction = trained
    assert_no_resampling(root)
    ours = root / "predict_test_ours"
    run_cli(["nnunet-shape", "predict", *common_predict_args(root), "-o", str(ours), "-npp", "0", "-nps", "0"], env)
    assert_same_images(ours, nnunet_prediction)
    record = json.loads((ours / "nnunet_shape_predict.json").read_text())
    assert record["postprocessing_file"] is None and record["pp_fns"] == []
    # like nnUNetv2_predict: the files nnUNetv2_apply_postprocessing needs are in the output folder
    assert (ours / "plans.json").is_file() and (ours / "dataset.json").is_file()


def test_predict_with_postprocessing_equals_nnunet_predict_then_apply_postprocessing(trained):
    root, env, nnunet_prediction = trained
    assert_no_resampling(root)
    # where nnUNetv2_find_best_configuration writes it, with nnU-Net's own function object
    pkl = (root / "nnUNet_results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "crossval_results_folds_0"
           / "postprocessing.pkl")
    pkl.parent.mkdir(parents=True, exist_ok=True)
    save_pickle(FULL_PP, str(pkl))
    nnunet_postprocessed = root / "predict_test_nnunet_pp"
    run_cli(["nnUNetv2_apply_postprocessing", "-i", str(nnunet_prediction), "-o", str(nnunet_postprocessed),
             "-pp_pkl_file", str(pkl), "-np", "1"], env)
    ours = root / "predict_test_ours_pp"
    # bare --postprocessing finds the pkl; -nps 1 exercises the export worker (a spawned process)
    run_cli(["nnunet-shape", "predict", *common_predict_args(root), "-o", str(ours), "-npp", "0", "-nps", "1",
             "--postprocessing", "--pp-backend", "torch"], env)
    assert_same_images(ours, nnunet_postprocessed)
    # the comparison means something: the 1-epoch model leaves stray components that pp removes
    removed = sum(int((sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
                       != sitk.GetArrayFromImage(sitk.ReadImage(str(nnunet_prediction / path.name)))).sum())
                  for path in nnunet_postprocessed.glob("*.nii.gz"))
    assert removed > 0
    record = json.loads((ours / "nnunet_shape_predict.json").read_text())
    assert record["postprocessing_file"] == str(pkl) and record["pp_backend"] == "torch"
    assert record["pp_fns"] == ["remove_all_but_largest_component_from_segmentation"] * 3


def test_postprocessing_flag_without_with_and_with_a_value():
    from nnunet_shape.nnunet.predict import _FROM_MODEL_FOLDER, build_parser

    base = ["-i", "in", "-o", "out", "-d", "701", "-c", "3d_fullres"]
    parse = build_parser().parse_args
    assert parse(base).postprocessing is None
    assert parse(base + ["--postprocessing"]).postprocessing is _FROM_MODEL_FOLDER
    assert parse(base + ["--postprocessing", "/pp/postprocessing.pkl"]).postprocessing == "/pp/postprocessing.pkl"
    args = parse(base + ["--postprocessing", "--pp-backend", "cc3d"])
    assert args.postprocessing is _FROM_MODEL_FOLDER and args.pp_backend == "cc3d"
    assert args.f == ["0", "1", "2", "3", "4"] and args.npp == args.nps == 3 and not args.disable_tta
