"""Label-free training: descriptor targets read from per-case JSON files, never from voxels.

``nnUNetTrainerShapeDescriptorsFromFile`` reads ``descriptorsTr/<case>.json`` (schema v1, see
docs/descriptor-json.md) from the raw dataset folder, or from the folder named by the
environment variable ``nnUNetShape_descriptors``. The files describe the *raw* image; the
network sees the *preprocessed* case (transposed, cropped, resampled), placed in the whole-scan
patch and augmented. So the targets go through the same maps, analytically
(:mod:`nnunet_shape.core.geometry`):

raw file -> preprocessed frame (once per case) -> centred placement in the loader's patch ->
the spatial transform's affine (rotation, scaling; recorded per sample) -> mirroring.

Augmentations whose effect on descriptors is not known analytically are refused (elastic
deformation: nnU-Net's default has ``p_elastic_deform=0``, and the trainer asserts it). The
label arrays of the preprocessed dataset are never opened: the datasets handed to the loaders
return an empty (all background) segmentation, which nnU-Net's transforms then carry along
unused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_shape.core.geometry import (
    IndexAffine,
    raw_to_preprocessed_targets,
    training_patch_affine,
    transform_targets,
)
from nnunet_shape.core.intensity import IntensityBounds, intensity_bounds_from_targets
from nnunet_shape.core.losses import DescriptorBounds, bounds_from_targets
from nnunet_shape.descriptor_files.measure import volume_and_centroid_errors
from nnunet_shape.descriptor_files.read import load_descriptor_folder
from nnunet_shape.descriptor_files.targets import case_intensity_targets_zscore, case_targets_array_frame
from nnunet_shape.errors import UserError
from nnunet_shape.nnunet.training.shape_trainers import checked_case_spacing, nnUNetTrainerShapeDescriptors
from nnunet_shape.nnunet.training.variants import (
    DebugSchedule,
    DemoSchedule,
    Schedule5Epochs,
    Schedule50Epochs,
    Schedule250Epochs,
    SuiteSchedule,
    trainer_names,
)
from nnunet_shape.nnunet.training.whole_scan import WholeCaseDataLoader, load_preprocessed_image

#: environment variable naming the descriptor folder (default: nnUNet_raw/<dataset>/descriptorsTr)
DESCRIPTORS_ENV = "nnUNetShape_descriptors"

Targets = dict[str, tuple[np.ndarray, np.ndarray]]


class RecordingSpatialTransform(SpatialTransform):
    """nnU-Net's SpatialTransform that remembers the parameters it drew last (per process)."""

    def get_parameters(self, **data_dict) -> dict:
        parameters = super().get_parameters(**data_dict)
        self.last_record = {"affine": parameters["affine"], "input_shape": tuple(data_dict["image"].shape[1:]),
                            "patch_size": tuple(self.patch_size)}
        return parameters


class RecordingMirrorTransform(MirrorTransform):
    """nnU-Net's MirrorTransform that remembers the axes it flipped last."""

    def get_parameters(self, **data_dict) -> dict:
        parameters = super().get_parameters(**data_dict)
        self.last_record = {"axes": tuple(int(a) for a in parameters["axes"])}
        return parameters


def _walk(transform):
    yield transform
    for child in getattr(transform, "transforms", []) or []:
        yield from _walk(child)
    inner = getattr(transform, "transform", None)
    if inner is not None:
        yield from _walk(inner)


def refuse_elastic_deformation(transforms) -> None:
    """Raise if a spatial transform of ``transforms`` may deform elastically: its effect on
    descriptors is not known analytically, so file targets could not follow the image."""
    for transform in _walk(transforms):
        if isinstance(transform, SpatialTransform) and transform.p_elastic_deform > 0:
            raise ValueError(f"nnUNetTrainerShapeDescriptorsFromFile: elastic deformation changes descriptors in a "
                             f"way that is not known analytically; p_elastic_deform must be 0, got "
                             f"{transform.p_elastic_deform}")


def make_transforms_recording(transforms) -> list:
    """Swap nnU-Net's spatial and mirror transforms for their recording subclasses, in place.

    Returns the recording transforms in application order. Raises if elastic deformation is
    enabled (:func:`refuse_elastic_deformation`).
    """
    refuse_elastic_deformation(transforms)
    recorders = []
    for transform in _walk(transforms):
        if type(transform) is SpatialTransform:
            transform.__class__ = RecordingSpatialTransform
            recorders.append(transform)
        elif type(transform) is MirrorTransform:
            transform.__class__ = RecordingMirrorTransform
            recorders.append(transform)
    return recorders


class FromFileDataLoader(WholeCaseDataLoader):
    """Whole-case loader that reports, per sample, what the spatial transforms did.

    ``batch["augmentation"]`` is a list (one entry per sample, batch order) of the records of
    the spatial and mirror transforms; ``batch["patch_placement"]`` the shape of the loader's
    crop (the initial patch) so the centred placement can be recomputed.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._recorders = make_transforms_recording(self.transforms) if self.transforms is not None else []

    def generate_train_batch(self):
        records: list[list[dict]] = []
        transforms = self.transforms

        def recorded(**data):
            for recorder in self._recorders:
                recorder.last_record = None
            out = transforms(**data)
            records.append([dict(type=type(r).__name__, **(r.last_record or {})) for r in self._recorders
                            if getattr(r, "last_record", None) is not None])
            return out

        self.transforms = recorded if transforms is not None else None
        try:
            batch = super().generate_train_batch()
        finally:
            self.transforms = transforms
        batch["augmentation"] = records if transforms is not None else [[] for _ in batch["keys"]]
        batch["loader_patch_size"] = tuple(int(p) for p in self.patch_size)
        return batch


class LabelFreeDataset:
    """A preprocessed nnU-Net dataset whose label arrays are never opened.

    ``load_case`` returns the image, an all-background segmentation of the same spatial shape
    and the properties; the ``*_seg`` files are not read (tests delete them to prove it).
    """

    def __init__(self, dataset):
        self._dataset = dataset
        self.identifiers = dataset.identifiers

    def __len__(self) -> int:
        return len(self.identifiers)

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def load_case(self, identifier: str):
        data, properties = load_preprocessed_image(self._dataset.source_folder, identifier)
        seg = np.zeros((1, *data.shape[1:]), dtype=np.int8)
        return data, seg, None, properties


def descriptor_agreement(targets: dict, predicted_folder: str, dataset_json: dict) -> dict:
    """Relative volume error and centroid distance (mm) of predicted descriptor files against the
    target files, per case and class, with the mean per class (classes with an exact target only)."""
    predicted = load_descriptor_folder(predicted_folder, dataset_json)
    per_case: dict[str, dict] = {}
    for case_id, prediction in predicted.items():
        target = targets.get(case_id)
        if target is None:
            continue
        rows = {}
        for name, cls in target.classes.items():
            volume = cls.values.get("volume_mm3")
            centre = cls.values.get("centroid_world_mm")
            other = prediction.classes[name]
            if volume is None or not volume or other.values.get("volume_mm3") is None:
                continue
            relative_volume_error, distance = volume_and_centroid_errors(
                volume, other.values["volume_mm3"], centre, other.values.get("centroid_world_mm"))
            rows[name] = {"relative_volume_error": relative_volume_error, "centroid_distance_mm": distance}
        per_case[case_id] = rows
    names = sorted({n for rows in per_case.values() for n in rows})

    def finite_mean(values: list) -> float | None:
        values = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(values)) if values else None

    mean = {n: {metric: finite_mean([rows[n][metric] for rows in per_case.values() if n in rows])
                for metric in ("relative_volume_error", "centroid_distance_mm")} for n in names}
    # JSON has no NaN: an undefined value (empty prediction) is null
    per_case = {c: {n: {k: (v if np.isfinite(v) else None) for k, v in row.items()} for n, row in rows.items()}
                for c, rows in per_case.items()}
    return {"metric_per_case": per_case, "mean": mean}


def descriptor_folder(dataset_name: str) -> str:
    """Where the descriptor files of ``dataset_name`` are read from."""
    if os.environ.get(DESCRIPTORS_ENV):
        return os.environ[DESCRIPTORS_ENV]
    return join(nnUNet_raw.require(), dataset_name, "descriptorsTr")


def sample_index_map(case_shape: Sequence[int], loader_patch_size: Sequence[int], patch_size: Sequence[int],
                     records: Sequence[dict]) -> IndexAffine:
    """Index map case -> network patch for one sample, from what the recording transforms saw."""
    spatial = next((r for r in records if r["type"] == "RecordingSpatialTransform"), None)
    mirror = next((r for r in records if r["type"] == "RecordingMirrorTransform"), None)
    affine = None if spatial is None or spatial["affine"] is None else np.asarray(spatial["affine"], np.float64)
    # nnU-Net's dummy 2D augmentation hands the spatial transform a 2D image of a 3D case
    dummy_2d = spatial is not None and len(spatial["input_shape"]) == len(case_shape) - 1
    return training_patch_affine(case_shape, loader_patch_size, patch_size, affine,
                                 mirror["axes"] if mirror is not None else (), dummy_2d)


def widen_exact_values(targets: Targets, relative_margin, absolute_margin) -> tuple[dict, dict]:
    """Lower/upper bounds: exact values (lower == upper) get the trainer's margins, ranges stay."""
    lower, upper = {}, {}
    exact_values = {}
    for name, (lo, hi) in targets.items():
        exact = np.isfinite(lo) & (lo == hi)
        exact_values[name] = torch.from_numpy(np.where(exact, lo, np.nan))[None]
    widened = bounds_from_targets(exact_values, relative_margin, absolute_margin)
    for name, (lo, hi) in targets.items():
        exact = np.isfinite(lo) & (lo == hi)
        lower[name] = np.where(exact, widened.lower[name][0].numpy(), lo)
        upper[name] = np.where(exact, widened.upper[name][0].numpy(), hi)
    return lower, upper


class nnUNetTrainerShapeDescriptorsFromFile(nnUNetTrainerShapeDescriptors):
    """V+C+D from descriptor files only: the loss never sees a voxel label (3D configurations)."""

    reads_voxel_labels = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if len(self.configuration_manager.patch_size) != 3:
            raise ValueError(
                f"{self.__class__.__name__}: configuration {configuration} is 2D, but descriptor files describe "
                f"whole 3D cases; per-slice targets cannot be derived from them. Use a 3D configuration.")
        if self.label_manager.has_regions:
            raise ValueError(f"{self.__class__.__name__}: region-based datasets are not supported from files yet")
        self._file_targets: dict[str, tuple[Targets, tuple[float, ...], tuple[int, ...]]] = {}
        self._intensity_targets: dict[str, Targets] = {}
        self._case_files = None

    # ------------------------------------------------------------------------------ data
    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        return LabelFreeDataset(dataset_tr), LabelFreeDataset(dataset_val)

    data_loader_class = FromFileDataLoader

    @staticmethod
    def get_training_transforms(*args, **kwargs):
        # the recording subclasses are swapped in by FromFileDataLoader; checked here already so
        # that a trainer variant with elastic deformation fails before training starts
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        refuse_elastic_deformation(transforms)
        return transforms

    def _load_case_files(self) -> dict:
        if self._case_files is None:
            folder = descriptor_folder(self.plans_manager.dataset_name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(
                    f"{self.__class__.__name__}: no descriptor folder {folder} for dataset "
                    f"{self.plans_manager.dataset_name}; export one with nnUNetv2_export_descriptors -d ... or set "
                    f"{DESCRIPTORS_ENV}")
            self._case_files = load_descriptor_folder(folder, self.dataset_json)
        return self._case_files

    def on_train_start(self):
        # every case, before the data loaders start: a wrong file must not surface epochs later
        self.check_descriptor_files()
        super().on_train_start()

    def check_descriptor_files(self) -> None:
        """Check the descriptor files of EVERY case of the preprocessed dataset, once, at the start.

        Each case needs a file (named ``<case>.json`` with that ``case_id``, checked when the
        folder is read), and a file's ``shape``, ``spacing_mm``, ``origin_mm`` and ``direction``
        must be those of the case's raw image as nnU-Net recorded them when it preprocessed the
        case (its ``.pkl``: ``shape_before_cropping`` transposed back, ``spacing``, the reader's
        origin and direction). A mismatch is a UserError naming the case, the field and both
        values: targets in another image's millimetres would train silently on wrong targets.
        """
        from nnunet_shape.descriptor_files.measure import geometry_from_properties
        from nnunet_shape.descriptor_files.read import check_case_matches_image

        files = self._load_case_files()
        if self.intensity_weight:
            self.check_zscore_normalisation("the descriptor files' intensities")
        folder = self.preprocessed_dataset_folder
        identifiers = sorted(infer_dataset_class(folder).get_identifiers(folder))
        missing = [key for key in identifiers if key not in files]
        if missing:
            raise UserError(
                f"{self.__class__.__name__}: {len(missing)} of {len(identifiers)} cases of dataset "
                f"{self.plans_manager.dataset_name} have no descriptor file in "
                f"{descriptor_folder(self.plans_manager.dataset_name)}: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}")
        backward = self.plans_manager.transpose_backward
        for key in identifiers:
            _, properties = load_preprocessed_image(folder, key)
            transposed = properties["shape_before_cropping"]
            raw_shape = tuple(int(transposed[axis]) for axis in backward)
            _, geometry = geometry_from_properties(properties, (1, *raw_shape))
            check_case_matches_image(files[key], f"of case {key} (as nnU-Net preprocessed it, {folder})",
                                     geometry.shape, geometry.spacing_mm, geometry.origin_mm, geometry.direction)

    def check_zscore_normalisation(self, what: str) -> None:
        """UserError unless every image channel is normalised with ZScoreNormalization without mask.

        Intensities in nnU-Net's z-score units (files converted with their ``image_intensity``,
        population-prior differences in standard deviations) are ``(I - m) / s`` of each case's own
        image only under that scheme; ``what`` names the source in the message, which names the
        channel, the scheme and the plans."""
        manager = self.configuration_manager
        names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        for channel, scheme in enumerate(manager.normalization_schemes):
            masked = bool(manager.use_mask_for_norm[channel])
            if scheme != "ZScoreNormalization" or masked:
                how = scheme + (" with use_mask_for_norm" if masked else "")
                raise UserError(
                    f"{self.__class__.__name__}: {what} are in nnU-Net's z-score units, but image channel {channel} "
                    f"({names.get(str(channel), '?')}) of configuration {self.configuration_name} is normalised "
                    f"with {how} ({self.plans_manager.plans_name}); only ZScoreNormalization without mask "
                    f"(use_mask_for_norm false) maps each case's raw intensities by (I - mean) / std. Set that "
                    f"scheme for the channel in the plans and preprocess again, or train without intensity")

    def _intensity_targets_for_case(self, key: str, channels: int) -> Targets:
        """``{"mean": (K, C), "std": (K, C)}`` bound pairs of ``key`` in z-score units, from its file's raw
        class intensities and ``image_intensity`` (cached; intensities need no spatial map)."""
        if key not in self._intensity_targets:
            self.check_zscore_normalisation("the descriptor files' intensities")
            case = self._load_case_files()[key]
            labels = [0, *self.label_manager.foreground_labels]
            self._intensity_targets[key] = case_intensity_targets_zscore(case, labels, channels)
        return self._intensity_targets[key]

    def _intensity_bounds(self, batch: dict, image: torch.Tensor) -> IntensityBounds:
        """From the descriptor files, converted to nnU-Net's normalised units (no label is read);
        exact values get the intensity margins, ranges stay."""
        channels = image.shape[1]
        per_case = [self._intensity_targets_for_case(key, channels) for key in batch["keys"]]
        targets = {}
        for stat in self.intensity_statistics:
            lower = np.stack([t[stat][0] for t in per_case])
            upper = np.stack([t[stat][1] for t in per_case])
            targets[stat] = (torch.from_numpy(lower).to(image.device, torch.float32),
                             torch.from_numpy(upper).to(image.device, torch.float32))
        return intensity_bounds_from_targets(targets, None, self.intensity_relative_margin,
                                             self.intensity_absolute_margin)

    def _targets_for_case(self, key: str) -> tuple[Targets, tuple[float, ...], tuple[int, ...]]:
        """Targets of ``key`` in its preprocessed frame, its spacing and shape (cached)."""
        if key not in self._file_targets:
            files = self._load_case_files()
            if key not in files:
                raise KeyError(f"{self.__class__.__name__}: case {key} of dataset {self.plans_manager.dataset_name} "
                               f"has no descriptor file in {descriptor_folder(self.plans_manager.dataset_name)}")
            case = files[key]
            data, properties = load_preprocessed_image(self.preprocessed_dataset_folder, key)
            shape = tuple(int(s) for s in data.shape[1:])
            labels = [0, *self.label_manager.foreground_labels]
            raw_targets = case_targets_array_frame(case, labels, len(shape))
            targets, spacing = raw_to_preprocessed_targets(
                raw_targets, properties["spacing"], self.plans_manager.transpose_forward,
                properties["bbox_used_for_cropping"], properties["shape_after_cropping_and_before_resampling"], shape)
            self._file_targets[key] = (targets, checked_case_spacing(key, spacing), shape)
        return self._file_targets[key]

    def _batch_bounds(self, batch: dict) -> DescriptorBounds:
        lowers: dict[str, list] = {}
        uppers: dict[str, list] = {}
        patch_size = tuple(batch["data"].shape[2:])
        for key, records in zip(batch["keys"], batch["augmentation"]):
            targets, spacing, shape = self._targets_for_case(key)
            index_map = sample_index_map(shape, batch["loader_patch_size"], patch_size, records)
            moved = transform_targets(targets, index_map, spacing, spacing)
            lower, upper = widen_exact_values(moved, self.relative_margin, self.absolute_margin)
            for name in moved:
                lowers.setdefault(name, []).append(lower[name])
                uppers.setdefault(name, []).append(upper[name])

        def stack(values):
            return torch.from_numpy(np.stack(values)).to(self.device, torch.float32)

        return DescriptorBounds(lower={n: stack(v) for n, v in lowers.items()},
                                upper={n: stack(v) for n, v in uppers.items()})

    def _loss_targets(self, batch: dict) -> tuple[DescriptorBounds, torch.Tensor]:
        """Bounds from the descriptor files, moved into the patch like the image was, and the
        (B, D) preprocessed spacing of the cases they were moved with (the loader's segmentation
        is all background by construction and is never read)."""
        spacing = [self._targets_for_case(key)[1] for key in batch["keys"]]
        return self._batch_bounds(batch), torch.tensor(spacing, dtype=torch.float32, device=self.device)

    def _predict_validation_cases(self, folder: str, save_probabilities: bool = False
                                  ) -> Iterator[tuple[str, torch.Tensor]]:
        """Predict every validation case with nnU-Net's predictor, export it into ``folder`` in
        the raw geometry, and yield ``(case id, logits (K, *patch))``. Loads images only: the
        label-free dataset never opens a segmentation."""
        from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p
        from nnunetv2.inference.export_prediction import export_prediction_from_logits
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.network.eval()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=True, device=self.device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        maybe_mkdir_p(folder)
        _, val_keys = self.do_split()
        dataset = LabelFreeDataset(self.dataset_class(self.preprocessed_dataset_folder, val_keys))
        for key in val_keys:
            data, _, _, properties = dataset.load_case(key)
            logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data[:])))
            export_prediction_from_logits(logits.cpu(), properties, self.configuration_manager, self.plans_manager,
                                          self.dataset_json, join(folder, key), save_probabilities)
            yield key, logits

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Predict the validation cases and compare their descriptors with the descriptor files.

        nnU-Net's own final validation computes Dice against ``gt_segmentations``; a label-free
        dataset has none (or placeholders), so the agreement with the files is reported instead:
        ``validation/descriptor_agreement.json`` (relative volume error, centroid distance in mm
        per class and case).
        """
        from nnunet_shape.descriptor_files.atomic import write_json_atomic
        from nnunet_shape.descriptor_files.export import export_files

        self.set_deep_supervision_enabled(False)
        folder = join(self.output_folder, "validation")
        predicted = {}
        for key, _ in self._predict_validation_cases(folder, save_probabilities):
            predicted[key] = join(folder, key + self.dataset_json["file_ending"])
        export_files(predicted, join(folder, "descriptors"), self.dataset_json, num_processes=1)
        agreement = descriptor_agreement(self._load_case_files(), join(folder, "descriptors"), self.dataset_json)
        write_json_atomic(join(folder, "descriptor_agreement.json"), agreement)
        for name, row in agreement["mean"].items():
            self.print_to_log_file(f"validation {name}: relative volume error {row['relative_volume_error']}, "
                                   f"centroid distance {row['centroid_distance_mm']} mm")
        self.set_deep_supervision_enabled(True)

    def _pseudo_dice_counts(self, output: torch.Tensor, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # no labels: there is no Dice to report during training
        n = len(self.label_manager.foreground_labels)
        return np.zeros(n), np.zeros(n), np.zeros(n)


# training-length variants, nnU-Net style (schedules: nnunet_shape.nnunet.training.variants)
class nnUNetTrainerShapeDescriptorsFromFile_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsFromFile): ...
class nnUNetTrainerShapeDescriptorsFromFile_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsFromFile): ...
class nnUNetTrainerShapeDescriptorsFromFile_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsFromFile): ...
class nnUNetTrainerShapeDescriptorsFromFile_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsFromFile): ...
class nnUNetTrainerShapeDescriptorsFromFile_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsFromFile): ...
class nnUNetTrainerShapeDescriptorsFromFile_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsFromFile): ...


#: every trainer class defined in this module (what the trainers/ re-export module exposes)
TRAINER_NAMES: tuple[str, ...] = trainer_names(globals())
__all__ = list(TRAINER_NAMES)
