"""nnunet-shape: nnU-Net v2 trained from shape descriptors instead of voxel labels.

Layers, imported one way only (a lower layer never imports a higher one):

* ``nnunet_shape.core`` -- pure torch/numpy maths (descriptors, barrier, bounds, priors, loss,
  geometry of target transforms, connected components); never imports nnunetv2.
* ``nnunet_shape.network`` -- the STD/EXP two-stream network (dynamic-network-architectures).
* ``nnunet_shape.descriptor_files`` -- the per-case descriptor JSON format, both ways.
* ``nnunet_shape.nnunet`` -- everything that imports nnunetv2: trainers, predict, evaluate,
  postprocessing, label-free datasets.
* ``nnunet_shape.demo`` -- ``make demo`` on synthetic knee phantoms.

The public core API is re-exported here, lazily, so that ``import nnunet_shape`` (and
``nnunet-shape trainers-dir``) does not import torch::

    from nnunet_shape import volume, centroid, spread, surface, ShapeDescriptorLoss
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC_API: dict[str, str] = {
    **dict.fromkeys(
        ("volume", "centroid", "covariance", "spread", "surface", "principal_axes",
         "elongation", "flatness", "class_ratio", "compute_descriptors", "descriptors_from_labels",
         "DESCRIPTOR_NAMES"),
        "nnunet_shape.core.descriptors",
    ),
    **dict.fromkeys(("extended_log_barrier", "ExtendedLogBarrier", "BarrierSchedule"),
                    "nnunet_shape.core.barrier"),
    **dict.fromkeys(("DescriptorBounds", "bounds_from_targets"), "nnunet_shape.core.bounds"),
    **dict.fromkeys(("RatioPrior", "EqualCentroidPrior"), "nnunet_shape.core.priors"),
    **dict.fromkeys(("ShapeDescriptorLoss", "shape_descriptor_loss", "ShapeLossResult"),
                    "nnunet_shape.core.losses"),
}

__all__ = ["__version__", *_PUBLIC_API]


def __getattr__(name: str) -> Any:
    module = _PUBLIC_API.get(name)
    if module is None:
        raise AttributeError(f"module 'nnunet_shape' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC_API))
