"""Every matplotlib figure: a run's curves.png (per-epoch values, one panel per group) and evaluate's
confusion matrices. (Contact sheets and galleries of images are Pillow's, in show.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_fast import rsna
from lumbar_fast.runfolder import Panels, atomic_write


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def plot_curves(records: list[dict[str, Any]], path: Path, panels: Panels) -> None:
    """curves.png: one panel per entry of `panels` (the task's), each value per epoch (one that no record
    holds, as in the records of a run an earlier version began, is left out)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    frame = pd.DataFrame(records)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for column, label, style in lines:
            if column not in frame:
                continue
            ax.plot(frame["epoch"], frame[column], style, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def plot_confusions(summaries: dict[str, dict[str, Any]], out_png: Path) -> None:
    """One confusion matrix (rows true, columns predicted, counts) per sequence, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(summaries), figsize=(3.6 * len(summaries), 3.4), squeeze=False)
    for ax, (sequence, summary) in zip(axes[0], summaries.items(), strict=True):
        confusion = np.asarray(summary["confusion"])
        ax.imshow(confusion, cmap="Blues")
        for (row, column), count in np.ndenumerate(confusion):
            colour = "white" if count > confusion.max() / 2 else "black"
            ax.text(column, row, str(count), ha="center", va="center", color=colour)
        ticks = range(len(rsna.SEVERITIES))
        ax.set_xticks(ticks, rsna.SEVERITIES, fontsize=8)
        ax.set_yticks(ticks, rsna.SEVERITIES, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sequence)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
