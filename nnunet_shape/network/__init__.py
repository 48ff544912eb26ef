"""Networks for whole-scan training: the STD/EXP two-stream U-Net and its memory tools."""

from nnunet_shape.network.memory import saved_activation_bytes
from nnunet_shape.network.std_exp import (
    STD_EXP_CLASS_NAME,
    EXPDecoder,
    STDEXPNet,
    std_exp_arch_kwargs,
    total_stride,
)

__all__ = [
    "STD_EXP_CLASS_NAME",
    "EXPDecoder",
    "STDEXPNet",
    "saved_activation_bytes",
    "std_exp_arch_kwargs",
    "total_stride",
]
