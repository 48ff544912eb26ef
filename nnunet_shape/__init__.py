"""nnunet-shape: nnU-Net v2 trained from shape descriptors instead of voxel labels.

The core (``descriptors``, ``barrier``, ``losses``) is pure torch on ``(B, K, *spatial)``
tensors and never imports nnU-Net; the trainers in ``nnunet_shape.training`` compose it.
"""

__version__ = "0.1.0"
