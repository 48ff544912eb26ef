"""torch.compile of the STD/EXP network: same outputs and gradients as eager, checkpointing included.

nnU-Net compiles the network by default on CUDA (``nnUNet_compile``). Here the inductor backend
runs on CPU (it generates C++ and compiles it with the machine's C compiler), in float64 so that
"the same" means agreement to ~1e-12 rather than float32 rounding noise; ``benchmarks/gpu_check.py``
repeats the check on CUDA (triton kernels, bf16 autocast).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from e2e_helpers import make_trainer
from test_network import ISO_3D, _outputs_and_grads, build
from torch._dynamo import OptimizedModule

from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="torch.compile's inductor backend needs a C compiler (cc or gcc) on CPU")


def _strip_compile_prefix(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names of a compiled module (``_orig_mod.x``) as those of the eager one (``x``)."""
    return {name.removeprefix("_orig_mod."): value for name, value in grads.items()}


@pytest.mark.parametrize("checkpoint_full_resolution", [False, True], ids=["concat-recompute", "full-resolution"])
def test_compiled_std_exp_gives_eager_outputs_and_gradients(checkpoint_full_resolution: bool) -> None:
    # both variants checkpoint: the concatenations are always recomputed in backward
    # (stacked_blocks_on_concat), and checkpoint_full_resolution nests a second checkpoint around them
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = build(ISO_3D, checkpoint_full_resolution=checkpoint_full_resolution).double()
    compiled = torch.compile(eager, backend="inductor")
    x = torch.randn(2, 1, 8, 8, 12, dtype=torch.float64)

    eager_outputs, eager_grads = _outputs_and_grads(eager, x)
    compiled_outputs, compiled_grads = _outputs_and_grads(compiled, x)
    compiled_grads = _strip_compile_prefix(compiled_grads)

    assert len(compiled_outputs) == len(eager_outputs) == len(ISO_3D) - 1  # deep supervision on
    for a, b in zip(eager_outputs, compiled_outputs):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert compiled_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-9, atol=1e-10, msg=name)

    # nnU-Net switches deep supervision off for the final validation and inference
    # (set_deep_supervision_enabled): the compiled module must follow the attribute, not the
    # graph it traced first
    eager.decoder.deep_supervision = False
    with torch.no_grad():
        expected, got = eager(x), compiled(x)
    assert isinstance(got, torch.Tensor) and got.shape == (2, 3, 8, 8, 12)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


class _CompiledDescriptors(nnUNetTrainerShapeDescriptors):
    """Its own results folder: on_train_start writes there."""


def _failing_backend(graph_module, example_inputs):
    raise RuntimeError("no working C compiler (simulated)")


@pytest.mark.parametrize("backend, compiles", [("eager", True), (_failing_backend, False)],
                         ids=["compiles", "cannot-compile"])
def test_trainer_turns_compilation_off_with_a_logged_reason_instead_of_crashing(planned, monkeypatch, backend,
                                                                                compiles):
    """nnU-Net compiles the network on CUDA by default. The whole-scan trainers compile it right
    away on trial passes; if that fails, they train without compilation and log why."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    root, _ = planned
    torch._dynamo.reset()
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)  # as on CUDA (nnU-Net skips CPU)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(model, backend=backend))
    trainer = make_trainer(root, _CompiledDescriptors, monkeypatch)
    logged: list[str] = []
    monkeypatch.setattr(trainer, "print_to_log_file", lambda *args, **kwargs: logged.append(" ".join(map(str, args))))
    trainer.on_train_start()
    try:
        assert isinstance(trainer.network, OptimizedModule) == compiles
        assert trainer._do_i_compile() == compiles
        warnings = [line for line in logged if "torch.compile turned off" in line]
        if compiles:
            assert trainer.compile_disabled_reason is None and warnings == []
        else:
            assert "no working C compiler (simulated)" in trainer.compile_disabled_reason
            assert len(warnings) == 1 and "no working C compiler (simulated)" in warnings[0]
        # the trial passes left no gradients behind, and training goes on
        assert all(p.grad is None for p in trainer.network.parameters())
        result = trainer.train_step(next(trainer.dataloader_train))
        assert np.isfinite(result["loss"]).all()
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            finish = getattr(loader, "_finish", None)
            if finish is not None:
                finish()
        torch._dynamo.reset()
