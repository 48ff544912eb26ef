"""Re-export of the Weak-Net trainers (paper 003) for ``nnUNet_extTrainer`` (classes live in nnunet_shape)."""

from nnunet_shape.nnunet.training.weaknet import *  # noqa: F401,F403
from nnunet_shape.nnunet.training.weaknet import __all__  # noqa: F401
