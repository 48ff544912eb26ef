"""Folder for ``nnUNet_extTrainer``: re-export modules only.

nnU-Net imports every module here as a top-level module and removes it from ``sys.modules``
after the lookup, so classes *defined* here could not be pickled (data-loader workers, DDP).
The real classes live in ``nnunet_shape.nnunet.training``.
"""
