"""Chapter 02's exercises: a stage of two convolutions, average pooling, a receptive field, shifts in 2-D."""
from __future__ import annotations

import torch
from torch import nn

from ..layers import receptive_field
from . import exercise


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


# --------------------------------------------------------------------------- 02.1 a stage with two convolutions
def double_conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Return a stage of two 3x3 convolutions, each followed by a ReLU, then a 2x2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(),  # C x H x W => C' x H x W
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(),  # C' x H x W => C' x H x W
        nn.MaxPool2d(2),  # C' x H x W => C' x H/2 x W/2
    )


def _pools_after_each(in_channels, out_channels):  # a typical wrong answer: halves twice
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


def _no_padding(in_channels, out_channels):  # another: each 3x3 convolution shrinks the map by 2 pixels
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 3), nn.ReLU(), nn.MaxPool2d(2))


def _second_from_input(in_channels, out_channels):  # another: both convolutions from in_channels, one fed wrongly
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 1), nn.ReLU(), nn.MaxPool2d(2))


@exercise("02.1", "a stage with two convolutions", solution=double_conv_stage,
          wrong=[_pools_after_each, _no_padding, _second_from_input],
          hint="nn.Sequential(Conv2d(C, C', 3, padding=1), ReLU, Conv2d(C', C', 3, padding=1), ReLU, MaxPool2d(2)): "
               "padding 1 keeps H x W through both convolutions, and the one pool halves it")
def _check_double_conv_stage(answer) -> str | None:
    for c_in, c_out, side in ((3, 16, 32), (1, 8, 28), (16, 32, 14)):
        stage = answer(c_in, c_out)
        out = stage(torch.zeros(2, c_in, side, side))
        if tuple(out.shape) != (2, c_out, side // 2, side // 2):
            return (f"double_conv_stage({c_in}, {c_out}) turned a batch of shape (2, {c_in}, {side}, {side}) into "
                    f"{tuple(out.shape)}, not (2, {c_out}, {side // 2}, {side // 2})")
        expected = 9 * c_in * c_out + c_out + 9 * c_out * c_out + c_out
        if _parameters(stage) != expected:
            return f"double_conv_stage({c_in}, {c_out}) holds {_parameters(stage):,} parameters, not {expected:,}"
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        if len(convs) != 2 or any(m.kernel_size != (3, 3) or m.stride != (1, 1) for m in convs):
            return f"it has {len(convs)} convolution(s); expected two 3x3 convolutions at stride 1"
        if _count(stage, nn.MaxPool2d) != 1 or _count(stage, nn.ReLU) != 2:
            return (f"it has {_count(stage, nn.MaxPool2d)} max-pool(s) and {_count(stage, nn.ReLU)} ReLU(s); "
                    "expected one max-pool and two ReLUs")
    return None


# --------------------------------------------------------------------------- 02.2 average pooling
def avg_pool_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Return a stage that halves the map by average pooling: a 3x3 convolution, a ReLU, a 2x2 average pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),  # C x H x W => C' x H x W
        nn.ReLU(),
        nn.AvgPool2d(2),  # C' x H x W => C' x H/2 x W/2: the mean of each 2x2 window
    )


def _max_pool_stage(in_channels, out_channels):  # a typical wrong answer: pool_stage unchanged
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


def _avg_pool_stride_one(in_channels, out_channels):  # another: AvgPool2d(2, stride=1) blurs but does not halve
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, stride=1))


def _avg_pool_before_relu(in_channels, out_channels):  # another: averages before the ReLU, a different function
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.AvgPool2d(2), nn.ReLU())


@exercise("02.2", "average instead of maximum", solution=avg_pool_stage,
          wrong=[_max_pool_stage, _avg_pool_stride_one, _avg_pool_before_relu],
          hint="keep pool_stage's convolution and ReLU in the same order and replace nn.MaxPool2d(2) by "
               "nn.AvgPool2d(2), whose stride is its kernel size (2), so it halves the map")
def _check_avg_pool_stage(answer) -> str | None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    stage = answer(3, 5)
    out = stage(x)
    if tuple(out.shape) != (2, 5, 4, 4):
        return f"avg_pool_stage(3, 5) turned a batch of shape (2, 3, 8, 8) into {tuple(out.shape)}, not (2, 5, 4, 4)"
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1 or convs[0].kernel_size != (3, 3) or convs[0].stride != (1, 1):
        return "it should hold one 3x3 convolution at stride 1, like pool_stage"
    if _count(stage, nn.MaxPool2d):
        return "it still holds an nn.MaxPool2d"
    conv = convs[0]
    with torch.no_grad():
        truth = nn.functional.avg_pool2d(torch.relu(conv(x)), 2)  # its own convolution, then ReLU, then the mean
        if not torch.allclose(out, truth, atol=1e-6):
            return ("its output is not the 2x2 mean of the ReLU of its convolution (largest difference "
                    f"{float((out - truth).abs().max()):.3g})")
    return None


# --------------------------------------------------------------------------- 02.3 a receptive field, by hand
POOL_STACK = [(3, 1), (2, 2)] * 3 + [(3, 1)]  # three pool stages, then the 3x3 code convolution
STRIDE_STACK = [(3, 2)] * 3 + [(3, 1)]  # three strided stages, then the code convolution
CODE_RECEPTIVE_FIELDS = (receptive_field(POOL_STACK)[-1], receptive_field(STRIDE_STACK)[-1])  # (38, 31)
WITHOUT_CODE_CONV = (receptive_field(POOL_STACK[:-1])[-1], receptive_field(STRIDE_STACK[:-1])[-1])  # (22, 15)


@exercise("02.3", "a receptive field, by hand", solution=CODE_RECEPTIVE_FIELDS,
          wrong=[WITHOUT_CODE_CONV, CODE_RECEPTIVE_FIELDS[::-1], (3 * 3 + 2 + 1, 2 * 3 + 2 + 1)],
          hint="walk the layers with rf <- rf + (k - 1) * j, j <- j * s, starting at rf = 1, j = 1: a pool stage is "
               "(3, 1) then (2, 2), a strided stage (3, 2), and the 3x3 code convolution (3, 1) comes last, at a "
               "jump of 8")
def _check_code_receptive_fields(answer) -> str | None:
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2 and all(isinstance(v, int) for v in answer)):
        return f"the answer is a pair of whole numbers (pool, stride), got {answer!r}"
    if tuple(answer) == CODE_RECEPTIVE_FIELDS:
        return None
    if tuple(answer) == WITHOUT_CODE_CONV:
        return f"{tuple(answer)} is the field after the three stages; the code convolution comes after them"
    if tuple(answer) == CODE_RECEPTIVE_FIELDS[::-1]:
        return "the two numbers are swapped: the pool encoder's field is the wider one"
    wrong = [name for name, got, truth in zip(("pool", "stride"), answer, CODE_RECEPTIVE_FIELDS) if got != truth]
    return f"the {' and the '.join(wrong)} number{'s are' if len(wrong) > 1 else ' is'} not what the rule gives"


# --------------------------------------------------------------------------- 02.4 shifts in both directions
def shift_images_2d(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Return images (... x H x W) moved dx pixels right and dy pixels down, vacated edges copied from the border."""
    height, width = images.shape[-2:]
    columns = (torch.arange(width, device=images.device) - dx).clamp(0, width - 1)  # the column each one copies
    rows = (torch.arange(height, device=images.device) - dy).clamp(0, height - 1)  # the row each one copies
    return images[..., columns][..., rows, :]  # ... x H x W => ... x H x W


def _rolled(images, dx, dy):  # a typical wrong answer: torch.roll wraps the far edge around
    return images.roll((dy, dx), dims=(-2, -1))


def _axes_swapped(images, dx, dy):  # another: dx moves the rows, dy the columns
    return shift_images_2d(images, dy, dx)


def _opposite_direction(images, dx, dy):  # another: + instead of - moves the content left and up
    return shift_images_2d(images, -dx, -dy)


@exercise("02.4", "shifts in both directions", solution=shift_images_2d,
          wrong=[_rolled, _axes_swapped, _opposite_direction],
          hint="as in shift_images: the new column c copies column clamp(c - dx, 0, W - 1), and the new row r copies "
               "row clamp(r - dy, 0, H - 1); index the last axis with the columns, then the one before with the rows")
def _check_shift_images_2d(answer) -> str | None:
    g = torch.Generator().manual_seed(0)
    images = {"uint8": torch.randint(0, 256, (2, 3, 6, 7), generator=g, dtype=torch.uint8),
              "float": torch.rand(4, 1, 5, 5, generator=g)}
    for kind, x in images.items():
        for dx, dy in ((1, 0), (0, 2), (2, -1), (-3, 1), (0, 0)):
            got, truth = answer(x, dx, dy), shift_images_2d(x, dx, dy)
            if not isinstance(got, torch.Tensor) or got.shape != truth.shape or got.dtype != truth.dtype:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                return f"for {kind} images of shape {tuple(x.shape)} it returned {shape}, not the same shape and dtype"
            if not torch.equal(got, truth):
                return f"shift_images_2d(images, dx={dx}, dy={dy}) differs from the reference on {kind} images"
    return None
