"""Shared by the Weak-Net tests: the tiny planned dataset with fitted templates, and wrong labels."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

DATASET = "Dataset701_Tiny"


@pytest.fixture(scope="module", name="with_templates")
def with_templates_fixture(planned):
    """The session's Dataset701_Tiny with simulated points and fitted templates (templatesTr).

    Import ``with_templates_fixture`` into a test module to use it as ``with_templates``."""
    from nnunet_shape.cli import main

    root, env = planned
    raw = root / "nnUNet_raw" / DATASET
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_raw", str(root / "nnUNet_raw"))
        if not (raw / "templatesTr").is_dir():
            assert main(["simulate-points", "-d", "701", "-n", "12", "--seed", "0"]) == 0
            assert main(["fit-templates", "-d", "701"]) == 0
    return root, env


def template_array(root: Path, case: str) -> np.ndarray:
    """The fitted template of ``case`` (array order z, y, x)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(root / "nnUNet_raw" / DATASET / "templatesTr" / f"{case}.nii.gz")))


def zero_image_like(path: Path) -> None:
    """Overwrite the label map at ``path`` with zeros of its own geometry."""
    image = sitk.ReadImage(str(path))
    zeros = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(image)))
    zeros.CopyInformation(image)
    sitk.WriteImage(zeros, str(path))


@contextlib.contextmanager
def labels_replaced(root: Path, cases: Sequence[str], preprocessed: Path) -> Iterator[None]:
    """Within the block, ``labelsTr`` of ``cases`` holds zeros and nnU-Net's preprocessed labels
    (``*_seg.b2nd`` of the ``preprocessed`` folder) are gone; both are restored afterwards."""
    labels_dir = root / "nnUNet_raw" / DATASET / "labelsTr"
    backups: dict[Path, bytes] = {}
    try:
        for case in cases:
            path = labels_dir / f"{case}.nii.gz"
            backups[path] = path.read_bytes()
            zero_image_like(path)
        for source in sorted(preprocessed.glob("*_seg.b2nd")):
            backups[source] = source.read_bytes()
            source.unlink()
        yield
    finally:
        for path, content in backups.items():
            path.write_bytes(content)


def predict_test_case(root: Path, env: dict, trainer: str) -> None:
    """``nnUNetv2_predict`` of the tiny dataset's one test case with ``trainer``'s fold 0: one
    prediction, on the test image's grid, with labels of the dataset only."""
    from e2e_helpers import run_cli

    predictions = root / f"pred_{trainer}"
    run_cli(["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / DATASET / "imagesTs"), "-o", str(predictions),
             "-d", "701", "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu",
             "-npp", "1", "-nps", "1", "--disable_tta"], env)
    predicted = sorted(predictions.glob("*.nii.gz"))
    assert [p.name for p in predicted] == ["case_005.nii.gz"]
    image = sitk.ReadImage(str(root / "nnUNet_raw" / DATASET / "imagesTs" / "case_005_0000.nii.gz"))
    seg = sitk.ReadImage(str(predicted[0]))
    assert seg.GetSize() == image.GetSize() and np.allclose(seg.GetOrigin(), image.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}
