"""Figures: reconstruction grids, loss curves, comparison charts and feature-map grids."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid

from .data import ImageData


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images.float().clamp(0, 1)


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 1.2):
    """Show a batch of images (uint8 or float in [0, 1]) as one grid."""
    grid = make_grid(_as_float(images.detach().cpu()), nrow=nrow, padding=1, pad_value=1.0)
    if ax is None:
        rows = -(-images.shape[0] // nrow)
        _, ax = plt.subplots(figsize=(scale * nrow, scale * rows + (0.4 if title else 0)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if images.shape[1] == 1 else None,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_reconstructions(originals: torch.Tensor | ImageData, reconstructions: Mapping[str, torch.Tensor] | torch.Tensor,
                         n: int = 8, title: str | None = None, scale: float = 1.2):
    """Show originals on the top row and each model's reconstructions on the rows below."""
    originals = originals.images if isinstance(originals, ImageData) else originals
    rows = {"original": originals[:n]}
    if isinstance(reconstructions, torch.Tensor):
        reconstructions = {"reconstruction": reconstructions}
    rows.update({name: r[:n] for name, r in reconstructions.items()})
    fig, axes = plt.subplots(len(rows), 1, figsize=(scale * n, scale * len(rows) * 1.15), squeeze=False)
    for ax, (name, imgs) in zip(axes[:, 0], rows.items()):
        show_images(imgs, nrow=n, ax=ax)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_losses(histories: Mapping[str, "object"], keys: Sequence[str] = ("train_loss", "val_mse"),
                log: bool = True, title: str | None = None):
    """Plot per-epoch loss curves of several runs (a dict name -> History)."""
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
    """Draw a bar chart of one metric for several models (a dict name -> scores)."""
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
    """Show the first ``n`` channels of one image's feature maps (C, H, W), each min-max scaled."""
    maps = maps.detach().float().cpu()
    maps = maps[0] if maps.ndim == 4 else maps
    maps = maps[:n]
    low = maps.flatten(1).min(1).values[:, None, None]
    high = maps.flatten(1).max(1).values[:, None, None]
    scaled = ((maps - low) / (high - low).clamp_min(1e-8)).unsqueeze(1)
    ax = show_images(scaled, nrow=min(ncols, len(scaled)), title=title,
                     scale=max(0.9, 8 / max(ncols, 1)) * 1.0)
    return ax


def results_table(results: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None):
    """Return a results dict (name -> scores) as a pandas DataFrame, one row per model."""
    import pandas as pd
    frame = pd.DataFrame.from_dict(results, orient="index")
    return frame[list(columns)] if columns else frame
