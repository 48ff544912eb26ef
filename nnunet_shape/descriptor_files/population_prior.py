"""Population prior files (schema ``nnunet-shape/population-prior/v1``): one file per dataset.

A population prior states what holds for every case -- per class presence, volume range,
spread range per anatomical axis, a loose position in the field of view, and relations
between classes -- in the patient's anatomical frame (LPS, mm; see
:mod:`nnunet_shape.core.anatomical_frame` and docs/population-priors.md). This module
reads and validates such files, derives one from measured cases (quantiles with a margin),
and turns a prior plus one case's geometry into training constraints in that case's array
frame:

* :func:`load_population_prior` / :func:`validate_population_prior`: JSON Schema, then
  meaning (class names, labels, intervals); :class:`PopulationPriorError` names the file,
  the class or relation and the field.
* :func:`derive_population_prior`: the file's content from measured cases
  (:func:`nnunet_shape.descriptor_files.measure.class_descriptors` of each label map).
* :func:`case_constraints`: per-class targets (``{name: (lower, upper)}`` arrays, the format
  of :mod:`nnunet_shape.core.geometry`) and relation constraints
  (:mod:`nnunet_shape.core.relations`) in the raw array frame;
  :meth:`CaseConstraints.preprocessed` maps them into nnU-Net's preprocessed frame and
  :meth:`CaseConstraints.bounds` gives the loss's :class:`DescriptorBounds`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.core.anatomical_frame import (
    ANATOMICAL_AXES,
    AnatomicalFrame,
    ObliqueDirectionError,
    direction_matrix,
)
from nnunet_shape.core.intensity import ZSCORE_EPS
from nnunet_shape.core.relations import CentroidOffset, DescriptorRatio, IntensityOrder, NestedCentroid, Relation
from nnunet_shape.descriptor_files.json_schema import find_non_finite, json_schema_validator, load_json_schema
from nnunet_shape.descriptor_files.model import PathLike, json_path

__all__ = [
    "POPULATION_PRIOR_SCHEMA_ID",
    "POPULATION_PRIOR_FILE_NAME",
    "RELATION_TYPES",
    "PopulationPriorError",
    "Interval",
    "ClassPrior",
    "RelationSpec",
    "PopulationPrior",
    "load_population_prior_schema",
    "validate_population_prior",
    "load_population_prior",
    "CaseMeasurement",
    "derive_population_prior",
    "CaseConstraints",
    "case_constraints",
    "write_population_prior",
]

POPULATION_PRIOR_SCHEMA_ID = "nnunet-shape/population-prior/v1"
POPULATION_PRIOR_FILE_NAME = "population_prior.json"
RELATION_TYPES = ("centroid_offset", "volume_ratio", "spread_ratio", "equal_centroid", "nested_centroid",
                  "intensity_order")
PRESENCE = ("required", "optional", "absent")


class PopulationPriorError(ValueError):
    """A population prior that cannot be used; the message names file, class/relation and field."""

    def __init__(self, path: PathLike | None, where: str | None, field_path: str, problem: str):
        self.path = None if path is None else str(path)
        self.where = where
        self.field = field_path
        file_text = "<in memory>" if path is None else str(path)
        where_text = "" if where is None else f" {where}:"
        super().__init__(f"{file_text}:{where_text} field {field_path}: {problem}")


# ---------------------------------------------------------------------------------------
# the parsed file
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """``low <= value <= high``; ``nan`` = that side unbounded."""

    low: float = math.nan
    high: float = math.nan

    @classmethod
    def from_json(cls, obj: Mapping[str, float] | None) -> Interval:
        obj = obj or {}
        return cls(float(obj.get("min", math.nan)), float(obj.get("max", math.nan)))

    def to_json(self) -> dict[str, float]:
        out = {}
        if math.isfinite(self.low):
            out["min"] = self.low
        if math.isfinite(self.high):
            out["max"] = self.high
        return out

    def contains(self, value: float) -> bool:
        return (math.isnan(self.low) or value >= self.low) and (math.isnan(self.high) or value <= self.high)


def _axes_arrays(axes: Mapping[str, Interval]) -> tuple[np.ndarray, np.ndarray]:
    """(3,) lower/upper per LPS axis, nan where not given."""
    lo = np.array([axes[a].low if a in axes else math.nan for a in ANATOMICAL_AXES])
    hi = np.array([axes[a].high if a in axes else math.nan for a in ANATOMICAL_AXES])
    return lo, hi


@dataclass(frozen=True)
class ClassPrior:
    name: str
    label: int
    presence: str = "required"
    volume_mm3: Interval | None = None
    spread_mm: dict[str, Interval] = field(default_factory=dict)
    fov_fraction: dict[str, Interval] = field(default_factory=dict)


@dataclass(frozen=True)
class RelationSpec:
    """One relation of the file. ``classes`` in the order of the type's fields
    (centroid_offset: from, to; ratios: numerator, denominator; equal_centroid: the two;
    nested_centroid: inner, outer; intensity_order: brighter, darker). ``axes`` per LPS axis
    (offset_mm / spread ratio), ``interval`` (volume ratio), ``value`` (tolerance_mm / spreads /
    min_difference_std), ``channel`` (intensity_order: the image channel)."""

    index: int
    type: str
    classes: tuple[str, str]
    axes: dict[str, Interval] = field(default_factory=dict)
    interval: Interval | None = None
    value: float | None = None
    channel: int = 0

    @property
    def where(self) -> str:
        return f"relation {self.index} ({self.type} {self.classes[0]}, {self.classes[1]})"


@dataclass(frozen=True)
class PopulationPrior:
    classes: dict[str, ClassPrior]
    relations: tuple[RelationSpec, ...]
    path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def num_classes(self) -> int:
        """Output channels of a plain (label = channel) dataset: largest label + 1."""
        return max(c.label for c in self.classes.values()) + 1


def load_population_prior_schema() -> dict:
    return load_json_schema('nnunet_shape.descriptor_files', 'population_prior_schema_v1.json')


def _validator():
    return json_schema_validator('nnunet_shape.descriptor_files', 'population_prior_schema_v1.json')


def _where_of(raw: Mapping[str, Any], parts: Sequence[Any]) -> str | None:
    """"class 'femur'" / "relation 2 (centroid_offset)" for a JSON path, for messages."""
    if len(parts) >= 2 and parts[0] == "classes":
        return f"class {parts[1]!r}"
    if len(parts) >= 2 and parts[0] == "relations" and isinstance(parts[1], int):
        relations = raw.get("relations")
        kind = None
        if isinstance(relations, list) and parts[1] < len(relations) and isinstance(relations[parts[1]], dict):
            kind = relations[parts[1]].get("type")
        return f"relation {parts[1]}" + (f" ({kind})" if isinstance(kind, str) else "")
    return None


def _check_interval(fail, parts: tuple, interval: Interval, non_negative: bool) -> None:
    if not (math.isnan(interval.low) or math.isnan(interval.high)) and interval.low > interval.high:
        raise fail(parts, f"min {interval.low} > max {interval.high}")
    if non_negative and (interval.high < 0 or interval.low < 0):
        raise fail(parts, f"must be >= 0, got [{interval.low}, {interval.high}]")


_RELATION_CLASS_FIELDS = {
    "centroid_offset": ("from", "to"),
    "volume_ratio": ("numerator", "denominator"),
    "spread_ratio": ("numerator", "denominator"),
    "nested_centroid": ("inner", "outer"),
    "intensity_order": ("brighter", "darker"),
}


def validate_population_prior(raw: Any, path: PathLike | None = None,
                              dataset_json: Mapping[str, Any] | None = None) -> PopulationPrior:
    """Validate a parsed file and return it as a :class:`PopulationPrior`.

    ``dataset_json`` (optional): every class of the prior must be a label of the dataset,
    with the same value.
    """
    def fail(parts: Sequence[Any], problem: str) -> PopulationPriorError:
        return PopulationPriorError(path, _where_of(raw if isinstance(raw, dict) else {}, parts),
                                    json_path(parts), problem)

    if not isinstance(raw, dict):
        raise PopulationPriorError(path, None, "$", f"expected a JSON object, got {type(raw).__name__}")
    if raw.get("schema") != POPULATION_PRIOR_SCHEMA_ID:
        raise fail(("schema",), f"unknown schema {raw.get('schema')!r}; this reader understands "
                                f"{POPULATION_PRIOR_SCHEMA_ID!r}")
    bad = find_non_finite(raw)
    if bad is not None:
        raise fail(bad, "NaN or infinite number (not allowed; omit min or max for an open side)")
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(raw))
    if error is not None:
        raise fail(tuple(error.absolute_path), f"{error.message} (JSON Schema {POPULATION_PRIOR_SCHEMA_ID})")

    classes: dict[str, ClassPrior] = {}
    labels_seen: dict[int, str] = {}
    dataset_labels = None if dataset_json is None else dataset_json.get("labels", {})
    for name, entry in raw["classes"].items():
        parts = ("classes", name)
        label = int(entry["label"])
        if label in labels_seen:
            raise fail(parts + ("label",), f"label {label} is also class {labels_seen[label]!r}")
        labels_seen[label] = name
        if dataset_labels is not None:
            if name not in dataset_labels:
                raise fail(parts, f"class {name!r} is not a label of dataset.json (labels: {sorted(dataset_labels)})")
            if dataset_labels[name] != label:
                raise fail(parts + ("label",), f"label {label} differs from dataset.json's {dataset_labels[name]!r}")
        volume = Interval.from_json(entry["volume_mm3"]) if "volume_mm3" in entry else None
        if volume is not None:
            _check_interval(fail, parts + ("volume_mm3",), volume, non_negative=True)
        axes_fields = {}
        for key in ("spread_mm", "fov_fraction"):
            axes = {a: Interval.from_json(v) for a, v in entry.get(key, {}).items()}
            for a, interval in axes.items():
                _check_interval(fail, parts + (key, a), interval, non_negative=True)
                if key == "fov_fraction" and interval.high > 1:
                    raise fail(parts + (key, a), f"a fraction of the field of view is <= 1, got max {interval.high}")
            axes_fields[key] = axes
        classes[name] = ClassPrior(name, label, entry.get("presence", "required"), volume, **axes_fields)

    relations = []
    for index, entry in enumerate(raw.get("relations", [])):
        parts = ("relations", index)
        kind = entry["type"]
        names = tuple(entry["classes"]) if kind == "equal_centroid" else tuple(
            entry[f] for f in _RELATION_CLASS_FIELDS[kind])
        fields = ("classes", "classes") if kind == "equal_centroid" else _RELATION_CLASS_FIELDS[kind]
        for name, key in zip(names, fields):
            if name not in classes:
                raise fail(parts + (key,), f"unknown class {name!r}; the prior's classes are {sorted(classes)}")
        if names[0] == names[1]:
            raise fail(parts + (fields[1],), f"a relation needs two different classes, got {names[0]!r} twice")
        axes, interval, value = {}, None, None
        if kind == "centroid_offset":
            axes = {a: Interval.from_json(v) for a, v in entry["offset_mm"].items()}
            for a, iv in axes.items():
                _check_interval(fail, parts + ("offset_mm", a), iv, non_negative=False)
        elif kind == "spread_ratio":
            axes = {a: Interval.from_json(v) for a, v in entry["ratio"].items()}
            for a, iv in axes.items():
                _check_interval(fail, parts + ("ratio", a), iv, non_negative=True)
        elif kind == "volume_ratio":
            interval = Interval.from_json(entry["ratio"])
            _check_interval(fail, parts + ("ratio",), interval, non_negative=True)
        elif kind == "equal_centroid":
            value = float(entry["tolerance_mm"])
        elif kind == "intensity_order":
            value = float(entry.get("min_difference_std", 0.0))
            channel = int(entry.get("channel", 0))
            declared = None if dataset_json is None else dataset_json.get("channel_names")
            if isinstance(declared, Mapping) and channel >= len(declared):
                raise fail(parts + ("channel",), f"channel {channel}, but dataset.json has {len(declared)} image "
                                                 f"channel(s) (channel_names {sorted(declared)})")
        else:
            value = float(entry.get("spreads", 1.0))
        relations.append(RelationSpec(index, kind, (str(names[0]), str(names[1])), axes, interval, value,
                                      int(entry.get("channel", 0))))
    return PopulationPrior(classes, tuple(relations), None if path is None else str(path), dict(raw))


def load_population_prior(path: PathLike, dataset_json: Mapping[str, Any] | None = None) -> PopulationPrior:
    """Read and validate a population prior file."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise PopulationPriorError(path, None, "$", "file not found") from None
    except json.JSONDecodeError as error:
        raise PopulationPriorError(path, None, "$", f"not valid JSON: {error}") from None
    return validate_population_prior(raw, path, dataset_json)


# ---------------------------------------------------------------------------------------
# derivation from measured cases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseMeasurement:
    """What the derivation needs of one case: its direction and measured class entries.

    ``classes``: {class name: the object of :func:`~nnunet_shape.descriptor_files.measure.class_descriptors`}
    (array frame), ``shape``/``spacing_mm`` in array order. ``image_intensity``: the case's
    :func:`~nnunet_shape.descriptor_files.measure.image_intensity` block when it was measured with
    its image (then every present class has ``intensity``), else None.
    """

    case_id: str
    direction: Any
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    classes: Mapping[str, Mapping[str, Any]]
    image_intensity: Mapping[str, Any] | None = None


def _widen(values: Sequence[float], quantiles: tuple[float, float], margin: float,
           non_negative: bool, upper_limit: float | None = None) -> dict[str, float]:
    """The interval of ``values``: quantiles, widened by ``margin x max(width, |midpoint|)``
    on both sides (so one case, or equal values, still gets a relative margin)."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), quantiles))
    pad = margin * max(hi - lo, (abs(lo) + abs(hi)) / 2)
    lo, hi = lo - pad, hi + pad
    if non_negative:
        lo = max(lo, 0.0)
    if upper_limit is not None:
        hi = min(hi, upper_limit)
    return {"min": lo, "max": hi}


def _anatomical_case(case: CaseMeasurement, max_oblique_degrees: float) -> dict[str, dict[str, Any]]:
    """Per present class: volume, LPS centroid (vector from the first voxel), LPS spread,
    LPS field-of-view fraction (None when the direction is oblique)."""
    frame = AnatomicalFrame.from_direction(case.direction, max_oblique_degrees=max_oblique_degrees)
    spacing = np.asarray(case.spacing_mm, dtype=np.float64)
    extent = np.asarray(case.shape, dtype=np.float64) * spacing
    out = {}
    for name, entry in case.classes.items():
        if not entry.get("voxels"):
            continue
        centroid = np.asarray(entry["centroid_mm"], dtype=np.float64)
        try:
            fraction = frame.fraction_to_anatomical((centroid + spacing / 2) / extent)
        except ObliqueDirectionError:
            fraction = None
        out[name] = {
            "volume": float(entry["volume_mm3"]),
            "centroid": frame.vector_to_anatomical(centroid),
            "spread": frame.spread_to_anatomical(np.asarray(entry["covariance_mm2"], dtype=np.float64)),
            "fraction": fraction,
            "intensity_z": _zscore_mean(case, name, entry),
        }
    return out


def _zscore_mean(case: CaseMeasurement, name: str, entry: Mapping[str, Any]) -> np.ndarray | None:
    """(C,) class mean in nnU-Net's z-score units ``(mean - m) / s`` (None without the image)."""
    if case.image_intensity is None:
        return None
    if entry.get("intensity") is None:
        raise ValueError(f"derive_population_prior: case {case.case_id!r}: class {name!r} has no intensity, but the "
                         f"case was measured with its image")
    m = np.asarray(case.image_intensity["mean"], dtype=np.float64)
    s = np.maximum(np.asarray(case.image_intensity["std"], dtype=np.float64), ZSCORE_EPS)
    return (np.asarray(entry["intensity"]["mean"], dtype=np.float64) - m) / s


def _intensity_relations(measured: Sequence[Mapping[str, Any]], names: Sequence[str],
                         quant: tuple[float, float], margin: float) -> list[dict[str, Any]]:
    """``intensity_order`` relations: per pair of classes and channel, the one that is brighter in
    EVERY case where both are present (z-score units), with the interval rule's lower end as
    ``min_difference_std`` (clipped at 0); pairs whose order changes between cases get none."""
    relations = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs = [(m[a]["intensity_z"], m[b]["intensity_z"]) for m in measured if a in m and b in m]
            if not pairs:
                continue
            differences = np.array([za - zb for za, zb in pairs])  # (cases, C)
            for channel in range(differences.shape[1]):
                d = differences[:, channel]
                if np.all(d > 0):
                    brighter, darker = a, b
                elif np.all(d < 0):
                    brighter, darker, d = b, a, -d
                else:
                    continue
                low = _widen(d, quant, margin, True)["min"]
                relations.append({"type": "intensity_order", "brighter": brighter, "darker": darker,
                                  "channel": channel, "min_difference_std": low})
    return relations


def derive_population_prior(
    cases: Sequence[CaseMeasurement],
    labels: Mapping[str, int],
    quantiles: tuple[float, float] = (5.0, 95.0),
    margin: float = 0.1,
    *,
    max_oblique_degrees: float = 10.0,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object of a population prior learnt from measured cases.

    Per class (``labels``: name -> label, in output order): presence (required if present
    in every case, absent if in none, else optional), then over the cases where it is
    present: volume, spread per LPS axis (exact for any direction, from the covariance) and
    field-of-view fraction (axis-aligned cases only). Per ordered pair (a, b) of classes
    (a before b in ``labels``) present together in some case: centroid offset of b from a
    per LPS axis, volume ratio b / a and spread ratio b / a per axis. Every interval is the
    ``quantiles`` (percent, linear interpolation) of the values, widened by
    ``margin x max(width, |midpoint|)`` on each side; non-negative quantities are clipped
    at 0, fractions at [0, 1].

    Cases measured with their images (``image_intensity`` given -- all cases or none) add
    ``intensity_order`` relations: for each pair of classes and image channel whose order of
    z-scored class means ``(mean - m) / s`` is the same in every case where both are present,
    "brighter than" with ``min_difference_std`` the lower end of that interval rule (>= 0).
    """
    q_lo, q_hi = (float(q) for q in quantiles)
    if not 0 <= q_lo <= q_hi <= 100:
        raise ValueError(f"quantiles must satisfy 0 <= low <= high <= 100, got {list(quantiles)}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not cases:
        raise ValueError("derive_population_prior: no cases to learn from")
    quant = (q_lo, q_hi)
    with_images = [c.image_intensity is not None for c in cases]
    if any(with_images) and not all(with_images):
        missing = [c.case_id for c in cases if c.image_intensity is None]
        raise ValueError(f"derive_population_prior: cases {missing} were measured without their images, the others "
                         f"with them; intensity relations need every case's image")
    measured = [_anatomical_case(c, max_oblique_degrees) for c in cases]
    classes: dict[str, Any] = {}
    for name, label in labels.items():
        present = [m[name] for m in measured if name in m]
        entry: dict[str, Any] = {"label": int(label)}
        entry["presence"] = ("required" if len(present) == len(measured) else "absent" if not present
                             else "optional")
        if present:
            entry["volume_mm3"] = _widen([p["volume"] for p in present], quant, margin, True)
            entry["spread_mm"] = {a: _widen([p["spread"][j] for p in present], quant, margin, True)
                                  for j, a in enumerate(ANATOMICAL_AXES)}
            fractions = [p["fraction"] for p in present if p["fraction"] is not None]
            if fractions:
                entry["fov_fraction"] = {a: _widen([f[j] for f in fractions], quant, margin, True, 1.0)
                                         for j, a in enumerate(ANATOMICAL_AXES)}
        classes[name] = entry
    relations = []
    names = list(labels)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs = [(m[a], m[b]) for m in measured if a in m and b in m]
            if not pairs:
                continue
            offsets = np.array([pb["centroid"] - pa["centroid"] for pa, pb in pairs])
            relations.append({"type": "centroid_offset", "from": a, "to": b,
                              "offset_mm": {ax: _widen(offsets[:, j], quant, margin, False)
                                            for j, ax in enumerate(ANATOMICAL_AXES)}})
            if all(pa["volume"] > 0 for pa, _ in pairs):
                relations.append({"type": "volume_ratio", "numerator": b, "denominator": a,
                                  "ratio": _widen([pb["volume"] / pa["volume"] for pa, pb in pairs], quant, margin,
                                                  True)})
            spread_axes = {}
            for j, ax in enumerate(ANATOMICAL_AXES):
                if all(pa["spread"][j] > 0 for pa, _ in pairs):
                    spread_axes[ax] = _widen([pb["spread"][j] / pa["spread"][j] for pa, pb in pairs], quant, margin,
                                             True)
            if spread_axes:
                relations.append({"type": "spread_ratio", "numerator": b, "denominator": a, "ratio": spread_axes})
    if all(with_images):
        relations += _intensity_relations(measured, names, quant, margin)
    out: dict[str, Any] = {"schema": POPULATION_PRIOR_SCHEMA_ID, "frame": "LPS"}
    out["source"] = {"cases": len(cases), "quantiles": [q_lo, q_hi], "margin": float(margin), **dict(source or {})}
    out["classes"] = classes
    out["relations"] = relations
    return out


# ---------------------------------------------------------------------------------------
# one case's constraints
# ---------------------------------------------------------------------------------------


def _relation_constraints(prior: PopulationPrior, frame: AnatomicalFrame) -> tuple[Relation, ...]:
    out: list[Relation] = []
    for spec in prior.relations:
        a, b = (prior.classes[n].label for n in spec.classes)
        try:
            if spec.type == "centroid_offset":
                lo, hi = frame.box_to_array(*_axes_arrays(spec.axes))
                out.append(CentroidOffset(a, b, tuple(lo), tuple(hi)))
            elif spec.type == "spread_ratio":
                lo, hi = frame.spread_to_array(*_axes_arrays(spec.axes))
                out.append(DescriptorRatio("spread", a, b, tuple(lo), tuple(hi)))
            elif spec.type == "volume_ratio":
                out.append(DescriptorRatio("volume", a, b, (spec.interval.low,), (spec.interval.high,)))
            elif spec.type == "equal_centroid":
                tol = float(spec.value)
                out.append(CentroidOffset(a, b, (-tol,) * 3, (tol,) * 3))
            elif spec.type == "intensity_order":
                out.append(IntensityOrder(a, b, spec.channel, float(spec.value)))
            else:
                out.append(NestedCentroid(a, b, float(spec.value)))
        except ObliqueDirectionError as error:
            raise PopulationPriorError(prior.path, spec.where, json_path(("relations", spec.index)),
                                       str(error)) from None
    return tuple(out)


@dataclass(frozen=True)
class CaseConstraints:
    """A population prior applied to one case, in one array frame.

    targets: ``{"volume": (K,), "centroid": (K, 3), "spread": (K, 3)}`` pairs ``(lower,
        upper)``, NaN = unconstrained, index = label (row 0, background, unconstrained);
        absent classes have volume ``[0, 0]``, optional classes a volume lower bound of NaN.
    relations: core relation constraints (the loss's ``priors``).
    present: (K,) bool -- required or optional classes (and background).
    spacing, shape: of the frame.
    """

    targets: dict[str, tuple[np.ndarray, np.ndarray]]
    relations: tuple[Relation, ...]
    present: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, ...]
    prior: PopulationPrior
    direction: np.ndarray

    def preprocessed(self, transpose_forward: Sequence[int], bbox: Sequence[Sequence[int]],
                     shape_after_cropping: Sequence[int], preprocessed_shape: Sequence[int]) -> CaseConstraints:
        """These (raw-frame) constraints in nnU-Net's preprocessed frame (transpose, crop,
        resample; the arguments of :func:`~nnunet_shape.core.geometry.raw_to_preprocessed_targets`).
        Relations follow the transpose only: offsets and ratios do not change under
        cropping and resampling."""
        from nnunet_shape.core.geometry import raw_to_preprocessed_targets

        targets, spacing = raw_to_preprocessed_targets(self.targets, self.spacing, transpose_forward, bbox,
                                                       shape_after_cropping, preprocessed_shape)
        frame = AnatomicalFrame.from_direction(self.direction, transpose_forward)
        return CaseConstraints(targets, _relation_constraints(self.prior, frame), self.present, spacing,
                               tuple(int(n) for n in preprocessed_shape), self.prior, self.direction)

    def bounds(self, dtype: Any = None, device: Any = None):
        """:class:`~nnunet_shape.core.bounds.DescriptorBounds` of batch size 1."""
        import torch

        from nnunet_shape.core.bounds import DescriptorBounds

        dtype = torch.float32 if dtype is None else dtype
        lower = {k: torch.as_tensor(v[0], dtype=dtype, device=device)[None] for k, v in self.targets.items()}
        upper = {k: torch.as_tensor(v[1], dtype=dtype, device=device)[None] for k, v in self.targets.items()}
        return DescriptorBounds(lower, upper, torch.as_tensor(self.present, device=device)[None])


def case_constraints(prior: PopulationPrior, direction: Any, shape: Sequence[int], spacing: Sequence[float],
                     num_classes: int | None = None, *, max_oblique_degrees: float = 10.0) -> CaseConstraints:
    """The prior's constraints for one case in its RAW array frame.

    Args:
        prior: a loaded :class:`PopulationPrior`.
        direction: the case's ITK direction (SimpleITK ``GetDirection()``, or nnU-Net's
            ``properties['sitk_stuff']['direction']``).
        shape, spacing: raw array shape and spacing (nnU-Net: ``shape_before_cropping``,
            ``properties['spacing']``), array order.
        num_classes: output channels K (default: largest label + 1).
    Field-of-view fractions become centroid bounds ``f * n * s - s / 2`` (the fraction is
    measured over the whole field of view, ``n * s``, from the voxel edge).
    """
    frame = AnatomicalFrame.from_direction(direction, max_oblique_degrees=max_oblique_degrees)
    k = prior.num_classes() if num_classes is None else int(num_classes)
    if k < prior.num_classes():
        raise PopulationPriorError(prior.path, None, "$.classes",
                                   f"label {prior.num_classes() - 1} does not fit {k} output classes")
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    n = np.asarray(shape, dtype=np.float64).reshape(-1)
    if s.shape != (3,) or n.shape != (3,):
        raise ValueError(f"case_constraints: population priors need 3-D cases, got shape {tuple(shape)}, "
                         f"spacing {tuple(spacing)}")
    targets = {"volume": (np.full(k, np.nan), np.full(k, np.nan)),
               "centroid": (np.full((k, 3), np.nan), np.full((k, 3), np.nan)),
               "spread": (np.full((k, 3), np.nan), np.full((k, 3), np.nan))}
    present = np.ones(k, dtype=bool)
    for cls in prior.classes.values():
        where = f"class {cls.name!r}"
        try:
            if cls.presence == "absent":
                present[cls.label] = False
                targets["volume"][0][cls.label] = targets["volume"][1][cls.label] = 0.0
                continue
            if cls.volume_mm3 is not None:
                targets["volume"][0][cls.label] = math.nan if cls.presence == "optional" else cls.volume_mm3.low
                targets["volume"][1][cls.label] = cls.volume_mm3.high
            if cls.spread_mm:
                field_name = "spread_mm"
                lo, hi = frame.spread_to_array(*_axes_arrays(cls.spread_mm))
                targets["spread"][0][cls.label], targets["spread"][1][cls.label] = lo, hi
            if cls.fov_fraction:
                field_name = "fov_fraction"
                lo, hi = frame.fraction_to_array(*_axes_arrays(cls.fov_fraction))
                targets["centroid"][0][cls.label] = lo * n * s - s / 2
                targets["centroid"][1][cls.label] = hi * n * s - s / 2
        except ObliqueDirectionError as error:
            raise PopulationPriorError(prior.path, where, json_path(("classes", cls.name, field_name)),
                                       str(error)) from None
    return CaseConstraints(targets, _relation_constraints(prior, frame), present, s, tuple(int(v) for v in n),
                           prior, direction_matrix(direction))


def write_population_prior(path: PathLike, obj: Mapping[str, Any]) -> None:
    """Validate ``obj`` and write it atomically."""
    from nnunet_shape.descriptor_files.atomic import write_json_atomic

    validate_population_prior(dict(obj), path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dict(obj))
