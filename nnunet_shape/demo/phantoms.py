"""Synthetic knee MR phantoms written as an nnU-Net raw dataset (``nnunet-shape phantoms``).

The phantoms imitate the setting of paper 000 (sagittal 3D DESS knee MRI of the OAI) at a
size a CPU can train on: four classes -- femur, femoral cartilage, tibia and tibial cartilage
(the latter as two separate compartments, medial and lateral, that share label 4) -- drawn
from randomised anatomy and rendered with MR-like contrast, partial volume, a bias field and
Rician noise. See ``docs/phantoms.md`` for the anatomy model and the parameter ranges.

Random parameters and rendering are kept apart (TorchIO style): :func:`sample_anatomy` draws
every random number into a :class:`KneeAnatomy`; :func:`render_knee` is a pure function of
that anatomy, the grid shape and the spacing (its noise and texture come from
``appearance.field_seed``). Only ``numpy.random.Generator`` instances are used, never the
global random state.

Axes. Arrays are in nnU-Net's order ``(z, y, x)`` = (medial-lateral, superior-inferior,
anterior-posterior): slices are sagittal, ``y`` grows inferiorly, ``x`` posteriorly. The
files carry an identity direction, the spacing (reversed to SimpleITK's ``x, y, z`` order)
and an origin that puts the world point (0, 0, 0) at the centre of the field of view.

Scale. Every length of the anatomy is expressed in millimetres *at the default field of view*
``DEFAULT_SHAPE * DEFAULT_SPACING = 56 x 44.8 x 44.8 mm`` (a knee shrunk ~0.6x so that it fits,
with cartilage of natural thickness). Another grid scales the whole anatomy, cartilage
included, by ``min_a(FOV_a / DEFAULT_FOV_a)``, so volume fractions of the field of view do not
depend on the grid size.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nnunet_shape.demo.dataset_writer import (
    SPLIT_FOLDERS,
    add_dataset_writer_arguments,
    add_name_and_processes_arguments,
    case_seed,
    make_split_folders,
    write_cases,
    write_image_atomic,
)
from nnunet_shape.descriptor_files.atomic import write_json_atomic

__all__ = [
    "LABELS",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "ARRAY_AXES",
    "VOLUME_FRACTION_RANGES",
    "MRAppearance",
    "KneeAnatomy",
    "sample_anatomy",
    "anatomy_scale",
    "render_knee",
    "case_seed",
    "generate_case",
    "write_phantom_dataset",
    "main",
]

LABELS: dict[str, int] = {
    "background": 0,
    "femur": 1,
    "femoral_cartilage": 2,
    "tibia": 3,
    "tibial_cartilage": 4,
}
#: the anatomical axis along each array axis (z, y, x): medial-lateral (the knee's left-right axis),
#: superior-inferior, anterior-posterior
ARRAY_AXES: tuple[str, str, str] = ("LR", "SI", "AP")
#: raw array axis along which the femur lies above the tibia
SUPERIOR_INFERIOR_AXIS = ARRAY_AXES.index("SI")
DEFAULT_SHAPE: tuple[int, int, int] = (40, 64, 64)
DEFAULT_SPACING: tuple[float, float, float] = (1.4, 0.7, 0.7)
DEFAULT_FOV_MM: tuple[float, float, float] = tuple(
    n * s for n, s in zip(DEFAULT_SHAPE, DEFAULT_SPACING)
)  # (56.0, 44.8, 44.8)

# Class volume as a fraction of the field-of-view volume (label -> (low, high)): the documented
# ranges of the generator (docs/phantoms.md), ~25 % wider than the extremes of 300 sampled
# cases at 20x32x32 and 100 at the default grid ("sampled" below); tests check cases against them.
VOLUME_FRACTION_RANGES: dict[int, tuple[float, float]] = {
    1: (0.06, 0.13),  # femur (condyles, metaphysis, shaft stump); sampled 0.074-0.102
    2: (0.010, 0.040),  # femoral cartilage; sampled 0.015-0.029
    3: (0.065, 0.14),  # tibia (plateau, shaft stump); sampled 0.083-0.115
    4: (0.002, 0.012),  # tibial cartilage, both compartments; sampled 0.0034-0.0093
}

# Tissues of the rendering (finer than the labels).
_AIR, _MUSCLE, _FAT, _FLUID = 0, 1, 2, 3
_FEMUR_MARROW, _FEMUR_CORTEX, _TIBIA_MARROW, _TIBIA_CORTEX = 4, 5, 6, 7
_PATELLA_MARROW, _PATELLA_CORTEX = 8, 9
_FEMORAL_CARTILAGE, _TIBIAL_CARTILAGE, _PATELLAR_CARTILAGE = 10, 11, 12
_NUM_TISSUES = 13
_TISSUE_TO_LABEL = np.zeros(_NUM_TISSUES, dtype=np.uint8)
_TISSUE_TO_LABEL[[_FEMUR_MARROW, _FEMUR_CORTEX]] = LABELS["femur"]
_TISSUE_TO_LABEL[_FEMORAL_CARTILAGE] = LABELS["femoral_cartilage"]
_TISSUE_TO_LABEL[[_TIBIA_MARROW, _TIBIA_CORTEX]] = LABELS["tibia"]
_TISSUE_TO_LABEL[_TIBIAL_CARTILAGE] = LABELS["tibial_cartilage"]
# A voxel whose sub-samples tie between two labels takes the thinner structure (cartilage
# before bone before background), so thin cartilage is not eroded by the majority vote.
_TIE_PRIORITY = np.array([0, 1, 3, 2, 4], dtype=np.int32)

Vec3 = tuple[float, float, float]
Vec2 = tuple[float, float]


@dataclass(frozen=True)
class MRAppearance:
    """DESS-like (water-excitation) contrast: mean tissue intensities relative to cartilage
    ~0.7, plus the parameters of texture, bias field and noise."""

    air: float
    muscle: float
    fat: float
    fluid: float
    marrow: float
    cortex: float
    cartilage: float
    texture_amplitude: float  # relative std of the smooth multiplicative tissue texture
    bias_amplitude: float  # std of the log bias field
    noise_sigma: float  # Gaussian std of each of the two complex channels, relative units
    gain: float  # global scale of the written intensities
    field_seed: int  # seeds texture, bias and noise in render_knee


@dataclass(frozen=True)
class KneeAnatomy:
    """All random parameters of one phantom (lengths in mm at the default field of view).

    Knee frame: ``(ml, si, ap)`` with ``si`` growing inferiorly and ``ap`` posteriorly, origin
    at the centre of the joint line. The "first" condyle/compartment lies at negative ``ml``;
    ``left_knee`` mirrors the medial-lateral axis.
    """

    left_knee: bool
    rotation_deg: Vec3  # about the ml (flexion), si (axial rotation) and ap (varus) axes
    translation_mm: Vec3  # joint centre relative to the field-of-view centre, array order
    joint_gap_mm: float  # fluid between femoral and tibial cartilage where they are closest
    femoral_cartilage_mm: float
    tibial_cartilage_mm: float  # mean thickness; the compartments are lens-shaped
    cortex_mm: float
    condyle_ml_mm: Vec2  # |ml| of the two condyle centres
    condyle_ap_mm: Vec2
    condyle_radii_mm: tuple[Vec3, Vec3]  # (ml, si, ap) radii; flat in ml (exponent 4)
    metaphysis_radii_mm: Vec3
    metaphysis_height_mm: float  # centre above the condyle bottoms
    metaphysis_ap_mm: float
    femoral_shaft_radii_mm: Vec2  # (ml, ap) of the elliptic cylinder
    femoral_shaft_ap_mm: float
    femur_blend_mm: float  # smooth-union radius of the femur parts
    plateau_radii_mm: Vec3  # superellipsoid (exponent 4) radii
    plateau_ap_mm: float
    tibial_shaft_radii_mm: Vec2
    tibial_shaft_ap_mm: float
    tibia_blend_mm: float
    compartment_offsets_mm: tuple[Vec2, Vec2]  # (ml, ap) footprint centre offsets from condyles
    compartment_radii_mm: tuple[Vec2, Vec2]  # (ml, ap) footprint radii
    patella_radii_mm: Vec3
    patella_offset_mm: Vec2  # (ml, si) of the patella centre
    patellar_cartilage_mm: float
    leg_radii_mm: Vec2  # (ml, ap) of the skin cylinder
    prepatellar_mm: float  # skin in front of the patella
    fat_mm: float  # subcutaneous fat thickness
    effusion_radii_mm: Vec3  # joint fluid ellipsoid around the joint line
    appearance: MRAppearance

    @classmethod
    def from_dict(cls, values: dict) -> KneeAnatomy:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples),
        e.g. to re-render a case from ``phantom_parameters.json``."""

        def as_tuples(value):
            return tuple(as_tuples(v) for v in value) if isinstance(value, list) else value

        fields = {k: as_tuples(v) for k, v in values.items() if k != "appearance"}
        return cls(**fields, appearance=MRAppearance(**values["appearance"]))


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def sample_anatomy(rng: np.random.Generator) -> KneeAnatomy:
    """Draw one random knee (all random numbers of a phantom come from here).

    Args:
        rng: a ``numpy.random.Generator``; it is advanced, never the global random state.
    """
    condyle_radii = tuple(
        (_u(rng, 5.5, 6.5), _u(rng, 8.0, 9.5), _u(rng, 10.0, 12.0)) for _ in range(2)
    )
    appearance = MRAppearance(
        air=_u(rng, 0.0, 0.02),
        muscle=_u(rng, 0.22, 0.30),
        fat=_u(rng, 0.10, 0.16),
        fluid=_u(rng, 0.85, 1.0),
        marrow=_u(rng, 0.30, 0.40),
        cortex=_u(rng, 0.03, 0.08),
        cartilage=_u(rng, 0.62, 0.75),
        texture_amplitude=_u(rng, 0.04, 0.10),
        bias_amplitude=_u(rng, 0.08, 0.20),
        noise_sigma=_u(rng, 0.015, 0.04),
        gain=_u(rng, 800.0, 1200.0),
        field_seed=int(rng.integers(0, 2**31 - 1)),
    )
    return KneeAnatomy(
        left_knee=bool(rng.random() < 0.5),
        rotation_deg=(_u(rng, -6.0, 6.0), _u(rng, -5.0, 5.0), _u(rng, -3.0, 3.0)),
        translation_mm=(_u(rng, -2.5, 2.5), _u(rng, -2.0, 2.0), _u(rng, -2.0, 2.0)),
        joint_gap_mm=_u(rng, 1.0, 2.0),
        femoral_cartilage_mm=_u(rng, 1.5, 2.5),
        tibial_cartilage_mm=_u(rng, 1.5, 2.3),
        cortex_mm=_u(rng, 0.5, 0.9),
        condyle_ml_mm=(_u(rng, 10.0, 11.5), _u(rng, 10.0, 11.5)),
        condyle_ap_mm=(_u(rng, 1.0, 3.0), _u(rng, 1.0, 3.0)),
        condyle_radii_mm=condyle_radii,  # type: ignore[arg-type]
        metaphysis_radii_mm=(_u(rng, 15.0, 17.0), _u(rng, 9.0, 11.0), _u(rng, 9.0, 10.5)),
        metaphysis_height_mm=_u(rng, 12.0, 14.0),
        metaphysis_ap_mm=_u(rng, -1.0, 1.0),
        femoral_shaft_radii_mm=(_u(rng, 8.0, 9.5), _u(rng, 7.0, 8.5)),
        femoral_shaft_ap_mm=_u(rng, -0.5, 1.5),
        femur_blend_mm=_u(rng, 2.0, 3.0),
        plateau_radii_mm=(_u(rng, 18.0, 20.0), _u(rng, 5.0, 6.5), _u(rng, 11.0, 13.0)),
        plateau_ap_mm=_u(rng, 0.5, 2.0),
        tibial_shaft_radii_mm=(_u(rng, 8.0, 9.5), _u(rng, 7.5, 9.0)),
        tibial_shaft_ap_mm=_u(rng, 0.5, 2.5),
        tibia_blend_mm=_u(rng, 4.0, 6.0),
        compartment_offsets_mm=tuple(
            (_u(rng, 0.0, 1.0), _u(rng, -1.0, 1.0)) for _ in range(2)
        ),  # type: ignore[arg-type]
        compartment_radii_mm=tuple(
            (_u(rng, 5.0, 6.5), _u(rng, 8.0, 10.5)) for _ in range(2)
        ),  # type: ignore[arg-type]
        patella_radii_mm=(_u(rng, 7.0, 8.5), _u(rng, 6.0, 7.5), _u(rng, 2.5, 3.2)),
        patella_offset_mm=(_u(rng, -2.0, 2.0), _u(rng, -14.0, -10.0)),
        patellar_cartilage_mm=_u(rng, 1.8, 2.6),
        leg_radii_mm=(_u(rng, 30.0, 36.0), _u(rng, 22.0, 26.0)),
        prepatellar_mm=_u(rng, 2.5, 4.0),
        fat_mm=_u(rng, 1.2, 2.5),
        effusion_radii_mm=(_u(rng, 14.0, 17.0), _u(rng, 1.5, 3.0), _u(rng, 9.0, 12.0)),
        appearance=appearance,
    )


# ----------------------------------------------------------------------------------------
# geometry: approximate signed distances (negative inside), evaluated on the knee frame
# ----------------------------------------------------------------------------------------

Frame = tuple[np.ndarray, np.ndarray, np.ndarray]  # knee-frame (ml, si, ap), broadcastable


def _superellipsoid_sdf(
    q: Frame, centre: Sequence[float], radii: Sequence[float], exponent: int = 2
) -> np.ndarray:
    """First-order signed distance ``(F - 1) / |grad F|`` of ``F = (sum |u_i|^p)^(1/p)``,
    ``u_i = (q_i - c_i) / r_i``; exact on the surface, good within a few mm of it (which is
    all the shells need). An infinite radius drops the axis (an elliptic cylinder)."""
    power_sum = None
    grad_sum = None
    for q_i, c_i, r_i in zip(q, centre, radii):
        if math.isinf(r_i):
            continue
        u = (q_i - np.float32(c_i)) * np.float32(1.0 / r_i)
        u2 = u * u
        up = u2 if exponent == 2 else u2 * u2 if exponent == 4 else np.abs(u) ** exponent
        # |dF^p/du_i| / r_i up to the common factor p: |u|^(p-1) / r_i, squared
        g = (u2 if exponent == 2 else u2 * u2 * u2 if exponent == 4
             else np.abs(u) ** (2 * exponent - 2)) * np.float32(1.0 / (r_i * r_i))
        power_sum = up if power_sum is None else power_sum + up
        grad_sum = g if grad_sum is None else grad_sum + g
    assert power_sum is not None and grad_sum is not None, "shape without axes"
    # (F - 1) F^(p-1) / sqrt(sum |u_i|^(2p-2) / r_i^2)
    if exponent == 2:
        f = np.sqrt(power_sum)
        f_pm1 = f
    elif exponent == 4:
        f = np.sqrt(np.sqrt(power_sum))
        f_pm1 = f * f * f
    else:
        f = power_sum ** np.float32(1.0 / exponent)
        f_pm1 = f ** np.float32(exponent - 1)
    return (f - 1.0) * f_pm1 / np.sqrt(grad_sum + np.float32(1e-12))


def _condyle_sdf(q: Frame, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Condyle: elliptic in the sagittal (si, ap) plane, flat-bottomed across ml:
    ``F = (u_ml^4 + (u_si^2 + u_ap^2)^2)^(1/4)``, first-order distance as above."""
    u0, u1, u2 = ((q_i - np.float32(c_i)) * np.float32(1.0 / r_i)
                  for q_i, c_i, r_i in zip(q, centre, radii))
    u0_2 = u0 * u0
    w = u1 * u1 + u2 * u2
    f = np.sqrt(np.sqrt(u0_2 * u0_2 + w * w))
    f3 = f * f * f
    # gradient of F^4 / 4 in mm: (u0^3 / r0, w u1 / r1, w u2 / r2)
    grad_sq = (u0_2 * u0_2 * u0_2 * np.float32(1.0 / radii[0] ** 2)
               + w * w * (u1 * u1 * np.float32(1.0 / radii[1] ** 2)
                          + u2 * u2 * np.float32(1.0 / radii[2] ** 2)))
    return (f - 1.0) * f3 / np.sqrt(grad_sq + np.float32(1e-12))


def _smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (blend radius ``k`` mm): fuses bone parts without creases."""
    h = np.clip(0.5 + (0.5 / k) * (b - a), 0.0, 1.0)
    return b + (a - b) * h - np.float32(k) * h * (1.0 - h)


def _rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about the three array axes (in order 0, 1, 2), composed R0 @ R1 @ R2."""
    a, b, c = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    r0 = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    r1 = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    r2 = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return r0 @ r1 @ r2


def anatomy_scale(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Isotropic factor from default-field-of-view millimetres to this grid's millimetres."""
    return min(n * s / d for n, s, d in zip(shape, spacing, DEFAULT_FOV_MM))


def _to_knee_frame(
    anatomy: KneeAnatomy, points_mm: Sequence[np.ndarray], scale: float
) -> Frame:
    """Knee-frame coordinates ``q = R^T (p - t) / scale`` (then the ml mirror of a left knee).

    ``points_mm``: three mutually broadcastable arrays of positions relative to the
    field-of-view centre in array order (1-D profiles reshaped per axis, or point lists), so
    a regular grid costs two additions per output axis.
    """
    rotation = _rotation_matrix(anatomy.rotation_deg)
    t = np.asarray(anatomy.translation_mm, dtype=np.float64) * scale
    coords = []
    for k in range(3):
        terms = [np.float32(rotation[j, k] / scale)
                 * (np.asarray(points_mm[j], dtype=np.float32) - np.float32(t[j]))
                 for j in range(3)]
        coords.append(terms[0] + terms[1] + terms[2])
    if anatomy.left_knee:
        coords[0] = -coords[0]
    return coords[0], coords[1], coords[2]


def _centred_axes(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Voxel-centre positions (mm) relative to the field-of-view centre, one 1-D array per axis."""
    return [(np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]


def _render_tissues(anatomy: KneeAnatomy, q: Frame) -> np.ndarray:
    """Tissue index of every point of the knee frame ``q`` (uint8, see the _TISSUE constants)."""
    a = anatomy
    ml, si, ap = q
    gap_half = 0.5 * a.joint_gap_mm

    # femur: two condyles, metaphysis and a capped shaft, fused by smooth unions
    condyle_bottom = -(gap_half + a.femoral_cartilage_mm)  # lowest femoral bone point
    condyles = []
    for index, side in enumerate((-1.0, 1.0)):
        r_ml, r_si, r_ap = a.condyle_radii_mm[index]
        centre = (side * a.condyle_ml_mm[index], condyle_bottom - r_si, a.condyle_ap_mm[index])
        condyles.append((centre, (r_ml, r_si, r_ap)))
    condyle_sdf = [_condyle_sdf(q, c, r) for c, r in condyles]
    meta_centre = (0.0, condyle_bottom - a.metaphysis_height_mm, a.metaphysis_ap_mm)
    metaphysis = _superellipsoid_sdf(q, meta_centre, a.metaphysis_radii_mm)
    shaft_radii = (a.femoral_shaft_radii_mm[0], math.inf, a.femoral_shaft_radii_mm[1])
    femoral_shaft = np.maximum(
        _superellipsoid_sdf(q, (0.0, 0.0, a.femoral_shaft_ap_mm), shaft_radii),
        si - np.float32(meta_centre[1]),  # capped: only above the metaphysis centre
    )
    femur = _smooth_union(condyle_sdf[0], condyle_sdf[1], a.femur_blend_mm)
    femur = _smooth_union(femur, metaphysis, a.femur_blend_mm)
    femur = _smooth_union(femur, femoral_shaft, a.femur_blend_mm)

    # tibia: flat-topped plateau (superellipsoid, exponent 4) and a capped shaft
    plateau_top = gap_half + 1.2 * a.tibial_cartilage_mm  # room for the thickest cartilage
    plateau_centre = (0.0, plateau_top + a.plateau_radii_mm[1], a.plateau_ap_mm)
    plateau = _superellipsoid_sdf(q, plateau_centre, a.plateau_radii_mm, exponent=4)
    tshaft_radii = (a.tibial_shaft_radii_mm[0], math.inf, a.tibial_shaft_radii_mm[1])
    tibial_shaft = np.maximum(
        _superellipsoid_sdf(q, (0.0, 0.0, a.tibial_shaft_ap_mm), tshaft_radii),
        np.float32(plateau_centre[1]) - si,  # only below the plateau centre
    )
    tibia = _smooth_union(plateau, tibial_shaft, a.tibia_blend_mm)

    # patella in front of the trochlea (its cartilage is bright but NOT labelled, as in OAI)
    meta_front = meta_centre[2] - a.metaphysis_radii_mm[2]
    patella_back = meta_front - a.femoral_cartilage_mm - 1.0 - a.patellar_cartilage_mm
    patella_centre = (
        a.patella_offset_mm[0],
        a.patella_offset_mm[1],
        patella_back - a.patella_radii_mm[2],
    )
    patella = _superellipsoid_sdf(q, patella_centre, a.patella_radii_mm)

    # femoral cartilage: shell over the weight-bearing and posterior condyle surfaces (not
    # their side walls facing the notch or the epicondyles) and over the trochlea
    shell = (femur >= 0) & (femur < a.femoral_cartilage_mm)
    condyle_centre_si = max(c[1] for c, _ in condyles)
    articular = si > np.float32(condyle_centre_si - 0.5 * max(r[1] for _, r in condyles))
    on_condyles = np.zeros(shell.shape, dtype=bool)
    for sdf, (centre, radii) in zip(condyle_sdf, condyles):
        on_condyles |= (sdf < a.femoral_cartilage_mm + 0.5) & (
            np.abs(ml - np.float32(centre[0])) < np.float32(0.85 * radii[0]))
    trochlea = (
        (metaphysis < a.femoral_cartilage_mm + 0.5)
        & (ap < np.float32(meta_centre[2] - 0.5 * a.metaphysis_radii_mm[2]))
        & (si > np.float32(meta_centre[1]))
        & (np.abs(ml) < np.float32(0.6 * a.metaphysis_radii_mm[0]))
    )
    femoral_cartilage = shell & ((on_condyles & articular) | trochlea)

    # tibial cartilage: two lens-shaped compartments on the plateau top, a bare gap between
    tibial_cartilage = np.zeros(tibia.shape, dtype=bool)
    on_top = (tibia >= 0) & (si < np.float32(plateau_centre[1]))
    for index, side in enumerate((-1.0, 1.0)):
        (d_ml, d_ap), (r_ml, r_ap) = a.compartment_offsets_mm[index], a.compartment_radii_mm[index]
        c_ml = side * (a.condyle_ml_mm[index] + d_ml)  # shifted outwards: wider central gap
        c_ap = a.condyle_ap_mm[index] + d_ap
        rho2 = ((ml - np.float32(c_ml)) / np.float32(r_ml)) ** 2 + (
            (ap - np.float32(c_ap)) / np.float32(r_ap)
        ) ** 2
        thickness = np.float32(a.tibial_cartilage_mm) * (0.6 + 0.6 * (1.0 - rho2))
        tibial_cartilage |= on_top & (rho2 < 1.0) & (tibia < thickness)

    patellar_cartilage = (patella >= 0) & (patella < a.patellar_cartilage_mm) & (
        ap > np.float32(patella_centre[2])
    )

    # soft tissue: skin cylinder with subcutaneous fat, joint fluid around the joint line
    patella_front = patella_centre[2] - a.patella_radii_mm[2]
    leg_ap = patella_front - a.prepatellar_mm + a.leg_radii_mm[1]
    leg = _superellipsoid_sdf(q, (0.0, 0.0, leg_ap), (a.leg_radii_mm[0], math.inf, a.leg_radii_mm[1]))
    effusion = _superellipsoid_sdf(q, (0.0, 0.0, 0.5 * (a.condyle_ap_mm[0] + a.condyle_ap_mm[1])),
                                   a.effusion_radii_mm)

    tissue = np.full(femur.shape, _AIR, dtype=np.uint8)
    tissue[leg < 0] = _FAT
    tissue[leg < -a.fat_mm] = _MUSCLE
    tissue[(effusion < 0) & (leg < 0)] = _FLUID
    tissue[patellar_cartilage] = _PATELLAR_CARTILAGE
    tissue[femoral_cartilage] = _FEMORAL_CARTILAGE
    tissue[tibial_cartilage] = _TIBIAL_CARTILAGE
    cortex = np.float32(-a.cortex_mm)
    for sdf, marrow_tissue, cortex_tissue in (
        (patella, _PATELLA_MARROW, _PATELLA_CORTEX),
        (tibia, _TIBIA_MARROW, _TIBIA_CORTEX),
        (femur, _FEMUR_MARROW, _FEMUR_CORTEX),
    ):
        tissue[sdf < 0] = cortex_tissue
        tissue[sdf < cortex] = marrow_tissue
    return tissue


# ----------------------------------------------------------------------------------------
# appearance
# ----------------------------------------------------------------------------------------


def _smooth_field(
    rng: np.random.Generator,
    axes_mm: Sequence[np.ndarray],
    wavelength_mm: tuple[float, float],
    rank: int = 4,
) -> np.ndarray:
    """Zero-mean, unit-std smooth random field: a sum of ``rank`` separable products of 1-D
    random cosine series (cheap: no full-size trigonometry)."""
    total = None
    for _ in range(rank):
        term = None
        for axis, x in enumerate(axes_mm):
            profile = np.zeros_like(x)
            for _ in range(3):
                wavelength = rng.uniform(*wavelength_mm)
                profile += rng.normal() * np.cos(2 * np.pi * x / wavelength + rng.uniform(0, 2 * np.pi))
            profile = profile.astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
            term = profile if term is None else term * profile
        total = term if total is None else total + term
    assert total is not None
    total = total - total.mean()
    return total / max(float(total.std()), 1e-6)


def _tissue_intensities(appearance: MRAppearance) -> np.ndarray:
    means = np.zeros(_NUM_TISSUES, dtype=np.float32)
    means[_AIR] = appearance.air
    means[_MUSCLE] = appearance.muscle
    means[_FAT] = appearance.fat
    means[_FLUID] = appearance.fluid
    means[[_FEMUR_MARROW, _TIBIA_MARROW, _PATELLA_MARROW]] = appearance.marrow
    means[[_FEMUR_CORTEX, _TIBIA_CORTEX, _PATELLA_CORTEX]] = appearance.cortex
    means[[_FEMORAL_CARTILAGE, _TIBIAL_CARTILAGE, _PATELLAR_CARTILAGE]] = appearance.cartilage
    return means


def _majority_labels(sub_labels: np.ndarray) -> np.ndarray:
    """(N, m) sub-sample labels -> (N,) label most sub-samples carry (ties: thinner class)."""
    num_labels = len(LABELS)
    counts = np.stack([(sub_labels == k).sum(axis=-1, dtype=np.int32) for k in range(num_labels)], -1)
    score = counts * num_labels + _TIE_PRIORITY
    return score.argmax(axis=-1).astype(np.uint8)


def _keep_largest_components(labels: np.ndarray, label: int, keep: int) -> None:
    """Zero all but the ``keep`` largest 6-connected components of ``label`` (in place).

    The anatomy makes each tibial compartment one piece; this removes the odd voxel-sized
    fragment that sampling a thin lens edge can leave, so the label has exactly two parts (a tie
    at the ``keep``-th place keeps every tied part: the rule of ``components`` in
    :func:`nnunet_shape.core.connected_components.largest_component_mask`).
    """
    from nnunet_shape.core.connected_components import largest_component_mask

    mask = labels == label
    labels[mask & ~largest_component_mask(mask, connectivity=6, backend="cc3d", components=keep)] = 0


def render_knee(
    anatomy: KneeAnatomy,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    supersampling: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom (deterministic in its arguments).

    Args:
        anatomy: from :func:`sample_anatomy`.
        shape: (Z, Y, X) array shape (ML, SI, AP).
        spacing: (Z, Y, X) voxel size in mm.
        supersampling: sub-samples per axis for partial volume (``>= 1``).
    Returns:
        image (Z, Y, X) float32, labels (Z, Y, X) uint8 with the values of :data:`LABELS`.
        Tissues are sampled at voxel centres; voxels at a tissue boundary (another tissue in
        their 26-neighbourhood) are resampled with ``supersampling**3`` sub-samples, the image
        averages them (partial volume) and the label is their majority.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(
            f"render_knee: need a 3-D shape and positive spacing, got shape={shape} "
            f"spacing={spacing}"
        )
    if supersampling < 1:
        raise ValueError(f"render_knee: supersampling must be >= 1, got {supersampling}")
    appearance = anatomy.appearance
    rng = np.random.default_rng(appearance.field_seed)

    scale = anatomy_scale(shape, spacing)
    axes = _centred_axes(shape, spacing)
    grid = [x.reshape([-1 if a == axis else 1 for a in range(3)]) for axis, x in enumerate(axes)]
    tissue = _render_tissues(anatomy, _to_knee_frame(anatomy, grid, scale))
    image = _tissue_intensities(appearance)[tissue]
    labels = _TISSUE_TO_LABEL[tissue]

    if supersampling > 1:
        # Partial volume where it matters: only voxels whose 26-neighbourhood holds another
        # tissue are split into supersampling**3 sub-samples (a structure thinner than a voxel
        # shows up as such a boundary, since its two sides differ).
        from scipy.ndimage import maximum_filter, minimum_filter

        boundary = maximum_filter(tissue, size=3, mode="nearest") != minimum_filter(
            tissue, size=3, mode="nearest")
        index = np.nonzero(boundary)
        offsets = (np.arange(supersampling) + 0.5) / supersampling - 0.5
        sub = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), 0).reshape(3, -1)
        points = [((index[a][:, None] + sub[a][None, :] - (n - 1) / 2.0) * s).astype(np.float32)
                  for a, (n, s) in enumerate(zip(shape, spacing))]  # (N, f**3) each
        sub_tissue = _render_tissues(anatomy, _to_knee_frame(anatomy, points, scale))
        image[index] = _tissue_intensities(appearance)[sub_tissue].mean(axis=-1)
        labels[index] = _majority_labels(_TISSUE_TO_LABEL[sub_tissue])
    _keep_largest_components(labels, LABELS["tibial_cartilage"], keep=2)

    # tissue texture (muscle fibres, trabecular marrow) with ~4-12 mm wavelength
    texture = _smooth_field(rng, axes, (4.0 * scale, 12.0 * scale))
    image *= 1.0 + np.float32(appearance.texture_amplitude) * texture

    # smooth multiplicative bias field (coil sensitivity), wavelengths ~1-3 fields of view
    fov = max(n * s for n, s in zip(shape, spacing))
    bias = np.exp(np.float32(appearance.bias_amplitude) * _smooth_field(rng, axes, (fov, 3 * fov), rank=2))
    image *= bias
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
    sigma = np.float32(appearance.noise_sigma)
    real = image + sigma * rng.standard_normal(shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
    image = np.sqrt(real * real + imaginary * imaginary) * np.float32(appearance.gain)
    return image.astype(np.float32), labels


def generate_case(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One phantom from an integer seed: ``(image float32, labels uint8, spacing)``."""
    anatomy = sample_anatomy(np.random.default_rng(seed))
    image, labels = render_knee(anatomy, shape, spacing)
    return image, labels, tuple(float(s) for s in spacing)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------
# nnU-Net raw dataset
# ----------------------------------------------------------------------------------------


def _write_nifti(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK order is (x, y, z)
    # world (0, 0, 0) at the centre of the field of view, identity direction
    image.SetOrigin(tuple(-0.5 * (n - 1) * s for n, s in zip(array.shape[::-1], spacing[::-1])))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    write_image_atomic(image, path)


def _write_case(job: tuple[str, str, str, int, tuple[int, ...], tuple[float, ...]]) -> dict:
    """One case of :func:`~nnunet_shape.demo.dataset_writer.write_cases`: render and write it,
    return its record (split, seed, anatomy)."""
    folder, case_id, split, seed, shape, spacing = job
    anatomy = sample_anatomy(np.random.default_rng(seed))
    image, labels = render_knee(anatomy, shape, spacing)
    images, label_dir = SPLIT_FOLDERS[split]
    _write_nifti(image, spacing, Path(folder) / images / f"{case_id}_0000.nii.gz")
    _write_nifti(labels, spacing, Path(folder) / label_dir / f"{case_id}.nii.gz")
    return {"split": split, "seed": seed, "anatomy": asdict(anatomy)}


def write_phantom_dataset(
    raw_dir: str | os.PathLike,
    n_train: int = 20,
    n_test: int = 5,
    seed: int = 0,
    dataset_id: int = 701,
    name: str = "KneePhantom",
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    num_processes: int = 1,
) -> Path:
    """Write ``raw_dir/Dataset{id:03d}_{name}`` as an nnU-Net raw dataset.

    Layout: ``dataset.json``, ``imagesTr/knee_XXX_0000.nii.gz``, ``labelsTr/knee_XXX.nii.gz``,
    ``imagesTs``/``labelsTs`` (test cases numbered after the training cases) and
    ``phantom_parameters.json`` (generator settings, every case's seed and anatomy).
    Returns the dataset folder.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if n_train < 1 or n_test < 0:
        raise ValueError(
            f"write_phantom_dataset: need n_train >= 1 and n_test >= 0, got "
            f"n_train={n_train}, n_test={n_test}"
        )
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"write_phantom_dataset: dataset_id must be 1..999, got {dataset_id}")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    folder = Path(raw_dir) / f"Dataset{dataset_id:03d}_{name}"
    make_split_folders(folder)
    cases = write_cases(folder, "knee", n_train, n_test, seed, _write_case, (shape, spacing), num_processes)

    generate_dataset_json(
        str(folder),
        channel_names={0: "MRI"},
        labels=dict(LABELS),
        num_training_cases=n_train,
        file_ending=".nii.gz",
        dataset_name=name,
        description=(
            "Synthetic sagittal DESS-like knee MR phantoms (nnunet_shape.demo.phantoms): femur, "
            "femoral cartilage, tibia, tibial cartilage (two compartments, one label)."
        ),
        reference="nnunet-shape synthetic phantom generator",
        license="CC0 (synthetic data)",
        converted_by="nnunet-shape phantoms",
    )
    parameters = {
        "generator": "nnunet_shape.demo.phantoms",
        "seed": seed,
        "shape_zyx": list(shape),
        "spacing_zyx_mm": list(spacing),
        "axis_order": "array (z, y, x) = (medial-lateral, superior-inferior, anterior-posterior)",
        "anatomy_scale": anatomy_scale(shape, spacing),
        "cases": cases,
    }
    write_json_atomic(folder / "phantom_parameters.json", parameters)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """``nnunet-shape phantoms -o RAW_DIR [-n N_TRAIN] [--n-test N] [--seed S] [-d ID] ...``"""
    parser = argparse.ArgumentParser(
        prog="nnunet-shape phantoms",
        description="Write synthetic knee MR phantoms as an nnU-Net raw dataset "
        "(RAW_DIR/DatasetXXX_NAME).",
    )
    add_dataset_writer_arguments(parser, dataset_id=701, n_train=20, n_test=5)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        default=list(DEFAULT_SHAPE), help="array shape (default 40 64 64)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        default=list(DEFAULT_SPACING), help="voxel spacing in mm (default 1.4 0.7 0.7)")
    add_name_and_processes_arguments(parser, "KneePhantom")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    folder = write_phantom_dataset(
        args.output, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
        dataset_id=args.dataset_id, name=args.name, shape=args.shape, spacing=args.spacing,
        num_processes=args.num_processes,
    )
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
