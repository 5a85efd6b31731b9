"""Score models over a whole split: reconstruction MSE, PSNR and SSIM on [0, 1], a PCA baseline, codes, accuracy."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .data import DeviceBatches, ImageData, to_float
from .engine import check_model_fits, eval_mode
from .errors import CourseError


def model_value_range(model: nn.Module) -> tuple[float, float]:
    """Return the input range a model was built for (the seeds' Paperspace model uses [-1, 1])."""
    return tuple(getattr(model, "value_range", (0.0, 1.0)))  # type: ignore[return-value]


def psnr_from_mse(mse: float) -> float:
    """Return the PSNR in dB of a mean squared error on [0, 1] images: 10 log10(1 / MSE)."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor | ImageData, batch_size: int = 512,
                device: torch.device | None = None) -> torch.Tensor:
    """Return the model's reconstructions of uint8 images as float [0, 1] tensors on the CPU."""
    images = images.images if isinstance(images, ImageData) else images
    device = device or next(model.parameters()).device
    check_model_fits(model, tuple(images.shape[1:]), device)  # a clear message, not a convolution's shape error
    low, high = model_value_range(model)
    out = []
    with eval_mode(model):
        for i in range(0, images.shape[0], batch_size):
            x = to_float(images[i:i + batch_size].to(device), (low, high))
            out.append(((model(x).float() - low) / (high - low)).clamp_(0, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData | torch.Tensor, batch_size: int = 500,
             device: torch.device | None = None, ssim: bool = True) -> dict[str, float]:
    """Return test MSE, PSNR (of that mean MSE) and SSIM of a model over a whole split, on [0, 1]."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    device = device or next(model.parameters()).device
    check_model_fits(model, tuple((data.images if isinstance(data, ImageData) else data).shape[1:]), device)
    low, high = model_value_range(model)
    # sync_on_compute=False: the scores are this process's, also in a data-parallel run where only rank 0 evaluates
    psnr = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False).to(device)
    ssim_metric = StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False).to(device) if ssim else None
    sq_error, count = torch.zeros((), device=device, dtype=torch.float64), 0
    with eval_mode(model):
        for x in DeviceBatches(data, min(batch_size, len(data)), device, shuffle=False, value_range=(low, high)):
            y = ((model(x).float() - low) / (high - low)).clamp_(0, 1)
            target = (x - low) / (high - low)
            sq_error += (y - target).pow(2).sum(dtype=torch.float64)
            count += target.numel()
            psnr.update(y, target)
            if ssim_metric is not None:
                ssim_metric.update(y, target)
    mse = float(sq_error) / count
    result = {"mse": mse, "psnr": float(psnr.compute())}
    if ssim_metric is not None:
        result["ssim"] = float(ssim_metric.compute())
    return result


@torch.no_grad()
def per_image_errors(model: nn.Module, data: ImageData | torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Return each image's reconstruction MSE on [0, 1] (for ranking or anomaly scores)."""
    images = data.images if isinstance(data, ImageData) else data
    recon = reconstruct(model, images, batch_size)
    return (recon - to_float(images)).pow(2).flatten(1).mean(1)


@torch.no_grad()
def embed_images(model: nn.Module, data: ImageData | torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Return the codes (flattened) that ``model.encode`` gives a set of uint8 images."""
    images = data.images if isinstance(data, ImageData) else data
    device = next(model.parameters()).device
    low, high = model_value_range(model)
    with eval_mode(model):
        codes = [model.encode(to_float(images[i:i + batch_size].to(device), (low, high))).flatten(1).cpu()
                 for i in range(0, images.shape[0], batch_size)]
    return torch.cat(codes)


def pca_parameters(n_components: int, image_shape) -> int:
    """Return what a PCA code of ``n_components`` stores to encode and decode: the axes plus the mean image."""
    values = int(np.prod(image_shape))
    return n_components * values + values  # k axes of C*H*W values each, and the C*H*W-value mean


def fit_pca(train: ImageData, n_components: int, seed: int = 0):
    """Fit scikit-learn's PCA with ``n_components`` on a split's images (flattened, on [0, 1]); return it.

    The course's one PCA: ``pca_baseline`` scores it, chapter 07 turns its errors into anomaly scores,
    chapter 08 compares its codes, chapter 04 truncates one fit to every smaller size (the axes come sorted
    by explained variance, so the first k of an exact fit are the k-component PCA).
    """
    from sklearn.decomposition import PCA

    dims = int(np.prod(train.image_shape))
    if not 0 < n_components <= min(dims, len(train)):
        raise CourseError(f"PCA needs 1 <= n_components <= min(pixels, train images) = "
                          f"{min(dims, len(train))}, got {n_components}: use fewer components or more images.")
    solver = "covariance_eigh" if len(train) > 2 * dims else "auto"  # exact and fast when N >> pixels
    return PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit(
        to_float(train.images).flatten(1).numpy())


def pca_reconstruct(pca, images: ImageData | torch.Tensor) -> torch.Tensor:
    """Return PCA's reconstructions of uint8 images as floats on [0, 1] (clipped), in the images' shape."""
    images = images.images if isinstance(images, ImageData) else images
    if int(np.prod(images.shape[1:])) != pca.n_features_in_:
        raise CourseError(f"This PCA was fitted on images of {pca.n_features_in_} values, got images of shape "
                          f"{tuple(images.shape[1:])}: use images of the size it was fitted on.")
    x = to_float(images).flatten(1).numpy()
    recon = np.clip(pca.inverse_transform(pca.transform(x)), 0.0, 1.0)
    return torch.from_numpy(recon.astype(np.float32)).view(-1, *images.shape[1:])


def pca_errors(pca, images: ImageData | torch.Tensor) -> torch.Tensor:
    """Return each image's PCA reconstruction MSE on [0, 1] (reconstructions clipped to [0, 1])."""
    images = images.images if isinstance(images, ImageData) else images
    return ((pca_reconstruct(pca, images) - to_float(images)) ** 2).flatten(1).mean(1)


def pca_baseline(train: ImageData, test: ImageData, n_components: int, seed: int = 0,
                 return_reconstructions: bool = False) -> dict:
    """Fit PCA with ``n_components`` on the train split and score reconstructions of the test split."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pca = fit_pca(train, n_components, seed)
    recon_t = pca_reconstruct(pca, test)
    target = to_float(test.images)
    mse = float(((recon_t - target) ** 2).mean())
    ssim = float(structural_similarity_index_measure(recon_t, target, data_range=1.0))
    result = {"mse": mse, "psnr": psnr_from_mse(mse), "ssim": ssim,
              "explained_variance": float(pca.explained_variance_ratio_.sum()),
              "parameters": pca_parameters(n_components, train.image_shape)}
    if return_reconstructions:
        result["reconstructions"] = recon_t
    return result


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageData, batch_size: int = 1000) -> float:
    """Return a classifier's accuracy (fraction correct) over a whole split."""
    device = next(model.parameters()).device
    correct = torch.zeros((), device=device, dtype=torch.int64)
    with eval_mode(model):
        for x, y in DeviceBatches(data, min(batch_size, len(data)), device, shuffle=False, with_labels=True):
            correct += (model(x).argmax(1) == y).sum()
    return int(correct) / len(data)
