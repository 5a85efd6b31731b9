"""Chapter 01's exercises: a convolution's output size, a parameter count, a pooling encoder, PSNR per image."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from . import exercise


# --------------------------------------------------------------------------- 01.1 a convolution's output side
def conv_output_side(n: int, kernel: int, stride: int, padding: int) -> int:
    """Return the height (or width) of a convolution's output for an input side of n pixels."""
    return (n + 2 * padding - kernel) // stride + 1


def _without_floor(n, kernel, stride, padding):
    return (n + 2 * padding - kernel) / stride + 1


def _without_padding(n, kernel, stride, padding):
    return (n - kernel) // stride + 1


CONV_CASES = [(28, 3, 2, 1), (14, 3, 2, 1), (28, 3, 1, 1), (32, 4, 2, 1), (7, 3, 1, 0), (224, 7, 2, 3), (29, 3, 2, 1)]


@exercise("01.1", "a convolution's output size", solution=conv_output_side, wrong=[_without_floor, _without_padding],
          hint="count the positions the kernel can take: (n + 2 * padding - kernel) // stride + 1, a whole number "
               "(// rounds down, as PyTorch does)")
def _check_conv_output_side(answer) -> str | None:
    for n, k, s, p in CONV_CASES:
        truth = nn.Conv2d(1, 1, k, stride=s, padding=p)(torch.zeros(1, 1, n, n)).shape[-1]
        got = answer(n, k, s, p)
        if not isinstance(got, int) or got != truth:
            return (f"conv_output_side({n}, {k}, {s}, {p}) returned {got!r}, but nn.Conv2d(kernel_size={k}, "
                    f"stride={s}, padding={p}) turns {n} pixels into {truth}")
    return None


# --------------------------------------------------------------------------- 01.2 the decoder's parameters
DECODER_PARAMETERS = (4 * 32 * 3 * 3 + 32) + (32 * 16 * 4 * 4 + 16) + (16 * 1 * 4 * 4 + 1)  # weights + biases


@exercise("01.2", "the decoder's parameters, by hand", solution=DECODER_PARAMETERS,
          wrong=[4 * 32 * 3 * 3 + 32 * 16 * 4 * 4 + 16 * 1 * 4 * 4, 4 * 32 * 3 * 3 + 32 + 32 * 16 * 3 * 3 + 16 + 16 * 9 + 1],
          hint="each layer holds in x out x k x k weights plus out biases: Conv2d(4, 32, 3), "
               "ConvTranspose2d(32, 16, 4) and ConvTranspose2d(16, 1, 4); ReLU and Sigmoid hold none")
def _check_decoder_parameters(answer) -> str | None:
    if not isinstance(answer, int):
        return f"the answer is a whole number of parameters, got {answer!r}"
    if answer == DECODER_PARAMETERS:
        return None
    weights = DECODER_PARAMETERS - (32 + 16 + 1)
    if answer == weights:
        return f"{answer:,} counts the weights but not the biases"
    return f"{answer:,} is {'more' if answer > DECODER_PARAMETERS else 'fewer'} than the decoder holds"


# --------------------------------------------------------------------------- 01.3 an encoder that pools
class PoolingEncoder(nn.Module):
    """Map images of 1x28x28 to codes of 4x7x7 with max-pooling instead of strided convolutions."""

    def __init__(self, in_channels: int = 1, width: int = 16, code_channels: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 1x28x28 => 16x14x14
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x14x14 => 32x7x7
            nn.Conv2d(2 * width, code_channels, 3, padding=1),  # 32x7x7 => 4x7x7: the code
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _StridedAgain(nn.Module):  # a typical wrong answer: the chapter's encoder, no pooling at all
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 3, padding=1))

    def forward(self, x):
        return self.net(x)


class _PoolsOnce(nn.Module):  # another: pools once, so the code is 4x14x14
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 3, padding=1))

    def forward(self, x):
        return self.net(x)


@exercise("01.3", "an encoder that pools", solution=PoolingEncoder, wrong=[_StridedAgain, _PoolsOnce],
          hint="keep the three 3x3 convolutions with padding 1 (stride 1), put nn.MaxPool2d(2) after each of the "
               "first two ReLUs: 28 => 14 => 7")
def _check_pooling_encoder(answer) -> str | None:
    model = answer()
    code = model(torch.zeros(2, 1, 28, 28))
    if tuple(code.shape) != (2, 4, 7, 7):
        return f"a batch of 2 images of 1x28x28 gave codes of shape {tuple(code.shape)}, not (2, 4, 7, 7)"
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model.modules())
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    if pools != 2 or strided:
        return f"it has {pools} max-pooling layer(s) and {len(strided)} strided convolution(s); expected 2 and 0"
    count = sum(p.numel() for p in model.parameters())
    if count != 5_956:
        return f"it has {count:,} parameters; the three convolutions of widths 16, 32 and 4 hold 5,956"
    return None


# --------------------------------------------------------------------------- 01.4 PSNR, image by image
@torch.no_grad()
def evaluate_psnr(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> float:
    """Return the mean over images of each image's PSNR in dB, 10 log10(1 / its MSE), for pixels in [0, 1]."""
    model.eval()
    values = []
    for (x,) in loader:
        x = x.to(device)
        mse = (model(x) - x).pow(2).flatten(1).mean(1)  # one MSE per image
        values.append(10 * torch.log10(1 / mse))
    return float(torch.cat(values).mean())


@torch.no_grad()
def _psnr_of_the_mean_mse(model, loader, device="cpu"):  # a typical wrong answer: one PSNR for the whole set
    model.eval()
    errors = torch.cat([(model(x) - x).pow(2).flatten(1).mean(1) for (x,) in loader])
    return float(10 * torch.log10(1 / errors.mean()))


def _noisy_copy() -> nn.Module:
    """Return a model whose errors differ from image to image: the input plus noise scaled per image."""
    class NoisyCopy(nn.Module):
        def forward(self, x):
            scale = torch.linspace(0.01, 0.2, x.shape[0]).view(-1, 1, 1, 1)
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
            return (x + scale * noise).clamp(0, 1)
    return NoisyCopy()


@exercise("01.4", "PSNR, image by image", solution=evaluate_psnr, wrong=[_psnr_of_the_mean_mse],
          hint="compute one MSE per image (.flatten(1).mean(1)), turn each into 10 * log10(1 / mse), then average "
               "those PSNRs; the PSNR of the average MSE is a different number")
def _check_evaluate_psnr(answer) -> str | None:
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(images), batch_size=5)  # batches of unequal size: 5, 5, 5, 1
    got, truth = answer(_noisy_copy(), loader), evaluate_psnr(_noisy_copy(), loader)
    if not isinstance(got, float) or not math.isfinite(got):
        return f"it returned {got!r}; expected a float number of dB"
    if abs(got - truth) > 1e-3:
        return f"it returned {got:.3f} dB on 16 test images where the mean of the per-image PSNRs is {truth:.3f} dB"
    return None
