"""Measure the activation memory a forward pass keeps for backward.

Used by the tests (to check ``STDEXPNet.estimate_activation_bytes``) and by
``benchmarks/activation_memory.py``. Device-independent: it sums the sizes of the distinct
storages autograd saves, so it also works on CPU where no allocator statistics exist.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["saved_activation_bytes"]


def saved_activation_bytes(
    module: nn.Module,
    *inputs: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
    include_parameters: bool = False,
) -> int:
    """Bytes of the distinct tensor storages autograd keeps for backward after ``module(*inputs)``.

    The forward runs with gradients enabled inside ``torch.autograd.graph.saved_tensors_hooks``;
    each saved tensor's untyped storage is counted once (views and tensors saved by several
    ops share a storage). The module's own parameter storages are left out unless
    ``include_parameters`` (they exist whether or not a graph is kept); reduced-precision copies
    made by autocast are counted. No backward is run; the graph is freed on return.

    Args:
        module: the network (its train/eval mode is left as it is).
        inputs: forward inputs, e.g. ``(B, C, *S)``.
        autocast_dtype: e.g. ``torch.bfloat16`` to run under ``torch.autocast`` on the inputs'
            device type, mimicking nnU-Net's mixed-precision training; ``None`` for none.
        include_parameters: also count parameter storages saved by the ops.

    Returns:
        Total bytes (int).
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if include_parameters or pointer not in parameter_storages:
            storages[(str(tensor.device), pointer)] = storage.nbytes()
        return tensor

    def unpack(tensor: Any) -> Any:
        return tensor

    device_type = inputs[0].device.type if inputs else "cpu"
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        if autocast_dtype is not None:
            with torch.autocast(device_type=device_type, dtype=autocast_dtype):
                output = module(*inputs)
        else:
            output = module(*inputs)
    del output
    return int(sum(storages.values()))
