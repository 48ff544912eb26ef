"""``progress_descriptors.png``: descriptor curves next to nnU-Net's ``progress.png``."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_descriptor_progress(logged: Mapping[str, list], descriptors: Sequence[str], class_names: Sequence[str],
                             output_folder: str, filename: str = "progress_descriptors.png") -> str:
    """Plot t, the overall descriptor satisfaction and the per-class satisfaction per descriptor.

    ``logged`` is nnU-Net's local logger dict (one value per epoch per key); returns the file path.
    """
    epochs = min(len(logged["train_descriptor_satisfaction"]), len(logged["val_descriptor_satisfaction"]),
                 len(logged["barrier_t"]))
    x = list(range(epochs))
    fig, axes = plt.subplots(2 + len(descriptors), 1, figsize=(10, 3.2 * (2 + len(descriptors))), squeeze=False)
    ax = axes[0, 0]
    ax.plot(x, logged["train_losses"][:epochs], label="descriptor loss (train)")
    ax.plot(x, logged["val_losses"][:epochs], label="descriptor loss (val)")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(x, logged["barrier_t"][:epochs], color="k", ls="--", label="barrier t")
    ax2.set_ylabel("t")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    ax = axes[1, 0]
    ax.plot(x, logged["train_descriptor_satisfaction"][:epochs], label="train")
    ax.plot(x, logged["val_descriptor_satisfaction"][:epochs], label="val")
    ax.plot(x, logged["ema_val_descriptor_satisfaction"][:epochs], label="val (EMA, selects checkpoint_best)")
    ax.set_ylabel("fraction satisfied")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower right")
    for row, name in enumerate(descriptors, start=2):
        ax = axes[row, 0]
        per_epoch = logged[f"val_satisfied_{name}"][:epochs]
        for c, class_name in enumerate(class_names):
            ax.plot(x, [values[c] for values in per_epoch], label=class_name)
        ax.set_ylabel(f"{name}\nsatisfied (val)")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(loc="lower right", fontsize="small")
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    path = os.path.join(output_folder, filename)
    fig.savefig(path)
    plt.close(fig)
    return path
