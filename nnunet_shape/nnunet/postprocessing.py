"""``nnunet-shape determine-postprocessing`` and ``nnunet-shape apply-postprocessing``.

Drop-in counterparts of ``nnUNetv2_determine_postprocessing`` and ``nnUNetv2_apply_postprocessing``
(same arguments, plus ``-device`` and ``--backend``) that run the largest-component step on the
chosen device with :mod:`nnunet_shape.core.connected_components`:

- the decision is nnU-Net's: try "keep the largest foreground component" and keep it when the
  mean foreground Dice improves and no class gets worse; then, if there is more than one label
  or region, try "keep the largest component" per label/region in dataset.json order, keeping
  each one that improves that label's mean Dice (strict improvement everywhere). Dice per case
  and the means are computed with nnU-Net's formulas and numpy reductions, so ties and NaNs
  (empty in both prediction and reference) behave as there;
- the written ``postprocessing.pkl`` holds nnU-Net's own function and keyword dicts, exactly
  what ``nnUNetv2_determine_postprocessing`` would write: ``nnUNetv2_apply_postprocessing``
  applies it unchanged, and nnunet-shape need not be installed to do so;
- each case is read once per decision step (or only once, when the cases fit the in-memory
  cache) instead of nnU-Net's write-then-re-read of every intermediate folder; only the indices
  of removed voxels are kept per case between steps.
"""

from __future__ import annotations

import argparse
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nnunet_shape.core.connected_components import (
    Backend,
    postprocess_logits_argmax,
    region_or_label_mask,
    remove_all_but_largest_component_from_segmentation,
)

ArrayLike = np.ndarray | torch.Tensor
METRIC_NAMES: tuple[str, ...] = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _uses_host_arrays(device: torch.device, backend: str) -> bool:
    """CPU with the cc3d backend works on numpy arrays; anything else on tensors on ``device``."""
    return device.type == "cpu" and backend in ("auto", "cc3d")


def _load_plans_and_dataset(folder: str, plans_file_or_dict: str | dict | None,
                            dataset_json_file_or_dict: str | dict | None) -> tuple[dict, dict]:
    """nnU-Net's defaults: plans.json and dataset.json from ``folder`` when not given."""
    from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

    if plans_file_or_dict is None:
        expected = join(folder, "plans.json")
        if not isfile(expected):
            raise RuntimeError(f"expected plans file missing: {expected} "
                               f"(pass -plans_json)")
        plans_file_or_dict = expected
    if dataset_json_file_or_dict is None:
        expected = join(folder, "dataset.json")
        if not isfile(expected):
            raise RuntimeError(f"expected dataset.json missing: {expected} "
                               f"(pass -dataset_json)")
        dataset_json_file_or_dict = expected
    plans = plans_file_or_dict if isinstance(plans_file_or_dict, dict) else load_json(plans_file_or_dict)
    dataset_json = (dataset_json_file_or_dict if isinstance(dataset_json_file_or_dict, dict)
                    else load_json(dataset_json_file_or_dict))
    return plans, dataset_json


def _compact_labels(segmentation: np.ndarray) -> np.ndarray:
    """Readers return float32 label maps; store integral ones in the smallest integer type."""
    if segmentation.dtype.kind in "iub":
        return segmentation
    as_integer = segmentation.astype(np.int64)
    if not np.array_equal(as_integer, segmentation):
        return segmentation  # not a label map of integers: keep it as it is
    low, high = (int(as_integer.min()), int(as_integer.max())) if as_integer.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return as_integer.astype(dtype)
    return as_integer


def _prefetched(function: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map(function, items)`` in order, with up to ``2 * workers`` items loading ahead in threads
    (readers decompress outside the GIL)."""
    if workers <= 0:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            for item in iterator:
                pending.append(pool.submit(function, item))
                break
            yield result


# ----------------------------------------------------------------------------------------------
# metrics: nnU-Net's formulas on counts computed on the device
# ----------------------------------------------------------------------------------------------

def confusion_counts(prediction: ArrayLike, reference: ArrayLike, labels_or_regions: Sequence,
                     ignore_label: int | None) -> np.ndarray:
    """(R, 4) int64 counts ``tp, fp, fn, tn`` per label/region, as nnU-Net's ``compute_tp_fp_fn_tn``.

    Works on numpy arrays or on tensors (one host transfer of the R x 3 counts per call).
    """
    is_tensor = isinstance(prediction, torch.Tensor)
    use = None if ignore_label is None else (reference != ignore_label)
    n_used = (use.sum() if use is not None else prediction.numel() if is_tensor else prediction.size)
    sums = []
    for label_or_region in labels_or_regions:
        predicted = region_or_label_mask(prediction, label_or_region)
        referenced = region_or_label_mask(reference, label_or_region)
        if use is not None:
            predicted = predicted & use
            referenced = referenced & use
        sums += [(predicted & referenced).sum(), predicted.sum(), referenced.sum()]
    if is_tensor:
        values = torch.stack([torch.as_tensor(v, device=prediction.device) for v in sums + [n_used]]).cpu().numpy()
    else:
        values = np.array([int(v) for v in sums + [n_used]], dtype=np.int64)
    values = values.astype(np.int64)
    tp, n_pred, n_ref = values[:-1:3], values[1:-1:3], values[2:-1:3]
    fp, fn = n_pred - tp, n_ref - tp
    tn = values[-1] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1)


def case_metrics(counts: np.ndarray, labels_or_regions: Sequence) -> dict:
    """nnU-Net's per-case metric dict (``compute_metrics``) from (R, 4) counts."""
    metrics = {}
    for row, label_or_region in zip(counts, labels_or_regions):
        tp, fp, fn, tn = (np.int64(v) for v in row)
        entry: dict[str, Any] = {}
        if tp + fp + fn == 0:
            entry["Dice"] = np.nan
            entry["IoU"] = np.nan
        else:
            entry["Dice"] = 2 * tp / (2 * tp + fp + fn)
            entry["IoU"] = tp / (tp + fp + fn)
        entry.update({"FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp})
        metrics[label_or_region] = entry
    return metrics


def summarize(per_case_metrics: Sequence[dict], labels_or_regions: Sequence) -> dict:
    """``{'mean': {r: {metric: value}}, 'foreground_mean': {metric: value}}`` with nnU-Net's
    reductions (nanmean over cases, then mean over labels/regions other than 0)."""
    means: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN class is NaN, as there
        for label_or_region in labels_or_regions:
            means[label_or_region] = {m: np.nanmean([case[label_or_region][m] for case in per_case_metrics])
                                      for m in METRIC_NAMES}
        foreground_mean = {m: np.mean([means[k][m] for k in means if not (k == 0 or k == "0")])
                           for m in METRIC_NAMES}
    return {"mean": means, "foreground_mean": foreground_mean}


def _improves_everything(candidate: dict, baseline: dict) -> bool:
    """nnU-Net's all-foreground rule: better foreground mean Dice, no label/region worse."""
    if not candidate["foreground_mean"]["Dice"] > baseline["foreground_mean"]["Dice"]:
        return False
    return not any(candidate["mean"][k]["Dice"] < baseline["mean"][k]["Dice"] for k in candidate["mean"])


# ----------------------------------------------------------------------------------------------
# determine
# ----------------------------------------------------------------------------------------------

@dataclass
class _CaseState:
    """Per case: flat indices of voxels the accepted steps set to background, and the metrics
    of the prediction after those steps."""
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    metrics: dict | None = None


class _CaseReader:
    """Reads (prediction, reference, properties) per case; keeps them in memory up to a budget."""

    def __init__(self, folder_predictions: str, folder_ref: str, reader_writer: Any, max_cached_bytes: int):
        self.folder_predictions = folder_predictions
        self.folder_ref = folder_ref
        self.reader_writer = reader_writer
        self.remaining_bytes = max_cached_bytes
        self.cache: dict[str, tuple[np.ndarray, np.ndarray, dict]] = {}
        self.lock = threading.Lock()  # reader threads share the budget

    def __call__(self, name: str) -> tuple[str, np.ndarray, np.ndarray, dict]:
        if name in self.cache:
            return (name, *self.cache[name])
        prediction, properties = self.reader_writer.read_seg(os.path.join(self.folder_predictions, name))
        reference, _ = self.reader_writer.read_seg(os.path.join(self.folder_ref, name))
        prediction, reference = _compact_labels(prediction[0]), _compact_labels(reference[0])
        size = prediction.nbytes + reference.nbytes
        with self.lock:
            if size <= self.remaining_bytes:
                self.remaining_bytes -= size
                self.cache[name] = (prediction, reference, properties)
        return name, prediction, reference, properties


def _to_working(array: np.ndarray, device: torch.device, host: bool) -> ArrayLike:
    return array if host else torch.from_numpy(array).to(device)


def _with_removed(prediction: ArrayLike, removed: np.ndarray) -> ArrayLike:
    """The prediction after the accepted steps: ``removed`` voxels set to background (0)."""
    if removed.size == 0:
        return prediction
    if isinstance(prediction, torch.Tensor):
        result = prediction.clone()
        result.view(-1)[torch.from_numpy(removed).to(prediction.device)] = 0
        return result
    result = np.copy(prediction)
    result.reshape(-1)[removed] = 0
    return result


def _changed_indices(before: ArrayLike, after: ArrayLike) -> np.ndarray:
    if isinstance(before, torch.Tensor):
        return torch.nonzero(before.reshape(-1) != after.reshape(-1)).view(-1).cpu().numpy().astype(np.int64)
    return np.flatnonzero(before.reshape(-1) != after.reshape(-1)).astype(np.int64)


def determine_postprocessing_on_device(folder_predictions: str, folder_ref: str,
                                       plans_file_or_dict: str | dict | None = None,
                                       dataset_json_file_or_dict: str | dict | None = None,
                                       device: str | torch.device = "cpu", backend: Backend = "auto",
                                       keep_postprocessed_files: bool = True, num_io_threads: int = 2,
                                       max_cached_bytes: int = 2 * 1024 ** 3, verbose: bool = True
                                       ) -> tuple[list[Callable], list[dict]]:
    """nnU-Net's ``determine_postprocessing`` decision, with the largest-component step on ``device``.

    Writes ``postprocessing.pkl`` (nnU-Net's function + kwargs, loadable by
    ``nnUNetv2_apply_postprocessing``) and ``postprocessing.json`` into ``folder_predictions``;
    with ``keep_postprocessed_files`` also the postprocessed cases and their ``summary.json`` in
    ``folder_predictions/postprocessed``. Returns ``(pp_fns, pp_fn_kwargs)`` as nnU-Net does.
    Does not read or write ``folder_predictions/summary.json`` (nnU-Net reuses a stale one).
    """
    from batchgenerators.utilities.file_and_folder_operations import (
        join,
        maybe_mkdir_p,
        save_json,
        save_pickle,
        subfiles,
    )
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key, save_summary_json
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as nnunet_lcc,
    )
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = torch.device(device)
    host = _uses_host_arrays(device, backend)
    plans, dataset_json = _load_plans_and_dataset(folder_predictions, plans_file_or_dict, dataset_json_file_or_dict)
    plans_manager = PlansManager(plans)
    reader_writer = plans_manager.image_reader_writer_class()
    label_manager = plans_manager.get_label_manager(dataset_json)
    labels_or_regions = (label_manager.foreground_regions if label_manager.has_regions
                         else label_manager.foreground_labels)
    ignore_label = label_manager.ignore_label
    file_ending = dataset_json["file_ending"]

    names = subfiles(folder_predictions, suffix=file_ending, join=False)
    if not names:
        raise FileNotFoundError(f"no '*{file_ending}' predictions in "
                                f"{folder_predictions}")
    reference_names = subfiles(folder_ref, suffix=file_ending, join=False)
    if not all(name in names for name in reference_names):
        print("WARNING: Not all files in folder_ref were found in folder_predictions. Determining postprocessing "
              "should always be done on the entire dataset!")
    read_case = _CaseReader(folder_predictions, folder_ref, reader_writer, max_cached_bytes)
    states = {name: _CaseState() for name in names}

    def try_step(kwargs: dict) -> tuple[dict, dict, dict[str, np.ndarray], dict[str, dict]]:
        """One pass over all cases: (baseline summary, candidate summary, per-case new removals
        and candidate metrics). The baseline is the prediction after the accepted steps."""
        new_removed: dict[str, np.ndarray] = {}
        candidate_metrics: dict[str, dict] = {}
        for name, prediction, reference, _ in _prefetched(read_case, names, num_io_threads):
            state = states[name]
            prediction_here = _to_working(prediction, device, host)
            reference_here = _to_working(reference, device, host)
            source = _with_removed(prediction_here, state.removed)
            if state.metrics is None:
                state.metrics = case_metrics(confusion_counts(source, reference_here, labels_or_regions,
                                                              ignore_label), labels_or_regions)
            candidate = remove_all_but_largest_component_from_segmentation(source, **kwargs, backend=backend)
            new_removed[name] = _changed_indices(source, candidate)
            candidate_metrics[name] = case_metrics(confusion_counts(candidate, reference_here, labels_or_regions,
                                                                    ignore_label), labels_or_regions)
        baseline = summarize([states[n].metrics for n in names], labels_or_regions)
        candidate_summary = summarize([candidate_metrics[n] for n in names], labels_or_regions)
        return baseline, candidate_summary, new_removed, candidate_metrics

    def accept(new_removed: dict[str, np.ndarray], candidate_metrics: dict[str, dict]) -> None:
        for name in names:
            states[name].removed = np.concatenate([states[name].removed, new_removed[name]])
            states[name].metrics = candidate_metrics[name]

    pp_fns: list[Callable] = []
    pp_fn_kwargs: list[dict] = []

    kwargs = {"labels_or_regions": label_manager.foreground_labels}
    baseline, candidate, new_removed, candidate_metrics = try_step(kwargs)
    input_folder_summary = baseline
    if _improves_everything(candidate, baseline):
        if verbose:
            print(f"Results were improved by removing all but the largest foreground region. "
                  f"Mean dice before: {round(baseline['foreground_mean']['Dice'], 5)} "
                  f"after: {round(candidate['foreground_mean']['Dice'], 5)}")
        accept(new_removed, candidate_metrics)
        pp_fns.append(nnunet_lcc)
        pp_fn_kwargs.append(kwargs)
    elif verbose:
        print("Removing all but the largest foreground region did not improve results!")

    if len(labels_or_regions) > 1:
        for label_or_region in labels_or_regions:
            kwargs = {"labels_or_regions": label_or_region}
            baseline, candidate, new_removed, candidate_metrics = try_step(kwargs)
            before = baseline["mean"][label_or_region]["Dice"]
            after = candidate["mean"][label_or_region]["Dice"]
            if after > before:
                if verbose:
                    print(f"Results were improved by removing all but the largest component for {label_or_region}. "
                          f"Dice before: {round(before, 5)} after: {round(after, 5)}")
                accept(new_removed, candidate_metrics)
                pp_fns.append(nnunet_lcc)
                pp_fn_kwargs.append(kwargs)
            elif verbose:
                print(f"Removing all but the largest component for {label_or_region} did not improve results! "
                      f"Dice before: {round(before, 5)} after: {round(after, 5)}")

    final_summary = summarize([states[n].metrics for n in names], labels_or_regions)
    save_pickle((pp_fns, pp_fn_kwargs), join(folder_predictions, "postprocessing.pkl"))
    report = {
        "input_folder": {k: input_folder_summary[k] for k in ("foreground_mean", "mean")},
        "postprocessed": {k: final_summary[k] for k in ("foreground_mean", "mean")},
        "postprocessing_fns": [f.__name__ for f in pp_fns],
        "postprocessing_kwargs": pp_fn_kwargs,
        "device": str(device),
        "backend": backend,
    }
    for key in ("input_folder", "postprocessed"):
        report[key]["mean"] = {label_or_region_to_key(k): v for k, v in report[key]["mean"].items()}
    recursive_fix_for_json_export(report)
    save_json(report, join(folder_predictions, "postprocessing.json"))

    if keep_postprocessed_files:
        output_folder = join(folder_predictions, "postprocessed")
        maybe_mkdir_p(output_folder)
        per_case = []
        for name, prediction, _, properties in _prefetched(read_case, names, num_io_threads):
            reader_writer.write_seg(_with_removed(prediction, states[name].removed), join(output_folder, name),
                                    properties)
            per_case.append({"reference_file": join(folder_ref, name), "prediction_file": join(output_folder, name),
                             "metrics": states[name].metrics})
        summary = {"metric_per_case": per_case, **final_summary}
        for part in (per_case, summary["mean"], summary["foreground_mean"]):
            for item in (part if isinstance(part, list) else [part]):
                recursive_fix_for_json_export(item)
        save_summary_json(summary, join(output_folder, "summary.json"))
    return pp_fns, pp_fn_kwargs


# ----------------------------------------------------------------------------------------------
# apply
# ----------------------------------------------------------------------------------------------

def apply_postprocessing_to_folder_on_device(input_folder: str, output_folder: str,
                                             pp_fns: Sequence[Callable], pp_fn_kwargs: Sequence[dict],
                                             plans_file_or_dict: str | dict | None = None,
                                             dataset_json_file_or_dict: str | dict | None = None,
                                             device: str | torch.device = "cpu", backend: Backend = "auto",
                                             num_io_threads: int = 2) -> list[str]:
    """``nnUNetv2_apply_postprocessing`` with the functions run on ``device``; returns written files.

    Each case: read on the host, one copy to ``device``, every step there
    (:func:`postprocess_logits_argmax`), one copy back, written with the plans' reader/writer.
    """
    from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, subfiles
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = torch.device(device)
    plans, dataset_json = _load_plans_and_dataset(input_folder, plans_file_or_dict, dataset_json_file_or_dict)
    reader_writer = PlansManager(plans).image_reader_writer_class()
    names = subfiles(input_folder, suffix=dataset_json["file_ending"], join=False)
    maybe_mkdir_p(output_folder)

    def read(name: str) -> tuple[str, np.ndarray, dict]:
        segmentation, properties = reader_writer.read_seg(join(input_folder, name))
        return name, _compact_labels(segmentation[0]), properties

    written = []
    with ThreadPoolExecutor(max(1, num_io_threads)) as writers:
        pending = []
        for name, segmentation, properties in _prefetched(read, names, num_io_threads):
            tensor = torch.from_numpy(segmentation).to(device)
            result = postprocess_logits_argmax(tensor, pp_fns, pp_fn_kwargs, backend=backend).cpu().numpy()
            pending.append(writers.submit(reader_writer.write_seg, result, join(output_folder, name), properties))
            written.append(join(output_folder, name))
        for future in pending:
            future.result()  # re-raise write errors
    return written


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-device", "--device", default=default_device(),
                        help="torch device for the largest-component step: cuda, cuda:1, cpu "
                             "(default: cuda when available)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "cc3d", "cucim"],
                        help="labelling backend; auto = cucim or torch on CUDA, cc3d on CPU")
    parser.add_argument("-np", type=int, default=2, help="reader/writer threads (default 2)")


def determine_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape determine-postprocessing",
        description="nnUNetv2_determine_postprocessing on the GPU: writes postprocessing.pkl and "
                    "postprocessing.json into the input folder (the pkl is nnU-Net's format).")
    parser.add_argument("-i", required=True, help="folder with cross-validation predictions")
    parser.add_argument("-ref", required=True, help="folder with reference segmentations")
    parser.add_argument("-plans_json", default=None, help="default: input_folder/plans.json")
    parser.add_argument("-dataset_json", default=None, help="default: input_folder/dataset.json")
    parser.add_argument("--remove_postprocessed", action="store_true",
                        help="do not write the postprocessed cases to input_folder/postprocessed")
    _add_device_arguments(parser)
    args = parser.parse_args(list(argv))
    determine_postprocessing_on_device(args.i, args.ref, args.plans_json, args.dataset_json, args.device,
                                       args.backend, not args.remove_postprocessed, args.np)
    return 0


def apply_main(argv: Sequence[str]) -> int:
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    parser = argparse.ArgumentParser(
        prog="nnunet-shape apply-postprocessing",
        description="nnUNetv2_apply_postprocessing on the GPU: applies a postprocessing.pkl to a folder.")
    parser.add_argument("-i", required=True, help="input folder")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-pp_pkl_file", required=True, help="postprocessing.pkl")
    parser.add_argument("-plans_json", default=None, help="default: input_folder/plans.json")
    parser.add_argument("-dataset_json", default=None, help="default: input_folder/dataset.json")
    _add_device_arguments(parser)
    args = parser.parse_args(list(argv))
    pp_fns, pp_fn_kwargs = load_pickle(args.pp_pkl_file)
    apply_postprocessing_to_folder_on_device(args.i, args.o, pp_fns, pp_fn_kwargs, args.plans_json,
                                             args.dataset_json, args.device, args.backend, args.np)
    return 0
