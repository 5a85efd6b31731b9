"""course_utils.models: building blocks, the configurable autoencoder, the recipe and the shape formulas."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import course_utils as cu


@pytest.mark.parametrize("downsample, upsample, bottleneck, kernel_size", [
    (d, u, b, k) for d, u, b, k in itertools.product(["pool", "stride"], ["transposed", "nearest", "bilinear"],
                                                     ["flat", "spatial"], [2, 3, 4])
    if u == "transposed" or k == 4
])
@pytest.mark.parametrize("channels, size, widths", [(1, 28, (8, 16)), (3, 32, (8, 16, 32)), (3, 64, (8, 8, 16, 16))])
def test_every_encoder_decoder_bottleneck_combination_reconstructs_the_input_shape(
        downsample, upsample, bottleneck, kernel_size, channels, size, widths):
    model = cu.ConvAutoencoder(size, channels, widths, latent=6, bottleneck=bottleneck, downsample=downsample,
                               upsample=upsample, kernel_size=kernel_size)
    x = torch.rand(2, channels, size, size)
    z = model.encode(x)
    side = size // 2 ** len(widths)
    assert z.shape == ((2, 6) if bottleneck == "flat" else (2, 6, side, side))
    assert model.code_size == (6 if bottleneck == "flat" else 6 * side * side)
    y = model.decode(z)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1  # sigmoid output


def test_encoder_halves_each_stage_and_counts_stride():
    enc = cu.ConvEncoder(3, (16, 32, 64), downsample="pool")
    assert enc(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 4, 4) and enc.total_stride == 8
    strided = cu.ConvEncoder(3, (16, 32, 64), downsample="stride")
    assert strided(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 4, 4)
    # Same convolutions, so the same parameters: pooling itself has none.
    assert cu.count_parameters(enc) == cu.count_parameters(strided)


def test_batch_norm_and_extra_convs_per_stage():
    model = cu.ConvAutoencoder(32, 3, (8, 16), 10, convs_per_stage=2, batch_norm=True, activation="gelu")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 3, 32, 32)


@pytest.mark.parametrize("k, s, p, op, size_in, size_out", [
    (3, 2, 1, 1, 8, 16),  # Paperspace: output_padding 1 needed
    (2, 2, 0, 0, 7, 14),  # kapilsh: 2x2 stride 2 tiles exactly
    (4, 2, 1, 0, 16, 32),
    (3, 1, 1, 0, 8, 8),
])
def test_conv_transpose_formula_matches_pytorch(k, s, p, op, size_in, size_out):
    layer = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op)
    assert layer(torch.zeros(1, 1, size_in, size_in)).shape[-1] == size_out
    assert cu.conv_transpose_output_size(size_in, k, s, p, op) == size_out


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7])
def test_transposed_padding_doubles_exactly(k):
    p, op = cu.transposed_padding(k, 2)
    layer = nn.ConvTranspose2d(1, 1, k, stride=2, padding=p, output_padding=op)
    assert layer(torch.zeros(1, 1, 9, 9)).shape[-1] == 18


def test_conv_output_size_matches_pytorch():
    for k, s, p in [(3, 1, 1), (3, 2, 1), (5, 1, 2), (2, 2, 0), (7, 2, 3)]:
        assert nn.Conv2d(1, 1, k, s, p)(torch.zeros(1, 1, 31, 31)).shape[-1] == cu.conv_output_size(31, k, s, p)


def test_recommended_autoencoder_builds_for_both_datasets():
    for shape, latent in [((3, 32, 32), 256), ((1, 28, 28), 196)]:
        model = cu.recommended_autoencoder(shape, latent)
        assert isinstance(model, cu.ConvAutoencoder) and model.code_size == latent
        assert model(torch.rand(2, *shape)).shape == (2, *shape)
