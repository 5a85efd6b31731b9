"""Chapter 03 (transposed convolutions): how upsampling layers overlap, and where checkerboard artifacts show.

Also the chapter's comparison model and its five decoders, shared by the notebook and its tests.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data import ImageData, to_float
from ..errors import CourseError
from ..metrics import reconstruct
from ..models import ConvAutoencoder, transposed_padding

# The five decoders the chapter compares, as arguments of `chapter_model`.
DECODERS = {"transposed k=2": dict(kernel_size=2), "transposed k=3": dict(kernel_size=3),
            "transposed k=4": dict(kernel_size=4), "nearest + conv": dict(upsample="nearest"),
            "bilinear + conv": dict(upsample="bilinear")}


def chapter_model(upsample: str = "transposed", kernel_size: int = 4) -> ConvAutoencoder:
    """Return the chapter's comparison model, whose decoder upsamples by ``upsample`` with ``kernel_size``."""
    # 3x32x32 => 32x16x16 => 64x8x8 => code 4x8x8 (256 values) => 64x8x8 => 32x16x16 => 32x32x32 => 3x32x32
    return ConvAutoencoder(image_size=32, in_channels=3, widths=(32, 64), latent=4, bottleneck="spatial",
                           downsample="stride", upsample=upsample, kernel_size=kernel_size)


def upsampling_layer(kernel_size: int, stride: int = 2, upsample: str = "transposed", channels: int = 1,
                     bias: bool = False) -> nn.Module:
    """Return one layer that grows H and W ``stride`` times, built the way ``ConvDecoder`` builds it."""
    if upsample == "transposed":
        padding, output_padding = transposed_padding(kernel_size, stride)
        # H x W => stride*H x stride*W: every input pixel stamps a k x k kernel, stride pixels apart
        return nn.ConvTranspose2d(channels, channels, kernel_size, stride=stride, padding=padding,
                                  output_padding=output_padding, bias=bias)
    if upsample in ("nearest", "bilinear"):
        if kernel_size % 2 == 0:
            raise CourseError(f"Resize-then-convolve needs an odd kernel to keep the size, got {kernel_size}.")
        return nn.Sequential(nn.Upsample(scale_factor=stride, mode=upsample),  # H x W => sH x sW
                             nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=bias))
    raise CourseError(f"upsample must be 'transposed', 'nearest' or 'bilinear', got {upsample!r}.")


@torch.no_grad()
def overlap_map(kernel_size: int, stride: int = 2, size: int = 4, layers: int = 1,
                upsample: str = "transposed") -> torch.Tensor:
    """Return the (H, W) output of ``layers`` all-ones upsampling layers fed a constant image of ones.

    For one transposed convolution each value is the number of kernel taps that land on that
    output pixel; a pattern that is not flat away from the border is a checkerboard artifact.
    """
    if layers < 1 or size < 1:
        raise CourseError(f"layers and size must be positive, got layers={layers}, size={size}.")
    stack = nn.Sequential(*[upsampling_layer(kernel_size, stride, upsample) for _ in range(layers)])
    for p in stack.parameters():
        p.fill_(1.0)
    return stack(torch.ones(1, 1, size, size))[0, 0]


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
