"""Encoders, decoders and bottlenecks, the configurable autoencoder, the recommended recipe, a small classifier."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import CourseError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU,
               "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def make_activation(name: str | None) -> nn.Module:
    """Return a fresh activation module by name (None gives the identity)."""
    if name is None or name == "none":
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise CourseError(f"Unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)} or None.")
    return ACTIVATIONS[name]()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_positive(what: str, values: Sequence[int] | int) -> None:
    """Raise CourseError unless every value is a positive whole number."""
    for v in ([values] if isinstance(values, int) else values):
        if not isinstance(v, int) or v <= 0:
            raise CourseError(f"{what} must be positive whole numbers, got {values!r}.")


def transposed_padding(kernel_size: int, stride: int = 2) -> tuple[int, int]:
    """Return (padding, output_padding) that make ConvTranspose2d grow H exactly ``stride`` times."""
    padding = max((kernel_size - stride + 1) // 2, 0)
    output_padding = stride - kernel_size + 2 * padding
    if not 0 <= output_padding < stride:
        raise CourseError(f"No padding makes a {kernel_size}x{kernel_size} stride-{stride} transposed "
                          "convolution scale by exactly the stride; use kernel_size >= stride.")
    return padding, output_padding


def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """Return ConvTranspose2d's output size: (H-1)*s - 2p + d*(k-1) + op + 1."""
    if not 0 <= output_padding < max(stride, dilation):
        raise CourseError(f"output_padding must be at least 0 and smaller than the stride ({stride}), got "
                          f"{output_padding}: PyTorch refuses such a layer. Grow the output with the stride "
                          "or the kernel size instead.")
    out = (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1
    if out <= 0:
        raise CourseError(f"padding={padding} crops more than a {kernel_size}x{kernel_size} stride-{stride} "
                          f"transposed convolution produces from {size} pixels (the formula gives {out}); "
                          "use a smaller padding.")
    return out


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Return Conv2d's (or MaxPool2d's) output size: floor((H + 2p - d*(k-1) - 1) / s) + 1."""
    out = (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
    if out <= 0:
        raise CourseError(f"A {kernel_size}x{kernel_size} kernel does not fit in {size} pixels with padding "
                          f"{padding} (the formula gives {out}): use a smaller kernel or more padding.")
    return out


# --------------------------------------------------------------------------- building blocks
class ConvEncoder(nn.Sequential):
    """Halve the resolution once per stage, by max-pooling or by a stride-2 convolution."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128), downsample: str = "stride",
                 activation: str = "relu", convs_per_stage: int = 1, batch_norm: bool = False):
        check_positive("Encoder widths", list(widths))
        if downsample not in ("pool", "stride"):
            raise CourseError(f"downsample must be 'pool' or 'stride', got {downsample!r}.")
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            for i in range(convs_per_stage):
                stride = 2 if (downsample == "stride" and i == 0) else 1
                # H x W => H/2 x W/2 when stride is 2, else H x W => H x W
                layers += [nn.Conv2d(c, w, 3, stride=stride, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(w)] if batch_norm else []
                layers += [make_activation(activation)]
                c = w
            if downsample == "pool":
                layers.append(nn.MaxPool2d(2))  # H x W => H/2 x W/2, keeps the largest of each 2x2
        super().__init__(*layers)
        self.out_channels, self.total_stride = c, 2 ** len(widths)


class ConvDecoder(nn.Sequential):
    """Double the resolution once per stage, by transposed convolution or resize-then-convolve."""

    def __init__(self, out_channels: int, widths: Sequence[int] = (128, 64, 32), upsample: str = "transposed",
                 kernel_size: int = 4, activation: str = "relu", convs_per_stage: int = 1,
                 batch_norm: bool = False, output_activation: str | None = "sigmoid"):
        check_positive("Decoder widths", list(widths))
        if upsample not in ("transposed", "nearest", "bilinear"):
            raise CourseError(f"upsample must be 'transposed', 'nearest' or 'bilinear', got {upsample!r}.")
        layers: list[nn.Module] = []
        c = widths[0]
        for stage in range(len(widths)):
            w = widths[min(stage + 1, len(widths) - 1)]
            if upsample == "transposed":
                p, op = transposed_padding(kernel_size, 2)
                # H x W => 2H x 2W: each input pixel stamps a k x k kernel, stride 2 apart
                layers += [nn.ConvTranspose2d(c, w, kernel_size, stride=2, padding=p, output_padding=op,
                                              bias=not batch_norm)]
            else:
                layers += [nn.Upsample(scale_factor=2, mode=upsample),  # H x W => 2H x 2W, no parameters
                           nn.Conv2d(c, w, 3, padding=1, bias=not batch_norm)]  # 2H x 2W => 2H x 2W
            layers += [nn.BatchNorm2d(w)] if batch_norm else []
            layers += [make_activation(activation)]
            for _ in range(convs_per_stage - 1):
                layers += [nn.Conv2d(w, w, 3, padding=1, bias=not batch_norm)]  # 2H x 2W => 2H x 2W
                layers += [nn.BatchNorm2d(w)] if batch_norm else []
                layers += [make_activation(activation)]
            c = w
        layers += [nn.Conv2d(c, out_channels, 3, padding=1),  # features => image channels, same size
                   make_activation(output_activation)]
        super().__init__(*layers)


class FlatBottleneck(nn.Module):
    """Squeeze a (C, h, w) feature map into a flat code vector with Linear layers, and back."""

    def __init__(self, channels: int, height: int, width: int, latent: int, activation: str = "relu"):
        super().__init__()
        check_positive("latent", latent)
        n = channels * height * width
        self.encode = nn.Sequential(nn.Flatten(), nn.Linear(n, latent))  # C x h x w => latent
        self.decode = nn.Sequential(nn.Linear(latent, n), make_activation(activation),  # latent => C*h*w
                                    nn.Unflatten(1, (channels, height, width)))  # => C x h x w
        self.code_size = latent


class SpatialBottleneck(nn.Module):
    """Keep the code as a small map: a 1x1 convolution to ``latent_channels`` channels, and back."""

    def __init__(self, channels: int, height: int, width: int, latent_channels: int, activation: str = "relu"):
        super().__init__()
        check_positive("latent_channels", latent_channels)
        self.encode = nn.Conv2d(channels, latent_channels, 1)  # C x h x w => L x h x w
        self.decode = nn.Sequential(nn.Conv2d(latent_channels, channels, 1), make_activation(activation))
        self.code_size = latent_channels * height * width


class ConvAutoencoder(nn.Module):
    """Encoder, bottleneck and mirrored decoder, each chosen by argument.

    - ``image_size``, ``in_channels``: the square images it takes (and gives back).
    - ``widths``: channels of each encoder stage; each stage halves the image side, so
      ``image_size`` must be a multiple of ``2 ** len(widths)``. The decoder mirrors them.
    - ``latent``: with ``bottleneck="flat"`` the code size (a vector of ``latent`` values, via
      Linear layers); with ``"spatial"`` the channels of the small code map (a 1x1 convolution).
    - ``downsample``: ``"stride"`` (stride-2 convolutions) or ``"pool"`` (convolution, then 2x2 max-pool).
    - ``upsample``: ``"transposed"`` (``kernel_size`` x ``kernel_size`` transposed convolutions) or
      ``"nearest"``/``"bilinear"`` (resize, then a 3x3 convolution).
    - ``activation``, ``convs_per_stage``, ``batch_norm``: what each stage is made of.
    - ``output_activation``: the last layer's (``"sigmoid"`` for [0, 1] images, None for none).
    """

    def __init__(self, image_size: int = 32, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128),
                 latent: int = 128, bottleneck: str = "flat", downsample: str = "stride",
                 upsample: str = "transposed", kernel_size: int = 4, activation: str = "relu",
                 convs_per_stage: int = 1, batch_norm: bool = False, output_activation: str | None = "sigmoid"):
        super().__init__()
        check_positive("widths", list(widths))
        check_positive("latent", latent)
        check_positive("image_size", image_size)
        stride = 2 ** len(widths)
        if image_size % stride:
            good = max(stride, round(image_size / stride) * stride)
            raise CourseError(
                f"Image size {image_size} is not divisible by the encoder's total stride {stride} "
                f"({len(widths)} downsampling stages). Use an image size that is a multiple of {stride} "
                f"(e.g. {good}, via load_dataset(..., image_size={good})) or fewer stages.")
        if bottleneck not in ("flat", "spatial"):
            raise CourseError(f"bottleneck must be 'flat' or 'spatial', got {bottleneck!r}.")
        self.image_size, self.in_channels = image_size, in_channels
        self.encoder = ConvEncoder(in_channels, widths, downsample, activation, convs_per_stage, batch_norm)
        side = image_size // stride
        neck = FlatBottleneck if bottleneck == "flat" else SpatialBottleneck
        self.bottleneck = neck(widths[-1], side, side, latent, activation)
        self.decoder = ConvDecoder(in_channels, list(reversed(widths)), upsample, kernel_size, activation,
                                   convs_per_stage, batch_norm, output_activation)
        self.code_size = self.bottleneck.code_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code of a batch of images."""
        if x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise CourseError(
                f"This autoencoder takes images of {self.in_channels}x{self.image_size}x{self.image_size}, "
                f"got a batch of {tuple(x.shape)}. Resize with load_dataset(..., image_size="
                f"{self.image_size}) or build the model with image_size={x.shape[-1]}.")
        return self.bottleneck.encode(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return images reconstructed from codes."""
        return self.decoder(self.bottleneck.decode(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------- recommended recipe
# Measured on a 2-core CPU in the laptop profile (benchmarks/README.md, "Reconstruction quality"):
# batch norm plus small batches (more steps per epoch) and a higher one-cycle peak learning rate
# are what make a short run good; extra width, depth, GELU or a linear output did not pay for
# their cost. The epochs come from the profile.
RECOMMENDED_TRAINING = {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 1e-4, "schedule": "onecycle",
                        "batch_size": 32}


def recommended_autoencoder(image_shape: Sequence[int] = (3, 32, 32), latent: int = 256,
                            bottleneck: str = "flat", base_width: int = 32) -> ConvAutoencoder:
    """Return the course's recommended autoencoder for images of ``image_shape`` (C, H, W).

    Stride-2 convolutions (32, 64, ... channels, batch norm, ReLU) halve the image until its
    side is at most 8 (28 => 14 => 7, 32 => 16 => 8, 64 => ... => 8), and a mirrored decoder of
    4x4 transposed convolutions ends in a sigmoid. ``latent`` is the code size (values per
    image). With ``bottleneck="spatial"`` the code is a small map of ``latent / (h * w)``
    channels, so ``latent`` must be a multiple of the final map's area: 196 gives a 4x7x7 code
    for 28x28 images, 256 a 4x8x8 code for 32x32 ones. Train it with
    ``fit(model, train, epochs=..., **RECOMMENDED_TRAINING)``.
    """
    if len(image_shape) != 3:
        raise CourseError(f"image_shape must be (channels, height, width), got {tuple(image_shape)}.")
    channels, height, size = (int(v) for v in image_shape)
    if height != size:
        raise CourseError(f"The recommended autoencoder takes square images, got {height}x{size}.")
    if bottleneck not in ("flat", "spatial"):
        raise CourseError(f"bottleneck must be 'flat' or 'spatial', got {bottleneck!r}.")
    stages, side = 0, size
    while side > 8 and side % 2 == 0:  # halve while the map is larger than 8x8 and still even
        stages, side = stages + 1, side // 2
    if stages == 0:
        raise CourseError(f"Image size {size} cannot be halved into a small map: use an even size above 8 "
                          "(load_dataset(..., image_size=32)).")
    check_positive("base_width", base_width)
    widths = tuple(min(base_width * 2 ** i, 256) for i in range(stages))  # (32, 64) for 28x28 and 32x32 images
    code_channels = latent
    if bottleneck == "spatial":
        if latent % (side * side):
            raise CourseError(f"With a spatial bottleneck the code is channels x {side} x {side}, so latent "
                              f"must be a multiple of {side * side} (e.g. {4 * side * side} = 4x{side}x{side}), "
                              f"got {latent}.")
        code_channels = latent // (side * side)
    return ConvAutoencoder(size, channels, widths, code_channels, bottleneck, downsample="stride",
                           upsample="transposed", kernel_size=4, activation="relu", convs_per_stage=1,
                           batch_norm=True, output_activation="sigmoid")


# --------------------------------------------------------------------------- a classifier
class ConvClassifier(nn.Module):
    """A small convnet classifier: conv-ReLU-pool stages, then one Linear layer on the flat features."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (16, 32),
                 image_size: int = 28):
        super().__init__()
        check_positive("widths", list(widths))
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(),  # H x W => H x W, c => w channels
                       nn.MaxPool2d(2)]  # H x W => H/2 x W/2
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.head = nn.Sequential(nn.Flatten(),  # c x side x side => c*side*side features
                                  nn.Linear(c * side * side, num_classes))  # features => class scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
