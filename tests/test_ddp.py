"""DistributedDataParallel (``nnUNetv2_train ... -num_gpus N``) on CPU: gloo, two processes.

The STD/EXP network and the descriptor loss train for two steps on two ranks, one case each; the
gradients (DDP averages them over ranks) and the updated weights must equal one process
training on the concatenated batch of two cases. This holds because the descriptor loss is per
case and ``reduction="mean"`` averages over the batch, the ranks hold batches of equal size, and
nnU-Net's InstanceNorm is per case (no cross-batch statistics): mean over ranks of per-rank batch
means = mean over the global batch. With ``reduction="sum"`` DDP's averaging would divide the
gradient by the world size.

Without deep supervision the EXP decoder's 1x1 heads are never evaluated. DDP as nnU-Net builds
it (``find_unused_parameters=False``) then fails in the second step, waiting for gradients that
never come (nnU-Net issues #2070, #2571); the whole-scan trainers freeze those heads
(``freeze_unused_heads``), which the test checks both ways.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from e2e_helpers import make_trainer
from test_network import ISO_3D, build

import nnunet_shape.nnunet.training.whole_scan as whole_scan
from nnunet_shape.core.losses import ShapeDescriptorLoss
from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors
from nnunet_shape.nnunet.training.whole_scan import WholeCaseDataLoader, freeze_unused_heads

WORLD_SIZE = 2
STEPS = 2
SPATIAL = (8, 8, 12)
LEARNING_RATE = 0.1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image (2, 1, *S), labels (2, 1, *S), spacing (2, 3)) of one step, float64, same on every rank."""
    generator = torch.Generator().manual_seed(100 + step)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in SPATIAL], indexing="ij")
    labels = torch.zeros(WORLD_SIZE, 1, *SPATIAL, dtype=torch.long)
    for case in range(WORLD_SIZE):
        centre = torch.tensor(SPATIAL, dtype=torch.float64) / 2 + torch.rand(3, generator=generator) * 2 - 1
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, (2.5, 3.0, 4.0))) <= 1.0
        labels[case, 0][inside] = 1
        labels[case, 0, :, :2][inside[:, :2]] = 2  # a second class in one part of the blob
    image = labels.to(torch.float64) + 0.3 * torch.randn(labels.shape, generator=generator, dtype=torch.float64)
    spacing = torch.tensor([[2.0, 1.0, 1.0], [1.5, 1.0, 0.8]], dtype=torch.float64)
    return image, labels, spacing


def make_network(freeze: bool) -> torch.nn.Module:
    """The same initial STD/EXP network (no deep supervision) in every process, float64."""
    torch.manual_seed(0)
    network = build(ISO_3D, deep_supervision=False).double()
    if freeze:
        freeze_unused_heads(network)
    return network


def descriptor_loss() -> ShapeDescriptorLoss:
    return ShapeDescriptorLoss(descriptors=("volume", "centroid", "spread"), reduction="mean")


def train_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_function: ShapeDescriptorLoss,
               image: torch.Tensor, labels: torch.Tensor, spacing: torch.Tensor) -> dict[str, torch.Tensor]:
    """One step as the descriptor trainers take it; returns the gradients (before the update)."""
    optimizer.zero_grad(set_to_none=True)
    probabilities = torch.softmax(network(image), 1)
    loss_function(probabilities, labels, spacing).backward()
    grads = {name.removeprefix("module."): p.grad.detach().clone()
             for name, p in network.named_parameters() if p.grad is not None}
    optimizer.step()
    return grads


def _worker(rank: int, port: int, folder: str) -> None:
    """One DDP rank: two steps on its case of each global batch; writes grads and weights."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        network = torch.nn.parallel.DistributedDataParallel(make_network(freeze=True))
        optimizer = torch.optim.SGD(network.parameters(), lr=LEARNING_RATE)
        loss_function = descriptor_loss()
        record: dict[str, object] = {"grads": []}
        for step in range(STEPS):
            image, labels, spacing = global_batch(step)
            part = slice(rank, rank + 1)
            record["grads"].append(train_step(network, optimizer, loss_function, image[part], labels[part],
                                              spacing[part]))
        record["weights"] = {name: p.detach().clone() for name, p in network.module.named_parameters()}

        # the same without freezing the unused heads: DDP refuses the second step
        unfrozen = torch.nn.parallel.DistributedDataParallel(make_network(freeze=False))
        optimizer = torch.optim.SGD(unfrozen.parameters(), lr=LEARNING_RATE)
        try:
            for step in range(STEPS):
                image, labels, spacing = global_batch(step)
                train_step(unfrozen, optimizer, loss_function, image[rank:rank + 1], labels[rank:rank + 1],
                           spacing[rank:rank + 1])
            record["unfrozen_error"] = None
        except RuntimeError as error:
            record["unfrozen_error"] = str(error)

        # the descriptor trainers' epoch-end statistics see the cases of every rank
        trainer = SimpleNamespace(is_ddp=True, descriptors=("volume",), _satisfaction_names=lambda: ("volume",))
        outputs = [{"satisfied_volume": np.array([[-1, rank, step]], dtype=np.int8),
                    "hard_satisfied_volume": np.array([[-1, rank, 1 - step]], dtype=np.int8)} for step in range(STEPS)]
        record["gathered"] = {key: value.tolist()
                              for key, value in nnUNetTrainerShapeDescriptors._gathered_codes(trainer, outputs).items()}
        torch.save(record, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ddp_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    records = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]

    network = make_network(freeze=True)
    optimizer = torch.optim.SGD(network.parameters(), lr=LEARNING_RATE)
    loss_function = descriptor_loss()
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert trainable and all(not name.startswith("decoder.seg_layers") for name in trainable)
    for step in range(STEPS):
        reference = train_step(network, optimizer, loss_function, *global_batch(step))
        # every trainable parameter gets a gradient: nothing for DDP to wait for
        assert reference.keys() == trainable
        for rank, record in enumerate(records):
            grads = record["grads"][step]
            assert grads.keys() == trainable, (rank, step)
            for name in trainable:
                torch.testing.assert_close(grads[name], reference[name], rtol=1e-9, atol=1e-12,
                                           msg=f"rank {rank}, step {step}, {name}")
    for rank, record in enumerate(records):
        for name, value in network.named_parameters():
            torch.testing.assert_close(record["weights"][name], value.detach(), rtol=1e-9, atol=1e-12,
                                       msg=f"rank {rank} weights {name}")
        error = record["unfrozen_error"]
        assert error is not None and "not used in producing loss" in error, error
        # rank 0's cases, then rank 1's, on every rank
        assert record["gathered"]["satisfied_volume"] == [[-1, 0, 0], [-1, 0, 1], [-1, 1, 0], [-1, 1, 1]]
        assert record["gathered"]["hard_satisfied_volume"] == [[-1, 0, 1], [-1, 0, 0], [-1, 1, 1], [-1, 1, 0]]


def test_descriptor_trainer_gives_every_trainable_parameter_a_gradient(planned, monkeypatch):
    """What DDP needs of a trainer (find_unused_parameters=False): after a train_step every
    trainable parameter has a gradient; the heads unused without deep supervision are frozen."""
    root, _ = planned
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch)
    trainer.initialize()
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    patch = trainer.configuration_manager.patch_size
    trainer.train_step(next(WholeCaseDataLoader(dataset_tr, 2, patch, patch, trainer.label_manager, transforms=None)))
    parameters = dict(trainer.network.named_parameters())
    frozen = {name for name, p in parameters.items() if not p.requires_grad}
    assert frozen and frozen == {name for name in parameters if name.startswith("decoder.seg_layers.")}
    assert {name for name, p in parameters.items() if p.grad is not None} == set(parameters) - frozen


def test_freeze_unused_heads_only_without_deep_supervision():
    with_heads = build(ISO_3D, deep_supervision=True)
    assert freeze_unused_heads(with_heads) == [] and all(p.requires_grad for p in with_heads.parameters())
    without = build(ISO_3D, deep_supervision=False)
    frozen = freeze_unused_heads(without)
    assert frozen == [f"decoder.seg_layers.{i}.{kind}" for i in range(len(ISO_3D) - 2) for kind in ("weight", "bias")]
    assert {n for n, p in without.named_parameters() if not p.requires_grad} == set(frozen)
    without.load_state_dict(with_heads.state_dict(), strict=True)  # checkpoints still load both ways


def test_global_batch_is_the_per_gpu_batch_times_the_ranks(planned, monkeypatch):
    """nnU-Net splits the plans' batch over the DDP ranks and refuses fewer cases than ranks; the
    memory budget is per GPU, so with N ranks the plans get N times the per-GPU batch."""
    root, _ = planned
    monkeypatch.setenv("nnUNet_preprocessed", str(root / "nnUNet_preprocessed"))
    plans = json.loads((root / "nnUNet_preprocessed" / "Dataset701_Tiny" / "nnUNetPlans.json").read_text())
    single = nnUNetTrainerShapeDescriptors._plans_for_whole_scan(copy.deepcopy(plans), "3d_fullres")
    monkeypatch.setattr(whole_scan, "ddp_world_size", lambda: 3)
    three = nnUNetTrainerShapeDescriptors._plans_for_whole_scan(copy.deepcopy(plans), "3d_fullres")
    per_gpu = single["configurations"]["3d_fullres"]["batch_size"]
    assert per_gpu >= 1 and three["configurations"]["3d_fullres"]["batch_size"] == 3 * per_gpu
