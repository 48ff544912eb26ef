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
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nnunet_shape.core.connected_components import (
    Backend,
    check_components,
    postprocess_logits_argmax,
    region_or_label_mask,
    remove_all_but_largest_component_from_segmentation,
)
from nnunet_shape.errors import (
    UserError,
    check_image_file_complete,
    load_dataset_json,
    load_json_file,
    one_line,
    prepare_output_folder,
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
    from batchgenerators.utilities.file_and_folder_operations import isfile, join

    def in_folder(name: str, what: str, option: str) -> str:
        expected = join(folder, name)
        if not isfile(expected):
            raise UserError(f"expected {what} missing: {expected} (pass {option})")
        return expected

    if plans_file_or_dict is None:
        plans_file_or_dict = in_folder("plans.json", "plans file", "-plans_json")
    if dataset_json_file_or_dict is None:
        dataset_json_file_or_dict = in_folder("dataset.json", "dataset.json", "-dataset_json")
    plans = (plans_file_or_dict if isinstance(plans_file_or_dict, dict)
             else load_json_file(plans_file_or_dict, "plans file"))
    dataset_json = (dataset_json_file_or_dict if isinstance(dataset_json_file_or_dict, dict)
                    else load_dataset_json(dataset_json_file_or_dict))
    return plans, dataset_json


def _open_predictions(folder: str, plans_file_or_dict: str | dict | None,
                      dataset_json_file_or_dict: str | dict | None) -> tuple[Any, dict, Any]:
    """``(plans_manager, dataset_json, reader_writer)`` of a prediction folder: nnU-Net's
    ``PlansManager`` of the plans (:func:`_load_plans_and_dataset`) and an instance of its reader/writer."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset_json = _load_plans_and_dataset(folder, plans_file_or_dict, dataset_json_file_or_dict)
    plans_manager = PlansManager(plans)
    return plans_manager, dataset_json, plans_manager.image_reader_writer_class()


def load_postprocessing_pkl(path: str | os.PathLike) -> tuple[list[Callable], list[dict]]:
    """``(pp_fns, pp_fn_kwargs)`` of a ``postprocessing.pkl``; UserError naming the file when it is
    not one (not a pickle, or not the pair of equally long lists nnU-Net writes)."""
    import pickle

    with open(path, "rb") as handle:
        try:
            content = pickle.load(handle)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as error:
            raise UserError(f"{path}: not a readable postprocessing.pkl ({type(error).__name__}: "
                            f"{one_line(error)})") from None
    if (not isinstance(content, (tuple, list)) or len(content) != 2
            or not all(isinstance(part, (tuple, list)) for part in content) or len(content[0]) != len(content[1])):
        raise UserError(f"{path}: not a postprocessing.pkl (expected (pp_fns, pp_fn_kwargs), two lists of "
                        f"equal length, as nnUNetv2_determine_postprocessing writes)")
    return list(content[0]), list(content[1])


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
# classes with several components; the record of each decision
# ----------------------------------------------------------------------------------------------

#: ``dataset.json`` key: class name -> number of connected components the class has (default 1)
COMPONENTS_KEY = "nnunet_shape_components"

#: the rules a per-label decision can follow (``postprocessing.json``'s ``decisions[*].rule``)
RULE_DICE = "dice"  # nnU-Net's: applied when the label's mean Dice against the references improves
RULE_DESCRIPTORS = "descriptor agreement"  # label-free: applied when agreement with the descriptor files improves
RULE_STATED = "stated components"  # label-free: the class's component count is stated, the step is applied
RULE_NO_DESCRIPTORS = "no descriptors"  # label-free: no file constrains the class, nothing is applied


def _label_key(label_or_region: Any) -> int | tuple[int, ...]:
    """A label as an int, a region as a tuple of ints (hashable, comparable with nnU-Net's)."""
    if isinstance(label_or_region, (list, tuple)):
        return tuple(int(v) for v in label_or_region)
    return int(label_or_region)


def _class_names(dataset_json: Mapping[str, Any]) -> dict[int | tuple[int, ...], str]:
    """label (or region tuple) -> class name, from ``dataset.json["labels"]``."""
    return {_label_key(value): str(name) for name, value in dataset_json["labels"].items()
            if name not in ("background", "ignore")}


def components_from_dataset_json(dataset_json: Mapping[str, Any]) -> dict[int | tuple[int, ...], int]:
    """label (or region tuple) -> component count from ``dataset.json["nnunet_shape_components"]``
    (``{"tibial_cartilage": 2}``); classes not listed have 1. UserError naming the class and the
    value for an unknown class name or a count that is not an integer >= 1."""
    stated = dataset_json.get(COMPONENTS_KEY)
    if stated is None:
        return {}
    if not isinstance(stated, Mapping):
        raise UserError(f"dataset.json {COMPONENTS_KEY!r} must map class names to component counts, "
                        f"got {stated!r}")
    by_name = {name: key for key, name in _class_names(dataset_json).items()}
    counts = {}
    for name, value in stated.items():
        if name not in by_name:
            raise UserError(f"dataset.json {COMPONENTS_KEY!r}: class {name!r} is not a foreground class of "
                            f"dataset.json labels {sorted(by_name)}")
        try:
            counts[by_name[name]] = check_components(value)
        except ValueError:
            raise UserError(f"dataset.json {COMPONENTS_KEY!r}: class {name!r}: components must be an integer "
                            f">= 1, got {value!r}") from None
    return counts


def _largest_component_step(label_or_region: Any, components: int = 1) -> tuple[Callable, dict]:
    """One postprocessing step: nnU-Net's function for 1 component (a pkl nnU-Net applies as it is),
    this package's for N > 1 (nnU-Net's function has no ``components``)."""
    if components == 1:
        from nnunetv2.postprocessing.remove_connected_components import (
            remove_all_but_largest_component_from_segmentation as nnunet_lcc,
        )

        return nnunet_lcc, {"labels_or_regions": label_or_region}
    return (remove_all_but_largest_component_from_segmentation,
            {"labels_or_regions": label_or_region, "components": int(components)})


def _step_text(components: int) -> str:
    return "keep the largest component" if components == 1 else f"keep the {components} largest components"


def _decision(label: Any, name: str, components: int, rule: str, applied: bool, before: float | None,
              after: float | None, criterion: str, detail: str = "") -> dict:
    """One entry of ``postprocessing.json``'s ``decisions``."""
    def number(value: float | None) -> float | None:
        return None if value is None or not np.isfinite(value) else float(value)

    return {"label": list(label) if isinstance(label, tuple) else label, "class": name,
            "step": _step_text(components), "components": int(components), "rule": rule, "applied": bool(applied),
            "criterion": criterion, "before": number(before), "after": number(after), "detail": detail}


def decision_lines(decisions: Sequence[Mapping[str, Any]]) -> list[str]:
    """One log line per decision: which step, applied or not, by which rule and numbers."""
    lines = []
    for entry in decisions:
        numbers = ""
        if entry.get("before") is not None and entry.get("after") is not None:
            numbers = f"; {entry['criterion']} {entry['before']:.5g} -> {entry['after']:.5g}"
        detail = f"; {entry['detail']}" if entry.get("detail") else ""
        label = "all foreground" if entry["label"] == "foreground" else f"label {entry['label']}"
        lines.append(f"postprocessing {label} ({entry['class']}): {entry['step']}: "
                     f"{'APPLIED' if entry['applied'] else 'not applied'} (rule: {entry['rule']}{numbers}{detail})")
    return lines


def largest_component_steps(labels_or_regions: Sequence,
                            components: Mapping[Any, int] | None = None) -> tuple[list[Callable], list[dict]]:
    """``(pp_fns, pp_fn_kwargs)`` that keep the largest component of every label or region in
    ``labels_or_regions`` (the ``components[label]`` largest where given), one step each, in the
    given order: the unconditional counterpart of :func:`determine_postprocessing_on_device`'s
    per-label steps (nnU-Net's function for one component, so that a pickle of it stays loadable
    by ``nnUNetv2_apply_postprocessing``)."""
    counts = {_label_key(k): check_components(v) for k, v in (components or {}).items()}
    pp_fns: list[Callable] = []
    pp_fn_kwargs: list[dict] = []
    for label_or_region in labels_or_regions:
        function, kwargs = _largest_component_step(label_or_region, counts.get(_label_key(label_or_region), 1))
        pp_fns.append(function)
        pp_fn_kwargs.append(kwargs)
    return pp_fns, pp_fn_kwargs


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
    """Reads (prediction, reference, properties) per case; keeps them in memory up to a budget.
    Without ``folder_ref`` (the label-free decision) the reference is None and nothing else is read."""

    def __init__(self, folder_predictions: str, folder_ref: str | None, reader_writer: Any, max_cached_bytes: int):
        self.folder_predictions = folder_predictions
        self.folder_ref = folder_ref
        self.reader_writer = reader_writer
        self.remaining_bytes = max_cached_bytes
        self.cache: dict[str, tuple[np.ndarray, np.ndarray | None, dict]] = {}
        self.lock = threading.Lock()  # reader threads share the budget

    def __call__(self, name: str) -> tuple[str, np.ndarray, np.ndarray | None, dict]:
        if name in self.cache:
            return (name, *self.cache[name])
        prediction, properties = self.reader_writer.read_seg(os.path.join(self.folder_predictions, name))
        prediction = _compact_labels(prediction[0])
        reference = None
        if self.folder_ref is not None:
            reference = _compact_labels(self.reader_writer.read_seg(os.path.join(self.folder_ref, name))[0][0])
        size = prediction.nbytes + (0 if reference is None else reference.nbytes)
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
                                       max_cached_bytes: int = 2 * 1024 ** 3, verbose: bool = True,
                                       components: Mapping[Any, int] | None = None,
                                       log: Callable[[str], None] = print) -> tuple[list[Callable], list[dict]]:
    """nnU-Net's ``determine_postprocessing`` decision, with the largest-component step on ``device``.

    Writes ``postprocessing.pkl`` (nnU-Net's function + kwargs, loadable by
    ``nnUNetv2_apply_postprocessing``) and ``postprocessing.json`` into ``folder_predictions``;
    with ``keep_postprocessed_files`` also the postprocessed cases and their ``summary.json`` in
    ``folder_predictions/postprocessed``. Returns ``(pp_fns, pp_fn_kwargs)`` as nnU-Net does.
    Does not read or write ``folder_predictions/summary.json`` (nnU-Net reuses a stale one).

    ``components``: label (or region tuple) -> number of largest components the per-label step
    keeps (default: ``dataset.json["nnunet_shape_components"]``, class name -> count, see
    :func:`components_from_dataset_json`; 1 for every other class, which is nnU-Net's decision
    exactly). A step keeping N > 1 components is still accepted only when it improves that
    label's Dice, and names this package's function in the pkl (nnU-Net's has no ``components``).
    ``postprocessing.json`` gets ``"decisions"``: per label the rule, the candidate step and
    whether it was applied (:func:`decision_lines` prints them with ``log`` when ``verbose``).
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

    device = torch.device(device)
    host = _uses_host_arrays(device, backend)
    plans_manager, dataset_json, reader_writer = _open_predictions(folder_predictions, plans_file_or_dict,
                                                                   dataset_json_file_or_dict)
    label_manager = plans_manager.get_label_manager(dataset_json)
    labels_or_regions = (label_manager.foreground_regions if label_manager.has_regions
                         else label_manager.foreground_labels)
    ignore_label = label_manager.ignore_label
    file_ending = dataset_json["file_ending"]
    counts = (components_from_dataset_json(dataset_json) if components is None
              else {_label_key(k): check_components(v) for k, v in components.items()})
    class_names = _class_names(dataset_json)

    names = subfiles(folder_predictions, suffix=file_ending, join=False)
    if not names:
        raise FileNotFoundError(f"no '*{file_ending}' predictions in "
                                f"{folder_predictions}")
    unmatched = [name for name in names if not os.path.isfile(os.path.join(folder_ref, name))]
    if unmatched:
        raise UserError(f"{len(unmatched)} prediction(s) of {folder_predictions} have no reference in {folder_ref}: "
                        f"{unmatched[:5]}{' ...' if len(unmatched) > 5 else ''}")
    # postprocessing.pkl/.json are written there: fail now, not after every step was computed
    prepare_output_folder(folder_predictions, "prediction folder")
    for name in names:  # O(1) each: SimpleITK would read a cut .nii.gz as zeros, i.e. a wrong Dice
        check_image_file_complete(os.path.join(folder_predictions, name))
        check_image_file_complete(os.path.join(folder_ref, name))
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
    decisions: list[dict] = []

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
    decisions.append(_decision("foreground", "all foreground labels", 1, RULE_DICE, bool(pp_fns),
                               baseline["foreground_mean"]["Dice"], candidate["foreground_mean"]["Dice"],
                               "mean foreground Dice, no label worse"))

    if len(labels_or_regions) > 1:
        for label_or_region in labels_or_regions:
            n = counts.get(_label_key(label_or_region), 1)
            function, kwargs = _largest_component_step(label_or_region, n)
            baseline, candidate, new_removed, candidate_metrics = try_step(kwargs)
            before = baseline["mean"][label_or_region]["Dice"]
            after = candidate["mean"][label_or_region]["Dice"]
            applied = bool(after > before)
            kept = "the largest component" if n == 1 else f"the {n} largest components"
            if applied:
                if verbose:
                    print(f"Results were improved by removing all but {kept} for {label_or_region}. "
                          f"Dice before: {round(before, 5)} after: {round(after, 5)}")
                accept(new_removed, candidate_metrics)
                pp_fns.append(function)
                pp_fn_kwargs.append(kwargs)
            elif verbose:
                print(f"Removing all but {kept} for {label_or_region} did not improve results! "
                      f"Dice before: {round(before, 5)} after: {round(after, 5)}")
            decisions.append(_decision(label_or_region, class_names.get(_label_key(label_or_region),
                                                                        str(label_or_region)),
                                       n, RULE_DICE, applied, before, after, "mean Dice of the label"))
    if verbose:
        for line in decision_lines(decisions):
            log(line)

    final_summary = summarize([states[n].metrics for n in names], labels_or_regions)
    save_pickle((pp_fns, pp_fn_kwargs), join(folder_predictions, "postprocessing.pkl"))
    report = {
        "input_folder": {k: input_folder_summary[k] for k in ("foreground_mean", "mean")},
        "postprocessed": {k: final_summary[k] for k in ("foreground_mean", "mean")},
        "postprocessing_fns": [f.__name__ for f in pp_fns],
        "postprocessing_kwargs": pp_fn_kwargs,
        "decision": "labels",
        "decisions": decisions,
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
# determine without voxel labels: agreement with the descriptor files
# ----------------------------------------------------------------------------------------------

#: the descriptors the label-free decision compares (what descriptor trainers constrain)
AGREEMENT_DESCRIPTORS: tuple[str, ...] = ("volume", "centroid", "spread")


def label_free_reason(dataset_json: Mapping[str, Any], folder_predictions: str | os.PathLike | None = None,
                      trainer: str | None = None) -> str | None:
    """Why a run's postprocessing must be decided without voxel labels, or None when labels may be used.

    Label-free: ``dataset.json`` marks its labels as placeholders
    (:data:`nnunet_shape.nnunet.label_free.PLACEHOLDER_FLAG`), or the trainer -- given, or read
    from a ``<trainer>__<plans>__<configuration>`` folder above ``folder_predictions`` -- does not
    read voxel labels (:func:`trainer_reads_voxel_labels`).
    """
    from nnunet_shape.nnunet.label_free import PLACEHOLDER_FLAG

    if dataset_json.get(PLACEHOLDER_FLAG, False):
        return f"dataset.json has {PLACEHOLDER_FLAG}: its labels are placeholders"
    if trainer is None and folder_predictions is not None:
        trainer = trainer_from_path(folder_predictions)
    if trainer is not None and not trainer_reads_voxel_labels(trainer):
        return f"trainer {trainer} never reads voxel labels"
    return None


def trainer_from_path(folder: str | os.PathLike) -> str | None:
    """The trainer of nnU-Net's ``<trainer>__<plans>__<configuration>`` results folder that holds
    ``folder`` (e.g. ``.../nnUNetTrainerX__nnUNetPlans__3d_fullres/fold_0/validation``), or None."""
    import re
    from pathlib import Path

    for part in reversed(Path(folder).resolve().parts):
        match = re.fullmatch(r"(?P<trainer>[^_].*?)__(?P<plans>.+)__(?P<configuration>[^_].*)", part)
        if match:
            return match["trainer"]
    return None


def trainer_reads_voxel_labels(trainer: str) -> bool:
    """False for a nnunet-shape trainer whose class says ``reads_voxel_labels = False`` (the
    ``...FromFile`` trainers and every subclass), True for any other class name (nnU-Net's own
    trainers learn from labels). Looks only in this package's trainer folder (nnUNet_extTrainer)."""
    import importlib
    import pkgutil

    import nnunet_shape.nnunet.trainers as trainers

    for info in pkgutil.iter_modules(trainers.__path__):
        module = importlib.import_module(f"{trainers.__name__}.{info.name}")
        cls = getattr(module, trainer, None)
        if isinstance(cls, type):
            return bool(getattr(cls, "reads_voxel_labels", True))
    return True


def bounds_violation(value: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """How far ``value`` lies outside ``[lower, upper]``: the Euclidean norm over components of the
    distance to the nearer bound (0 inside; a NaN bound is no bound). Exact targets
    (``lower == upper``) make it the distance to the target."""
    value, lower, upper = (np.asarray(a, dtype=np.float64) for a in (value, lower, upper))
    with np.errstate(invalid="ignore"):
        below = np.where(np.isnan(lower), 0.0, np.maximum(lower - value, 0.0))
        above = np.where(np.isnan(upper), 0.0, np.maximum(value - upper, 0.0))
    return float(np.sqrt(np.sum(below ** 2 + above ** 2)))


def _is_constrained(pair: tuple[np.ndarray, np.ndarray] | None) -> bool:
    return pair is not None and bool(np.any(np.isfinite(pair[0])) or np.any(np.isfinite(pair[1])))


def volume_scale(bounds: Mapping[str, tuple[np.ndarray, np.ndarray]], fallback_mm3: float, voxel_mm3: float) -> float:
    """The volume (mm^3) that makes a class's disagreement dimensionless: the mean of its finite
    volume bounds, else ``fallback_mm3`` (the raw prediction's volume); never below one voxel."""
    pair = bounds.get("volume")
    finite = [] if pair is None else [float(v) for v in (pair[0], pair[1]) if np.isfinite(v)]
    scale = float(np.mean(finite)) if finite else float(fallback_mm3)
    return max(scale, float(voxel_mm3))


def class_disagreement(mask: np.ndarray, spacing_mm: Sequence[float],
                       bounds: Mapping[str, tuple[np.ndarray, np.ndarray]], scale_mm3: float) -> float | None:
    """Disagreement of one predicted class mask with its descriptor bounds (0 = all satisfied).

    The sum over :data:`AGREEMENT_DESCRIPTORS` constrained in ``bounds`` (core names, array
    frame, mm; from :func:`nnunet_shape.descriptor_files.targets.case_targets_array_frame`) of
    :func:`bounds_violation`, the volume's divided by ``scale_mm3`` and the centroid's and spread's
    by the length ``scale_mm3 ** (1 / D)``: a relative volume error and distances in units of the
    class's size. An empty mask has no position: only its volume counts. None when nothing of
    the class is constrained.
    """
    from nnunet_shape.descriptor_files.measure import mask_descriptors

    names = [n for n in AGREEMENT_DESCRIPTORS if _is_constrained(bounds.get(n))]
    if not names:
        return None
    present = bool(mask.any())
    measured = mask_descriptors(mask, spacing_mm, names=tuple(names))
    length = scale_mm3 ** (1.0 / mask.ndim)
    total = 0.0
    for name in names:
        if name != "volume" and not present:
            continue
        lower, upper = bounds[name]
        total += bounds_violation(measured[name], lower, upper) / (scale_mm3 if name == "volume" else length)
    return total


def stated_components(cases: Mapping[str, Any], labels: Sequence[int], class_names: Mapping[Any, str],
                      dataset_json: Mapping[str, Any]) -> dict[int, tuple[int, str]]:
    """label -> (component count, where it is stated) from the descriptor files' per-class
    ``components`` and ``dataset.json["nnunet_shape_components"]``. UserError when two files, or
    a file and dataset.json, state different counts for one class (naming both)."""
    stated: dict[int, tuple[int, str]] = {label: (n, "dataset.json") for label, n
                                          in components_from_dataset_json(dataset_json).items() if label in labels}
    for case_id, case in sorted(cases.items()):
        for cls in case.classes.values():
            n = getattr(cls, "components", None)
            if n is None or cls.label not in labels:
                continue
            source = f"descriptor file of case {case_id}"
            if cls.label in stated and stated[cls.label][0] != n:
                raise UserError(f"class {class_names.get(cls.label, cls.label)!r}: {source} states {n} components, "
                                f"the {stated[cls.label][1]} {stated[cls.label][0]}")
            stated.setdefault(cls.label, (int(n), source))
    return stated


def determine_postprocessing_from_descriptors(folder_predictions: str, descriptor_folder: str | None = None,
                                              plans_file_or_dict: str | dict | None = None,
                                              dataset_json_file_or_dict: str | dict | None = None,
                                              device: str | torch.device = "cpu", backend: Backend = "auto",
                                              keep_postprocessed_files: bool = True, num_io_threads: int = 2,
                                              max_cached_bytes: int = 2 * 1024 ** 3, verbose: bool = True,
                                              reason: str = "", log: Callable[[str], None] = print
                                              ) -> tuple[list[Callable], list[dict]]:
    """The largest-component decision without a voxel label: from the validation cases' descriptor files.

    ``folder_predictions``: validation predictions (e.g. ``fold_0/validation``); every case with a
    file ``<descriptor_folder>/<case>.json`` (default: the label-free trainer's,
    ``nnUNet_raw/<dataset>/descriptorsTr`` or ``$nnUNetShape_descriptors``) takes part. No reference
    segmentation, ``labelsTr`` or ``gt_segmentations`` is opened. Per class, in nnU-Net's order:

    1. the all-foreground step (keep the largest foreground component) is applied when the mean
       over classes of :func:`class_disagreement` (mean over cases) decreases and no class's
       increases -- nnU-Net's rule with disagreement in place of Dice;
    2. then per label: a label whose component count N is stated (``components`` in the
       descriptor files or ``dataset.json["nnunet_shape_components"]``) gets "keep the N largest
       components" (rule ``stated components``); otherwise "keep the largest component" is
       applied when it decreases the label's mean disagreement (rule ``descriptor agreement``);
       a label no file constrains is left alone (rule ``no descriptors``).

    Writes ``postprocessing.pkl`` (as :func:`determine_postprocessing_on_device`) and
    ``postprocessing.json`` with ``"decision": "descriptors"``, ``reason`` and ``"decisions"``
    (the rule per label), logs one line per decision, and with ``keep_postprocessed_files`` writes
    the postprocessed cases to ``folder_predictions/postprocessed``.
    """
    from batchgenerators.utilities.file_and_folder_operations import (
        join,
        maybe_mkdir_p,
        save_json,
        save_pickle,
        subfiles,
    )
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    from nnunet_shape.descriptor_files.read import load_descriptor_folder
    from nnunet_shape.descriptor_files.targets import case_targets_array_frame

    device = torch.device(device)
    host = _uses_host_arrays(device, backend)
    plans_manager, dataset_json, reader_writer = _open_predictions(folder_predictions, plans_file_or_dict,
                                                                   dataset_json_file_or_dict)
    label_manager = plans_manager.get_label_manager(dataset_json)
    if label_manager.has_regions:
        raise UserError(f"dataset {plans_manager.dataset_name}: region-based datasets have no label-free "
                        f"postprocessing decision (descriptor files describe labels)")
    labels = [int(label) for label in label_manager.foreground_labels]
    class_names = _class_names(dataset_json)
    file_ending = dataset_json["file_ending"]
    if descriptor_folder is None:
        from nnunet_shape.nnunet.training.from_file import descriptor_folder as trainer_descriptor_folder

        descriptor_folder = trainer_descriptor_folder(plans_manager.dataset_name)
    cases = load_descriptor_folder(descriptor_folder, dataset_json)
    names = [n for n in subfiles(folder_predictions, suffix=file_ending, join=False)
             if n[: -len(file_ending)] in cases]
    if not names:
        raise UserError(f"no prediction '*{file_ending}' of {folder_predictions} has a descriptor file in "
                        f"{descriptor_folder}")
    prepare_output_folder(folder_predictions, "prediction folder")
    stated = stated_components(cases, labels, class_names, dataset_json)
    read_case = _CaseReader(folder_predictions, None, reader_writer, max_cached_bytes)
    removed = {name: np.zeros(0, dtype=np.int64) for name in names}
    targets: dict[str, dict[int, dict]] = {}
    scales: dict[str, dict[int, float]] = {}

    def disagreements(segmentation: np.ndarray, name: str, spacing: Sequence[float]) -> dict[int, float | None]:
        if name not in targets:  # once per case, on the raw prediction
            case_targets = case_targets_array_frame(cases[name[: -len(file_ending)]], [0, *labels],
                                                    segmentation.ndim)
            targets[name] = {label: {n: (pair[0][k], pair[1][k]) for n, pair in case_targets.items()}
                             for k, label in enumerate(labels, start=1)}
            voxel = float(np.prod(spacing))
            scales[name] = {label: volume_scale(targets[name][label], voxel * float(np.sum(segmentation == label)),
                                                voxel) for label in labels}
        return {label: class_disagreement(segmentation == label, spacing, targets[name][label], scales[name][label])
                for label in labels}

    def mean_per_label(per_case: Mapping[str, Mapping[int, float | None]]) -> dict[int, float | None]:
        means = {}
        for label in labels:
            values = [d[label] for d in per_case.values() if d[label] is not None]
            means[label] = float(np.mean(values)) if values else None
        return means

    def try_step(kwargs: dict) -> tuple[dict, dict, dict[str, np.ndarray]]:
        """(mean disagreement per label before, after, new removals per case)."""
        before: dict[str, dict] = {}
        after: dict[str, dict] = {}
        new_removed: dict[str, np.ndarray] = {}
        for name, prediction, _, properties in _prefetched(read_case, names, num_io_threads):
            spacing = [float(s) for s in properties["spacing"]][-prediction.ndim:]
            source = _with_removed(prediction, removed[name])
            working = _to_working(source, device, host)
            candidate = remove_all_but_largest_component_from_segmentation(working, **kwargs, backend=backend)
            new_removed[name] = _changed_indices(working, candidate)
            candidate = candidate.cpu().numpy() if isinstance(candidate, torch.Tensor) else candidate
            before[name] = disagreements(source, name, spacing)
            after[name] = disagreements(candidate, name, spacing)
        return mean_per_label(before), mean_per_label(after), new_removed

    def accept(new_removed: Mapping[str, np.ndarray]) -> None:
        for name in names:
            removed[name] = np.concatenate([removed[name], new_removed[name]])

    def overall(means: Mapping[int, float | None]) -> float | None:
        values = [v for v in means.values() if v is not None]
        return float(np.mean(values)) if values else None

    pp_fns: list[Callable] = []
    pp_fn_kwargs: list[dict] = []
    decisions: list[dict] = []
    function, kwargs = _largest_component_step(labels)
    before, after, new_removed = try_step(kwargs)
    input_disagreement = before
    constrained = [label for label in labels if before[label] is not None]
    first, second = overall(before), overall(after)
    applied = (first is not None and second < first
               and not any(after[label] > before[label] for label in constrained))
    if applied:
        accept(new_removed)
        pp_fns.append(function)
        pp_fn_kwargs.append(kwargs)
    decisions.append(_decision("foreground", "all foreground labels", 1, RULE_DESCRIPTORS, applied, first, second,
                               "mean disagreement with the descriptor files, no label worse"))
    if len(labels) > 1 or stated:
        for label in labels:
            name = class_names.get(label, str(label))
            n, source = stated.get(label, (1, ""))
            function, kwargs = _largest_component_step(label, n)
            before, after, new_removed = try_step(kwargs)
            if label in stated:
                rule, applied, detail = RULE_STATED, True, f"{n} stated in the {source}"
            elif before[label] is None:
                rule, applied, detail = RULE_NO_DESCRIPTORS, False, "no descriptor file constrains its volume, " \
                                                                     "centroid or spread"
            else:
                rule, applied, detail = RULE_DESCRIPTORS, bool(after[label] < before[label]), ""
            if applied:
                accept(new_removed)
                pp_fns.append(function)
                pp_fn_kwargs.append(kwargs)
            decisions.append(_decision(label, name, n, rule, applied, before[label], after[label],
                                       "mean disagreement with the descriptor files", detail))
    final_disagreement = try_step(_largest_component_step(labels)[1])[0]  # the state after every accepted step
    if verbose:
        log(f"postprocessing decided without voxel labels ({reason or 'label-free run'}): "
            f"{len(names)} validation cases, descriptor files in {descriptor_folder}")
        for line in decision_lines(decisions):
            log(line)

    save_pickle((pp_fns, pp_fn_kwargs), join(folder_predictions, "postprocessing.pkl"))
    report = {
        "decision": "descriptors",
        "reason": reason,
        "descriptor_folder": os.fspath(descriptor_folder),
        "cases": [n[: -len(file_ending)] for n in names],
        "decisions": decisions,
        "disagreement_input_folder": {class_names.get(k, str(k)): v for k, v in input_disagreement.items()},
        "disagreement_postprocessed": {class_names.get(k, str(k)): v for k, v in final_disagreement.items()},
        "postprocessing_fns": [f.__name__ for f in pp_fns],
        "postprocessing_kwargs": pp_fn_kwargs,
        "device": str(device),
        "backend": backend,
    }
    recursive_fix_for_json_export(report)
    save_json(report, join(folder_predictions, "postprocessing.json"), sort_keys=False)
    if keep_postprocessed_files:
        output_folder = join(folder_predictions, "postprocessed")
        maybe_mkdir_p(output_folder)
        for name, prediction, _, properties in _prefetched(read_case, names, num_io_threads):
            reader_writer.write_seg(_with_removed(prediction, removed[name]), join(output_folder, name), properties)
    return pp_fns, pp_fn_kwargs


# ----------------------------------------------------------------------------------------------
# apply
# ----------------------------------------------------------------------------------------------

def apply_postprocessing_to_files(input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                                  names: Sequence[str], reader_writer: Any, pp_fns: Sequence[Callable],
                                  pp_fn_kwargs: Sequence[dict], device: str | torch.device = "cpu",
                                  backend: Backend = "auto", num_io_threads: int = 2,
                                  on_case: Callable[[str], None] | None = None) -> list[str]:
    """The functions of a ``postprocessing.pkl`` on the files ``names`` of ``input_folder``,
    written under the same names to ``output_folder`` by ``reader_writer`` (an nnU-Net
    ``BaseReaderWriter``: the geometry is kept). ``on_case(name)`` is called once each case is
    written, in order. Returns the written paths.

    Each case: read on the host, one copy to ``device``, every step there
    (:func:`postprocess_logits_argmax`), one copy back.
    """
    from batchgenerators.utilities.file_and_folder_operations import join

    input_folder, output_folder = os.fspath(input_folder), os.fspath(output_folder)
    device = torch.device(device)
    prepare_output_folder(output_folder)  # a file or an unwritable folder fails before any case is read

    def read(name: str) -> tuple[str, np.ndarray, dict]:
        segmentation, properties = reader_writer.read_seg(join(input_folder, name))
        return name, _compact_labels(segmentation[0]), properties

    written = []
    with ThreadPoolExecutor(max(1, num_io_threads)) as writers:
        pending: deque[tuple[str, Future]] = deque()

        def finish(block: bool) -> None:
            while pending and (block or pending[0][1].done()):
                name, future = pending.popleft()
                future.result()  # re-raise write errors
                if on_case is not None:
                    on_case(name)

        for name, segmentation, properties in _prefetched(read, names, num_io_threads):
            tensor = torch.from_numpy(segmentation).to(device)
            result = postprocess_logits_argmax(tensor, pp_fns, pp_fn_kwargs, backend=backend).cpu().numpy()
            pending.append((name, writers.submit(reader_writer.write_seg, result, join(output_folder, name),
                                                 properties)))
            written.append(join(output_folder, name))
            finish(block=False)
        finish(block=True)
    return written


def apply_postprocessing_to_folder_on_device(input_folder: str, output_folder: str,
                                             pp_fns: Sequence[Callable], pp_fn_kwargs: Sequence[dict],
                                             plans_file_or_dict: str | dict | None = None,
                                             dataset_json_file_or_dict: str | dict | None = None,
                                             device: str | torch.device = "cpu", backend: Backend = "auto",
                                             num_io_threads: int = 2,
                                             on_case: Callable[[str], None] | None = None) -> list[str]:
    """``nnUNetv2_apply_postprocessing`` with the functions run on ``device``; returns written files.

    Every ``*file_ending`` case of ``input_folder`` (dataset.json's ending), read and written
    with the plans' reader/writer: :func:`apply_postprocessing_to_files`.
    """
    from batchgenerators.utilities.file_and_folder_operations import subfiles

    _, dataset_json, reader_writer = _open_predictions(input_folder, plans_file_or_dict, dataset_json_file_or_dict)
    names = subfiles(input_folder, suffix=dataset_json["file_ending"], join=False)
    if not names:
        raise UserError(f"no '*{dataset_json['file_ending']}' files in {input_folder} (the file_ending of "
                        f"dataset.json): nothing to postprocess")
    for name in names:
        check_image_file_complete(os.path.join(input_folder, name))
    return apply_postprocessing_to_files(input_folder, output_folder, names, reader_writer, pp_fns, pp_fn_kwargs,
                                         device, backend, num_io_threads, on_case)


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


def _add_plans_and_dataset_json_arguments(parser: argparse.ArgumentParser) -> None:
    """nnU-Net's ``-plans_json`` and ``-dataset_json`` (default: the input folder's files,
    :func:`_load_plans_and_dataset`)."""
    parser.add_argument("-plans_json", default=None, help="default: input_folder/plans.json")
    parser.add_argument("-dataset_json", default=None, help="default: input_folder/dataset.json")


def determine_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape determine-postprocessing",
        description="nnUNetv2_determine_postprocessing on the GPU: writes postprocessing.pkl and "
                    "postprocessing.json into the input folder (the pkl is nnU-Net's format). Label-free "
                    "runs (placeholder labels, ...FromFile trainers, --descriptors) are decided from the "
                    "validation cases' descriptor files instead, without opening a voxel label.")
    parser.add_argument("-i", required=True, help="folder with cross-validation predictions")
    parser.add_argument("-ref", default=None,
                        help="folder with reference segmentations (needed unless the run is label-free; never "
                             "opened for a label-free run)")
    _add_plans_and_dataset_json_arguments(parser)
    parser.add_argument("--remove_postprocessed", action="store_true",
                        help="do not write the postprocessed cases to input_folder/postprocessed")
    parser.add_argument("--descriptors", default=None,
                        help="decide from these descriptor files (<case>.json) instead of reference labels; "
                             "default for label-free runs: the label-free trainer's folder "
                             "(nnUNet_raw/<dataset>/descriptorsTr or $nnUNetShape_descriptors)")
    parser.add_argument("--label-free", action="store_true",
                        help="decide from descriptor files even if the run is not recognised as label-free")
    parser.add_argument("-tr", default=None,
                        help="trainer of the predictions (default: read from the <trainer>__<plans>__<config> "
                             "folder above -i); a trainer that never reads voxel labels makes the run label-free")
    _add_device_arguments(parser)
    args = parser.parse_args(list(argv))
    _, dataset_json = _load_plans_and_dataset(args.i, args.plans_json, args.dataset_json)
    reason = label_free_reason(dataset_json, args.i, args.tr)
    if reason is None and (args.label_free or args.descriptors is not None):
        reason = "--label-free" if args.label_free else "--descriptors given"
    if reason is not None:
        if args.ref is not None:
            print(f"label-free run ({reason}): -ref {args.ref} is not opened")
        determine_postprocessing_from_descriptors(args.i, args.descriptors, args.plans_json, args.dataset_json,
                                                  args.device, args.backend, not args.remove_postprocessed, args.np,
                                                  reason=reason)
        return 0
    if args.ref is None:
        parser.error("-ref is required: the run is not label-free (give --descriptors or --label-free to decide "
                     "from descriptor files)")
    determine_postprocessing_on_device(args.i, args.ref, args.plans_json, args.dataset_json, args.device,
                                       args.backend, not args.remove_postprocessed, args.np)
    return 0


def apply_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape apply-postprocessing",
        description="nnUNetv2_apply_postprocessing on the GPU: applies a postprocessing.pkl to a folder.")
    parser.add_argument("-i", required=True, help="input folder")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-pp_pkl_file", required=True, help="postprocessing.pkl")
    _add_plans_and_dataset_json_arguments(parser)
    _add_device_arguments(parser)
    args = parser.parse_args(list(argv))
    pp_fns, pp_fn_kwargs = load_postprocessing_pkl(args.pp_pkl_file)
    apply_postprocessing_to_folder_on_device(args.i, args.o, pp_fns, pp_fn_kwargs, args.plans_json,
                                             args.dataset_json, args.device, args.backend, args.np)
    return 0
