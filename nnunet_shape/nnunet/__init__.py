"""The nnU-Net integration: everything that imports nnunetv2.

``training/`` holds the trainer classes, ``trainers/`` the folder ``nnUNet_extTrainer`` points
at (re-export modules only); ``predict``, ``postprocessing``, ``evaluate`` and ``label_free``
are applications on nnU-Net's datasets and folders; ``frames`` holds the rules about nnU-Net's
array frames (the dummy 2-D axis, the preprocessed spacing) that several of them need.
"""
