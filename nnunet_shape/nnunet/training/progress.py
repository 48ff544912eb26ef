"""``progress_descriptors.png``: descriptor curves next to nnU-Net's ``progress.png``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_descriptor_progress(logged: Mapping[str, list], descriptors: Sequence[str], class_names: Sequence[str],
                             output_folder: str, filename: str = "progress_descriptors.png") -> str:
    """Plot t, the overall descriptor satisfaction and the per-class satisfaction per descriptor.

    ``logged`` is nnU-Net's local logger dict (one value per epoch per key); returns the file path.
    """
    epochs = min(len(logged["train_descriptor_satisfaction"]), len(logged["val_descriptor_satisfaction"]),
                 len(logged["barrier_t"]), *[len(logged[k]) for k in _HARD_KEYS if k in logged])
    # nnU-Net's logger calls seaborn's set(font_scale=2.5) globally before this runs: start from
    # matplotlib's defaults so that labels and legends stay readable and inside the figure
    defaults = {k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}
    with matplotlib.rc_context(defaults):
        return _plot(logged, descriptors, class_names, epochs, os.path.join(output_folder, filename))


#: the hard-prediction curves (argmax one-hot), drawn dashed beside the soft ones when logged
_HARD_KEYS = ("train_descriptor_satisfaction_hard", "val_descriptor_satisfaction_hard",
              "ema_val_descriptor_satisfaction_hard")


def _plot(logged: Mapping[str, list], descriptors: Sequence[str], class_names: Sequence[str], epochs: int,
          path: str) -> str:
    x = list(range(epochs))
    outside = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    fig, axes = plt.subplots(2 + len(descriptors), 1, figsize=(10, 2.4 * (2 + len(descriptors))), squeeze=False,
                             sharex=True)
    ax = axes[0, 0]
    lines = ax.plot(x, logged["train_losses"][:epochs], label="descriptor loss (train)")
    lines += ax.plot(x, logged["val_losses"][:epochs], label="descriptor loss (val)")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    lines += ax2.plot(x, logged["barrier_t"][:epochs], color="k", ls="--", label="barrier t")
    ax2.set_ylabel("t")
    # one legend for both y axes, right of the plot, clear of the twin axis' labels
    ax.legend(lines, [line.get_label() for line in lines], **{**outside, "bbox_to_anchor": (1.08, 1.0)})
    ax = axes[1, 0]
    ax.plot(x, logged["train_descriptor_satisfaction"][:epochs], label="train")
    ax.plot(x, logged["val_descriptor_satisfaction"][:epochs], label="val")
    hard = all(k in logged for k in _HARD_KEYS)
    ax.plot(x, logged["ema_val_descriptor_satisfaction"][:epochs],
            label="val EMA" if hard else "val EMA\n(selects checkpoint_best)")
    if hard:
        for key, label in zip(_HARD_KEYS, ("train, hard", "val, hard", "val EMA, hard\n(selects checkpoint_best)")):
            ax.plot(x, logged[key][:epochs], ls="--", label=label)
    ax.set_ylabel("all descriptors\nfraction satisfied")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(**outside)
    for row, name in enumerate(descriptors, start=2):
        ax = axes[row, 0]
        per_epoch = logged[f"val_satisfied_{name}"][:epochs]
        hard_per_epoch = logged.get(f"val_hard_satisfied_{name}")
        for c, class_name in enumerate(class_names):
            line, = ax.plot(x, [values[c] for values in per_epoch], label=class_name)
            if hard_per_epoch is not None:
                ax.plot(x, [values[c] for values in hard_per_epoch[:epochs]], ls="--", color=line.get_color(),
                        label=f"{class_name}, hard")
        ax.set_ylabel(f"{name}\nsatisfied (val)")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(**outside)
    for ax in axes[:, 0]:
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
