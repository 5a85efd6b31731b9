"""Chapter 02 (pooling vs strided encoders), the hand-written part: the chapter's models, shift sensitivity, figures.

The code the chapter teaches (``influence_map``, ``pool_stage``, ``strided_stage``, ``StageEncoder``,
``shift_images``, ``code_change``) is in ``ch02_pooling_vs_strided``, generated from the notebook's ``#@save``
cells. This module builds the chapter's two autoencoders from those stages (``ours``: chapter 01's autoencoder with
a ``StageEncoder``), measures ``code_change`` over many images and shifts (``shift_sensitivity``) and over fresh
initialisations (``shift_sensitivity_at_init``), and draws the chapter's figures.
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
from .ch01_feature_extractors import Autoencoder
from .ch02_pooling_vs_strided import StageEncoder, code_change, pool_stage, shift_images, strided_stage

if TYPE_CHECKING:
    import pandas as pd

# The chapter's autoencoders differ only in their encoder's stages; each code matches a seed tutorial's size.
FASHION = dict(in_channels=1, code_channels=4)  # 1x28x28 => code 4x7x7 = 196 values (kapilsh, chapter 01)
CIFAR = dict(in_channels=3, code_channels=8)  # 3x32x32 => code 8x8x8 = 512 values (GeeksforGeeks at 32x32)
STAGES = {"pool": pool_stage, "stride": strided_stage}


def ours(config: dict, downsample: str) -> Autoencoder:
    """Return chapter 01's autoencoder for ``config`` (FASHION or CIFAR), its encoder of 'pool' or 'stride' stages."""
    if downsample not in STAGES:
        raise CourseError(f"downsample must be 'pool' or 'stride', got {downsample!r}.")
    model = Autoencoder(config["in_channels"], 16, config["code_channels"])  # chapter 01's encoder and decoder
    model.encoder = StageEncoder(STAGES[downsample], config["in_channels"], (16, 32), config["code_channels"])
    return model


def _device_of(fn) -> torch.device:
    owner = getattr(fn, "__self__", fn)
    if isinstance(owner, nn.Module):
        for p in owner.parameters():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def shift_sensitivity(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor | ImageData,
                      shifts: Iterable[int] = (1, 2, 3, 4), value_range: Sequence[float] | None = None,
                      stride: int | None = None, batch_size: int = 500,
                      device: torch.device | None = None) -> dict[int, float]:
    """Return, per horizontal shift in pixels, ``code_change`` of ``fn``'s outputs for the shifted images.

    ``fn`` maps float images to codes or feature maps (``model.encode``, a layer, any function); ``images`` are
    uint8, scaled to ``value_range`` (default: the ``value_range`` attribute of the module ``fn`` belongs to, so
    ``model.encode`` of the Paperspace replica gets its (-1, 1); else (0, 1)), shifted with ``shift_images`` and
    encoded ``batch_size`` at a time, with ``fn``'s module in eval mode. 0: the shift changes nothing; 1: as much
    as swapping each image for another.

    With ``stride`` set, ``fn`` must return maps (N, C, h, w) and every shift must be a multiple of ``stride``: the
    unshifted map is moved by shift / stride cells before comparing, on the columns both maps share (a test of
    equivariance).
    """
    images = images.images if isinstance(images, ImageData) else images
    shifts = [int(s) for s in shifts]
    if images.shape[0] < 2:
        raise CourseError("shift_sensitivity compares a shift with the distance between different images' codes: "
                          "pass at least two images.")
    too_far = [s for s in shifts if abs(s) >= images.shape[-1]]
    if too_far:
        raise CourseError(f"A shift of {too_far[0]} pixels moves a {images.shape[-2]}x{images.shape[-1]} image out "
                          "of its frame: use shifts smaller than the image's width.")
    if stride is not None and any(s % stride for s in shifts):
        raise CourseError(f"With stride={stride}, every shift must be a multiple of it; got {shifts}.")
    device = device or _device_of(fn)
    owner = getattr(fn, "__self__", fn)
    value_range = tuple(value_range or getattr(owner, "value_range", (0.0, 1.0)))

    def outputs(dx: int) -> torch.Tensor:
        parts = []
        for start in range(0, images.shape[0], batch_size):
            x = to_float(images[start:start + batch_size].to(device), value_range)
            parts.append(fn(shift_images(x, dx)).float())
        return torch.cat(parts)

    changes = {}
    with eval_mode(owner) if isinstance(owner, nn.Module) else contextlib.nullcontext():
        base = outputs(0)
        for s in shifts:
            out, ref = outputs(s), base
            if stride is not None and s:
                if out.ndim != 4:
                    raise CourseError("stride= compares feature maps (N, C, h, w); "
                                      f"this function returns shape {tuple(out.shape)}.")
                k = s // stride
                if abs(k) >= out.shape[-1]:
                    raise CourseError(f"A shift of {s} pixels moves the {out.shape[-1]}-cell wide map out of its "
                                      "frame.")
                out, ref = (out[..., k:], base[..., :-k]) if k > 0 else (out[..., :k], base[..., -k:])
            changes[s] = code_change(ref, out)
    return changes


def shift_sensitivity_at_init(build: Callable[[], nn.Module], images: torch.Tensor | ImageData,
                              seeds: Iterable[int] = range(10), shift: int = 1) -> list[float]:
    """Return ``shift_sensitivity`` of untrained models' codes for a ``shift``-pixel shift, one model per seed.

    Each model is ``build()`` right after ``seed_everything(seed)``: one initialisation per seed. Two builders whose
    models have the same parameter shapes (``ours(config, "pool")`` and ``ours(config, "stride")``) get the same
    initial weights from the same seed, so their lists compare the two designs seed by seed.
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

    Each curve gets its own marker and line style. A curve whose every point lies on a curve drawn before it (the
    same growth, or its first layers) is drawn on top with large hollow markers, and its legend entry names the
    curve it lies on.
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
