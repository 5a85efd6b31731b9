"""Chapter 03 (transposed convolutions): the chapter's claims, and its helpers in course_utils.chapters.

The comparison models are the notebook's own (``chapter_model`` and ``DECODERS`` from the chapter module).
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_utils as cu
from course_utils.chapters import ch03_transposed_convolutions as ch03
from course_utils.chapters.ch03_transposed_convolutions import DECODERS, chapter_model


# --------------------------------------------------------------------------- the chapter's claims
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
    for name, kwargs in DECODERS.items():
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
    for name, kwargs in DECODERS.items():
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
        model = chapter_model(**DECODERS[name])
        cu.fit(model, train, epochs=2, batch_size=128, progress=False, device="cpu")
        contrast[name] = cu.grid_contrast(cu.edge_map(cu.reconstruct(model, test)), 4, border=2)
    reference = cu.grid_contrast(cu.edge_map(test), 4, border=2)  # real photos: about 0.1
    assert contrast["bilinear + conv"] < 2 * reference
    for k in (2, 3, 4):
        assert contrast[f"transposed k={k}"] > 5 * reference, contrast


# --------------------------------------------------------------------------- helpers
def _taps_1d(size: int, kernel_size: int, stride: int, padding: int, output_padding: int) -> torch.Tensor:
    """Count, by brute force, the (input pixel, kernel tap) pairs that land on each output pixel."""
    out = cu.conv_transpose_output_size(size, kernel_size, stride, padding, output_padding)
    counts = torch.zeros(out)
    for i in range(size):
        for j in range(kernel_size):
            o = stride * i + j - padding
            if 0 <= o < out:
                counts[o] += 1
    return counts


@pytest.mark.parametrize("kernel_size, stride", [(2, 2), (3, 2), (4, 2), (5, 2), (3, 3), (5, 3), (6, 3)])
def test_overlap_map_counts_every_kernel_tap_landing_on_each_pixel(kernel_size, stride):
    padding, output_padding = cu.transposed_padding(kernel_size, stride)
    counts = _taps_1d(6, kernel_size, stride, padding, output_padding)
    expected = counts[:, None] * counts[None, :]  # the 2-D count is the product of the 1-D counts
    got = ch03.overlap_map(kernel_size, stride, size=6)
    assert got.shape == (6 * stride, 6 * stride)
    assert torch.equal(got, expected)


def test_overlap_is_even_exactly_when_the_stride_divides_the_kernel():
    for stride in (2, 3):
        for kernel_size in range(stride, 3 * stride + 1):
            contrast = ch03.grid_contrast(ch03.overlap_map(kernel_size, stride, size=8), stride, border=2 * stride)
            assert (contrast == 0) == (kernel_size % stride == 0), (kernel_size, stride, contrast)
    # 3x3 stride 2: a 2x2 block gets 1, 2, 2 and 4 taps => (4 - 1) / 2.25
    assert ch03.grid_contrast(ch03.overlap_map(3, 2, size=8), 2, border=2) == pytest.approx(4 / 3)


def test_resize_then_convolve_overlaps_evenly_and_stacks_keep_a_k3_pattern():
    for mode in ("nearest", "bilinear"):
        one = ch03.overlap_map(3, 2, size=6, upsample=mode)
        assert one.shape == (12, 12) and ch03.grid_contrast(one, 2, border=2) == 0
        assert torch.all(one[2:-2, 2:-2] == 9)  # every interior pixel gets all 9 taps
    stacked = ch03.overlap_map(3, 2, size=4, layers=3)  # 4x4 => 32x32 like a three-stage decoder
    assert stacked.shape == (32, 32)
    assert ch03.grid_contrast(stacked, 8, border=8) > ch03.grid_contrast(stacked, 2, border=8) > 1


def test_upsampling_layer_matches_the_layers_conv_decoder_builds():
    for k in (2, 3, 4):
        ours = ch03.upsampling_layer(k, 2, channels=4, bias=True)
        theirs = next(m for m in cu.ConvDecoder(3, (4, 4), kernel_size=k) if isinstance(m, nn.ConvTranspose2d))
        assert (ours.kernel_size, ours.stride, ours.padding, ours.output_padding) == \
               (theirs.kernel_size, theirs.stride, theirs.padding, theirs.output_padding)
    resize = ch03.upsampling_layer(3, 2, "bilinear", channels=2)
    assert resize(torch.rand(1, 2, 5, 5)).shape == (1, 2, 10, 10)
    with pytest.raises(cu.CourseError, match="odd kernel"):
        ch03.upsampling_layer(4, 2, "nearest")
    with pytest.raises(cu.CourseError, match="upsample must be"):
        ch03.upsampling_layer(3, 2, "pixelshuffle")


def test_error_map_averages_to_the_test_mse_of_evaluate(fashion_test):
    data = fashion_test.subset(300, seed=1)
    cu.seed_everything(0)
    model = cu.ConvAutoencoder(28, 1, (8, 16), latent=2, bottleneck="spatial", kernel_size=3)
    cu.fit(model, data, epochs=1, batch_size=64, progress=False, device="cpu")
    emap = ch03.error_map(model, data, batch_size=128)  # batches not aligned with the data: 128, 128, 44
    assert emap.shape == (28, 28) and torch.all(emap >= 0)
    assert float(emap.mean()) == pytest.approx(cu.evaluate(model, data)["mse"], rel=1e-4)
    # The border of the image is reconstructed differently from the centre: the map is not flat.
    assert float(emap.std()) > 0.05 * float(emap.mean())


def test_grid_contrast_finds_a_checkerboard_added_to_real_images_but_not_a_trend(cifar_test):
    images = cu.to_float(cifar_test.images[:1000])
    clean = images.pow(2).mean(dim=(0, 1))  # a mean "energy" map of real photos: no grid in it
    assert ch03.fold_tiles(clean, 4).mean() == pytest.approx(float(clean.mean()), rel=1e-5)
    base = ch03.grid_contrast(clean, 2, border=2)
    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(16, 16)  # +-1 checkerboard, period 2
    stamped = (images + 0.05 * sign).clamp(0, 1).pow(2).mean(dim=(0, 1))
    assert base < 0.02 and ch03.grid_contrast(stamped, 2, border=2) > 10 * base
    # A smooth trend (brighter towards the bottom) is not a grid: the local mean divides it out.
    ramp = clean * torch.linspace(1.0, 3.0, 32)[:, None]
    assert ch03.grid_contrast(ramp, 4, border=2) < 2 * ch03.grid_contrast(clean, 4, border=2) + 0.01
    tile = ch03.grid_tile(stamped, 2, border=2)
    assert tile.shape == (2, 2) and tile.mean() == pytest.approx(1.0, abs=0.02)
    assert ch03.fold_tiles(cifar_test.images[:4], 8).shape == (8, 8)  # uint8 input is scaled to [0, 1]
    with pytest.raises(cu.CourseError, match="must divide"):
        ch03.fold_tiles(clean, 5)
    with pytest.raises(cu.CourseError, match="zero-mean"):
        ch03.grid_contrast(torch.zeros(8, 8))
    with pytest.raises(cu.CourseError, match="2 periods wide"):
        ch03.grid_contrast(clean, 8, border=10)


def test_edge_map_of_real_photos_is_even_and_a_blocky_copy_is_not(cifar_test):
    photos = cifar_test.subset(1000, seed=2)
    emap = ch03.edge_map(photos)
    assert emap.shape == (31, 31)
    x = photos.images[:3].float() / 255  # the formula, by hand, at one position
    by_hand = ((x[..., 5, 8] - x[..., 5, 7]) ** 2 + (x[..., 6, 7] - x[..., 5, 7]) ** 2).mean()
    assert float(ch03.edge_map(photos.images[:3])[5, 7]) == pytest.approx(float(by_hand), rel=1e-5)
    # Shrink and regrow by nearest-neighbour: every 2x2 block is flat, all jumps sit on block borders.
    blocky = F.interpolate(F.avg_pool2d(photos.images.float(), 2), scale_factor=2, mode="nearest")
    assert ch03.grid_contrast(emap, 2, border=2) < 0.05 < 1.0 < ch03.grid_contrast(ch03.edge_map(blocky), 2, border=2)


def test_plot_over_seeds_starts_at_zero_and_shows_every_seed():
    import matplotlib.pyplot as plt

    fig = cu.plot_over_seeds({"a": [0.010, 0.012, 0.011], "b": [0.020, 0.018, 0.022]})
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0  # bars compare honestly: no truncated axis
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.011, 0.02]  # bars at the means
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert sorted(round(v, 3) for line in dots for v in line.get_ydata()) == [0.01, 0.011, 0.012, 0.018, 0.02, 0.022]
    assert "3 seeds" in ax.get_title() and ax.get_ylabel()
    plt.close(fig)
    with pytest.raises(cu.CourseError, match="one score per model"):
        cu.plot_over_seeds({"a": []})
