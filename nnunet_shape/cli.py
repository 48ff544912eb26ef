"""The ``nnunet-shape`` command: one sub-command per feature.

Each sub-command lives in the module that owns the feature and exposes ``main(argv) -> int``;
this file only dispatches, and imports lazily so that ``nnunet-shape trainers-dir`` stays fast
(no torch, no nnU-Net import). Every sub-command shares one error path
(:func:`nnunet_shape.errors.run_console`): bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from nnunet_shape.errors import run_console

# the folder nnUNet_extTrainer points at: re-export modules only (see its __init__)
TRAINERS_PACKAGE = "nnunet_shape.nnunet.trainers"

# sub-command -> ("module", "function", one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "trainers-dir": ("nnunet_shape.cli", "trainers_dir_main",
                     "print the folder to put in nnUNet_extTrainer"),
    "phantoms": ("nnunet_shape.demo.phantoms", "main",
                 "write synthetic knee phantoms as an nnU-Net raw dataset"),
    "brains": ("nnunet_shape.demo.brains", "main", "write deformed MNI brains (gray/white matter) as a raw dataset"),
    "determine-postprocessing": ("nnunet_shape.nnunet.postprocessing", "determine_main",
                                 "decide largest-component postprocessing from cross-validation"),
    "apply-postprocessing": ("nnunet_shape.nnunet.postprocessing", "apply_main",
                             "apply a postprocessing.pkl to a prediction folder (GPU or CPU)"),
    "predict": ("nnunet_shape.nnunet.predict", "main",
                "nnUNetv2_predict with argmax and postprocessing on the device (--postprocessing)"),
    "evaluate": ("nnunet_shape.nnunet.evaluate", "main",
                 "Dice per class and descriptor errors of a prediction folder"),
    "baselines": ("nnunet_shape.nnunet.baselines", "main",
                  "no-image baselines (atlas, descriptor ellipsoids) from labelsTr for imagesTs"),
    "placeholder-labels": ("nnunet_shape.nnunet.label_free", "placeholder_labels_main",
                           "write placeholder labelsTr for a label-free dataset"),
    "export-descriptors": ("nnunet_shape.descriptor_files.cli", "main",
                           "per-case descriptor JSON/CSV (same as nnUNetv2_export_descriptors)"),
    "simulate-points": ("nnunet_shape.nnunet.weak_annotations", "simulate_points_main",
                        "simulate N surface points per class from labelsTr into pointsTr (paper 003)"),
    "fit-templates": ("nnunet_shape.nnunet.weak_annotations", "fit_templates_main",
                      "deform a sphere to each class's points: rough labels in templatesTr (paper 003)"),
    "simulate-slices": ("nnunet_shape.nnunet.sparse_slices", "simulate_slices_main",
                        "sparse-slice baseline: K labelled slices per plane, the rest nnU-Net's ignore label"),
    "population-prior": ("nnunet_shape.nnunet.population_prior", "main",
                         "learn a population prior file (ranges and relations, anatomical frame) from labelsTr"),
    "click-bounds": ("nnunet_shape.nnunet.click_bounds", "main",
                     "per-case descriptor bounds (kind prior files) from surface points in pointsTr"),
}


def trainers_directory() -> str:
    """Absolute path of the shipped trainer folder (the value for ``nnUNet_extTrainer``).

    The folder is the package ``nnunet_shape.nnunet.trainers``; located through the import
    system, without importing it, so the same code answers for editable and wheel installs.
    """
    import importlib.util
    import os

    spec = importlib.util.find_spec(TRAINERS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{TRAINERS_PACKAGE} is not installed: reinstall nnunet-shape "
                           "(pip install -e . or pip install .)")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def trainers_dir_main(argv: Sequence[str]) -> int:
    print(trainers_directory())
    return 0


def _usage() -> str:
    lines = ["usage: nnunet-shape <command> [options]", "", "commands:"]
    lines += [f"  {name:<26} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"nnunet-shape: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = SUBCOMMANDS[name]

    def run() -> int:
        function: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), function_name)
        return int(function(rest) or 0)

    # bad input (UserError, OSError): one line on stderr and exit code 2; anything else is a bug
    # and keeps its traceback
    return run_console(f"nnunet-shape {name}", run)


if __name__ == "__main__":
    sys.exit(main())
