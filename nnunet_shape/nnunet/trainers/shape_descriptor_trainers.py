"""Re-export of the nnunet-shape trainers for ``nnUNet_extTrainer`` (classes live in nnunet_shape)."""

from nnunet_shape.nnunet.training.shape_trainers import *  # noqa: F401,F403
from nnunet_shape.nnunet.training.shape_trainers import __all__  # noqa: F401
