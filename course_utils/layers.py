"""Look inside a network: per-layer output shapes, parameters, FLOPs and receptive fields."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .engine import eval_mode
from .errors import CourseError

LEAVES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.Upsample,
          nn.BatchNorm2d, nn.Flatten, nn.Unflatten, nn.AdaptiveAvgPool2d)


def _pair(v) -> int:
    return v[0] if isinstance(v, (tuple, list)) else int(v)


def _flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Return multiply-add FLOPs (2 per MAC) of one forward pass of ``module`` for one image."""
    if isinstance(module, nn.Conv2d):
        k = _pair(module.kernel_size) * _pair(module.kernel_size[1:] or module.kernel_size)
        return 2 * module.in_channels // module.groups * k * out[0].numel()
    if isinstance(module, nn.ConvTranspose2d):
        k = _pair(module.kernel_size) * _pair(module.kernel_size[1:] or module.kernel_size)
        return 2 * module.out_channels // module.groups * k * inp[0].numel()
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * module.out_features
    return 0


def layer_table(model: nn.Module, input_shape: Sequence[int], receptive_field: bool = True):
    """Return a DataFrame with one row per layer: output shape, parameters, FLOPs, receptive field.

    The receptive field (in input pixels) and the jump (input pixels between neighbouring
    outputs) are tracked through convolutions and pools until the first Flatten or upsampling.
    """
    import pandas as pd

    rows, hooks = [], []
    state = {"rf": 1, "jump": 1, "tracking": True}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0]
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and state["tracking"]:
                k, s = _pair(module.kernel_size), _pair(module.stride)
                d = _pair(getattr(module, "dilation", 1))
                state["rf"] += (k - 1) * d * state["jump"]
                state["jump"] *= s
            elif isinstance(module, (nn.Flatten, nn.ConvTranspose2d, nn.Upsample, nn.Linear)):
                state["tracking"] = False
            rows.append({
                "layer": name, "type": type(module).__name__,
                "output shape": "x".join(map(str, output.shape[1:])),
                "parameters": sum(p.numel() for p in module.parameters(recurse=False)),
                "MFLOPs": _flops(module, x, output) / 1e6,
                **({"receptive field": state["rf"] if state["tracking"] else None,
                    "jump": state["jump"] if state["tracking"] else None} if receptive_field else {}),
            })
        return record

    for name, module in model.named_modules():
        if isinstance(module, LEAVES) or (len(list(module.children())) == 0 and name):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    except RuntimeError as e:
        raise CourseError(f"{type(model).__name__} cannot take an input of shape {tuple(input_shape)}: "
                          f"{str(e).splitlines()[0]}. Give input_shape as (channels, height, width) of the "
                          "images the model was built for.") from e
    finally:
        for h in hooks:
            h.remove()
    frame = pd.DataFrame(rows)
    if receptive_field:
        frame["receptive field"] = frame["receptive field"].astype("Int64")
        frame["jump"] = frame["jump"].astype("Int64")
    return frame


def receptive_field(layers: Sequence[tuple[int, int]]) -> list[int]:
    """Return the receptive field after each (kernel_size, stride) layer of a plain conv/pool stack."""
    rf, jump, out = 1, 1, []
    for k, s in layers:
        rf += (k - 1) * jump
        jump *= s
        out.append(rf)
    return out


@torch.no_grad()
def feature_maps(model: nn.Module, images: torch.Tensor, layer_types=(nn.Conv2d,)) -> dict[str, torch.Tensor]:
    """Return the outputs of every layer of ``layer_types`` for a batch of float images, by layer name."""
    maps, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, layer_types):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: maps.__setitem__(name, o.detach().cpu())))
    try:
        with eval_mode(model):
            model(images.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return maps


def flops_per_image(model: nn.Module, image_shape: Sequence[int], backward: bool = True) -> int:
    """Return the FLOPs of one training step per image (forward, plus backward when asked)."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros(2, *image_shape)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        if backward:
            out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return math.ceil(counter.get_total_flops() / 2)
