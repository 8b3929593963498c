"""PNG reports for training and evaluation: loss curves, ROC curves, robustness bars.

matplotlib runs with the Agg backend so plots work headless in CI and on servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def plot_loss_curves(history: Sequence[Mapping[str, float]], path: Path, title: str = "training") -> Path:
    """history: one dict per logged step with "step" and any number of loss terms."""
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = sorted({k for row in history for k in row if k not in ("step", "lr", "time")})
    steps = [row["step"] for row in history]
    for k in keys:
        ax.plot(steps, [row.get(k, np.nan) for row in history], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if keys:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: Path, title: str = "ROC") -> Path:
    """curves: name -> (labels, scores). Names with a single class are left out."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (labels, scores) in curves.items():
        y = np.asarray(labels)
        if y.size == 0 or y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, np.asarray(scores))
        from sklearn.metrics import auc

        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_robustness(table: Mapping[str, Mapping[str, float | None]], path: Path) -> Path:
    """table: degradation kind -> {level: AUC}. One line per kind, levels in order of severity."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, levels in table.items():
        xs = list(range(len(levels)))
        ax.plot(xs, [np.nan if v is None else v for v in levels.values()], marker="o", label=kind)
        for x, lev in zip(xs, levels):
            ax.annotate(str(lev), (x, 0), xytext=(0, 2), textcoords="offset points", fontsize=6)
    ax.set_xlabel("severity (level index)")
    ax.set_ylabel("AUC")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("robustness")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_method_auc(
    rows: Sequence[tuple[str, float | None, int]], path: Path, title: str = "AUC per method", reference: float = 0.5
) -> Path:
    """rows: (method, AUC or None, n fakes); one horizontal bar per method, n beside it, `reference` dashed."""
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.32 * len(rows) + 1.2)))
    names = [f"{m} (n={n})" for m, _, n in rows]
    values = [np.nan if a is None else a for _, a, _ in rows]
    colours = ["#999999" if a is None else "#2ca02c" if a >= 0.7 else "#ff7f0e" if a >= reference else "#d62728"
               for _, a, _ in rows]
    ys = np.arange(len(rows))
    ax.barh(ys, np.nan_to_num(values, nan=0.0), color=colours)
    for y, v in zip(ys, values):
        ax.annotate("n/a" if np.isnan(v) else f"{v:.2f}", (0 if np.isnan(v) else v, y), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.axvline(reference, color="k", ls="--", lw=0.8)
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("AUC (the method's fakes against all reals)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
