"""Figures: image and reconstruction grids, loss curves, comparison and speed charts, feature maps.

matplotlib is imported inside each function, so ``import course_utils`` stays light.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from .data import ImageData, to_float
from .errors import CourseError

if TYPE_CHECKING:
    from .timing import Throughput
    from .training import History


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 1.2):
    """Show a batch of images (uint8 or float in [0, 1]) as one grid; return its Axes."""
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    grid = make_grid(to_float(images.detach().cpu()).clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    if ax is None:
        rows = -(-images.shape[0] // nrow)
        _, ax = plt.subplots(figsize=(scale * nrow, scale * rows + (0.4 if title else 0)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if images.shape[1] == 1 else None,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_rows(rows: Mapping[str, torch.Tensor], title: str | None = None, scale: float = 1.1):
    """Show each named batch of images (uint8 or float [0, 1]) as one labelled row; return the Figure."""
    import matplotlib.pyplot as plt

    if not rows:
        raise CourseError("show_rows needs at least one row of images.")
    n = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), 1, figsize=(scale * n + 1.5, scale * len(rows) * 1.1), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], rows.items()):
        show_images(images, nrow=n, ax=ax)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_reconstructions(originals: torch.Tensor | ImageData,
                         reconstructions: Mapping[str, torch.Tensor] | torch.Tensor, n: int = 8,
                         title: str | None = None, scale: float = 1.2):
    """Show originals on the top row and each model's reconstructions on the rows below; return the Figure."""
    originals = originals.images if isinstance(originals, ImageData) else originals
    rows = {"original": originals[:n]}
    if isinstance(reconstructions, torch.Tensor):
        reconstructions = {"reconstruction": reconstructions}
    rows.update({name: r[:n] for name, r in reconstructions.items()})
    return show_rows(rows, title, scale)


def plot_losses(histories: Mapping[str, History], keys: Sequence[str] = ("train_loss", "val_mse"),
                log: bool = True, title: str | None = None):
    """Plot per-epoch loss curves of several runs (a dict name -> History); return the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 4))
    palette = sns.color_palette(n_colors=max(len(histories), 1))
    for color, (name, h) in zip(palette, histories.items()):
        for key, style in zip(keys, ("-", "--", ":")):
            if h.records and key in h.records[0]:
                ax.plot(h["epoch"], h[key], style, color=color, marker="o", label=f"{name} ({key})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE per pixel" + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Training and validation loss")
    fig.tight_layout()
    return fig


def plot_comparison(results: Mapping[str, Mapping[str, float]], metric: str = "mse", title: str | None = None,
                    ylabel: str | None = None, log: bool = False):
    """Draw a bar chart of one metric for several models (a dict name -> scores); return the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = list(results)
    values = [results[n][metric] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 3.8))
    sns.barplot(x=names, y=values, hue=names, ax=ax, palette="viridis", legend=False)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.4g}", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel(ylabel or metric)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_title(title or f"Test {metric} by model")
    fig.tight_layout()
    return fig


def show_feature_maps(maps: torch.Tensor, n: int = 16, title: str | None = None, ncols: int = 8):
    """Show the first ``n`` channels of one image's feature maps (C, H, W), each min-max scaled; return the Axes."""
    maps = maps.detach().float().cpu()
    maps = maps[0] if maps.ndim == 4 else maps
    maps = maps[:n]
    low = maps.flatten(1).min(1).values[:, None, None]
    high = maps.flatten(1).max(1).values[:, None, None]
    scaled = ((maps - low) / (high - low).clamp_min(1e-8)).unsqueeze(1)
    return show_images(scaled, nrow=min(ncols, len(scaled)), title=title, scale=max(0.9, 8 / max(ncols, 1)))


def plot_speedups(results: Mapping[str, Throughput | str], baseline: str | None = None, title: str | None = None,
                  xlabel: str | None = None):
    """Draw measured training speeds as horizontal bars with their range and the ratio to ``baseline``.

    ``results`` maps a setup's name to a `Throughput` (entries that are strings, "not measured
    here" notes, are left out), as `improvement_ladder` and `interleave` return them. The
    baseline (default: the first measured row) is grey, rows whose note says "dropped" red,
    the others green. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    measured = {name: r for name, r in results.items() if not isinstance(r, str)}
    baseline = baseline or next(iter(measured), None)
    if baseline not in measured:
        raise CourseError(f"The baseline {baseline!r} is not among the measured rows ({', '.join(measured)}).")
    base = measured[baseline].images_per_second
    names = list(measured)[::-1]  # the first row on top
    colors = ["tab:gray" if n == baseline else "tab:red" if measured[n].note.startswith("dropped")
              else "tab:green" for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    ax.barh(names, [measured[n].images_per_second for n in names], color=colors)
    for i, n in enumerate(names):
        r = measured[n]
        ax.errorbar(r.images_per_second, i, xerr=[[r.images_per_second - min(r.rates)],
                                                  [max(r.rates) - r.images_per_second]], color="black", capsize=3)
        ax.text(max(r.rates) * 1.01, i, f"{r.images_per_second / base:.2f}x", va="center", fontsize=8)
    ax.set_xlabel(xlabel or "training images per second (median; bars show the range of repeats)")
    ax.set_ylabel("setup")
    ax.set_title(title or f"Training speed, and the ratio to {baseline}")
    ax.set_xlim(0, max(max(r.rates) for r in measured.values()) * 1.15)
    fig.tight_layout()
    return fig


def results_table(results: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None):
    """Return a results dict (name -> scores) as a pandas DataFrame, one row per model."""
    import pandas as pd
    frame = pd.DataFrame.from_dict(results, orient="index")
    return frame[list(columns)] if columns else frame
