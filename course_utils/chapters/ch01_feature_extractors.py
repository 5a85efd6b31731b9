"""Chapter 01 (convnets as feature extractors, the autoencoder idea): what MSE rewards, and what batch norm couples.

Two cautions the chapter borrows from UvA's deep learning tutorial 9 and measures on real images:
``image_edits`` makes the edits of its "MSE is not perceptual similarity" demonstration, and
``batches_of`` with ``reconstruct_in_batches`` show how batch normalisation in training mode makes one
image's reconstruction depend on the other images of its batch.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..data import ImageData, to_float
from ..errors import CourseError
from ..metrics import model_value_range

SHIFTED, MASKED = "shifted 1 px right and down", "top half replaced by its mean"


def image_edits(images: torch.Tensor | ImageData, blur_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """Return three edited copies of the images (float, [0, 1]): shifted by one pixel, half masked, blurred.

    * shifted: every pixel moved one pixel right and one down; the vacated first row and column take
      the image's mean value (UvA tutorial 9's shift);
    * masked: the top half of the image replaced by the image's mean value (UvA's mask);
    * blurred: a Gaussian blur of ``blur_sigma`` pixels (torchvision's ``gaussian_blur``), the kind of
      softness an MSE-trained autoencoder produces.
    """
    from torchvision.transforms.functional import gaussian_blur

    x = to_float(images.images if isinstance(images, ImageData) else images)
    if x.ndim != 4:
        raise CourseError(f"image_edits takes a batch of images (N, C, H, W), got shape {tuple(x.shape)}.")
    mean = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)  # each image's own mean value
    shifted = torch.roll(x, shifts=(1, 1), dims=(2, 3))  # N x C x H x W, one pixel right and down
    shifted[..., :1, :] = mean[..., :1, :]  # the row and column that rolled in from the other side
    shifted[..., :, :1] = mean[..., :, :1]
    masked = x.clone()
    half = x.shape[-2] // 2
    masked[..., :half, :] = mean[..., :half, :]
    kernel = 2 * round(3 * blur_sigma) + 1  # covers +-3 sigma
    blurred = gaussian_blur(x, kernel_size=kernel, sigma=blur_sigma)
    return {SHIFTED: shifted, MASKED: masked, f"blurred (Gaussian, sigma {blur_sigma:g} px)": blurred}


def batches_of(labels: torch.Tensor, batch_size: int, grouping: str = "mixed", seed: int = 0) -> list[torch.Tensor]:
    """Return index batches covering every image once: random ('mixed') or each of one class ('by class')."""
    if grouping not in ("mixed", "by class"):
        raise CourseError(f"grouping must be 'mixed' or 'by class', got {grouping!r}.")
    if batch_size < 2:
        raise CourseError(f"Batch statistics need at least 2 images per batch, got batch_size={batch_size}.")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    if grouping == "mixed":
        return list(order.split(batch_size))
    labels = labels.cpu()[order]
    return [batch for c in labels.unique().tolist() for batch in order[labels == c].split(batch_size)]


@torch.no_grad()
def reconstruct_in_batches(model: nn.Module, data: ImageData | torch.Tensor, batches: Sequence[torch.Tensor],
                           batch_norm: str = "running") -> torch.Tensor:
    """Return the reconstructions (float, [0, 1], CPU, in the data's order) computed batch by batch as given.

    ``batch_norm="running"`` is evaluation mode: every BatchNorm layer uses the running mean and
    variance it averaged during training, so each image's reconstruction is independent of the others.
    ``batch_norm="batch"`` is what training mode does: each batch is normalised with its *own* mean and
    variance, so an image's reconstruction depends on the images it is batched with. The model is not
    changed (a copy runs, so its running averages are not updated).
    """
    if batch_norm not in ("running", "batch"):
        raise CourseError(f"batch_norm must be 'running' or 'batch', got {batch_norm!r}.")
    images = data.images if isinstance(data, ImageData) else data
    runner = copy.deepcopy(model).eval()
    for module in runner.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and batch_norm == "batch":
            module.train()  # normalise with the batch's statistics
    device = next(runner.parameters()).device
    low, high = model_value_range(runner)
    out = torch.empty(images.shape, dtype=torch.float32)
    for index in batches:
        x = to_float(images[index].to(device), (low, high))
        out[index] = ((runner(x).float() - low) / (high - low)).clamp_(0, 1).cpu()
    return out


def plot_versions(originals: torch.Tensor | ImageData, versions: dict[str, torch.Tensor], picks: Sequence[int],
                  title: str | None = None):
    """Show each picked image and its versions, each titled with its MSE against the original; return the Figure."""
    import matplotlib.pyplot as plt

    x = to_float(originals.images if isinstance(originals, ImageData) else originals)
    columns = {"original": x, **versions}
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(1.9 * len(columns), 2.1 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        for col, (name, images) in enumerate(columns.items()):
            image = images[i].detach().float().cpu().clamp(0, 1)
            ax = axes[row, col]
            ax.imshow(image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy(),
                      cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            mse = float((image - x[i]).pow(2).mean())
            ax.set_title((f"{name}\n" if row == 0 else "") + ("" if col == 0 else f"MSE {mse:.4f}"), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"test image {i}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
