"""Chapter 03's exercises: the output size, zeros then convolve, a stage that smooths, stride 3's even kernels."""
from __future__ import annotations

from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from ..chapters.ch03_transposed_convolutions import GrowingDecoder, TransposedStage
from . import exercise


# --------------------------------------------------------------------------- 03.1 the output size
def transposed_output_side(n: int, kernel: int, stride: int, padding: int, output_padding: int) -> int:
    """Return the height (or width) of a transposed convolution's output for an input side of n pixels."""
    return (n - 1) * stride - 2 * padding + (kernel - 1) + output_padding + 1


def _stride_times(n, kernel, stride, padding, output_padding):  # a typical wrong answer: "it doubles"
    return stride * n


def _without_output_padding(n, kernel, stride, padding, output_padding):
    return (n - 1) * stride - 2 * padding + kernel


TRANSPOSED_CASES = [(7, 2, 2, 0, 0), (8, 3, 2, 1, 1), (8, 3, 2, 1, 0), (8, 4, 2, 1, 0), (8, 3, 2, 0, 0),
                    (7, 5, 3, 1, 2), (32, 5, 1, 2, 0)]


@exercise("03.1", "a transposed convolution's output size", solution=transposed_output_side,
          wrong=[_stride_times, _without_output_padding],
          hint="(n - 1) * stride - 2 * padding + (kernel - 1) + output_padding + 1: the last input pixel's stamp "
               "starts (n - 1) * stride pixels in and is kernel wide; padding crops on both sides, "
               "output_padding adds rows at the bottom")
def _check_transposed_output_side(answer) -> str | None:
    for n, k, s, p, op in TRANSPOSED_CASES:
        layer = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op)
        truth = layer(torch.zeros(1, 1, n, n)).shape[-1]
        got = answer(n, k, s, p, op)
        if not isinstance(got, int) or got != truth:
            return (f"transposed_output_side({n}, {k}, {s}, {p}, {op}) returned {got!r}, but "
                    f"nn.ConvTranspose2d(kernel_size={k}, stride={s}, padding={p}, output_padding={op}) "
                    f"turns {n} pixels into {truth}")
    return None


# --------------------------------------------------------------------------- 03.2 zeros, then convolve
def conv_transpose_by_zeros(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int,
                            output_padding: int) -> torch.Tensor:
    """Return F.conv_transpose2d(x, weight, stride=stride, ...), computed by zero insertion and F.conv2d."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    spread = x.new_zeros(n, c, (h - 1) * stride + 1, (w - 1) * stride + 1)  # stride - 1 zeros between pixels
    spread[..., ::stride, ::stride] = x
    q = k - 1 - padding
    spread = F.pad(spread, (q, q + output_padding, q, q + output_padding))  # left, right, top, bottom
    return F.conv2d(spread, weight.flip(-2, -1).transpose(0, 1))  # flipped kernel, (in, out) => (out, in)


def _not_flipped(x, weight, stride, padding, output_padding):  # a typical wrong answer: the kernel as it is
    n, c, h, w = x.shape
    q = weight.shape[-1] - 1 - padding
    spread = x.new_zeros(n, c, (h - 1) * stride + 1, (w - 1) * stride + 1)
    spread[..., ::stride, ::stride] = x
    return F.conv2d(F.pad(spread, (q, q + output_padding, q, q + output_padding)), weight.transpose(0, 1))


def _forgets_output_padding(x, weight, stride, padding, output_padding):
    return conv_transpose_by_zeros(x, weight, stride, padding, 0)


def _calls_conv_transpose(x, weight, stride, padding, output_padding):  # right numbers, but not the exercise
    return F.conv_transpose2d(x, weight, stride=stride, padding=padding, output_padding=output_padding)


@exercise("03.2", "zeros, then convolve", solution=conv_transpose_by_zeros,
          wrong=[_not_flipped, _forgets_output_padding, _calls_conv_transpose],
          hint="put x at every stride-th position of a zero tensor of side (H - 1) * stride + 1, pad each side by "
               "k - 1 - padding (plus output_padding at the bottom and right), then F.conv2d with "
               "weight.flip(-2, -1).transpose(0, 1); use only F.pad and F.conv2d")
def _check_conv_transpose_by_zeros(answer) -> str | None:
    g = torch.Generator().manual_seed(3)
    for k, s, p, op in [(3, 2, 1, 1), (4, 2, 1, 0), (2, 2, 0, 0), (5, 2, 2, 1), (5, 3, 1, 2)]:
        x, weight = torch.randn(2, 4, 6, 6, generator=g), torch.randn(4, 3, k, k, generator=g)
        truth = F.conv_transpose2d(x, weight, stride=s, padding=p, output_padding=op)

        def refuse(*args, **kwargs):
            raise AssertionError("uses F.conv_transpose2d")

        with mock.patch.object(F, "conv_transpose2d", refuse), mock.patch.object(torch, "conv_transpose2d", refuse):
            try:
                got = answer(x, weight, s, p, op)
            except AssertionError:
                return "it calls F.conv_transpose2d (or nn.ConvTranspose2d); build it from F.pad and F.conv2d"
        if not isinstance(got, torch.Tensor) or got.shape != truth.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"for k={k}, stride={s}, padding={p}, output_padding={op} it returned {shape}, not {tuple(truth.shape)}"
        error = float((got - truth).abs().max())
        if error > 1e-4 * float(truth.abs().max()):
            return (f"for k={k}, stride={s}, padding={p}, output_padding={op} its values differ from "
                    f"F.conv_transpose2d's by up to {error:.3g}")
    return None


# --------------------------------------------------------------------------- 03.3 a stage that smooths
class SmoothTransposedStage(nn.Module):
    """Grow C_in x H x W to C_out x 2H x 2W with a TransposedStage, then a 3x3 convolution and a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            TransposedStage(in_channels, out_channels, kernel_size),  # C_in x H x W => C_out x 2H x 2W
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(),  # C_out x 2H x 2W => the same
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _NoSecondConv(TransposedStage):  # a typical wrong answer: the plain stage
    def __init__(self, in_channels, out_channels, kernel_size=3):
        super().__init__(in_channels, out_channels, kernel_size)


class _UnpaddedSecondConv(nn.Module):  # another: the 3x3 convolution without padding shrinks the map
    def __init__(self, in_channels, out_channels, kernel_size=3):
        super().__init__()
        self.net = nn.Sequential(TransposedStage(in_channels, out_channels, kernel_size),
                                 nn.Conv2d(out_channels, out_channels, 3), nn.ReLU())

    def forward(self, x):
        return self.net(x)


@exercise("03.3", "a stage that smooths", solution=SmoothTransposedStage, wrong=[_NoSecondConv, _UnpaddedSecondConv],
          hint="self.net = nn.Sequential(TransposedStage(in_channels, out_channels, kernel_size), "
               "nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU()); padding=1 keeps the size")
def _check_smooth_stage(answer) -> str | None:
    x = torch.randn(2, 64, 8, 8)
    for k in (2, 3, 4):
        stage = answer(64, 32, kernel_size=k)
        with torch.no_grad():
            out = stage(x)
        if tuple(out.shape) != (2, 32, 16, 16):
            return f"with kernel_size={k} it turns a batch of 2 maps of 64x8x8 into {tuple(out.shape)}, not (2, 32, 16, 16)"
        expected = (64 * 32 * k * k + 32) + (32 * 32 * 9 + 32)
        count = sum(p.numel() for p in stage.parameters())
        if count != expected:
            return (f"with kernel_size={k} it holds {count:,} parameters; a {k}x{k} transposed convolution from 64 to "
                    f"32 channels and a 3x3 convolution from 32 to 32, with biases, hold {expected:,}")
        if float(out.min()) < 0:
            return "some outputs are negative: end the stage with a ReLU"
    decoder = GrowingDecoder(answer)  # it must also fit the chapter's decoder
    with torch.no_grad():
        shape = tuple(decoder(torch.rand(1, 4, 8, 8)).shape)
    if shape != (1, 3, 32, 32):
        return "GrowingDecoder(SmoothTransposedStage) does not turn a 4x8x8 code into a 3x32x32 image"
    return None


# --------------------------------------------------------------------------- 03.4 stride 3's even kernels
EVEN_KERNELS_STRIDE_3 = [3, 6, 9]


@exercise("03.4", "which kernels overlap evenly at stride 3", solution=EVEN_KERNELS_STRIDE_3,
          wrong=[[3, 5, 7, 9], [4, 6, 8], [3, 4, 5, 6, 7, 8, 9]],
          hint="the overlap is even exactly when the stride divides the kernel size: each output pixel then gets "
               "k / s taps along each axis; check with grid_contrast(overlap_map(TransposedStage(1, 1, k, "
               "stride=3), size=8), 3, border=6)")
def _check_even_kernels(answer) -> str | None:
    if not isinstance(answer, (list, tuple)) or not all(isinstance(k, int) for k in answer):
        return f"the answer is a list of whole kernel sizes, got {answer!r}"
    got = sorted(answer)
    if got == EVEN_KERNELS_STRIDE_3:
        return None
    wrong = sorted(set(got) - set(EVEN_KERNELS_STRIDE_3))
    missing = sorted(set(EVEN_KERNELS_STRIDE_3) - set(got))
    parts = [f"{wrong} overlap unevenly" if wrong else "", f"{missing} are missing" if missing else ""]
    return "; ".join(p for p in parts if p)
