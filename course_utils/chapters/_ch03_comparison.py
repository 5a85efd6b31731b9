"""Chapter 03 (transposed convolutions), the hand-written part: the comparison's models, maps and figures.

The code the chapter teaches (``TransposedStage``, ``overlap_map``, ``ResizeStage``, ``GrowingDecoder``) is in
``ch03_transposed_convolutions``, generated from the notebook's ``#@save`` cells. This module builds the chapter's
five autoencoders from it (``DECODERS``, ``chapter_model``: chapter 01's ``Autoencoder`` with the learner's decoder),
trains them over seeds with one progress bar (``compare_over_seeds``), and measures where the outputs draw a grid:
``error_map``, ``edge_map``, ``grid_tile``, ``grid_contrast``, ``plot_over_seeds``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..data import ImageData, to_float
from ..errors import CourseError
from ..experiments import Comparison, compare_models
from ..metrics import reconstruct
from .ch01_feature_extractors import Autoencoder
from .ch03_transposed_convolutions import GrowingDecoder, ResizeStage, TransposedStage

# The five decoders the chapter compares: each name => the upsampling stage its GrowingDecoder stacks twice.
DECODERS: dict[str, Callable[[int, int], nn.Module]] = {
    "transposed k=2": functools.partial(TransposedStage, kernel_size=2),
    "transposed k=3": functools.partial(TransposedStage, kernel_size=3),
    "transposed k=4": functools.partial(TransposedStage, kernel_size=4),
    "nearest + conv": functools.partial(ResizeStage, mode="nearest"),
    "bilinear + conv": functools.partial(ResizeStage, mode="bilinear"),
}


def chapter_model(decoder: str = "transposed k=4") -> Autoencoder:
    """Return chapter 01's autoencoder for 3x32x32 images whose decoder grows the code with ``DECODERS[decoder]``."""
    if decoder not in DECODERS:
        raise CourseError(f"Chapter 03 compares the decoders {', '.join(map(repr, DECODERS))}; got {decoder!r}.")
    model = Autoencoder(in_channels=3, width=32, code_channels=4)  # encoder: 3x32x32 => 32x16x16 => 64x8x8 => 4x8x8
    model.decoder = GrowingDecoder(DECODERS[decoder], code_channels=4, width=32, out_channels=3)  # 4x8x8 => 3x32x32
    return model


def compare_over_seeds(builders: Mapping[str, Callable[[], nn.Module]], train: ImageData, test: ImageData,
                       seeds: Sequence[int], **compare_kwargs) -> dict[int, Comparison]:
    """Return ``compare_models`` of every builder for each seed, trained one model after another under one bar."""
    from tqdm.auto import tqdm

    if not seeds or not builders:
        raise CourseError("compare_over_seeds needs at least one seed and one model: seeds=[0], builders={name: f}.")
    compare_kwargs.pop("progress", None)
    runs: dict[int, Comparison] = {}
    with tqdm(total=len(seeds) * len(builders), unit="model", desc="training") as bar:
        for seed in seeds:
            for name, build in builders.items():
                bar.set_postfix_str(f"seed {seed}, {name}")
                one = compare_models({name: build}, train, test, seed=seed, progress=False, **compare_kwargs)
                runs[seed] = runs[seed].merge(one) if seed in runs else one
                bar.update()
    return runs


@torch.no_grad()
def error_map(model: nn.Module, data: ImageData | torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Return the test MSE at each pixel position (H, W), averaged over images and channels, on [0, 1]."""
    images = data.images if isinstance(data, ImageData) else data
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    for i in range(0, images.shape[0], batch_size):
        chunk = images[i:i + batch_size]
        recon = reconstruct(model, chunk, batch_size)
        total += (recon - to_float(chunk)).pow(2).sum(dim=(0, 1), dtype=torch.float64)
    return (total / (images.shape[0] * images.shape[1])).float()


def edge_map(images: ImageData | torch.Tensor) -> torch.Tensor:
    """Return the mean squared jump to the right and lower neighbour at each pixel, as an (H-1, W-1) map.

    Natural images change about equally at every position; a decoder that draws a grid
    concentrates its jumps on some positions of every block.
    """
    x = to_float(images.images if isinstance(images, ImageData) else images)
    x = x.reshape(-1, *x.shape[-2:])  # (N, C, H, W) or (H, W) => (N*C, H, W)
    right = (x[:, :-1, 1:] - x[:, :-1, :-1]).pow(2)
    down = (x[:, 1:, :-1] - x[:, :-1, :-1]).pow(2)
    return (right + down).mean(0)


def fold_tiles(images: torch.Tensor, period: int = 2) -> torch.Tensor:
    """Return the mean period x period tile of maps (H, W) or images (N, C, H, W), as (period, period)."""
    x = to_float(images)
    x = x.reshape(-1, *x.shape[-2:])
    h, w = x.shape[-2:]
    if period < 1 or h % period or w % period:
        raise CourseError(f"period {period} must divide the map size {h}x{w}; crop a border first.")
    return x.reshape(-1, h // period, period, w // period, period).mean(dim=(0, 1, 3))


def grid_tile(maps: torch.Tensor, period: int = 2, border: int = 0) -> torch.Tensor:
    """Return the mean period x period tile of a map divided by its local mean (1 everywhere: no grid).

    Dividing by a moving average over one period keeps a repeating pattern and removes slow
    trends (an error map that is larger at the top of the image is not a grid).
    """
    x = maps.float()
    x = x.reshape(-1, *x.shape[-2:]).mean(0)  # (N, C, H, W) or (H, W) => (H, W)
    if border:
        x = x[border:-border, border:-border]
    h, w = x.shape
    if period < 2 or h < 2 * period or w < 2 * period:
        raise CourseError(f"period must be >= 2 and the map (after the border) at least 2 periods wide; "
                          f"got period {period} for a {h}x{w} map.")
    local = torch.nn.functional.avg_pool2d(x[None, None], period, stride=1)[0, 0]  # mean of each window
    if local.abs().min() < 1e-12:
        raise CourseError("grid_tile needs a map without zero-mean windows (e.g. an overlap or error map).")
    n_h, n_w = (local.shape[0] // period) * period, (local.shape[1] // period) * period
    off = period // 2  # compare each pixel with the window around it
    ratio = x[off:off + n_h, off:off + n_w] / local[:n_h, :n_w]
    return fold_tiles(ratio, period)


def grid_contrast(maps: torch.Tensor, period: int = 2, border: int = 0) -> float:
    """Return max - min of ``grid_tile``: 0 for an even map, above 0 for a pattern repeating every ``period``.

    One 3x3 stride-2 transposed convolution of a constant gives tiles [[1, 2], [2, 4]] / 2.25, so 4/3.
    Leave out a ``border`` so the edges' lower overlap does not count.
    """
    tile = grid_tile(maps, period, border)
    return float(tile.max() - tile.min())


def plot_over_seeds(values: dict[str, list[float]], ylabel: str = "test MSE per pixel", title: str | None = None):
    """Draw each model's mean over seeds as a bar from zero, every seed as a dot and the min-max range as a whisker.

    ``values`` maps a model's name to its scores, one per seed. The axis starts at zero, so bar heights
    compare honestly; the whiskers show how far the seed alone moved each model. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    if not values or any(len(v) == 0 for v in values.values()):
        raise CourseError("plot_over_seeds needs at least one score per model: {name: [score per seed, ...]}.")
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(names)), 4))
    for i, name in enumerate(names):
        v = torch.tensor(values[name], dtype=torch.float64)
        mean, low, high = float(v.mean()), float(v.min()), float(v.max())
        ax.bar(i, mean, color=plt.cm.viridis(i / max(1, len(names) - 1)), alpha=0.6)
        ax.errorbar(i, mean, yerr=[[mean - low], [high - mean]], color="black", capsize=6, linewidth=1.5)
        ax.plot([i] * len(v), v.tolist(), "o", color="black", markersize=4)
        ax.text(i, high, f"{mean:.4g}\n", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylim(0, None)
    ax.set_xlabel("model")
    ax.set_ylabel(ylabel)
    n = {len(v) for v in values.values()}
    ax.set_title(title or f"Mean over {'/'.join(map(str, sorted(n)))} seeds (bars), each seed (dots), range (whiskers)")
    fig.tight_layout()
    return fig
