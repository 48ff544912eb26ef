"""The pure core: torch/numpy maths on ``(B, K, X, Y[, Z])`` tensors and numpy arrays.

Nothing under ``nnunet_shape.core`` imports nnunetv2 (``tests/test_layers.py`` imports every
module here with nnunetv2 blocked): the descriptor maths, the barrier, bounds, priors, the loss,
the geometry of target transforms and connected components are usable without nnU-Net.
"""
