"""``nnunet-shape predict``: nnU-Net prediction whose label map is made, and postprocessed, on the device.

nnU-Net's ``nnUNetv2_predict`` copies the full logits (K x volume, float16) to the host per fold,
resamples the *logits* to the original spacing in an export worker, takes the argmax there and
writes the segmentation; ``nnUNetv2_apply_postprocessing`` then reads every file back and keeps the
largest connected component(s) with skimage. Here, per case:

1. logits from nnU-Net's own sliding window (:meth:`nnUNetPredictor.predict_sliding_window_return_logits`),
   summed over folds *on the device* (nnU-Net moves each fold's logits to the host);
2. the label map on the device (:func:`labels_from_logits`): ``argmax`` over the classes, or, for
   region-based models, ``sigmoid > 0.5`` painted in ``regions_class_order`` — nnU-Net's
   ``LabelManager.convert_logits_to_segmentation`` conventions, without the softmax;
3. the functions of a ``postprocessing.pkl`` on the device
   (:func:`nnunet_shape.core.connected_components.postprocess_logits_argmax`, our largest-component
   implementation in place of nnU-Net's);
4. one ``.cpu()`` of the label map (uint8, or int16 beyond 255 labels) — the only host transfer of
   a volume;
5. export in the original geometry (:func:`label_map_to_original_geometry`): the *segmentation* is
   resampled with the configuration's ``resampling_fn_seg`` to the shape after cropping, inserted
   into ``bbox_used_for_cropping``, transposed with ``transpose_backward`` and written with the
   plans' image reader/writer (``rw.write_seg``) — nnU-Net's
   ``convert_predicted_logits_to_segmentation_with_correct_shape`` + ``export_prediction_from_logits``,
   on a label map.

Equality with nnU-Net. When the configuration's spacing equals the case's spacing (no
resampling; e.g. every ``3d_fullres`` whose cases share one spacing), every step above is the
one nnU-Net performs, on the same float16 logits: the output equals ``nnUNetv2_predict``
voxel for voxel, and with ``--postprocessing`` it equals ``nnUNetv2_predict`` followed by
``nnUNetv2_apply_postprocessing`` with the same pkl (connectivity does not depend on the axis
order or on the cropped-away background, so postprocessing the transposed, cropped map is the
same).

The differences when the case must be resampled (preprocessed spacing != original spacing):

- nnU-Net resamples the logits (``resampling_fn_probabilities``: order 1 in nnU-Net 2.8's default
  plans, separate z for anisotropic data) and takes the argmax on the original grid; here the argmax is taken on
  the preprocessed grid and the label map is resampled (``resampling_fn_seg``: one-hot, order 1,
  winner takes all). Both agree away from class boundaries; only boundary voxels may differ
  (0.8-1.9 % of the voxels inside the crop on smooth random logits, all of them on boundaries;
  tests/test_predict.py asserts <= 3 %);
- postprocessing runs on the preprocessed grid, *before* resampling, whereas nnU-Net runs it on
  the exported original-spacing volume. A component removed here is absent from the export.
  The kept component may still differ when (a) resampling splits a thin structure into pieces or
  merges two components touching diagonally — nnU-Net then removes or keeps fragments that do not
  exist on the preprocessed grid — or (b) two components have nearly equal size and the ranking
  flips after resampling. Results are identical whenever no resampling is needed.

Only ``predict_from_files`` / ``predict_from_data_iterator`` / ``predict_from_list_of_npy_arrays``
/ ``predict_from_files_sequential`` take this path; ``save_probabilities`` is not supported (use
``nnUNetv2_predict`` for probabilities). Multiple folds are summed on the device, which costs one
extra logits-sized buffer on the device compared with nnU-Net. "On the device" means where
nnU-Net's sliding window leaves the logits: the GPU on CUDA (the host if it ran out of memory
there and fell back); nnU-Net keeps results on the host for every non-CUDA device (mps), and so
does this path. A ``postprocessing.pkl`` function other than the largest-component one runs on a
host copy (with a warning, see ``postprocess_logits_argmax``).
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from time import sleep

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from torch import Tensor

from nnunet_shape.core.connected_components import Backend, postprocess_logits_argmax
from nnunet_shape.errors import UserError, load_dataset_json, load_json_file, prepare_output_folder

_FROM_MODEL_FOLDER = object()  # ``--postprocessing`` given without a value
PP_BACKENDS: tuple[str, ...] = ("auto", "torch", "cc3d", "cucim")


# ----------------------------------------------------------------------------------------------
# functional core: logits -> label map on the device, label map -> original geometry on the host
# ----------------------------------------------------------------------------------------------

def label_dtype(max_label: int) -> torch.dtype:
    """The smallest torch dtype that holds labels ``0..max_label`` (uint8, int16 or int32)."""
    if max_label < 0:
        raise ValueError(f"labels must be >= 0, got max label {max_label}")
    if max_label <= 255:
        return torch.uint8
    if max_label <= 32767:  # torch has no full uint16 support: nnU-Net also uses int16 on tensors
        return torch.int16
    return torch.int32


def labels_from_logits(logits: Tensor, regions_class_order: Sequence[int] | None = None,
                       nonlinearity: Callable[[Tensor], Tensor] = torch.sigmoid) -> Tensor:
    """Label map of (K, X, Y[, Z]) logits, on the logits' device: (X, Y[, Z]) uint8/int16.

    Without regions: ``argmax`` over the K classes (the first maximum wins, as numpy's argmax in
    nnU-Net; no softmax needed, it does not change the argmax). With ``regions_class_order`` (one
    label per channel): ``nonlinearity(logits.float()) > 0.5`` painted channel by channel in that
    order, later channels overwriting earlier ones — nnU-Net's ``convert_probabilities_to_segmentation``.
    """
    if logits.ndim not in (3, 4):
        raise ValueError(f"logits must be (K, X, Y) or (K, X, Y, Z), "
                         f"got shape {tuple(logits.shape)}")
    if regions_class_order is None:
        return logits.argmax(0).to(label_dtype(logits.shape[0] - 1))
    if len(regions_class_order) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} region channels but "
                         f"regions_class_order has {len(regions_class_order)} entries")
    probabilities = nonlinearity(logits.float())  # nnU-Net: "softmax etc is not implemented for half"
    segmentation = torch.zeros(logits.shape[1:], dtype=label_dtype(max(regions_class_order, default=0)),
                               device=logits.device)
    for channel, label in enumerate(regions_class_order):
        segmentation[probabilities[channel] > 0.5] = label
    return segmentation


def label_map_to_original_geometry(segmentation: np.ndarray, plans_manager, configuration_manager,
                                   properties: dict, num_foreground_labels: int) -> np.ndarray:
    """A label map on the preprocessed grid -> the original image's array (nnU-Net's export, on labels).

    ``segmentation``: (X, Y, Z) label map in preprocessed (transposed, cropped, resampled) axes.
    Mirrors ``convert_predicted_logits_to_segmentation_with_correct_shape`` step for step:
    resample (``configuration_manager.resampling_fn_seg``, which returns the input unchanged when
    the shapes already match) to ``shape_after_cropping_and_before_resampling`` with nnU-Net's
    current/target spacing, insert into ``bbox_used_for_cropping`` of a zero volume of
    ``shape_before_cropping`` (uint8, or uint16 from 255 foreground labels on), transpose back.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    spacing_transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    target_shape = properties["shape_after_cropping_and_before_resampling"]
    # 2D configurations have 2 spacings; the first axis keeps the case's own spacing (as nnU-Net)
    current_spacing = (configuration_manager.spacing if len(configuration_manager.spacing) == len(target_shape)
                       else [spacing_transposed[0], *configuration_manager.spacing])
    resampled = configuration_manager.resampling_fn_seg(segmentation[None], target_shape, current_spacing,
                                                        spacing_transposed)[0]
    reverted = np.zeros(properties["shape_before_cropping"],
                        dtype=np.uint8 if num_foreground_labels < 255 else np.uint16)
    reverted = insert_crop_into_image(reverted, resampled, properties["bbox_used_for_cropping"])
    return reverted.transpose(plans_manager.transpose_backward)


def export_label_map(segmentation: np.ndarray, properties: dict, configuration_manager, plans_manager,
                     dataset_json: dict, output_file_truncated: str | None) -> np.ndarray | None:
    """Bring a preprocessed-grid label map to the original geometry and write it (``rw.write_seg``).

    The label-map counterpart of ``export_prediction_from_logits``; with ``output_file_truncated``
    None the array is returned instead of written (as ``convert_predicted_logits_to_segmentation_with_correct_shape``).
    Runs in export worker processes, hence module level and plain arguments.
    """
    label_manager = plans_manager.get_label_manager(dataset_json)
    original = label_map_to_original_geometry(segmentation, plans_manager, configuration_manager, properties,
                                              len(label_manager.foreground_labels))
    if output_file_truncated is None:
        return original
    rw = plans_manager.image_reader_writer_class()
    rw.write_seg(original, output_file_truncated + dataset_json["file_ending"], properties)
    return None


# ----------------------------------------------------------------------------------------------
# nnU-Net shell
# ----------------------------------------------------------------------------------------------

def _preprocess_sequentially(list_of_lists: list[list[str]], segs_from_prev_stage: list[str | None] | None,
                             output_files_truncated: list[str] | None, plans_manager, dataset_json: dict,
                             configuration_manager, verbose: bool) -> Iterator[dict]:
    """nnU-Net's ``preprocess_fromfiles_save_to_queue`` in this process (``-npp 0``)."""
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

    label_manager = plans_manager.get_label_manager(dataset_json)
    preprocessor = configuration_manager.preprocessor_class(verbose=verbose)
    for index, files in enumerate(list_of_lists):
        previous = segs_from_prev_stage[index] if segs_from_prev_stage is not None else None
        data, seg, properties = preprocessor.run_case(files, previous, plans_manager, configuration_manager,
                                                      dataset_json)
        if previous is not None:
            data = np.vstack((data, convert_labelmap_to_one_hot(seg[0], label_manager.foreground_labels, data.dtype)))
        yield {"data": torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format),
               "data_properties": properties,
               "ofile": output_files_truncated[index] if output_files_truncated is not None else None}


class ShapePredictor(nnUNetPredictor):
    """nnU-Net's predictor with the label map (and its postprocessing) made on the device.

    Same constructor as ``nnUNetPredictor`` plus ``postprocessing`` (``(pp_fns, pp_fn_kwargs)`` as
    loaded from a ``postprocessing.pkl``, or None), ``pp_backend`` and ``connectivity`` (None =
    nnU-Net's full connectivity). Initialise with ``initialize_from_trained_model_folder`` as usual.
    """

    def __init__(self, tile_step_size: float = 0.5, use_gaussian: bool = True, use_mirroring: bool = True,
                 perform_everything_on_device: bool = True, device: torch.device = torch.device("cuda"),
                 verbose: bool = False, verbose_preprocessing: bool = False, allow_tqdm: bool = True,
                 postprocessing: tuple[Sequence[Callable], Sequence[dict]] | None = None,
                 pp_backend: Backend = "auto", connectivity: int | None = None) -> None:
        super().__init__(tile_step_size, use_gaussian, use_mirroring, perform_everything_on_device, device,
                         verbose, verbose_preprocessing, allow_tqdm)
        if pp_backend not in PP_BACKENDS:
            raise ValueError(f"unknown pp_backend {pp_backend!r}; use one of {PP_BACKENDS}")
        if postprocessing is not None:
            pp_fns, pp_fn_kwargs = postprocessing
            if len(pp_fns) != len(pp_fn_kwargs):
                raise ValueError(f"postprocessing has {len(pp_fns)} functions but "
                                 f"{len(pp_fn_kwargs)} keyword dicts")
        self.postprocessing = postprocessing
        self.pp_backend = pp_backend
        self.connectivity = connectivity

    # -- per case, on the device -----------------------------------------------------------------

    @torch.inference_mode()
    def predict_logits_from_preprocessed_data(self, data: Tensor) -> Tensor:
        """nnU-Net's fold loop, but the (K, X, Y, Z) float16 logits stay where the sliding window left
        them (the device, unless it ran out of memory and fell back to the host)."""
        from nnunetv2.configuration import default_num_processes
        from torch._dynamo import OptimizedModule

        n_threads = torch.get_num_threads()
        torch.set_num_threads(default_num_processes if default_num_processes < n_threads else n_threads)
        try:
            prediction = None
            for parameters in self.list_of_parameters:
                network = self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network
                network.load_state_dict(parameters)
                logits = self.predict_sliding_window_return_logits(data)
                if prediction is None:
                    prediction = logits
                else:  # same float16 sums as nnU-Net's host loop
                    prediction += logits.to(prediction.device)
            if len(self.list_of_parameters) > 1:
                prediction /= len(self.list_of_parameters)
        finally:
            torch.set_num_threads(n_threads)
        return prediction

    @torch.inference_mode()
    def predict_label_map_from_preprocessed_data(self, data: Tensor) -> Tensor:
        """(C, X, Y, Z) preprocessed image -> (X, Y, Z) postprocessed label map, on the logits' device."""
        logits = self.predict_logits_from_preprocessed_data(data)
        label_manager = self.label_manager
        segmentation = labels_from_logits(
            logits, label_manager.regions_class_order if label_manager.has_regions else None,
            label_manager.inference_nonlin)
        del logits
        if self.postprocessing is not None:
            pp_fns, pp_fn_kwargs = self.postprocessing
            segmentation = postprocess_logits_argmax(segmentation, pp_fns, pp_fn_kwargs,
                                                     connectivity=self.connectivity, backend=self.pp_backend)
        return segmentation

    # -- the loops ---------------------------------------------------------------------------------

    def _internal_get_data_iterator_from_lists_of_filenames(self, input_list_of_lists, seg_from_prev_stage_files,
                                                            output_filenames_truncated, num_processes: int):
        if num_processes <= 0:  # -npp 0: preprocess in this process, no worker
            return _preprocess_sequentially(input_list_of_lists, seg_from_prev_stage_files,
                                            output_filenames_truncated, self.plans_manager, self.dataset_json,
                                            self.configuration_manager, self.verbose_preprocessing)
        return super()._internal_get_data_iterator_from_lists_of_filenames(
            input_list_of_lists, seg_from_prev_stage_files, output_filenames_truncated, num_processes)

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files,
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: str | None = None):
        """No worker processes: preprocessing and export in this process."""
        return self.predict_from_files(list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       save_probabilities, overwrite, num_processes_preprocessing=0,
                                       num_processes_segmentation_export=0,
                                       folder_with_segs_from_prev_stage=folder_with_segs_from_prev_stage)

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3) -> list:
        """Per case: label map on the device, one host copy of it, export (in ``nps`` spawn workers,
        or in this process when ``nps`` is 0). Returns, per case, None (written) or the label map
        in the original geometry (items without ``ofile``)."""
        from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian
        from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy
        from nnunetv2.utilities.helpers import empty_cache

        if save_probabilities:
            raise ValueError("ShapePredictor exports label maps only; "
                             "save_probabilities needs the logits on the host (use nnUNetv2_predict)")
        workers = num_processes_segmentation_export
        pool_context = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else nullcontext()
        results: list = []
        with pool_context as pool:
            worker_list = list(pool._pool) if workers > 0 else []
            for preprocessed in data_iterator:
                data = preprocessed["data"]
                if isinstance(data, str):  # nnU-Net's iterators may hand over a temporary .npy
                    path = data
                    data = torch.from_numpy(np.load(path))
                    os.remove(path)
                ofile, properties = preprocessed["ofile"], preprocessed["data_properties"]
                print(f"\nPredicting {os.path.basename(ofile) if ofile is not None else tuple(data.shape)}:")
                if workers > 0:  # do not let the device outrun the export workers
                    while check_workers_alive_and_busy(pool, worker_list, results, allowed_num_queued=2):
                        sleep(0.1)
                # the one host transfer of the volume: the (postprocessed) label map
                segmentation = self.predict_label_map_from_preprocessed_data(data).cpu().numpy()
                arguments = (segmentation, properties, self.configuration_manager, self.plans_manager,
                             self.dataset_json, ofile)
                if workers > 0:
                    results.append(pool.apply_async(export_label_map, arguments))
                else:
                    results.append(export_label_map(*arguments))
            if workers > 0:
                results = [self._collect(result, worker_list) for result in results]
        if isinstance(data_iterator, MultiThreadedAugmenter):
            data_iterator._finish()
        compute_gaussian.cache_clear()
        empty_cache(self.device)
        return results

    @staticmethod
    def _collect(result, worker_list: list):
        while True:
            if not all(worker.is_alive() for worker in worker_list):
                raise RuntimeError("a segmentation export worker died (likely killed "
                                   "by the OS for lack of RAM); use fewer export workers (-nps)")
            try:
                return result.get(timeout=0.1)
            except multiprocessing.TimeoutError:
                pass


# ----------------------------------------------------------------------------------------------
# postprocessing.pkl lookup and the command line
# ----------------------------------------------------------------------------------------------

def find_postprocessing_file(model_folder: str) -> str:
    """The ``postprocessing.pkl`` of a trained model folder (``<trainer>__<plans>__<configuration>``).

    nnU-Net's ``nnUNetv2_find_best_configuration`` writes it to
    ``<model folder>/crossval_results_folds_<folds>/postprocessing.pkl``; some workflows put it in
    the model folder itself. Exactly one candidate must exist; with none or several, the user must
    pass the path (the error lists what was found).
    """
    candidates = sorted(glob.glob(os.path.join(glob.escape(model_folder), "postprocessing.pkl"))
                        + glob.glob(os.path.join(glob.escape(model_folder), "crossval_results_folds_*",
                                                 "postprocessing.pkl")))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(
            f"no postprocessing.pkl in {model_folder} or its crossval_results_folds_*/ "
            f"folders (run nnUNetv2_find_best_configuration or nnunet-shape determine-postprocessing first), "
            f"or pass the file: --postprocessing PATH")
    listed = ", ".join(candidates)
    raise UserError(f"several postprocessing.pkl files for {model_folder}; "
                    f"pass one explicitly with --postprocessing PATH: {listed}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape predict",
        description="nnUNetv2_predict with the label map made on the device and, with --postprocessing, "
                    "nnU-Net's largest-component postprocessing applied there before the one host transfer.")
    parser.add_argument("-i", required=True, help="input folder (files named like nnU-Net's imagesTs: _0000 etc.)")
    parser.add_argument("-o", required=True, help="output folder (created if missing)")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class (default: nnUNetTrainer)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds to use (default: 0 1 2 3 4); 'all' for fold_all")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default: checkpoint_final.pth)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding window step size (default: 0.5)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device, e.g. cuda, cuda:1, cpu, mps (default: cuda if available)")
    parser.add_argument("-npp", type=int, default=3, help="preprocessing workers; 0: in this process (default: 3)")
    parser.add_argument("-nps", type=int, default=3, help="export workers; 0: in this process (default: 3)")
    parser.add_argument("--postprocessing", nargs="?", const=_FROM_MODEL_FOLDER, default=None, metavar="PKL",
                        help="apply this postprocessing.pkl on the device; without a value: the one of the "
                             "model folder (<model>/crossval_results_folds_*/postprocessing.pkl)")
    parser.add_argument("--pp-backend", choices=PP_BACKENDS, default="auto",
                        help="connected-components backend: auto (cucim/torch on CUDA, cc3d on CPU), torch, "
                             "cc3d, cucim (default: auto)")
    parser.add_argument("--continue_prediction", action="store_true", help="skip cases already in -o")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    from nnunet_shape.nnunet.postprocessing import load_postprocessing_pkl

    args = build_parser().parse_args(argv)
    # the user's folders first: a wrong -i or an -o that cannot be written fails before the model loads
    if not os.path.isdir(args.i):
        raise UserError(f"input folder -i {args.i} does not exist or is not a folder")
    prepare_output_folder(args.o, "output folder -o")
    folds = [fold if fold == "all" else int(fold) for fold in args.f]
    device = torch.device(args.device)
    model_folder = get_output_folder(args.d, args.tr, args.p, args.c)
    if os.path.isdir(model_folder):  # named errors for the model's files before nnU-Net reads them
        load_dataset_json(os.path.join(model_folder, "dataset.json"))
        load_json_file(os.path.join(model_folder, "plans.json"), "plans file")

    postprocessing, postprocessing_file = None, None
    if args.postprocessing is not None:
        postprocessing_file = (find_postprocessing_file(model_folder) if args.postprocessing is _FROM_MODEL_FOLDER
                               else args.postprocessing)
        if not os.path.isfile(postprocessing_file):
            raise FileNotFoundError(f"--postprocessing file not found: {postprocessing_file}")
        pp_fns, pp_fn_kwargs = load_postprocessing_pkl(postprocessing_file)
        postprocessing = (pp_fns, pp_fn_kwargs)
        print(f"postprocessing on {device} ({args.pp_backend}) with {postprocessing_file}: "
              f"{[getattr(f, '__name__', f) for f in pp_fns]} {pp_fn_kwargs}")

    # nnUNetv2_predict's thread policy (a CLI shell decision, not the library's)
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif device.type == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)

    predictor = ShapePredictor(tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
                               perform_everything_on_device=True, device=device, verbose=args.verbose,
                               verbose_preprocessing=args.verbose, allow_tqdm=not args.disable_progress_bar,
                               postprocessing=postprocessing, pp_backend=args.pp_backend)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk)
    ending = predictor.dataset_json["file_ending"]
    if not any(name.endswith(f"_0000{ending}") for name in os.listdir(args.i)):
        raise UserError(f"no '*_0000{ending}' images in {args.i} (the model's dataset.json file_ending is {ending!r})")
    record = {"model_folder": model_folder, "folds": folds, "checkpoint": args.chk, "device": str(device),
              "postprocessing_file": postprocessing_file, "pp_backend": args.pp_backend,
              "pp_fns": [getattr(f, "__name__", repr(f)) for f in postprocessing[0]] if postprocessing else [],
              "pp_fn_kwargs": list(postprocessing[1]) if postprocessing else []}
    recursive_fix_for_json_export(record)
    save_json(record, os.path.join(args.o, "nnunet_shape_predict.json"), sort_keys=False)
    predictor.predict_from_files(args.i, args.o, save_probabilities=False, overwrite=not args.continue_prediction,
                                 num_processes_preprocessing=args.npp, num_processes_segmentation_export=args.nps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
