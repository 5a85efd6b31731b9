"""Building blocks, the configurable autoencoder, the seed replicas and the shape formulas."""
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


@pytest.mark.parametrize("cls, kwargs, expected", [
    (cu.GeeksforGeeksAutoencoder, {}, 3_211),
    (cu.PaperspaceAutoencoder, {"latent": 200}, 1_786_795),
    (cu.PaperspaceAutoencoder, {"latent": 1000}, 8_341_195),
    (cu.KapilshAutoencoder, {}, 1_077),
    (cu.AnothertechsAutoencoder, {}, 263_018_231),
])
def test_seed_replicas_parameter_counts_match_the_articles(cls, kwargs, expected):
    with torch.device("meta"):  # count without allocating (anothertechs would need 1 GB)
        model = cls(**kwargs)
    assert cu.count_parameters(model) == expected


@pytest.mark.parametrize("cls, shape", [(cu.GeeksforGeeksAutoencoder, (3, 64, 64)),
                                        (cu.PaperspaceAutoencoder, (3, 32, 32)),
                                        (cu.KapilshAutoencoder, (1, 28, 28))])
def test_seed_replicas_reconstruct_their_input_shape(cls, shape):
    assert cls()(torch.rand(2, *shape)).shape == (2, *shape)


def test_paperspace_hand_count_of_its_layers():
    # encoder convs 448+2320+4640+9248+18496+36928, Linear 4096*200+200; the decoder mirrors it
    encoder = 448 + 2320 + 4640 + 9248 + 18496 + 36928 + 4096 * 200 + 200
    decoder = 200 * 4096 + 4096 + 36928 + 18464 + 9248 + 4624 + 2320 + 435
    assert cu.count_parameters(cu.PaperspaceAutoencoder(200)) == encoder + decoder


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


def test_layer_table_counts_and_receptive_field():
    table = cu.layer_table(cu.KapilshAutoencoder(), (1, 28, 28))
    assert table["parameters"].sum() == 1_077
    assert table["output shape"].tolist()[-1] == "1x28x28"
    convs = table[table["type"].isin(["Conv2d", "MaxPool2d"])]
    assert convs["receptive field"].tolist() == [3, 4, 8, 10]  # 3x3, pool, 3x3, pool
    assert cu.receptive_field([(3, 1), (2, 2), (3, 1), (2, 2)]) == [3, 4, 8, 10]
    first = table.iloc[0]  # Conv2d(1->16, 3x3) on 28x28: 2 * 9 * 16 * 784 FLOPs
    assert first["MFLOPs"] == pytest.approx(2 * 9 * 16 * 28 * 28 / 1e6)


def test_flops_per_image_is_three_times_forward_for_training():
    model = cu.PaperspaceAutoencoder()
    forward = cu.flops_per_image(model, (3, 32, 32), backward=False)
    table_forward = cu.layer_table(model, (3, 32, 32))["MFLOPs"].sum() * 1e6
    assert forward == pytest.approx(table_forward, rel=0.01)
    assert cu.flops_per_image(model, (3, 32, 32)) == pytest.approx(3 * forward, rel=0.05)


def test_recommended_autoencoder_builds_for_both_datasets():
    for shape, latent in [((3, 32, 32), 256), ((1, 28, 28), 196)]:
        model = cu.recommended_autoencoder(shape, latent)
        assert isinstance(model, cu.ConvAutoencoder) and model.code_size == latent
        assert model(torch.rand(2, *shape)).shape == (2, *shape)


def test_code_size_is_measured_from_the_encoder():
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert cu.code_size(cu.GeeksforGeeksAutoencoder(), images) == 8 * 8 * 8  # 8x8x8 on 32x32 CIFAR-10
    assert cu.code_size(cu.GeeksforGeeksAutoencoder(), torch.zeros(1, 3, 64, 64, dtype=torch.uint8)) == 2048
    assert cu.code_size(cu.PaperspaceAutoencoder(200), images) == 200 == cu.PaperspaceAutoencoder(200).code_size
    assert cu.code_size(cu.KapilshAutoencoder(), torch.zeros(1, 1, 28, 28, dtype=torch.uint8)) == 196
    model = cu.ConvAutoencoder(32, 3, (8, 16), latent=3, bottleneck="spatial")
    assert cu.code_size(model, images) == model.code_size == 3 * 8 * 8
