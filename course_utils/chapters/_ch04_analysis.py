"""Chapter 04's hand-written helpers; the bottlenecks are written in the notebook (``ch04_bottleneck_size``).

Compression tables, code shapes and the map entering a bottleneck, spatial code sizes, the PCA curve (one
`fit_pca` with the largest size, truncated for every smaller one), sharpness, curve plots, and the comparison
of the reference models with PCA and UvA's tutorial 9. The chapter's two pitfalls, borrowed from UvA's deep
learning tutorial 9 and measured on real images: ``image_edits`` makes the edits of its "MSE is not perceptual
similarity" demonstration (what MSE rewards), and ``batches_of`` with ``reconstruct_in_batches`` show how batch
normalisation in training mode makes one image's reconstruction depend on the other images of its batch (what
batch normalisation couples); ``plot_versions`` shows the edited images with their MSE. Its name does not start
with ``ch04_`` because ``tools/save_cells.py`` writes the chapter's saved cells into its one ``chNN_*.py`` module.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data import ImageData, to_float
from ..engine import eval_mode
from ..errors import CourseError
from ..metrics import fit_pca, model_value_range, pca_parameters, psnr_from_mse


def code_shape(model: nn.Module, image_shape: Sequence[int]) -> tuple[int, ...]:
    """Return the shape of one image's code (e.g. (256,) for a flat code, (16, 4, 4) for a map)."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        return tuple(model.encode(torch.zeros(1, *image_shape, device=device)).shape[1:])


def bottleneck_map(model: nn.Module, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return (channels, height, width) of the feature map that enters the model's bottleneck."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        return tuple(model.encoder(torch.zeros(1, *image_shape, device=device)).shape[1:])  # type: ignore


def spatial_code_size(target: int, map_area: int) -> int:
    """Return the largest multiple of ``map_area`` (h*w) not above ``target``, and at least one map."""
    if target <= 0 or map_area <= 0:
        raise CourseError(f"target and map_area must be positive, got {target} and {map_area}.")
    return max(map_area, target // map_area * map_area)


def compression_table(image_shape: Sequence[int], code_sizes: Sequence[int]):
    """Return a DataFrame with, per code size, the values kept and the compression ratio C*H*W / code size."""
    import pandas as pd
    values = int(np.prod(image_shape))
    if any(k <= 0 for k in code_sizes):
        raise CourseError(f"Code sizes must be positive (a code keeps at least one value), got {list(code_sizes)}.")
    rows = [{"code size": int(k), "values per image": values, "compression ratio": values / k,
             "% of values kept": 100.0 * k / values,
             "bytes ratio (uint8 image / float32 code)": values / (4 * k)} for k in code_sizes]
    return pd.DataFrame(rows).set_index("code size")


@torch.no_grad()
def pca_curve(train: ImageData, test: ImageData, sizes: Sequence[int], ssim: bool = True,
              keep_reconstructions: int = 0) -> dict[int, dict]:
    """Fit PCA once on ``train`` and score test reconstructions with each number of components.

    One `fit_pca` with the largest size replaces one fit per size: its axes come sorted by explained
    variance, so its first k axes are the k-component PCA (exactly so where the fit is exact, which
    `fit_pca` is when there are more than twice as many images as pixels). With
    ``keep_reconstructions=n`` each result also holds the first ``n`` test reconstructions.
    """
    if not sizes or min(sizes) <= 0:
        raise CourseError(f"PCA needs 1 <= n_components for every size, got {list(sizes)}.")
    if tuple(test.image_shape) != tuple(train.image_shape):
        raise CourseError(f"Train images are {train.image_shape} but test images are {test.image_shape}.")
    pca = fit_pca(train, max(sizes))  # the largest size; smaller ones keep its first k axes
    mean = torch.from_numpy(pca.mean_).float()
    components = torch.from_numpy(pca.components_).float()  # largest k x pixels, by explained variance
    target = to_float(test.images)
    centred = target.flatten(1) - mean
    results = {}
    for k in sizes:
        axes = components[:k]  # k x pixels
        recon = ((centred @ axes.T) @ axes + mean).clamp_(0, 1).view_as(target)
        mse = float(((recon - target) ** 2).mean(dtype=torch.float64))
        scores = {"mse": mse, "psnr": psnr_from_mse(mse)}
        if ssim:
            from torchmetrics.functional.image import structural_similarity_index_measure
            scores["ssim"] = float(structural_similarity_index_measure(recon, target, data_range=1.0))
        scores["explained_variance"] = float(pca.explained_variance_ratio_[:k].sum())
        scores["code size"] = int(k)
        scores["parameters"] = pca_parameters(k, train.image_shape)
        if keep_reconstructions:
            scores["reconstructions"] = recon[:keep_reconstructions].clone()
        results[int(k)] = scores
    return results


def gradient_energy(images: torch.Tensor) -> torch.Tensor:
    """Return each image's mean squared difference between neighbouring pixels (a sharpness score)."""
    x = to_float(images)
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    return dx + dy


def plot_code_size_curve(curves: Mapping[str, Mapping[int, Mapping[str, float]]], title: str | None = None,
                         image_values: int | None = None):
    """Plot test MSE and PSNR against code size (log x axis), one line per method, in two panels."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = ["o-", "s-", "^--", "D:", "v-.", "x-"]
    for style, (name, curve) in zip(styles * 4, curves.items()):
        sizes = sorted(curve)
        for ax, metric in zip(axes, ("mse", "psnr")):
            ax.plot(sizes, [curve[k][metric] for k in sizes], style, label=name)
    ticks = sorted(next(iter(curves.values()), {}))  # label the first method's sizes
    for ax, metric in zip(axes, ("mse", "psnr")):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("code size (values per image, log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        if image_values:
            top = ax.secondary_xaxis("top")
            top.set_xticks(ticks, [f"{image_values / k:.3g}x" for k in ticks])
            top.xaxis.set_minor_locator(plt.NullLocator())
            top.set_xlabel("compression ratio (input values / code size)")
    axes[0].set_ylabel("test MSE per value (log scale, lower is better)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("test PSNR in dB (higher is better)")
    axes[0].set_title("Reconstruction error")
    axes[1].set_title("Peak signal-to-noise ratio")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# Literature values, not measured here: per-pixel test MSE on [0, 1] of the CIFAR-10 autoencoders in UvA's deep
# learning tutorial 9 (https://uvadlc-notebooks.readthedocs.io/en/latest/tutorial_notebooks/tutorial9/AE_CIFAR10.html),
# read from the points of its plot of reconstruction error against latent size after 500 epochs: summed squared
# errors per image on [-1, 1] of 87.1, 50.2, 25.4 and 15.8, divided by 3 x 32 x 32 values and by 4 (the squared
# width of [-1, 1] against [0, 1]). It trains on the original CIFAR-10 with a 5,000-image validation split; the
# course's copy is JPEG-derived (see the data README), so the comparison is close but not exact.
UVA_TUTORIAL9_TEST_MSE = {k: sse / (3 * 32 * 32 * 4) for k, sse in {64: 87.1, 128: 50.2, 256: 25.4, 384: 15.8}.items()}
UVA_TIE = 0.005  # within 0.5% of UvA's number, read off a plot, is a tie: neither model is better


def versus_uva(mse: float, uva_mse: float) -> str:
    """Return how a test MSE compares with UvA's: 'ties with UvA', 'beats UvA by x%' or 'is x% worse than UvA'."""
    ratio = mse / uva_mse
    if abs(ratio - 1) <= UVA_TIE:
        return f"ties with UvA (within {100 * UVA_TIE:.1f}%)"
    return f"beats UvA by {100 * (1 - ratio):.1f}%" if ratio < 1 else f"is {100 * (ratio - 1):.1f}% worse than UvA"


AUGMENTATIONS = {None: "no", "flip_half": "mirrored halves"}  # a reference recipe's "augment", in words


def reference_comparison(sizes: Sequence[int] = (64, 128, 256, 384), dataset: str = "cifar10",
                         test: ImageData | None = None):
    """Return a DataFrame comparing the converged reference models with PCA and UvA tutorial 9, per code size.

    Every score is on the whole test split, as recorded in the references' manifest when they were
    trained (``benchmarks/train_references.py``); PCA is fitted on the same training images as the
    reference. With ``test`` (e.g. this profile's test images) a column re-measures each reference
    here. Sizes without a reference get empty cells.
    """
    import pandas as pd

    from ..metrics import evaluate
    from ..pretrained import has_pretrained, load_pretrained, pretrained_info

    rows = []
    for k in sizes:
        name = f"{dataset}-{k}"
        row = {"code size": k, "reference": name if has_pretrained(name) else "not present"}
        if has_pretrained(name):
            info = pretrained_info(name)
            architecture = info["architecture"]
            row.update({"bottleneck": f"{architecture['bottleneck']}, width {architecture['widths'][0]}",
                        "epochs": info["epochs"], "batch": info["recipe"]["batch_size"],
                        "augmented": AUGMENTATIONS.get(info["recipe"].get("augment"), info["recipe"].get("augment")),
                        "trained on": "GPU" if info.get("device") == "cuda" else "CPU",
                        "train seconds": info["wall_seconds"], "reference MSE": info["test_mse"],
                        "PCA MSE": info["pca_test_mse"]})
            if test is not None:
                row[f"reference MSE, {len(test):,} test images here"] = evaluate(load_pretrained(name), test,
                                                                              ssim=False)["mse"]
        if dataset == "cifar10" and k in UVA_TUTORIAL9_TEST_MSE:
            row["UvA tutorial 9 MSE (literature)"] = UVA_TUTORIAL9_TEST_MSE[k]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("code size")
    if "reference MSE" in table:
        table["reference / PCA"] = table["reference MSE"] / table["PCA MSE"]
        if "UvA tutorial 9 MSE (literature)" in table:
            table["reference / UvA"] = table["reference MSE"] / table["UvA tutorial 9 MSE (literature)"]
    return table


# --------------------------------------------------------------------------- two pitfalls
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
    import textwrap

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
            label = textwrap.fill(name, 20)  # long names wrap instead of running into the next column's
            ax.set_title((f"{label}\n" if row == 0 else "") + ("" if col == 0 else f"MSE {mse:.4f}"), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"test image {i}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
