"""Re-export of the population-prior trainers for ``nnUNet_extTrainer`` (classes live in nnunet_shape)."""

from nnunet_shape.nnunet.training.population_prior import *  # noqa: F401,F403
from nnunet_shape.nnunet.training.population_prior import __all__  # noqa: F401
