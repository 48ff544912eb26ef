"""Shared fixtures: one tiny planned nnU-Net dataset per test session, and the device to test on.

``--device cuda`` (default ``cpu``) runs the device-parametrised tests -- those that take the
``device`` fixture -- on that device and deselects every other test (``make test-gpu``). Without a
GPU they are skipped with a message saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e2e_helpers import nnunet_env, run_cli, write_tiny_dataset


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device", default="cpu",
        help="torch device for the tests taking the `device` fixture, e.g. cpu (default), cuda, cuda:1; "
             "anything but cpu runs only those tests")


def requested_device(config: pytest.Config) -> torch.device:
    """The ``--device`` option as a torch.device (a usage error names the value given)."""
    value = config.getoption("--device")
    try:
        return torch.device(value)
    except RuntimeError:
        raise pytest.UsageError(f"--device {value!r}: expected a torch device such as cpu, cuda or cuda:1") from None


def device_unavailable_reason(device: torch.device) -> str | None:
    """Why tests cannot run on ``device`` (None: they can)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return (f"--device {device}: no CUDA device here (torch {torch.__version__}, "
                    f"torch.cuda.is_available() is False); run `make test-gpu` on a machine with a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: MPS is not available here"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if requested_device(config).type == "cpu":
        return
    selected = [item for item in items if "device" in getattr(item, "fixturenames", ())]
    deselected = [item for item in items if "device" not in getattr(item, "fixturenames", ())]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The device of ``--device`` (default cpu); skips the test when that device is absent."""
    chosen = requested_device(pytestconfig)
    reason = device_unavailable_reason(chosen)
    if reason is not None:
        pytest.skip(reason)
    return chosen


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
