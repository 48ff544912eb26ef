"""Shared fixtures: one tiny planned nnU-Net dataset per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_helpers import nnunet_env, run_cli, write_tiny_dataset


@pytest.fixture(scope="session")
def planned(tmp_path_factory) -> tuple[Path, dict]:
    """Dataset701_Tiny in nnUNet_raw, planned and preprocessed for 3d_fullres and 2d.

    Returns the root folder (holding nnUNet_raw, nnUNet_preprocessed, nnUNet_results) and the
    environment for nnU-Net's console scripts.
    """
    root = tmp_path_factory.mktemp("nnunet")
    write_tiny_dataset(root / "nnUNet_raw")
    env = nnunet_env(root)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "701", "-c", "3d_fullres", "2d", "-np", "1",
             "--verify_dataset_integrity"], env)
    return root, env
