"""Chapter 04's exercises: bytes of a code, a flat bottleneck, PCA by hand."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import exercise


# --------------------------------------------------------------------------- 04.1 compression, in bytes
def compression_in_bytes(image_shape: tuple[int, int, int], code_values: int, bytes_per_value: int = 4) -> float:
    """Return how many times fewer bytes a code takes than its uint8 image (one byte per pixel value)."""
    return math.prod(image_shape) / (code_values * bytes_per_value)


@exercise("04.1", "compression, in bytes", solution=compression_in_bytes,
          wrong=[lambda shape, k, b=4: math.prod(shape) / k, lambda shape, k, b=4: math.prod(shape) * b / k],
          hint="the image is stored as uint8, one byte per value; the code as bytes_per_value bytes per value "
               "(4 for float32): divide the image's bytes by the code's bytes")
def _check_compression(answer) -> str | None:
    for shape, k, b in [((3, 32, 32), 256, 4), ((1, 28, 28), 49, 4), ((3, 32, 32), 1000, 4), ((3, 64, 64), 128, 2)]:
        truth, got = compression_in_bytes(shape, k, b), answer(shape, k, b)
        if not isinstance(got, (int, float)) or abs(got - truth) > 1e-9 * truth:
            return f"compression_in_bytes({shape}, {k}, {b}) returned {got!r}, expected {truth:g}"
    return None


# --------------------------------------------------------------------------- 04.2 a flat bottleneck
class FlatBottleneck(nn.Module):
    """Turn a feature map of shape (C, H, W) into a flat code of `code` values and back."""

    def __init__(self, feature_shape: tuple[int, int, int] = (64, 8, 8), code: int = 256):
        super().__init__()
        values = math.prod(feature_shape)
        self.encode = nn.Sequential(nn.Flatten(), nn.Linear(values, code))  # 64x8x8 => 4,096 => 256
        self.decode = nn.Sequential(nn.Linear(code, values), nn.Unflatten(1, feature_shape))  # 256 => 64x8x8

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(features))


class _NoWayBack(nn.Module):  # a typical wrong answer: decodes to a flat vector, not to the map
    def __init__(self, feature_shape=(64, 8, 8), code=256):
        super().__init__()
        values = math.prod(feature_shape)
        self.encode = nn.Sequential(nn.Flatten(), nn.Linear(values, code))
        self.decode = nn.Linear(code, values)

    def forward(self, features):
        return self.decode(self.encode(features))


@exercise("04.2", "a flat bottleneck", solution=FlatBottleneck, wrong=[_NoWayBack],
          hint="encode: nn.Flatten() then nn.Linear(C*H*W, code); decode: nn.Linear(code, C*H*W) then "
               "nn.Unflatten(1, (C, H, W)), so the decoder's convolutions get their map back")
def _check_flat_bottleneck(answer) -> str | None:
    model = answer((64, 8, 8), 256)
    x = torch.randn(3, 64, 8, 8)
    code = model.encode(x)
    if tuple(code.shape) != (3, 256):
        return f"encode turned a batch of 3 maps of 64x8x8 into shape {tuple(code.shape)}, not (3, 256)"
    out = model(x)
    if tuple(out.shape) != (3, 64, 8, 8):
        return f"the output has shape {tuple(out.shape)}, not the input's (3, 64, 8, 8)"
    count = sum(p.numel() for p in model.parameters())
    if count != 2 * 4096 * 256 + 256 + 4096:
        return f"it holds {count:,} parameters; two Linear layers between 4,096 and 256 values hold 2,101,504"
    return None


# --------------------------------------------------------------------------- 04.3 PCA by hand
def pca_reconstruct(train: torch.Tensor, images: torch.Tensor, k: int) -> torch.Tensor:
    """Return images (N x D) rebuilt from their first k principal components, fitted on train (M x D)."""
    mean = train.mean(0)
    _, _, vt = torch.linalg.svd(train - mean, full_matrices=False)  # rows of vt: the principal axes
    axes = vt[:k]  # k x D
    codes = (images - mean) @ axes.T  # N x k: coordinates along the axes
    return codes @ axes + mean


def _uncentred(train, images, k):  # a typical wrong answer: forgets to subtract the mean
    _, _, vt = torch.linalg.svd(train, full_matrices=False)
    return (images @ vt[:k].T) @ vt[:k]


@exercise("04.3", "PCA by hand", solution=pca_reconstruct, wrong=[_uncentred],
          hint="subtract the training mean before the SVD and before projecting, and add it back after: "
               "codes = (x - mean) @ axes.T, rebuilt = codes @ axes + mean, axes = the first k rows of Vt")
def _check_pca(answer) -> str | None:
    from sklearn.decomposition import PCA
    g = np.random.default_rng(0)
    train = g.random((200, 30)) @ g.random((30, 30)) + 2.0  # correlated values with a mean far from 0
    images = g.random((20, 30)) @ g.random((30, 30)) + 2.0
    pca = PCA(5, svd_solver="full").fit(train)
    truth = pca.inverse_transform(pca.transform(images))
    got = answer(torch.tensor(train, dtype=torch.float64), torch.tensor(images, dtype=torch.float64), 5)
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got)
    if got.shape != truth.shape:
        return f"it returned shape {got.shape}, not the images' {truth.shape}"
    error = float(np.abs(got - truth).max() / np.abs(truth).max())
    if error > 1e-6:
        return f"its reconstruction differs from scikit-learn's PCA by up to {error:.1e} of the largest value"
    return None
