"""Re-export of the descriptor + reconstruction trainers for ``nnUNet_extTrainer`` (classes live in nnunet_shape)."""

from nnunet_shape.nnunet.training.shape_reconstruction import *  # noqa: F401,F403
from nnunet_shape.nnunet.training.shape_reconstruction import __all__  # noqa: F401
