"""Chapter 04's exercises: bytes of a code, a cheaper flat bottleneck, PCA by hand."""
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


# --------------------------------------------------------------------------- 04.2 a cheaper flat bottleneck
class SqueezedFlatBottleneck(nn.Module):
    """Squeeze a feature map's channels with a 1x1 convolution, then flatten it into code_size values; and back."""

    def __init__(self, channels: int = 64, height: int = 8, width: int = 8, code_size: int = 256,
                 squeezed_channels: int = 8):
        super().__init__()
        values = squeezed_channels * height * width  # 8 x 8 x 8 = 512
        self.encode = nn.Sequential(
            nn.Conv2d(channels, squeezed_channels, 1),  # 64x8x8 => 8x8x8
            nn.Flatten(),  # 8x8x8 => 512
            nn.Linear(values, code_size),  # 512 => 256
        )
        self.decode = nn.Sequential(
            nn.Linear(code_size, values), nn.ReLU(),  # 256 => 512
            nn.Unflatten(1, (squeezed_channels, height, width)),  # 512 => 8x8x8
            nn.Conv2d(squeezed_channels, channels, 1), nn.ReLU(),  # 8x8x8 => 64x8x8
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(features))


def squeezed_parameters(channels: int, height: int, width: int, code_size: int, squeezed: int) -> int:
    """Return the parameters of SqueezedFlatBottleneck: two 1x1 convolutions and two Linear layers."""
    values = squeezed * height * width
    return ((channels * squeezed + squeezed) + (values * code_size + code_size)
            + (code_size * values + values) + (squeezed * channels + channels))


class _NoWayBack(nn.Module):  # a typical wrong answer: decodes to the squeezed map, not to the encoder's channels
    def __init__(self, channels=64, height=8, width=8, code_size=256, squeezed_channels=8):
        super().__init__()
        values = squeezed_channels * height * width
        self.encode = nn.Sequential(nn.Conv2d(channels, squeezed_channels, 1), nn.Flatten(),
                                    nn.Linear(values, code_size))
        self.decode = nn.Sequential(nn.Linear(code_size, values), nn.ReLU(),
                                    nn.Unflatten(1, (squeezed_channels, height, width)))

    def forward(self, features):
        return self.decode(self.encode(features))


class _ThreeByThree(SqueezedFlatBottleneck):  # a typical wrong answer: 3x3 convolutions, 9x the squeeze's weights
    def __init__(self, channels=64, height=8, width=8, code_size=256, squeezed_channels=8):
        super().__init__(channels, height, width, code_size, squeezed_channels)
        self.encode[0] = nn.Conv2d(channels, squeezed_channels, 3, padding=1)
        self.decode[3] = nn.Conv2d(squeezed_channels, channels, 3, padding=1)


@exercise("04.2", "a cheaper flat bottleneck", solution=SqueezedFlatBottleneck, wrong=[_NoWayBack, _ThreeByThree],
          hint="encode: nn.Conv2d(channels, squeezed_channels, 1), nn.Flatten(), nn.Linear(squeezed*H*W, code_size); "
               "decode: nn.Linear(code_size, squeezed*H*W), nn.ReLU(), nn.Unflatten(1, (squeezed, H, W)), "
               "nn.Conv2d(squeezed_channels, channels, 1), nn.ReLU()")
def _check_squeezed_bottleneck(answer) -> str | None:
    for channels, height, width, code, squeezed in [(64, 8, 8, 256, 8), (32, 7, 7, 49, 4)]:
        model = answer(channels, height, width, code, squeezed)
        x = torch.randn(3, channels, height, width)
        got = tuple(model.encode(x).shape)
        if got != (3, code):
            return f"encode turned a batch of 3 maps of {channels}x{height}x{width} into shape {got}, not (3, {code})"
        out = tuple(model(x).shape)
        if out != (3, channels, height, width):
            return f"the output has shape {out}, not the input's (3, {channels}, {height}, {width})"
        count, truth = sum(p.numel() for p in model.parameters()), squeezed_parameters(channels, height, width,
                                                                                       code, squeezed)
        if count != truth:
            return (f"for a {channels}x{height}x{width} map, a {code}-value code and {squeezed} squeezed channels it "
                    f"holds {count:,} parameters, not {truth:,} (two 1x1 convolutions and two Linear layers)")
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
