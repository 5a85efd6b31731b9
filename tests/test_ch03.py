"""Chapter 03's claims about transposed convolutions, checked independently of the notebook."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_utils as cu


def chapter_model(upsample: str = "transposed", kernel_size: int = 4) -> cu.ConvAutoencoder:
    """Return the chapter's comparison model: 3x32x32 => code 4x8x8 => 3x32x32."""
    return cu.ConvAutoencoder(32, 3, widths=(32, 64), latent=4, bottleneck="spatial", downsample="stride",
                              upsample=upsample, kernel_size=kernel_size)


CHAPTER_DECODERS = {"transposed k=2": dict(kernel_size=2), "transposed k=3": dict(kernel_size=3),
                    "transposed k=4": dict(kernel_size=4), "nearest + conv": dict(upsample="nearest"),
                    "bilinear + conv": dict(upsample="bilinear")}


def test_output_size_formula_matches_pytorch_everywhere():
    checked = 0
    for size, k, s in itertools.product((1, 4, 7, 8, 14), (1, 2, 3, 4, 5), (1, 2, 3)):
        for p, op in itertools.product(range(k), range(s)):
            if (size - 1) * s - 2 * p + k + op <= 0:
                continue  # PyTorch refuses layers with an empty output
            layer = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op)
            real = layer(torch.zeros(1, 1, size, size)).shape[-1]
            assert real == cu.conv_transpose_output_size(size, k, s, p, op), (size, k, s, p, op)
            checked += 1
    assert checked > 400


@pytest.mark.parametrize("k, s", [(k, s) for s in (2, 3) for k in range(s, s + 6)])
def test_transposed_padding_grows_real_layers_exactly_stride_times(k, s):
    p, op = cu.transposed_padding(k, s)
    layer = nn.ConvTranspose2d(2, 2, k, stride=s, padding=p, output_padding=op)
    for size in (4, 7, 8):
        assert layer(torch.zeros(1, 2, size, size)).shape[-2:] == (s * size, s * size)


def test_paperspace_decoder_needs_its_output_padding_and_kapilsh_does_not():
    paperspace = cu.PaperspaceAutoencoder()
    x = torch.zeros(2, 3, 32, 32)
    assert paperspace(x).shape == x.shape
    for layer in paperspace.decoder:
        if isinstance(layer, nn.ConvTranspose2d) and layer.stride == (2, 2):
            assert layer.output_padding == (1, 1)
            layer.output_padding = (0, 0)
    assert paperspace(x).shape == (2, 3, 29, 29)
    kapilsh = cu.KapilshAutoencoder()
    assert all(layer.padding == (0, 0) and layer.output_padding == (0, 0)
               for layer in kapilsh.decoder if isinstance(layer, nn.ConvTranspose2d))
    assert kapilsh(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    # Both 15 and 16 become 8 under the stride-2 convolution: the ambiguity output_padding resolves.
    assert cu.conv_output_size(15, 3, 2, 1) == cu.conv_output_size(16, 3, 2, 1) == 8


def test_one_pixel_stamps_the_kernel_at_stride_times_its_position():
    torch.manual_seed(0)
    for k, s, p in [(3, 2, 0), (4, 2, 1), (2, 2, 0), (5, 3, 1)]:
        w = torch.randn(1, 1, k, k)
        x = torch.zeros(1, 1, 6, 6)
        x[0, 0, 3, 2] = 1.0
        y = F.conv_transpose2d(x, w, stride=s, padding=p)[0, 0]
        r, c = s * 3 - p, s * 2 - p
        assert torch.allclose(y[r:r + k, c:c + k], w[0, 0])
        assert float(y.abs().sum()) == pytest.approx(float(w.abs().sum()), rel=1e-5)  # nothing else


@pytest.mark.parametrize("k, s, p, op", [(3, 2, 1, 1), (4, 2, 1, 0), (2, 2, 0, 0), (5, 2, 2, 1), (3, 3, 0, 2)])
def test_transposed_conv_is_zero_insertion_then_flipped_convolution_and_the_adjoint(k, s, p, op):
    torch.manual_seed(1)
    x, w = torch.randn(2, 4, 7, 7), torch.randn(4, 5, k, k)
    reference = F.conv_transpose2d(x, w, stride=s, padding=p, output_padding=op)
    spread = torch.zeros(2, 4, 6 * s + 1, 6 * s + 1)
    spread[..., ::s, ::s] = x
    q = k - 1 - p
    as_conv = F.conv2d(F.pad(spread, (q, q + op, q, q + op)), w.flip(-2, -1).transpose(0, 1))
    assert torch.allclose(reference, as_conv, atol=1e-4)
    y = torch.randn_like(reference)
    assert torch.allclose((F.conv2d(y, w, stride=s, padding=p) * x).sum(), (y * reference).sum(), rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_resize_decoders_keep_a_flat_code_flat_and_transposed_ones_do_not(seed):
    for name, kwargs in CHAPTER_DECODERS.items():
        cu.seed_everything(seed)
        model = chapter_model(**kwargs).eval()
        with torch.no_grad():
            features = model.bottleneck.decode(torch.ones(1, 4, 8, 8))
            out = nn.Sequential(*list(model.decoder)[:-1])(features)[0, :, 6:-6, 6:-6]
        spread = float((out - out.mean(dim=(1, 2), keepdim=True)).abs().max())
        if name.startswith("transposed"):
            assert spread > 1e-3, name
        else:
            assert spread < 1e-6, name


def test_chapter_models_share_code_size_and_differ_as_the_notebook_says():
    params, flops = {}, {}
    for name, kwargs in CHAPTER_DECODERS.items():
        model = chapter_model(**kwargs)
        assert model.code_size == 256
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
        params[name] = cu.count_parameters(model)
        flops[name] = cu.layer_table(model.decoder, (64, 8, 8), receptive_field=False)["MFLOPs"].sum()
    assert params == {"transposed k=2": 33_191, "transposed k=3": 48_551, "transposed k=4": 70_055,
                      "nearest + conv": 48_551, "bilinear + conv": 48_551}
    # Same weights per layer as k=3, but the 3x3 convolutions run at the output resolution.
    assert flops["nearest + conv"] == pytest.approx(flops["bilinear + conv"])
    upsampling = lambda f: f - cu.layer_table(chapter_model().decoder, (64, 8, 8))["MFLOPs"].iloc[-2]
    assert upsampling(flops["nearest + conv"]) == pytest.approx(4 * upsampling(flops["transposed k=3"]), rel=1e-6)


def test_trained_transposed_decoders_put_their_jumps_on_a_grid_and_bilinear_does_not(cifar_test):
    train, test = cifar_test.subset(2048, seed=3).subset(1536, seed=0), cifar_test.subset(512, seed=4)
    contrast = {}
    for name in ("transposed k=2", "transposed k=3", "transposed k=4", "bilinear + conv"):
        cu.seed_everything(0)
        model = chapter_model(**CHAPTER_DECODERS[name])
        cu.fit(model, train, epochs=2, batch_size=128, progress=False, device="cpu")
        contrast[name] = cu.grid_contrast(cu.edge_map(cu.reconstruct(model, test)), 4, border=2)
    reference = cu.grid_contrast(cu.edge_map(test), 4, border=2)  # real photos: about 0.1
    assert contrast["bilinear + conv"] < 2 * reference
    for k in (2, 3, 4):
        assert contrast[f"transposed k={k}"] > 5 * reference, contrast
