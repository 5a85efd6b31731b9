"""Chapter 02 (pooling vs strided encoders): which inputs a layer reads, how codes react to shifted images.

Also the chapter's two model configurations and their builder, shared by the notebook and its tests.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data import ImageData, to_float
from ..engine import eval_mode
from ..environment import seed_everything
from ..errors import CourseError
from ..models import ConvAutoencoder

if TYPE_CHECKING:
    import pandas as pd

# The chapter's autoencoders differ only in ``downsample``; each code matches a seed tutorial's size.
FASHION = dict(image_size=28, in_channels=1, widths=(16, 32), latent=4, bottleneck="spatial")  # code 4x7x7 = 196
CIFAR = dict(image_size=32, in_channels=3, widths=(16, 32), latent=8, bottleneck="spatial")  # code 8x8x8 = 512


def ours(config: dict, downsample: str) -> ConvAutoencoder:
    """Return the chapter's autoencoder for ``config`` (FASHION or CIFAR), downsampling by 'pool' or 'stride'."""
    # 28x28 => 14x14 => 7x7 (Fashion-MNIST) or 32x32 => 16x16 => 8x8 (CIFAR-10), then the mirror image
    return ConvAutoencoder(**config, downsample=downsample, upsample="transposed", kernel_size=4)


def influence_map(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Return, for each input pixel, how many output values depend on it (nonzero Jacobian entries).

    ``x`` is one input (C, H, W) or a batch of one (1, C, H, W); the answer is an (H, W) integer
    map summed over channels. For a 2x2 max-pool it is 1 at each window's maximum and 0 elsewhere
    (the other three values do not survive, and get no gradient); for a convolution it counts the
    kernel windows that cover the pixel.
    """
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise CourseError(f"influence_map takes one image (C, H, W) or (1, C, H, W), got {tuple(x.shape)}.")
    x = x.detach().float()
    jac = torch.autograd.functional.jacobian(layer, x)  # output shape + input shape
    nonzero = (jac != 0).reshape(-1, *x.shape[1:])  # (outputs, C, H, W)
    return nonzero.sum(dim=(0, 1))


def shift_images(images: torch.Tensor, dx: int = 0, dy: int = 0) -> torch.Tensor:
    """Return images moved ``dx`` pixels right and ``dy`` down, the vacated edge copied from the border."""
    if images.ndim < 2:
        raise CourseError(f"shift_images needs images of shape (..., H, W), got {tuple(images.shape)}.")
    h, w = images.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        raise CourseError(f"A shift of ({dx}, {dy}) pixels moves a {h}x{w} image out of its frame.")
    cols = (torch.arange(w, device=images.device) - dx).clamp_(0, w - 1)
    rows = (torch.arange(h, device=images.device) - dy).clamp_(0, h - 1)
    return images.index_select(-1, cols).index_select(-2, rows)


def _device_of(fn) -> torch.device:
    owner = getattr(fn, "__self__", fn)
    if isinstance(owner, nn.Module):
        for p in owner.parameters():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def shift_sensitivity(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor | ImageData,
                      shifts: Iterable[int] = (1, 2, 3, 4), value_range: Sequence[float] | None = None,
                      reference: str = "other", stride: int | None = None, batch_size: int = 500,
                      device: torch.device | None = None) -> dict[int, float]:
    """Return, per horizontal shift in pixels, how far shifting the input moves ``fn``'s output.

    ``fn`` maps float images to codes or feature maps (``model.encode``, a layer, any function);
    ``images`` are uint8, scaled to ``value_range`` (default: the ``value_range`` attribute of the
    module ``fn`` belongs to, so ``model.encode`` of the Paperspace replica gets its (-1, 1);
    else (0, 1)). ``fn``'s module runs in eval mode. The change ||f(shifted x) - f(x)|| is summed over the images and
    divided by, with ``reference="other"``, the summed distance between the outputs of two
    *different* images (0: the shift changes nothing; 1: as much as swapping the image for
    another), or with ``reference="norm"`` by the summed ||f(x)||.

    With ``stride`` set, ``fn`` must return maps (N, C, h, w) and every shift must be a multiple
    of ``stride``: the unshifted map is moved by shift / stride cells before comparing, on the
    columns both maps share (a test of equivariance).
    """
    images = images.images if isinstance(images, ImageData) else images
    shifts = [int(s) for s in shifts]
    if reference not in ("other", "norm"):
        raise CourseError(f"reference must be 'other' or 'norm', got {reference!r}.")
    if reference == "other" and images.shape[0] < 2:
        raise CourseError("reference='other' compares different images: pass at least two.")
    if stride is not None and any(s % stride for s in shifts):
        raise CourseError(f"With stride={stride}, every shift must be a multiple of it; got {shifts}.")
    device = device or _device_of(fn)
    owner = getattr(fn, "__self__", fn)
    value_range = tuple(value_range or getattr(owner, "value_range", (0.0, 1.0)))
    moved = {s: 0.0 for s in shifts}
    scale = {s: 0.0 for s in shifts}
    with eval_mode(owner) if isinstance(owner, nn.Module) else contextlib.nullcontext():
        n = images.shape[0]
        bounds = list(range(0, n, batch_size)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]  # no lone last image: every batch has another image to compare with
        for start, end in zip(bounds[:-1], bounds[1:]):
            x = to_float(images[start:end].to(device), value_range)
            base = fn(x).float()
            for s in shifts:
                out, ref = fn(shift_images(x, dx=s)).float(), base
                if stride is not None and s:
                    if out.ndim != 4:
                        raise CourseError("stride= compares feature maps (N, C, h, w); "
                                          f"this function returns shape {tuple(out.shape)}.")
                    k = s // stride
                    if abs(k) >= out.shape[-1]:
                        raise CourseError(f"A shift of {s} pixels moves the {out.shape[-1]}-cell wide map "
                                          "out of its frame.")
                    out, ref = (out[..., k:], base[..., :-k]) if k > 0 else (out[..., :k], base[..., -k:])
                moved[s] += float((out - ref).flatten(1).norm(dim=1).sum())
                other = ref.roll(1, dims=0) if reference == "other" else torch.zeros_like(ref)
                scale[s] += float((ref - other).flatten(1).norm(dim=1).sum())
    return {s: moved[s] / max(scale[s], 1e-12) for s in shifts}


def shift_sensitivity_at_init(build: Callable[[], nn.Module], images: torch.Tensor | ImageData,
                              seeds: Iterable[int] = range(10), shift: int = 1) -> list[float]:
    """Return ``shift_sensitivity`` of untrained models' codes for a ``shift``-pixel shift, one model per seed.

    Each model is ``build()`` right after ``seed_everything(seed)``: one initialisation per seed.
    Two builders whose models have the same parameter shapes (``ours(config, "pool")`` and
    ``ours(config, "stride")``) get the same initial weights from the same seed, so their lists
    compare the two designs seed by seed.
    """
    values = []
    for seed in seeds:
        seed_everything(seed)
        model = build()
        values.append(shift_sensitivity(model.encode, images, (shift,))[shift])
    if not values:
        raise CourseError("shift_sensitivity_at_init needs at least one seed.")
    return values


def plot_receptive_fields(tables: Mapping[str, pd.DataFrame], image_size: int | None = None,
                          title: str | None = None):
    """Plot receptive field against depth (convolution and pooling layers) for several layer tables.

    Each curve gets its own marker and line style. A curve whose every point lies on a curve drawn
    before it (the same growth, or its first layers) is drawn on top with large hollow markers, and
    its legend entry names the curve it lies on.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    markers, styles = "osD^v<>p", ("-", "--", "-.", ":")
    drawn: dict[str, set[tuple[int, int]]] = {}
    for i, (name, table) in enumerate(tables.items()):
        rows = table[table["type"].isin(["Conv2d", "MaxPool2d", "AvgPool2d"]) & table["receptive field"].notna()]
        points = list(zip(range(1, len(rows) + 1), rows["receptive field"].astype(int).tolist()))
        host = next((other for other, seen in drawn.items() if set(points) <= seen), None)
        style = dict(marker=markers[i % len(markers)], linestyle=styles[i % len(styles)])
        if host is not None:  # hidden under an earlier curve otherwise: hollow, larger, on top
            style.update(markersize=11, markerfacecolor="none", markeredgewidth=1.5, linewidth=2.5, zorder=3)
        ax.plot(*zip(*points), label=name if host is None else f"{name}: on the '{host}' curve", **style)
        drawn[name] = set(points)
    if image_size:
        ax.axhline(image_size, color="grey", linestyle=":", label=f"image width ({image_size} px)")
    ax.set_xlabel("depth (convolution and pooling layers, input side first)")
    ax.set_ylabel("receptive field (input pixels)")
    ax.set_title(title or "Receptive field growth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_shift_sensitivity(curves: Mapping[str, Mapping[int, float]], title: str | None = None,
                           ylabel: str = "relative change of the code"):
    """Plot relative output change against the shift in pixels, one line per model (name -> {shift: change})."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        xs = sorted(curve)
        ax.plot(xs, [curve[s] for s in xs], marker="o", label=name)
    ax.set_xlabel("horizontal shift of the input (pixels)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "How much a code changes when the image moves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
