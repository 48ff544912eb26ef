"""Seeds: the trainer attribute ``seed`` and ``nnUNetShape_seed`` make a training run repeat bit for bit."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import make_trainer

from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors
from nnunet_shape.nnunet.training.variants import DebugSchedule
from nnunet_shape.nnunet.training.whole_scan import (
    SEED_ENV,
    derive_seed,
    parse_seed,
    seed_everything,
)


class _SeededDebug(DebugSchedule, nnUNetTrainerShapeDescriptors):
    seed = 5


class _UnseededDebug(DebugSchedule, nnUNetTrainerShapeDescriptors):
    pass


@pytest.mark.parametrize("value, expected", [("3", 3), (" 0 ", 0), ("none", None), ("", None), ("NONE", None),
                                             (str(2 ** 32 - 1), 2 ** 32 - 1)])
def test_parse_seed(value, expected):
    assert parse_seed(value) == expected


@pytest.mark.parametrize("value, match", [("x", "non-negative integer"), ("1.5", "non-negative integer"),
                                          ("-1", r"0\.\.4294967295"), (str(2 ** 32), r"0\.\.4294967295")])
def test_parse_seed_errors_name_the_variable_and_the_value(value, match):
    with pytest.raises(ValueError, match=match) as error:
        parse_seed(value)
    assert f"{SEED_ENV}=" in str(error.value) and value in str(error.value)


def test_derived_seeds_repeat_and_differ_between_streams():
    assert derive_seed(5, 0) == derive_seed(5, 0)
    seeds = {derive_seed(5, 0), derive_seed(5, 1), derive_seed(6, 0), derive_seed(5, 0, 1)}
    assert len(seeds) == 4 and all(0 <= s < 2 ** 32 for s in seeds)


def test_seed_everything_seeds_python_numpy_and_torch():
    draws = []
    for _ in range(2):
        seed_everything(11)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]


@pytest.mark.parametrize("trainer_class, env_value, expected", [
    (_UnseededDebug, None, None),  # nnU-Net's behaviour
    (_SeededDebug, None, 5),  # the class attribute
    (_UnseededDebug, "7", 7),  # the environment seeds one run
    (_SeededDebug, "7", 7),  # ... and wins over the attribute
    (_SeededDebug, "none", None),  # ... also to switch seeding off
])
def test_environment_overrides_the_class_attribute(planned, monkeypatch, trainer_class, env_value, expected):
    root, _ = planned
    if env_value is None:
        monkeypatch.delenv(SEED_ENV, raising=False)
    else:
        monkeypatch.setenv(SEED_ENV, env_value)
    trainer = make_trainer(root, trainer_class, monkeypatch)
    assert trainer.seed_used == expected
    log = Path(trainer.log_file).read_text()
    assert (f"seed: {expected} (from" in log) if expected is not None else ("seed: none" in log)


def _train(root: Path, monkeypatch, seed: str, workers: int = 0) -> tuple[dict, dict, dict]:
    """(initial weights, final weights, checkpoint_final) of one seeded `_debug` training."""
    monkeypatch.setenv(SEED_ENV, seed)
    trainer = make_trainer(root, _UnseededDebug, monkeypatch)
    monkeypatch.setenv("nnUNet_n_proc_DA", str(workers))
    trainer.initialize()
    initial = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    trainer.run_training()
    final = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    checkpoint = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    return initial, final, checkpoint


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# in-process augmentation only: with nnUNet_n_proc_DA > 0 nnU-Net's NonDetMultiThreadedAugmenter
# hands over batches in arrival order, so a seeded run is not bit-identical there (the trainer
# logs a warning; docs/method.md, "Seeds")
@pytest.mark.parametrize("workers", [0], ids=["in-process"])
def test_same_seed_gives_identical_weights_and_another_seed_differs(planned, monkeypatch, workers):
    root, _ = planned
    initial_a, final_a, checkpoint = _train(root, monkeypatch, "3", workers)
    initial_b, final_b, _ = _train(root, monkeypatch, "3", workers)
    assert _identical(initial_a, initial_b)
    assert not _identical(initial_a, final_a)  # training changed the weights ...
    assert _identical(final_a, final_b)  # ... in exactly the same way twice
    # the seed is stored in the checkpoint (nnU-Net's logging dict, one value per epoch)
    assert checkpoint["logging"]["seed"] == [3]
    if workers == 0:
        initial_c, final_c, _ = _train(root, monkeypatch, "4", workers)
        assert not _identical(initial_a, initial_c) and not _identical(final_a, final_c)
