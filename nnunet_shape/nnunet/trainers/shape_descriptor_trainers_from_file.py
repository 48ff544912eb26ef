"""Re-export of the label-free (descriptor file) trainers for ``nnUNet_extTrainer``."""

from nnunet_shape.nnunet.training.from_file import *  # noqa: F401,F403
from nnunet_shape.nnunet.training.from_file import __all__  # noqa: F401
